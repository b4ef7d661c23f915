"""Video datasets: MARS, iLIDS-VID, PRID2011 and DukeMTMC-VideoReID.

Tracklets are (tuple_of_img_paths, pid, camid) with the frames in name order. Tracklets
shorter than min_seq_len frames are dropped from every split.
"""
import json
import os
import re

import numpy as np
from scipy.io import loadmat

from ._common import DatasetError, ReidDataset, check_split_id, relabel, require


def mars_folder(pid):
    """MARS folder and name prefix of a pid: 12 -> '0012', 0 -> '0000', -1 (junk) -> '00-1'."""
    return str(pid).rjust(4, '0')


def _frames(folder, extension):
    """The frame paths of one tracklet folder, sorted by name: one listdir, no stat."""
    prefix = folder + os.sep
    return tuple(prefix + n for n in sorted(os.listdir(folder)) if n.endswith(extension))


class Mars(ReidDataset):
    """MARS (Zheng et al., ECCV 2016): 1,261 identities, 20,478 tracklets from 6 cameras.

    The official split lives in info/: tracks_{train,test}_info.mat hold rows
    (start, end, pid, camera) with 1-based inclusive line numbers into {train,test}_name.txt,
    and query_IDX.mat the 1-based test rows used as queries; every other test row is gallery.
    Names look like 0001C1T0001F001.jpg (pid, camera, tracklet, frame) and lie in a folder
    named by the first four characters ('0000' distractors, '00-1' junk).
    """
    name, title, video = 'mars', 'MARS', True
    dataset_dir = 'mars'
    source = ('https://zheng-lab.cecs.anu.edu.au/Project/project_mars.html '
              '(split files: https://github.com/liangzheng06/MARS-evaluation/tree/master/info)')
    layout = ('  <root>/mars/info/{train_name.txt,test_name.txt,tracks_train_info.mat,\n'
              '                   tracks_test_info.mat,query_IDX.mat}\n'
              '  <root>/mars/bbox_train/0001/0001C1T0001F001.jpg ...\n'
              '  <root>/mars/bbox_test/0002/0002C1T0001F001.jpg ...')

    def __init__(self, root='data', min_seq_len=0, verbose=True, **options):
        self.dataset_dir = os.path.join(root, self.dataset_dir)
        require(self.dataset_dir, 'MARS directory', self.layout, self.source)
        for sub in ('bbox_train', 'bbox_test'):
            require(os.path.join(self.dataset_dir, sub), 'MARS image folder', self.layout, self.source)
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

        train = self._process_data(train_names, track_train, 'bbox_train', min_seq_len,
                                   what='tracks_train_info.mat')
        query = self._process_data(test_names, track_test[is_query], 'bbox_test', min_seq_len,
                                   what='tracks_test_info.mat (query rows)')
        gallery = self._process_data(test_names, track_test[~is_query], 'bbox_test', min_seq_len,
                                     what='tracks_test_info.mat (gallery rows)')
        self._finish(relabel(train), query, gallery, verbose)

    def _read_names(self, path):
        require(path, 'MARS info file', self.layout, self.source)
        with open(path) as f:
            return f.read().split()  # also strips the CRLF line ends of the official files

    def _read_mat(self, path, key):
        require(path, 'MARS info file', self.layout, self.source)
        content = loadmat(path)
        if key not in content:
            raise DatasetError(f'{path} has no variable {key!r}; is it the official MARS file?')
        return content[key].astype(np.int64)

    def _process_data(self, names, tracks, home_dir, min_seq_len, what):
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
        return tracklets



def _drop_short(tracklets, min_seq_len, what):
    kept = [t for t in tracklets if len(t[0]) >= min_seq_len]
    if not kept:
        raise DatasetError(f'{what}: no usable tracklet (min_seq_len={min_seq_len})')
    return kept


class _TwoCameraDataset(ReidDataset):
    """iLIDS-VID and PRID2011: one sequence per person and camera, 10 random half/half splits.

    Train: both sequences of the train persons. Query: the first camera's sequence of each
    test person (camid 0); gallery: the second camera's (camid 1). pids are the person
    numbers of the folder names (person012 -> 12, person_0012 -> 12), train relabelled.
    """
    cameras = ()          # the two camera folders
    extension = '.png'

    def _build(self, seq_dir, train_persons, test_persons, min_seq_len, verbose):
        def tracklets(persons, cams):
            items = []
            for person in persons:
                pid = int(re.sub(r'\D', '', person))
                for camid, cam in enumerate(self.cameras):
                    if camid in cams:
                        folder = os.path.join(seq_dir, cam, person)
                        require(folder, f'{self.title} sequence folder', self.layout, self.source)
                        items.append((_frames(folder, self.extension), pid, camid))
            return _drop_short(items, min_seq_len, f'{self.title} {seq_dir}')
        self._finish(relabel(tracklets(train_persons, (0, 1))), tracklets(test_persons, (0,)),
                     tracklets(test_persons, (1,)), verbose)


class ILIDSVID(_TwoCameraDataset):
    """iLIDS-VID (Wang et al., ECCV 2014): 300 persons, one sequence in each of 2 cameras.

    train_test_splits_ilidsvid.mat holds ls_set (10, 300): row i is split i, 1-based indices
    into the sorted person folders, the first 150 the test persons, the rest train. Frame
    numbers start anywhere (cam1_person225_01772.png): frames are sorted, not counted.
    """
    name, title, video = 'ilidsvid', 'iLIDS-VID', True
    dataset_dir = 'ilids-vid'
    cameras = ('cam1', 'cam2')
    source = 'https://xiatian-zhu.github.io/downloads_qmul_iLIDS-VID_ReID_dataset.html (iLIDS-VID.tar)'
    layout = ('  <root>/ilids-vid/i-LIDS-VID/sequences/cam1/person001/cam1_person001_00317.png ...\n'
              '  <root>/ilids-vid/i-LIDS-VID/sequences/cam2/person001/cam2_person001_00317.png ...\n'
              '  <root>/ilids-vid/train-test people splits/train_test_splits_ilidsvid.mat')

    def __init__(self, root='data', split_id=0, min_seq_len=0, verbose=True, **options):
        self.dataset_dir = os.path.join(root, self.dataset_dir)
        require(self.dataset_dir, 'iLIDS-VID directory', self.layout, self.source)
        seq_dir = os.path.join(self.dataset_dir, 'i-LIDS-VID', 'sequences')
        split_file = os.path.join(self.dataset_dir, 'train-test people splits', 'train_test_splits_ilidsvid.mat')
        require(os.path.join(seq_dir, 'cam1'), 'iLIDS-VID sequence folder', self.layout, self.source)
        require(split_file, 'iLIDS-VID split file', self.layout, self.source)
        ls_set = loadmat(split_file)['ls_set'].astype(int) - 1
        check_split_id(split_id, len(ls_set), split_file)
        persons = sorted(p for p in os.listdir(os.path.join(seq_dir, 'cam1')) if p.startswith('person'))
        row = ls_set[split_id]
        if row.min() < 0 or row.max() >= len(persons):
            raise DatasetError(f'{split_file}: split {split_id} names person index {row.max() + 1}, but '
                               f'{os.path.join(seq_dir, "cam1")} holds {len(persons)} person folders')
        half = len(row) // 2
        self._build(seq_dir, [persons[i] for i in row[half:]], [persons[i] for i in row[:half]],
                    min_seq_len, verbose)


class PRID2011(_TwoCameraDataset):
    """PRID2011 (Hirzer et al., SCIA 2011), multi_shot: 178 persons seen by both cameras.

    splits_prid2011.json (torchreid's) holds 10 splits {"train": [89 folders], "test": [89
    folders]} over persons 1-200 with at least 27 frames in each camera; the other folders on
    disk (persons seen by one camera only) are not used.
    """
    name, title, video = 'prid2011', 'PRID2011', True
    dataset_dir = 'prid2011'
    cameras = ('cam_a', 'cam_b')
    source = ('https://www.tugraz.at/institute/icg/research/team-bischof/lrs/downloads/PRID11/ '
              '(split file: https://github.com/KaiyangZhou/deep-person-reid, splits_prid2011.json)')
    layout = ('  <root>/prid2011/prid_2011/multi_shot/cam_a/person_0001/0001.png ...\n'
              '  <root>/prid2011/prid_2011/multi_shot/cam_b/person_0001/0001.png ...\n'
              '  <root>/prid2011/splits_prid2011.json')

    def __init__(self, root='data', split_id=0, min_seq_len=0, verbose=True, **options):
        self.dataset_dir = os.path.join(root, self.dataset_dir)
        require(self.dataset_dir, 'PRID2011 directory', self.layout, self.source)
        seq_dir = os.path.join(self.dataset_dir, 'prid_2011', 'multi_shot')
        split_file = os.path.join(self.dataset_dir, 'splits_prid2011.json')
        require(seq_dir, 'PRID2011 sequence folder', self.layout, self.source)
        require(split_file, 'PRID2011 split file', self.layout, self.source)
        with open(split_file) as f:
            splits = json.load(f)
        check_split_id(split_id, len(splits), split_file)
        self._build(seq_dir, splits[split_id]['train'], splits[split_id]['test'], min_seq_len, verbose)


class DukeMTMCVidReID(ReidDataset):
    """DukeMTMC-VideoReID (Wu et al., CVPR 2018): 1,404 identities and 408 distractors, 8 cameras.

    Folders {train,query,gallery}/<pid4>/<tracklet4>/ hold frames named like
    0001_C6_F0099_X30823.jpg (pid, camera, frame in the tracklet, frame in the video; 'D'
    instead of 'X' marks a distractor image). Every query tracklet is also in gallery/, and
    the standard protocol evaluates against gallery/ as it is: the query's own copy has the
    same pid and camera, so the evaluator never counts it. Each tracklet folder is listed once.
    """
    name, title, video = 'dukemtmcvidreid', 'DukeMTMC-VideoReID', True
    dataset_dir = os.path.join('dukemtmc-vidreid', 'DukeMTMC-VideoReID')
    source = 'https://github.com/Yu-Wu/DukeMTMC-VideoReID (DukeMTMC-VideoReID.zip)'
    layout = ('  <root>/dukemtmc-vidreid/DukeMTMC-VideoReID/train/0001/0003/0001_C6_F0099_X30823.jpg ...\n'
              '  <root>/dukemtmc-vidreid/DukeMTMC-VideoReID/query/<pid4>/<tracklet4>/...\n'
              '  <root>/dukemtmc-vidreid/DukeMTMC-VideoReID/gallery/<pid4>/<tracklet4>/...')
    frame_pattern = re.compile(r'^(\d{4})_C(\d)_F\d+_[XD]\d+\.jpg$')

    def __init__(self, root='data', min_seq_len=0, verbose=True, **options):
        self.dataset_dir = os.path.join(root, self.dataset_dir)
        require(self.dataset_dir, 'DukeMTMC-VideoReID directory', self.layout, self.source)
        train, query, gallery = (self._process_dir(split, min_seq_len) for split in ('train', 'query', 'gallery'))
        self._finish(relabel(train), query, gallery, verbose)

    def _process_dir(self, split, min_seq_len):
        split_dir = os.path.join(self.dataset_dir, split)
        require(split_dir, 'DukeMTMC-VideoReID split folder', self.layout, self.source)
        tracklets = []
        for pid_folder in sorted(os.listdir(split_dir)):
            pid_dir = os.path.join(split_dir, pid_folder)
            for tracklet in sorted(os.listdir(pid_dir)):
                paths = _frames(os.path.join(pid_dir, tracklet), '.jpg')
                if not paths:
                    continue
                match = self.frame_pattern.match(os.path.basename(paths[0]))
                if match is None or match.group(1) != pid_folder:
                    raise DatasetError(f'unexpected frame {paths[0]}: DukeMTMC-VideoReID frames in '
                                       f'{pid_folder}/ look like {pid_folder}_C6_F0099_X30823.jpg')
                tracklets.append((paths, int(pid_folder), int(match.group(2)) - 1))
        return _drop_short(tracklets, min_seq_len, f'DukeMTMC-VideoReID {split_dir}')
