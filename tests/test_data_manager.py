import os
import shutil

import numpy as np
import pytest
from scipy.io import loadmat, savemat

import data_manager
from data_manager import DatasetError


def test_real_market1501_statistics(real_market_root, capsys):
    dataset = data_manager.init_dataset('market1501', root=str(real_market_root))
    table = capsys.readouterr().out
    assert (dataset.num_train_pids, len(dataset.train)) == (751, 12936)
    assert (dataset.num_query_pids, len(dataset.query)) == (750, 3368)
    assert (dataset.num_gallery_pids, len(dataset.gallery)) == (751, 15913)
    for line in ('train    |   751 |    12936', 'query    |   750 |     3368',
                 'gallery  |   751 |    15913', 'total    |  1501 |    32217'):
        assert line in table
    assert sorted({pid for _, pid, _ in dataset.train}) == list(range(751))
    assert {camid for _, _, camid in dataset.gallery} == set(range(6))
    assert 0 in {pid for _, pid, _ in dataset.gallery}, 'distractors (pid 0) stay in the gallery'
    assert all(pid != -1 for _, pid, _ in dataset.gallery), 'junk (pid -1) is dropped'
    assert any(path.endswith('.jpg.jpg') for path, _, _ in dataset.gallery + dataset.train)


def test_real_mars_statistics(real_mars_root, capsys):
    dataset = data_manager.init_dataset('mars', root=str(real_mars_root))
    table = capsys.readouterr().out
    assert (dataset.num_train_pids, len(dataset.train)) == (625, 8298)
    assert (dataset.num_query_pids, len(dataset.query)) == (626, 1980)
    assert (dataset.num_gallery_pids, len(dataset.gallery)) == (621, 9330)
    assert 'number of images per tracklet: 2 ~ 920, average 59.5' in table
    assert 'total    |  1251 |    19608' in table
    assert sorted({pid for _, pid, _ in dataset.train}) == list(range(625))
    # The query is exactly the test rows named by query_IDX.mat, in that order.
    info = real_mars_root / 'mars' / 'info'
    test_rows = loadmat(info / 'tracks_test_info.mat')['track_test_info']
    query_rows = test_rows[loadmat(info / 'query_IDX.mat')['query_IDX'].ravel() - 1]
    assert [(pid, camid) for _, pid, camid in dataset.query] == [(r[2], r[3] - 1) for r in query_rows]
    assert [len(paths) for paths, _, _ in dataset.query] == [r[1] - r[0] + 1 for r in query_rows]
    first_paths = dataset.train[0][0]
    assert os.path.exists(first_paths[0]) and os.path.exists(first_paths[-1])


def test_synthetic_market_semantics(synthetic_root):
    dataset = data_manager.Market1501(root=str(synthetic_root), verbose=False)
    names = sorted(os.listdir(synthetic_root / 'market1501' / 'bounding_box_train'))
    original = sorted({int(n.split('_')[0]) for n in names})
    assert sorted({pid for _, pid, _ in dataset.train}) == list(range(len(original)))
    # Relabelling is by ascending original pid: each image keeps its own identity.
    for path, label, camid in dataset.train:
        name = os.path.basename(path)
        assert original[label] == int(name.split('_')[0])
        assert camid == int(name.split('_c')[1][0]) - 1
    gallery_pids = {pid for _, pid, _ in dataset.gallery}
    assert 0 in gallery_pids and -1 not in gallery_pids
    assert {pid for _, pid, _ in dataset.query} <= gallery_pids


def test_synthetic_mars_semantics(synthetic_root):
    dataset = data_manager.Mars(root=str(synthetic_root), verbose=False)
    with open(synthetic_root / 'mars' / 'info' / 'test_name.txt', 'rb') as f:
        assert b'\r\n' in f.read(200), 'the generator writes CRLF name files, like the official ones'
    for paths, pid, camid in dataset.query + dataset.gallery:
        names = [os.path.basename(p) for p in paths]
        assert all(n[:4] == f'{pid:04d}' and int(n[5]) == camid + 1 for n in names)
        assert all(os.path.dirname(p).endswith(f'{pid:04d}') for p in paths)
    assert 0 in {pid for _, pid, _ in dataset.gallery}
    lengths = [len(p) for p, _, _ in dataset.train]
    short = data_manager.Mars(root=str(synthetic_root), min_seq_len=6, verbose=False)
    assert len(short.train) == sum(n >= 6 for n in lengths)


def test_missing_dataset_names_path_and_layout(tmp_path):
    with pytest.raises(DatasetError) as info:
        data_manager.init_dataset('market1501', root=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path / 'market1501') in message and 'bounding_box_train' in message
    assert 'synthetic_data.py' in message and 'zheng-lab' in message


def test_missing_split_folder(synthetic_root, tmp_path):
    shutil.copytree(synthetic_root / 'market1501', tmp_path / 'market1501')
    shutil.rmtree(tmp_path / 'market1501' / 'query')
    with pytest.raises(DatasetError, match='query'):
        data_manager.Market1501(root=str(tmp_path))


def test_empty_split_and_bad_name(synthetic_root, tmp_path):
    shutil.copytree(synthetic_root / 'market1501', tmp_path / 'market1501')
    query = tmp_path / 'market1501' / 'query'
    for name in os.listdir(query):
        os.remove(query / name)
    with pytest.raises(DatasetError, match='no usable image'):
        data_manager.Market1501(root=str(tmp_path))
    (query / 'IMG_0001.jpg').write_bytes(b'')
    with pytest.raises(DatasetError, match='IMG_0001.jpg'):
        data_manager.Market1501(root=str(tmp_path))


@pytest.mark.parametrize('missing', ['tracks_test_info.mat', 'train_name.txt', 'query_IDX.mat'])
def test_missing_mars_info_file(synthetic_root, tmp_path, missing):
    shutil.copytree(synthetic_root / 'mars', tmp_path / 'mars')
    os.remove(tmp_path / 'mars' / 'info' / missing)
    with pytest.raises(DatasetError) as info:
        data_manager.Mars(root=str(tmp_path))
    assert missing in str(info.value) and 'bbox_train' in str(info.value)


def test_mars_names_must_match_their_rows(synthetic_root, tmp_path):
    shutil.copytree(synthetic_root / 'mars', tmp_path / 'mars')
    info = tmp_path / 'mars' / 'info'
    rows = loadmat(info / 'tracks_train_info.mat')['track_train_info']
    rows[0, 2] += 1  # the first tracklet now claims another pid than its names carry
    savemat(info / 'tracks_train_info.mat', {'track_train_info': rows})
    with pytest.raises(DatasetError, match='does not match'):
        data_manager.Mars(root=str(tmp_path))


def test_mars_rows_outside_name_file(synthetic_root, tmp_path):
    shutil.copytree(synthetic_root / 'mars', tmp_path / 'mars')
    info = tmp_path / 'mars' / 'info'
    rows = loadmat(info / 'tracks_train_info.mat')['track_train_info']
    rows[-1, 1] += 1000
    savemat(info / 'tracks_train_info.mat', {'track_train_info': rows.astype(np.int32)})
    with pytest.raises(DatasetError, match='outside'):
        data_manager.Mars(root=str(tmp_path))


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(DatasetError, match='market1501, dukemtmcreid, cuhk03, msmt17, mars'):
        data_manager.init_dataset('cuhk04')


def test_generator_is_deterministic(tmp_path):
    import synthetic_data
    for name in ('a', 'b'):
        synthetic_data.make_market1501(tmp_path / name, num_train_ids=3, num_test_ids=3,
                                       num_distractors=2, num_junk=1, seed=7)
    for sub in ('bounding_box_train', 'query', 'bounding_box_test'):
        names = sorted(os.listdir(tmp_path / 'a' / sub))
        assert names == sorted(os.listdir(tmp_path / 'b' / sub))
        for n in names:
            assert (tmp_path / 'a' / sub / n).read_bytes() == (tmp_path / 'b' / sub / n).read_bytes()
