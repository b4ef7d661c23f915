"""The clustering step of unsupervised re-ID (Cluster Contrast, Dai et al., ACCV 2022): pseudo
labels from features, in bounded memory.

    labels, report = pseudo_labels(features)               # (N,) cluster ids, -1: outlier

1. Features are L2-normalised; with must-link groups (tracklets), each group's features are
   averaged (and normalised again) and the groups are clustered as single samples.
2. k-reciprocal Jaccard distance (Zhong et al., CVPR 2017) in the variant of Cluster Contrast's
   compute_jaccard_distance (clustercontrast/utils/faiss_rerank.py), with k1 = 30, k2 = 6:
     N(i): the k1 nearest samples of i, i itself included, by d(i, j) = 2 - 2 cos(i, j);
     R(i, k) = {c in the first k of N(i) : i in the first k of N(c)}  (k = k1, and for the
       expansion k_half + 1 with k_half = round(k1 / 2));
     R*(i) = R(i, k1) plus each R(c, k_half + 1), c in R(i, k1), that overlaps R(i, k1) in
       more than 2/3 of its members;
     V(i, j) = exp(-d(i, j)) / sum over R*(i), for j in R*(i) (a softmax of -d);
     V(i) <- mean of V(c) over the first k2 of N(i);
     Jaccard(i, j) = 1 - s / (2 - s), s = sum_k min(V(i, k), V(j, k)), clamped at 0.
   Where it differs from the evaluation re-ranking of rerank.py: there N(i) holds k1 + 1
   samples (i and k1 others) and R(c, k_half) the round(k1 / 2) + 1 nearest; distances are
   squared Euclidean divided by each row's maximum before the exponential; and the final
   distance mixes in the original one (lambda). Here no per-row normalisation and no mixing:
   the Jaccard distance alone, between all samples.
3. DBSCAN (eps 0.6, min_samples 4, scikit-learn) on that distance, given as a sparse matrix:
   a pair that shares no k-reciprocal neighbour has distance exactly 1 > eps, so storing only
   the pairs within eps is exact. Diagonal and other zero distances are stored explicitly
   (scikit-learn reads the stored entries as the neighbourhoods).

Memory and time: no N x N matrix. The neighbour search goes through 64 MiB tiles of the upper
triangle of the (symmetric) similarity matrix, each read both ways: about half the flops of
the N x N x D product. V is sparse (tens of entries a row); the distances of its pairs come
from the neighbour search's products (a few percent computed again). The Jaccard distances
come from an inverted index of V a row block at a time, into a reused dense (rows, N)
buffer, reading out only the entries within max_distance. Tensors stay on the device of the
features.
"""
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from scipy import sparse
from sklearn.cluster import DBSCAN

import rerank
from eval_metrics import flat_nonzero, one_cpu_thread

__all__ = ['k_nearest', 'jaccard_distance', 'dbscan', 'group_features', 'cluster_centers', 'pseudo_labels',
           'pairwise_scores']

BLOCK_BYTES = 1 << 26  # a (rows, N) float32 working block: 64 MiB
PAIR_BUDGET = 1 << 22  # (row, shared column) pairs gathered at once in the Jaccard pass


def _block_rows(num_total):
    return max(1, min(num_total, BLOCK_BYTES // (4 * max(num_total, 1))))


def k_nearest(features, k, block_bytes=BLOCK_BYTES):
    """((N, k) indices, (N, k) similarities) of the k most similar rows of each row of (N, D)
    `features` by inner product (cosine on normalised features), most similar first: a row
    itself comes first unless an identical row ties with it. The similarity matrix is
    symmetric: rerank.top_k_by_tiles reads each (block, block) tile of its upper triangle
    both ways, about half the flops of the N x N x D product, tiles of block_bytes."""
    similarities, indices = rerank.top_k_by_tiles(lambda rows_i, rows_j: features[rows_i] @ features[rows_j].t(),
                                                  len(features), k, True, max(1, math.isqrt(block_bytes // 4)))
    return indices, similarities


def _cosine_distance_pairs(features, rows, cols, chunk=1 << 12):
    """2 - 2 cos of the normalised feature pairs (rows[n], cols[n]), `chunk` pairs at a time (each
    gathers 2 x chunk feature rows: 64 MiB at 2048-d)."""
    out = torch.empty(len(rows), device=features.device)
    for s in range(0, len(rows), chunk):
        a, b = features[rows[s:s + chunk]], features[cols[s:s + chunk]]
        out[s:s + chunk] = 2 - 2 * (a * b).sum(dim=1)
    return out


def _pair_distances(features, rows, cols, nearest):
    """2 - 2 cos of the normalised feature pairs (rows[n], cols[n]): read from the products of
    k_nearest where cols[n] is one of rows[n]'s nearest (95% of R*'s pairs at Market size),
    computed for the others. nearest: k_nearest's (indices, similarities)."""
    indices, similarities = nearest
    num_total = len(features)
    listed, order = torch.sort((torch.arange(num_total, device=features.device)[:, None] * num_total
                                + indices).flatten())
    keys = rows * num_total + cols
    at = torch.searchsorted(listed, keys).clamp_(max=len(listed) - 1)
    found = listed[at] == keys
    out = torch.empty(len(rows), device=features.device)
    out[found] = 2 - 2 * similarities.flatten()[order[at[found]]]
    missing = ~found
    out[missing] = _cosine_distance_pairs(features, rows[missing], cols[missing])
    return out


def jaccard_distance(features, k1=30, k2=6, max_distance=1.0, nearest=None, normalize=True):
    """The k-reciprocal Jaccard distances of the module docstring among the rows of (N, D)
    features, as a scipy.sparse CSR (N, N) float32 matrix holding every pair with distance
    <= max_distance and < 1 (the diagonal included, explicitly, also where it is 0); absent
    pairs have distance 1. The features are L2-normalised here (a copy), unless normalize=False
    says they already are. nearest: k_nearest(normalised features, k >= k1), when already
    computed."""
    if k1 < 1 or not 1 <= k2 <= k1:
        raise ValueError(f'the Jaccard distance needs k1 >= 1 and 1 <= k2 <= k1; got k1={k1}, k2={k2}')
    x = F.normalize(features.float(), dim=1) if normalize else features
    num_total, device = len(x), x.device
    if num_total < k1:
        raise ValueError(f'k1={k1} neighbours need at least {k1} samples, got {num_total}')
    if nearest is None:
        nearest = k_nearest(x, k1)
    neighbours = nearest[0][:, :k1]

    # R*(i): R(i, k1) is rerank's R(i, k1 - 1) (k1 samples, i included); R(c, k_half + 1) likewise.
    rows, cols = rerank._expanded_sets(neighbours, k1 - 1, k_half=int(np.around(k1 / 2.0)))
    weights = torch.exp(-_pair_distances(x, rows, cols, nearest))
    values = weights / rerank._row_sums(weights, rows, num_total)[rows]
    if k2 != 1:
        rows, cols, values = rerank._query_expansion(rows, cols, values, neighbours, k2)

    # s(i, j) a row block at a time, blocks bounded both by the dense (rows, N) buffer and by
    # the pairs they gather. On the CPU, torch's threads each take blocks of their own, one
    # thread per op: the scatter into the buffer is serial in torch.
    overlap = rerank.SharedMass(rows, cols, values, num_total)
    pair_end = torch.cumsum(overlap.pairs_per_row().double(), 0).cpu()
    workers = torch.get_num_threads() if device.type == 'cpu' else 1
    step = max(1, _block_rows(num_total) // workers)
    budget = PAIR_BUDGET // workers
    blocks, start = [], 0
    while start < num_total:
        done = float(pair_end[start - 1]) if start else 0.0
        stop = max(start + 1, min(start + step, int(torch.searchsorted(pair_end, done + budget, right=True))))
        blocks.append((start, min(stop, num_total)))
        start = blocks[-1][1]
    # distance <= max_distance < 1 needs s >= 2 (1 - max_distance) / (2 - max_distance): the
    # pairs above a slightly lower cut are read out of each block, then checked exactly.
    cut = max(0.0, 2 * (1 - max_distance) / (2 - max_distance) - 1e-4) if max_distance < 1 else 0.0
    buffers = threading.local()

    def distances_within(block):
        """(rows, cols, distances) of the pairs of a row block within max_distance."""
        start, stop = block
        if not hasattr(buffers, 'shared'):  # each worker's own, zero between blocks
            buffers.shared = torch.zeros(step * num_total, device=device)
            buffers.above = torch.zeros((step * num_total + 7) // 8 * 8, dtype=torch.bool, device=device)
        shared = overlap.add_to(start, stop, buffers.shared[:(stop - start) * num_total]).view(-1)
        above = buffers.above[:(len(shared) + 7) // 8 * 8]
        torch.gt(shared, cut, out=above[:len(shared)])
        above[len(shared):] = False
        at = flat_nonzero(above)
        r, c, s = at // num_total, at % num_total, shared[at]
        shared.zero_()
        distance = (1 - s / (2 - s)).clamp_(min=0)
        keep = (distance <= max_distance) & (distance < 1)
        return r[keep] + start, c[keep], distance[keep]

    with one_cpu_thread(device), ThreadPoolExecutor(workers) as pool:
        out_rows, out_cols, out_values = zip(*pool.map(distances_within, blocks))
    r, c, d = (torch.cat(t).cpu().numpy() for t in (out_rows, out_cols, out_values))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=num_total))])
    # Built from (data, indices, indptr): explicit zeros are kept, which scipy's (data, (row, col))
    # form would keep too but sum_duplicates-based conversions elsewhere may not.
    return sparse.csr_matrix((d.astype(np.float32), c.astype(np.int32), indptr), shape=(num_total, num_total))


def dbscan(distance, eps=0.6, min_samples=4):
    """(N,) int64 cluster ids 0..C-1 (-1: outlier) of scikit-learn's DBSCAN on a sparse
    precomputed distance matrix whose absent pairs lie beyond eps (jaccard_distance)."""
    return DBSCAN(eps=eps, min_samples=min_samples, metric='precomputed').fit_predict(distance).astype(np.int64)


def group_features(features, groups):
    """((G, D) mean of each group's normalised features, normalised, (N,) group index 0..G-1 of
    each row). groups: (N,) hashable must-link keys (tracklets); None: every row alone."""
    x = F.normalize(features.float(), dim=1)
    if groups is None:
        return x, torch.arange(len(x), device=x.device)
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    inverse = torch.as_tensor(inverse.reshape(-1), device=x.device)
    sums = torch.zeros(int(inverse.max()) + 1, x.shape[1], device=x.device).index_add_(0, inverse, x)
    return F.normalize(sums, dim=1), inverse


def cluster_centers(features, labels):
    """(C, D) the normalised mean of each cluster's normalised features (the cluster memory);
    labels (N,) with -1 for outliers, which count for nothing."""
    x = F.normalize(features.float(), dim=1)
    labels = torch.as_tensor(labels, device=x.device)
    kept = labels >= 0
    num_clusters = int(labels.max()) + 1 if kept.any() else 0
    sums = torch.zeros(num_clusters, x.shape[1], device=x.device).index_add_(0, labels[kept], x[kept])
    counts = torch.bincount(labels[kept], minlength=num_clusters).clamp(min=1)
    return F.normalize(sums / counts[:, None], dim=1)


def pseudo_labels(features, groups=None, k1=30, k2=6, eps=0.6, min_samples=4):
    """(labels (N,) int64 numpy, DBSCAN's cluster ids 0..C-1, -1: outlier;
    report {'clusters', 'outliers', and the seconds of 'neighbours', 'jaccard', 'dbscan'}) for
    (N, D) features. With groups (tracklets), a group is clustered as one sample (its mean
    feature) and all its members share its label; min_samples then counts groups."""
    report = {}
    x, group_of = group_features(features, groups)
    if len(x) < k1:
        raise ValueError(f'{len(x)} samples{" (tracklets)" if groups is not None else ""} to cluster, fewer '
                         f'than --cluster-k1 {k1} neighbours: lower --cluster-k1 or add data')
    tic = time.perf_counter()
    nearest = k_nearest(x, k1)
    _sync(x.device)
    report['neighbours'] = time.perf_counter() - tic
    tic = time.perf_counter()
    distance = jaccard_distance(x, k1, k2, max_distance=eps, nearest=nearest, normalize=False)
    _sync(x.device)
    report['jaccard'] = time.perf_counter() - tic
    tic = time.perf_counter()
    group_labels = dbscan(distance, eps, min_samples)
    report['dbscan'] = time.perf_counter() - tic
    labels = group_labels[group_of.cpu().numpy()]
    report['clusters'] = int(labels.max()) + 1 if len(labels) else 0
    report['outliers'] = int((labels < 0).sum())
    return labels, report


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def pairwise_scores(predicted, truth):
    """(precision, recall, F1) of the pairs predicted together against the true pairs: over
    all pairs i < j of samples, a pair is predicted positive when both share a cluster id
    >= 0 (outliers pair with nobody) and truly positive when they share a truth label.
    Counted from the contingency table, never pairwise; 0 where a ratio has no pair."""
    predicted, truth = np.asarray(predicted), np.asarray(truth)

    def pairs(*labels):
        _, counts = np.unique(np.stack(labels, axis=1), axis=0, return_counts=True)
        return int((counts * (counts - 1) // 2).sum())

    kept = predicted >= 0
    together = pairs(predicted[kept])
    true = pairs(truth)
    both = pairs(predicted[kept], truth[kept])
    precision = both / together if together else 0.0
    recall = both / true if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1
