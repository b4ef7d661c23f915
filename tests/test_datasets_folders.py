"""image_folder / video_folder datasets (your own data, no code) and combine_train."""
import os
import shutil

import numpy as np
import pytest

import data_manager
import synthetic_data
from data_manager import DatasetError
from eval_metrics import evaluate


@pytest.fixture(scope='module', params=['image_folder', 'video_folder'])
def folder_trees(request, tmp_path_factory):
    """{with_cameras: root} for one folder kind, in the three camera modes."""
    maker = synthetic_data.make_image_folder if request.param == 'image_folder' else synthetic_data.make_video_folder
    roots = {}
    for mode in ('folder', 'name', None):
        roots[mode] = tmp_path_factory.mktemp(f'{request.param}_{mode}')
        maker(roots[mode], with_cameras=mode, num_train_ids=3, num_test_ids=3, seed=1)
    return request.param, roots


def relative(sample, root, split):
    first = sample[0] if isinstance(sample, tuple) else sample
    return os.path.relpath(first, os.path.join(root, split))


def test_identities_by_name(folder_trees):
    name, roots = folder_trees
    dataset = data_manager.init_dataset(name, root=str(roots['folder']), verbose=False)
    assert dataset.video == data_manager.is_video(name) == (name == 'video_folder')
    train_names = sorted(os.listdir(roots['folder'] / 'train'))
    for sample, pid, _ in dataset.train:
        assert relative(sample, roots['folder'], 'train').split(os.sep)[0] == train_names[pid]
    test_names = sorted(set(os.listdir(roots['folder'] / 'query')) | set(os.listdir(roots['folder'] / 'gallery')))
    for split in ('query', 'gallery'):
        for sample, pid, _ in getattr(dataset, split):
            assert relative(sample, roots['folder'], split).split(os.sep)[0] == test_names[pid]
    assert dataset.num_gallery_pids == dataset.num_query_pids + 1, 'an identity only in the gallery'


@pytest.mark.parametrize('mode', ['folder', 'name'])
def test_cameras(folder_trees, mode):
    name, roots = folder_trees
    dataset = data_manager.init_dataset(name, root=str(roots[mode]), verbose=False)
    assert dataset.has_camera_ids and dataset.num_train_cams == 3
    for split in ('train', 'query', 'gallery'):
        for sample, _, camid in getattr(dataset, split):
            path = relative(sample, roots[mode], split)
            assert f'cam{camid + 1}' in path if mode == 'folder' else f'_c{camid + 1}' in path


def test_no_cameras_sample_keys_and_evaluation(folder_trees):
    name, roots = folder_trees
    root = roots[None]
    dataset = data_manager.init_dataset(name, root=str(root), verbose=False)
    assert not dataset.has_camera_ids and {c for _, _, c in dataset.train} == {0}
    query_keys = [relative(s, root, 'query') for s, _, _ in dataset.query]
    gallery_keys = [relative(s, root, 'gallery') for s, _, _ in dataset.gallery]
    # Same camid exactly when the same <identity>/<path> is in both splits: the query's own copy.
    for qk, (_, _, qc) in zip(query_keys, dataset.query):
        assert [gk == qk for gk in gallery_keys] == [gc == qc for _, _, gc in dataset.gallery]
    assert len({c for _, _, c in dataset.gallery}) == len(dataset.gallery)
    # Each query's own copy is nearest, then every other identity, then its own other samples.
    # The copy must be skipped (rank-1 0%) and every other entry must count: AP is then the
    # mean over its k-th positive of k / (wrong entries + k).
    q_pids = np.array([p for _, p, _ in dataset.query])
    g_pids = np.array([p for _, p, _ in dataset.gallery])
    distmat = np.where(q_pids[:, None] == g_pids[None, :], 2.0, 1.0)
    for i, qk in enumerate(query_keys):
        distmat[i, gallery_keys.index(qk)] = 0.0
    cmc, mean_ap = evaluate(distmat, q_pids, g_pids, np.array([c for _, _, c in dataset.query]),
                            np.array([c for _, _, c in dataset.gallery]), verbose=False)[:2]
    expected = []
    for pid in q_pids:
        positives, wrong = (g_pids == pid).sum() - 1, (g_pids != pid).sum()
        expected.append(np.mean([k / (wrong + k) for k in range(1, positives + 1)]))
    assert cmc[0] == 0, "the query itself is never a match"
    assert mean_ap == pytest.approx(np.mean(expected))


def test_train_only(tmp_path):
    synthetic_data.make_image_folder(tmp_path, with_cameras=None, train_only=True)
    dataset = data_manager.init_dataset('image_folder', root=str(tmp_path), verbose=False)
    assert dataset.query == dataset.gallery == [] and not dataset.has_test_split
    assert dataset.num_train_pids == 3 and len(dataset.train) == 9


def test_layout_errors(tmp_path):
    synthetic_data.make_image_folder(tmp_path / 'a', with_cameras='name')
    shutil.rmtree(tmp_path / 'a' / 'gallery')
    with pytest.raises(DatasetError, match='either both query/ and gallery/ or neither'):
        data_manager.init_dataset('image_folder', root=str(tmp_path / 'a'))
    with pytest.raises(DatasetError, match='train/'):
        data_manager.init_dataset('image_folder', root=str(tmp_path / 'missing'))
    synthetic_data.make_image_folder(tmp_path / 'b', with_cameras='name')
    shutil.copy(next((tmp_path / 'b' / 'train' / 'alice-0').iterdir()), tmp_path / 'b' / 'train' / 'alice-0' / 'x.jpg')
    with pytest.raises(DatasetError, match=r"--camera-pattern .*x\.jpg"):
        data_manager.init_dataset('image_folder', root=str(tmp_path / 'b'))
    with pytest.raises(DatasetError, match='not a valid regular expression'):
        data_manager.init_dataset('image_folder', root=str(tmp_path / 'b'), camera_pattern='c(')
    # A pattern that matches no name: no cameras.
    dataset = data_manager.init_dataset('image_folder', root=str(tmp_path / 'b'), camera_pattern=r'cam(\d+)',
                                        verbose=False)
    assert not dataset.has_camera_ids
    synthetic_data.make_image_folder(tmp_path / 'c', with_cameras='folder')
    shutil.copy(next((tmp_path / 'c' / 'train' / 'alice-0' / 'cam1').iterdir()), tmp_path / 'c' / 'train' / 'alice-0' / 'y.jpg')
    with pytest.raises(DatasetError, match='both images and folders'):
        data_manager.init_dataset('image_folder', root=str(tmp_path / 'c'))


def test_combine_train(synthetic_root, tmp_path, capsys):
    synthetic_data.make_image_folder(tmp_path, with_cameras='folder')
    market = data_manager.init_dataset('market1501', root=str(synthetic_root), verbose=False)
    folder = data_manager.init_dataset('image_folder', root=str(tmp_path), verbose=False)
    combined = data_manager.combine_train([market, folder])
    assert '=> market1501+image_folder loaded' in capsys.readouterr().out
    assert combined.name == 'market1501+image_folder' and not combined.video and not combined.has_test_split
    assert combined.query == combined.gallery == []
    assert combined.num_train_pids == market.num_train_pids + folder.num_train_pids
    assert combined.num_train_cams == market.num_train_cams + folder.num_train_cams
    assert combined.train[:len(market.train)] == market.train
    assert combined.train[len(market.train):] == [
        (x, pid + market.num_train_pids, camid + market.num_train_cams) for x, pid, camid in folder.train]
    mars = data_manager.init_dataset('mars', root=str(synthetic_root), verbose=False)
    with pytest.raises(DatasetError, match='image and video'):
        data_manager.combine_train([market, mars])
