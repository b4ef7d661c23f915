"""Image datasets: Market-1501, DukeMTMC-reID, CUHK03 and MSMT17."""
import os
import re
import shutil

import numpy as np
from scipy.io import loadmat

from ._common import DatasetError, ReidDataset, check_split_id, relabel, require


def _parse_named_dir(dir_path, pattern, example, what, layout):
    """[(img_path, pid, camid)] for a folder of '<pid>_c<camera>...jpg' names, junk (pid -1) dropped.

    pattern must capture the pid (group 1) and the 1-based camera (group 2).
    """
    items = []
    for name in sorted(os.listdir(dir_path)):
        if not name.endswith('.jpg'):
            continue  # the real folders also hold Thumbs.db
        match = pattern.match(name)
        if match is None:
            raise DatasetError(f'unexpected file name {os.path.join(dir_path, name)}: {what} names '
                               f'look like {example}')
        pid = int(match.group(1))
        if pid == -1:
            continue
        items.append((os.path.join(dir_path, name), pid, int(match.group(2)) - 1))
    if not items:
        raise DatasetError(f'no usable image in {dir_path}\nExpected layout:\n{layout}')
    return items


class _BoundingBoxDataset(ReidDataset):
    """Market-1501-style folders bounding_box_train/, query/, bounding_box_test/ of named images."""
    dataset_dir = ''
    source = ''
    layout = ''
    name_pattern = None
    example = ''

    def __init__(self, root='data', verbose=True, **options):
        self.dataset_dir = os.path.join(root, self.dataset_dir)
        require(self.dataset_dir, f'{self.title} directory', self.layout, self.source)
        splits = []
        for subdir in ('bounding_box_train', 'query', 'bounding_box_test'):
            dir_path = os.path.join(self.dataset_dir, subdir)
            require(dir_path, f'{self.title} split folder', self.layout, self.source)
            splits.append(_parse_named_dir(dir_path, self.name_pattern, self.example, self.title,
                                           self.layout))
        train, query, gallery = splits
        self._finish(relabel(train), query, gallery, verbose)


class Market1501(_BoundingBoxDataset):
    """Market-1501 (Zheng et al., ICCV 2015): 1,501 identities seen by 6 cameras.

    Names look like 0002_c1s1_000451_03.jpg (pid, camera, sequence, frame, box); pid -1 is
    junk (dropped), 0000 a distractor (kept in the gallery); 24 real names end in .jpg.jpg
    and are read as they are.
    """
    name, title = 'market1501', 'Market1501'
    dataset_dir = 'market1501'
    source = 'https://zheng-lab.cecs.anu.edu.au/Project/project_reid.html'
    layout = ('  <root>/market1501/bounding_box_train/0002_c1s1_000451_03.jpg ...\n'
              '  <root>/market1501/query/0001_c1s1_001051_00.jpg ...\n'
              '  <root>/market1501/bounding_box_test/0000_c1s1_000151_01.jpg ...')
    name_pattern = re.compile(r'^(-1|\d{4})_c(\d)s\d+_\d+_\d+\.jpg(\.jpg)?$')
    example = '0002_c1s1_000451_03.jpg (pid_c<camera>s<seq>_<frame>_<box>.jpg)'


class DukeMTMCreID(_BoundingBoxDataset):
    """DukeMTMC-reID (Zheng et al., ICCV 2017): 1,404 identities and 408 distractors, 8 cameras.

    Names look like 0001_c2_f0046182.jpg (pid, camera 1-8, frame). Nothing is junk: the 408
    distractor ids are ordinary pids that occur only in the gallery.
    """
    name, title = 'dukemtmcreid', 'DukeMTMC-reID'
    dataset_dir = os.path.join('dukemtmc-reid', 'DukeMTMC-reID')
    source = 'https://github.com/layumi/DukeMTMC-reID_evaluation (DukeMTMC-reID.zip)'
    layout = ('  <root>/dukemtmc-reid/DukeMTMC-reID/bounding_box_train/0001_c2_f0046182.jpg ...\n'
              '  <root>/dukemtmc-reid/DukeMTMC-reID/query/0005_c2_f0046985.jpg ...\n'
              '  <root>/dukemtmc-reid/DukeMTMC-reID/bounding_box_test/0002_c1_f0044158.jpg ...')
    name_pattern = re.compile(r'^(\d{4})_c(\d)_f\d+\.jpg$')
    example = '0001_c2_f0046182.jpg (pid_c<camera>_f<frame>.jpg)'


def cuhk03_image_name(pair, person, slot):
    """Name of a cuhk-03.mat cell's image as the protocol files' filelist has it: 1_001_1_01.png.

    pair 1-5, person 1-based within the pair, slot 1-10 (1-5 are view 1, 6-10 view 2).
    """
    return f'{pair}_{person:03d}_{1 if slot <= 5 else 2}_{slot:02d}.png'


def extract_cuhk03_images(mat_path, kind, out_dir):
    """Write every image of cuhk-03.mat's kind ('detected' or 'labeled') to out_dir as PNG.

    The images go into a temporary folder that is renamed to out_dir at the end, so an
    interrupted extraction leaves no out_dir and is redone on the next run.
    """
    import h5py  # only CUHK03 needs it
    from PIL import Image

    partial = f'{out_dir}.partial-{os.getpid()}'
    shutil.rmtree(partial, ignore_errors=True)  # left by a killed run that had this process id
    os.makedirs(partial)
    try:
        with h5py.File(mat_path, 'r') as mat:
            for pair, pair_ref in enumerate(mat[kind][0], start=1):
                cells = mat[pair_ref][:].T  # (persons, 10) references
                for person, row in enumerate(cells, start=1):
                    for slot, ref in enumerate(row, start=1):
                        img = mat[ref][:].T  # (H, W, 3); MATLAB's empty [] reads as the 1-D [0 0]
                        if img.ndim < 3:
                            continue
                        Image.fromarray(img).save(os.path.join(partial, cuhk03_image_name(pair, person, slot)))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    try:
        os.rename(partial, out_dir)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        if not os.path.isdir(out_dir):  # else another process finished the same extraction first
            raise


def _classic_testsets(mat_path):
    """Person-id offsets of the 5 camera pairs (global id = offset[pair - 1] + person, 1..1467)
    and cuhk-03.mat's testsets, each a (100, 2) int array of [pair, person]."""
    import h5py
    with h5py.File(mat_path, 'r') as mat:
        sizes = [mat[ref].shape[1] for ref in mat['detected'][0]]  # HDF5 (10, persons)
        testsets = [mat[ref][:].T.astype(int) for ref in mat['testsets'][0]]  # (100, 2) [pair, person]
    offsets = np.cumsum([0] + sizes)
    return offsets, testsets


class CUHK03(ReidDataset):
    """CUHK03 (Li et al., CVPR 2014): 1,467 identities, each seen in two views of one of 5 camera pairs.

    The images live in cuhk03_release/cuhk-03.mat (MATLAB v7.3, read with h5py); they are
    extracted once into images_{detected,labeled}/ beside it, named as the protocol files'
    filelist names them. camid is the view inside the camera pair (0 or 1).

    New protocol (default; Zhong et al., CVPR 2017): cuhk03_new_protocol_config_<kind>.mat holds
    filelist, labels (global person 1..1467), camId (view) and 1-based train/query/gallery rows;
    query and gallery keep the global labels, train relabels them. Classic protocol
    (cuhk03_classic_split=True): cuhk-03.mat's 20 testsets of 100 [pair, person]; split_id picks
    one, its persons' images form both query and gallery (the evaluator skips same-view matches),
    every other person is train.
    """
    name, title = 'cuhk03', 'CUHK03'
    dataset_dir = 'cuhk03'
    source = ('https://www.ee.cuhk.edu.hk/~xgwang/CUHK_identification.html (cuhk03_release.zip; '
              'new-protocol files: https://github.com/zhunzhong07/person-re-ranking/tree/master/CUHK03-NP)')
    layout = ('  <root>/cuhk03/cuhk03_release/cuhk-03.mat\n'
              '  <root>/cuhk03/cuhk03_new_protocol_config_detected.mat\n'
              '  <root>/cuhk03/cuhk03_new_protocol_config_labeled.mat')

    def __init__(self, root='data', split_id=0, cuhk03_labeled=False, cuhk03_classic_split=False,
                 verbose=True, **options):
        self.dataset_dir = os.path.join(root, self.dataset_dir)
        require(self.dataset_dir, 'CUHK03 directory', self.layout, self.source)
        mat_path = os.path.join(self.dataset_dir, 'cuhk03_release', 'cuhk-03.mat')
        require(mat_path, 'CUHK03 image file', self.layout, self.source)
        kind = 'labeled' if cuhk03_labeled else 'detected'
        self.title = f'CUHK03 ({kind}, {"classic split" if cuhk03_classic_split else "new protocol"})'
        self.image_dir = os.path.join(self.dataset_dir, f'images_{kind}')
        if not os.path.isdir(self.image_dir):
            if verbose:
                print(f'Extracting the {kind} images of {mat_path} into {self.image_dir} (once)')
            extract_cuhk03_images(mat_path, kind, self.image_dir)
        on_disk = set(os.listdir(self.image_dir))
        if cuhk03_classic_split:
            train, query, gallery = self._classic_split(mat_path, on_disk, split_id)
        else:
            protocol = os.path.join(self.dataset_dir, f'cuhk03_new_protocol_config_{kind}.mat')
            require(protocol, 'CUHK03 new-protocol split file', self.layout, self.source)
            check_split_id(split_id, 1, f'{protocol} (use --cuhk03-classic-split for the 20 classic splits)')
            train, query, gallery = self._new_protocol(protocol, on_disk)
        self._finish(relabel(train), query, gallery, verbose)

    def _new_protocol(self, protocol, on_disk):
        m = loadmat(protocol)
        names = [str(x[0]) for x in m['filelist'].ravel()]
        missing = [n for n in names if n not in on_disk]
        if missing:
            raise DatasetError(f'{protocol} names {len(missing)} image(s) that are not in {self.image_dir}, '
                               f'e.g. {missing[0]}: delete {self.image_dir} to extract it again')
        labels = m['labels'].ravel().astype(int)
        views = m['camId'].ravel().astype(int) - 1

        def rows(key):
            return [(os.path.join(self.image_dir, names[i]), int(labels[i]), int(views[i]))
                    for i in m[key].ravel().astype(int) - 1]
        return rows('train_idx'), rows('query_idx'), rows('gallery_idx')

    def _classic_split(self, mat_path, on_disk, split_id):
        offsets, testsets = _classic_testsets(mat_path)
        check_split_id(split_id, len(testsets), f'{mat_path} (testsets)')
        test_ids = {int(offsets[pair - 1] + person) for pair, person in testsets[split_id]}
        train, test = [], []
        for name in sorted(n for n in on_disk if n.endswith('.png')):
            pair, person, view, _ = (int(v) for v in name[:-len('.png')].split('_'))
            pid = int(offsets[pair - 1] + person)
            item = (os.path.join(self.image_dir, name), pid, view - 1)
            (test if pid in test_ids else train).append(item)
        return train, test, list(test)


class MSMT17(ReidDataset):
    """MSMT17 (Wei et al., CVPR 2018): 4,101 identities, 15 cameras.

    list_{train,val,query,gallery}.txt lines read '<pid4>/<name>.jpg <pid>'; the camera is the
    third field of the name (01-15 -> 0-14). Train and test pids both count from 0 and are
    different people. Train uses list_train (as torchreid, fast-reid and BoT do) or, with
    msmt17_train_val=True, list_train + list_val (the paper's training set).
    """
    name, title = 'msmt17', 'MSMT17'
    dataset_dir = 'msmt17'
    source = 'https://www.pkuvmc.com/dataset.html (MSMT17_V1 or MSMT17_V2, on request)'
    # (version folder, train image folder, test image folder), in the order they are tried
    releases = (('MSMT17_V1', 'train', 'test'), ('MSMT17_V2', 'mask_train_v2', 'mask_test_v2'),
                ('', 'train', 'test'), ('', 'mask_train_v2', 'mask_test_v2'))
    layout = ('  <root>/msmt17/MSMT17_V1/{list_train,list_val,list_query,list_gallery}.txt\n'
              '  <root>/msmt17/MSMT17_V1/train/0000/0000_000_01_0303morning_0015_0.jpg ...\n'
              '  <root>/msmt17/MSMT17_V1/test/0000/0000_000_01_0303morning_0008_0.jpg ...\n'
              '  (or MSMT17_V2/ with mask_train_v2/ and mask_test_v2/, or the lists and image\n'
              '  folders directly in <root>/msmt17/)')

    def __init__(self, root='data', msmt17_train_val=False, verbose=True, **options):
        self.dataset_dir = os.path.join(root, self.dataset_dir)
        require(self.dataset_dir, 'MSMT17 directory', self.layout, self.source)
        for version, train_dir, test_dir in self.releases:
            base = os.path.join(self.dataset_dir, version)
            if os.path.isdir(os.path.join(base, train_dir)) and os.path.isdir(os.path.join(base, test_dir)):
                break
        else:
            raise DatasetError(f'no MSMT17 release found in {self.dataset_dir}\n'
                               f'Expected layout:\n{self.layout}\nGet the dataset from {self.source}.')
        self.base = base
        train = self._read_list('list_train.txt', train_dir)
        if msmt17_train_val:
            train += self._read_list('list_val.txt', train_dir)
        self.title = 'MSMT17 (train + val)' if msmt17_train_val else 'MSMT17'
        query = self._read_list('list_query.txt', test_dir)
        gallery = self._read_list('list_gallery.txt', test_dir)
        self._finish(relabel(train), query, gallery, verbose)

    def _read_list(self, list_name, image_dir):
        """[(img_path, pid, camid)] from one list file; every pid folder it names must exist."""
        path = os.path.join(self.base, list_name)
        require(path, 'MSMT17 list file', self.layout, self.source)
        image_dir = os.path.join(self.base, image_dir)
        items, folders = [], set()
        with open(path) as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rel_path, pid = line.split()
                    camid = int(os.path.basename(rel_path).split('_')[2]) - 1
                    pid = int(pid)
                except (ValueError, IndexError):
                    raise DatasetError(f'{path}:{line_no}: expected "<pid4>/<name>.jpg <pid>" with names '
                                       f'like 0000_000_01_0303morning_0015_0.jpg, got {line.strip()!r}')
                items.append((os.path.join(image_dir, rel_path), pid, camid))
                folders.add(rel_path.split('/')[0])
        if not items:
            raise DatasetError(f'{path} lists no image')
        missing = sorted(folders - set(os.listdir(image_dir)))
        if missing:
            raise DatasetError(f'{path} names images in {len(missing)} folder(s) that {image_dir} lacks, '
                               f'e.g. {os.path.join(image_dir, missing[0])}')
        return items
