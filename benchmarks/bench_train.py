"""Training throughput: images/s of the input pipeline per loader worker and of the DataLoader,
of the train step alone (engine.train_step) for float32 / --amp / --channels-last / --compile,
and of feature extraction.

    python benchmarks/bench_train.py                       # CPU: loader rows, fp32 and channels_last steps
    python benchmarks/bench_train.py --device cuda --batch 64 --extract-batch 256 --workers 8 16
    python benchmarks/bench_train.py --device cuda --batch 64 --last-stride 1 --part step   # the BoT model
    python benchmarks/bench_train.py --part step --arch vit_small vit_base swin_tiny resnet50_ibn_a

The loader rows run in this one process, so they are what each DataLoader worker delivers:
N workers feed at most N times that. Images are Market-1501-sized JPEGs (128 x 64, written
here), trained at --height x --width. The workers hand over uint8 images (transforms.normalize
runs on the device); the 'before' row is the same work with the float conversion and
normalisation in the worker. The torchvision.io rows are for comparison: the loader keeps PIL
(torchvision deprecated its image decoders in 0.29 for TorchCodec; see docs/benchmarks.md).
The DataLoader rows are the real loader with N worker processes, after its first batch.
The step rows time the model of each --arch (default ResNet-50; transformers built for
--height x --width) on random uint8 batches already on the device (normalisation and the train
step; the loader is not involved), the extraction rows engine.extract_features the same way. Every row prints the command line that measures it alone.
"""
import argparse
import os
import shlex
import sys
import tempfile
import time
import warnings
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.io import decode_jpeg, read_file
from torchvision.transforms.v2 import Compose, Normalize, ToDtype

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import engine  # noqa: E402
import models  # noqa: E402
from dataset_loader import ImageDataset, read_image  # noqa: E402
from losses import ReIDLoss  # noqa: E402
from samplers import ShuffleSampler  # noqa: E402
from transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms, normalize  # noqa: E402

MODES = ('fp32', 'amp', 'channels_last', 'amp+channels_last', 'compile')


def write_jpegs(folder, count, seed=0):
    """`count` 128 x 64 JPEGs with the texture of pedestrian crops (smooth regions plus
    noise), at the size the real Market-1501 files have (a few KB)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (16, 8, 3), dtype=np.uint8)).resize((64, 128), Image.BILINEAR)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (128, 64, 3))
        path = os.path.join(folder, f'{i:05d}.jpg')
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def images_per_second(function, items, repeat=2):
    """Best of `repeat` passes of function over items, in items per second."""
    best = float('inf')
    for _ in range(repeat):
        start = time.perf_counter()
        for item in items:
            function(item)
        best = min(best, time.perf_counter() - start)
    return len(items) / best


def loader_rows(args):
    """(name, images/s) of one loader worker's work, each way of doing it."""
    train, _ = build_transforms(args.height, args.width, args.augment, args.random_erasing)
    # The worker's work before the uint8 pipeline: conversion and normalisation per image.
    float_train = Compose([train, ToDtype(torch.float32, scale=True), Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(folder, args.images)
        size = sum(os.path.getsize(p) for p in paths) / len(paths) / 1024
        print(f'{len(paths)} JPEGs of 128 x 64, {size:.1f} KB each on average; one process, one thread '
              f'(= one loader worker)')
        what = f'train transform ({args.augment}, erasing {args.random_erasing})'
        rows = [
            ('decode, PIL (dataset_loader.read_image)', images_per_second(read_image, paths)),
            ('decode, torchvision.io.decode_jpeg', images_per_second(lambda p: decode_jpeg(read_file(p)), paths)),
            (f'PIL decode + {what} -> uint8, seeded per sample (the loader)',
             images_per_second(ImageDataset([(p, 0, 0) for p in paths], train).__getitem__,
                               [(i, i) for i in range(len(paths))])),
            (f'PIL decode + {what} -> normalised float (before)',
             images_per_second(lambda p: float_train(read_image(p)), paths)),
            (f'torchvision.io decode + {what} on tensors -> uint8',
             images_per_second(lambda p: train(decode_jpeg(read_file(p))), paths)),
        ]
        torch.set_num_threads(threads)
        for workers in args.workers:
            rows.append((f'DataLoader, {workers} workers, batch 64, uint8', dataloader_rate(args, paths, workers)))
    return rows


def dataloader_rate(args, paths, workers, batches=40):
    """Images/s of a training DataLoader as the scripts build it (ImageDataset, the train
    transform, a sampler with item seeds, pinned memory on CUDA) in its steady state: the first
    batch, which waits for the workers to start, is not timed. The images are read from the
    page cache, as a warm epoch reads them."""
    train, _ = build_transforms(args.height, args.width, args.augment, args.random_erasing)
    items = [(paths[i % len(paths)], 0, 0) for i in range(64 * (batches + 1))]
    sampler = ShuffleSampler(len(items), batch_size=64, item_seeds=True)
    loader = DataLoader(ImageDataset(items, train), batch_size=64, sampler=sampler, num_workers=workers,
                        pin_memory=args.device == 'cuda', drop_last=True)
    batches_iter = iter(loader)
    next(batches_iter)
    start = time.perf_counter()
    count = sum(imgs.shape[0] for imgs, _, _ in batches_iter)
    return count / (time.perf_counter() - start)


def random_batch(args, batch, device, channels_last=False):
    """A (batch, 3, height, width) uint8 batch on the device, as the loader delivers it."""
    imgs = torch.randint(0, 256, (batch, 3, args.height, args.width), dtype=torch.uint8, device=device)
    return imgs.contiguous(memory_format=torch.channels_last) if channels_last else imgs


def build(args, arch, loss=('xent',)):
    """A randomly initialised `arch` for 751 identities at --height x --width."""
    last_stride = args.last_stride if arch in ('resnet50', 'resnet50m', 'resnet50_ibn_a') else 2
    return models.init_model(arch, num_classes=751, loss=loss, pretrained=False, last_stride=last_stride,
                             height=args.height, width=args.width)


def step_rate(args, arch, mode):
    """Images/s of the device's work per training batch (transforms.normalize, then
    engine.train_step: `arch`, xent + triplet, Adam) in `mode`."""
    device = torch.device(args.device)
    model = build(args, arch, {'xent', 'htri'})
    channels_last = 'channels_last' in mode
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format).train()
    train_model = torch.compile(model) if mode == 'compile' else model
    criterion = ReIDLoss(751, 0.1, margin=0.3).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    amp_dtype = engine.autocast_dtype(SimpleNamespace(amp='amp' in mode, amp_dtype=args.amp_dtype), device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    imgs = random_batch(args, args.batch, device, channels_last)
    pids = torch.arange(args.batch, device=device) // 4

    def step():
        return engine.train_step(train_model, criterion, optimizer, None, scaler, normalize(imgs), pids, amp_dtype)

    def run(steps):
        for _ in range(steps):
            loss = step()
        loss.item()  # wait for the device

    run(args.warmup)
    start = time.perf_counter()
    run(args.steps)
    rate = args.batch * args.steps / (time.perf_counter() - start)
    if device.type == 'cuda':
        print(f'train step {mode}: {host_syncs(step)} host syncs per step, peak GPU memory '
              f'{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB')
        torch.cuda.reset_peak_memory_stats(device)
    return rate


def host_syncs(function):
    """How many times function() makes the host wait for the GPU, counted by torch.cuda's sync
    debug mode (one warning per synchronizing call). A step should make none in float32 and
    bfloat16; a float16 GradScaler makes one, to check for inf before the optimizer step."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('warn')
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            function()
    finally:
        torch.cuda.set_sync_debug_mode('default')
    return sum('synchroniz' in str(warning.message) for warning in caught)


class RepeatedBatch:
    """Stands in for a test DataLoader: one uint8 batch `count` times, so that only the
    device's work is timed."""

    def __init__(self, imgs, count):
        self.batch = (imgs, torch.zeros(len(imgs), dtype=torch.long), torch.zeros(len(imgs), dtype=torch.long))
        self.count, self.dataset = count, range(len(imgs) * count)

    def __iter__(self):
        return iter([self.batch] * self.count)


def extract_rate(args, arch, mode):
    """Images/s of engine.extract_features (normalisation and the test feature of `arch`) in
    `mode` (fp32 or amp), on batches of --extract-batch."""
    device = torch.device(args.device)
    model = build(args, arch).to(device).eval()
    amp_dtype = engine.autocast_dtype(SimpleNamespace(amp=mode == 'amp', amp_dtype=args.amp_dtype), device)

    def run(batches):
        loader = RepeatedBatch(random_batch(args, args.extract_batch, device), batches)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            features = engine.extract_features(model, loader, device)[0]
        features.sum().item()  # wait for the device

    run(args.warmup)
    start = time.perf_counter()
    run(args.steps)
    return args.extract_batch * args.steps / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--part', choices=('all', 'loader', 'step', 'extract'), default='all')
    parser.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    parser.add_argument('--modes', nargs='+', choices=MODES, default=None,
                        help='train-step modes (default: fp32 channels_last on the CPU, all on CUDA)')
    parser.add_argument('--height', type=int, default=256)
    parser.add_argument('--width', type=int, default=128)
    parser.add_argument('--augment', default='translate', choices=('translate', 'pad-crop'))
    parser.add_argument('--random-erasing', type=float, default=0.0)
    parser.add_argument('--images', type=int, default=300, help='JPEGs for the loader rows')
    parser.add_argument('--workers', type=int, nargs='*', default=[2],
                        help='DataLoader rows with these numbers of workers (on a GPU machine: 8 16)')
    parser.add_argument('--batch', type=int, default=32, help='train-step batch')
    parser.add_argument('--steps', type=int, default=3, help='timed train steps')
    parser.add_argument('--warmup', type=int, default=1, help='untimed train steps first (compile: several)')
    parser.add_argument('--amp-dtype', choices=('bfloat16', 'float16'))
    parser.add_argument('--last-stride', type=int, default=2, choices=(1, 2), help='1: the BoT model')
    parser.add_argument('--extract-batch', type=int, default=32, help='feature-extraction batch (GPU: 256)')
    parser.add_argument('--arch', nargs='+', default=['resnet50'], type=models.check_arch,
                        help='models of the step and extraction rows (any -a name; default: resnet50)')
    args = parser.parse_args()
    modes = args.modes or (MODES if args.device == 'cuda' else ('fp32', 'channels_last'))
    base = ['python', 'benchmarks/bench_train.py', '--height', str(args.height), '--width', str(args.width),
            '--last-stride', str(args.last_stride)]
    rows = []
    if args.part in ('all', 'loader'):
        for name, rate in loader_rows(args):
            rows.append((f'loader: {name}', rate, base + ['--part', 'loader', '--images', str(args.images),
                                                         '--augment', args.augment, '--random-erasing',
                                                         str(args.random_erasing), '--device', args.device,
                                                         '--workers', *map(str, args.workers)]))
    if args.part in ('all', 'step'):
        name = torch.cuda.get_device_name() if args.device == 'cuda' else f'CPU, {torch.get_num_threads()} threads'
        for arch in args.arch:
            for mode in modes:
                if 'amp' in mode and args.device == 'cpu':
                    print(f'step {mode}: skipped, --amp is ignored on the CPU')
                    continue
                command = base + ['--part', 'step', '--arch', arch, '--device', args.device, '--modes', mode,
                                  '--batch', str(args.batch), '--steps', str(args.steps), '--warmup', str(args.warmup)]
                if args.amp_dtype:
                    command += ['--amp-dtype', args.amp_dtype]
                rows.append((f'train step: {arch} {mode} ({name}, batch {args.batch})', step_rate(args, arch, mode),
                             command))
    if args.part in ('all', 'extract'):
        for arch in args.arch:
            for mode in ('fp32', 'amp') if args.device == 'cuda' else ('fp32',):
                command = base + ['--part', 'extract', '--arch', arch, '--device', args.device, '--extract-batch',
                                  str(args.extract_batch), '--steps', str(args.steps), '--warmup', str(args.warmup)]
                rows.append((f'feature extraction: {arch} {mode} (batch {args.extract_batch})',
                             extract_rate(args, arch, mode), command))
    if not rows:
        return
    width = max(len(name) for name, _, _ in rows)
    print(f'\n{"what":<{width}}  images/s  command')
    for name, rate, command in rows:
        print(f'{name:<{width}}  {rate:8.1f}  {shlex.join(command)}')


if __name__ == '__main__':
    main()
