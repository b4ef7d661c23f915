"""A slow, literal implementation of k-reciprocal re-ranking, step by step, for the tests."""
import numpy as np


def reference_re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    num_query = q_g_dist.shape[0]
    dist = np.block([[q_q_dist, q_g_dist], [q_g_dist.T, g_g_dist]]).astype(np.float64) ** 2
    num_total = len(dist)
    orig = dist / dist.max(axis=1, keepdims=True)
    rank = np.argsort(orig, axis=1, kind='stable')

    def reciprocal(i, k):
        return [c for c in rank[i, :k + 1] if i in rank[c, :k + 1]]

    V = np.zeros((num_total, num_total))
    for i in range(num_total):
        r_set = reciprocal(i, k1)
        expanded = set(r_set)
        for c in r_set:
            r_half = reciprocal(c, int(np.around(k1 / 2.0)))
            if len(set(r_half) & set(r_set)) > 2.0 / 3.0 * len(r_half):
                expanded |= set(r_half)
        members = sorted(expanded)
        weights = np.exp(-orig[i, members])
        V[i, members] = weights / weights.sum()
    if k2 != 1:
        V = np.stack([V[rank[i, :k2]].mean(axis=0) for i in range(num_total)])
    final = np.zeros((num_query, num_total - num_query))
    for i in range(num_query):
        for j in range(num_query, num_total):
            shared = np.minimum(V[i], V[j]).sum()
            jaccard = 1 - shared / (2 - shared)
            final[i, j - num_query] = (1 - lambda_value) * jaccard + lambda_value * orig[i, j]
    return final
