"""What feeding a CLIP-ReID model ImageNet's mean/std instead of its own 0.5 costs (BoxMOT does), on generated data.

    python benchmarks/bench_clipreid_norm.py              # about 7 minutes on 2 shared CPU cores

A file in CLIP-ReID's published layout (tests/test_clipreid.py's fabrication: a CLIP ViT of width
128 and 2 blocks at the published 256x128 grid, random weights) is fine-tuned with
train_img_model_xent_htri.py --resume FILE on the demo's generated Market-1501-layout dataset
(synthetic_data.py's defaults) under its own normalisation, mean and std 0.5, as CLIP-ReID trains.
The trained checkpoint is then evaluated twice from FeatureExtractor features (the evaluation's):
with 0.5, and with ImageNet's mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), everything
else equal. Read it as what this small model trained briefly on generated data loses, not as a
claim about CLIP-ReID's published files on real data.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path[:0] = [REPO, os.path.join(REPO, 'tests')]
import checkpoints  # noqa: E402
import data_manager  # noqa: E402
import synthetic_data  # noqa: E402
from bench_distillation import measure  # noqa: E402
from test_clipreid import clipreid_file  # noqa: E402
from transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from weights import HALF  # noqa: E402

NORMALISATIONS = {"CLIP-ReID's own, mean/std 0.5": (HALF, HALF),
                  "ImageNet's, as BoxMOT feeds it": (IMAGENET_MEAN, IMAGENET_STD)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--epochs', type=int, default=15)
    parser.add_argument('--lr', default='1e-3')
    parser.add_argument('--seed', type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as root:
        synthetic_data.make_market1501(os.path.join(root, 'market1501'), seed=0)
        dataset = data_manager.init_dataset('market1501', root=root, verbose=False)
        start_file = os.path.join(root, 'ViT-B-16_60.pth')
        clipreid_file(start_file, seed=args.seed)
        save_dir = os.path.join(root, 'run')
        start = time.time()
        result = subprocess.run([sys.executable, os.path.join(REPO, 'train_img_model_xent_htri.py'), '--root', root,
                                 '--resume', start_file, '--max-epoch', str(args.epochs), '--seed', str(args.seed),
                                 '--workers', '0', '--lr', args.lr, '--stepsize', '0', '--print-freq', '1000',
                                 '--save-dir', save_dir], capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f'training failed:\n{result.stderr[-2000:]}')
        print(f'fine-tuned {args.epochs} epochs in {time.time() - start:.0f} s', flush=True)
        rows = []
        for name, path in (('as fabricated (random weights)', start_file),
                           (f'fine-tuned {args.epochs} epochs at 0.5', os.path.join(save_dir, 'best_model.pth.tar'))):
            checkpoint = checkpoints.load_checkpoint(path)
            for normalisation, (mean, std) in NORMALISATIONS.items():
                config = dict(checkpoint['model'], pixel_mean=list(mean), pixel_std=list(std))
                mAP, rank1, _ = measure(dict(checkpoint, model=config), dataset)
                rows.append((name, normalisation, mAP, rank1))

    print(f'\nCLIP-ReID layout (width 128, 2 blocks, 256x128), generated Market-1501 layout, lr {args.lr}, '
          f'seed {args.seed}\n')
    print(f'| {"model":<32} | {"input normalisation":<32} | mAP   | Rank-1 |')
    print(f'| {"-" * 32} | {"-" * 32} | ----- | ------ |')
    for name, normalisation, mAP, rank1 in rows:
        print(f'| {name:<32} | {normalisation:<32} | {mAP:5.1f} | {rank1:6.1f} |')


if __name__ == '__main__':
    main()
