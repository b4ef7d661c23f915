"""The training-throughput benchmark runs and prints every kind of row (tiny sizes: a smoke
test that keeps the script working, not a measurement)."""
import re

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
