"""The six further benchmarks on full-size trees built by ../shared/tools from the real metadata:
official statistics exactly, and each pitfall of ../shared/data/README.md. Skipped without ../shared."""
import csv
import json
import os

import numpy as np
import pytest
from PIL import Image
from scipy.io import loadmat

import data_manager
from conftest import shared_path
from data_manager import DatasetError


def stats(dataset):
    return [(dataset.num_train_pids, len(dataset.train)), (dataset.num_query_pids, len(dataset.query)),
            (dataset.num_gallery_pids, len(dataset.gallery))]


def frame_count(split):
    return sum(len(paths) for paths, _, _ in split)


def test_dukemtmcreid(real_dukemtmcreid_root, capsys):
    dataset = data_manager.init_dataset('dukemtmcreid', root=str(real_dukemtmcreid_root))
    table = capsys.readouterr().out
    assert stats(dataset) == [(702, 16522), (702, 2228), (1110, 17661)]
    assert 'train    |   702 |    16522' in table and 'total    |  1404 |    36411' in table
    lists = shared_path('data', 'extra', 'dukemtmcreid')
    assert sorted(os.path.basename(p) for p, _, _ in dataset.train) == sorted((lists / 'train.txt').read_text().split())
    # pids reach 7,140: the relabelling follows ascending original pids, not set order.
    original = sorted({int(os.path.basename(p)[:4]) for p, _, _ in dataset.train})
    assert max(original) > 7000
    for path, label, camid in dataset.train:
        name = os.path.basename(path)
        assert original[label] == int(name[:4]) and camid == int(name[6]) - 1
    assert {c for _, _, c in dataset.gallery} == set(range(8)) and dataset.num_train_cams == 8
    query_pids, gallery_pids = {p for _, p, _ in dataset.query}, {p for _, p, _ in dataset.gallery}
    assert query_pids < gallery_pids and len(gallery_pids - query_pids) == 408
    assert 0 not in gallery_pids and -1 not in gallery_pids, 'nothing is junk, no 0000 name'
    # Every query has a match in another camera.
    gallery_cams = {}
    for _, pid, camid in dataset.gallery:
        gallery_cams.setdefault(pid, set()).add(camid)
    assert all(gallery_cams[pid] - {camid} for _, pid, camid in dataset.query)


@pytest.mark.parametrize('kind, figures', [
    ('detected', [(767, 7365), (700, 1400), (700, 5332)]),
    ('labeled', [(767, 7368), (700, 1400), (700, 5328)])])
def test_cuhk03_new_protocol(real_cuhk03_root, kind, figures, capsys):
    dataset = data_manager.init_dataset('cuhk03', root=str(real_cuhk03_root), cuhk03_labeled=kind == 'labeled')
    assert 'Extracting' in capsys.readouterr().out
    assert stats(dataset) == figures
    # The official train list: the same files with the same 0..766 labels (ascending relabelling).
    official = dict(line.split() for line in
                    shared_path('data', 'extra', 'cuhk03', f'train_cuhk03_{kind}.txt').read_text().splitlines())
    assert {f'cuhk03_{kind}/{os.path.basename(p)}': str(pid) for p, pid, _ in dataset.train} == official
    # camid is the view (third field of the name); each test id has one query per view.
    for path, _, camid in dataset.train + dataset.query + dataset.gallery:
        assert camid == int(os.path.basename(path).split('_')[2]) - 1
    assert sorted((pid, camid) for _, pid, camid in dataset.query) == sorted(
        {(pid, view) for _, pid, _ in dataset.query for view in (0, 1)})
    assert {p for _, p, _ in dataset.query} == {p for _, p, _ in dataset.gallery}
    protocol = loadmat(real_cuhk03_root / 'cuhk03' / f'cuhk03_new_protocol_config_{kind}.mat')
    assert [pid for _, pid, _ in dataset.query] == protocol['labels'].ravel()[protocol['query_idx'].ravel() - 1].tolist()
    # Each extracted file came from its own cell: pixel (0, 0) = (pair, person // 256, person % 256),
    # pixel (0, 1) = (slot, 1 detected / 2 labeled, 0).
    for path, _, _ in dataset.query[::97]:
        pair, person, _, slot = (int(v) for v in os.path.basename(path)[:-4].split('_'))
        pixels = np.asarray(Image.open(path))
        assert pixels[0, 0].tolist() == [pair, person // 256, person % 256]
        assert pixels[0, 1].tolist() == [slot, 1 if kind == 'detected' else 2, 0]
    names = os.listdir(real_cuhk03_root / 'cuhk03' / f'images_{kind}')
    assert len(names) == (14097 if kind == 'detected' else 14096)
    if kind == 'labeled':
        assert len({n.split('_')[2] for n in names if n.startswith('3_068_')}) == 1, 'one view only'
    # A second load uses the cache.
    data_manager.init_dataset('cuhk03', root=str(real_cuhk03_root), cuhk03_labeled=kind == 'labeled')
    assert 'Extracting' not in capsys.readouterr().out


def test_cuhk03_classic_splits(real_cuhk03_root):
    import h5py
    with h5py.File(real_cuhk03_root / 'cuhk03' / 'cuhk03_release' / 'cuhk-03.mat', 'r') as mat:
        testsets = [mat[ref][:].T.astype(int) for ref in mat['testsets'][0]]
    assert len(testsets) == 20
    for split_id in (0, 19):
        dataset = data_manager.init_dataset('cuhk03', root=str(real_cuhk03_root), cuhk03_classic_split=True,
                                            split_id=split_id, verbose=False)
        assert (dataset.num_train_pids, dataset.num_query_pids) == (1367, 100)
        assert dataset.query == dataset.gallery
        assert len(dataset.train) + len(dataset.query) == 14097
        tested = {tuple(int(v) for v in os.path.basename(p).split('_')[:2]) for p, _, _ in dataset.query}
        assert tested == {tuple(row) for row in testsets[split_id]}
    with pytest.raises(DatasetError, match=r'testsets.*0\.\.19'):
        data_manager.init_dataset('cuhk03', root=str(real_cuhk03_root), cuhk03_classic_split=True, split_id=20)
    with pytest.raises(DatasetError, match='cuhk03_new_protocol_config_detected.mat'):
        data_manager.init_dataset('cuhk03', root=str(real_cuhk03_root), split_id=1)


def test_msmt17(real_msmt17_root, capsys):
    dataset = data_manager.init_dataset('msmt17', root=str(real_msmt17_root))
    assert 'total    |  4101 |   124068' in capsys.readouterr().out
    assert stats(dataset) == [(1041, 30248), (3060, 11659), (3060, 82161)]
    train_val = data_manager.init_dataset('msmt17', root=str(real_msmt17_root), msmt17_train_val=True, verbose=False)
    assert stats(train_val)[0] == (1041, 32621) and stats(train_val)[1:] == stats(dataset)[1:]
    for split in (dataset.train, dataset.query, dataset.gallery):
        assert {c for _, _, c in split} == set(range(15))
    for path, pid, camid in dataset.query[::500] + dataset.train[::500]:
        name = os.path.basename(path)
        assert int(name.split('_')[2]) == camid + 1 and os.path.basename(os.path.dirname(path)) == f'{pid:04d}'
        assert os.path.exists(path)
    # Train and test pids both count from 0: the same numbers are different people.
    assert {p for _, p, _ in dataset.query} == set(range(3060)) and dataset.num_train_cams == 15


def test_ilidsvid(real_ilidsvid_root, capsys):
    dataset = data_manager.init_dataset('ilidsvid', root=str(real_ilidsvid_root))
    assert 'number of images per tracklet: 22 ~ 192, average 70.8' in capsys.readouterr().out
    assert stats(dataset) == [(150, 300), (150, 150), (150, 150)]
    assert [frame_count(s) for s in (dataset.train, dataset.query, dataset.gallery)] == [21806, 9595, 11058]
    assert {c for _, _, c in dataset.query} == {0} and {c for _, _, c in dataset.gallery} == {1}
    # ls_set's first 150 entries are the test persons, 1-based indices into the sorted folders.
    persons = sorted(shared_path('data', 'extra', 'ilidsvid', 'persons.txt').read_text().split())
    assert persons[10] == 'person012'
    ls_set = loadmat(shared_path('data', 'extra', 'ilidsvid', 'train_test_splits_ilidsvid.mat'))['ls_set']
    assert {int(persons[i - 1][6:]) for i in ls_set[0, :150]} == {p for _, p, _ in dataset.query}
    with open(shared_path('data', 'extra', 'ilidsvid', 'frame_counts.csv')) as f:
        counts = {row['person']: int(row['cam1_frames']) for row in csv.DictReader(f)}
    for paths, pid, _ in dataset.query:
        assert len(paths) == counts[f'person{pid:03d}'] and list(paths) == sorted(paths)
    starts = {os.path.basename(paths[0])[-9:-4] for paths, _, _ in dataset.query}
    assert starts != {'00001'}, 'frame numbers start anywhere'
    for split_id in range(1, 10):
        other = data_manager.init_dataset('ilidsvid', root=str(real_ilidsvid_root), split_id=split_id, verbose=False)
        assert stats(other) == stats(dataset)
    with pytest.raises(DatasetError, match=r'train_test_splits_ilidsvid.mat.*0\.\.9'):
        data_manager.init_dataset('ilidsvid', root=str(real_ilidsvid_root), split_id=10)


def test_prid2011(real_prid2011_root, capsys):
    dataset = data_manager.init_dataset('prid2011', root=str(real_prid2011_root))
    assert 'number of images per tracklet: 28 ~ 675' in capsys.readouterr().out
    assert stats(dataset) == [(89, 178), (89, 89), (89, 89)]
    assert [frame_count(s) for s in (dataset.train, dataset.query, dataset.gallery)] == [19081, 10978, 8407]
    assert {c for _, _, c in dataset.query} == {0} and {c for _, _, c in dataset.gallery} == {1}
    splits = json.loads(shared_path('data', 'extra', 'prid2011', 'splits_prid2011.json').read_text())
    assert {p for _, p, _ in dataset.query} == {int(n[7:]) for n in splits[0]['test']}
    used = set()
    for split_id in range(10):
        other = data_manager.init_dataset('prid2011', root=str(real_prid2011_root), split_id=split_id, verbose=False)
        assert stats(other) == stats(dataset)
        used |= {p for _, p, _ in other.query + other.gallery}
        assert min(len(paths) for paths, _, _ in other.query + other.gallery) >= 27
    assert len(used) == 178 and max(used) <= 200, 'persons seen by one camera are never used'
    with pytest.raises(DatasetError, match=r'splits_prid2011.json.*0\.\.9'):
        data_manager.init_dataset('prid2011', root=str(real_prid2011_root), split_id=-1)


def test_dukemtmcvidreid(real_dukemtmcvidreid_root, capsys):
    dataset = data_manager.init_dataset('dukemtmcvidreid', root=str(real_dukemtmcvidreid_root))
    assert 'number of images per tracklet: 1 ~ 9324' in capsys.readouterr().out
    assert stats(dataset) == [(702, 2196), (702, 702), (1110, 2636)]
    assert [frame_count(s) for s in (dataset.train, dataset.query, dataset.gallery)] == [369656, 111848, 445764]
    # Parse order is sorted person folder, then tracklet folder: the order of the real tables.
    info = shared_path('data', 'extra', 'dukemtmcvidreid')
    gallery_info = np.load(info / 'gallery_info.npy')
    assert [(len(p), pid, c + 1) for p, pid, c in dataset.gallery] == [
        (e - s + 1, pid, cam) for s, e, pid, cam in gallery_info.tolist()]
    # Every query tracklet is also in gallery/ (the rows query_IDX.npy names): the same frames, pid
    # and camid, so the evaluator never counts the query's own copy as a match.
    def key(paths, split):
        base = str(real_dukemtmcvidreid_root / 'dukemtmc-vidreid' / 'DukeMTMC-VideoReID' / split)
        return tuple(os.path.relpath(p, base) for p in (paths[0], paths[-1])), len(paths)
    gallery_rows = {key(paths, 'gallery'): (row, pid, camid) for row, (paths, pid, camid) in enumerate(dataset.gallery)}
    copies = [gallery_rows[key(paths, 'query')] for paths, _, _ in dataset.query]
    assert [row for row, _, _ in copies] == np.load(info / 'query_IDX.npy').tolist()
    assert [(pid, camid) for _, pid, camid in copies] == [(pid, camid) for _, pid, camid in dataset.query]
    for paths, _, camid in dataset.query:
        assert int(os.path.basename(paths[0]).split('_')[1][1:]) == camid + 1
    short = data_manager.init_dataset('dukemtmcvidreid', root=str(real_dukemtmcvidreid_root), min_seq_len=16,
                                      verbose=False)
    assert [len(s) for s in (short.train, short.query, short.gallery)] == [2191, 698, 2625]
