"""The training-throughput benchmark runs and prints every kind of row (tiny sizes: a smoke
test that keeps the script working, not a measurement); the BoxMOT check explains itself without BoxMOT."""
import re

import pytest

from conftest import run_script


def test_bench_train_prints_every_row():
    result = run_script('benchmarks/bench_train.py', '--height', '32', '--width', '16', '--images', '8',
                        '--workers', '1', '--batch', '4', '--steps', '1', '--extract-batch', '4',
                        '--arch', 'resnet50', 'vit_small')
    rows = re.findall(r'^(loader|train step|feature extraction): (.+?)\s+([\d.]+)  python benchmarks/bench_train\.py',
                      result.stdout, re.M)
    kinds = [kind for kind, _, _ in rows]
    assert kinds.count('loader') == 6 and kinds.count('train step') == 4 and kinds.count('feature extraction') == 2
    assert any(name.startswith('vit_small channels_last') for kind, name, _ in rows if kind == 'train step')
    assert all(float(rate) > 0 for _, _, rate in rows)
    assert any('DataLoader, 1 workers' in name for _, name, _ in rows)


def test_check_boxmot_says_how_to_install_boxmot(tmp_path):
    """BoxMOT is not a requirement: without it the check names what to install (the check itself
    runs in BoxMOT's environment; its figures are in the README)."""
    try:
        import boxmot  # noqa: F401
        pytest.skip('BoxMOT is installed here: the message is for environments without it')
    except ImportError:
        pass
    result = run_script('benchmarks/check_boxmot.py', '--resume', tmp_path / 'none.pth.tar', check=False)
    assert result.returncode == 1 and 'pip install "boxmot[onnx]"' in result.stderr
