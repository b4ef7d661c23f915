"""What the four training scripts share: arguments, device, data, train loop, test loop, checkpoints.

A script chooses image or video data, its loss set and its criterion, and calls main(args, ...).
"""
import argparse
import datetime
import os
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader

import data_manager
import models
import rerank
import utils
from dataset_loader import ImageDataset, ImageReadError, VideoDataset, frames_of
from eval_metrics import NoValidQueryError, evaluate_blocks, evaluate_features
from samplers import RandomIdentitySampler
from transforms import build_transforms

RANKS = (1, 5, 10, 20)


class UsageError(Exception):
    """The arguments do not fit the data (found after the dataset is read)."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class ReIDArgumentParser(argparse.ArgumentParser):
    """ArgumentParser that also rejects invalid flag combinations, argparse-style."""

    def parse_args(self, args=None, namespace=None):
        args = super().parse_args(args, namespace)
        for flag, value in (('--height', args.height), ('--width', args.width),
                            ('--train-batch', args.train_batch), ('--test-batch', args.test_batch),
                            ('--max-epoch', args.max_epoch)):
            if value < 1:
                self.error(f'{flag} must be positive, got {value}')
        if args.eval_step == 0 or args.eval_step < -1:
            self.error(f'--eval-step must be a positive number of epochs, or -1 to test after '
                       f'training only; got {args.eval_step}')
        if args.stepsize < 0:
            self.error(f'--stepsize must be >= 0 (0 disables the decay), got {args.stepsize}')
        if args.resume and not os.path.isfile(args.resume):
            self.error(f'--resume {args.resume}: no such file')
        if args.pretrained_path and not os.path.isfile(args.pretrained_path):
            self.error(f'--pretrained-path {args.pretrained_path}: no such file')
        if hasattr(args, 'num_instances'):
            if args.num_instances < 1:
                self.error(f'--num-instances must be positive, got {args.num_instances}')
            if args.train_batch % args.num_instances:
                self.error(f'--train-batch {args.train_batch} must be divisible by --num-instances '
                           f'{args.num_instances} (each batch holds P identities x K instances)')
        try:
            rerank.check_parameters(args.k1, args.k2, args.lambda_value)
        except ValueError as error:
            self.error(str(error))
        if hasattr(args, 'seq_len') and args.seq_len < 1:
            self.error(f'--seq-len must be at least 1, got {args.seq_len}')
        return args


def get_args_parser(description, *, max_epoch, stepsize, test_batch, video=False, triplet=False):
    """The classic deep-person-reid flags, with the script's defaults."""
    parser = ReIDArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group('data')
    data.add_argument('-d', '--dataset', default='mars' if video else 'market1501',
                      choices=data_manager.get_names())
    data.add_argument('--root', default='data', help='datasets live in <root>/<dataset> (default: %(default)s)')
    data.add_argument('-j', '--workers', default=4, type=int, help='data loading processes (default: %(default)s)')
    data.add_argument('--height', type=int, default=256, help='image height (default: %(default)s)')
    data.add_argument('--width', type=int, default=128, help='image width (default: %(default)s)')

    optim = parser.add_argument_group('optimisation (Adam)')
    optim.add_argument('--max-epoch', default=max_epoch, type=int)
    optim.add_argument('--start-epoch', default=0, type=int, help='first epoch, when not resuming')
    optim.add_argument('--train-batch', default=32, type=int)
    optim.add_argument('--test-batch', default=test_batch, type=int,
                       help='tracklets per test batch' if video else 'images per test batch')
    optim.add_argument('--lr', '--learning-rate', default=3e-4, type=float)
    optim.add_argument('--stepsize', default=stepsize, type=int,
                       help='decay the learning rate every this many epochs; 0 disables (default: %(default)s)')
    optim.add_argument('--gamma', default=0.1, type=float, help='learning-rate decay factor')
    optim.add_argument('--weight-decay', default=5e-4, type=float)
    if triplet:
        optim.add_argument('--margin', type=float, default=0.3, help='triplet loss margin')
        optim.add_argument('--num-instances', type=int, default=4,
                           help='K, instances per identity in a batch (P = train-batch / K)')
        optim.add_argument('--htri-only', action='store_true', help='train with the triplet loss alone')

    arch = parser.add_argument_group('model')
    arch.add_argument('-a', '--arch', default='resnet50', choices=models.get_names())
    arch.add_argument('--no-pretrained', action='store_true',
                      help='random initialisation instead of ImageNet weights (no download)')
    arch.add_argument('--pretrained-path', metavar='PATH',
                      help='local torchvision ImageNet weights file, e.g. resnet50-0676ba61.pth')
    if video:
        arch.add_argument('--seq-len', type=int, default=15, help='frames per clip')
        arch.add_argument('--pool', default='avg', choices=('avg', 'max'), help='temporal pooling')
        arch.add_argument('--clip-train', action='store_true',
                          help='train on (B, seq-len, C, H, W) clips with temporal pooling; default: '
                               'decompose tracklets into frames and train on images')
        arch.add_argument('--test-sample', default='evenly', choices=('evenly', 'all'),
                          help='test on seq-len evenly spaced frames per tracklet, or on all of them')
        arch.add_argument('--test-chunk', type=int, default=64,
                          help='with --test-sample all: frames per forward pass (bounds memory)')

    misc = parser.add_argument_group('run')
    misc.add_argument('--print-freq', type=int, default=10, help='print every this many batches')
    misc.add_argument('--seed', type=int, default=1)
    misc.add_argument('--resume', default='', metavar='PATH', help='checkpoint to continue from or evaluate')
    misc.add_argument('--evaluate', action='store_true', help='evaluate only')
    misc.add_argument('--eval-step', type=int, default=-1,
                      help='test and checkpoint every this many epochs; -1: after training only')
    misc.add_argument('--save-dir', type=str, default='log')
    misc.add_argument('--use-cpu', action='store_true', help='run on the CPU even if CUDA is available')
    misc.add_argument('--gpu-devices', default='0', type=str, help='CUDA_VISIBLE_DEVICES, e.g. 0,1,2,3')
    misc.add_argument('--amp', action='store_true', help='bfloat16 autocast on CUDA (faster; ignored on CPU)')

    reranking = parser.add_argument_group('k-reciprocal re-ranking (Zhong et al., CVPR 2017)')
    reranking.add_argument('--rerank', action='store_true', help='also report results after re-ranking')
    reranking.add_argument('--k1', type=int, default=20)
    reranking.add_argument('--k2', type=int, default=6)
    reranking.add_argument('--lambda-value', type=float, default=0.3)
    return parser


def setup_device(args):
    """Pick the device and say which, once. --gpu-devices on a machine without CUDA falls back
    to the CPU with a note rather than stopping: the classic commands name --gpu-devices and
    should still run on a laptop."""
    if not args.use_cpu:
        os.environ['CUDA_VISIBLE_DEVICES'] = args.gpu_devices  # before CUDA is initialised
    if not args.use_cpu and torch.cuda.is_available():
        print(f'Currently using GPU {args.gpu_devices}')
        torch.backends.cudnn.benchmark = True
        return torch.device('cuda')
    if args.use_cpu:
        print('Currently using CPU')
    else:
        print(f'Currently using CPU (CUDA is not available here, so --gpu-devices {args.gpu_devices} '
              f'is ignored; pass --use-cpu to say so)')
    return torch.device('cpu')


def build_loaders(args, dataset, video, triplet, use_gpu):
    """(trainloader, queryloader, galleryloader).

    Video training decomposes tracklets into frames (image batches) unless --clip-train.
    Test loaders draw from their own generator, so testing never moves the training RNG.
    """
    transform_train, transform_test = build_transforms(args.height, args.width)
    clip_train = video and args.clip_train
    train_items = dataset.train if not video or clip_train else frames_of(dataset.train)
    if clip_train:
        train_set = VideoDataset(train_items, args.seq_len, 'random', transform_train, split='train')
    else:
        train_set = ImageDataset(train_items, transform_train, split='train')

    sampler = None
    if triplet:
        sampler = RandomIdentitySampler(train_items, num_instances=args.num_instances)
        identities_per_batch = args.train_batch // args.num_instances
        if len(sampler.pids) < identities_per_batch:
            raise UsageError(f'the training split has {len(sampler.pids)} identities, fewer than the '
                             f'{identities_per_batch} a batch needs (--train-batch {args.train_batch} / '
                             f'--num-instances {args.num_instances}); lower --train-batch')
    elif len(train_set) < args.train_batch:
        raise UsageError(f'the training split has {len(train_set)} samples, fewer than '
                         f'--train-batch {args.train_batch}')
    trainloader = DataLoader(train_set, batch_size=args.train_batch, shuffle=sampler is None,
                             sampler=sampler, num_workers=args.workers, pin_memory=use_gpu, drop_last=True)

    def test_loader(split):
        items = getattr(dataset, split)
        if not video:
            test_set, batch_size = ImageDataset(items, transform_test, split=split), args.test_batch
        elif args.test_sample == 'all':  # whole tracklets differ in length: one per batch
            test_set, batch_size = VideoDataset(items, args.seq_len, 'all', transform_test, split=split), 1
        else:
            test_set = VideoDataset(items, args.seq_len, 'evenly', transform_test, split=split)
            batch_size = args.test_batch
        return DataLoader(test_set, batch_size=batch_size, shuffle=False, num_workers=args.workers,
                          pin_memory=use_gpu, generator=torch.Generator())

    return trainloader, test_loader('query'), test_loader('gallery')


def train_one_epoch(epoch, model, criterion, optimizer, trainloader, device, args):
    """One pass over the training data; prints the classic 'Batch i/n  Loss val (avg)' lines."""
    model.train()
    losses = utils.AverageMeter()
    start, num_samples = time.time(), 0
    for batch_idx, (imgs, pids, _) in enumerate(trainloader):
        imgs, pids = imgs.to(device, non_blocking=True), pids.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp and device.type == 'cuda'):
            loss = criterion(model(imgs), pids)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f'the loss became {loss.item()} at epoch {epoch + 1}, batch {batch_idx + 1}/{len(trainloader)}. '
                f'Training stopped; checkpoints already written are kept. Check the learning rate '
                f'(--lr {args.lr}), and with --amp try without it.')
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.update(loss.item(), pids.size(0))
        num_samples += pids.size(0)
        if (batch_idx + 1) % args.print_freq == 0:
            print(f'Batch {batch_idx + 1}/{len(trainloader)}\t Loss {losses.val:.6f} ({losses.avg:.6f})')
    elapsed = time.time() - start
    print(f'Epoch {epoch + 1} done: loss {losses.avg:.6f}, {num_samples / elapsed:.1f} samples/s')
    return losses.avg


@torch.inference_mode()
def extract_features(model, loader, device, pool='avg', chunk=64):
    """Features of a test split: ((N, D) float32 on the device, pids (N,), camids (N,)).

    Batches are images (B, C, H, W) or clips (B, S, C, H, W), which the model pools itself; a
    whole tracklet (1, N, C, H, W) from sample='all' goes through in chunks of `chunk` frames
    and is pooled here, so memory does not grow with the tracklet length.
    """
    model.eval()
    features, pids, camids = [], [], []
    for imgs, batch_pids, batch_camids in loader:
        imgs = imgs.to(device, non_blocking=True)
        if getattr(loader.dataset, 'sample', None) == 'all':
            frame_features = torch.cat([model(frames) for frames in imgs[0].split(chunk)])
            features.append(models.temporal_pool(frame_features[None], pool))
        else:
            features.append(model(imgs))
        pids.append(batch_pids)
        camids.append(batch_camids)
    return torch.cat(features).float(), torch.cat(pids), torch.cat(camids)


def test(model, queryloader, galleryloader, device, args):
    """Extract features, rank the gallery for every query, print mAP and CMC (and, with --rerank,
    again after re-ranking); return (rank1, mAP) without re-ranking."""
    pool, chunk = getattr(args, 'pool', 'avg'), getattr(args, 'test_chunk', 64)
    start = time.time()
    qf, q_pids, q_camids = extract_features(model, queryloader, device, pool, chunk)
    print(f'Extracted features for query set, obtained {qf.shape[0]}-by-{qf.shape[1]} matrix')
    gf, g_pids, g_camids = extract_features(model, galleryloader, device, pool, chunk)
    print(f'Extracted features for gallery set, obtained {gf.shape[0]}-by-{gf.shape[1]} matrix')
    print(f'==> Feature extraction: {time.time() - start:.1f} s')
    print('Computing distance matrix')
    print('Computing CMC and mAP')
    # Squared Euclidean distances, computed and ranked block by block (eval_metrics).
    result = evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids)
    print_results(result)
    if args.rerank:
        print(f'Applying k-reciprocal re-ranking (k1={args.k1}, k2={args.k2}, lambda={args.lambda_value})')
        blocks = rerank.re_ranking_features(qf, gf, args.k1, args.k2, args.lambda_value, stream=True)
        print_results(evaluate_blocks(blocks, q_pids, g_pids, q_camids, g_camids, verbose=False),
                      title='Results with re-ranking')
    return result.cmc[0], result.mAP


def print_results(result, title='Results'):
    print(f'{title} ----------')
    print(f'mAP: {result.mAP:.1%}')
    print(f'mINP: {result.mINP:.1%}')
    print('CMC curve')
    for r in RANKS:
        if r <= len(result.cmc):
            print(f'Rank-{r:<3}: {result.cmc[r - 1]:.1%}')
    print('------------------')


def unwrap(model):
    return model.module if isinstance(model, nn.DataParallel) else model


def main(args, *, video, loss, build_criterion):
    """Run a script: train (and test every --eval-step epochs) or, with --evaluate, test only.
    Errors the user can fix are printed as one 'error:' line (exit status 1)."""
    os.makedirs(args.save_dir, exist_ok=True)
    log_name = 'log_test.txt' if args.evaluate else 'log_train.txt'
    with utils.tee_stdout(os.path.join(args.save_dir, log_name)):
        try:
            run(args, video=video, loss=loss, build_criterion=build_criterion)
        except (UsageError, data_manager.DatasetError, ImageReadError, utils.CheckpointError,
                models.PretrainedWeightsError, NonFiniteLossError, NoValidQueryError) as error:
            print(f'error: {error}', file=sys.stderr)
            sys.exit(1)


def run(args, *, video, loss, build_criterion):
    start_time = time.time()
    print(f'==========\nArgs:{args}\n==========')
    utils.set_seed(args.seed)
    device = setup_device(args)
    use_gpu = device.type == 'cuda'
    if args.amp and not use_gpu:
        print('Note: --amp only applies on CUDA; running in float32')

    print(f'Initializing dataset {args.dataset}')
    dataset = data_manager.init_dataset(args.dataset, root=args.root)
    trainloader, queryloader, galleryloader = build_loaders(args, dataset, video, 'htri' in loss, use_gpu)

    print(f'Initializing model: {args.arch}')
    # With --resume the checkpoint replaces the ImageNet weights: do not fetch them.
    model = models.init_model(args.arch, num_classes=dataset.num_train_pids, loss=loss,
                              pretrained=not (args.no_pretrained or args.resume),
                              pretrained_path=args.pretrained_path, pool=getattr(args, 'pool', 'avg'))
    print(f'Model size: {sum(p.numel() for p in model.parameters()) / 1e6:.5f}M')
    criterion = build_criterion(args, dataset.num_train_pids)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    # --stepsize 0 disables the decay: a constant schedule keeps the code path the same.
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.stepsize or 1,
                                                gamma=args.gamma if args.stepsize > 0 else 1.0)

    start_epoch, best_rank1, best_epoch = args.start_epoch, -float('inf'), 0
    if args.resume:
        checkpoint = utils.load_checkpoint(args.resume)
        skipped = utils.load_model_weights(model, checkpoint['state_dict'])
        print(f'Loaded checkpoint {args.resume}' + (f' (epoch {checkpoint["epoch"]})' if 'epoch' in checkpoint else ''))
        if skipped:
            print(f'Note: skipped the checkpoint\'s classifier ({", ".join(skipped)}): it was trained on '
                  f'another number of identities; features, and so evaluation, do not use it')
        if not args.evaluate:
            if 'optimizer' in checkpoint and not skipped:
                optimizer.load_state_dict(checkpoint['optimizer'])
                scheduler.load_state_dict(checkpoint['scheduler'])
                utils.set_rng_state(checkpoint['rng'])
                start_epoch = checkpoint['epoch']
                best_rank1, best_epoch = checkpoint['best_rank1'], checkpoint['best_epoch']
                print(f'Resuming training from epoch {start_epoch + 1}')
            else:
                print('Note: the checkpoint holds weights only (no optimizer state for this data); '
                      f'training starts from them at epoch {start_epoch + 1} with a fresh optimizer')

    model = model.to(device)
    if use_gpu and torch.cuda.device_count() > 1:
        model = nn.DataParallel(model)

    if args.evaluate:
        print('Evaluate only')
        test(model, queryloader, galleryloader, device, args)
        print(f'Finished. Total elapsed time (h:m:s): {datetime.timedelta(seconds=round(time.time() - start_time))}')
        return

    last_checkpoint = args.resume or None
    print('==> Start training')
    try:
        for epoch in range(start_epoch, args.max_epoch):
            print(f'==> Epoch {epoch + 1}/{args.max_epoch}  (lr {scheduler.get_last_lr()[0]:.2e})')
            train_one_epoch(epoch, model, criterion, optimizer, trainloader, device, args)
            scheduler.step()
            if (args.eval_step > 0 and (epoch + 1) % args.eval_step == 0) or epoch + 1 == args.max_epoch:
                print('==> Test')
                rank1, mAP = test(model, queryloader, galleryloader, device, args)
                is_best = rank1 > best_rank1
                if is_best:
                    best_rank1, best_epoch = rank1, epoch + 1
                last_checkpoint = os.path.join(args.save_dir, f'checkpoint_ep{epoch + 1}.pth.tar')
                utils.save_checkpoint({
                    'state_dict': unwrap(model).state_dict(), 'epoch': epoch + 1, 'arch': args.arch,
                    'rank1': float(rank1), 'mAP': float(mAP), 'best_rank1': float(best_rank1),
                    'best_epoch': best_epoch, 'optimizer': optimizer.state_dict(),
                    'scheduler': scheduler.state_dict(), 'rng': utils.rng_state(), 'args': vars(args),
                }, last_checkpoint)
                if is_best:
                    utils.copy_file_atomic(last_checkpoint, os.path.join(args.save_dir, 'best_model.pth.tar'))
    except KeyboardInterrupt:
        print(f'\nInterrupted. Last checkpoint: {last_checkpoint or "none written yet"}')
        sys.exit(130)

    print(f'==> Best Rank-1 {best_rank1:.1%}, achieved at epoch {best_epoch}')
    print(f'Finished. Total elapsed time (h:m:s): {datetime.timedelta(seconds=round(time.time() - start_time))}')
