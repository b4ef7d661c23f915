"""Unsupervised training (train_img_model_usl.py): time and memory of the clustering step, and a
domain-adaptation experiment on generated data.

    python benchmarks/bench_usl.py --case market        # clustering 12,936 x 2048 (Market-1501 train)
    python benchmarks/bench_usl.py --case msmt          # clustering 32,621 x 2048 (MSMT17 train)
    python benchmarks/bench_usl.py --case custom --num 5000 --dim 256
    python benchmarks/bench_usl.py --case adaptation    # domain A -> B: direct transfer, adaptation, supervised on B

Clustering rows: the bare (N, D) x (D, N) product, computed in the same run in 64 MiB row
blocks, is the unit: each stage is reported in seconds and as a multiple of it, and the
neighbour search as a fraction of the product's rate (the full product's flops over its time:
it computes only the symmetric matrix's upper triangle, so this passes 100%). Peak RSS
beyond the features is the kernel's high-water mark (VmHWM), reset before the step. The
features are clustered around identity centres (about 17 images an identity, as Market-1501),
as trained features are; random ones would give emptier k-reciprocal sets.

Adaptation: two generated Market-1501 domains (synthetic_data.make_market1501, domain_shift
for B); a model trained with labels on A is evaluated on B (direct transfer), adapted on B's
unlabelled training images from that checkpoint, and compared with supervised training on B.
Prints each mAP / Rank-1, the margin of adaptation over direct transfer and the pseudo labels'
pairwise F1 against B's identities at every epoch. The defaults are docs/benchmarks.md's run; the
short version in tests/test_usl.py is a smaller one (40 identities, fewer epochs).
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, '..')
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)
import cluster  # noqa: E402
import synthetic_data  # noqa: E402
from bench_rerank import problem, reset_peak_rss, rss_mib, timed  # noqa: E402

SIZES = {'market': 12936, 'msmt': 32621}


def clustering(num, dim, device, threads):
    ids = max(1, num // 17)
    features, *_ = problem(num, 0, dim, ids, device, noise=1.2)
    features = torch.nn.functional.normalize(features, dim=1)
    step = cluster._block_rows(num)

    def product():
        for start in range(0, num, step):
            features[start:start + step] @ features.t()

    product()  # warm-up
    reset_peak_rss()
    base = rss_mib('VmRSS')
    mm, _ = timed(product)
    labels, report = cluster.pseudo_labels(features)
    peak = rss_mib() - base
    total = report['neighbours'] + report['jaccard'] + report['dbscan']
    print(f'clustering {num:,} x {dim} ({device}, {threads} threads): bare product {mm:.2f} s; neighbours '
          f'{report["neighbours"]:.2f} s ({mm / report["neighbours"]:.0%} of the product\'s rate), Jaccard '
          f'{report["jaccard"]:.2f} s, DBSCAN {report["dbscan"]:.2f} s; step {total:.2f} s = {total / mm:.2f}x the '
          f'product; peak RSS {peak:.0f} MiB beyond the features; {report["clusters"]} clusters, '
          f'{report["outliers"]} outliers')


def run(script, *args):
    result = subprocess.run([sys.executable, os.path.join(REPO, script), *map(str, args)], cwd=REPO,
                            capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f'{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}')
    return result.stdout


def results(stdout):
    """[(mAP, rank1)] in percent, one per printed 'Results' block."""
    maps = [float(x) for x in re.findall(r'^mAP: ([\d.]+)%', stdout, re.M)]
    rank1 = [float(x) for x in re.findall(r'^Rank-1  : ([\d.]+)%', stdout, re.M)]
    return list(zip(maps, rank1))


def adaptation(args):
    work = args.work_dir or tempfile.mkdtemp(prefix='bench_usl_')
    sizes = {'num_train_ids': args.ids, 'num_test_ids': args.ids, 'images_per_camera': (3, 4), 'cameras_per_id': 4,
             'num_distractors': 20, 'num_junk': 0}
    for domain, seed, shift in (('A', 11, 0.0), ('B', 12, args.shift)):
        if not os.path.isdir(os.path.join(work, domain, 'market1501')):
            synthetic_data.make_market1501(os.path.join(work, domain, 'market1501'), seed=seed, domain_shift=shift,
                                           **sizes)
    common = ['--height', str(args.height), '--width', str(args.width), '--no-pretrained', '--workers',
              str(args.workers), '-a', args.arch, '-d', 'market1501', '--print-freq', '1000', '--seed', str(args.seed)]
    # The classic cross-entropy script, which learns from random initialisation in a few epochs; the
    # BatchNorm'd, L2-normalised feature (--bnneck, cosine) is the one Cluster Contrast trains.
    supervised = [*common, '--lr', '1e-3', '--stepsize', '0', '--max-epoch', str(args.supervised_epochs),
                  '--train-batch', str(args.supervised_batch), '--eval-step', '1000', '--bnneck', '--dist-metric',
                  'cosine']
    tic = time.time()
    checkpoint = os.path.join(work, 'sup_A', 'checkpoint_last.pth.tar')
    if os.path.isfile(checkpoint):  # domain A's model of an earlier run in --work-dir
        with open(os.path.join(work, 'sup_A', 'log_train.txt')) as f:
            source = f.read()
    else:
        source = run('train_img_model_xent.py', *supervised, '--root', os.path.join(work, 'A'),
                     '--save-dir', os.path.join(work, 'sup_A'))
    direct = run('train_img_model_xent.py', *common, '--root', os.path.join(work, 'B'), '--evaluate', '--resume',
                 checkpoint, '--save-dir', os.path.join(work, 'direct'))
    # No random erasing: with the script's 0.5 the adapted model gained less than half as much here (docs/benchmarks.md).
    adapted = run('train_img_model_usl.py', *common, '--root', os.path.join(work, 'B'), '--resume', checkpoint,
                  '--max-epoch', str(args.usl_epochs), '--train-batch', str(args.usl_batch), '--num-instances', '4',
                  '--iters', str(args.iters), '--cluster-k1', str(args.cluster_k1), '--cluster-k2',
                  str(args.cluster_k2), '--random-erasing', '0', '--lr', str(args.usl_lr), '--stepsize',
                  str(args.usl_stepsize), '--eval-step', str(args.usl_epochs),
                  '--save-dir', os.path.join(work, 'usl_B'))
    upper = None
    if not args.skip_supervised_b:
        upper = run('train_img_model_xent.py', *supervised, '--root', os.path.join(work, 'B'),
                    '--save-dir', os.path.join(work, 'sup_B'))
    f1 = re.findall(r'^Pseudo labels against .* F1 ([\d.]+)$', adapted, re.M)
    clusters = re.findall(r'^Pseudo labels: (\d+) clusters, (\d+) outliers', adapted, re.M)
    (source_map, source_r1), (direct_map, direct_r1), (adapted_map, adapted_r1) = (
        results(source)[-1], results(direct)[-1], results(adapted)[-1])
    print(f'domain A -> B ({args.ids} training identities a domain, shift strength {args.shift}, {args.arch}, '
          f'{args.height}x{args.width}, {time.time() - tic:.0f} s):')
    print(f'  supervised on A, tested on A: mAP {source_map:.1f}%, Rank-1 {source_r1:.1f}%')
    print(f'  direct transfer to B:         mAP {direct_map:.1f}%, Rank-1 {direct_r1:.1f}%')
    print(f'  adapted on unlabelled B:      mAP {adapted_map:.1f}%, Rank-1 {adapted_r1:.1f}% '
          f'({args.usl_epochs} epochs of {args.iters} batches of {args.usl_batch}, --cluster-k1 {args.cluster_k1} '
          f'--cluster-k2 {args.cluster_k2})')
    if upper is not None:
        print(f'  supervised on B:              mAP {results(upper)[-1][0]:.1f}%, Rank-1 {results(upper)[-1][1]:.1f}%')
    print(f'  adaptation margin over direct transfer: {adapted_map - direct_map:+.1f} mAP, '
          f'{adapted_r1 - direct_r1:+.1f} Rank-1')
    print(f'  pseudo-label pairwise F1 by epoch: {", ".join(f1)}; clusters (outliers): '
          f'{", ".join(f"{c} ({o})" for c, o in clusters)}; true identities: {args.ids}')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--case', required=True, choices=('market', 'msmt', 'custom', 'adaptation'))
    parser.add_argument('--num', type=int, default=5000, help='custom: number of features')
    parser.add_argument('--dim', type=int, default=2048)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--ids', type=int, default=60, help='adaptation: identities per domain and split')
    parser.add_argument('--shift', type=float, default=0.5,
                        help='adaptation: domain B\'s shift strength (synthetic_data --domain-shift)')
    parser.add_argument('--arch', default='timm:resnet18', help='adaptation: the model')
    parser.add_argument('--height', type=int, default=64, help='adaptation: input height')
    parser.add_argument('--width', type=int, default=32, help='adaptation: input width')
    parser.add_argument('--workers', type=int, default=2, help='adaptation: data loading processes')
    parser.add_argument('--supervised-epochs', type=int, default=30)
    parser.add_argument('--supervised-batch', type=int, default=32)
    parser.add_argument('--skip-supervised-b', action='store_true', help='adaptation: leave out supervised on B')
    parser.add_argument('--usl-epochs', type=int, default=10)
    parser.add_argument('--usl-lr', type=float, default=1e-4,
                        help='adaptation: unsupervised learning rate (the script\'s default 3.5e-4 gains less here)')
    parser.add_argument('--usl-stepsize', type=int, default=5,
                        help='adaptation: unsupervised learning rate x0.1 every this many epochs')
    parser.add_argument('--usl-batch', type=int, default=64, help='adaptation: unsupervised batch (clusters x 4)')
    parser.add_argument('--iters', type=int, default=20, help='adaptation: batches per unsupervised epoch')
    parser.add_argument('--cluster-k1', type=int, default=15,
                        help='adaptation: k1 scaled to the generated data (about 10 images an identity, '
                             'Market-1501 has 17)')
    parser.add_argument('--cluster-k2', type=int, default=4)
    parser.add_argument('--seed', type=int, default=1, help='adaptation: the training scripts\' --seed')
    parser.add_argument('--work-dir', help='adaptation: where the data and runs go (default: a new temporary folder)')
    args = parser.parse_args()
    if args.case == 'adaptation':
        adaptation(args)
    else:
        clustering(SIZES.get(args.case, args.num), args.dim, args.device, torch.get_num_threads())


if __name__ == '__main__':
    main()
