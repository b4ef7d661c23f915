"""Your own data, no code: image_folder and video_folder datasets, and combine_train.

image_folder:  <root>/{train,query,gallery}/<identity>/[<camera>/]<image>
               or, unlabelled (train_img_model_usl.py), <root>/train/<image>
video_folder:  <root>/{train,query,gallery}/<identity>/[<camera>/]<tracklet>/<frames>

Identities are folder names (any string). Camera ids come from, in this order, a <camera>
folder level, else a camera token found by camera_pattern in the image name (video: the
tracklet folder name, else its first frame's name), else nowhere. Only image files count
(.jpg, .png, ...; any case), hidden files are skipped.
"""
import os
import re

from ._common import DatasetError, ReidDataset, print_table

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm', '.pgm')
SPLITS = ('train', 'query', 'gallery')


def _listing(path):
    """(sorted sub-folder names, sorted image file names) of a folder, from one scandir."""
    dirs, images = [], []
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.name.startswith('.'):
                continue
            if entry.is_dir():
                dirs.append(entry.name)
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                images.append(entry.name)
    return sorted(dirs), sorted(images)


def natural_key(name):
    """Sort key putting numeric names in numeric order (c2 before c10 once the token is '2', '10')."""
    return (0, int(name), '') if name.isdigit() else (1, 0, name)


class _FolderDataset(ReidDataset):
    """Parse <root>/{train,query,gallery}/<identity>/... into the split lists.

    Train pids: the identity names in sorted order, 0..N-1. Query and gallery pids: one
    mapping over the sorted union of their identity names, so the same name is the same pid.
    With cameras, camids come from one mapping over the sorted union of camera names of all
    splits (numeric names in numeric order). Without cameras (has_camera_ids False), train
    camids are 0 and a query or gallery camid is a sample key id: one int per
    '<identity>/<path inside the identity folder>' over the union of query and gallery, so a
    copy of the same file in query/ and gallery/ shares the id and nothing else does. The
    evaluator drops gallery entries with the query's pid and camid, hence exactly the very
    same file is never matched and every other gallery entry counts.
    A train-only folder (no query/ and no gallery/) has query == gallery == [] and
    has_test_split False. An image_folder whose train/ holds the images themselves, with no
    identity level, is unlabelled (has_train_ids False, every train pid 0): for unsupervised
    training, with cameras from camera_pattern only.
    """
    layout = ''

    def __init__(self, root='data', camera_pattern=r'c(\d+)', min_seq_len=0, verbose=True, **options):
        self.dataset_dir = root
        self.title = f'{self.name} ({root})'
        try:
            pattern = re.compile(camera_pattern)
        except re.error as error:
            raise DatasetError(f'--camera-pattern {camera_pattern!r} is not a valid regular expression: '
                               f'{error}') from error
        present = [s for s in SPLITS if os.path.isdir(os.path.join(root, s))]
        if 'train' not in present or len(present) == 2:
            raise DatasetError(f'{root} must hold train/ and either both query/ and gallery/ or neither '
                               f'(found: {", ".join(present) or "none of them"})\n'
                               f'Expected layout:\n{self.layout.replace("<root>", root)}')
        self.has_test_split = len(present) == 3
        samples = {s: self._walk(os.path.join(root, s), min_seq_len) for s in present}
        self.has_train_ids = samples['train'][0][0] is not None
        cameras = self._cameras(samples, pattern, camera_pattern)
        self.has_camera_ids = cameras is not None

        train_ids = {name: i for i, name in enumerate(sorted({e[0] for e in samples['train']}))}
        test = samples.get('query', []) + samples.get('gallery', [])
        test_ids = {name: i for i, name in enumerate(sorted({e[0] for e in test}))}
        if cameras is not None:
            cam_ids = {c: i for i, c in enumerate(sorted(set(cameras.values()), key=natural_key))}
        keys = {k: i for i, k in enumerate(sorted({(e[0], e[1]) for e in test}))}

        def items(split, pids):
            out = []
            for entry in samples.get(split, []):
                identity, key, sample = entry[:3]
                if cameras is not None:
                    camid = cam_ids[cameras[split, key, identity]]
                else:
                    camid = 0 if split == 'train' else keys[identity, key]
                out.append((sample, pids[identity], camid))
            return out
        self._finish(items('train', train_ids), items('query', test_ids), items('gallery', test_ids), verbose)

    def _cameras(self, samples, pattern, camera_pattern):
        """{(split, key, identity): camera name}, or None when the dataset has no camera ids."""
        with_folder = [(s, e) for s in samples for e in samples[s] if e[3] is not None]
        total = sum(len(v) for v in samples.values())
        if with_folder:
            if len(with_folder) != total:
                split, entry = next((s, e) for s in samples for e in samples[s] if e[3] is None)
                raise DatasetError(f'{os.path.join(self.dataset_dir, split, entry[0], entry[1])} has no '
                                   f'camera folder, but other identities do: use '
                                   f'<identity>/<camera>/... everywhere or nowhere')
            return {(s, e[1], e[0]): e[3] for s, e in with_folder}
        found, missing = {}, []
        for split, entries in samples.items():
            for identity, key, _, _, names in entries:
                match = next((m for m in map(pattern.search, names) if m), None)
                if match is None:
                    missing.append(os.path.join(self.dataset_dir, split, identity or '', key))
                else:
                    found[split, key, identity] = match.group(1) if pattern.groups else match.group(0)
        if found and missing:
            raise DatasetError(f'--camera-pattern {camera_pattern!r} finds a camera in {len(found)} '
                               f'names but not in {len(missing)}, e.g. {missing[0]}: fix the names or '
                               f'pass a pattern that matches all of them (or none)')
        return found or None


class ImageFolder(_FolderDataset):
    __doc__ = _FolderDataset.__doc__
    name, video = 'image_folder', False
    layout = ('  <root>/train/<identity>/<image>            (any image extension)\n'
              '  <root>/query/<identity>/<image>\n'
              '  <root>/gallery/<identity>/<image>\n'
              '  or <root>/<split>/<identity>/<camera>/<image> for camera ids')

    def _walk(self, split_dir, min_seq_len):
        """[(identity, key, img_path, camera folder or None, names to search for a camera token)];
        identity None for the images of a flat (unlabelled) train/."""
        identities, flat = _listing(split_dir)
        if flat:
            if identities or os.path.basename(split_dir) != 'train':
                raise DatasetError(f'{split_dir} holds images directly{" and folders" if identities else ""}: only '
                                   f'train/ may be a flat folder of unlabelled crops (for train_img_model_usl.py); '
                                   f'query/ and gallery/ need <identity>/ folders')
            return [(None, name, os.path.join(split_dir, name), None, (name,)) for name in flat]
        entries = []
        for identity in identities:
            identity_dir = os.path.join(split_dir, identity)
            dirs, images = _listing(identity_dir)
            if dirs and images:
                raise DatasetError(f'{identity_dir} holds both images and folders: put images directly in '
                                   f'<identity>/ or in <identity>/<camera>/, not both')
            entries += [(identity, name, os.path.join(identity_dir, name), None, (name,)) for name in images]
            for camera in dirs:
                for name in _listing(os.path.join(identity_dir, camera))[1]:
                    entries.append((identity, f'{camera}/{name}', os.path.join(identity_dir, camera, name),
                                    camera, (name,)))
        if not entries:
            raise DatasetError(f'no image in {split_dir}\nExpected layout:\n{self.layout}')
        return entries


class VideoFolder(_FolderDataset):
    __doc__ = _FolderDataset.__doc__
    name, video = 'video_folder', True
    layout = ('  <root>/train/<identity>/<tracklet>/<frames>   (frames in name order)\n'
              '  <root>/query/<identity>/<tracklet>/<frames>\n'
              '  <root>/gallery/<identity>/<tracklet>/<frames>\n'
              '  or <root>/<split>/<identity>/<camera>/<tracklet>/<frames> for camera ids')

    def _walk(self, split_dir, min_seq_len):
        """[(identity, key, frame paths, camera folder or None, names to search for a camera token)],
        tracklets shorter than min_seq_len dropped."""
        entries = []
        for identity in _listing(split_dir)[0]:
            identity_dir = os.path.join(split_dir, identity)
            for child in _listing(identity_dir)[0]:
                child_dir = os.path.join(identity_dir, child)
                dirs, frames = _listing(child_dir)
                if dirs and frames:
                    raise DatasetError(f'{child_dir} holds both frames and folders: use '
                                       f'<identity>/<tracklet>/<frames> or <identity>/<camera>/<tracklet>/<frames>')
                if frames:
                    entries.append((identity, child, tuple(os.path.join(child_dir, f) for f in frames),
                                    None, (child, frames[0])))
                for tracklet in dirs:
                    tracklet_dir = os.path.join(child_dir, tracklet)
                    frames = _listing(tracklet_dir)[1]
                    if frames:
                        entries.append((identity, f'{child}/{tracklet}',
                                        tuple(os.path.join(tracklet_dir, f) for f in frames), child,
                                        (tracklet, frames[0])))
        entries = [e for e in entries if len(e[2]) >= min_seq_len]
        if not entries:
            raise DatasetError(f'no tracklet in {split_dir} (min_seq_len={min_seq_len})\n'
                               f'Expected layout:\n{self.layout}')
        return entries


class CombinedDataset(ReidDataset):
    """The union of several datasets' train splits, for training only (query == gallery == []).

    Each dataset's pids are offset by the train ids of the datasets before it, and its train
    cameras (renumbered 0..k-1 in ascending order) by their train cameras, so no two datasets
    share a pid or a camid.
    """
    has_test_split = False

    def __init__(self, datasets, verbose=True):
        if not datasets:
            raise DatasetError('combine_train needs at least one dataset')
        if len({d.video for d in datasets}) > 1:
            raise DatasetError('cannot train on image and video datasets together: '
                               + ', '.join(f'{d.name} ({"video" if d.video else "image"})' for d in datasets))
        self.datasets = datasets
        self.video = datasets[0].video
        self.name = self.title = '+'.join(d.name for d in datasets)
        self.has_camera_ids = all(d.has_camera_ids for d in datasets)
        self.has_train_ids = all(d.has_train_ids for d in datasets)
        train, pid_offset, cam_offset = [], 0, 0
        for d in datasets:
            cams = {c: i for i, c in enumerate(sorted({c for _, _, c in d.train}))}
            train += [(x, pid + pid_offset, cams[c] + cam_offset) for x, pid, c in d.train]
            pid_offset += d.num_train_pids
            cam_offset += d.num_train_cams
        self._finish(train, [], [], verbose=False)
        if verbose:
            print_table(self.title, 'tracklets' if self.video else 'images',
                        [(d.name, d.num_train_pids, len(d.train)) for d in datasets]
                        + [('train', self.num_train_pids, len(train))])


def combine_train(datasets, verbose=True):
    """One dataset whose train split is the union of the datasets' train splits (see CombinedDataset)."""
    return CombinedDataset(list(datasets), verbose)
