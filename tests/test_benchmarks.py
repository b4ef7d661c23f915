"""The training-throughput benchmark runs and prints every kind of row (tiny sizes: a smoke
test that keeps the script working, not a measurement); the BoxMOT check explains itself without BoxMOT."""
import re
import sys

import numpy as np
import pytest

from conftest import REPO, run_script


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
    runs in BoxMOT's environment; its figures are in docs/using-a-model.md)."""
    try:
        import boxmot  # noqa: F401
        pytest.skip('BoxMOT is installed here: the message is for environments without it')
    except ImportError:
        pass
    result = run_script('benchmarks/check_boxmot.py', '--resume', tmp_path / 'none.pth.tar', check=False)
    assert result.returncode == 1 and 'pip install "boxmot[onnx]"' in result.stderr


def test_bench_eval_feature_cases_and_sort_baseline():
    """bench_eval's re-ID feature cases are what they say (gallery grouped by identity or
    shuffled, distractors, same-camera gallery images of each query's identity and true matches
    on other cameras), and its sort-every-row baseline agrees with the reference evaluator."""
    sys.path.insert(0, str(REPO / 'benchmarks'))
    from bench_eval import reid_features, sorted_rows, summary
    from eval_metrics import squared_euclidean
    from reference_metrics import reference_evaluate
    for shuffle in (False, True):
        qf, gf, q_pids, g_pids, q_camids, g_camids = reid_features(0, 40, 300, 15, 4, dim=16, shuffle=shuffle)
        assert qf.shape == (40, 16) and gf.shape == (300, 16) and (g_pids == 0).sum() == 45
        assert (np.diff(g_pids) >= 0).all() != shuffle
        same_pid = q_pids[:, None] == g_pids[None, :]
        same_camera = q_camids[:, None] == g_camids[None, :]
        assert (same_pid & same_camera).any(axis=1).all() and (same_pid & ~same_camera).any(axis=1).all()
        distmat = squared_euclidean(qf, gf).numpy()
        cmc, mAP, mINP, _ = reference_evaluate(distmat, q_pids, g_pids, q_camids, g_camids)
        sort_cmc, sort_mAP, sort_mINP = summary(*sorted_rows(distmat, q_pids, g_pids, q_camids, g_camids, block_rows=7))
        np.testing.assert_allclose(sort_cmc, cmc, atol=1e-12)
        assert sort_mAP == pytest.approx(mAP, abs=1e-12) and sort_mINP == pytest.approx(mINP, abs=1e-12)
