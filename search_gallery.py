"""Search gallery features (extract_features.py output, any size, several files) for the k
nearest entries of each query: exact and streamed, or through a faiss index.

    python search_gallery.py --gallery g1.h5 g2.npz --query query.npz --topk 100 --output ranked.npz
    # the re-ID protocol: no gallery entry from the query's camera (Market-style names)
    python search_gallery.py --gallery g.npz --query q.npz --exclude-same-camera --camera-pattern 'c(\\d+)'
    # approximate, against the exact search on the same queries
    python search_gallery.py --gallery g.npz --query q.npz --index faiss:IVF4096,Flat --report

--output (.npz): 'indices' (Q, k) gallery indices counted across the --gallery files in order
(-1: no entry left after the filters), 'distances' (Q, k) float32 (inf for -1), 'paths' (Q, k)
gallery paths, 'query_paths', 'gallery_files', 'metric'.
Camera ids, pids and times come from 'camids' / 'pids' / 'times' in the files, else from the
paths with --camera-pattern / --pid-pattern / --time-pattern (a regex whose first group is
the number; camera c3 -> id 2 as the dataset parsers number them).
"""
import argparse
import os
import re
import sys
import time

import numpy as np
import torch

from eval_metrics import METRICS
from extract_features import camera_id
from gallery_search import DTYPES, FaissIndex, FeatureFile, GallerySearch, SearchError, format_report, retrieval_report


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--gallery', nargs='+', required=True, metavar='FILE', help='gallery features (.npz/.h5/.npy)')
    parser.add_argument('--query', required=True, metavar='FILE', help='query features (.npz/.h5/.npy)')
    parser.add_argument('--topk', type=int, default=100, help='entries per query (default: %(default)s)')
    parser.add_argument('--output', required=True, metavar='FILE.npz', help='ranked lists')
    parser.add_argument('--metric', choices=METRICS, help="default: the files' recorded metric")
    parser.add_argument('--dtype', choices=list(DTYPES), default='fp32',
                        help='precision of the product; bf16/fp16 rescore 2k candidates in fp32 (default: %(default)s)')
    parser.add_argument('--device', nargs='+', default=['cuda' if torch.cuda.is_available() else 'cpu'],
                        help='cpu, cuda, cuda:N; several devices each search a shard (default: %(default)s)')
    parser.add_argument('--memory-mb', type=int, default=256, help='working memory per device (default: %(default)s)')
    parser.add_argument('--exclude-same-camera', action='store_true',
                        help='remove gallery entries of the query\'s camera (with pids in both: same pid AND '
                             'camera, and pid -1, as the evaluation does)')
    parser.add_argument('--camera-pattern', metavar='REGEX', help=r'camera number in a path, e.g. c(\d+)')
    parser.add_argument('--pid-pattern', metavar='REGEX', help=r'pid in a path, e.g. ^(-?\d+)_')
    parser.add_argument('--time-pattern', metavar='REGEX', help=r'time or frame number in a path, e.g. s\d+_(\d+)')
    parser.add_argument('--time-window', nargs=2, type=float, metavar=('LO', 'HI'),
                        help='keep gallery entries with LO <= t_gallery - t_query <= HI')
    parser.add_argument('--exclude-time-window', nargs=2, type=float, metavar=('LO', 'HI'),
                        help='remove gallery entries with LO <= t_gallery - t_query <= HI')
    parser.add_argument('--junk', metavar='FILE', help='gallery indices to remove: a text file, one index a line')
    parser.add_argument('--index', metavar='faiss:FACTORY', help='approximate search, e.g. faiss:IVF4096,Flat')
    parser.add_argument('--index-file', metavar='FILE', help='load the faiss index from FILE, or build and save it there')
    parser.add_argument('--faiss-params', metavar='SETTINGS', help='faiss search settings, e.g. nprobe=32')
    parser.add_argument('--faiss-train-size', type=int, metavar='N',
                        help='gallery rows the index is trained on (default: 40 per IVF list)')
    parser.add_argument('--faiss-iterations', type=int, metavar='N', help='k-means iterations of IVF training (faiss: 25)')
    parser.add_argument('--report', action='store_true',
                        help='with --index: recall, CMC and mAP@k against the exact search, build time, '
                             'bytes per vector, queries/s')
    return parser


PATTERNS = {'camids': ('camera_pattern', '--camera-pattern'), 'pids': ('pid_pattern', '--pid-pattern'),
            'times': ('time_pattern', '--time-pattern')}


def parse_paths(paths, pattern, name, flag):
    """(N,) camids / pids / times from the file names, with a regex whose first group is the
    number (camera numbers c3 -> id 2, -1 without a match, as extract_features.py does)."""
    if paths is None:
        raise SearchError(f'{flag}: the files carry no paths to parse')
    regex = re.compile(pattern)
    if name == 'camids':
        return np.array([camera_id(path, regex) for path in paths])
    values = []
    for path in paths:
        match = regex.search(os.path.basename(path))
        if match is None:
            raise SearchError(f'{flag} {pattern}: no match in {path}')
        values.append(int(match[1]) if name == 'pids' else float(match[1]))
    return np.array(values)


def columns(files, args):
    """{'paths', 'camids', 'pids', 'times'} over the files: their own arrays, else parsed from
    their paths with the flags' patterns, else None."""
    def joined(name):
        parts = [f.column(name) for f in files]
        return None if any(p is None for p in parts) else np.concatenate(parts)
    found = {'paths': joined('paths')}
    for name, (attribute, flag) in PATTERNS.items():
        found[name] = joined(name)
        pattern = getattr(args, attribute)
        if found[name] is None and pattern:
            found[name] = parse_paths(found['paths'], pattern, name, flag)
    return found


def run(args):
    if not args.output.endswith('.npz'):
        raise SearchError(f'--output {args.output}: use a .npz file name')
    query = FeatureFile(args.query)
    gallery, queried = columns([FeatureFile(path) for path in args.gallery], args), columns([query], args)
    search = GallerySearch(args.gallery, metric=args.metric, device=args.device, dtype=args.dtype,
                           memory_mb=args.memory_mb, gallery_camids=gallery['camids'],
                           gallery_pids=gallery['pids'], gallery_times=gallery['times'])
    try:
        junk = np.loadtxt(args.junk, dtype=np.int64, ndmin=1) if args.junk else None
    except (OSError, ValueError) as error:
        raise SearchError(f'--junk {args.junk}: {error} (expected one gallery index a line)') from error
    same_camera = args.exclude_same_camera
    filters = dict(query_camids=queried['camids'] if same_camera else None,
                   query_pids=queried['pids'] if same_camera and gallery['pids'] is not None else None,
                   query_times=queried['times'], exclude_same_camera=same_camera,
                   time_window=args.time_window, exclude_time_window=args.exclude_time_window, junk=junk)
    queries = query.rows(0, query.num)
    print(f'Searching {search.num} gallery entries ({len(args.gallery)} files, {search.dim}-d, {search.metric}) '
          f'for the {args.topk} nearest of {len(queries)} queries')

    start = time.perf_counter()
    indices, distances = search.search(queries, args.topk, **filters)
    exact_seconds = time.perf_counter() - start
    print(f'Exact search ({args.dtype} on {", ".join(args.device)}): {exact_seconds:.2f} s, '
          f'{len(queries) / exact_seconds:.1f} queries/s')
    if args.index:
        exact = indices
        index = FaissIndex(search, args.index[len('faiss:'):], path=args.index_file, params=args.faiss_params,
                           train_size=args.faiss_train_size, kmeans_iterations=args.faiss_iterations)
        start = time.perf_counter()
        indices, distances = index.search(queries, args.topk, **filters)
        seconds = time.perf_counter() - start
        print(f'faiss {index.factory}: ' + (f'built in {index.build_seconds:.1f} s' if index.build_seconds else
                                            f'loaded from {args.index_file}')
              + f', {index.bytes_per_vector:.1f} bytes/vector, {len(queries) / seconds:.1f} queries/s '
              f'({exact_seconds / seconds:.1f}x the exact search)')
        if args.report:
            report = retrieval_report(exact, indices, q_pids=queried['pids'], g_pids=gallery['pids'],
                                      filters=search.filters(len(queries), **filters))
            print('\n'.join(format_report(report)))
    np.savez(args.output, indices=indices, distances=distances,
             paths=search.paths(indices) if gallery['paths'] is not None else np.array([]),
             query_paths=queried['paths'] if queried['paths'] is not None else np.array([]),
             gallery_files=np.array(args.gallery), metric=np.array(search.metric))
    print(f'Wrote the {indices.shape[1]} nearest of {len(queries)} queries to {args.output}')


def main():
    parser = get_args_parser()
    args = parser.parse_args()
    if args.topk < 1:
        parser.error(f'--topk must be positive, got {args.topk}')
    if args.index and not args.index.startswith('faiss:'):
        parser.error(f'--index {args.index}: expected faiss:<index_factory string>, e.g. faiss:IVF4096,Flat')
    for attribute, flag in PATTERNS.values():
        pattern = getattr(args, attribute)
        try:
            if pattern and re.compile(pattern).groups < 1:
                parser.error(f'{flag} {pattern}: needs a group around the number')
        except re.error as error:
            parser.error(f'{flag} {pattern}: {error}')
    if args.report and not args.index:
        parser.error('--report compares an --index with the exact search; add --index faiss:FACTORY')
    try:
        run(args)
    except SearchError as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    main()
