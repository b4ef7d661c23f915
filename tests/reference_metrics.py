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


def reference_verification(distmat, q_pids, g_pids, q_camids, g_camids, fprs):
    """((fpr, tpr, threshold), ...) straight from the definition: over every (query, gallery)
    pair but junk (same pid and camera), the largest float32 threshold t with
    #negatives(d <= t) <= floor(fpr * #negatives), searched among every distance value and the
    float just below each; tpr = #positives(d <= t) / #positives."""
    distmat = np.asarray(distmat, dtype=np.float32)
    same_pid = q_pids[:, None] == g_pids[None, :]
    junk = same_pid & (q_camids[:, None] == g_camids[None, :])
    positives = distmat[same_pid & ~junk]
    negatives = distmat[~same_pid]
    values = np.unique(distmat)
    candidates = np.concatenate([values, np.nextafter(values, np.float32(-np.inf))])
    accepted_negatives = np.searchsorted(np.sort(negatives), candidates, side='right')  # #neg <= t
    out = []
    for fpr in fprs:
        best = candidates[accepted_negatives <= np.floor(fpr * len(negatives))].max()
        out.append((fpr, np.mean(positives <= best), float(best)))
    return tuple(out)
