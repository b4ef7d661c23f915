"""Time CMC/mAP evaluation: the fast exact evaluator against a plain per-query numpy loop.

    python benchmarks/bench_eval.py            # Market-1501 scale, 4 kinds of distances
    python benchmarks/bench_eval.py --msmt     # MSMT17 scale from 512-d features, time and peak RSS

Prints seconds for both (min and median over repeats for the fast one), their ratio, the
time the verification figures (TPR at FPR 1e-4, 1e-3, 1e-2) add, and checks that they agree.
"""
import argparse
import os
import resource
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from eval_metrics import evaluate, evaluate_features, format_verification, squared_euclidean  # noqa: E402


def per_query_loop(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """The classic evaluator: one full argsort per query row."""
    all_cmc, all_ap = [], []
    for q in range(distmat.shape[0]):
        order = np.argsort(distmat[q], kind='stable')
        keep = ~((g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q]))
        matches = (g_pids[order][keep] == q_pids[q]).astype(np.int64)
        if not matches.any():
            continue
        cmc = np.minimum(matches.cumsum(), 1)[:max_rank]
        all_cmc.append(cmc)
        hits = np.flatnonzero(matches) + 1
        all_ap.append(np.mean(np.arange(1, len(hits) + 1) / hits))
    return np.mean(all_cmc, axis=0), np.mean(all_ap)


def labels(rng, num_query, num_gallery, num_ids, num_cams):
    q_pids = rng.integers(1, num_ids, num_query)
    g_pids = rng.integers(0, num_ids, num_gallery)
    return q_pids, g_pids, rng.integers(0, num_cams, num_query), rng.integers(0, num_cams, num_gallery)


def features(rng, pids, centers, noise):
    return centers[torch.from_numpy(pids)] + noise * torch.randn(len(pids), centers.shape[1])


def timed(repeats, fn):
    """(min, median) seconds over repeats, and the last result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), float(np.median(times)), result


def spread_matches(rng, q_pids, g_pids, factor=0.0017):
    """Distances with no ties (each row a permutation of 1..num_gallery) where true matches
    are spread through the ranking: a same-pid pair's uniform score is scaled by factor before
    ranking, which gives an mAP of about 44%."""
    score = rng.random((len(q_pids), len(g_pids)))
    score[q_pids[:, None] == g_pids[None, :]] *= factor
    distmat = np.empty(score.shape, np.float32)
    ranks = np.broadcast_to(np.arange(1, len(g_pids) + 1, dtype=np.float32), score.shape)
    np.put_along_axis(distmat, np.argsort(score, axis=1), ranks, axis=1)
    return distmat


def market(repeats):
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    num_query, num_gallery = 3368, 15913
    q_pids, g_pids, q_camids, g_camids = labels(rng, num_query, num_gallery, 751, 6)
    centers = torch.randn(751, 2048)
    cases = {
        'uniform random distances': torch.rand(num_query, num_gallery).numpy(),
        'random 2048-d features': squared_euclidean(torch.randn(num_query, 2048), torch.randn(num_gallery, 2048)).numpy(),
        'clustered 2048-d features': squared_euclidean(features(rng, q_pids, centers, 1.0),
                                                       features(rng, g_pids, centers, 1.0)).numpy(),
        'matches spread, no ties': spread_matches(rng, q_pids, g_pids),
    }
    print(f'Market-1501 scale: {num_query} x {num_gallery} float32 distances, torch threads {torch.get_num_threads()}; '
          f'fast: min / median of {repeats} runs; +verif: with the verification figures')
    for name, distmat in cases.items():
        fast_min, fast_median, fast = timed(repeats, lambda: evaluate(distmat, q_pids, g_pids, q_camids, g_camids,
                                                                      verbose=False, fprs=()))
        verif_min, _, verified = timed(repeats, lambda: evaluate(distmat, q_pids, g_pids, q_camids, g_camids,
                                                                 verbose=False))
        loop_time, _, (cmc, mAP) = timed(1, lambda: per_query_loop(distmat, q_pids, g_pids, q_camids, g_camids))
        agree = abs(fast.mAP - mAP) < 1e-6 and np.abs(fast.cmc - cmc).max() < 1e-6 and verified.mAP == fast.mAP
        print(f'  {name:26s} mAP {fast.mAP:6.1%}  fast {fast_min:5.3f} / {fast_median:5.3f} s  '
              f'+verif {verif_min:5.3f} s ({verif_min / fast_min - 1:+4.0%})  per-query loop {loop_time:5.2f} s  '
              f'ratio {loop_time / fast_min:5.1f}x  agree: {agree}')


def msmt():
    rng = np.random.default_rng(1)
    torch.manual_seed(1)
    num_query, num_gallery, dim = 11659, 82161, 512
    q_pids, g_pids, q_camids, g_camids = labels(rng, num_query, num_gallery, 3060, 15)
    centers = torch.randn(3060, dim)
    qf, gf = features(rng, q_pids, centers, 4.0), features(rng, g_pids, centers, 4.0)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    result = evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, verbose=False)
    elapsed = time.perf_counter() - start
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f'MSMT17 scale: {num_query} x {num_gallery}, {dim}-d features, blocked evaluation with verification: '
          f'{elapsed:.1f} s, peak RSS {rss_after:.0f} MiB (after making the features: {rss_before:.0f} MiB; a full '
          f'float32 distance matrix alone would be {num_query * num_gallery * 4 / 2**20:.0f} MiB); mAP {result.mAP:.1%}')
    print('\n'.join(format_verification(result)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeats', type=int, default=3, help='best of this many runs of the fast evaluator')
    parser.add_argument('--msmt', action='store_true',
                        help='run the MSMT17-scale case instead (alone, so peak RSS is its own)')
    args = parser.parse_args()
    if args.msmt:
        msmt()
    else:
        market(args.repeats)


if __name__ == '__main__':
    main()
