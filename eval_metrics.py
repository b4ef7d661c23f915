"""Re-ID evaluation: CMC, mAP and mINP, exact and without a Python loop over queries.

Protocol (Market-1501/MARS, as in deep-person-reid, fast-reid and BoT):
  * for each query, gallery entries with the same pid AND the same camera are removed;
  * the remaining gallery is ranked by ascending distance, ties broken by gallery order
    (a stable sort), so results are deterministic;
  * CMC is the first-hit curve: cmc[r] = fraction of queries whose first true match is
    within the top r + 1;
  * AP is the mean, over the query's true matches, of the precision at each match's rank
    (step AP); mAP averages it over queries. INP = num_matches / rank of the last match;
  * queries with no true match left are skipped (and counted in a printed note);
  * verification figures (ReIDMetrics.verification): TPR at fixed FPRs over every
    (query, gallery) pair but junk, with the distance threshold for each.

How it stays fast: only the ranks of the true matches are needed, not a sorted gallery.
Per block of queries (float32 distances):
  1. true matches and same-camera junk come from a per-pid index of the gallery (sparse);
  2. distances are cut into buckets per query, linear over the range of the query's
     true-match distances (NUM_BUCKETS of them, one below, a few above), in five passes
     over reused buffers; one bincount gives, for each true match, the number of entries
     in lower buckets;
  3. the few entries that share a bucket with a true match are sorted exactly by (float
     order key, gallery index), which gives the entries before the match inside its
     bucket. Finding them is one lookup per entry of the block, done whenever any match of
     the block shares its bucket, so the cost does not grow with how matches and
     non-matches mix (0.3% of the entries share a bucket with a match in bench_eval.py's
     re-ID feature case at Market scale, where matches spread through the whole ranking).
  rank = 1 + (entries in lower buckets) + (entries before it in its bucket) - (junk entries
  before it, counted sparsely), exactly what a stable sort of the whole row would give: the
  bucketing only has to be monotone, so float rounding in it cannot change a result.

Queries are processed in blocks, so features can be turned into distances block by block
(evaluate_features) and peak memory does not grow with num_query x num_gallery; the
verification figures are streamed too (see _Verification), on a thread of their own.
"""
import contextlib
import math
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch

__all__ = ['ReIDMetrics', 'NoValidQueryError', 'evaluate', 'evaluate_blocks', 'evaluate_features',
           'format_verification', 'pairwise_distance', 'Reiterable', 'flat_nonzero', 'one_cpu_thread',
           'squared_euclidean', 'default_block_size', 'VERIFICATION_FPRS', 'METRICS']

VERIFICATION_FPRS = (1e-4, 1e-3, 1e-2)
METRICS = ('euclidean', 'cosine')


class ReIDMetrics(NamedTuple):
    cmc: np.ndarray      # (max_rank,) first-hit curve, cmc[0] is rank-1
    mAP: float
    mINP: float
    num_valid: int       # queries that had at least one true match
    # ((fpr, tpr, threshold), ...) over all (query, gallery) pairs but junk: 'same person'
    # means distance <= threshold. threshold is the largest float32 below the
    # (floor(fpr * num_negatives) + 1)-th smallest negative distance, so the negatives accepted
    # are at most fpr of all (fewer when several negatives tie there: all of those are
    # rejected), and tpr is the fraction of true-match pairs accepted. Empty when not asked for
    # or when there is no negative pair.
    verification: tuple = ()
    # (num_query,) AP of each query, NaN for a query without a true match (for pictures of
    # the worst queries); None when built by hand.
    ap: np.ndarray = None


class NoValidQueryError(ValueError):
    """No query has a true match once same-pid, same-camera gallery entries are removed."""


def _distance_to(gf, metric='euclidean'):
    """A function of (M, D) query features -> (M, N) distances to the (N, D) gallery features gf
    (see pairwise_distance). The gallery's share of the work, its squared norms or its
    normalisation, is done here once, not again for every block of queries (at Market scale it
    is as long as a third of a 256-query block's distances)."""
    if metric == 'euclidean':
        # ||q||^2 + ||g||^2 - 2 q.g from one matmul, clamped at 0 (rounding can make it slightly negative).
        g_sq = gf.pow(2).sum(dim=1)
        return lambda qf: torch.addmm(qf.pow(2).sum(dim=1, keepdim=True) + g_sq, qf, gf.t(), alpha=-2).clamp_(min=0)
    if metric == 'cosine':
        unit_gf = torch.nn.functional.normalize(gf, dim=1)
        return lambda qf: 1 - torch.nn.functional.normalize(qf, dim=1) @ unit_gf.t()
    raise ValueError(f"unknown distance metric {metric!r}; use one of {', '.join(METRICS)}")


def squared_euclidean(qf, gf):
    """(M, D), (N, D) features -> (M, N) squared Euclidean distances, from one matmul."""
    return _distance_to(gf, 'euclidean')(qf)


def pairwise_distance(qf, gf, metric='euclidean'):
    """(M, D), (N, D) features -> (M, N) distances: 'euclidean' is the squared Euclidean
    distance, 'cosine' is 1 - <q / |q|, g / |g|> (in [0, 2]; a zero feature is at distance 1
    from everything)."""
    return _distance_to(gf, metric)(qf)


def default_block_size(num_gallery, elements=1 << 21):
    """Queries per block so that one block holds about `elements` distances (8 MB of float32:
    few enough blocks that the per-block fixed costs are small, a histogram small enough for
    the cache)."""
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

    def _groups(self, q_pids):
        """Each query's pid group and how many gallery entries it has (0 if none)."""
        group = torch.searchsorted(self.pids, q_pids).clamp(max=len(self.pids) - 1)
        return group, torch.where(self.pids[group] == q_pids, self.counts[group], 0)

    def num_same_pid(self, q_pids):
        """Number of (query, gallery) pairs with the same pid: true matches and junk."""
        return int(self._groups(q_pids)[1].sum())

    def same_pid_pairs(self, q_pids, q_camids):
        """(rows, cols) of true matches and (rows, cols) of junk (same pid, same camera),
        rows ascending and cols ascending within a row."""
        group, counts = self._groups(q_pids)
        rows, offset = segments(counts)
        cols = self.order[self.starts[group][rows] + offset]
        same_cam = self.g_camids[cols] == q_camids[rows]
        return (rows[~same_cam], cols[~same_cam]), (rows[same_cam], cols[same_cam])


NUM_BUCKETS = 2048
_ABOVE_BUCKETS = 64
_SAMPLE_STRIDE = 16  # _Verification estimates its threshold from 1/16 of the values
_MAX_SCALE = 1e30  # keeps (distance - lo) * scale finite or +-inf (never NaN) in float32


class _Scratch:
    """Scratch tensors reused from block to block: a fresh multi-megabyte tensor per block is
    page-faulted in (and zeroed by the OS) each time, which costs as much as a pass over it."""

    def __init__(self):
        self.buffers = {}

    def get(self, name, size, dtype, device):
        """A (size,) tensor of the given dtype; its contents are left over from earlier use."""
        buffer = self.buffers.get(name)
        if buffer is None or len(buffer) < size or buffer.dtype != dtype or buffer.device != device:
            buffer = self.buffers[name] = torch.empty(size, dtype=dtype, device=device)
        return buffer[:size]

    def mask(self, size, device):
        """A bool tensor of length size rounded up to a multiple of 8, False beyond size, for
        flat_nonzero (write its first size entries)."""
        mask = self.get('mask', (size + 7) // 8 * 8, torch.bool, device)
        mask[size:] = False
        return mask


def _ordered_keys(values):
    """float32 values -> int64 keys with the same order (-0.0 == 0.0). Non-negative floats
    order by their bits; negative ones backwards, so all but the sign bit are flipped."""
    bits = values.view(torch.int32).long()
    return torch.where(bits < 0, (bits ^ 0x7FFFFFFF) + 1, bits)


def _precedes(key_a, index_a, key_b, index_b):
    """Whether entry a comes before entry b in a stable ascending sort of its row."""
    return (key_a < key_b) | ((key_a == key_b) & (index_a < index_b))


def _buckets(dist, rows, pos_dist, num_buckets, scratch):
    """(B, G) float32 distances -> ((B, G) int32 bucket ids, row_size): row r's ids are
    r * row_size + [0, row_size), so they are unique over the block.

    Buckets are linear over the row's range [lo, hi] of finite true-match distances (where
    matches and the entries between them are dense): lo to hi map to 1..num_buckets, entries
    below lo to 0 (or lo's bucket). Entries above hi's bucket are spread over _ABOVE_BUCKETS
    more buckets, by distance and then by column: never counted for a match (unless the row
    has one at +inf, which is handled apart), but a histogram loop that adds one bucket over
    and over stalls on its own stores.
    Ranking only needs the map to be monotone up to hi's bucket, so float rounding here
    cannot change a result.
    """
    batch, num_gallery = dist.shape
    finite = pos_dist.isfinite()
    # The highest bucket of each column; a row with a true match at +inf keeps everything
    # above hi in one bucket, its last.
    ceiling = (num_buckets + torch.arange(num_gallery, device=dist.device) % _ABOVE_BUCKETS).float()
    infinite_rows = rows[pos_dist == math.inf]
    if len(infinite_rows):
        ceiling = ceiling.expand(batch, num_gallery).clone()
        ceiling[infinite_rows] = num_buckets
    rows, pos_dist = rows[finite], pos_dist[finite].double()
    lo = torch.zeros(batch, dtype=torch.float64, device=dist.device).scatter_reduce_(0, rows, pos_dist, 'amin', include_self=False)
    hi = torch.zeros(batch, dtype=torch.float64, device=dist.device).scatter_reduce_(0, rows, pos_dist, 'amax', include_self=False)
    width = hi - lo
    scale = torch.where(width > 0, (num_buckets - 1) / width, 1.0).clamp(max=_MAX_SCALE)
    # The passes over the whole block, on two reused buffers: (d - lo) * scale (the
    # subtraction first, so values stay finite or +-inf, never inf - inf), clamp to
    # [-1, ceiling], truncate to int32, add the row base.
    work = scratch.get('work', dist.numel(), torch.float32, dist.device).view(dist.shape)
    torch.sub(dist, lo.float()[:, None], out=work).mul_(scale.float()[:, None])
    torch.clamp(work, min=torch.tensor(-1.0, device=dist.device), max=ceiling, out=work)
    bucket = scratch.get('bucket', dist.numel(), torch.int32, dist.device).view(dist.shape).copy_(work)
    row_size = num_buckets + _ABOVE_BUCKETS + 1
    row_base = row_size * torch.arange(batch, dtype=torch.int32, device=dist.device) + 1
    return bucket.add_(row_base[:, None]), row_size


def flat_nonzero(padded):
    """Indices of the True entries of a 1-D bool tensor whose length is a multiple of 8 (e.g.
    from _Scratch.mask), ascending: nonzero runs over 64-bit words (8x fewer elements), then
    only the words with a hit are unpacked."""
    words = padded.view(torch.int64)
    hit = words.nonzero().squeeze(1)
    word, byte = words[hit].view(torch.bool).view(-1, 8).nonzero(as_tuple=True)
    return hit[word] * 8 + byte


def _match_ranks(dist, positives, junk, scratch):
    """1-based rank of every true match among the valid entries of its row, ties broken by
    gallery index. dist: (B, G) float32, contiguous, no NaN; positives, junk: (rows, cols).
    Returns (num_positives,) int64."""
    batch, num_gallery = dist.shape
    device = dist.device
    flat = dist.view(-1)
    pos_flat = positives[0] * num_gallery + positives[1]
    pos_dist = flat[pos_flat]
    # Buckets per row beyond the gallery size would only make the histogram larger.
    num_buckets = min(NUM_BUCKETS, num_gallery)
    bucket, row_size = _buckets(dist, positives[0], pos_dist, num_buckets, scratch)
    bucket = bucket.view(-1)
    hist = torch.bincount(bucket, minlength=batch * row_size)
    # Entries up to each bucket in the whole block (one flat cumsum: faster than per row).
    up_to_bucket = torch.cumsum(hist, 0, out=scratch.get('cumsum', len(hist), hist.dtype, device))

    # The entries that share a bucket with a true match (candidates, the matches among them,
    # in gallery order) sorted by (bucket, key): a stable sort, so equal keys stay in gallery
    # order. When a match shares its bucket with another entry, the whole block is scanned
    # for them, one lookup per entry however many there are; otherwise the candidates are the
    # true matches themselves.
    pos_bucket = bucket[pos_flat].long()
    match_buckets, matches_in_bucket = torch.unique(pos_bucket, return_counts=True)
    if bool((hist[match_buckets] > matches_in_bucket).any()):
        hosts_match = scratch.get('hosts_match', len(hist), torch.bool, device).zero_()
        hosts_match[match_buckets] = True
        is_candidate = scratch.mask(len(bucket), device)
        torch.index_select(hosts_match, 0, bucket, out=is_candidate[:len(bucket)])
        cand = flat_nonzero(is_candidate)
    else:
        cand = pos_flat  # ascending: rows ascending, columns ascending within a row
    cand_sort_key = (bucket[cand].long() << 32) + _ordered_keys(flat[cand]) + (1 << 31)
    order = torch.argsort(cand_sort_key, stable=True)
    sorted_key = cand_sort_key[order]
    bucket_start = torch.searchsorted(sorted_key, (sorted_key >> 32) << 32)
    before_in_bucket = torch.empty_like(order)
    before_in_bucket[order] = torch.arange(len(order), device=device) - bucket_start
    row_start = positives[0] * row_size
    in_lower_buckets = (up_to_bucket[pos_bucket] - hist[pos_bucket]) - (up_to_bucket[row_start] - hist[row_start])
    ranks = 1 + in_lower_buckets + before_in_bucket[torch.searchsorted(cand, pos_flat)]

    # Junk (same pid, same camera) was counted like any entry: take it out again, pairing
    # each junk entry with the true matches of its row (few of each).
    pos_per_row = torch.bincount(positives[0], minlength=batch)
    junk_row_pos = pos_per_row[junk[0]]
    junk_index, slot = segments(junk_row_pos)
    match = (torch.cumsum(pos_per_row, 0) - pos_per_row)[junk[0]][junk_index] + slot
    junk_keys = _ordered_keys(flat[junk[0] * num_gallery + junk[1]])
    ahead = _precedes(junk_keys[junk_index], junk[1][junk_index], _ordered_keys(pos_dist)[match], positives[1][match])
    return ranks - torch.bincount(match[ahead], minlength=len(ranks))


def _sample(values, run=256):
    """Every _SAMPLE_STRIDE-th run of `run` consecutive values (a fraction of the memory
    traffic of every _SAMPLE_STRIDE-th value, which touches every cache line)."""
    runs = len(values) // run
    return values[:runs * run].reshape(runs, run)[::_SAMPLE_STRIDE].reshape(-1)


class _Verification:
    """TPR at fixed FPRs over every (query, gallery) pair but junk, streamed block by block.

    Holds every true-match distance, and every negative distance at or below a threshold;
    the result is exact when at least keep = floor(max(fprs) * num_negatives) + 1 negatives
    are held in the end, as they then include the keep smallest of all.
    The threshold starts as a guess (guess_from): the 1.3 * max(fprs) quantile of a sample
    of the first block, so a pass holds about 1.3 * keep negatives and costs one comparison
    and one sparse copy per distance. Should fewer than keep fall at or below it in the end
    (the first block was unlike the rest), `complete` is False and the caller counts again
    with no guess. Without a guess the threshold starts at +inf and is lowered only to proven
    values: when more than 1.5 * keep are held it falls to about the 1.02 * keep-th smallest
    held, estimated from 1/_SAMPLE_STRIDE of them and kept only if at least keep are indeed at
    or below it (otherwise they are cut back to the keep smallest, exactly). The same cut
    bounds memory after a guess that was too high: under 1.5 * max(fprs) of the negatives
    plus one block's (57 MB at MSMT17 scale). This runs in numpy on the CPU, whose
    comparison is ~3x faster than torch's there, whose sparse copy (compress) ~10x faster
    than torch.masked_select, and whose partition (introselect) ~15x faster than
    torch.kthvalue.
    """

    GUESS_MARGIN = 1.3

    def __init__(self, fprs, num_negatives, guess_from=None):
        """guess_from: None, or (block, its q_pids, g_pids): a (B, G) block of distances to
        guess the threshold from, and the pids of its rows and columns."""
        self.fprs, self.num_negatives = fprs, num_negatives
        self.keep = math.floor(max(fprs) * num_negatives) + 1
        self.threshold = math.inf if guess_from is None else self._guess(*guess_from)
        self.proven = self.threshold == math.inf
        self.negatives, self.num_held, self.positives = [], 0, []
        self.mask = np.empty(0, dtype=bool)

    def _guess(self, block, q_pids, g_pids):
        """The GUESS_MARGIN * max(fprs) quantile of the negatives among ~2^18 distances of a
        (B, G) block, or +inf when that is too few to trust: up to 1024 evenly spaced rows
        (rows differ more than columns), each with evenly spaced columns from an offset that
        differs by row; each value reads one cache line. q_pids: (B,), g_pids: (G,)."""
        num_rows, num_gallery = min(len(block), 1024), block.shape[1]
        per_row = min(num_gallery, (1 << 18) // num_rows)
        stride = num_gallery // per_row
        rows = torch.linspace(0, len(block) - 1, num_rows, device=block.device).long()
        offsets = torch.arange(num_rows, device=block.device) * 9973 % stride
        cols = offsets[:, None] + stride * torch.arange(per_row, device=block.device)
        negative = q_pids.to(block.device)[rows, None] != g_pids.to(block.device)[cols]
        sample = block[rows[:, None], cols][negative].to(torch.float32).cpu().numpy()
        k = math.floor(self.GUESS_MARGIN * max(self.fprs) * len(sample))
        return float(np.partition(sample, k)[k]) if 64 <= k < len(sample) else math.inf

    def add(self, flat, positives, junk, num_gallery):
        """flat: (B * num_gallery,) float32 distances of a block; positives, junk: (rows, cols)."""
        flat = flat.cpu().numpy()
        pos_flat = (positives[0] * num_gallery + positives[1]).cpu().numpy()
        self.positives.append(flat[pos_flat])
        if len(self.mask) < len(flat):
            self.mask = np.empty(len(flat), dtype=bool)
        mask = np.less_equal(flat, np.float32(self.threshold), out=self.mask[:len(flat)])
        mask[pos_flat] = False
        mask[(junk[0] * num_gallery + junk[1]).cpu().numpy()] = False
        self.negatives.append(np.compress(mask, flat))
        self.num_held += len(self.negatives[-1])
        if 2 * self.num_held > 3 * self.keep:
            self._lower_threshold()

    def _lower_threshold(self):
        """More than 1.5 * keep negatives are held, so the keep-th smallest of them is a proven
        threshold: lower it to about the 1.02 * keep-th, estimated from a sample, if that
        checks out, else cut the held ones back to the keep smallest exactly (any dropped
        value is >= all of them, so it is not among the keep smallest of all either, ties at
        the threshold included)."""
        self.proven = True
        sample = np.concatenate([_sample(held) for held in self.negatives])
        k = math.ceil(1.02 * self.keep / _SAMPLE_STRIDE)
        if self.keep >= 64 * _SAMPLE_STRIDE and k < len(sample):
            estimate = np.partition(sample, k)[k]
            held = [values[values <= estimate] for values in self.negatives]
            num_held = sum(map(len, held))
            if num_held >= self.keep:
                self.threshold, self.negatives, self.num_held = float(estimate), held, num_held
                return
        held = np.partition(np.concatenate(self.negatives), self.keep - 1)[:self.keep]
        self.threshold, self.negatives, self.num_held = float(held[-1]), [held], self.keep

    @property
    def complete(self):
        """Whether the held negatives include the keep smallest of all (see the class doc)."""
        return self.proven or self.num_held >= self.keep

    def result(self):
        """((fpr, tpr, threshold), ...) for each fpr: see ReIDMetrics.verification."""
        # The (m + 1)-th smallest negative, m = floor(fpr * num_negatives), is the first that
        # must be rejected; with ties at it, all of them are.
        # One partition per m, each on the m + 1 smallest left by the one before (largest m
        # first): cheaper than a partition of all the held values at every m.
        ms = [math.floor(fpr * self.num_negatives) for fpr in self.fprs]
        values, reject_at = np.concatenate(self.negatives), {}
        for m in sorted(set(ms), reverse=True):
            values = np.partition(values, m)[:m + 1]
            reject_at[m] = values[m]
        rejects = [reject_at[m] for m in ms]
        positives = np.concatenate(self.positives)
        return tuple((fpr, float((positives < reject).mean()), float(np.nextafter(reject, np.float32(-np.inf))))
                     for fpr, reject in zip(self.fprs, rejects))


def _block_stats(dist, q_pids, q_camids, gallery, scratch, verify):
    """Per-query (num_pos, first-hit rank, AP, INP) for one (B, G) block of distances; hands
    the block to verify(flat distances, positives, junk, G) too, unless verify is None."""
    batch = dist.shape[0]
    dist = dist.to(torch.float32).contiguous()
    if torch.aminmax(dist).min.isnan():
        raise ValueError('the distance matrix contains NaN; check the features (e.g. a NaN loss)')
    positives, junk = gallery.same_pid_pairs(q_pids, q_camids)
    if verify is not None:
        verify(dist.view(-1), positives, junk, dist.shape[1])
    num_pos = torch.bincount(positives[0], minlength=batch)
    ranks = _match_ranks(dist, positives, junk, scratch) if len(positives[0]) else positives[0]
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


@contextlib.contextmanager
def one_cpu_thread(device):
    """Run the body on one torch CPU thread, then give torch its threads back. The ranking of
    a block runs so: its passes are memory-bound and its histogram serial, so more threads
    gain little, while each parallel op waits for all of them at a barrier: on a machine whose
    cores are busy with other work that made ranking 5-10x slower (benchmarks/bench_eval.py;
    the distances, a matmul, keep every thread). cluster.py's Jaccard pass runs one such
    thread per worker."""
    threads = torch.get_num_threads()
    if device.type != 'cpu' or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _sub_blocks(start, block, num_gallery):
    """(query rows slice, (b, num_gallery) view) for the rows of a (B, num_gallery) block from
    query index start, in sub-blocks of ~2M distances whatever the caller's block size, so
    the temporaries and the histograms keep one size."""
    if block.dim() != 2 or block.shape[1] != num_gallery:
        raise ValueError(f'distance block of shape {tuple(block.shape)}; expected (B, {num_gallery})')
    step = default_block_size(num_gallery)
    for offset in range(0, block.shape[0], step):
        yield slice(start + offset, start + min(offset + step, block.shape[0])), block[offset:offset + step]


def evaluate_blocks(dist_blocks, q_pids, g_pids, q_camids, g_camids, max_rank=50, verbose=True,
                    fprs=VERIFICATION_FPRS):
    """CMC, mAP, mINP and verification figures from distances given as row blocks.

    dist_blocks: iterable of (first_query_index, (B, num_gallery) distances), covering every
    query once, in any order; numpy arrays or torch tensors (any device), ranked as float32.
    When it is not its own iterator (a list, a Reiterable), it may be read a second time for
    the verification figures (rarely: see _Verification).
    q_pids, q_camids: (num_query,); g_pids, g_camids: (num_gallery,).
    fprs: false positive rates in (0, 1) for ReIDMetrics.verification; () skips it.
    Returns ReIDMetrics(cmc of length min(max_rank, num_gallery), mAP, mINP, num_valid,
    verification).
    """
    if not all(0 < fpr < 1 for fpr in fprs):
        raise ValueError(f'fprs={tuple(fprs)}: each false positive rate must be in (0, 1)')
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
    # A list (or any iterable that is not its own iterator) can be read again, so the
    # verification may guess its threshold and, in the rare case the guess was too tight,
    # count again; blocks from a generator are counted once, with no guess.
    readable_again = iter(dist_blocks) is not dist_blocks
    gallery, verification, scratch, pending = None, None, _Scratch(), []

    def verify(*block_args):
        """The verification of a block runs on a thread of its own (numpy lets go of the GIL)
        while the next block is ranked, one block at a time and in order."""
        if pending:
            pending.pop().result()
        pending.append(worker.submit(verification.add, *block_args))

    with ThreadPoolExecutor(1) as worker:
        for start, block in dist_blocks:
            block = _as_tensor(block)
            if gallery is None:
                gallery = _GalleryIndex(g_pids.to(block.device), g_camids.to(block.device))
                num_negatives = num_query * num_gallery - gallery.num_same_pid(q_pids.to(block.device))
                if fprs and num_negatives:
                    guess_from = (block, q_pids[start:start + len(block)], g_pids) if readable_again else None
                    verification = _Verification(tuple(fprs), num_negatives, guess_from)
            for rows, sub_block in _sub_blocks(start, block, num_gallery):
                with one_cpu_thread(block.device):
                    stats = _block_stats(sub_block, q_pids[rows].to(block.device), q_camids[rows].to(block.device),
                                         gallery, scratch, verify if verification is not None else None)
                num_pos[rows], first_hit[rows], ap[rows], inp[rows] = stats
        if pending:
            pending.pop().result()
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
    if verification is not None and not verification.complete:
        verification = _Verification(tuple(fprs), num_negatives)
        for start, block in dist_blocks:
            block = _as_tensor(block)
            for rows, sub_block in _sub_blocks(start, block, num_gallery):
                positives, junk = gallery.same_pid_pairs(q_pids[rows].to(block.device), q_camids[rows].to(block.device))
                verification.add(sub_block.to(torch.float32).contiguous().view(-1), positives, junk, num_gallery)
    return ReIDMetrics(cmc.numpy(), float(ap[valid].mean()), float(inp[valid].mean()), num_valid,
                       verification.result() if verification is not None else (),
                       torch.where(valid, ap, float('nan')).numpy())


def evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, verbose=True,
             fprs=VERIFICATION_FPRS):
    """evaluate_blocks on a full (num_query, num_gallery) distance matrix (numpy or torch)."""
    return evaluate_blocks([(0, distmat)], q_pids, g_pids, q_camids, g_camids, max_rank, verbose, fprs)


class Reiterable:
    """An iterable whose every iteration is a fresh make(), e.g. distance blocks for
    evaluate_blocks computed from features again if read again."""

    def __init__(self, make):
        self.make = make

    def __iter__(self):
        return self.make()


def evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, max_rank=50, block_size=256,
                      verbose=True, metric='euclidean', fprs=VERIFICATION_FPRS):
    """evaluate_blocks on (num_query, D) and (num_gallery, D) features, with
    pairwise_distance(metric) computed block_size query rows at a time: memory stays
    O(block_size x num_gallery).

    Identical to evaluate(pairwise_distance(qf, gf, metric), ...). Runs where the features are
    (GPU too). The default block is large enough that each matmul reads the gallery features for
    many queries at once, and small enough (84 MB at MSMT17's 82,161 gallery samples) to bound
    memory.
    """
    distance = _distance_to(gf, metric)
    blocks = Reiterable(lambda: ((start, distance(qf[start:start + block_size]))
                                  for start in range(0, len(qf), block_size)))
    return evaluate_blocks(blocks, q_pids, g_pids, q_camids, g_camids, max_rank, verbose, fprs)


def format_verification(result):
    """Printable lines for result.verification: a header, then one line per FPR such as
    'TPR@FPR=1e-04: 45.3% (threshold 0.8123)'; no lines when it is empty."""
    if not result.verification:
        return []
    return ['Verification over all query-gallery pairs (same person if distance <= threshold)'] + [
        f'TPR@FPR={fpr:.0e}: {tpr:.1%} (threshold {threshold:.6g})' for fpr, tpr, threshold in result.verification]
