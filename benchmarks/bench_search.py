"""Speed of the exact gallery search against torch.mm on the same shapes, its memory, and the
faiss rows when faiss is importable.

    python benchmarks/bench_search.py                       # 1M x 512 gallery, 1,000 queries
    python benchmarks/bench_search.py --size 100000         # a quick run
    python benchmarks/bench_search.py --size 10000000 --device cuda --dtype fp16 --paths memory   # GPU

Features are clustered as trained re-ID features are (identity centres plus noise, unit
length, the cosine metric; see clustered()): on i.i.d. Gaussian vectors every inverted index looks useless.
torch.mm is timed first on the search's own blocks ((queries, rows) products over the whole
gallery into one reused buffer); each path prints its time and its fraction of that rate.
'file' streams the gallery from an .npy in the page cache (read once before timing).
Working memory is the peak of anonymous resident memory during the search minus before it
(the gallery's own pages, in memory or mapped, are not counted).
"""
import argparse
import os
import re
import sys
import tempfile
import threading
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from gallery_search import DTYPES, FaissIndex, GallerySearch, SearchError, plan_blocks, retrieval_report  # noqa: E402


def clustered(num, dim, num_ids, spread, noise, seed, centres=None):
    """(features (num, D) float32 unit vectors, ids (num,), identity centres).

    Identities look alike in groups of about 20 (clothing, camera, light): a centre is a
    group's direction plus `spread`, and a feature its identity's centre plus `noise` (norms
    relative to the unit directions), so a query's nearest strangers are look-alikes, as in
    real galleries. The defaults give an exact mAP@100 of about 0.8."""
    g = torch.Generator().manual_seed(seed)
    unit = torch.nn.functional.normalize
    if centres is None:
        groups = unit(torch.randn(max(1, num_ids // 20), dim, generator=g), dim=1)
        centres = unit(groups[torch.randint(len(groups), (num_ids,), generator=g)]
                       + spread * unit(torch.randn(num_ids, dim, generator=g), dim=1), dim=1)
    ids = torch.randint(len(centres), (num,), generator=g)
    features = torch.empty(num, dim)
    for start in range(0, num, 1 << 16):  # in chunks: no second full-size temporary
        part = ids[start:start + (1 << 16)]
        features[start:start + len(part)] = unit(
            centres[part] + noise * unit(torch.randn(len(part), dim, generator=g), dim=1), dim=1)
    return features.numpy(), ids.numpy(), centres


def rss_anon_mib():
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith('RssAnon:')) / 1024


class PeakAnon:
    """Peak RssAnon growth while the block runs, sampled every millisecond."""

    def __enter__(self):
        self.start = self.peak = rss_anon_mib()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, rss_anon_mib())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.growth = self.peak - self.start


def synchronize(device):
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()


def timed(fn, device):
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def interleaved(baseline, path, device, repeat):
    """Best seconds of the baseline and of the path, run in turns (the CPU is shared: a
    neighbour's load then weighs on both alike), and the path's last result."""
    best_baseline = best_path = float('inf')
    for _ in range(repeat):
        best_baseline = min(best_baseline, timed(baseline, device)[0])
        seconds, result = timed(path, device)
        best_path = min(best_path, seconds)
    return best_baseline, best_path, result


def mm_baseline(queries, gallery, dtype, device, memory_mb):
    """A function running torch.mm over the gallery in the search's block shapes, in `dtype`,
    into one reused buffer (the blocks prepared beforehand, as the search's own are not)."""
    batch, rows = plan_blocks(len(queries), gallery.shape[1], memory_mb, torch.finfo(dtype).bits // 8)
    q = torch.from_numpy(queries).to(device, dtype)
    blocks = [torch.from_numpy(gallery[s:s + rows]).to(device, dtype) for s in range(0, len(gallery), rows)]
    out = torch.empty(batch * rows, dtype=dtype if device == 'cpu' else torch.float32, device=device)

    def run():
        for g in blocks:
            for s in range(0, len(q), batch):
                qb = q[s:s + batch]
                scores = out[:len(qb) * len(g)].view(len(qb), len(g))
                if device == 'cpu' or dtype == torch.float32:
                    torch.mm(qb, g.t(), out=scores)
                else:
                    scores.copy_(torch.mm(qb, g.t(), out_dtype=torch.float32))
    return run


def main():
    if os.environ.get('MALLOC_MMAP_THRESHOLD_') is None:
        # A fixed threshold: glibc then returns every large block it frees, so the working
        # memory of one search is not hidden in memory that an earlier one freed.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, 'MALLOC_MMAP_THRESHOLD_': '131072'})
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--size', type=int, default=1_000_000, help='gallery entries (default: %(default)s)')
    parser.add_argument('--dim', type=int, default=512)
    parser.add_argument('--queries', type=int, default=1000)
    parser.add_argument('--k', type=int, default=100)
    parser.add_argument('--ids', type=int, default=None, help='identities (default: size / 50)')
    parser.add_argument('--spread', type=float, default=0.7, help='identity centres around their group (default: %(default)s)')
    parser.add_argument('--noise', type=float, default=1.5, help='features around their identity (default: %(default)s)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', choices=['bf16', 'fp16'], default='bf16', help='the reduced-precision row')
    parser.add_argument('--paths', nargs='+', choices=['memory', 'file'], default=['memory', 'file'])
    parser.add_argument('--memory-mb', type=int, default=256)
    parser.add_argument('--repeat', type=int, default=2, help='runs per row, the best counts')
    parser.add_argument('--faiss', nargs='*', default=['IVF4096,Flat'], metavar='FACTORY',
                        help='faiss index factory strings (none: skip; default: %(default)s)')
    parser.add_argument('--train-per-list', type=int, default=20,
                        help='IVF training rows per list (default: %(default)s)')
    parser.add_argument('--kmeans-iterations', type=int, default=10, help='(default: %(default)s)')
    parser.add_argument('--nprobe', nargs='+', type=int, default=[8, 16, 32])
    args = parser.parse_args()

    torch.manual_seed(0)
    gallery, g_ids, centres = clustered(args.size, args.dim, args.ids or max(1, args.size // 50), args.spread,
                                        args.noise, 0)
    queries, q_ids, _ = clustered(args.queries, args.dim, 0, args.spread, args.noise, 1, centres)
    flops = 2 * args.queries * args.size * args.dim
    print(f'{args.size} x {args.dim} gallery, {args.queries} queries, k={args.k}, {args.device}, '
          f'{torch.get_num_threads()} threads; torch {torch.__version__}')

    def row(name, baseline, seconds, extra=''):
        print(f'{name:34s} {seconds:8.3f} s  {flops / seconds / 1e9:8.1f} GFLOP/s  '
              f'{baseline / seconds:6.1%} of torch.mm  {extra}', flush=True)

    def measure(name, dtype, search, extra):
        """A row: the search against torch.mm in turns; extra(result) -> text."""
        mm = mm_baseline(queries, gallery, DTYPES[dtype], args.device, args.memory_mb)
        mm()  # warm up
        baseline, seconds, result = interleaved(mm, search, args.device, args.repeat)
        print(f'{"torch.mm " + dtype + " (same blocks)":34s} {baseline:8.3f} s  {flops / baseline / 1e9:8.1f} GFLOP/s')
        row(name, baseline, seconds, extra(result))
        return seconds, result

    # Working memory: each search's first run on a fresh object (its buffers included), alone.
    search = GallerySearch([gallery], metric='cosine', device=args.device, memory_mb=args.memory_mb)
    with PeakAnon() as peak:
        exact, _ = search.search(queries, args.k)
    memory = peak.growth
    exact_seconds, _ = measure('exact fp32, in memory', 'fp32', lambda: search.search(queries, args.k),
                               lambda result: f'working memory {memory:.0f} MiB')
    reduced = GallerySearch([gallery], metric='cosine', device=args.device, dtype=args.dtype, memory_mb=args.memory_mb)
    with PeakAnon() as peak:
        reduced.search(queries, args.k)
    memory_reduced = peak.growth
    measure(f'exact {args.dtype} + fp32 rescoring', args.dtype, lambda: reduced.search(queries, args.k),
            lambda result: f'k-recall@{args.k} vs fp32 {retrieval_report(exact, result[0])["k-recall@k"]:.4f}, '
                              f'working memory {memory_reduced:.0f} MiB')
    reduced = None  # frees its buffers before the next row

    if 'file' in args.paths:
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, 'gallery.npy')
            np.save(path, gallery)
            streamed = GallerySearch([path], metric='cosine', device=args.device, memory_mb=args.memory_mb,
                                     cache_on_device=False)
            with PeakAnon() as peak:
                streamed.search(queries, args.k)  # also brings the file into the page cache
            memory_file = peak.growth
            measure('exact fp32, streamed from .npy', 'fp32', lambda: streamed.search(queries, args.k),
                    lambda result: f'identical: {np.array_equal(result[0], exact)}, '
                                      f'working memory {memory_file:.0f} MiB')

    if args.faiss:
        try:
            import faiss  # noqa: F401
        except ImportError:
            print('faiss is not installed: no faiss rows (pip install faiss-cpu)')
            return
        for factory in args.faiss:
            ivf = re.search(r'IVF(\d+)', factory)
            try:
                index = FaissIndex(search, factory, kmeans_iterations=args.kmeans_iterations,
                                   train_size=args.train_per_list * int(ivf[1]) if ivf else None)
            except SearchError as error:
                print(f'faiss {factory}: {error}')
                continue
            for setting in [f'nprobe={nprobe}' for nprobe in args.nprobe] if ivf else ['']:
                if setting:
                    faiss.ParameterSpace().set_index_parameters(index.index, setting)
                seconds, (found, _) = min((timed(lambda: index.search(queries, args.k), args.device)
                                           for _ in range(args.repeat)), key=lambda pair: pair[0])
                report = retrieval_report(exact, found, q_pids=q_ids, g_pids=g_ids)
                print(f'faiss {factory} {setting:11s} {seconds:8.3f} s  '
                      f'{exact_seconds / seconds:5.1f}x exact  k-recall@{args.k} {report["k-recall@k"]:.4f}  '
                      f'1-recall@1 {report["1-recall@1"]:.4f}  mAP@{args.k} {report["approx"][1]:.2%} vs '
                      f'{report["exact"][1]:.2%} ({100 * (report["approx"][1] - report["exact"][1]):+.2f} points)  '
                      f'build {index.build_seconds:.1f} s  {index.bytes_per_vector:.0f} bytes/vector', flush=True)


if __name__ == '__main__':
    main()
