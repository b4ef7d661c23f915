"""The training-throughput benchmark runs and prints every kind of row (tiny sizes: a smoke
test that keeps the script working, not a measurement)."""
import re

from conftest import run_script


def test_bench_train_prints_every_row():
    result = run_script('benchmarks/bench_train.py', '--height', '32', '--width', '16', '--images', '8',
                        '--workers', '1', '--batch', '4', '--steps', '1', '--extract-batch', '4')
    rows = re.findall(r'^(loader|train step|feature extraction): (.+?)\s+([\d.]+)  python benchmarks/bench_train\.py',
                      result.stdout, re.M)
    kinds = [kind for kind, _, _ in rows]
    assert kinds.count('loader') == 6 and kinds.count('train step') == 2 and kinds.count('feature extraction') == 1
    assert all(float(rate) > 0 for _, _, rate in rows)
    assert any('DataLoader, 1 workers' in name for _, name, _ in rows)
