"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), in bounded memory.

Semantics, those of the common re_ranking function of the re-ID toolboxes. Over the
N = num_query + num_gallery samples:
  1. d(i, j): squared Euclidean distances (the matrices entry point squares what it is given),
     normalised per row by the row's maximum: orig(i, j) = d(i, j) / max_j' d(i, j');
  2. N(i, k): the k + 1 nearest samples of i (i itself included) by orig;
     R(i, k) = {c in N(i, k) : i in N(c, k)}, the k-reciprocal neighbours;
  3. R*(i) = R(i, k1) plus R(c, round(k1 / 2)) of each c in R(i, k1) whose set overlaps
     R(i, k1) in more than 2/3 of its members;
  4. V(i, j) = exp(-orig(i, j)) for j in R*(i), 0 elsewhere, normalised to sum 1 per row;
  5. local query expansion (k2 > 1): V(i) <- mean of V(c) over the k2 nearest c of i;
  6. Jaccard distance 1 - s / (2 - s), with s(i, j) = sum_k min(V(i, k), V(j, k));
  7. final = (1 - lambda) * Jaccard + lambda * orig, query rows x gallery columns.
Ties among equal distances are broken by torch.topk, as the common code leaves them to
numpy's argsort.

How it stays small: no N x N matrix is ever held. One pass over the distances keeps only
each row's k1 + 1 nearest neighbours and its maximum (from features, over tiles of the upper
triangle, each read both ways: half the flops of the N x N distances); the k-reciprocal sets and V
are sparse (a few dozen entries a row); the Jaccard term comes from an inverted index of V;
the final distances are produced in query-row blocks (re_ranking_blocks), which the evaluator
can consume one at a time. Tensors stay on the device of the inputs, so a GPU does the work
when the features are there.
"""
import math

import numpy as np
import torch

from eval_metrics import flat_nonzero, segments

__all__ = ['re_ranking', 're_ranking_features', 're_ranking_blocks', 'check_parameters']

TILE_BYTES = 1 << 26  # a float32 tile of the N x N distances in the neighbour pass: 64 MiB


class _FeatureDistances:
    """Squared Euclidean distances among the rows of x = [query; gallery] features, on demand."""

    def __init__(self, qf, gf):
        self.x = torch.cat([qf, gf]).float()
        self.sq_norm = self.x.pow(2).sum(dim=1)
        self.num_query, self.num_total = len(qf), len(self.x)
        self.device = self.x.device

    def rows(self, start, stop, cols=slice(None)):
        """(stop - start, len(cols)) squared distances from one matmul."""
        x, sq = self.x[cols], self.sq_norm[cols]
        block = torch.addmm(self.sq_norm[start:stop, None] + sq[None, :], self.x[start:stop], x.t(), alpha=-2)
        return block.clamp_(min=0)

    def pairs(self, i, j, chunk=1 << 13):
        """Squared distances of the sample pairs (i[n], j[n]), `chunk` pairs at a time (each
        chunk gathers 2 x chunk feature rows: 134 MB at 2048-d)."""
        out = torch.empty(len(i), device=self.x.device)
        for s in range(0, len(i), chunk):
            a, b = i[s:s + chunk], j[s:s + chunk]
            out[s:s + chunk] = (self.sq_norm[a] + self.sq_norm[b] - 2 * (self.x[a] * self.x[b]).sum(1)).clamp_(min=0)
        return out


class _MatrixDistances:
    """The squared distances of the (N, N) matrix [[q_q, q_g], [q_g^T, g_g]], on demand."""

    def __init__(self, q_g_dist, q_q_dist, g_g_dist):
        self.q_g, self.q_q, self.g_g = (torch.as_tensor(np.asarray(m) if not torch.is_tensor(m) else m).float()
                                        for m in (q_g_dist, q_q_dist, g_g_dist))
        self.num_query, self.num_total = self.q_g.shape[0], sum(self.q_g.shape)
        self.device = self.q_g.device

    def rows(self, start, stop, cols=slice(None)):
        """(stop - start, len(cols)) squared distances; cols: a slice with step 1."""
        q = self.num_query
        c0, c1, _ = cols.indices(self.num_total)
        query_cols, gallery_cols = slice(min(c0, q), min(c1, q)), slice(max(c0, q) - q, max(c1, q) - q)
        parts = []
        if start < q:
            rows = slice(start, min(stop, q))
            parts.append(torch.cat([self.q_q[rows, query_cols], self.q_g[rows, gallery_cols]], dim=1))
        if stop > q:
            rows = slice(max(start, q) - q, stop - q)
            parts.append(torch.cat([self.q_g[query_cols, rows].t(), self.g_g[rows, gallery_cols]], dim=1))
        return torch.cat(parts).square()

    def pairs(self, i, j):
        q = self.num_query
        out = torch.empty(len(i), device=self.q_g.device)
        for rows_query, cols_query in ((True, True), (True, False), (False, True), (False, False)):
            mask = ((i < q) == rows_query) & ((j < q) == cols_query)
            a, b = i[mask], j[mask]
            if rows_query and cols_query:
                out[mask] = self.q_q[a, b]
            elif rows_query:
                out[mask] = self.q_g[a, b - q]
            elif cols_query:
                out[mask] = self.q_g[b, a - q]
            else:
                out[mask] = self.g_g[a - q, b - q]
        return out.square()


def top_k_by_tiles(tile, num_total, k, largest, tile_rows, symmetric=True, on_tile=None):
    """Each row's k largest (largest=True) or smallest entries of an (N, N) matrix given by
    tiles, and their columns, ((N, k) values, (N, k) indices), most extreme first (ties in
    torch.topk's order).

    tile(rows_i, rows_j) gives the (len(rows_i), len(rows_j)) tile at those row and column
    slices. symmetric=True: the matrix is symmetric, so tile is asked only for the upper
    triangle (rows_j starting at or after rows_i), about half the matrix, and each tile is read
    both ways, its row-wise top k for rows_i and its column-wise top k for rows_j, each merged
    into a running top k per row. symmetric=False: row blocks of tile_rows, whole rows.
    on_tile(rows_i, rows_j, tile, both_ways), when given, sees every tile too."""
    fill = -math.inf if largest else math.inf
    values = indices = None
    for i in range(0, num_total, tile_rows):
        rows_i = slice(i, min(i + tile_rows, num_total))
        for j in range(i, num_total, tile_rows) if symmetric else (0,):
            rows_j = slice(j, min(j + tile_rows, num_total)) if symmetric else slice(0, num_total)
            block = tile(rows_i, rows_j)
            if values is None:
                values = torch.full((num_total, k), fill, dtype=block.dtype, device=block.device)
                indices = torch.zeros(num_total, k, dtype=torch.int64, device=block.device)
            both_ways = symmetric and j != i
            for rows, dim, first in ((rows_i, 1, j), (rows_j, 0, i)) if both_ways else ((rows_i, 1, j),):
                top = block.topk(min(k, block.shape[dim]), dim=dim, largest=largest, sorted=False)
                top_values, top_indices = (top.values, top.indices) if dim == 1 else (top.values.t(), top.indices.t())
                merged = torch.cat([values[rows], top_values], dim=1).topk(k, dim=1, largest=largest, sorted=True)
                indices[rows] = torch.cat([indices[rows], top_indices + first], dim=1).gather(1, merged.indices)
                values[rows] = merged.values
            if on_tile is not None:
                on_tile(rows_i, rows_j, block, both_ways)
    return values, indices


def _reciprocal(neighbours, k):
    """Mask (N, k + 1): whether neighbours[i, s] (among i's k + 1 nearest) has i among its own."""
    nearest = neighbours[:, :k + 1]
    own = torch.arange(len(nearest), device=nearest.device)[:, None, None]
    return (nearest[nearest] == own).any(dim=2)


def _expanded_sets(neighbours, k1, block_bytes=1 << 26, k_half=None):
    """R*(i) of step 3 as sorted (rows, cols) pairs, rows ascending, no duplicates: R(i, k1)
    from the k1 + 1 nearest, R(c, k_half) from the k_half + 1 nearest (k_half: round(k1 / 2)
    unless given; cluster.py's variant counts its neighbours differently)."""
    if k_half is None:
        k_half = int(np.around(k1 / 2.0))
    near, near_half = neighbours[:, :k1 + 1], neighbours[:, :k_half + 1]
    recip, recip_half = _reciprocal(neighbours, k1), _reciprocal(neighbours, k_half)
    size_half = recip_half.sum(dim=1)
    num_total = len(neighbours)
    width = (num_total + 7) // 8 * 8  # bitmap rows of whole 64-bit words, for flat_nonzero
    block = max(1, block_bytes // width)
    all_rows, all_cols = [], []
    for start in range(0, num_total, block):
        rows = slice(start, start + block)
        r_set, r_mask = near[rows], recip[rows]                     # (B, k1+1)
        cand = near_half[r_set]                                     # (B, k1+1, k_half+1): R(c, k/2) of each c
        cand_mask = recip_half[r_set] & r_mask[..., None]
        # Membership in R(i, k1) by lookups in a (B, N) bitmap of the block's sets.
        local = torch.arange(len(r_set), device=neighbours.device)[:, None]
        member = torch.zeros(len(r_set), width, dtype=torch.bool, device=neighbours.device)
        member[local, r_set] = r_mask
        in_r = member[local[..., None], cand]
        overlap = (in_r & cand_mask).sum(dim=2)
        chosen = r_mask & (overlap > 2.0 / 3.0 * size_half[r_set])
        added = cand_mask & chosen[..., None]
        member[local[..., None].expand_as(cand)[added], cand[added]] = True
        # The bitmap's set entries, in order: the (row, col) pairs sorted, without duplicates.
        at = flat_nonzero(member.view(-1))
        all_rows.append(at // width + start)
        all_cols.append(at % width)
    return torch.cat(all_rows), torch.cat(all_cols)


def _row_sums(values, rows, num_rows):
    return torch.zeros(num_rows, dtype=values.dtype, device=values.device).index_add_(0, rows, values)


def _merge_duplicates(rows, cols, values, num_total):
    """Sum the values of equal (row, col) pairs; return them sorted by row, then column."""
    keys, inverse = torch.unique(rows * num_total + cols, return_inverse=True)
    merged = torch.zeros(len(keys), dtype=values.dtype, device=values.device).index_add_(0, inverse, values)
    return keys // num_total, keys % num_total, merged


def _query_expansion(rows, cols, values, neighbours, k2):
    """Step 5 on the sparse V (rows ascending): V(i) <- the mean of V(c) over the k2 nearest c
    of i (neighbours[i, :k2]), as sorted (rows, cols, values)."""
    num_total = len(neighbours)
    row_count = torch.bincount(rows, minlength=num_total)
    row_start = torch.cumsum(row_count, 0) - row_count
    owner = torch.arange(num_total, device=rows.device).repeat_interleave(k2)
    source = neighbours[:, :k2].reshape(-1)
    pair, offset = segments(row_count[source])
    entry = row_start[source][pair] + offset
    return _merge_duplicates(owner[pair], cols[entry], values[entry] / k2, num_total)


class SharedMass:
    """s(i, j) = sum_k min(V(i, k), V(j, k)), the overlap of step 6, for blocks of rows i
    against the rows j in [first, first + count) of a sparse V (rows, cols, values; rows
    ascending, no duplicate pair), into a dense (rows, count) buffer.

    An inverted index of V's columns, for each column k the rows j with V(j, k) > 0 and their
    values, as padded matrices, one per width: a column's count rounded up to a quarter of its
    power of two (at most 25% padding; padding adds 0 at output column 0). Row-gathers of them
    make the (i, shared column) pairs without per-element index arithmetic."""

    def __init__(self, rows, cols, values, num_total, first=0, count=None):
        self.rows, self.cols, self.values = rows, cols, values
        self.count = num_total - first if count is None else count
        device = rows.device
        member = (rows >= first) & (rows < first + self.count)
        m_rows, m_cols, m_values = rows[member] - first, cols[member], values[member]
        by_col = torch.argsort(m_cols, stable=True)
        col_rows, col_values = m_rows[by_col], m_values[by_col]
        col_count = torch.bincount(m_cols, minlength=num_total)
        col_start = torch.cumsum(col_count, 0) - col_count
        quantum = 2 ** (torch.log2(col_count.clamp(min=1).double()).floor().long() - 2).clamp(min=0)
        self.width = (col_count + quantum - 1) // quantum * quantum
        self.slot = torch.zeros(num_total, dtype=torch.int64, device=device)
        self.index = {}
        for w in torch.unique(self.width[col_count > 0]).tolist():
            columns = torch.nonzero(self.width == w).flatten()
            self.slot[columns] = torch.arange(len(columns), device=device)
            offsets = torch.arange(w, device=device)
            valid = offsets < col_count[columns, None]
            where = (col_start[columns, None] + offsets).clamp(max=max(len(col_rows) - 1, 0))
            self.index[w] = (torch.where(valid, col_rows[where], 0), torch.where(valid, col_values[where], 0))
        self.row_ptr = torch.searchsorted(rows, torch.arange(num_total + 1, device=device))

    def pairs_per_row(self):
        """(num_total,) the (row, j) pairs each row i gathers, padding included: its cost."""
        return _row_sums(self.width[self.cols].float(), self.rows, len(self.row_ptr) - 1)

    def add_to(self, start, stop, out):
        """out: ((stop - start) * count,) zeros; returns it viewed (stop - start, count), holding
        s(i, j) for i in [start, stop)."""
        lo, hi = int(self.row_ptr[start]), int(self.row_ptr[stop])
        q_rows, q_cols, q_values = self.rows[lo:hi] - start, self.cols[lo:hi], self.values[lo:hi]
        q_width = self.width[q_cols]
        for w, (mat_rows, mat_values) in self.index.items():
            chosen = q_width == w
            at = self.slot[q_cols[chosen]]
            out.index_add_(0, (q_rows[chosen, None] * self.count + mat_rows[at]).flatten(),
                           torch.minimum(q_values[chosen, None], mat_values[at]).flatten())
        return out.view(stop - start, self.count)


def check_parameters(k1, k2, lambda_value):
    """Raise ValueError unless k1 >= 1, 1 <= k2 <= k1 + 1 and 0 <= lambda_value <= 1."""
    if k1 < 1 or not 1 <= k2 <= k1 + 1 or not 0 <= lambda_value <= 1:
        raise ValueError(f're-ranking needs --k1 >= 1, 1 <= --k2 <= k1 + 1 and 0 <= --lambda-value <= 1; '
                         f'got {k1}, {k2}, {lambda_value}')


def re_ranking_blocks(distances, k1=20, k2=6, lambda_value=0.3, block_size=256, keep_bytes=1 << 30):
    """Yield (first_query, (B, num_gallery) re-ranked distances) for consecutive query blocks.

    distances: a _FeatureDistances or _MatrixDistances. The query x gallery part of the
    distances is kept from the first pass when it fits in keep_bytes, else recomputed.
    """
    check_parameters(k1, k2, lambda_value)
    num_query, num_total = distances.num_query, distances.num_total
    if num_total < k1 + 1:
        raise ValueError(f'k1={k1} needs at least {k1 + 1} query + gallery samples, got {num_total}')
    num_gallery = num_total - num_query

    # 1-2. One pass over the distances: nearest neighbours, row maxima, and the query x gallery
    # part if kept. From features, over the upper triangle of the (symmetric) matrix, in 64 MiB
    # tiles each read both ways (half the flops); from given matrices, over row blocks.
    device = distances.device
    row_max = torch.zeros(num_total, device=device)  # the distances are >= 0
    keep = num_query * num_gallery * 4 <= keep_bytes
    query_gallery = torch.empty(num_query if keep else 0, num_gallery, device=device)

    def record(rows_i, rows_j, block, both_ways):
        row_max[rows_i] = torch.maximum(row_max[rows_i], block.amax(dim=1))
        if both_ways:
            row_max[rows_j] = torch.maximum(row_max[rows_j], block.amax(dim=0))
        if keep and rows_i.start < num_query < rows_j.stop:
            queries, first_gallery = slice(rows_i.start, min(rows_i.stop, num_query)), max(rows_j.start, num_query)
            query_gallery[queries, first_gallery - num_query:rows_j.stop - num_query] = \
                block[:queries.stop - rows_i.start, first_gallery - rows_j.start:]
    from_features = isinstance(distances, _FeatureDistances)
    neighbours = top_k_by_tiles(lambda rows_i, rows_j: distances.rows(rows_i.start, rows_i.stop, rows_j),
                                num_total, k1 + 1, False, math.isqrt(TILE_BYTES // 4) if from_features else block_size,
                                from_features, record)[1]
    row_max.clamp_(min=torch.finfo(torch.float32).tiny)

    # 3-4. Sparse V over the expanded k-reciprocal sets.
    rows, cols = _expanded_sets(neighbours, k1)
    weights = torch.exp(-distances.pairs(rows, cols) / row_max[rows])
    values = weights / _row_sums(weights, rows, num_total)[rows]

    # 5. Local query expansion: the mean of the V rows of the k2 nearest neighbours.
    if k2 != 1:
        rows, cols, values = _query_expansion(rows, cols, values, neighbours, k2)

    # 6-7. Final distances, a block of queries at a time, the overlaps with the gallery rows of V.
    overlap = SharedMass(rows, cols, values, num_total, first=num_query)
    for start in range(0, num_query, block_size):
        stop = min(start + block_size, num_query)
        shared = overlap.add_to(start, stop, torch.zeros((stop - start) * num_gallery, device=device))
        jaccard = 1 - shared / (2 - shared)
        original = query_gallery[start:stop] if keep else distances.rows(start, stop, slice(num_query, None))
        yield start, jaccard * (1 - lambda_value) + (original / row_max[start:stop, None]) * lambda_value


def re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """Re-ranked (num_query, num_gallery) distances from the three distance matrices, as the
    common function of the re-ID toolboxes: the given distances are squared first (pass plain
    Euclidean distances to match re_ranking_features). numpy arrays give a numpy array,
    tensors a tensor."""
    distances = _MatrixDistances(q_g_dist, q_q_dist, g_g_dist)
    out = torch.cat([block for _, block in re_ranking_blocks(distances, k1, k2, lambda_value)])
    return out if torch.is_tensor(q_g_dist) else out.cpu().numpy()


def re_ranking_features(qf, gf, k1=20, k2=6, lambda_value=0.3, stream=False):
    """Re-ranked distances from (num_query, D) and (num_gallery, D) features (squared Euclidean).

    stream=False: the (num_query, num_gallery) tensor; stream=True: the generator of
    (first_query, block) of re_ranking_blocks, for evaluate_blocks at large scale.
    """
    blocks = re_ranking_blocks(_FeatureDistances(qf, gf), k1, k2, lambda_value)
    return blocks if stream else torch.cat([block for _, block in blocks])
