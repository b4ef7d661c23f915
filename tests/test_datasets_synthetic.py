"""The six further benchmarks on tiny generated trees in their real layouts (runs in any clone)."""
import os
import shutil
import subprocess
import sys

import pytest
from scipy.io import loadmat

import data_manager
import synthetic_data
from data_manager import DatasetError

BENCHMARKS = ['dukemtmcreid', 'cuhk03', 'msmt17', 'ilidsvid', 'prid2011', 'dukemtmcvidreid']


@pytest.mark.parametrize('name', BENCHMARKS)
def test_contract(synthetic_benchmarks_root, name, capsys):
    dataset = data_manager.init_dataset(name, root=str(synthetic_benchmarks_root), split_id=0,
                                        camera_pattern=r'c(\d+)', msmt17_train_val=False, min_seq_len=0)
    assert f'=> {dataset.title} loaded' in capsys.readouterr().out
    assert dataset.video == data_manager.is_video(name) == (name in ('ilidsvid', 'prid2011', 'dukemtmcvidreid'))
    assert dataset.has_camera_ids and dataset.has_test_split
    assert sorted({pid for _, pid, _ in dataset.train}) == list(range(dataset.num_train_pids))
    assert dataset.num_train_cams == len({c for _, _, c in dataset.train})
    for x, pid, camid in dataset.train + dataset.query + dataset.gallery:
        assert isinstance(x, tuple) == dataset.video and camid >= 0 and pid >= 0
    assert {p for _, p, _ in dataset.query} <= {p for _, p, _ in dataset.gallery}


@pytest.mark.parametrize('name', BENCHMARKS)
def test_missing_dataset_names_layout_and_source(tmp_path, name):
    with pytest.raises(DatasetError) as info:
        data_manager.init_dataset(name, root=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path) in message and 'Expected layout' in message and 'Get the dataset from http' in message


def test_h5py_is_imported_lazily():
    code = 'import sys, data_manager; print("h5py" in sys.modules)'
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.stdout.strip() == 'False'


def test_dukemtmcreid(synthetic_benchmarks_root):
    dataset = data_manager.init_dataset('dukemtmcreid', root=str(synthetic_benchmarks_root), verbose=False)
    original = sorted({int(os.path.basename(p)[:4]) for p, _, _ in dataset.train})
    for path, label, camid in dataset.train:
        name = os.path.basename(path)
        assert original[label] == int(name[:4]) and camid == int(name.split('_c')[1][0]) - 1
    query_pids = {p for _, p, _ in dataset.query}
    assert len({p for _, p, _ in dataset.gallery} - query_pids) == 2, 'distractor ids: gallery only'


def test_cuhk03_new_protocol_and_cache(synthetic_benchmarks_root, tmp_path, capsys):
    shutil.copytree(synthetic_benchmarks_root / 'cuhk03' / 'cuhk03_release', tmp_path / 'cuhk03' / 'cuhk03_release')
    for kind in ('detected', 'labeled'):
        name = f'cuhk03_new_protocol_config_{kind}.mat'
        shutil.copy(synthetic_benchmarks_root / 'cuhk03' / name, tmp_path / 'cuhk03' / name)
        dataset = data_manager.init_dataset('cuhk03', root=str(tmp_path), cuhk03_labeled=kind == 'labeled')
        assert f'Extracting the {kind} images' in capsys.readouterr().out
        protocol = loadmat(tmp_path / 'cuhk03' / name)
        filelist = [str(x[0]) for x in protocol['filelist'].ravel()]
        assert sorted(os.listdir(tmp_path / 'cuhk03' / f'images_{kind}')) == sorted(filelist)
        for split, key in ((dataset.query, 'query_idx'), (dataset.gallery, 'gallery_idx')):
            rows = protocol[key].ravel() - 1
            assert [os.path.basename(p) for p, _, _ in split] == [filelist[i] for i in rows]
            assert [pid for _, pid, _ in split] == protocol['labels'].ravel()[rows].tolist()
        assert len(dataset.query) == 2 * dataset.num_query_pids, 'one query per view'
        assert {c for _, _, c in dataset.query} == {0, 1}
    # The labeled person seen in one view only is a train person.
    labeled = {os.path.basename(p) for p, _, _ in dataset.train}
    assert any(n.startswith('1_005_1_') for n in labeled) and not any(n.startswith('1_005_2_') for n in labeled)
    # A stale cache that lacks a file of the protocol is reported, with the fix.
    os.remove(tmp_path / 'cuhk03' / 'images_labeled' / sorted(labeled)[0])
    with pytest.raises(DatasetError, match='delete .*images_labeled'):
        data_manager.init_dataset('cuhk03', root=str(tmp_path), cuhk03_labeled=True)


def test_cuhk03_interrupted_extraction_is_redone(synthetic_benchmarks_root, tmp_path, monkeypatch):
    shutil.copytree(synthetic_benchmarks_root / 'cuhk03', tmp_path / 'cuhk03',
                    ignore=shutil.ignore_patterns('images_*'))
    from PIL import Image
    save = Image.Image.save
    calls = []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return save(self, *args, **kwargs)
    monkeypatch.setattr(Image.Image, 'save', interrupted)
    with pytest.raises(KeyboardInterrupt):
        data_manager.init_dataset('cuhk03', root=str(tmp_path), verbose=False)
    assert not any(n.startswith('images_') for n in os.listdir(tmp_path / 'cuhk03')), 'nothing half-written'
    monkeypatch.setattr(Image.Image, 'save', save)
    dataset = data_manager.init_dataset('cuhk03', root=str(tmp_path), verbose=False)
    assert all(os.path.getsize(p) > 0 for p, _, _ in dataset.train)


def test_cuhk03_classic_split(synthetic_benchmarks_root):
    import h5py
    with h5py.File(synthetic_benchmarks_root / 'cuhk03' / 'cuhk03_release' / 'cuhk-03.mat', 'r') as mat:
        testsets = [mat[ref][:].T.astype(int) for ref in mat['testsets'][0]]
    assert len(testsets) == 3
    for split_id, testset in enumerate(testsets):
        dataset = data_manager.init_dataset('cuhk03', root=str(synthetic_benchmarks_root), cuhk03_classic_split=True,
                                            split_id=split_id, verbose=False)
        tested = {tuple(int(v) for v in os.path.basename(p).split('_')[:2]) for p, _, _ in dataset.query}
        assert tested == {tuple(row) for row in testset} and dataset.query == dataset.gallery
        assert dataset.num_train_pids == 16 - len(testset)
    with pytest.raises(DatasetError, match=r'--split-id 3 .*testsets.*0\.\.2'):
        data_manager.init_dataset('cuhk03', root=str(synthetic_benchmarks_root), cuhk03_classic_split=True, split_id=3)


@pytest.mark.parametrize('layout', ['v1', 'v2', 'flat'])
def test_msmt17_layouts(tmp_path, layout):
    synthetic_data.make_msmt17(tmp_path / 'msmt17', layout=layout, num_train_ids=3, num_test_ids=2)
    dataset = data_manager.init_dataset('msmt17', root=str(tmp_path), verbose=False)
    assert (dataset.num_train_pids, len(dataset.train)) == (3, 12)
    assert (dataset.num_query_pids, len(dataset.query), len(dataset.gallery)) == (2, 4, 8)
    train_val = data_manager.init_dataset('msmt17', root=str(tmp_path), msmt17_train_val=True, verbose=False)
    assert len(train_val.train) == 18 and train_val.num_train_pids == 3
    cams = {c for _, _, c in dataset.train + dataset.query + dataset.gallery}
    assert {0, 14} <= cams <= set(range(15)), 'cameras 01-15 become 0-14'
    for path, pid, camid in dataset.gallery:
        assert os.path.exists(path) and int(os.path.basename(path).split('_')[2]) == camid + 1
    # Train and test pids both count from 0 and are different people.
    assert {p for _, p, _ in dataset.query} == {0, 1}


def test_msmt17_missing_folder(tmp_path):
    synthetic_data.make_msmt17(tmp_path / 'msmt17', num_train_ids=2, num_test_ids=2)
    shutil.rmtree(tmp_path / 'msmt17' / 'MSMT17_V1' / 'test' / '0001')
    with pytest.raises(DatasetError, match=r'list_query.txt.*test/0001'):
        data_manager.init_dataset('msmt17', root=str(tmp_path))


def test_ilidsvid(synthetic_benchmarks_root):
    root = synthetic_benchmarks_root / 'ilids-vid'
    ls_set = loadmat(root / 'train-test people splits' / 'train_test_splits_ilidsvid.mat')['ls_set']
    persons = sorted(os.listdir(root / 'i-LIDS-VID' / 'sequences' / 'cam1'))
    assert persons != [f'person{i:03d}' for i in range(1, len(persons) + 1)], 'numbers have gaps'
    for split_id, row in enumerate(ls_set):
        dataset = data_manager.init_dataset('ilidsvid', root=str(synthetic_benchmarks_root), split_id=split_id,
                                            verbose=False)
        half = len(row) // 2
        assert {p for _, p, _ in dataset.query} == {int(persons[i - 1][6:]) for i in row[:half]}
        assert {c for _, _, c in dataset.query} == {0} and {c for _, _, c in dataset.gallery} == {1}
        assert dataset.num_train_pids == len(row) - half and len(dataset.train) == 2 * dataset.num_train_pids
        for paths, pid, camid in dataset.gallery:
            assert list(paths) == sorted(paths) and all(f'cam2_person{pid:03d}_' in p for p in paths)
    with pytest.raises(DatasetError, match=r'--split-id 2 .*0\.\.1'):
        data_manager.init_dataset('ilidsvid', root=str(synthetic_benchmarks_root), split_id=2)


def test_prid2011(synthetic_benchmarks_root):
    dataset = data_manager.init_dataset('prid2011', root=str(synthetic_benchmarks_root), split_id=1, verbose=False)
    used = {p for _, p, _ in dataset.query + dataset.gallery}
    assert dataset.num_train_pids == 3 and used <= set(range(1, 7)), 'unsplit and one-camera persons are unused'
    assert {c for _, _, c in dataset.query} == {0} and {c for _, _, c in dataset.gallery} == {1}
    for paths, pid, camid in dataset.query:
        assert os.path.basename(paths[0]) == '0001.png' and f'person_{pid:04d}' in paths[0]


def test_dukemtmcvidreid(synthetic_benchmarks_root):
    dataset = data_manager.init_dataset('dukemtmcvidreid', root=str(synthetic_benchmarks_root), verbose=False)
    gallery = {tuple(p.replace(f'{os.sep}gallery{os.sep}', os.sep) for p in paths): (pid, camid)
               for paths, pid, camid in dataset.gallery}
    for paths, pid, camid in dataset.query:
        assert gallery[tuple(p.replace(f'{os.sep}query{os.sep}', os.sep) for p in paths)] == (pid, camid)
    frames = [os.path.basename(p) for paths, _, _ in dataset.train + dataset.gallery for p in paths]
    assert any('_D' in n for n in frames) and any('_F0002_' in n for n in [os.path.basename(p[0]) for p, _, _ in dataset.gallery])
    longest = max(len(p) for p, _, _ in dataset.train)
    short = data_manager.init_dataset('dukemtmcvidreid', root=str(synthetic_benchmarks_root), min_seq_len=longest,
                                      verbose=False)
    assert all(len(p) >= longest for p, _, _ in short.train)
