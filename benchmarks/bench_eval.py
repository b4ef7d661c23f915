"""Time CMC/mAP evaluation: the fast exact evaluator against full per-row sorts.

    python benchmarks/bench_eval.py            # Market-1501 scale, 6 kinds of distances
    python benchmarks/bench_eval.py --msmt     # MSMT17 scale from 512-d features, time and peak RSS
    python benchmarks/bench_eval.py --threads 1 --fastreid-cython DIR   # one torch thread; + fast-reid

Prints seconds for the fast evaluator (min and median over repeats), the time the
verification figures (TPR at FPR 1e-4, 1e-3, 1e-2) add, and, timed in the same run, the
evaluators that sort every row: fast-reid's method in torch (a stable torch.sort of every
row, then the cumulative sums; a lower bound on any sort-based evaluator here), the classic
per-query numpy loop, and fast-reid's Cython evaluator when --fastreid-cython names the
folder of its compiled rank_cy module (fastreid/evaluation/rank_cylib of the fastreid
package, built with `make` there; needs Cython). Checks that all agree. The machine may be
shared: compare the ratios, measured in one run, not seconds across runs.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests'))
from bench_rerank import reset_peak_rss, rss_mib  # noqa: E402
from eval_metrics import (  # noqa: E402
    VERIFICATION_FPRS,
    Reiterable,
    evaluate,
    evaluate_blocks,
    format_verification,
    squared_euclidean,
)
from reference_metrics import reference_evaluate  # noqa: E402


def sorted_rows(distmat, q_pids, g_pids, q_camids, g_camids, block_rows=128):
    """fast-reid's evaluator, vectorised in torch: a full stable torch.sort of every row (ties
    by gallery order, as in evaluate), then the cumulative sums over the sorted rows.
    distmat: (Q, G); returns per query (first-hit rank, AP, INP), (Q,) each, 0 / NaN / NaN
    for a query without a true match."""
    dist = torch.as_tensor(distmat)
    q_pids, g_pids, q_camids, g_camids = (torch.as_tensor(x) for x in (q_pids, g_pids, q_camids, g_camids))
    first_hit, ap, inp = [], [], []
    for start in range(0, len(dist), block_rows):
        rows = slice(start, start + block_rows)
        order = torch.sort(dist[rows], dim=1, stable=True).indices
        same_pid = g_pids[order] == q_pids[rows, None]
        junk = same_pid & (g_camids[order] == q_camids[rows, None])
        match = same_pid & ~junk
        rank = torch.cumsum(~junk, dim=1)  # 1-based rank among the entries kept
        hits = torch.cumsum(match, dim=1)
        num_pos = hits[:, -1]
        ap.append(torch.where(match, hits / rank.double(), 0).sum(dim=1) / num_pos)
        first_hit.append(torch.where(match, rank, rank.shape[1] + 1).amin(dim=1) * (num_pos > 0))
        inp.append(num_pos.double() / torch.where(match, rank, 0).amax(dim=1))
    return torch.cat(first_hit), torch.cat(ap), torch.cat(inp)


def summary(first_hit, ap, inp, max_rank=50):
    """(cmc, mAP, mINP) over the queries with a true match, from sorted_rows' per-query figures."""
    valid = first_hit > 0
    cmc = (first_hit[valid, None] <= torch.arange(1, max_rank + 1)).double().mean(dim=0)
    return cmc.numpy(), float(ap[valid].double().mean()), float(inp[valid].double().mean())


def load_fastreid(folder):
    """fast-reid's Cython evaluate_cy from the folder holding its compiled rank_cy module."""
    if folder is None:
        return None
    sys.path.insert(0, folder)
    try:
        from rank_cy import evaluate_cy
    except ImportError as error:
        raise SystemExit(f'--fastreid-cython {folder}: no compiled rank_cy module there ({error}); build it with '
                         f'`make` in fastreid/evaluation/rank_cylib of the fastreid package (needs Cython)')
    return lambda distmat, *labels: evaluate_cy(np.ascontiguousarray(distmat, np.float32),
                                                *(np.asarray(x, np.int64) for x in labels), 50)


def labels(rng, num_query, num_gallery, num_ids, num_cams):
    q_pids = rng.integers(1, num_ids, num_query)
    g_pids = rng.integers(0, num_ids, num_gallery)
    return q_pids, g_pids, rng.integers(0, num_cams, num_query), rng.integers(0, num_cams, num_gallery)


def features(rng, pids, centers, noise):
    return centers[torch.from_numpy(pids)] + noise * torch.randn(len(pids), centers.shape[1])


def reid_features(seed, num_query, num_gallery, num_ids, num_cams, dim=512, shuffle=False):
    """Features the way trained re-ID features give distances: identity centre + a bias per
    camera + an offset per (identity, camera) + per-image noise of varying strength (lognormal,
    and 2.5x stronger for one image in ten: hard images). Each identity is seen by 2 or more
    cameras, with 1 or more gallery images on each (so a query has same-camera gallery images
    of itself, removed by the protocol, and true matches on other cameras); a query is one of
    an identity's (identity, camera) pairs; 15% of the gallery are distractors (pid 0), each
    its own person. The gallery is stored grouped by identity, as datasets list it, or
    shuffled. Squared Euclidean distances give an mAP in the 40s at Market scale.
    Returns qf (Q, dim), gf (G, dim), q_pids, g_pids, q_camids, g_camids."""
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    cams_per_id = np.clip(-(-num_query // num_ids) + 1 + rng.integers(-1, 2, num_ids), 2, num_cams)
    pair_pid = np.repeat(np.arange(1, num_ids + 1), cams_per_id)
    pair_cam = np.concatenate([rng.choice(num_cams, n, replace=False) for n in cams_per_id])
    num_distractors = int(0.15 * num_gallery)
    images = 1 + rng.multinomial(num_gallery - num_distractors - len(pair_pid), rng.dirichlet(np.ones(len(pair_pid))))
    g_pids = np.concatenate([np.zeros(num_distractors, np.int64), np.repeat(pair_pid, images)])
    g_camids = np.concatenate([rng.integers(0, num_cams, num_distractors), np.repeat(pair_cam, images)])
    query = np.sort(rng.choice(len(pair_pid), num_query, replace=False))
    q_pids, q_camids = pair_pid[query], pair_cam[query]
    centres = torch.randn(num_ids + 1, dim, generator=g)
    camera_bias = 0.52 * torch.randn(num_cams, dim, generator=g)
    pair_offset = torch.randn(num_ids + 1, num_cams, dim, generator=g)

    def image_features(pids, camids):
        pids, camids = torch.from_numpy(pids), torch.from_numpy(camids)
        strength = 0.6 * torch.exp(0.4 * torch.randn(len(pids), 1, generator=g))
        strength = torch.where(torch.rand(len(pids), 1, generator=g) < 0.1, 2.5 * strength, strength)
        person = centres[pids] + pair_offset[pids, camids]
        distractor = pids == 0
        person[distractor] = torch.randn(int(distractor.sum()), dim, generator=g)
        return person + camera_bias[camids] + strength * torch.randn(len(pids), dim, generator=g)

    qf, gf = image_features(q_pids, q_camids), image_features(g_pids, g_camids)
    if shuffle:
        order = rng.permutation(num_gallery)
        gf, g_pids, g_camids = gf[order], g_pids[order], g_camids[order]
    return qf, gf, q_pids, g_pids, q_camids, g_camids


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
    are spread through the top of the ranking: a same-pid pair's uniform score is scaled by
    factor before ranking, which gives an mAP of about 44%."""
    score = rng.random((len(q_pids), len(g_pids)))
    score[q_pids[:, None] == g_pids[None, :]] *= factor
    distmat = np.empty(score.shape, np.float32)
    ranks = np.broadcast_to(np.arange(1, len(g_pids) + 1, dtype=np.float32), score.shape)
    np.put_along_axis(distmat, np.argsort(score, axis=1), ranks, axis=1)
    return distmat


def market_cases():
    """{name: (distmat, (q_pids, g_pids, q_camids, g_camids))} at Market-1501 scale."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    num_query, num_gallery = 3368, 15913
    random_labels = labels(rng, num_query, num_gallery, 751, 6)
    q_pids, g_pids = random_labels[:2]
    centers = torch.randn(751, 2048)
    cases = {
        'uniform random distances': torch.rand(num_query, num_gallery).numpy(),
        'random 2048-d features': squared_euclidean(torch.randn(num_query, 2048), torch.randn(num_gallery, 2048)).numpy(),
        'clustered 2048-d features': squared_euclidean(features(rng, q_pids, centers, 1.0),
                                                       features(rng, g_pids, centers, 1.0)).numpy(),
        'matches spread, no ties': spread_matches(rng, q_pids, g_pids),
    }
    cases = {name: (distmat, random_labels) for name, distmat in cases.items()}
    for shuffle in (False, True):
        qf, gf, *reid_labels = reid_features(0, num_query, num_gallery, 751, 6, shuffle=shuffle)
        name = f're-ID features, {"shuffled" if shuffle else "grouped"}'
        cases[name] = squared_euclidean(qf, gf).numpy(), tuple(reid_labels)
    return cases


def seconds_and_ratio(seconds, fast):
    return f'{seconds:6.2f} s {seconds / fast:5.1f}x'


def market(repeats, fastreid):
    print(f'Market-1501 scale: 3368 x 15913 float32 distances, torch threads {torch.get_num_threads()}; fast: '
          f'min / median of {repeats} runs; +verif: with the verification figures; the sort-based evaluators '
          f'once each, in seconds and as a multiple of fast\'s min')
    print(f'  {"case":27s} {"mAP":>6s}  {"fast":>13s}  {"+verif":>12s}  {"torch.sort rows":>15s}  '
          f'{"per-query loop":>15s}  {"fast-reid Cython":>16s}  agree')
    for name, (distmat, case_labels) in market_cases().items():
        fast_min, fast_median, fast = timed(repeats, lambda: evaluate(distmat, *case_labels, verbose=False, fprs=()))
        verif_min, _, verified = timed(repeats, lambda: evaluate(distmat, *case_labels, verbose=False))
        sort_time, _, per_query = timed(1, lambda: sorted_rows(distmat, *case_labels))
        loop_time, _, (cmc, mAP, mINP, _) = timed(1, lambda: reference_evaluate(distmat, *case_labels))
        sort_cmc, sort_mAP, sort_mINP = summary(*per_query)
        agree = (verified.mAP == fast.mAP and all(abs(a - b) < 1e-9 for a, b in ((fast.mAP, mAP), (fast.mINP, mINP),
                                                                               (fast.mAP, sort_mAP), (fast.mINP, sort_mINP)))
                 and np.abs(fast.cmc - cmc).max() < 1e-9 and np.abs(fast.cmc - sort_cmc).max() < 1e-9)
        fastreid_column = f'{"-":>16s}'
        if fastreid is not None:
            fastreid_time, _, (_, fastreid_ap, _) = timed(1, lambda: fastreid(distmat, *case_labels))
            fastreid_column = f'{seconds_and_ratio(fastreid_time, fast_min):>16s}'
            agree = agree and abs(np.mean(fastreid_ap) - fast.mAP) < 1e-5  # fast-reid sums in float32
        print(f'  {name:27s} {fast.mAP:6.1%}  {fast_min:5.3f} / {fast_median:5.3f}  {verif_min:5.3f} s {verif_min / fast_min - 1:+4.0%}  '
              f'{seconds_and_ratio(sort_time, fast_min):>15s}  {seconds_and_ratio(loop_time, fast_min):>15s}  '
              f'{fastreid_column}  {agree}')


def msmt(fastreid):
    """MSMT17 scale from features, distances computed block by block. The sort-based
    evaluators run on the same blocks as they go by; every evaluator's time excludes the
    distances."""
    num_query, num_gallery, dim = 11659, 82161, 512
    print(f'MSMT17 scale: {num_query} x {num_gallery}, {dim}-d re-ID features, distances in blocks of 256 queries, '
          f'torch threads {torch.get_num_threads()}; a full float32 distance matrix alone would be '
          f'{num_query * num_gallery * 4 / 2**20:.0f} MiB')
    for shuffle in (False, True):
        qf, gf, *case_labels = reid_features(1, num_query, num_gallery, 3060, 15, dim, shuffle=shuffle)
        q_pids, _, q_camids, _ = case_labels
        spent = {'distances': 0.0, 'torch.sort rows': 0.0, 'fast-reid Cython': 0.0}
        per_query, fastreid_ap = [], []

        def blocks(baselines):
            for start in range(0, num_query, 256):
                clock = time.perf_counter()
                block = squared_euclidean(qf[start:start + 256], gf)
                spent['distances'] += time.perf_counter() - clock
                if baselines:
                    rows = slice(start, start + 256)
                    block_labels = (q_pids[rows], case_labels[1], q_camids[rows], case_labels[3])
                    clock = time.perf_counter()
                    per_query.append(sorted_rows(block, *block_labels))
                    spent['torch.sort rows'] += time.perf_counter() - clock
                    if fastreid is not None:
                        clock = time.perf_counter()
                        fastreid_ap.append(fastreid(block.numpy(), *block_labels)[1])
                        spent['fast-reid Cython'] += time.perf_counter() - clock
                yield start, block

        def run(fprs, baselines):
            """(seconds of evaluate_blocks alone, its peak RSS increase in MiB, seconds of
            the distances, result)."""
            spent['distances'] = 0.0
            elsewhere = sum(spent.values())
            reset_peak_rss()
            rss_before = rss_mib('VmRSS')
            clock = time.perf_counter()
            result = evaluate_blocks(Reiterable(lambda: blocks(baselines)), *case_labels, verbose=False, fprs=fprs)
            elapsed = time.perf_counter() - clock - (sum(spent.values()) - elsewhere)
            return elapsed, rss_mib() - rss_before, spent['distances'], result

        fast_time, _, distance_time, fast = run((), True)
        verif_time, peak, _, verified = run(VERIFICATION_FPRS, False)
        _, sort_mAP, _ = summary(*(torch.cat(figures) for figures in zip(*per_query)))
        name = f're-ID features, {"shuffled" if shuffle else "grouped"}'
        line = (f'  {name}: mAP {fast.mAP:.1%}; distances {distance_time:.1f} s; fast {fast_time:.2f} s, +verif '
                f'{verif_time:.2f} s ({verif_time / fast_time - 1:+.0%}), peak RSS {peak:.0f} MiB above the features; '
                f'torch.sort rows {seconds_and_ratio(spent["torch.sort rows"], fast_time)}')
        if fastreid is not None:
            line += f'; fast-reid Cython {seconds_and_ratio(spent["fast-reid Cython"], fast_time)}'
        agree = abs(sort_mAP - fast.mAP) < 1e-9 and verified.mAP == fast.mAP and (
            fastreid is None or abs(np.mean(np.concatenate(fastreid_ap)) - fast.mAP) < 1e-5)
        print(line + f'; agree: {agree}')
        print('    ' + '\n    '.join(format_verification(verified)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeats', type=int, default=3, help='best of this many runs of the fast evaluator')
    parser.add_argument('--msmt', action='store_true',
                        help='run the MSMT17-scale cases instead (alone, so peak RSS is their own)')
    parser.add_argument('--threads', type=int, help='torch threads (default: torch\'s own choice)')
    parser.add_argument('--fastreid-cython', metavar='DIR',
                        help='folder of fast-reid\'s compiled rank_cy module, to time its Cython evaluator too')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    fastreid = load_fastreid(args.fastreid_cython)
    if args.msmt:
        msmt(fastreid)
    else:
        market(args.repeats, fastreid)


if __name__ == '__main__':
    main()
