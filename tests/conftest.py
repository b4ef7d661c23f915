"""Shared fixtures: small generated datasets, the real metadata in ../shared (when present),
and a helper that runs the training scripts as a user would."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
sys.path.insert(0, str(REPO))

import synthetic_data  # noqa: E402


def shared_path(*parts):
    """A path under ../shared, or skip the test: a user's clone has no ../shared."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f'{path} is not available (real metadata lives beside the CI checkout only)')
    return path


@pytest.fixture(scope='session')
def synthetic_root(tmp_path_factory):
    """A small generated dataset in both layouts: <root>/market1501 and <root>/mars."""
    root = tmp_path_factory.mktemp('synthetic')
    synthetic_data.make_market1501(root / 'market1501', num_train_ids=32, num_test_ids=30,
                                   images_per_camera=(1, 2), cameras_per_id=3, num_distractors=10,
                                   num_junk=4, seed=3)
    synthetic_data.make_mars(root / 'mars', num_train_ids=24, num_test_ids=24, frames=(3, 8),
                             cameras_per_id=3, num_distractors=4, num_junk=2, seed=3)
    return root


def _real_tree(tmp_path_factory, tool, name):
    """Build <tmp>/<name> with one of ../shared/tools' builders (real names, linked images)."""
    root = tmp_path_factory.mktemp('real')
    subprocess.run([sys.executable, str(shared_path('tools', tool)), str(root / name)], check=True,
                   capture_output=True)
    return root


def _real_tree_fixture(tool, name, doc):
    """A session fixture building <tmp>/<name> once with ../shared/tools/<tool>."""
    def fixture(tmp_path_factory):
        return _real_tree(tmp_path_factory, tool, name)
    fixture.__doc__ = doc
    return pytest.fixture(scope='session')(fixture)


real_market_root = _real_tree_fixture(
    'make_market1501.py', 'market1501',
    'A full-size Market-1501 tree with the real file names.')
real_mars_root = _real_tree_fixture(
    'make_mars.py', 'mars',
    'A full-size MARS tree from the official info/*.mat files (1.19 M images).')
real_dukemtmcreid_root = _real_tree_fixture(
    'make_dukemtmcreid.py', 'dukemtmc-reid',
    'A full-size DukeMTMC-reID tree with the real file names.')
real_cuhk03_root = _real_tree_fixture(
    'make_cuhk03.py', 'cuhk03',
    'A full-size cuhk-03.mat (tiny images, real occupancy, synthetic testsets) and the real protocol files.')
real_msmt17_root = _real_tree_fixture(
    'make_msmt17.py', 'msmt17',
    'A full-size MSMT17_V1 tree from the real lists.')
real_ilidsvid_root = _real_tree_fixture(
    'make_ilidsvid.py', 'ilids-vid',
    'A full-size iLIDS-VID tree (real persons and frame counts) and the official split file.')
real_prid2011_root = _real_tree_fixture(
    'make_prid2011.py', 'prid2011',
    "A full-size PRID2011 multi_shot tree (real frame counts) and torchreid's split file.")
real_dukemtmcvidreid_root = _real_tree_fixture(
    'make_dukemtmcvidreid.py', 'dukemtmc-vidreid',
    'A full-size DukeMTMC-VideoReID tree from the real tracklet tables (927k linked frames).')


@pytest.fixture(scope='session')
def synthetic_benchmarks_root(tmp_path_factory):
    """Tiny generated trees of the six further benchmarks, each in its real layout under one root."""
    root = tmp_path_factory.mktemp('synthetic_benchmarks')
    for name in ('dukemtmcreid', 'cuhk03', 'msmt17', 'ilidsvid', 'prid2011', 'dukemtmcvidreid'):
        folder, maker = synthetic_data.MAKERS[name]
        maker(root / folder, seed=5)
    return root


# Flags that make the scripts quick on a 2-core CPU: small images, random init, no workers.
FAST = ['--height', '64', '--width', '32', '--no-pretrained', '--workers', '0', '--lr', '1e-3',
        '--stepsize', '0', '--print-freq', '1']


def run_script(script, *args, check=True, timeout=600):
    """Run a training script in a subprocess from the repository root; return the result."""
    result = subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=REPO,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f'{script} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}')
    return result


def run_main(module, monkeypatch, capsys, *args):
    """A command-line tool's main() in-process, as `python <module>.py ARGS` runs it: (exit
    status, stdout, stderr)."""
    monkeypatch.setattr(sys, 'argv', [f'{module.__name__}.py', *map(str, args)])
    status = 0
    try:
        module.main()
    except SystemExit as error:
        status = error.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def parse_results(stdout):
    """[(mAP, rank1)] in percent, one per printed 'Results' block."""
    maps = [float(x) for x in re.findall(r'^mAP: ([\d.]+)%', stdout, re.M)]
    rank1 = [float(x) for x in re.findall(r'^Rank-1  : ([\d.]+)%', stdout, re.M)]
    return list(zip(maps, rank1))


def parse_epoch_losses(stdout):
    return [float(x) for x in re.findall(r'^Epoch \d+ done: loss ([\d.]+)', stdout, re.M)]


@pytest.fixture(scope='session')
def untrained_mAP(synthetic_root, tmp_path_factory):
    """mAP of the randomly initialised model (same seed), per dataset."""
    save_dir = tmp_path_factory.mktemp('untrained')
    image = run_script('train_img_model_xent.py', *FAST, '--root', synthetic_root, '--evaluate', '--save-dir', save_dir)
    video = run_script('train_vid_model_xent.py', *FAST, '--root', synthetic_root, '--seq-len', '4',
                       '--evaluate', '--save-dir', save_dir)
    return {'market1501': parse_results(image.stdout)[0][0], 'mars': parse_results(video.stdout)[0][0]}
