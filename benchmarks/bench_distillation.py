"""Knowledge distillation on generated data: a teacher, then students with and without --teacher.

    python benchmarks/bench_distillation.py                   # about 20 minutes on 2 shared CPU cores
    python benchmarks/bench_distillation.py --epochs 60 --ablation

Trains train_img_model_xent_htri.py from random initialisation on the demo's generated
Market-1501-layout dataset (synthetic_data.py's defaults: 32 training identities), with CPU-sized
images (64x32) and the test suite's quick flags: first the teacher (default ResNet50), then the
student (default OSNet x0.25) for the same epochs and seed without a teacher and with --teacher
(and, with --ablation, with each distillation term alone). For every model it reports mAP and
Rank-1, and how closely its query-gallery distances follow the teacher's: the Spearman rank
correlation over all query-gallery pairs, from FeatureExtractor features (the evaluation's). The
untrained row is the students' initial weights (same seed). Read it as what these short runs
from random initialisation give, not as a claim about real data.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch
from scipy.stats import spearmanr

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.insert(0, REPO)
import data_manager  # noqa: E402
import model_config  # noqa: E402
import models  # noqa: E402
import synthetic_data  # noqa: E402
import utils  # noqa: E402
from eval_metrics import evaluate_features, pairwise_distance  # noqa: E402
from feature_extractor import FeatureExtractor  # noqa: E402

FLAGS = ['--height', '64', '--width', '32', '--no-pretrained', '--workers', '0', '--lr', '1e-3', '--stepsize', '0',
         '--print-freq', '1000']
ABLATION = {'student, logit term only': ['--kd-relation', '0'], 'student, relation term only': ['--kd-logit', '0']}


def train(root, save_dir, arch, epochs, seed, extra=()):
    """Run the triplet script; return (its best_model path, seconds)."""
    start = time.time()
    result = subprocess.run([sys.executable, os.path.join(REPO, 'train_img_model_xent_htri.py'), '--root', root,
                             *FLAGS, '-a', arch, '--max-epoch', str(epochs), '--seed', str(seed),
                             '--save-dir', save_dir, *extra], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f'{save_dir} failed:\n{result.stderr[-2000:]}')
    return os.path.join(save_dir, 'best_model.pth.tar'), time.time() - start


def untrained_checkpoint(arch, num_classes, seed):
    """The students' initial weights: the script seeds, then builds the model, before anything
    else draws random numbers."""
    utils.set_seed(seed)
    model = models.init_model(arch, num_classes, pretrained=False, height=64, width=32)
    return {'state_dict': model.state_dict(), 'model': dict(model_config.CONFIG_DEFAULTS, arch=arch, height=64, width=32)}


def measure(checkpoint, dataset):
    """(mAP, Rank-1, (num_query, num_gallery) distances) of a checkpoint, from FeatureExtractor features."""
    extractor = FeatureExtractor(checkpoint, batch_size=128)
    qf, gf = (torch.from_numpy(extractor([path for path, _, _ in split])) for split in (dataset.query, dataset.gallery))
    q_pids, q_camids = (torch.tensor([item[i] for item in dataset.query]) for i in (1, 2))
    g_pids, g_camids = (torch.tensor([item[i] for item in dataset.gallery]) for i in (1, 2))
    metric = extractor.config['dist_metric']
    result = evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, verbose=False, metric=metric)
    return 100 * result.mAP, 100 * float(result.cmc[0]), pairwise_distance(qf, gf, metric).numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--epochs', type=int, default=15, help='of the teacher and of every student')
    parser.add_argument('--teacher-arch', default='resnet50')
    parser.add_argument('--student-arch', default='osnet_x0_25')
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--ablation', action='store_true', help='also each distillation term alone')
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as root:
        synthetic_data.make_market1501(os.path.join(root, 'market1501'), seed=0)
        dataset = data_manager.init_dataset('market1501', root=root, verbose=False)
        teacher, seconds = train(root, os.path.join(root, 'teacher'), args.teacher_arch, args.epochs, args.seed)
        print(f'teacher trained in {seconds:.0f} s', flush=True)
        runs = {'student, no teacher': [], 'student, --teacher': ['--teacher', teacher],
                **({name: ['--teacher', teacher, *flags] for name, flags in ABLATION.items()} if args.ablation else {})}
        checkpoints = {f'teacher ({args.teacher_arch})': teacher,
                       f'untrained {args.student_arch}': untrained_checkpoint(args.student_arch,
                                                                               dataset.num_train_pids, args.seed)}
        for i, (name, flags) in enumerate(runs.items()):
            checkpoints[name], seconds = train(root, os.path.join(root, f'student{i}'), args.student_arch,
                                               args.epochs, args.seed, flags)
            print(f'{name} trained in {seconds:.0f} s', flush=True)
        rows, teacher_dist = [], None
        for name, checkpoint in checkpoints.items():
            mAP, rank1, dist = measure(checkpoint, dataset)
            teacher_dist = dist if teacher_dist is None else teacher_dist
            rows.append((name, mAP, rank1, spearmanr(dist.ravel(), teacher_dist.ravel()).statistic))

    pairs = teacher_dist.size
    print(f'\n{args.epochs} epochs, lr 1e-3, 64x32, random initialisation, seed {args.seed}; Spearman over '
          f'{teacher_dist.shape[0]} x {teacher_dist.shape[1]} = {pairs} query-gallery distances\n')
    print(f'| {"model":<30} | mAP   | Rank-1 | Spearman vs teacher |')
    print(f'| {"-" * 30} | ----- | ------ | ------------------- |')
    for name, mAP, rank1, rho in rows:
        print(f'| {name:<30} | {mAP:5.1f} | {rank1:6.1f} | {rho:19.3f} |')


if __name__ == '__main__':
    main()
