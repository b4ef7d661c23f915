"""Dataset managers: parse Market-1501 (image) and MARS (video) into split lists.

Every manager exposes
    train, query, gallery:  lists of (img_path, pid, camid) for images, or
                            (tuple_of_img_paths, pid, camid) for video tracklets
    num_train_pids, num_query_pids, num_gallery_pids
with 0-based camera ids, junk (pid -1) dropped, distractors (pid 0) kept in the
gallery, and train pids relabelled 0..N-1 in ascending order of the original pid.
Parsing reads names only: no image is opened or stat-ed here.
"""
import os
import re

import numpy as np
from scipy.io import loadmat

__all__ = ['DatasetError', 'Market1501', 'Mars', 'init_dataset', 'get_names']


class DatasetError(Exception):
    """The dataset on disk is missing or does not have the expected layout."""


def _require(path, what, layout, source):
    if not os.path.exists(path):
        raise DatasetError(
            f'{what} not found: {path}\n'
            f'Expected layout:\n{layout}\n'
            f'Get the dataset from {source}, or generate a small synthetic one with\n'
            f'    python synthetic_data.py --root data/synthetic\n'
            f'and pass --root data/synthetic.')


def _relabel(items):
    """Items (x, pid, camid) with pids relabelled 0..N-1 in ascending order of the original pid."""
    pid2label = {pid: label for label, pid in enumerate(sorted({pid for _, pid, _ in items}))}
    return [(x, pid2label[pid], camid) for x, pid, camid in items]


def mars_folder(pid):
    """MARS folder and name prefix of a pid: 12 -> '0012', 0 -> '0000', -1 (junk) -> '00-1'."""
    return str(pid).rjust(4, '0')


def _print_table(name, unit, rows, footer=None):
    print(f'=> {name} loaded')
    print('Dataset statistics:')
    print('  ------------------------------')
    print(f'  subset   | # ids | # {unit}')
    print('  ------------------------------')
    for subset, num_ids, count in rows[:-1]:
        print(f'  {subset:<8} | {num_ids:5d} | {count:8d}')
    print('  ------------------------------')
    subset, num_ids, count = rows[-1]
    print(f'  {subset:<8} | {num_ids:5d} | {count:8d}')
    if footer:
        print(f'  {footer}')
    print('  ------------------------------')


class Market1501:
    """Market-1501 (Zheng et al., ICCV 2015): 1,501 identities seen by 6 cameras.

    Names look like 0002_c1s1_000451_03.jpg (pid, camera, sequence, frame, box); 24 real
    names end in .jpg.jpg and are read as they are.
    """
    dataset_dir = 'market1501'
    source = 'https://zheng-lab.cecs.anu.edu.au/Project/project_reid.html'
    layout = ('  <root>/market1501/bounding_box_train/0002_c1s1_000451_03.jpg ...\n'
              '  <root>/market1501/query/0001_c1s1_001051_00.jpg ...\n'
              '  <root>/market1501/bounding_box_test/0000_c1s1_000151_01.jpg ...')
    name_pattern = re.compile(r'^(-1|\d{4})_c(\d)s\d+_\d+_\d+\.jpg(\.jpg)?$')

    def __init__(self, root='data', verbose=True, **kwargs):
        self.dataset_dir = os.path.join(root, self.dataset_dir)
        _require(self.dataset_dir, 'Market-1501 directory', self.layout, self.source)
        self.train = self._process_dir('bounding_box_train', relabel=True)
        self.query = self._process_dir('query', relabel=False)
        self.gallery = self._process_dir('bounding_box_test', relabel=False)
        self.num_train_pids = len({pid for _, pid, _ in self.train})
        self.num_query_pids = len({pid for _, pid, _ in self.query})
        self.num_gallery_pids = len({pid for _, pid, _ in self.gallery})
        if verbose:
            _print_table('Market1501', 'images', [
                ('train', self.num_train_pids, len(self.train)),
                ('query', self.num_query_pids, len(self.query)),
                ('gallery', self.num_gallery_pids, len(self.gallery)),
                ('total', self.num_train_pids + self.num_query_pids,
                 len(self.train) + len(self.query) + len(self.gallery))])

    def _process_dir(self, subdir, relabel):
        """Return [(img_path, pid, camid)] for one split folder, junk (pid -1) dropped."""
        dir_path = os.path.join(self.dataset_dir, subdir)
        _require(dir_path, 'Market-1501 split folder', self.layout, self.source)
        items = []
        for name in sorted(os.listdir(dir_path)):
            if not name.endswith('.jpg'):
                continue  # the real folders also hold Thumbs.db
            match = self.name_pattern.match(name)
            if match is None:
                raise DatasetError(
                    f'unexpected file name {os.path.join(dir_path, name)}: Market-1501 names look '
                    f'like 0002_c1s1_000451_03.jpg (pid_c<camera>s<seq>_<frame>_<box>.jpg)')
            pid = int(match.group(1))
            if pid == -1:
                continue
            items.append((os.path.join(dir_path, name), pid, int(match.group(2)) - 1))
        if not items:
            raise DatasetError(f'no usable image in {dir_path}\nExpected layout:\n{self.layout}')
        return _relabel(items) if relabel else items


class Mars:
    """MARS (Zheng et al., ECCV 2016): 1,261 identities, 20,478 tracklets from 6 cameras.

    The official split lives in info/: tracks_{train,test}_info.mat hold rows
    (start, end, pid, camera) with 1-based inclusive line numbers into {train,test}_name.txt,
    and query_IDX.mat the 1-based test rows used as queries; every other test row is gallery.
    Names look like 0001C1T0001F001.jpg (pid, camera, tracklet, frame) and lie in a folder
    named by the first four characters ('0000' distractors, '00-1' junk).
    """
    dataset_dir = 'mars'
    source = ('https://zheng-lab.cecs.anu.edu.au/Project/project_mars.html '
              '(split files: https://github.com/liangzheng06/MARS-evaluation/tree/master/info)')
    layout = ('  <root>/mars/info/{train_name.txt,test_name.txt,tracks_train_info.mat,\n'
              '                   tracks_test_info.mat,query_IDX.mat}\n'
              '  <root>/mars/bbox_train/0001/0001C1T0001F001.jpg ...\n'
              '  <root>/mars/bbox_test/0002/0002C1T0001F001.jpg ...')

    def __init__(self, root='data', min_seq_len=0, verbose=True, **kwargs):
        self.dataset_dir = os.path.join(root, self.dataset_dir)
        _require(self.dataset_dir, 'MARS directory', self.layout, self.source)
        for sub in ('bbox_train', 'bbox_test'):
            _require(os.path.join(self.dataset_dir, sub), 'MARS image folder', self.layout, self.source)
        info = os.path.join(self.dataset_dir, 'info')
        train_names = self._read_names(os.path.join(info, 'train_name.txt'))
        test_names = self._read_names(os.path.join(info, 'test_name.txt'))
        track_train = self._read_mat(os.path.join(info, 'tracks_train_info.mat'), 'track_train_info')
        track_test = self._read_mat(os.path.join(info, 'tracks_test_info.mat'), 'track_test_info')
        query_rows = self._read_mat(os.path.join(info, 'query_IDX.mat'), 'query_IDX').ravel() - 1
        if query_rows.size == 0 or query_rows.min() < 0 or query_rows.max() >= len(track_test):
            raise DatasetError(f'{os.path.join(info, "query_IDX.mat")}: query rows must lie in '
                               f'1..{len(track_test)} (rows of tracks_test_info.mat)')
        is_query = np.zeros(len(track_test), dtype=bool)
        is_query[query_rows] = True

        self.train = self._process_data(train_names, track_train, 'bbox_train', min_seq_len,
                                        relabel=True, what='tracks_train_info.mat')
        self.query = self._process_data(test_names, track_test[is_query], 'bbox_test', min_seq_len,
                                        relabel=False, what='tracks_test_info.mat (query rows)')
        self.gallery = self._process_data(test_names, track_test[~is_query], 'bbox_test', min_seq_len,
                                          relabel=False, what='tracks_test_info.mat (gallery rows)')
        self.num_train_pids = len({pid for _, pid, _ in self.train})
        self.num_query_pids = len({pid for _, pid, _ in self.query})
        self.num_gallery_pids = len({pid for _, pid, _ in self.gallery})
        if verbose:
            lengths = [len(paths) for split in (self.train, self.query, self.gallery)
                       for paths, _, _ in split]
            _print_table('MARS', 'tracklets', [
                ('train', self.num_train_pids, len(self.train)),
                ('query', self.num_query_pids, len(self.query)),
                ('gallery', self.num_gallery_pids, len(self.gallery)),
                ('total', self.num_train_pids + self.num_query_pids,
                 len(self.train) + len(self.query) + len(self.gallery))],
                footer=f'number of images per tracklet: {min(lengths)} ~ {max(lengths)}, '
                       f'average {np.mean(lengths):.1f}')

    def _read_names(self, path):
        _require(path, 'MARS info file', self.layout, self.source)
        with open(path) as f:
            return f.read().split()  # also strips the CRLF line ends of the official files

    def _read_mat(self, path, key):
        _require(path, 'MARS info file', self.layout, self.source)
        content = loadmat(path)
        if key not in content:
            raise DatasetError(f'{path} has no variable {key!r}; is it the official MARS file?')
        return content[key].astype(np.int64)

    def _process_data(self, names, tracks, home_dir, min_seq_len, relabel, what):
        """Turn info rows (start, end, pid, camera) into [(img_paths, pid, camid)].

        Junk tracklets (pid -1) and tracklets shorter than min_seq_len are dropped.
        Every name must carry its row's pid and camera, which catches a name file that
        does not belong to the .mat tables.
        """
        base = os.path.join(self.dataset_dir, home_dir)
        tracklets = []
        for start, end, pid, cam in tracks.tolist():
            if pid == -1:
                continue
            if not 1 <= start <= end <= len(names):
                raise DatasetError(f'{what}: row ({start}, {end}, {pid}, {cam}) points outside the '
                                   f'{len(names)} names of the name file')
            img_names = names[start - 1:end]
            pid_folder = mars_folder(pid)
            if {n[:4] for n in img_names} != {pid_folder} or {n[5] for n in img_names} != {str(cam)}:
                bad = next(n for n in img_names if n[:4] != pid_folder or n[5] != str(cam))
                raise DatasetError(f'{what}: name {bad!r} in rows {start}..{end} does not match the '
                                   f'row\'s pid {pid} and camera {cam} (names look like '
                                   f'{pid_folder}C{cam}T0001F001.jpg)')
            if len(img_names) < min_seq_len:
                continue
            prefix = os.path.join(base, pid_folder) + os.sep
            tracklets.append((tuple(prefix + n for n in img_names), pid, cam - 1))
        if not tracklets:
            raise DatasetError(f'{what}: no usable tracklet (min_seq_len={min_seq_len})')
        return _relabel(tracklets) if relabel else tracklets


_FACTORY = {
    'market1501': Market1501,
    'mars': Mars,
}


def get_names():
    return list(_FACTORY)


def init_dataset(name, **kwargs):
    if name not in _FACTORY:
        raise DatasetError(f'unknown dataset {name!r}; known datasets: {", ".join(_FACTORY)}')
    return _FACTORY[name](**kwargs)
