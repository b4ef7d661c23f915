"""Slow, obvious reference implementations that the fast code is tested against."""
import numpy as np


def reference_evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """Per-query loop with a full stable argsort: (cmc, mAP, mINP, num_valid)."""
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    all_cmc, all_ap, all_inp = [], [], []
    for q in range(num_q):
        order = np.argsort(distmat[q], kind='stable')
        keep = ~((g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q]))
        matches = (g_pids[order][keep] == q_pids[q]).astype(np.int64)
        if not matches.any():
            continue
        cmc = np.minimum(matches.cumsum(), 1)
        cmc = np.concatenate([cmc, np.ones(max(0, max_rank - len(cmc)), dtype=np.int64)])
        all_cmc.append(cmc[:max_rank])
        hit_ranks = np.flatnonzero(matches) + 1
        all_ap.append(np.mean(np.arange(1, len(hit_ranks) + 1) / hit_ranks))
        all_inp.append(len(hit_ranks) / hit_ranks[-1])
    if not all_ap:
        return np.zeros(max_rank), 0.0, 0.0, 0
    return np.mean(all_cmc, axis=0), np.mean(all_ap), np.mean(all_inp), len(all_ap)
