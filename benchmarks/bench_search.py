"""Speed of the exact gallery search against torch.mm on the same shapes, its memory, and the
faiss rows when faiss is importable.

    python benchmarks/bench_search.py                       # 1M x 512 gallery, 1,000 queries
    python benchmarks/bench_search.py --size 100000         # a quick run
    python benchmarks/bench_search.py --size 10000000 --device cuda --dtype fp16 --paths memory   # GPU

Features are clustered as trained re-ID features are (identity centres plus noise, unit
length, the cosine metric): on i.i.d. Gaussian vectors every inverted index looks useless.
torch.mm is timed first on the search's own blocks ((queries, rows) products over the whole
gallery into one reused buffer); each path prints its time and its fraction of that rate.
'file' streams the gallery from an .npy in the page cache (read once before timing).
Working memory is the peak of anonymous resident memory during the search minus before it
(the gallery's own pages, in memory or mapped, are not counted).
"""
import argparse
import os
import sys
import tempfile
import threading
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from gallery_search import DTYPES, FaissIndex, GallerySearch, SearchError, plan_blocks, retrieval_report  # noqa: E402


def clustered(num, dim, num_ids, noise, seed, centres=None):
    """(features (num, D) float32 unit vectors, ids (num,), centres): identity centre plus noise."""
    g = torch.Generator().manual_seed(seed)
    if centres is None:
        centres = torch.nn.functional.normalize(torch.randn(num_ids, dim, generator=g), dim=1)
    ids = torch.randint(len(centres), (num,), generator=g)
    features = torch.empty(num, dim)
    for start in range(0, num, 1 << 16):  # in chunks: no second full-size temporary
        part = slice(start, start + (1 << 16))
        features[part] = torch.nn.functional.normalize(
            centres[ids[part]] + noise / dim ** 0.5 * torch.randn(len(ids[part]), dim, generator=g), dim=1)
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


def timed(fn, device, repeat):
    """Best time of `repeat` runs (the CPU is shared), and the last result."""
    best = float('inf')
    for _ in range(repeat):
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def mm_baseline(queries, gallery, dtype, device, memory_mb, repeat):
    """Seconds of torch.mm over the gallery in the search's block shape, in `dtype`."""
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
    seconds = timed(run, device, repeat)[0]
    del blocks
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--size', type=int, default=1_000_000, help='gallery entries (default: %(default)s)')
    parser.add_argument('--dim', type=int, default=512)
    parser.add_argument('--queries', type=int, default=1000)
    parser.add_argument('--k', type=int, default=100)
    parser.add_argument('--ids', type=int, default=None, help='identities (default: size / 50)')
    parser.add_argument('--noise', type=float, default=0.8, help='noise norm relative to the unit centres')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', choices=['bf16', 'fp16'], default='bf16', help='the reduced-precision row')
    parser.add_argument('--paths', nargs='+', choices=['memory', 'file'], default=['memory', 'file'])
    parser.add_argument('--memory-mb', type=int, default=256)
    parser.add_argument('--repeat', type=int, default=2, help='runs per row, the best counts')
    parser.add_argument('--faiss', nargs='*', default=['IVF1024,Flat'], metavar='FACTORY',
                        help='faiss index factory strings (none: skip)')
    parser.add_argument('--nprobe', nargs='+', type=int, default=[8, 16, 32])
    args = parser.parse_args()

    torch.manual_seed(0)
    gallery, g_ids, centres = clustered(args.size, args.dim, args.ids or max(1, args.size // 50), args.noise, 0)
    queries, q_ids, _ = clustered(args.queries, args.dim, 0, args.noise, 1, centres)
    flops = 2 * args.queries * args.size * args.dim
    print(f'{args.size} x {args.dim} gallery, {args.queries} queries, k={args.k}, {args.device}, '
          f'{torch.get_num_threads()} threads; torch {torch.__version__}')

    def row(name, seconds, baseline, extra=''):
        print(f'{name:34s} {seconds:8.3f} s  {flops / seconds / 1e9:8.1f} GFLOP/s  '
              f'{baseline / seconds:6.1%} of torch.mm  {extra}', flush=True)

    mm = {'fp32': mm_baseline(queries, gallery, torch.float32, args.device, args.memory_mb, args.repeat)}
    row('torch.mm fp32 (same blocks)', mm['fp32'], mm['fp32'])
    search = GallerySearch([gallery], metric='cosine', device=args.device, memory_mb=args.memory_mb)
    with PeakAnon() as peak:
        seconds, (exact, _) = timed(lambda: search.search(queries, args.k), args.device, args.repeat)
    row('exact fp32, in memory', seconds, mm['fp32'], f'working memory {peak.growth:.0f} MiB')
    exact_seconds = seconds

    mm[args.dtype] = mm_baseline(queries, gallery, DTYPES[args.dtype], args.device, args.memory_mb, args.repeat)
    row(f'torch.mm {args.dtype} (same blocks)', mm[args.dtype], mm[args.dtype])
    reduced = GallerySearch([gallery], metric='cosine', device=args.device, dtype=args.dtype, memory_mb=args.memory_mb)
    with PeakAnon() as peak:
        seconds, (approx, _) = timed(lambda: reduced.search(queries, args.k), args.device, args.repeat)
    recall = retrieval_report(exact, approx)['k-recall@k']
    row(f'exact {args.dtype} + fp32 rescoring', seconds, mm[args.dtype],
        f'k-recall@{args.k} vs fp32 {recall:.4f}, working memory {peak.growth:.0f} MiB')

    if 'file' in args.paths:
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, 'gallery.npy')
            np.save(path, gallery)
            np.load(path, mmap_mode='r').sum()  # into the page cache
            streamed = GallerySearch([path], metric='cosine', device=args.device, memory_mb=args.memory_mb,
                                     cache_on_device=False)
            with PeakAnon() as peak:
                seconds, (from_file, _) = timed(lambda: streamed.search(queries, args.k), args.device, args.repeat)
            row('exact fp32, streamed from .npy', seconds, mm['fp32'],
                f'identical: {np.array_equal(from_file, exact)}, working memory {peak.growth:.0f} MiB')

    if args.faiss:
        try:
            import faiss  # noqa: F401
        except ImportError:
            print('faiss is not installed: no faiss rows (pip install faiss-cpu)')
            return
        for factory in args.faiss:
            try:
                index = FaissIndex(search, factory)
            except SearchError as error:
                print(f'faiss {factory}: {error}')
                continue
            for nprobe in args.nprobe:
                faiss.ParameterSpace().set_index_parameters(index.index, f'nprobe={nprobe}')
                seconds, (found, _) = timed(lambda: index.search(queries, args.k), args.device, args.repeat)
                report = retrieval_report(exact, found, q_pids=q_ids, g_pids=g_ids)
                print(f'faiss {factory} nprobe={nprobe:<4d} {seconds:8.3f} s  '
                      f'{exact_seconds / seconds:5.1f}x exact  k-recall@{args.k} {report["k-recall@k"]:.4f}  '
                      f'1-recall@1 {report["1-recall@1"]:.4f}  mAP@{args.k} {report["approx"][1]:.2%} vs '
                      f'{report["exact"][1]:.2%} ({100 * (report["approx"][1] - report["exact"][1]):+.2f} points)  '
                      f'build {index.build_seconds:.1f} s  {index.bytes_per_vector:.0f} bytes/vector', flush=True)


if __name__ == '__main__':
    main()
