"""Datasets from the command line: several training datasets, evaluation targets, folder
datasets without cameras or without a test split."""
import json
import shutil

import pytest

import synthetic_data
import train_vid_model_xent
from conftest import FAST, parse_results, run_script


@pytest.fixture(scope='module')
def mixed_root(synthetic_root, tmp_path_factory):
    """Generated Market-1501 and DukeMTMC-reID trees, and an image folder without cameras, under one root."""
    root = tmp_path_factory.mktemp('mixed')
    shutil.copytree(synthetic_root / 'market1501', root / 'market1501')
    synthetic_data.make_dukemtmcreid(root / 'dukemtmc-reid', seed=5)
    synthetic_data.make_image_folder(root, with_cameras=None, num_train_ids=3, num_test_ids=6, seed=2)
    return root


def test_train_on_two_benchmarks_and_evaluate_on_a_folder_without_cameras(mixed_root, tmp_path):
    result = run_script('train_img_model_xent.py', *FAST, '--root', mixed_root, '-d', 'market1501', 'dukemtmcreid',
                        '--target', 'image_folder', 'market1501', '--max-epoch', '1', '--visrank', '3',
                        '--visrank-queries', '2', '--save-dir', tmp_path)
    out = result.stdout
    assert '=> market1501+dukemtmcreid loaded' in out or 'market1501+dukemtmcreid' in out
    assert 'Note: image_folder has no camera ids, so cross-camera filtering is off' in out
    assert out.index('==> Target image_folder') < out.index('==> Target market1501')
    assert len(parse_results(out)) == 2
    assert 'all query identities do not appear in gallery' not in out + result.stderr
    for name in ('image_folder', 'market1501'):  # one picture folder per target
        assert len(list((tmp_path / f'visrank_{name}').glob('query*.png'))) == 2
        assert (tmp_path / f'visrank_{name}' / 'index.png').exists()
    records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    assert [sorted(r) for r in records] == [['epoch', 'images_per_s', 'loss', 'lr'], ['epoch', 'mAP', 'rank1']]
    assert (tmp_path / 'curves.png').exists()


def test_train_only_folder_trains_without_evaluation(tmp_path):
    synthetic_data.make_image_folder(tmp_path / 'crops', with_cameras='name', num_train_ids=4, train_only=True)
    result = run_script('train_img_model_xent.py', *FAST, '--root', tmp_path / 'crops', '-d', 'image_folder',
                        '--train-batch', '4', '--max-epoch', '1', '--save-dir', tmp_path / 'log')
    assert 'Note: image_folder has no query/gallery folders, so it is not evaluated' in result.stdout
    assert 'evaluation is disabled' in result.stdout and 'Results' not in result.stdout
    assert (tmp_path / 'log' / 'checkpoint_ep1.pth.tar').exists()


def test_video_script_refuses_an_image_dataset(capsys):
    with pytest.raises(SystemExit):
        train_vid_model_xent.get_args_parser().parse_args(['-d', 'market1501'])
    assert 'market1501 is an image dataset: use train_img_model_*.py' in capsys.readouterr().err
