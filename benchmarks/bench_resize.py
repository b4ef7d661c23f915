"""What a resize mismatch between training and deployment costs, on generated data.

    python benchmarks/bench_resize.py                 # about 15 minutes on 2 idle CPU cores

Trackers (BoxMOT and most others) resize crops with OpenCV's bilinear without antialiasing; the
classic pipeline resizes with PIL's antialiased bilinear. This trains the same model from the
same seed twice on the demo's generated Market-1501-layout dataset (128x64 crops with striped
clothes and pixel noise, resized to 64x32 so that the resize shrinks by 2), once with
`--resize-mode pil` and once with `--resize-mode tracker`, then evaluates each with both resizes:
the diagonal is a model deployed as trained, the off-diagonal the mismatch. It also prints the
mean cosine between the two resizes' features of the same query images. Short runs from random
initialisation: read the differences, not the levels.
"""
import argparse
import os
import tempfile

import numpy as np

import data_manager  # noqa: E402
import synthetic_data  # noqa: E402

# First: it puts the repository on sys.path; the same training flags and the same evaluation.
from bench_distillation import measure, train
from checkpoints import load_checkpoint  # noqa: E402
from feature_extractor import FeatureExtractor  # noqa: E402
from transforms import RESIZE_MODES  # noqa: E402


def with_resize(checkpoint, mode):
    """The checkpoint dict with its model config's resize mode replaced: the model deployed behind
    the other resize."""
    return {**checkpoint, 'model': {**checkpoint['model'], 'resize_mode': mode}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--epochs', type=int, default=30)
    parser.add_argument('--arch', default='resnet50')
    parser.add_argument('--seed', type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as root:
        synthetic_data.make_market1501(os.path.join(root, 'market1501'), seed=0)
        dataset = data_manager.init_dataset('market1501', root=root, verbose=False)
        queries = [path for path, _, _ in dataset.query]
        rows = []
        for trained in RESIZE_MODES:
            path, seconds = train(root, os.path.join(root, trained), args.arch, args.epochs, args.seed,
                                  ['--resize-mode', trained])
            print(f'--resize-mode {trained}: trained in {seconds:.0f} s', flush=True)
            checkpoint = load_checkpoint(path)
            features = {}
            for deployed in RESIZE_MODES:
                mAP, rank1, _ = measure(with_resize(checkpoint, deployed), dataset)
                rows.append((trained, deployed, mAP, rank1))
                features[deployed] = FeatureExtractor(with_resize(checkpoint, deployed))(queries)
            cosines = np.sum(features['pil'] * features['tracker'], axis=1) / (
                np.linalg.norm(features['pil'], axis=1) * np.linalg.norm(features['tracker'], axis=1))
            print(f'  cosine between the two resizes\' query features: mean {cosines.mean():.4f}, '
                  f'min {cosines.min():.4f}', flush=True)

    print(f'\n{args.arch}, {args.epochs} epochs, 64x32 from 128x64 crops, random initialisation, seed {args.seed}\n')
    print('| trained with | evaluated with | mAP   | Rank-1 |')
    print('| ------------ | -------------- | ----- | ------ |')
    for trained, deployed, mAP, rank1 in rows:
        print(f'| {trained:<12} | {deployed:<14} | {mAP:5.1f} | {rank1:6.1f} |')


if __name__ == '__main__':
    main()
