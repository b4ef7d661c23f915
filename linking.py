"""Multi-camera linking: the tracklets of several cameras -> global identities, by agglomerative
clustering with average linkage under constraints, in time and memory about linear in the
number of tracklets where time gates bound the candidates.

    global_id = link_tracklets(table, threshold=0.5, transitions=model, prior_weight=1.0)

Pairs. Of two tracklets i, j, i is the earlier: smaller start_time, ties broken by end_time,
then by row (a fixed order). The pair is allowed (may end in one identity) when
  - of one camera, they do not overlap in time: start_j > end_i (closed intervals: sharing a
    frame is overlapping);
  - with disjoint_views, of two cameras, they do not overlap in time either;
  - with `transitions`: window(camera_i, camera_j) is not None, gap = start_j - end_i lies in
    it and cost(camera_i, camera_j, gap) is finite. Same-camera pairs are gated the same way,
    by window(a, a) (a person leaving a view and coming back, or a track broken in two).
Every other pair is forbidden. Its distance is d(i, j) = appearance + prior_weight * cost, with
appearance = 1 - cos(f_i, f_j) (in [0, 2]) or, distance='jaccard', the k-reciprocal Jaccard
distance (in [0, 1]) of cluster.py over the candidate neighbourhoods (below).
Without `transitions` there are no time gates: every pair not forbidden by the overlap rules is
allowed and compared, N^2 / 2 pairs (in bounded memory; for scenes of thousands of tracklets).

Clustering. From singletons, repeatedly merge the two clusters P, Q with the smallest average
D(P, Q) = mean of d(i, j) over all i in P, j in Q, among the pairs of clusters whose member
pairs are ALL allowed, while D(P, Q) < threshold. A pair outside every time gate is therefore
not a missing value left out of the mean but a cannot-link: the gate says the two tracklets
cannot be one person, so no cluster ever holds both (for a route a -> b -> c, the pair (a, c) is
judged by the model's own window for (a, c), which the model composes along its camera graph).
The constraints hold at every merge: the clusters P u Q can still merge with are those both P
and Q could merge with, so the cannot-links of the merged cluster are the union of its parts'.

Why it is about linear at a fixed density of tracklets in time:
1. Candidates per ordered camera pair (a, b): for each tracklet of a, the tracklets of b (sorted
   by start time) that start within the window after it end are one contiguous run, found by
   binary search (np.searchsorted); no N x N matrix is ever formed. Pairs are streamed in
   chunks of at most CHUNK_PAIRS, their appearance distances computed pair by pair.
2. A merge needs at least one pair below the threshold between the two clusters (a mean is at
   least its minimum), so a cluster never spans two connected components of the graph of
   allowed pairs with d < threshold. A first pass over the candidates finds those components
   (scipy); a second keeps only the allowed pairs inside one component, the only ones an average
   can ever read. Every other candidate pair is dropped once its distance is known.
3. Average linkage over those sparse pairs with a heap: for each pair of live clusters that may
   merge, the sum of d over its member pairs (their count is |P| |Q|, since all are allowed).
   Merging P and Q keeps, for each R adjacent to both, sum(P, R) + sum(Q, R), and drops the
   neighbours of only one of them (some member pair with R is forbidden, for good). Heap
   entries of dead clusters are skipped when popped; only averages below the threshold enter.

distance='jaccard': the k1 nearest allowed candidates of each tracklet (by cosine, itself
first; lists shorter than k1 are padded with the tracklet itself, which then weighs more in
the query expansion) stand for the k-nearest lists of cluster.jaccard_distance, which builds the
k-reciprocal sets and the Jaccard distances from them (pairs sharing no k-reciprocal neighbour
are at distance 1). Its read-out scans a dense buffer of all N columns a row block at a time,
so this option costs time quadratic in N (memory stays bounded): tens of thousands of
tracklets, not millions. k1 and k2 are lowered to the number of tracklets when it is smaller.
"""
import heapq
import time

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.csgraph import connected_components

import cluster

__all__ = ['link_tracklets', 'candidate_pairs']

CHUNK_PAIRS = 1 << 22  # candidate pairs handled at once: ~100 MiB of index and distance arrays
NEAREST_FLUSH = 1 << 23  # (row, neighbour) entries gathered before they are merged into the k1 lists


def candidate_pairs(table, transitions=None, disjoint_views=False):
    """Yield the allowed pairs of the module docstring as chunks (rows, cols, cost): rows (M,)
    int64 the earlier tracklet, cols (M,) int64 the later one, cost (M,) float64 the transition
    cost (0 without transitions), at most CHUNK_PAIRS a chunk. Each allowed pair once."""
    num = len(table)
    rank = np.empty(num, dtype=np.int64)
    rank[np.lexsort((np.arange(num), table.end_time, table.start_time))] = np.arange(num)
    per_camera = []  # rows of each camera in time order, with their ranks, starts and ends
    for c in range(len(table.cameras)):
        rows = np.flatnonzero(table.camera == c)
        rows = rows[np.argsort(rank[rows])]
        per_camera.append((rows, rank[rows], table.start_time[rows], table.end_time[rows]))
    for a, name_a in enumerate(table.cameras):
        rows_a, rank_a, _, end_a = per_camera[a]
        if not len(rows_a):
            continue
        for b, name_b in enumerate(table.cameras):
            rows_b, rank_b, start_b, _ = per_camera[b]
            window = (-np.inf, np.inf) if transitions is None else transitions.window(name_a, name_b)
            if window is None or not len(rows_b):
                continue
            lo, hi = window
            first = np.searchsorted(rank_b, rank_a, 'right')  # j later than i
            if lo > -np.inf:
                first = np.maximum(first, np.searchsorted(start_b, end_a + lo, 'left'))
            if a == b or disjoint_views:
                first = np.maximum(first, np.searchsorted(start_b, end_a, 'right'))  # no overlap
            stop = np.searchsorted(start_b, end_a + hi, 'right') if hi < np.inf else len(rows_b)
            counts = np.maximum(stop - first, 0)
            ends = np.cumsum(counts)
            # Consecutive runs of tracklets of a whose pairs fill one chunk.
            cuts = np.searchsorted(ends, np.arange(CHUNK_PAIRS, ends[-1], CHUNK_PAIRS), 'right')
            bounds = np.unique(np.concatenate([[0], cuts, [len(rows_a)]]))
            for chunk in map(slice, bounds[:-1], bounds[1:]):
                n = counts[chunk]
                total = int(n.sum())
                if not total:
                    continue
                i = np.repeat(rows_a[chunk], n)
                offset = np.arange(total) - np.repeat(np.cumsum(n) - n, n)
                j = rows_b[np.repeat(first[chunk], n) + offset]
                if transitions is None:
                    yield i, j, np.zeros(total)
                    continue
                cost = np.asarray(transitions.cost(name_a, name_b, table.start_time[j] - table.end_time[i]),
                                  dtype=np.float64)
                keep = np.isfinite(cost)
                yield i[keep], j[keep], cost[keep]


def _cosine_distances(features):
    """A function (rows, cols) -> (M,) float64 1 - cos of the pairs, features (N, D) L2-normalised."""
    x = torch.from_numpy(features)

    def distances(rows, cols):
        return cluster._cosine_distance_pairs(x, torch.from_numpy(rows), torch.from_numpy(cols)).double().numpy() / 2
    return distances


def _nearest_candidates(table, pairs, k1):
    """((N, k1) int64 indices, (N, k1) float32 cosine similarities) of each tracklet's k1 most
    similar allowed candidates, itself first, in cluster.k_nearest's form; short lists padded
    with the tracklet itself (similarity 1). pairs: a callable giving candidate_pairs' chunks."""
    num = len(table)
    cosine = _cosine_distances(table.features)
    index = np.tile(np.arange(num)[:, None], (1, k1))
    similarity = np.full((num, k1), -np.inf)
    similarity[:, 0] = np.inf  # the tracklet itself stays first
    pending, size = [], 0

    def merge(entries):
        rows, cols, values = (np.concatenate(part) for part in zip(*entries))
        touched = np.unique(rows)
        rows = np.concatenate([np.repeat(touched, k1), rows])
        cols = np.concatenate([index[touched].ravel(), cols])
        values = np.concatenate([similarity[touched].ravel(), values])
        order = np.lexsort((-values, rows))
        rows, cols, values = rows[order], cols[order], values[order]
        rank = np.arange(len(rows)) - np.searchsorted(rows, rows, 'left')
        kept = rank < k1
        index[rows[kept], rank[kept]] = cols[kept]
        similarity[rows[kept], rank[kept]] = values[kept]

    for i, j, _ in pairs():
        s = 1 - cosine(i, j)
        pending.append((np.concatenate([i, j]), np.concatenate([j, i]), np.concatenate([s, s])))
        size += 2 * len(i)
        if size >= NEAREST_FLUSH:
            merge(pending)
            pending, size = [], 0
    if pending:
        merge(pending)
    similarity[~np.isfinite(similarity)] = 1.0  # the tracklet itself, first and as padding
    return torch.from_numpy(index), torch.from_numpy(similarity.astype(np.float32))


def _jaccard_distances(table, pairs, k1, k2):
    """A function (rows, cols) -> (M,) float64 Jaccard distances of the pairs (module docstring)."""
    nearest = _nearest_candidates(table, pairs, k1)
    distance = cluster.jaccard_distance(torch.from_numpy(table.features), k1, k2, max_distance=1.0,
                                        nearest=nearest, normalize=False)
    # Stored entries are the pairs closer than 1, zeros included; as similarities 1 - d, an
    # absent entry reads 0, i.e. distance 1.
    closeness = distance.copy()
    closeness.data = 1 - closeness.data

    def distances(rows, cols):
        return 1 - np.asarray(closeness[rows, cols], dtype=np.float64).ravel()
    return distances


def _average_linkage(num, rows, cols, distance, threshold):
    """(num,) int64 cluster label (a representative row) of constrained average linkage over the
    allowed pairs (rows[m], cols[m]) with distances distance[m]; absent pairs are forbidden.
    Module docstring, step 3."""
    size, neighbours = {}, {}  # live cluster -> its size; -> {adjacent cluster: sum of d}
    for i, j, d in zip(rows.tolist(), cols.tolist(), distance.tolist()):
        neighbours.setdefault(i, {})[j] = d
        neighbours.setdefault(j, {})[i] = d
    size.update((c, 1) for c in neighbours)
    heap = [(d, i, j) for i, j, d in zip(rows.tolist(), cols.tolist(), distance.tolist()) if d < threshold]
    heapq.heapify(heap)
    parent = np.arange(2 * num)  # merged clusters get new ids num, num + 1, ...
    new_id = num
    while heap:
        _, p, q = heapq.heappop(heap)
        if p not in neighbours or q not in neighbours:
            continue  # an entry of a cluster merged since
        near_p, near_q = neighbours.pop(p), neighbours.pop(q)
        merged_size = size.pop(p) + size.pop(q)
        merged = {}
        for r, sum_p in near_p.items():
            if r == q:
                continue
            near_r = neighbours[r]
            del near_r[p]
            sum_q = near_q.get(r)
            if sum_q is not None:  # every member pair of (p u q, r) is allowed
                merged[r] = near_r[new_id] = sum_p + sum_q
                average = merged[r] / (merged_size * size[r])
                if average < threshold:
                    heapq.heappush(heap, (average, new_id, r))
        for r in near_q:
            if r != p:
                neighbours[r].pop(q)
        neighbours[new_id], size[new_id] = merged, merged_size
        parent[p] = parent[q] = new_id
        new_id += 1
    while True:  # ids only grow along parent links: pointer jumping finds the roots
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return parent[:num]
        parent = grand


def link_tracklets(table, threshold, transitions=None, prior_weight=1.0, disjoint_views=False,
                   distance='cosine', k1=20, k2=6, report=None):
    """(N,) int64 global identity of each tracklet of a TrackletTable, numbered 0.. in order of
    each identity's first row: constrained average-linkage clustering (module docstring).

    threshold: merge while the average distance is below it. transitions: an object with
    window(a, b) -> (lo, hi) seconds or None, and cost(a, b, gaps) -> costs (inf: forbidden), over
    camera names (camera_transitions.TransitionModel); None: no time gates. prior_weight: the
    weight of the transition cost added to the appearance distance. disjoint_views: one person is
    never in two cameras at the same time. distance: 'cosine' or 'jaccard' (k1, k2: its
    neighbourhood sizes). report: a dict, when given, receives the counts of candidate pairs,
    pairs below the threshold and pairs kept for the clustering, and the seconds of each stage."""
    if distance not in ('cosine', 'jaccard'):
        raise ValueError(f"distance must be 'cosine' or 'jaccard', got {distance!r}")
    num = len(table)
    norms = np.sqrt(np.einsum('ij,ij->i', table.features, table.features))
    if num and np.abs(norms - 1).max() > 1e-3:
        raise ValueError(f'tracklet features must be L2-normalised (norms {norms.min():.3g}..{norms.max():.3g})')
    report = {} if report is None else report
    tic = time.perf_counter()

    def pairs():
        return candidate_pairs(table, transitions, disjoint_views)
    if distance == 'jaccard' and num:
        k1 = min(k1, num)
        appearance = _jaccard_distances(table, pairs, k1, min(k2, k1))
    else:
        appearance = _cosine_distances(table.features)
    report['jaccard_seconds'] = time.perf_counter() - tic if distance == 'jaccard' else 0.0

    def scored(keep):
        """Concatenated (rows, cols, d) of the allowed pairs with keep(rows, cols, d)."""
        parts = [(np.empty(0, np.int64),) * 2 + (np.empty(0),)]
        for i, j, cost in pairs():
            d = appearance(i, j) + prior_weight * cost
            kept = keep(i, j, d)
            parts.append((i[kept], j[kept], d[kept]))
            report['candidate_pairs'] = report.get('candidate_pairs', 0) + len(i)
        return (np.concatenate(part) for part in zip(*parts))

    tic = time.perf_counter()
    report['candidate_pairs'] = 0
    rows, cols, _ = scored(lambda i, j, d: d < threshold)
    graph = sparse.coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(num, num))
    _, component = connected_components(graph, directed=False)
    report['pairs_below_threshold'] = len(rows)
    report['components_seconds'] = time.perf_counter() - tic

    tic = time.perf_counter()
    report['candidate_pairs'] = 0
    rows, cols, d = scored(lambda i, j, d: component[i] == component[j])
    report['pairs_clustered'] = len(rows)
    report['pairs_seconds'] = time.perf_counter() - tic

    tic = time.perf_counter()
    label = _average_linkage(num, rows, cols, d, threshold)
    _, first_row, global_id = np.unique(label, return_index=True, return_inverse=True)
    report['linkage_seconds'] = time.perf_counter() - tic
    return np.argsort(np.argsort(first_row))[global_id].astype(np.int64)
