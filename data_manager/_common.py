"""What every dataset shares: the error type, the split-list contract and the statistics table."""
import os

import numpy as np


class DatasetError(Exception):
    """The dataset on disk is missing or does not have the expected layout."""


def require(path, what, layout, source):
    """Raise DatasetError naming path, the expected layout and where to get the data, if path is missing."""
    if not os.path.exists(path):
        raise DatasetError(
            f'{what} not found: {path}\n'
            f'Expected layout:\n{layout}\n'
            f'Get the dataset from {source}, or generate a small synthetic one with\n'
            f'    python synthetic_data.py --root data/synthetic\n'
            f'and pass --root data/synthetic.')


def relabel(items):
    """Items (x, pid, camid) with pids relabelled 0..N-1 in ascending order of the original pid.

    Sorting matters: a Python set of ints such as DukeMTMC's pids (up to 7,140) does not
    iterate in ascending order.
    """
    pid2label = {pid: label for label, pid in enumerate(sorted({pid for _, pid, _ in items}))}
    return [(x, pid2label[pid], camid) for x, pid, camid in items]


def check_split_id(split_id, num_splits, split_file):
    if not 0 <= split_id < num_splits:
        raise DatasetError(f'--split-id {split_id} is out of range: {split_file} holds {num_splits} '
                           f'split(s), so pass a value in 0..{num_splits - 1}')


def print_table(name, unit, rows, footer=None):
    """Print rows (subset, # ids, # items), the last one below a rule (the total)."""
    width = max(8, *(len(subset) for subset, _, _ in rows))
    rule = '  ' + '-' * (width + 22)
    print(f'=> {name} loaded')
    print('Dataset statistics:')
    print(rule)
    print(f'  {"subset":<{width}} | # ids | # {unit}')
    print(rule)
    for subset, num_ids, count in rows[:-1]:
        print(f'  {subset:<{width}} | {num_ids:5d} | {count:8d}')
    print(rule)
    subset, num_ids, count = rows[-1]
    print(f'  {subset:<{width}} | {num_ids:5d} | {count:8d}')
    if footer:
        print(f'  {footer}')
    print(rule)


class ReidDataset:
    """Base of every dataset: train, query and gallery lists and their statistics.

    train, query, gallery: lists of (img_path, pid, camid), or (tuple_of_img_paths, pid, camid)
    when video is True, with 0-based camids and train pids 0..num_train_pids-1.
    num_train_cams: number of distinct train camids (combine_train offsets by it).
    has_camera_ids: False only for folder datasets without cameras (see folders.py).
    has_test_split: False only for a train-only folder dataset (query == gallery == []).
    has_train_ids: False only for an unlabelled folder (a flat train/; every train pid 0).
    """
    name = ''          # the -d name
    title = ''         # the name printed in the statistics table
    video = False
    has_camera_ids = True
    has_test_split = True
    has_train_ids = True

    def _finish(self, train, query, gallery, verbose):
        """Store the three splits, count ids and cameras, print the table when verbose."""
        self.train, self.query, self.gallery = train, query, gallery
        self.num_train_pids = len({pid for _, pid, _ in train})
        self.num_query_pids = len({pid for _, pid, _ in query})
        self.num_gallery_pids = len({pid for _, pid, _ in gallery})
        self.num_train_cams = len({camid for _, _, camid in train})
        if verbose:
            self.print_statistics()

    def print_statistics(self):
        footer = None
        if self.video:
            lengths = [len(paths) for split in (self.train, self.query, self.gallery)
                       for paths, _, _ in split]
            footer = (f'number of images per tracklet: {min(lengths)} ~ {max(lengths)}, '
                      f'average {np.mean(lengths):.1f}')
        print_table(self.title, 'tracklets' if self.video else 'images', [
            ('train', self.num_train_pids, len(self.train)),
            ('query', self.num_query_pids, len(self.query)),
            ('gallery', self.num_gallery_pids, len(self.gallery)),
            ('total', self.num_train_pids + self.num_query_pids,
             len(self.train) + len(self.query) + len(self.gallery))], footer=footer)
