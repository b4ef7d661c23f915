"""Re-ID evaluation: CMC, mAP and mINP, exact and without a Python loop over queries.

Protocol (Market-1501/MARS, as in deep-person-reid, fast-reid and BoT):
  * for each query, gallery entries with the same pid AND the same camera are removed;
  * the remaining gallery is ranked by ascending distance, ties broken by gallery order
    (a stable sort), so results are deterministic;
  * CMC is the first-hit curve: cmc[r] = fraction of queries whose first true match is
    within the top r + 1;
  * AP is the mean, over the query's true matches, of the precision at each match's rank
    (step AP); mAP averages it over queries. INP = num_matches / rank of the last match;
  * queries with no true match left are skipped (and counted in a printed note).

How it stays fast: only the ranks of the true matches are needed, not a sorted gallery.
Per block of queries:
  1. true matches and same-camera junk come from a per-pid index of the gallery (sparse);
  2. each distance becomes an int32 key whose order is the float order (the float bits
     themselves when distances are non-negative: no copy);
  3. keys are cut into buckets per query (a monotone quantisation, NUM_BUCKETS of them over
     the range of the query's true-match keys, one below and one above) and one bincount
     gives, for each true match, the number of entries in lower buckets;
  4. the few entries that share a bucket with a true match are sorted exactly by
     (key, gallery index), which gives the entries before the match inside its bucket.
  rank = 1 + (entries in lower buckets) + (entries before it in its bucket) - (junk entries
  before it, counted sparsely), exactly what a stable sort of the whole row would give, for
  about a dozen cheap passes over the block.

Queries are processed in blocks, so features can be turned into distances block by block
(evaluate_features) and peak memory does not grow with num_query x num_gallery.
"""
import math
from typing import NamedTuple

import numpy as np
import torch

__all__ = ['ReIDMetrics', 'NoValidQueryError', 'evaluate', 'evaluate_blocks', 'evaluate_features',
           'squared_euclidean', 'default_block_size']

class ReIDMetrics(NamedTuple):
    cmc: np.ndarray      # (max_rank,) first-hit curve, cmc[0] is rank-1
    mAP: float
    mINP: float
    num_valid: int       # queries that had at least one true match


class NoValidQueryError(ValueError):
    """No query has a true match once same-pid, same-camera gallery entries are removed."""


def squared_euclidean(qf, gf):
    """(M, D), (N, D) features -> (M, N) squared Euclidean distances, from one matmul.

    ||q||^2 + ||g||^2 - 2 q.g, clamped at 0 (rounding can make it slightly negative).
    """
    q_sq = qf.pow(2).sum(dim=1, keepdim=True)
    g_sq = gf.pow(2).sum(dim=1)
    return torch.addmm(q_sq + g_sq, qf, gf.t(), alpha=-2).clamp_(min=0)


def default_block_size(num_gallery, elements=1 << 20):
    """Queries per block so that one block holds about `elements` distances (about 4 MB of
    float32: small enough that the per-block temporaries reuse memory instead of page-faulting)."""
    return max(1, elements // max(1, num_gallery))


def _as_tensor(x, dtype=None):
    return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=dtype)


def segments(counts):
    """For segments of the given lengths laid end to end: (segment id, position in segment)
    of every element, both (sum(counts),)."""
    segment = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    starts = torch.cumsum(counts, 0) - counts
    return segment, torch.arange(len(segment), device=counts.device) - starts[segment]


class _GalleryIndex:
    """Gallery indices grouped by pid (ascending index within a pid), to list the same-pid
    gallery entries of a block of queries without a dense (B, G) comparison."""

    def __init__(self, g_pids, g_camids):
        self.g_camids = g_camids
        self.order = torch.argsort(g_pids, stable=True)
        self.pids, self.counts = torch.unique_consecutive(g_pids[self.order], return_counts=True)
        self.starts = torch.cumsum(self.counts, 0) - self.counts

    def same_pid_pairs(self, q_pids, q_camids):
        """(rows, cols) of true matches and (rows, cols) of junk (same pid, same camera),
        rows ascending and cols ascending within a row."""
        group = torch.searchsorted(self.pids, q_pids).clamp(max=len(self.pids) - 1)
        counts = torch.where(self.pids[group] == q_pids, self.counts[group], 0)
        rows, offset = segments(counts)
        cols = self.order[self.starts[group][rows] + offset]
        same_cam = self.g_camids[cols] == q_camids[rows]
        return (rows[~same_cam], cols[~same_cam]), (rows[same_cam], cols[same_cam])


NUM_BUCKETS = 4096
_INT32_MAX = torch.iinfo(torch.int32).max
_NEG_INF_KEY = -2139095040  # _ordered_keys of -inf; smaller keys are negative NaNs


def _ordered_keys(dist):
    """(B, G) float32 distances -> (B, G) int32 keys with the same order (-0.0 == 0.0), and
    their (min, max). Non-negative floats already order by their bits: no copy then."""
    bits = dist.view(torch.int32)
    key_min, key_max = torch.aminmax(bits)
    if key_min >= 0:
        return bits, int(key_min), int(key_max)
    # Negative floats order backwards by their bits: flip all but the sign bit (+1 maps -0.0 to 0).
    keys = torch.where(bits < 0, (bits ^ 0x7FFFFFFF) + 1, bits)
    key_min, key_max = torch.aminmax(keys)
    return keys, int(key_min), int(key_max)


def _precedes(key_a, index_a, key_b, index_b):
    """Whether entry a comes before entry b in a stable ascending sort of its row."""
    return (key_a < key_b) | ((key_a == key_b) & (index_a < index_b))


def _match_ranks(dist, positives, junk):
    """1-based rank of every true match among the valid entries of its row, ties broken by
    gallery index. dist: (B, G); positives, junk: (rows, cols). Returns (num_positives,)."""
    batch, num_gallery = dist.shape
    device = dist.device
    keys, key_min, key_max = _ordered_keys(dist.to(torch.float32).contiguous())
    if key_max > 0x7F800000 or key_min < _NEG_INF_KEY:  # NaN
        raise ValueError('the distance matrix contains NaN; check the features (e.g. a NaN loss)')

    # Buckets span each row's range of true-match keys [lo, hi]: bucket 0 holds entries below
    # lo's bucket, 1..NUM_BUCKETS the range ((key >> shift) - (lo >> shift) + 1, with a per-row
    # shift so that hi lands at most in NUM_BUCKETS), NUM_BUCKETS + 1 entries above hi's bucket.
    # Clamping keys to [lo - 2^shift, hi + 2^shift] first puts far entries in bucket 0 or
    # NUM_BUCKETS + 1 exactly and keeps the int32 arithmetic from overflowing. Row r's buckets
    # get the ids r * row_size + bucket, unique over the block. These are the passes over the
    # whole block, so they stay int32.
    rows, pos_keys = positives[0], keys[positives]
    # Rows without a true match keep lo = hi = 0: any bucketing serves them.
    lo = torch.zeros(batch, dtype=torch.int32, device=device).scatter_reduce_(0, rows, pos_keys, 'amin', include_self=False)
    hi = torch.zeros(batch, dtype=torch.int32, device=device).scatter_reduce_(0, rows, pos_keys, 'amax', include_self=False)
    lo, hi = lo.long(), hi.long()
    shift = (torch.log2((hi - lo).clamp(min=0).double() + 1) - math.log2(NUM_BUCKETS - 1)).ceil().clamp(min=0).long()
    shift += ((hi >> shift) - (lo >> shift)) > NUM_BUCKETS - 1  # float rounding
    lower = (lo - (1 << shift)).clamp(min=-_INT32_MAX - 1).int()[:, None]
    upper = (hi + (1 << shift)).clamp(max=_INT32_MAX).int()[:, None]
    shift = shift.int()[:, None]
    row_size = NUM_BUCKETS + 2
    row_base = row_size * torch.arange(batch, device=device, dtype=torch.int32)
    bucket = (keys.clamp(lower, upper) >> shift).sub_((lo.int()[:, None] >> shift) - 1 - row_base[:, None])
    hist = torch.bincount(bucket.view(-1), minlength=batch * row_size).view(batch, row_size)
    in_lower_buckets = (hist.cumsum(dim=1) - hist).view(-1)

    # The entries that share a bucket with a true match, sorted by (bucket, key, gallery
    # index): candidates arrive in gallery order and the sort is stable.
    pos_bucket = bucket[positives].long()
    hosts_match = torch.zeros(batch * row_size, dtype=torch.bool, device=device)
    hosts_match[pos_bucket] = True
    cand_rows, cand_cols = torch.take(hosts_match, bucket.long()).nonzero(as_tuple=True)
    cand_sort_key = bucket[cand_rows, cand_cols].long() * (1 << 32) + keys[cand_rows, cand_cols].long() + (1 << 31)
    order = torch.argsort(cand_sort_key, stable=True)
    sorted_key = cand_sort_key[order]
    bucket_start = torch.searchsorted(sorted_key, (sorted_key >> 32) << 32)
    before_in_bucket = torch.empty_like(order)
    before_in_bucket[order] = torch.arange(len(order), device=device) - bucket_start
    pos_in_cand = torch.searchsorted(cand_rows * num_gallery + cand_cols,
                                     positives[0] * num_gallery + positives[1])
    ranks = 1 + in_lower_buckets[pos_bucket] + before_in_bucket[pos_in_cand]

    # Junk (same pid, same camera) was counted like any entry: take it out again, pairing
    # each junk entry with the true matches of its row (few of each).
    pos_per_row = torch.bincount(positives[0], minlength=batch)
    junk_row_pos = pos_per_row[junk[0]]
    junk_index, slot = segments(junk_row_pos)
    match = (torch.cumsum(pos_per_row, 0) - pos_per_row)[junk[0]][junk_index] + slot
    ahead = _precedes(keys[junk][junk_index], junk[1][junk_index], keys[positives][match], positives[1][match])
    return ranks - torch.bincount(match[ahead], minlength=len(ranks))


def _block_stats(dist, q_pids, q_camids, gallery):
    """Per-query (num_pos, first-hit rank, AP, INP) for one (B, G) block of distances."""
    batch = dist.shape[0]
    positives, junk = gallery.same_pid_pairs(q_pids, q_camids)
    num_pos = torch.bincount(positives[0], minlength=batch)
    ranks = _match_ranks(dist, positives, junk) if len(positives[0]) else positives[0]
    # The k-th match of a row in rank order: sort by (row, rank).
    order = torch.argsort(positives[0] * (1 << 32) + ranks)
    rows, ranks = positives[0][order], ranks[order]
    k = segments(num_pos)[1] + 1
    ap = torch.zeros(batch, dtype=torch.float64, device=dist.device).index_add_(0, rows, k / ranks.double())
    first_hit = torch.zeros(batch, dtype=torch.int64, device=dist.device).scatter_reduce_(
        0, rows, ranks, 'amin', include_self=False)
    last_hit = torch.ones(batch, dtype=torch.int64, device=dist.device).scatter_reduce_(
        0, rows, ranks, 'amax', include_self=False)
    return (num_pos.cpu(), first_hit.cpu(), (ap / num_pos.clamp(min=1)).cpu(),
            (num_pos.double() / last_hit).cpu())


def evaluate_blocks(dist_blocks, q_pids, g_pids, q_camids, g_camids, max_rank=50, verbose=True):
    """CMC, mAP and mINP from distances given as row blocks.

    dist_blocks: iterable of (first_query_index, (B, num_gallery) distances), covering every
    query once, in any order; numpy arrays or torch tensors (any device).
    q_pids, q_camids: (num_query,); g_pids, g_camids: (num_gallery,).
    Returns ReIDMetrics(cmc of length min(max_rank, num_gallery), mAP, mINP, num_valid).
    """
    q_pids, g_pids = _as_tensor(q_pids, torch.int64), _as_tensor(g_pids, torch.int64)
    q_camids, g_camids = _as_tensor(q_camids, torch.int64), _as_tensor(g_camids, torch.int64)
    num_query, num_gallery = len(q_pids), len(g_pids)
    if max_rank > num_gallery:
        if verbose:
            print(f'Note: the gallery has only {num_gallery} samples; CMC reported up to rank {num_gallery}')
        max_rank = num_gallery

    num_pos = torch.full((num_query,), -1, dtype=torch.int64)
    first_hit = torch.zeros(num_query, dtype=torch.int64)
    ap = torch.zeros(num_query, dtype=torch.float64)
    inp = torch.zeros(num_query, dtype=torch.float64)
    gallery = None
    for start, block in dist_blocks:
        block = _as_tensor(block)
        if block.dim() != 2 or block.shape[1] != num_gallery:
            raise ValueError(f'distance block of shape {tuple(block.shape)}; expected (B, {num_gallery})')
        if gallery is None:
            gallery = _GalleryIndex(g_pids.to(block.device), g_camids.to(block.device))
        # Rank in sub-blocks of ~1M distances whatever the caller's block size: their
        # temporaries stay small enough to be reused rather than page-faulted in afresh.
        step = default_block_size(num_gallery)
        for offset in range(0, block.shape[0], step):
            rows = slice(start + offset, start + min(offset + step, block.shape[0]))
            stats = _block_stats(block[offset:offset + step], q_pids[rows].to(block.device),
                                 q_camids[rows].to(block.device), gallery)
            num_pos[rows], first_hit[rows], ap[rows], inp[rows] = stats
    if (num_pos < 0).any():
        raise ValueError('the distance blocks do not cover every query')

    valid = num_pos > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise NoValidQueryError(
            f'none of the {num_query} queries has a true match in the gallery. A gallery sample '
            f'with the same pid AND the same camera id as the query is removed before ranking '
            f'(the standard re-ID protocol), so every query needs a same-pid gallery sample from '
            f'another camera. Check that camera ids are parsed correctly (all equal camera ids '
            f'make every query invalid) and that query and gallery pids overlap.')
    if verbose and num_valid < num_query:
        print(f'Note: {num_query - num_valid} of {num_query} queries have no true match in the gallery '
              f'from another camera and are skipped')
    hits = first_hit[valid]
    cmc = (hits[:, None] <= torch.arange(1, max_rank + 1)[None, :]).double().mean(dim=0)
    return ReIDMetrics(cmc.numpy(), float(ap[valid].mean()), float(inp[valid].mean()), num_valid)


def evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, verbose=True):
    """CMC, mAP and mINP from a full (num_query, num_gallery) distance matrix (numpy or torch)."""
    return evaluate_blocks([(0, distmat)], q_pids, g_pids, q_camids, g_camids, max_rank, verbose)


def evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, max_rank=50, block_size=256,
                      verbose=True):
    """CMC, mAP and mINP from (num_query, D) and (num_gallery, D) features by squared Euclidean
    distance, computed block_size query rows at a time: memory stays O(block_size x num_gallery).

    Identical to evaluate(squared_euclidean(qf, gf), ...). Runs where the features are (GPU too).
    The default block is large enough that each matmul reads the gallery features for many
    queries at once, and small enough (84 MB at MSMT17's 82,161 gallery samples) to bound memory.
    """
    blocks = ((start, squared_euclidean(qf[start:start + block_size], gf))
              for start in range(0, len(qf), block_size))
    return evaluate_blocks(blocks, q_pids, g_pids, q_camids, g_camids, max_rank, verbose)
