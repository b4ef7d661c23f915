"""Exact, filtered top-k search of a gallery of re-ID features too large for memory, at the
rate of the machine's matrix multiply; faiss indexes behind the same interface.

    from gallery_search import GallerySearch
    search = GallerySearch(['cam1-3.h5', 'cam4-6.npz'], device='cpu')   # metric from the files
    indices, distances = search.search(query_features, k=100, query_camids=q_cams,
                                       exclude_same_camera=True)
    paths = search.paths(indices)

How it works. The gallery files are read block by block (memory-mapped for .npy and .npz
members stored uncompressed, as np.savez writes them; chunk by chunk for .h5; decompressed as
a stream for np.savez_compressed), never whole. Each block is multiplied with every batch of
queries into one preallocated (queries, block) score buffer and filtered entries are set to
-inf. Candidates are the block's torch.topk while a query's running list is not full, then
only the entries above its running k-th score (one comparison pass: after a few blocks they
are few); candidates are merged into the running lists when they are as many as the lists
hold, so merges get rarer as the search goes. Memory is the score buffer and a block:
`memory_mb` (256 MB by default) whatever the gallery size.

Order. Scores are ranked best first, ties broken by gallery index (lower first), so results
are deterministic and identical to a stable sort of the dense row: torch.topk's choice among
equal values is arbitrary, so a row whose k-th and (k+1)-th values tie is redone exactly, and
lists are merged by stable sorts that keep gallery order among equal scores.
Scores: cosine ranks by <q/|q|, g/|g|> (distance 1 - score); Euclidean by 2 q.g - |g|^2,
which orders the gallery as the squared distance |q|^2 + |g|^2 - 2 q.g does (distance
|q|^2 - score, clamped at 0), without a pass to add |q|^2.

Precision. dtype 'bf16' / 'fp16' multiplies in that precision (bf16 uses the CPU's bf16
instructions through torch.mm; fp16 is for GPUs) and keeps 2k candidates, which are then
rescored exactly in float32 from the files: the distances are exact, the recall is the cost.

Filters, applied before a list is cut, so removed entries never take a place in it:
  * exclude_same_camera: with query and gallery pids, the protocol of eval_metrics.py:
    gallery entries with the same pid AND the same camera as the query are removed, and so
    are gallery entries of pid -1 (Market-1501's junk images, which the dataset parsers drop
    before evaluation). Without pids, every gallery entry from the query's camera is removed
    (a search does not know who the query is). Camera ids compare as plain integers (-1 too).
  * time_window=(lo, hi): keeps gallery entries with lo <= t_gallery - t_query <= hi;
    exclude_time_window=(lo, hi) removes them (e.g. the query's own track). Without
    query times, t_query is 0: an absolute window.
  * junk: gallery indices removed for every query.
Gallery camids / pids / times come from the files (keys 'camids', 'pids', 'times': .npz
arrays or .h5 datasets beside 'features'; extract_features.py writes 'camids' with
--camera-pattern) or are passed to GallerySearch; times are any number: seconds, frame numbers.

Several devices (e.g. ['cuda:0', 'cuda:1']): each takes a contiguous shard of the gallery,
GPUs in parallel threads, and the lists are merged by the same sort.
"""
import math
import os
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from eval_metrics import METRICS, _ordered_keys

__all__ = ['GallerySearch', 'GalleryFiles', 'FeatureFile', 'FaissIndex', 'SearchError', 'DTYPES', 'plan_blocks',
           'merge_topk', 'ranked_list_metrics', 'retrieval_report', 'format_report']

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
FEATURE_EXTENSIONS = ('.npz', '.h5', '.npy')
STREAM_ROWS = 1 << 16  # rows per read when a compressed member is streamed or searched through


class SearchError(ValueError):
    """A gallery file, a query or an option that cannot be used as given."""


def _read_npy_header(f):
    """(shape, fortran_order, dtype) of the .npy data at f's position, which it moves past."""
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read(f)


def _npz_member(path, name):
    """A member of a .npz as an array: memory-mapped (copy-on-write) when stored uncompressed,
    else None (read it with _NpzStream)."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name + '.npy')
        if info.compress_type != zipfile.ZIP_STORED:
            return None
    with open(path, 'rb') as f:
        # The local file header: 30 bytes, then the name and an extra field of their own lengths.
        f.seek(info.header_offset + 26)
        name_length, extra_length = np.frombuffer(f.read(4), dtype='<u2')
        f.seek(info.header_offset + 30 + int(name_length) + int(extra_length))
        shape, fortran, dtype = _read_npy_header(f)
        if fortran or dtype.hasobject:
            return None
        return np.memmap(path, dtype=dtype, mode='c', offset=f.tell(), shape=shape)


class _NpzStream:
    """Rows of a compressed .npz member, decompressed in order (reopened to go back)."""

    def __init__(self, path, name):
        self.path, self.name = path, name + '.npy'
        with zipfile.ZipFile(path) as archive, archive.open(self.name) as f:
            self.shape, fortran, self.dtype = _read_npy_header(f)
        if fortran or self.dtype.hasobject or len(self.shape) != 2:
            raise SearchError(f'{path}: {name} must be a C-ordered numeric (N, D) array')
        self.archive = self.stream = None
        self.position = 0

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, rows):
        start, stop = rows.start, rows.stop
        if self.stream is None or start < self.position:
            if self.archive is None:
                self.archive = zipfile.ZipFile(self.path)
            self.stream = self.archive.open(self.name)
            _read_npy_header(self.stream)
            self.position = 0
        row_bytes = self.shape[1] * self.dtype.itemsize
        while self.position < start:  # skip forward
            skip = min(start - self.position, STREAM_ROWS)
            self.stream.read(skip * row_bytes)
            self.position += skip
        data = bytearray(self.stream.read((stop - start) * row_bytes))  # writable, for torch.from_numpy
        self.position = stop
        return np.frombuffer(data, dtype=self.dtype).reshape(stop - start, self.shape[1])


class FeatureFile:
    """One features file as extract_features.py writes it: .npz (arrays 'features' (N, D) and
    'paths'), .h5 (datasets of those names) or .npy (the features; the paths in a .txt beside
    it). Optional: 'camids', 'pids', 'times' (N,) arrays / datasets, and the metric of the
    checkpoint ('metric' array in a .npz, attribute of the .h5 file).

    rows(start, stop) -> (stop - start, D) numpy array (a view of the file where it is
    memory-mapped); take(sorted_rows) -> those rows; column(name) -> (N,) array or None.
    """

    def __init__(self, path):
        self.path = str(path)
        if not self.path.endswith(FEATURE_EXTENSIONS):
            raise SearchError(f'{self.path}: not a features file (use .npz, .h5 or .npy as extract_features.py writes)')
        if not os.path.isfile(self.path):
            raise SearchError(f'{self.path}: no such file')
        self.metric = None
        self._h5 = None
        try:
            if self.path.endswith('.npy'):
                self.features = np.load(self.path, mmap_mode='c')
            elif self.path.endswith('.npz'):
                with np.load(self.path) as npz:
                    self._members = set(npz.files)
                    if 'metric' in npz.files:
                        self.metric = str(npz['metric'])
                if 'features' not in self._members:
                    raise SearchError(f"{self.path}: no 'features' array (keys: {', '.join(sorted(self._members))})")
                self.features = _npz_member(self.path, 'features')
                if self.features is None:
                    self.features = _NpzStream(self.path, 'features')
            else:
                self._h5 = h5py.File(self.path, 'r')
                if 'features' not in self._h5:
                    raise SearchError(f"{self.path}: no 'features' dataset (keys: {', '.join(self._h5)})")
                self.features = self._h5['features']
                self.metric = self._h5.attrs.get('metric')
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            if isinstance(error, SearchError):
                raise
            raise SearchError(f'{self.path}: cannot be read as a features file ({error})') from error
        if len(self.features.shape) != 2 or not np.issubdtype(self.features.dtype, np.floating):
            raise SearchError(f'{self.path}: features must be a floating (N, D) array, '
                              f'got {self.features.dtype} of shape {tuple(self.features.shape)}')
        if self.metric is not None and self.metric not in METRICS:
            raise SearchError(f"{self.path}: unknown metric {self.metric!r} (expected one of {', '.join(METRICS)})")
        self.num, self.dim = self.features.shape

    def rows(self, start, stop):
        return np.asarray(self.features[start:stop])

    def take(self, rows):
        """(R, D) rows at the given indices (any order)."""
        if isinstance(self.features, np.ndarray):  # memory-mapped: numpy gathers them directly
            return self.features[rows]
        # h5py reads increasing indices only; a compressed member is searched through in order.
        unique, inverse = np.unique(rows, return_inverse=True)
        if isinstance(self.features, _NpzStream):
            parts = []
            for start in range(int(unique[0]) // STREAM_ROWS * STREAM_ROWS, int(unique[-1]) + 1, STREAM_ROWS):
                inside = unique[(unique >= start) & (unique < start + STREAM_ROWS)]
                if len(inside):
                    parts.append(self.rows(start, min(start + STREAM_ROWS, self.num))[inside - start])
            return np.concatenate(parts)[inverse]
        return self.features[unique][inverse]

    def column(self, name):
        """The (N,) array `name` ('paths', 'camids', 'pids', 'times') of this file, or None."""
        if self.path.endswith('.npy'):
            if name != 'paths':
                return None
            listing = self.path[:-len('.npy')] + '.txt'
            if not os.path.isfile(listing):
                return None
            with open(listing) as f:
                values = np.array([line.rstrip('\n') for line in f])
        elif self.path.endswith('.npz'):
            if name not in self._members:
                return None
            values = _npz_member(self.path, name)
            if values is None:
                with np.load(self.path) as npz:
                    values = npz[name]
        else:
            if name not in self._h5:
                return None
            dataset = self._h5[name]
            values = dataset.asstr()[:].astype(str) if name == 'paths' else dataset[:]
        if len(values) != self.num:
            raise SearchError(f'{self.path}: {len(values)} {name} for {self.num} features')
        return values


def plan_blocks(num_query, dim, memory_mb, elem_size=4, query_batch=1024):
    """(queries per batch, gallery rows per block) so that a block's buffers fit memory_mb:
    the (batch, rows) scores (float32 at most) and bool comparison mask, and up to three
    (rows, D) copies of the block (as read, float32, compute dtype). Blocks are multiples of 256 rows; the query
    batch shrinks if 256 rows would not fit."""
    budget = memory_mb * (1 << 20)
    batch = max(1, min(num_query, query_batch))
    while True:
        per_row = batch * 5 + dim * (8 + elem_size)
        rows = budget // per_row // 256 * 256
        if rows >= 256 or batch == 1:
            return batch, max(rows, 256)
        batch = max(1, batch // 2)


def merge_topk(scores, indices, k):
    """(Q, n) scores and gallery indices (any order) -> the best k of each row, (Q, min(k, n)):
    highest score first, ties by lower index. Sorting on the index, then stably on the score,
    is what makes the merge deterministic whatever order the candidates come in."""
    order = indices.argsort(dim=1)
    scores, indices = scores.gather(1, order), indices.gather(1, order)
    order = scores.argsort(dim=1, descending=True, stable=True)[:, :k]
    return scores.gather(1, order), indices.gather(1, order)


def _block_topk(scores, k, exact):
    """(Q, n) scores -> (values, columns) of the best k per row, (Q, min(k, n)), in any order.
    exact: entries tied with the k-th value are the lowest-index ones (topk picks any)."""
    n = scores.shape[1]
    if k >= n:
        return scores.clone(), torch.arange(n, device=scores.device).expand(scores.shape[0], n).clone()
    values, columns = torch.topk(scores, k + 1 if exact else k, dim=1)
    if not exact:
        return values, columns
    kth = values[:, k - 1]
    tied = ((values[:, k] == kth) & (kth > -math.inf)).nonzero().squeeze(1)
    values, columns = values[:, :k].contiguous(), columns[:, :k].contiguous()
    for rows in tied.split(64):  # rare in real features; redone 64 rows at a time
        row_scores, threshold = scores[rows], kth[rows, None]
        above = row_scores > threshold
        equal = row_scores == threshold
        need = k - above.sum(1, keepdim=True)
        keep = above | (equal & (equal.cumsum(1) <= need))
        columns[rows] = keep.nonzero()[:, 1].view(len(rows), k)
        values[rows] = row_scores.gather(1, columns[rows])
    return values, columns


def _above_threshold(scores, threshold, scratch, chunk=64):
    """(rows, columns, values) of the entries of (Q, n) scores above their row's threshold (Q,),
    in row-major order. The maximum of each run of `chunk` columns is compared first and only the
    runs above it are looked into: after a few blocks almost none are, and this reads the scores
    once instead of writing and scanning a (Q, n) mask (2.8x faster at 1000 x 25,600 bf16).
    scratch: a bool buffer of at least Q x n, used when n is not a multiple of chunk."""
    num_query, n = scores.shape
    if n % chunk:
        mask = torch.gt(scores, threshold[:, None], out=scratch[:scores.numel()].view_as(scores))
        rows, columns = mask.nonzero(as_tuple=True)
        return rows, columns, scores[rows, columns]
    runs = scores.view(num_query, n // chunk, chunk)
    hot = (runs.amax(dim=2) > threshold[:, None]).nonzero()
    values = runs.view(-1, chunk).index_select(0, hot[:, 0] * (n // chunk) + hot[:, 1])
    which, offset = (values > threshold[hot[:, 0], None]).nonzero(as_tuple=True)
    return hot[which, 0], hot[which, 1] * chunk + offset, values[which, offset]


class _Filters:
    """Which (query, gallery) pairs a search removes (at least one filter is set); removed(q, g)
    broadcasts query and gallery index tensors to a bool mask, for a dense block, faiss
    candidates and true-match pairs alike."""

    def __init__(self, device, junk=None, q_camids=None, g_camids=None, q_pids=None, g_pids=None,
                 q_times=None, g_times=None, window=None, exclude_window=None):
        def tensor(x, dtype=torch.int64):
            return None if x is None else torch.as_tensor(np.asarray(x), dtype=dtype, device=device)
        self.junk = tensor(junk, torch.bool)
        self.q_camids, self.g_camids = tensor(q_camids), tensor(g_camids)
        self.q_pids, self.g_pids = tensor(q_pids), tensor(g_pids)
        self.q_times, self.g_times = tensor(q_times, torch.float64), tensor(g_times, torch.float64)
        self.window, self.exclude_window = window, exclude_window

    @classmethod
    def of_search(cls, gallery, num_query, device, query_camids=None, query_pids=None, query_times=None,
                  exclude_same_camera=False, time_window=None, exclude_time_window=None, junk=None):
        """The filters of a search's arguments (GallerySearch.search) over a GalleryFiles, checked
        against it; None when nothing is filtered."""
        kwargs = {}
        if exclude_same_camera:
            g_camids = gallery.column('camids')
            if query_camids is None or g_camids is None:
                raise SearchError('exclude_same_camera needs query camids and gallery camids '
                                  "(a 'camids' key in the files, gallery_camids=, or --camera-pattern)")
            kwargs.update(q_camids=_check_length(query_camids, num_query, 'query_camids'), g_camids=g_camids)
            if query_pids is not None:
                g_pids = gallery.column('pids')
                if g_pids is None:
                    raise SearchError('query pids given but the gallery has none; '
                                      'leave them out for the camera-only exclusion')
                kwargs.update(q_pids=_check_length(query_pids, num_query, 'query_pids'), g_pids=g_pids)
        if time_window is not None or exclude_time_window is not None:
            g_times = gallery.column('times')
            if g_times is None:
                raise SearchError("a time window needs gallery times ('times' in the files, gallery_times=, "
                                  'or --time-pattern)')
            kwargs.update(g_times=g_times, q_times=_check_length(query_times, num_query, 'query_times'),
                          window=time_window, exclude_window=exclude_time_window)
        if junk is not None and len(junk):
            junk = np.asarray(junk, dtype=np.int64)
            if junk.min() < 0 or junk.max() >= gallery.num:
                raise SearchError(f'junk indices must be in [0, {gallery.num})')
            mask = np.zeros(gallery.num, dtype=bool)
            mask[junk] = True
            kwargs['junk'] = mask
        return cls(device, **kwargs) if kwargs else None

    def removed(self, q, g):
        mask = None

        def add(part):
            nonlocal mask
            mask = part if mask is None else mask | part
        if self.junk is not None:
            add(self.junk[g])
        if self.q_camids is not None:
            same = self.q_camids[q] == self.g_camids[g]
            if self.q_pids is not None:
                add((same & (self.q_pids[q] == self.g_pids[g])) | (self.g_pids[g] == -1))
            else:
                add(same)
        if self.g_times is not None:
            offset = self.g_times[g] - (self.q_times[q] if self.q_times is not None else 0)
            if self.window is not None:
                add((offset < self.window[0]) | (offset > self.window[1]))
            if self.exclude_window is not None:
                add((offset >= self.exclude_window[0]) & (offset <= self.exclude_window[1]))
        return mask


class _Running:
    """The best k (score, gallery index) of each of Q queries so far, as (Q, k) tensors sorted
    best first (missing entries: score -inf), and candidates added since the last merge.
    Candidates are merged once they are as many as the list holds: with blocks in gallery
    order, ever fewer entries beat the running k-th score, so merges get rarer and rarer."""

    def __init__(self, num_query, k, device):
        self.scores = torch.full((num_query, k), -math.inf, device=device)
        self.indices = torch.full((num_query, k), -1, dtype=torch.int64, device=device)
        self.threshold = self.scores[:, -1].clone()
        self.full = False  # whether every query has k entries (its threshold is a score)
        self.pending, self.num_pending = [], 0

    def add(self, rows, scores, indices):
        """Candidates (n,) query rows, scores and gallery indices, in gallery order within a
        row and later than every earlier candidate (blocks come in gallery order)."""
        self.pending.append((rows, scores, indices))
        self.num_pending += len(rows)
        if self.num_pending >= self.scores.numel():
            self.merge()

    def offer(self, scores, first, exact, scratch):
        """The candidates of a block's (Q, n) scores, gallery columns first .. first + n - 1:
        only entries above the running k-th score can enter (an equal one loses the tie: the
        running entries come from earlier blocks, lower indices). After a few blocks they are
        few, and far cheaper to collect than a topk of the block. exact: ties at a block's k-th
        score resolved by index (_block_topk); scratch: a bool buffer of the block's size."""
        num_query, k = self.scores.shape
        found = _above_threshold(scores, self.threshold.to(scores.dtype), scratch) if self.full else None
        if found is not None and len(found[0]) <= 2 * num_query * k:
            rows_found, columns_found, values_found = found
            self.add(rows_found, values_found.float(), columns_found + first)
            return
        values, columns = _block_topk(scores, k, exact)
        columns, order = columns.sort(dim=1)  # gallery order within each row, see add
        values = values.gather(1, order)
        row_ids = torch.arange(num_query, device=scores.device)[:, None].expand_as(columns)
        self.add(row_ids.reshape(-1), values.float().reshape(-1), (columns + first).reshape(-1))

    def merge(self):
        if not self.pending:
            return
        num_query, k = self.scores.shape
        device = self.scores.device
        rows = torch.cat([torch.arange(num_query, device=device).repeat_interleave(k)] + [r for r, _, _ in self.pending])
        scores = torch.cat([self.scores.reshape(-1)] + [s for _, s, _ in self.pending])
        indices = torch.cat([self.indices.reshape(-1)] + [i for _, _, i in self.pending])
        # One stable sort by (row, score descending): the concatenation is in gallery order
        # within each row among equal scores (running entries come from earlier blocks, the
        # candidates of a block in column order), so ties stay by index.
        key = (rows << 32) + ((1 << 31) - 1 - _ordered_keys(scores))
        # numpy's stable argsort (radix / timsort) is ~6x faster than torch's on the CPU.
        order = key.argsort(stable=True) if key.is_cuda else torch.from_numpy(np.argsort(key.numpy(), kind='stable'))
        rows, scores, indices = rows[order], scores[order], indices[order]
        counts = torch.bincount(rows, minlength=num_query)
        rank = torch.arange(len(rows), device=device) - (counts.cumsum(0) - counts)[rows]
        keep = rank < k  # every row holds at least its k running entries
        self.scores[rows[keep], rank[keep]] = scores[keep]
        self.indices[rows[keep], rank[keep]] = indices[keep]
        self.threshold = self.scores[:, -1].clone()
        self.full = bool(self.threshold.isfinite().all())
        self.pending, self.num_pending = [], 0

    def result(self):
        self.merge()
        return self.scores, self.indices


def _check_length(values, expected, what):
    if values is not None and len(values) != expected:
        raise SearchError(f'{what}: {len(values)} values for {expected} entries')
    return values


class GalleryFiles:
    """Gallery feature files read as one gallery: .npz / .h5 / .npy paths (FeatureFile) or numpy
    arrays, in that order, a gallery index counting across them; their features by block
    (pieces) or by index (rows), their camids / pids / times / paths columns, and the metric they
    record. camids, pids, times: (N,) arrays that override the files' own."""

    def __init__(self, gallery_files, camids=None, pids=None, times=None):
        if isinstance(gallery_files, (str, os.PathLike, np.ndarray)):
            gallery_files = [gallery_files]
        if not gallery_files:
            raise SearchError('no gallery file given')
        self.parts = [_ArrayFile(f) if isinstance(f, np.ndarray) else FeatureFile(f) for f in gallery_files]
        dims = {f.dim for f in self.parts}
        if len(dims) > 1:
            raise SearchError('the gallery files have different feature sizes: '
                              + ', '.join(f'{f.path} {f.dim}' for f in self.parts))
        self.dim = dims.pop()
        self.offsets = np.cumsum([0] + [f.num for f in self.parts])
        self.num = int(self.offsets[-1])
        recorded = {f.metric for f in self.parts if f.metric is not None}
        if len(recorded) > 1:
            raise SearchError('the gallery files record different metrics: '
                              + ', '.join(f'{f.path} {f.metric}' for f in self.parts if f.metric))
        self.metric = recorded.pop() if recorded else None  # the metric the files record, if any
        self._columns = {'camids': camids, 'pids': pids, 'times': times}
        for name, values in self._columns.items():
            _check_length(values, self.num, f'gallery_{name}')

    def column(self, name):
        """The gallery's (N,) camids / pids / times / paths over all files, or None if any file
        lacks it (loaded once)."""
        if self._columns.get(name) is None:
            parts = [f.column(name) for f in self.parts]
            self._columns[name] = None if any(p is None for p in parts) else np.concatenate(parts)
        return self._columns[name]

    def paths(self, indices):
        """Gallery paths of an array of gallery indices ('' for -1)."""
        indices = np.asarray(indices)
        paths = self.column('paths')
        if paths is None:
            raise SearchError('the gallery files carry no paths')
        return np.where(indices >= 0, paths[np.maximum(indices, 0)], '')

    def pieces(self, start, stop, rows):
        """(file, local start, local stop, global start) blocks of at most `rows` covering
        gallery rows [start, stop), none crossing a file boundary."""
        for number, f in enumerate(self.parts):
            lo, hi = max(start, self.offsets[number]), min(stop, self.offsets[number + 1])
            for first in range(int(lo), int(hi), rows):
                local = first - int(self.offsets[number])
                yield f, local, min(local + rows, int(hi - self.offsets[number])), first

    def rows(self, indices):
        """(len(indices), D) float32 gallery features at the given gallery indices (any order)."""
        indices = np.asarray(indices, dtype=np.int64)
        number = np.searchsorted(self.offsets, indices, side='right') - 1
        if (number == number[0]).all():  # one file: no second copy
            return np.asarray(self.parts[number[0]].take(indices - self.offsets[number[0]]), dtype=np.float32)
        out = np.empty((len(indices), self.dim), dtype=np.float32)
        for n in np.unique(number):
            at = number == n
            out[at] = self.parts[n].take(indices[at] - self.offsets[n])
        return out


class GallerySearch:
    """Exact top-k over gallery feature files (see the module docstring).

    gallery_files: paths of .npz / .h5 / .npy features files, searched as one gallery in that
    order (a gallery index counts across the files); numpy arrays are accepted too.
    metric: 'cosine' or 'euclidean'; None takes it from the files (an error if they do not
    record one). device: 'cpu', 'cuda', 'cuda:N', or a list of devices that each take a shard.
    dtype: 'fp32', 'bf16' or 'fp16' for the product. memory_mb: working memory of the search
    per device. cache_on_device: keep the prepared gallery in GPU memory between searches
    (default: on for CUDA devices). gallery_camids / _pids / _times: (N,) arrays that override
    the files' own.
    """

    def __init__(self, gallery_files, metric=None, device='cpu', dtype='fp32', memory_mb=256,
                 cache_on_device=None, gallery_camids=None, gallery_pids=None, gallery_times=None):
        self.files = GalleryFiles(gallery_files, camids=gallery_camids, pids=gallery_pids, times=gallery_times)
        self.dim, self.num = self.files.dim, self.files.num
        recorded = self.files.metric
        if metric is None:
            if recorded is None:
                raise SearchError('the gallery files do not record their metric; pass metric= (--metric) '
                                  "'cosine' or 'euclidean' (the checkpoint's dist_metric)")
            metric = recorded
        elif recorded is not None and metric != recorded:
            raise SearchError(f'metric {metric!r}, but the gallery files record {recorded!r}')
        if metric not in METRICS:
            raise SearchError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
        if dtype not in DTYPES:
            raise SearchError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
        self.metric, self.dtype = metric, dtype
        self.devices = [torch.device(d) for d in ([device] if isinstance(device, (str, torch.device)) else device)]
        for d in self.devices:
            if d.type == 'cuda' and not torch.cuda.is_available():
                raise SearchError(f'device {d}: CUDA is not available here; use cpu')
        self.memory_mb = memory_mb
        self.cache_on_device = cache_on_device
        self._cache, self._buffers = {}, {}

    def column(self, name):
        """The gallery's (N,) camids / pids / times / paths (GalleryFiles.column)."""
        return self.files.column(name)

    def paths(self, indices):
        """Gallery paths of an array of gallery indices ('' for -1)."""
        return self.files.paths(indices)

    def rows(self, indices):
        """(len(indices), D) float32 gallery features at the given gallery indices (any order)."""
        return self.files.rows(indices)

    def _prepare(self, block, device, first, reuse):
        """A (n, D) numpy block -> the gallery side of the product on `device`: the unit
        vectors (cosine) or the vectors and -|g|^2 (Euclidean), in the compute dtype. reuse: may
        live in a buffer that the next block overwrites."""
        g = torch.from_numpy(block).to(device, non_blocking=True)
        g = g.float() if g.dtype != torch.float32 else g
        # The norms (cosine) or squared norms (Euclidean) are needed anyway; they also catch NaN / inf.
        norms = torch.linalg.vector_norm(g, dim=1) if self.metric == 'cosine' else g.pow(2).sum(1)
        bad = (~norms.isfinite()).nonzero()
        if len(bad):
            raise SearchError(f'gallery entry {first + int(bad[0])} has a non-finite feature (NaN or inf)')
        dtype = DTYPES[self.dtype]
        # Written in the compute dtype in one pass, into a buffer reused from block to block.
        out = self._buffer('gallery', g.numel(), dtype, device).view_as(g) if reuse else torch.empty_like(g, dtype=dtype)
        if self.metric == 'cosine':
            if dtype != torch.float32 and float((norms - 1).abs().max()) < 1e-3:
                # Unit vectors already (extract_features.py's cosine features): the rounding to
                # bf16 / fp16 is far coarser than the normalisation, and the candidates are rescored.
                return out.copy_(g), None
            return torch.div(g, norms.clamp(min=1e-12)[:, None], out=out), None  # as F.normalize
        return (g if dtype == torch.float32 else out.copy_(g)), (-norms).to(dtype)

    def _shard_blocks(self, device, start, stop, rows):
        """Prepared blocks of one shard: (global start, g, bias), from the device cache or read."""
        cache = self.cache_on_device if self.cache_on_device is not None else device.type == 'cuda'
        key = (str(device), start, stop, rows)
        if key in self._cache:
            yield from self._cache[key]
            return
        kept = []
        for f, lo, hi, first in self.files.pieces(start, stop, rows):
            prepared = (first, *self._prepare(f.rows(lo, hi), device, first, reuse=not cache))
            if cache:
                kept.append(prepared)
            yield prepared
        if cache:
            self._cache[key] = kept

    def _buffer(self, name, size, dtype, device):
        """A (size,) scratch tensor kept between blocks and searches: a fresh one per block
        would be page-faulted in (and zeroed) each time, as long as a pass over it."""
        key = (name, str(device))
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < size or buffer.dtype != dtype:
            buffer = self._buffers[key] = torch.empty(size, dtype=dtype, device=device)
        return buffer[:size]

    def _search_shard(self, device, start, stop, queries, k, filters):
        """Best k (scores, gallery indices) of every query in gallery rows [start, stop)."""
        exact = self.dtype == 'fp32'
        dtype = DTYPES[self.dtype]
        batch, rows = plan_blocks(len(queries), self.dim, self.memory_mb, torch.finfo(dtype).bits // 8)
        q_batches = [(s, queries[s:s + batch].to(device, dtype)) for s in range(0, len(queries), batch)]
        out_dtype = torch.float32 if device.type == 'cuda' else dtype  # CPU: torch.mm keeps the dtype
        buffer = self._buffer('scores', batch * rows, out_dtype, device)
        above = self._buffer('above', batch * rows, torch.bool, device)
        running = [_Running(len(q), k, device) for _, q in q_batches]
        for first, g, bias in self._shard_blocks(device, start, stop, rows):
            n = len(g)
            for (q_start, q), best in zip(q_batches, running):
                scores = buffer[:len(q) * n].view(len(q), n)
                if out_dtype != dtype:
                    scores.copy_(torch.mm(q, g.t(), out_dtype=out_dtype))
                    if bias is not None:
                        scores.mul_(2).add_(bias.float())
                elif bias is None:
                    torch.mm(q, g.t(), out=scores)
                else:
                    torch.addmm(bias, q, g.t(), alpha=2, out=scores)
                if filters is not None:
                    q_index = torch.arange(q_start, q_start + len(q), device=device)[:, None]
                    g_index = torch.arange(first, first + n, device=device)[None, :]
                    scores.masked_fill_(filters.removed(q_index, g_index), -math.inf)
                best.offer(scores, first, exact, above)
        results = [best.result() for best in running]
        return torch.cat([v.cpu() for v, _ in results]), torch.cat([i.cpu() for _, i in results])

    def _queries(self, query_features):
        q = torch.as_tensor(np.asarray(query_features) if not torch.is_tensor(query_features) else query_features)
        if q.dim() != 2 or q.shape[1] != self.dim:
            raise SearchError(f'query features of shape {tuple(q.shape)}; expected (Q, {self.dim})')
        q = q.float()
        if not q.isfinite().all():
            raise SearchError('the query features contain NaN or inf')
        return F.normalize(q, dim=1) if self.metric == 'cosine' else q

    def filters(self, num_query, query_camids=None, query_pids=None, query_times=None, exclude_same_camera=False,
                time_window=None, exclude_time_window=None, junk=None, device='cpu'):
        """The _Filters of a search (None when nothing is filtered), checked against the gallery."""
        return _Filters.of_search(self.files, num_query, device, query_camids=query_camids, query_pids=query_pids,
                                  query_times=query_times, exclude_same_camera=exclude_same_camera,
                                  time_window=time_window, exclude_time_window=exclude_time_window, junk=junk)

    def search(self, query_features, k, query_camids=None, query_pids=None, query_times=None,
               exclude_same_camera=False, time_window=None, exclude_time_window=None, junk=None):
        """(Q, D) query features -> (indices, distances), both (Q, min(k, N)) numpy arrays:
        gallery indices int64 and distances float32, nearest first, ties by lower index.
        A row with fewer than k entries left by the filters ends with index -1, distance inf.
        See the module docstring for the filters."""
        if k < 1:
            raise SearchError(f'k must be positive, got {k}')
        q = self._queries(query_features)
        k = min(k, self.num)
        candidates = k if self.dtype == 'fp32' else min(2 * k, self.num)
        filter_args = dict(query_camids=query_camids, query_pids=query_pids, query_times=query_times,
                           exclude_same_camera=exclude_same_camera, time_window=time_window,
                           exclude_time_window=exclude_time_window, junk=junk)
        bounds = np.linspace(0, self.num, len(self.devices) + 1).astype(int)
        shards = [(d, int(a), int(b)) for d, a, b in zip(self.devices, bounds[:-1], bounds[1:]) if b > a]

        def run(shard):
            device, start, stop = shard
            filters = self.filters(len(q), device=device, **filter_args)
            return self._search_shard(device, start, stop, q, candidates, filters)
        if all(d.type == 'cuda' for d, _, _ in shards) and len(shards) > 1:
            with ThreadPoolExecutor(len(shards)) as pool:
                results = list(pool.map(run, shards))
        else:
            results = [run(shard) for shard in shards]
        scores, indices = merge_topk(torch.cat([s for s, _ in results], 1), torch.cat([i for _, i in results], 1),
                                     candidates)
        if self.dtype != 'fp32':
            scores, indices = merge_topk(self._rescore(q, scores, indices), indices, k)
        return self._finish(q, scores, indices)

    def _finish(self, q, scores, indices):
        """Scores -> distances; removed or missing entries -> index -1, distance inf."""
        missing = scores == -math.inf
        if self.metric == 'cosine':
            distances = 1 - scores
        else:
            distances = (q.pow(2).sum(1, keepdim=True) - scores).clamp_(min=0)
        distances[missing] = math.inf
        indices = indices.clone()
        indices[missing] = -1
        return indices.numpy(), distances.numpy()

    def _rescore(self, q, scores, indices):
        """Exact float32 scores of the candidates (Q, C), read back from the files in query
        batches that keep the gathered rows within memory_mb."""
        exact = torch.full_like(scores, -math.inf)
        # The gathered rows and their temporaries: about 4 copies of (batch, C, D) float32.
        batch = max(1, self.memory_mb * (1 << 20) // (indices.shape[1] * self.dim * 4 * 8))
        for start in range(0, len(q), batch):
            idx, valid = indices[start:start + batch], scores[start:start + batch] > -math.inf
            g = torch.from_numpy(self.rows(idx.clamp(min=0).reshape(-1).numpy())).view(*idx.shape, self.dim)
            dots = torch.bmm(g, q[start:start + batch, :, None]).squeeze(2)
            if self.metric == 'cosine':
                s = dots / torch.linalg.vector_norm(g, dim=2).clamp(min=1e-12)
            else:
                s = 2 * dots - g.pow(2).sum(2)
            exact[start:start + batch] = torch.where(valid, s, -math.inf)
        return exact


class _ArrayFile:
    """An in-memory (N, D) array standing in for a features file."""

    def __init__(self, array):
        if array.ndim != 2:
            raise SearchError(f'gallery array of shape {array.shape}; expected (N, D)')
        self.features, self.path, self.metric = array, '<array>', None
        self.num, self.dim = array.shape

    def rows(self, start, stop):
        return self.features[start:stop]

    def take(self, rows):
        return self.features[rows]

    def column(self, name):
        return None


def _import_faiss():
    try:
        import faiss
    except ImportError as error:
        raise SearchError('--index faiss:... needs faiss, an optional dependency: pip install faiss-cpu '
                          '(or faiss-gpu); the exact search needs nothing more') from error
    return faiss


class FaissIndex:
    """A faiss index (index_factory string, e.g. 'IVF4096,Flat', 'IVF4096,PQ64', 'HNSW32') over
    the gallery of a GallerySearch, searched like it: same filters, same output.

    Built from the gallery streamed in blocks (trained first on train_size evenly spaced rows: by default 40 per inverted list, faiss's minimum without a warning),
    saved to / loaded from `path` when given (a saved index must match the gallery's size and
    dimension). Cosine searches unit vectors by inner product, Euclidean by faiss's squared L2.
    params: faiss ParameterSpace settings such as 'nprobe=32' or 'efSearch=128'.
    kmeans_iterations: of the IVF training (faiss's default: 25); with train_size, what the
    build costs: IVF4096 on 1M x 512 trains in about 50 s on 2 cores with 20 rows per list and
    10 iterations.
    Filters: faiss returns candidates, the filters remove pairs, and a query whose kept list is
    shorter than k is searched again with twice the candidates (up to the whole gallery), so
    removed entries never take a place in the list.
    """

    def __init__(self, gallery, factory, path=None, params=None, train_size=None, kmeans_iterations=None):
        faiss = _import_faiss()
        self.gallery, self.factory = gallery, factory
        self.build_seconds = 0.0
        if path and os.path.isfile(path):
            self.index = faiss.read_index(path)
            if self.index.ntotal != gallery.num or self.index.d != gallery.dim:
                raise SearchError(f'{path}: an index of {self.index.ntotal} x {self.index.d} vectors, the gallery '
                                  f'has {gallery.num} x {gallery.dim}; delete it to build a new one')
        else:
            metric = faiss.METRIC_INNER_PRODUCT if gallery.metric == 'cosine' else faiss.METRIC_L2
            try:
                self.index = faiss.index_factory(gallery.dim, factory, metric)
            except RuntimeError as error:
                raise SearchError(f'--index faiss:{factory}: faiss cannot build it ({str(error).strip()})') from error
            start = time.perf_counter()
            if not self.index.is_trained:
                ivf = faiss.try_extract_index_ivf(self.index)
                if train_size is None:
                    train_size = 40 * ivf.nlist if ivf is not None else 100_000
                if ivf is not None and kmeans_iterations:
                    ivf.cp.niter = kmeans_iterations
                sample = np.linspace(0, gallery.num - 1, min(train_size, gallery.num)).astype(np.int64)
                self.index.train(self._vectors(gallery.rows(np.unique(sample))))
            for f, lo, hi, _ in gallery.files.pieces(0, gallery.num, STREAM_ROWS):
                self.index.add(self._vectors(f.rows(lo, hi)))
            self.build_seconds = time.perf_counter() - start
            if path:
                faiss.write_index(self.index, path)
        if params:
            faiss.ParameterSpace().set_index_parameters(self.index, params)
        self.bytes_per_vector = len(faiss.serialize_index(self.index)) / max(1, gallery.num)

    def _vectors(self, x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.gallery.metric == 'cosine':
            x = F.normalize(torch.from_numpy(x), dim=1).numpy()
        return x

    def search(self, query_features, k, **filter_args):
        """As GallerySearch.search (distances are faiss's: exact for Flat codes, approximate
        for PQ)."""
        if k < 1:
            raise SearchError(f'k must be positive, got {k}')
        q = self.gallery._queries(query_features).numpy()
        k = min(k, self.gallery.num)
        filters = self.gallery.filters(len(q), **filter_args)
        q_sq = (q.astype(np.float64) ** 2).sum(1).astype(np.float32)
        scores = torch.full((len(q), k), -math.inf)
        indices = torch.zeros((len(q), k), dtype=torch.int64)
        todo, width = np.arange(len(q)), k
        while len(todo):
            distances, found = self.index.search(q[todo], width)
            found = torch.from_numpy(found)
            # Back to the exact search's scores: <q, g> (cosine), |q|^2 - |q - g|^2 (Euclidean).
            s = torch.from_numpy(distances if self.gallery.metric == 'cosine' else q_sq[todo, None] - distances)
            removed = found < 0
            if filters is not None:
                removed |= filters.removed(torch.from_numpy(todo)[:, None], found.clamp(min=0))
            s = s.masked_fill(removed, -math.inf)
            scores[todo], indices[todo] = merge_topk(s, found.clamp(min=0), k)
            short = ((~removed).sum(1) < k).numpy() & (width < self.gallery.num)
            todo, width = todo[short], min(2 * width, self.gallery.num)
        return self.gallery._finish(torch.from_numpy(q), scores, indices)


def _true_matches(q_pids, g_pids):
    """Per query, the gallery indices with its pid: (query rows, gallery indices), sparse."""
    order = np.argsort(g_pids, kind='stable')
    sorted_pids = g_pids[order]
    lo, hi = np.searchsorted(sorted_pids, q_pids, 'left'), np.searchsorted(sorted_pids, q_pids, 'right')
    rows = np.repeat(np.arange(len(q_pids)), hi - lo)
    within = np.arange(len(rows)) - np.repeat(np.cumsum(hi - lo) - (hi - lo), hi - lo)
    return rows, order[np.repeat(lo, hi - lo) + within]


def ranked_list_metrics(indices, q_pids, g_pids, filters=None):
    """(CMC (k,), mAP@k, queries counted) of ranked lists (Q, k) of gallery indices.
    AP@k sums precision at each true match in the list and divides by ALL the query's true
    matches in the (filtered) gallery, so it is a lower bound of the full AP (equal when the
    list holds every match). Queries without a true match are skipped, as eval_metrics does."""
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    rows, cols = _true_matches(q_pids, g_pids)
    if filters is not None:
        rows = rows[~filters.removed(torch.from_numpy(rows), torch.from_numpy(cols)).numpy()]
    num_matches = np.bincount(rows, minlength=len(q_pids))
    valid = num_matches > 0
    if not valid.any():
        raise SearchError('no query has a true match in the gallery: CMC and mAP need overlapping pids')
    hits = (indices >= 0) & (g_pids[np.maximum(indices, 0)] == q_pids[:, None])
    first = np.where(hits.any(1), hits.argmax(1), indices.shape[1])
    cmc = (first[valid, None] <= np.arange(indices.shape[1])[None, :]).mean(0)
    precision = np.cumsum(hits, 1) / np.arange(1, indices.shape[1] + 1)
    ap = (precision * hits).sum(1)[valid] / num_matches[valid]
    return cmc, float(ap.mean()), int(valid.sum())


def retrieval_report(exact, approx, q_pids=None, g_pids=None, filters=None):
    """Figures of an approximate ranked list against the exact one on the same queries.
    exact, approx: (Q, k) gallery indices (-1: none). Returns a dict: k-recall@k (the share
    of the exact top k found in the approximate top k), 1-recall@1 (the exact nearest ranked
    first), and with pids the CMC and mAP@k of both."""
    k = exact.shape[1]
    valid = exact >= 0
    found = np.array([np.isin(e[v], a).sum() for e, a, v in zip(exact, approx, valid)])
    report = {'k': k, 'k-recall@k': float(found.sum() / max(1, valid.sum())),
              '1-recall@1': float((approx[:, 0] == exact[:, 0])[valid[:, 0]].mean())}
    if q_pids is not None and g_pids is not None:
        report['exact'] = ranked_list_metrics(exact, q_pids, g_pids, filters)
        report['approx'] = ranked_list_metrics(approx, q_pids, g_pids, filters)
    return report


def format_report(report, ranks=(1, 5, 10, 20, 50, 100)):
    """Printable lines of retrieval_report."""
    k = report['k']
    lines = [f"k-recall@{k}: {report['k-recall@k']:.4f}   1-recall@1: {report['1-recall@1']:.4f}"]
    if 'exact' in report:
        for name in ('exact', 'approx'):
            cmc, mean_ap, counted = report[name]
            shown = '  '.join(f'R{r} {cmc[r - 1]:.1%}' for r in ranks if r <= k)
            lines.append(f'{name:6s} CMC {shown}   mAP@{k} {mean_ap:.2%} (lower bound; {counted} queries)')
        lines.append(f"mAP@{k} difference: {100 * (report['approx'][1] - report['exact'][1]):+.2f} points")
    return lines
