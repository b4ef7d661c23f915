"""Multi-camera linking: the tracklets of several cameras -> global identities, by agglomerative
clustering with average linkage under constraints, in time and memory about linear in the
number of tracklets where time gates bound the candidates.

    global_id = link_tracklets(table, threshold=0.5, transitions=model, prior_weight=1.0)

Pairs. Of two tracklets i, j, i is the earlier: smaller start_time, ties broken by end_time,
then by row (a fixed order). The pair is allowed (may end in one identity) when
  - of one camera, they do not overlap in time: start_j > end_i (closed intervals: sharing a
    frame is overlapping);
  - with disjoint_views, of two cameras, they do not overlap in time either;
  - with `transitions`, of two cameras: window(camera_i, camera_j) is not None, gap =
    start_j - end_i lies in it and cost(camera_i, camera_j, gap) is finite;
  - with `transitions`, of one camera (a track broken in two, a person coming back; the model
    covers pairs of different cameras only): gap <= transitions.max_window(), at cost 0.
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
   (scipy). Then only the allowed pairs inside one component are kept, the only ones an average
   can ever read: enumerated component by component (the sum of their squared sizes, small
   where the threshold separates people), or by a second sweep when that is smaller.
   Appearance distances are computed only where needed: in the sweep for the pairs whose
   prior_weight * cost alone is below the threshold (appearance >= 0), then for the pairs
   inside a component; every other candidate costs its time test only.
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

__all__ = ['link_tracklets', 'PairRules', 'candidate_pairs']

CHUNK_PAIRS = 1 << 22  # candidate pairs handled at once: ~100 MiB of index and distance arrays
NEAREST_FLUSH = 1 << 23  # (row, neighbour) entries gathered before they are merged into the k1 lists


class PairRules:
    """Which pairs of a table's tracklets are allowed, and their transition costs (module
    docstring), for the pairs of a time sweep or of given groups."""

    def __init__(self, table, transitions=None, disjoint_views=False):
        self.table, self.transitions, self.disjoint_views = table, transitions, disjoint_views
        num = len(table)
        self.rank = np.empty(num, dtype=np.int64)  # the order that says which of two is the earlier
        self.rank[np.lexsort((np.arange(num), table.end_time, table.start_time))] = np.arange(num)
        self.same_camera_gap = np.inf if transitions is None else float(transitions.max_window())
        self._windows = {}

    def window(self, a, b):
        """(lo, hi) of the gaps allowed from camera index a to b, or None."""
        if (a, b) not in self._windows:
            if a == b or self.transitions is None:
                self._windows[a, b] = (-np.inf, self.same_camera_gap)
            else:
                self._windows[a, b] = self.transitions.window(self.table.cameras[a], self.table.cameras[b])
        return self._windows[a, b]

    def costs(self, rows, cols):
        """(M,) float64 transition costs of the pairs (rows[m] earlier than cols[m]), inf where
        the pair is forbidden."""
        table = self.table
        gap = table.start_time[cols] - table.end_time[rows]
        camera_a, camera_b = table.camera[rows], table.camera[cols]
        cost = np.zeros(len(rows))
        cost[(gap <= 0) & ((camera_a == camera_b) | self.disjoint_views)] = np.inf  # overlapping
        key = camera_a * len(table.cameras) + camera_b
        order = np.argsort(key, kind='stable')
        bounds = np.flatnonzero(np.diff(key[order])) + 1
        for group in np.split(order, bounds) if len(order) else ():
            a, b = table.camera[rows[group[0]]], table.camera[cols[group[0]]]
            window = self.window(a, b)
            if window is None:
                cost[group] = np.inf
                continue
            outside = (gap[group] < window[0]) | (gap[group] > window[1])
            if a != b and self.transitions is not None:
                cost[group] += np.asarray(self.transitions.cost(table.cameras[a], table.cameras[b], gap[group]),
                                          dtype=np.float64)
            cost[group[outside]] = np.inf
        return cost

    def _allowed(self, rows, cols):
        cost = self.costs(rows, cols)
        keep = np.isfinite(cost)
        return rows[keep], cols[keep], cost[keep]

    def sweep(self):
        """Yield every allowed pair once, as chunks (rows (M,) the earlier tracklet, cols (M,)
        the later, cost (M,)) of at most about CHUNK_PAIRS, one camera pair a chunk: for each
        tracklet of camera a, the run of camera b's tracklets (in time order) that start within
        window(a, b) of its end, by binary search."""
        table, rank = self.table, self.rank
        per_camera = []  # rows of each camera in time order, with their ranks, starts and ends
        for c in range(len(table.cameras)):
            rows = np.flatnonzero(table.camera == c)
            rows = rows[np.argsort(rank[rows])]
            per_camera.append((rows, rank[rows], table.start_time[rows], table.end_time[rows]))
        for a in range(len(table.cameras)):
            rows_a, rank_a, _, end_a = per_camera[a]
            for b in range(len(table.cameras)) if len(rows_a) else ():
                rows_b, rank_b, start_b, _ = per_camera[b]
                window = self.window(a, b)
                if window is None or not len(rows_b):
                    continue
                lo, hi = window
                first = np.searchsorted(rank_b, rank_a, 'right')  # later than the tracklet of a
                if lo > -np.inf:
                    first = np.maximum(first, np.searchsorted(start_b, end_a + lo, 'left'))
                if a == b or self.disjoint_views:
                    first = np.maximum(first, np.searchsorted(start_b, end_a, 'right'))  # no overlap
                stop = np.searchsorted(start_b, end_a + hi, 'right') if hi < np.inf else len(rows_b)
                for i, position in _runs(rows_a, first, np.maximum(stop - first, 0)):
                    yield self._allowed(i, rows_b[position])

    def within(self, group):
        """Yield the allowed pairs among the rows of each group ((N,) group labels) as chunks
        like sweep's, group by group: sum of the squared group sizes, not the candidates."""
        order = np.argsort(group, kind='stable')
        sizes = np.bincount(group)
        later = np.repeat(np.cumsum(sizes), sizes) - np.arange(len(order)) - 1  # members after each
        for i, position in _runs(order, np.arange(1, len(order) + 1), later):
            j = order[position]
            swap = self.rank[i] > self.rank[j]
            i[swap], j[swap] = j[swap], i[swap]
            yield self._allowed(i, j)


def _runs(left, first, counts):
    """Yield the pairs (left[k], first[k] + t) for t < counts[k], all k, as chunks (lefts (M,),
    positions (M,)) of whole runs, about CHUNK_PAIRS pairs a chunk (more for one longer run)."""
    ends = np.cumsum(counts)
    cuts = np.searchsorted(ends, np.arange(CHUNK_PAIRS, ends[-1] if len(ends) else 0, CHUNK_PAIRS), 'right')
    bounds = np.unique(np.concatenate([[0], cuts, [len(counts)]]))
    for chunk in map(slice, bounds[:-1], bounds[1:]):
        n = counts[chunk]
        if n.sum():
            starts = np.cumsum(n) - n
            yield np.repeat(left[chunk], n), np.repeat(first[chunk] - starts, n) + np.arange(starts[-1] + n[-1])


def candidate_pairs(table, transitions=None, disjoint_views=False):
    """PairRules(table, transitions, disjoint_views).sweep(): every allowed pair once, as
    chunks (rows, cols, cost), rows the earlier tracklet."""
    return PairRules(table, transitions, disjoint_views).sweep()


def _cosine_distances(features, chunk=1 << 12):
    """A function (rows, cols) -> (M,) float64 1 - cos of the pairs, features (N, D) float32
    L2-normalised, `chunk` pairs at a time (8 MiB of gathered rows at 512-d). In numpy: the
    pairs come in many small chunks (one camera pair at a time), and a small torch op costs
    milliseconds of thread hand-off on a busy 2-core machine (cluster._cosine_distance_pairs:
    10 ms for 60 pairs there, numpy 0.07 ms)."""
    def distances(rows, cols):
        out = np.empty(len(rows))
        for s in range(0, len(rows), chunk):
            out[s:s + chunk] = 1 - np.einsum('ij,ij->i', features[rows[s:s + chunk]], features[cols[s:s + chunk]])
        return out
    return distances


def _nearest_candidates(table, pairs, k1):
    """((N, k1) int64 indices, (N, k1) float32 cosine similarities) of each tracklet's k1 most
    similar allowed candidates, itself first, in cluster.k_nearest's form; short lists padded
    with the tracklet itself (similarity 1). pairs: a callable giving the allowed pairs as
    PairRules.sweep's chunks."""
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
        if not len(rows):  # scipy answers an empty index with an empty sparse matrix
            return np.empty(0)
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
    if not prior_weight >= 0:
        raise ValueError(f'prior_weight must be >= 0, got {prior_weight}')
    num = len(table)
    norms = np.sqrt(np.einsum('ij,ij->i', table.features, table.features))
    if num and np.abs(norms - 1).max() > 1e-3:
        raise ValueError(f'tracklet features must be L2-normalised (norms {norms.min():.3g}..{norms.max():.3g})')
    report = {} if report is None else report
    tic = time.perf_counter()

    rules = PairRules(table, transitions, disjoint_views)
    if distance == 'jaccard' and num:
        k1 = min(k1, num)
        appearance = _jaccard_distances(table, rules.sweep, k1, min(k2, k1))
    else:
        appearance = _cosine_distances(table.features)
    report['jaccard_seconds'] = time.perf_counter() - tic if distance == 'jaccard' else 0.0

    tic = time.perf_counter()
    report['candidate_pairs'] = 0
    below = [(np.empty(0, np.int64),) * 2]
    for i, j, cost in rules.sweep():
        report['candidate_pairs'] += len(i)
        prior = prior_weight * cost
        maybe = prior < threshold  # the appearance distance is >= 0
        i, j = i[maybe], j[maybe]
        near = appearance(i, j) + prior[maybe] < threshold
        below.append((i[near], j[near]))
    rows, cols = (np.concatenate(part) for part in zip(*below))
    graph = sparse.coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(num, num))
    _, component = connected_components(graph, directed=False)
    report['pairs_below_threshold'] = len(rows)
    report['components_seconds'] = time.perf_counter() - tic

    tic = time.perf_counter()
    # The pairs inside components: enumerated group by group, unless the components are so large
    # (a threshold above most distances) that sweeping the candidates again is cheaper.
    sizes = np.bincount(component)
    if (sizes * (sizes - 1) // 2).sum() <= report['candidate_pairs']:
        chunks = rules.within(component)
    else:
        chunks = ((i[same], j[same], cost[same]) for i, j, cost in rules.sweep()
                  for same in [component[i] == component[j]])
    inside = [(i, j, appearance(i, j) + prior_weight * cost) for i, j, cost in chunks]
    rows, cols, d = (np.concatenate(part) for part in zip((np.empty(0, np.int64),) * 2 + (np.empty(0),), *inside))
    report['pairs_clustered'] = len(rows)
    report['pairs_seconds'] = time.perf_counter() - tic

    tic = time.perf_counter()
    label = _average_linkage(num, rows, cols, d, threshold)
    _, first_row, global_id = np.unique(label, return_index=True, return_inverse=True)
    report['linkage_seconds'] = time.perf_counter() - tic
    return np.argsort(np.argsort(first_row))[global_id].astype(np.int64)
