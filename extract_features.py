"""Extract re-ID features of a folder or a list of images with a trained checkpoint.

    python extract_features.py --resume log/bot-market1501/best_model.pth.tar \\
        --input data/market1501/query --output query_feats.npz
    # a pretrained backbone before any re-ID training (zero-shot):
    python extract_features.py -a vit_small --pretrained-path vit_small_cfs_lup.pth --input crops --output f.npz

--input: a folder (every image below it, sorted by path) or a text file with one image path per
line. For a video checkpoint each item is a tracklet: every folder that holds images is one
(frames sorted by name), or in a list file one line of frame paths separated by spaces.
--output by extension: .npz (arrays 'features' (N, D) float32 and 'paths' (N,)), .h5 (datasets
'features' and 'paths'), or .npy (the features; the paths go to a .txt file beside it, one a line).
.npz and .h5 also record the checkpoint's metric ('metric'; an .h5 attribute) and, with
--camera-pattern, each item's camera id ('camids'), which search_gallery.py reads.
The features are those of the evaluation (feature_extractor.FeatureExtractor): rank them by
squared Euclidean distance. A model with a camera embedding takes each image's camera from its
file name with --camera-pattern (c3 -> camera id 2, as the benchmark parsers number them); without
it, or for a name without a match, the feature is the camera-agnostic one.
"""
import argparse
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import torch

import checkpoints
import models
import options
import utils
from dataset_loader import ImageReadError, read_image
from feature_extractor import FeatureExtractor, pretrained_checkpoint

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
OUTPUT_EXTENSIONS = ('.npz', '.h5', '.npy')


class InputError(Exception):
    """The input or output cannot be used as given."""


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument('--resume', metavar='CKPT', help='checkpoint of a training script')
    model.add_argument('-a', '--arch', type=options.arch_name, metavar='ARCH',
                       help='instead of a checkpoint: this model with --pretrained-path weights (zero-shot)')
    parser.add_argument('--pretrained-path', metavar='FILE', help='with -a: the pretrained weights file')
    parser.add_argument('--pretrained-grid', type=options.pretrained_grid, metavar='ROWSxCOLS',
                        help='with -a: patch grid of the file\'s position table when it cannot be recognised')
    parser.add_argument('--height', type=int, default=256, help='with -a: input height (default: %(default)s)')
    parser.add_argument('--width', type=int, default=128, help='with -a: input width (default: %(default)s)')
    parser.add_argument('--camera-pattern', metavar='REGEX',
                        help=r'camera number in a file name, e.g. c(\d+), for a model with a camera embedding')
    parser.add_argument('--input', required=True, metavar='DIR|LIST.txt', help='image folder or list file')
    parser.add_argument('--output', required=True, metavar='FILE', help='features file: .npz, .h5 or .npy')
    parser.add_argument('--batch-size', type=int, default=64, help='images per forward pass (default: %(default)s)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='cpu, cuda or cuda:N (default: %(default)s)')
    parser.add_argument('--amp', action='store_true', help='bfloat16 autocast on CUDA')
    parser.add_argument('--workers', type=int, default=4, help='image reading threads (default: %(default)s)')
    parser.add_argument('--skip-bad-images', action='store_true',
                        help='skip unreadable images (listed at the end) instead of stopping')
    return parser


def camera_id(name, pattern):
    """0-based camera id from a file name ('c3' -> 2 with the pattern c(\\d+)), or -1 (unknown)
    without a match."""
    match = pattern.search(os.path.basename(name))
    return int(match[1]) - 1 if match else -1


def is_image(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_inputs(path, video):
    """(items, names): images, or tracklets (lists of frame paths) for video, and one name per
    item to store with its feature (the image path; a tracklet's folder or list line)."""
    if os.path.isdir(path):
        folders = []
        for folder, subfolders, files in os.walk(path):
            subfolders.sort()
            images = [os.path.join(folder, name) for name in sorted(files) if is_image(name)]
            if images:
                folders.append((folder, images))
        if video:
            items, names = [images for _, images in folders], [folder for folder, _ in folders]
        else:
            items = names = [image for _, images in folders for image in images]
        if not items:
            raise InputError(f'--input {path}: no image ({", ".join(IMAGE_EXTENSIONS)}) in this folder')
        return items, names
    if not os.path.isfile(path):
        raise InputError(f'--input {path}: no such folder or file')
    with open(path) as f:
        lines = [line.strip() for line in f if line.strip() and not line.startswith('#')]
    if not lines:
        raise InputError(f'--input {path}: the list is empty (one image path per line)')
    return ([line.split() for line in lines] if video else lines), lines


def write_features(path, features, names, metric=None, camids=None):
    """metric: the checkpoint's dist_metric, for search_gallery.py (.npz / .h5 only); camids:
    (N,) camera ids, stored as 'camids' when given (.npz / .h5 only)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    extra = {} if camids is None else {'camids': np.asarray(camids, dtype=np.int64)}
    if path.endswith('.npz'):
        np.savez(path, features=features, paths=np.array(names), **extra,
                 **({} if metric is None else {'metric': np.array(metric)}))
    elif path.endswith('.h5'):
        with h5py.File(path, 'w') as f:
            f.create_dataset('features', data=features)
            f.create_dataset('paths', data=names, dtype=h5py.string_dtype())
            for key, values in extra.items():
                f.create_dataset(key, data=values)
            if metric is not None:
                f.attrs['metric'] = metric
    else:
        np.save(path, features)
        with open(path[:-len('.npy')] + '.txt', 'w') as f:
            f.writelines(name + '\n' for name in names)


def extract(args):
    if not args.output.endswith(OUTPUT_EXTENSIONS):
        raise InputError(f'--output {args.output}: use a .npz, .h5 or .npy file name')
    if torch.device(args.device).type == 'cuda' and not torch.cuda.is_available():
        raise InputError(f'--device {args.device}: CUDA is not available here; use --device cpu')
    if args.resume:
        checkpoint = checkpoints.load_checkpoint(args.resume, report=True)
    else:
        checkpoint = pretrained_checkpoint(args.arch, args.pretrained_path, args.height, args.width,
                                           args.pretrained_grid)
    extractor = FeatureExtractor(checkpoint, device=args.device, batch_size=args.batch_size, amp=args.amp)
    pattern = re.compile(args.camera_pattern) if args.camera_pattern else None
    if extractor.num_cameras:
        print(f'The model has a camera embedding ({extractor.num_cameras} cameras): '
              + (f'camera ids from the file names ({args.camera_pattern})' if pattern else
                 'no --camera-pattern, so every feature is the camera-agnostic one'))
    items, names = list_inputs(args.input, extractor.video)
    unit = 'tracklets' if extractor.video else 'images'
    print(f'Extracting {extractor.feat_dim}-d features of {len(items)} {unit} from {args.input} on {args.device}')

    def load(item):
        """The decoded image, or frames, of one item; or the ImageReadError of a bad one."""
        try:
            if extractor.video:
                return [read_image(frame) for frame in extractor.select_frames(item)]
            return read_image(item)
        except ImageReadError as error:
            if not args.skip_bad_images:
                raise ImageReadError(f'{error} Or pass --skip-bad-images to skip unreadable ones.') from error
            return error

    # Tracklets are batched so that about batch_size frames go through per chunk.
    per_chunk = max(1, args.batch_size // extractor.config['seq_len']) if extractor.video else args.batch_size
    features, kept, skipped, cameras = [], [], [], []
    progress, last_print = utils.Progress(len(items)), time.time()
    with ThreadPoolExecutor(max(1, args.workers)) as pool:
        def submit(first):
            return [pool.submit(load, item) for item in items[first:first + per_chunk]]

        futures = submit(0)
        for first in range(0, len(items), per_chunk):
            loaded = zip(names[first:first + per_chunk], [future.result() for future in futures])
            futures = submit(first + per_chunk)  # read the next chunk while this one is computed
            good = []
            for name, x in loaded:
                (skipped if isinstance(x, ImageReadError) else good).append((name, x))
            if good:
                camids = [camera_id(name, pattern) for name, _ in good] if pattern else None
                features.append(extractor([x for _, x in good], camids=camids if extractor.num_cameras else None))
                cameras += camids or []
                kept += [name for name, _ in good]
            progress.update(len(items[first:first + per_chunk]))
            if time.time() - last_print >= 5 or progress.done == len(items):
                print(f'Extracted {progress.done}/{len(items)} {unit}  {progress.rate:.1f} {unit}/s  '
                      f'ETA {progress.eta()}', flush=True)
                last_print = time.time()
    if skipped:
        print(f'Skipped {len(skipped)} unreadable {unit}:')
        for name, error in skipped:
            print(f'  {name}: {error}' if extractor.video else f'  {error}')
    if not kept:
        raise InputError(f'no readable {unit[:-1]} in --input {args.input}')
    features = np.concatenate(features)
    write_features(args.output, features, kept, extractor.config['dist_metric'], cameras if pattern else None)
    print(f'Wrote {features.shape[0]}-by-{features.shape[1]} features to {args.output}')


def main():
    parser = get_args_parser()
    args = parser.parse_args()
    if args.batch_size < 1:
        parser.error(f'--batch-size must be positive, got {args.batch_size}')
    if args.arch is None and (args.pretrained_path or args.pretrained_grid):
        parser.error('--pretrained-path and --pretrained-grid go with -a ARCH (a checkpoint records its own weights)')
    if args.camera_pattern:
        try:
            if re.compile(args.camera_pattern).groups < 1:
                parser.error(f'--camera-pattern {args.camera_pattern}: needs a group around the camera number')
        except re.error as error:
            parser.error(f'--camera-pattern {args.camera_pattern}: {error}')
    try:
        extract(args)
    except (InputError, ImageReadError, checkpoints.CheckpointError, models.PretrainedWeightsError) as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    main()
