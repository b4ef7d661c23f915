"""What the training scripts share: device, train loop, test loop, checkpoints.

A script chooses image or video data, its loss set and its criterion, and calls main(args, ...);
its command line comes from options.py, its data loaders from dataset_loader (load_datasets, build_loaders).
The unsupervised script also passes the step that makes each epoch's pseudo-labelled loader.
"""
import contextlib
import datetime
import os
import sys
import time

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Subset

import camera_transitions
import checkpoints
import data_manager
import distributed
import model_config
import models
import options
import rerank
import solver
import utils
import visualize
import weights
from dataset_loader import ImageReadError, build_loaders, check_train_batch, load_datasets
from eval_metrics import NoValidQueryError, evaluate_blocks, evaluate_features, format_verification, pairwise_distance
from losses import DistillationLoss
from options import UsageError
from transforms import normalize

RANKS = (1, 5, 10, 20)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def setup_device(args):
    """Pick the device and say which, once. --gpu-devices on a machine without CUDA falls back
    to the CPU with a note rather than stopping: the classic commands name --gpu-devices and
    should still run on a laptop. Under torchrun each process takes the GPU of its LOCAL_RANK
    and --gpu-devices is not used (torchrun's processes see every GPU)."""
    if args.distributed:
        if not args.use_cpu and torch.cuda.is_available():
            print(f'Distributed: {args.world_size} processes (NCCL), one GPU each')
            torch.backends.cudnn.benchmark = True
            return torch.device('cuda', args.local_rank)
        print(f'Distributed: {args.world_size} processes on the CPU (gloo)')
        return torch.device('cpu')
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


def autocast_dtype(args, device):
    """The --amp autocast dtype on this device, or None for float32.

    --amp-dtype chooses; by default bfloat16 where the GPU supports it (Ampere and newer: no
    GradScaler, no extra host sync), else float16 with a GradScaler. On the CPU --amp is
    ignored (run() says so): CPU autocast is slower than float32 on most CPUs.
    """
    if not args.amp or device.type != 'cuda':
        return None
    if args.amp_dtype:
        return getattr(torch, args.amp_dtype)
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def train_step(model, criterion, optimizer, center_optimizer, scaler, imgs, pids, amp_dtype, camids=None,
               frozen=(), distillation=None):
    """One optimizer step on a batch; returns the loss (a 0-d tensor on the device, not synced).
    camids (B,) reach models with a camera embedding (the others ignore them); the `frozen`
    parameters (frozen_backbone) lose their gradient before the step, so it leaves them alone.
    With distillation (--teacher: a losses.DistillationLoss), the frozen teacher reads the same
    batch and the distillation terms are added to the loss.

    The GradScaler (enabled for float16 only) skips the step when the scaled gradients
    overflow, which is normal in float16 and is not an error; a non-finite loss is (the losses
    run in float32), and train_one_epoch stops on it. With the center loss, its centers take
    their own SGD step, on a gradient rescaled by 1 / --center-loss so that the weight scales
    the term for the network only (as the BoT reference does).
    """
    with torch.autocast(imgs.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        outputs = model(imgs, camids)
        loss = criterion(outputs, pids)
        if distillation is not None:
            loss = loss + distillation(outputs, imgs, camids)
    optimizer.zero_grad(set_to_none=True)
    if center_optimizer is not None:
        center_optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    for param in frozen:
        param.grad = None
    scaler.step(optimizer)
    if center_optimizer is not None:
        scaler.unscale_(center_optimizer)
        criterion.center.centers.grad.mul_(1 / criterion.center_weight)
        scaler.step(center_optimizer)
    scaler.update()
    return loss.detach()


def frozen_backbone(model, epoch, args):
    """During the first --fixbase-epochs epochs, the backbone (pretrained; `backbone`, or `base`
    for the 2018 models) is frozen as torchreid freezes it: in eval mode, so its BatchNorm
    statistics stay, and its parameters are returned for train_step to leave alone. The new
    layers (classifier, neck, pooling, camera embedding) train. Afterwards: no parameter."""
    if epoch >= args.fixbase_epochs:
        return []
    plain = getattr(model, '_orig_mod', model)  # under torch.compile
    while hasattr(plain, 'module'):  # under DDP / DataParallel / BatchNormGroups
        plain = plain.module
    trunk = plain.backbone if hasattr(plain, 'backbone') else plain.base
    trunk.eval()
    return list(trunk.parameters())


def train_one_epoch(epoch, model, criterion, optimizer, center_optimizer, scaler, trainloader, device, args,
                    distillation=None):
    """One pass over the training data; prints the classic 'Batch i/n  Loss val (avg)' lines
    (the loss of the global batch under DDP). distillation: see train_step.

    The loss stays on the device and the host reads it once per printed line (every
    --print-freq batches and at the end), so the GPU is never waited for in between. The
    first non-finite loss is remembered on the device too and reported at that read with
    its batch; the steps taken after it are lost with the run (checkpoints already written
    are kept).
    """
    model.train()
    frozen = frozen_backbone(model, epoch, args)
    if frozen:
        print(f'Backbone frozen (--fixbase-epochs {args.fixbase_epochs}): training the new layers only')
    trainloader.sampler.set_epoch(epoch)
    amp_dtype = autocast_dtype(args, device)
    channels_last = torch.channels_last if args.channels_last else torch.preserve_format
    loss_sum = torch.zeros((), device=device)
    first_bad = torch.full((), len(trainloader), device=device)  # batch index; len: none yet
    world_size = distributed.get_world_size()
    progress = utils.Progress(len(trainloader) * trainloader.batch_size * world_size)
    for batch_idx, (imgs, pids, camids) in enumerate(trainloader):
        imgs, pids = imgs.to(device, non_blocking=True), pids.to(device, non_blocking=True)
        # A teacher may have a camera embedding of its own (it decides whether to read them).
        camids = camids.to(device, non_blocking=True) if args.num_cameras or distillation is not None else None
        if imgs.dim() == 4:
            imgs = imgs.contiguous(memory_format=channels_last)
        imgs = normalize(imgs, args.pixel_mean, args.pixel_std)
        loss = train_step(model, criterion, optimizer, center_optimizer, scaler, imgs, pids, amp_dtype, camids,
                          frozen, distillation)
        loss_sum += loss
        first_bad = torch.where(torch.isfinite(loss) | (first_bad < batch_idx), first_bad, batch_idx)
        progress.update(pids.size(0) * world_size)
        if (batch_idx + 1) % args.print_freq == 0 or batch_idx + 1 == len(trainloader):
            val, avg = read_loss(loss, loss_sum / (batch_idx + 1), first_bad, epoch, trainloader, args)
            if (batch_idx + 1) % args.print_freq == 0:
                run_left = progress.total - progress.done + (args.max_epoch - epoch - 1) * progress.total
                print(f'Batch {batch_idx + 1}/{len(trainloader)}\t Loss {val:.6f} ({avg:.6f})\t '
                      f'{progress.rate:.1f} img/s, ETA epoch {progress.eta()}, run {progress.eta(run_left)}')
    memory = ''
    if device.type == 'cuda':
        memory = f', peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB'
    print(f'Epoch {epoch + 1} done: loss {avg:.6f}, {progress.rate:.1f} samples/s, '
          f'{time.time() - progress.start:.1f} s{memory}')
    return avg, progress.rate


def read_loss(loss, mean_loss, first_bad, epoch, trainloader, args):
    """(latest, mean) loss as floats, averaged over the ranks: the one host sync of a printed
    line. Raises NonFiniteLossError if some rank saw a non-finite loss since the epoch began."""
    stats = torch.stack([loss, mean_loss])
    if distributed.is_distributed():
        torch.distributed.all_reduce(stats)
        torch.distributed.all_reduce(first_bad, op=torch.distributed.ReduceOp.MIN)
        stats /= distributed.get_world_size()
    bad = int(first_bad)
    if bad < len(trainloader):
        raise NonFiniteLossError(
            f'the loss became {"nan" if stats.isnan().any() else "inf"} at epoch {epoch + 1}, batch '
            f'{bad + 1}/{len(trainloader)}. Training stopped; checkpoints already written are kept. '
            f'Check the learning rate (--lr {args.lr}), and with --amp try without it.')
    val, avg = stats.tolist()
    return val, avg


@torch.inference_mode()
def extract_features(model, loader, device, flip=False, pool='avg', chunk=64, split='', every=10.0,
                     pixel_mean=None, pixel_std=None, cameras=True):
    """Test features of a split: ((N, D) float32 on the device, pids (N,), camids (N,)).

    Images are normalised with pixel_mean / pixel_std (default ImageNet's). A model with a camera
    embedding reads each sample's camid when `cameras` (an id outside its training cameras counts
    as unknown), and gives the camera-agnostic feature otherwise.

    A long split prints a progress line (done, rate, time left) every `every` seconds.

    Each image goes through models.TestFeatureNet (the model's test feature, averaged with its
    mirror image's with flip). Clips (B, S, C, H, W) are run as B x S frames and pooled per
    clip; a whole tracklet (1, N, C, H, W) from sample='all' goes through in chunks of `chunk`
    frames, so memory does not grow with the tracklet length. Features are not normalised:
    the cosine metric normalises them.
    """
    net = models.TestFeatureNet(model, flip=flip).eval()
    dataset = loader.dataset.dataset if isinstance(loader.dataset, Subset) else loader.dataset
    whole_tracklets = getattr(dataset, 'sample', None) == 'all'
    features, pids, camids = [], [], []
    progress, last_print = utils.Progress(len(loader.dataset)), time.time()
    for imgs, batch_pids, batch_camids in loader:
        imgs = normalize(imgs.to(device, non_blocking=True), pixel_mean, pixel_std)
        cams = batch_camids.to(device) if model.num_cameras and cameras else None
        if imgs.dim() == 5:
            frames = imgs.flatten(0, 1)
            step = chunk if whole_tracklets else len(frames)
            parts = frames.split(step)
            part_cams = [None] * len(parts) if cams is None else cams.repeat_interleave(imgs.shape[1]).split(step)
            frame_features = torch.cat([net(part, cam) for part, cam in zip(parts, part_cams)])
            features.append(models.temporal_pool(frame_features.view(imgs.shape[0], imgs.shape[1], -1), pool))
        else:
            features.append(net(imgs, cams))
        pids.append(batch_pids)
        camids.append(batch_camids)
        progress.update(len(batch_pids))
        if time.time() - last_print >= every and progress.done < progress.total:
            print(f'  {split} features: {progress.done}/{progress.total}, {progress.rate:.1f}/s, ETA {progress.eta()}')
            last_print = time.time()
    return torch.cat(features).float(), torch.cat(pids), torch.cat(camids)


def extract_split(model, loader, device, args, split, cameras=True):
    """extract_features under --amp's autocast, in float32 after it; under DDP every rank
    extracts its contiguous shard and receives the whole split back in dataset order."""
    pool, chunk = getattr(args, 'pool', 'avg'), getattr(args, 'test_chunk', 64)
    amp_dtype = autocast_dtype(args, device)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        features, pids, camids = extract_features(model, loader, device, args.flip_test, pool, chunk, split,
                                                  pixel_mean=args.pixel_mean, pixel_std=args.pixel_std,
                                                  cameras=cameras)
    if not distributed.is_distributed():
        return features, pids, camids
    # NCCL gathers device tensors only: ids travel on the device too.
    return tuple(distributed.gather_in_order(t.to(device)).to(t.device) for t in (features, pids, camids))


def tracker_thresholds(result, qf, gf, q_pids, g_pids, q_camids, g_camids, args):
    """{fpr: cosine distance} for trackers, which compare L2-normalised features by cosine
    distance (1 - cos; BoxMOT and DeepSORT normalise whatever the model gives): the distance at
    which a false positive rate fpr of the different-person pairs would be accepted as the same
    person. The verification thresholds of a cosine evaluation are these; a Euclidean one is
    verified again by cosine."""
    if args.dist_metric != 'cosine':
        result = evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, metric='cosine', verbose=False)
    return {fpr: threshold for fpr, _, threshold in result.verification}


def test(model, target, device, args, visrank_dir):
    """Extract features, rank the gallery for every query by --dist-metric, print mAP, CMC and
    the verification figures (and, with --rerank, again after re-ranking), and the cosine
    thresholds for trackers; with --st, cosine alone and fused with st-ReID's transit times
    side by side; with --visrank, write the ranked-list pictures to visrank_dir.
    Returns (rank1, mAP, tracker thresholds) without re-ranking. Under DDP all ranks extract and
    rank 0 alone evaluates; the others return (None, None, None)."""
    start = time.time()
    # A camera embedding knows the cameras of the one dataset it was trained on; on any other
    # target (or after training on several) the features are the camera-agnostic ones.
    cameras = model.num_cameras > 0 and args.dataset == [target.dataset.name]
    if model.num_cameras and not cameras:
        print(f'Note: the camera embedding was trained on {" + ".join(args.dataset)}\'s cameras: '
              f'{target.dataset.name} is evaluated with camera-agnostic features')
    qf, q_pids, q_camids = extract_split(model, target.queryloader, device, args, 'query', cameras)
    print(f'Extracted features for query set, obtained {qf.shape[0]}-by-{qf.shape[1]} matrix')
    gf, g_pids, g_camids = extract_split(model, target.galleryloader, device, args, 'gallery', cameras)
    print(f'Extracted features for gallery set, obtained {gf.shape[0]}-by-{gf.shape[1]} matrix')
    print(f'==> Feature extraction: {time.time() - start:.1f} s')
    if distributed.get_rank() != 0:
        return None, None, None
    print(f'Computing distance matrix ({args.dist_metric})')
    print('Computing CMC and mAP')
    # Distances are computed and ranked block by block (eval_metrics).
    result = evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, metric=args.dist_metric)
    print_results(result)
    thresholds = tracker_thresholds(result, qf, gf, q_pids, g_pids, q_camids, g_camids, args)
    if thresholds:
        print('Cosine-distance thresholds for trackers (same person if distance <= threshold): '
              + ', '.join(f'FPR {fpr:.0e}: {t:.4f}' for fpr, t in thresholds.items()))
    if getattr(args, 'st', False):
        camera_transitions.evaluate_st(target.dataset, qf, gf, q_pids, g_pids, q_camids, g_camids)
    if args.visrank:
        num = min(args.visrank_queries or len(qf), len(qf))
        dist = pairwise_distance(qf[:num], gf, args.dist_metric).cpu()
        written = visualize.visrank(dist, range(num), target.dataset.query, target.dataset.gallery, q_pids, g_pids,
                                    q_camids, g_camids, result.ap, visrank_dir, topk=args.visrank)
        print(f'Ranked lists of {num} queries written to {visrank_dir} (worst AP first: {os.path.basename(written[-1])})')
    if args.rerank:
        print(f'Applying k-reciprocal re-ranking (k1={args.k1}, k2={args.k2}, lambda={args.lambda_value})')
        if args.dist_metric == 'cosine':  # squared distances of unit vectors rank as cosine distances
            qf, gf = torch.nn.functional.normalize(qf, dim=1), torch.nn.functional.normalize(gf, dim=1)
        blocks = rerank.re_ranking_features(qf, gf, args.k1, args.k2, args.lambda_value, stream=True)
        print_results(evaluate_blocks(blocks, q_pids, g_pids, q_camids, g_camids, verbose=False),
                      title='Results with re-ranking')
    return float(result.cmc[0]), float(result.mAP), thresholds


def test_targets(model, targets, device, args):
    """Test on each target in turn, one labelled result block each; return the first one's
    (rank1, mAP, tracker thresholds), which picks the best model."""
    results = []
    for target in targets:
        name = target.dataset.name
        if len(targets) > 1:
            print(f'==> Target {name}')
        visrank_dir = os.path.join(args.save_dir, 'visrank' if len(targets) == 1 else f'visrank_{name}')
        results.append(test(model, target, device, args, visrank_dir))
    return results[0]


def print_results(result, title='Results'):
    print(f'{title} ----------')
    print(f'mAP: {result.mAP:.1%}')
    print(f'mINP: {result.mINP:.1%}')
    print('CMC curve')
    for r in RANKS:
        if r <= len(result.cmc):
            print(f'Rank-{r:<3}: {result.cmc[r - 1]:.1%}')
    for line in format_verification(result):
        print(line)
    print('------------------')


def main(args, *, video, loss, build_criterion, unsupervised=None):
    """Run a script: train (and test every --eval-step epochs) or, with --evaluate, test only.
    Errors the user can fix are printed as one 'error:' line (exit status 1).

    unsupervised: for training without labels, a callable unsupervised(args, train dataset,
    use_gpu) returning the step whose epoch_loader(epoch, model, criterion, device) gives each
    epoch's training loader (pseudo labels); the model then has no classifier and the training
    split's labels are not read here.

    Under torchrun every process runs this; rank 0 alone prints, logs and writes checkpoints.
    """
    distributed.init_distributed_mode(args)
    os.makedirs(args.save_dir, exist_ok=True)
    log_name = 'log_test.txt' if args.evaluate else 'log_train.txt'
    if args.rank == 0:
        output = utils.tee_stdout(os.path.join(args.save_dir, log_name))
    else:
        output = contextlib.redirect_stdout(open(os.devnull, 'w'))
    with output:
        try:
            run(args, video=video, loss=loss, build_criterion=build_criterion, unsupervised=unsupervised)
        except (UsageError, data_manager.DatasetError, ImageReadError, checkpoints.CheckpointError,
                models.PretrainedWeightsError, NonFiniteLossError, NoValidQueryError) as error:
            print(f'error: {error}', file=sys.stderr)
            sys.exit(1)
        finally:
            if args.distributed:
                torch.distributed.destroy_process_group()


def wrap_for_training(model, device, args):
    """The module the train loop calls: `model` (already on the device) with --sync-bn's
    SyncBatchNorm, in DistributedDataParallel under torchrun or DataParallel over several
    visible GPUs, then torch.compile'd with --compile. `model` itself stays the plain module
    that checkpoints save (plain key names) and tests run."""
    if args.sync_bn and args.distributed:
        model = distributed.convert_sync_batchnorm(model, device)
    if getattr(args, 'bn_group', 0):
        model = models.BatchNormGroups(model, args.bn_group)
    if args.distributed:
        # --htri-only leaves the classifier out of the loss: DDP must not wait for its gradient.
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None,
                                          find_unused_parameters=getattr(args, 'htri_only', False))
    elif device.type == 'cuda' and torch.cuda.device_count() > 1:
        wrapped = nn.DataParallel(model)
    else:
        wrapped = model
    return torch.compile(wrapped) if args.compile else wrapped


def build_model(args, num_classes, loss):
    """The model of the resolved flags, with its pretrained weights (none with --resume: the
    checkpoint replaces them, so nothing is fetched). Fills in what the weights decide: the pixel
    mean/std when neither a flag nor the checkpoint gave them, and --recipe vit's learning rate."""
    model = models.init_model(args.arch, num_classes=num_classes, loss=loss,
                              pretrained=not (args.no_pretrained or args.resume),
                              pretrained_path=None if args.resume else args.pretrained_path,
                              pool=getattr(args, 'pool', 'avg'), last_stride=args.last_stride,
                              neck='bnneck' if args.bnneck else 'none', neck_feat=args.neck_feat,
                              global_pool=args.global_pool, height=args.height, width=args.width,
                              patch_stride=args.patch_stride, num_cameras=args.num_cameras,
                              camera_weight=args.camera_embedding_weight, drop_path=args.drop_path,
                              pretrained_grid=args.pretrained_grid, arch_options=args.arch_options)
    report = model.pretrained_report
    if report is not None:
        print(report)
    if args.pixel_mean is None or args.pixel_std is None:
        default = (report.pixel_mean, report.pixel_std) if report else (model_config.CONFIG_DEFAULTS['pixel_mean'],
                                                                        model_config.CONFIG_DEFAULTS['pixel_std'])
        args.pixel_mean, args.pixel_std = args.pixel_mean or default[0], args.pixel_std or default[1]
    if args.lr is None:
        person = report is not None and report.person_pretrained
        args.lr = options.VIT_LR['person' if person else 'imagenet']
        print(f'--recipe {args.recipe}: --lr {args.lr} (' + ('person-pretrained' if person else 'ImageNet or no')
              + ' weights)')
    return model


def build_distillation(args, num_classes, device):
    """The --teacher objective: losses.DistillationLoss around the frozen teacher of the
    checkpoint args.teacher (checkpoints.load_teacher) on `device`, which re-normalises and resizes
    the student's batch for itself. Says what it is; raises UsageError when --kd-logit needs
    class probabilities over the student's num_classes identities and the teacher's classifier
    has another number."""
    try:
        teacher = checkpoints.load_teacher(args.teacher, args.pixel_mean, args.pixel_std, args.dataset, device)
    except checkpoints.CheckpointError as error:
        raise UsageError(f'--teacher: {error}') from error
    print(teacher.describe(args.height, args.width))
    if args.kd_logit > 0 and teacher.num_classes != num_classes:
        raise UsageError(f'--kd-logit needs a teacher trained on the same identities: the teacher {args.teacher} '
                         f'classifies {teacher.num_classes} identities, the training data has {num_classes}. '
                         f'Distil its feature similarities only with --kd-logit 0')
    print(f'Distillation: --kd-logit {args.kd_logit} (T^2 KL at --kd-temp {args.kd_temp}), --kd-relation '
          f'{args.kd_relation} (batch cosine similarities)')
    return DistillationLoss(teacher, args.kd_logit, args.kd_temp, args.kd_relation)


def run(args, *, video, loss, build_criterion, unsupervised=None):
    start_time = time.time()
    print(f'==========\nArgs:{args}\n==========')
    options.print_recipe(args)
    utils.set_seed(args.seed)
    device = setup_device(args)
    use_gpu = device.type == 'cuda'
    if args.amp and not use_gpu:
        print('Note: --amp only applies on CUDA; running in float32')

    checkpoint = checkpoints.resolve_resume(args)
    trained = None
    try:
        if checkpoint is None and args.pretrained_path:
            trained = weights.trained_file_checkpoint(args.pretrained_path)
        taken = options.resolve_model_config(args, checkpoint, trained)
    except (ValueError, weights.PretrainedWeightsError) as error:
        raise UsageError(str(error)) from error
    if taken:
        print(f'From the {"checkpoint" if trained is None else "trained file " + args.pretrained_path}: '
              + ', '.join(f'{k} {v}' for k, v in taken))

    print(f'Initializing dataset {" + ".join(args.dataset)}')
    dataset, test_sets = load_datasets(args)
    if getattr(args, 'st', False):
        for test_set in test_sets:  # a dataset without frame numbers stops here, not after training
            camera_transitions.frame_times(test_set)
    if unsupervised is None:
        check_train_batch(args, dataset, video, 'htri' in loss)  # a bad --train-batch stops before the model is built
        num_classes = dataset.num_train_pids
    else:
        unsupervised, num_classes = unsupervised(args, dataset, use_gpu), 0  # no classifier

    if args.camera_embedding and not args.num_cameras:
        if dataset.num_train_cams < 2:
            raise UsageError(f'--camera-embedding needs training data from several cameras; {" + ".join(args.dataset)} '
                             f'has {dataset.num_train_cams} (a folder without camera ids counts as one)')
        args.num_cameras = 1 + max(camid for _, _, camid in dataset.train)  # one vector per camera id

    if args.lr is None and checkpoint is not None and checkpoint.get('args', {}).get('lr'):
        args.lr = checkpoint['args']['lr']  # --recipe vit's choice, made when the run started
    print(f'Initializing model: {args.arch}')
    # The center loss and distillation read the features too: the model then returns (logits, features).
    outputs = loss | ({'cent'} if args.center_loss > 0 else set()) | ({'kd'} if args.teacher else set())
    model = build_model(args, num_classes, outputs)
    print(f'Model size: {sum(p.numel() for p in model.parameters()) / 1e6:.5f}M')
    trainloader, targets = build_loaders(args, dataset, test_sets, video, 'htri' in loss, use_gpu,
                                         train=unsupervised is None)
    criterion = build_criterion(args, num_classes, model.feat_dim).to(device)
    distillation = None
    if args.teacher and not args.evaluate:
        distillation = build_distillation(args, num_classes, device)
    optimizer = solver.build_optimizer(solver.param_groups(model, args.bias_lr_factor), args.optim, args.lr,
                                       args.weight_decay, args.momentum)
    center_optimizer = None
    if criterion.center is not None:
        center_optimizer = torch.optim.SGD(criterion.center.parameters(), lr=args.center_lr)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype(args, device) == torch.float16)
    if args.distributed:
        # Same initial weights and centers on every rank (DDP also broadcasts the model's),
        # then different random streams (dropout); augmentations follow the samplers' item seeds.
        for tensor in criterion.state_dict().values():
            torch.distributed.broadcast(tensor, 0)
        utils.set_seed(args.seed + args.rank)

    start_epoch, best_rank1, best_epoch = args.start_epoch, -float('inf'), 0
    if checkpoint is not None:
        start_epoch, best_rank1, best_epoch = checkpoints.restore_training_state(
            checkpoint, model, criterion, optimizer, center_optimizer, scaler, args, distillation)
    scheduler = solver.build_scheduler(optimizer, args, start_epoch)

    model = model.to(device, memory_format=torch.channels_last if args.channels_last else torch.preserve_format)

    if args.evaluate:
        print('Evaluate only')
        if not targets:
            raise UsageError('--evaluate: none of the datasets has a query/gallery split to evaluate on')
        test_targets(model, targets, device, args)
        print(f'Finished. Total elapsed time (h:m:s): {datetime.timedelta(seconds=round(time.time() - start_time))}')
        return

    train_model = wrap_for_training(model, device, args)
    last_checkpoint = args.resume or None
    training_log = visualize.TrainingLog(args.save_dir, tensorboard=args.tensorboard) if args.rank == 0 else None
    print('==> Start training')
    try:
        for epoch in range(start_epoch, args.max_epoch):
            lr = scheduler.get_last_lr()[0]
            print(f'==> Epoch {epoch + 1}/{args.max_epoch}  (lr {lr:.2e})')
            if unsupervised is not None:
                trainloader = unsupervised.epoch_loader(epoch, model, criterion, device)
            loss, rate = train_one_epoch(epoch, train_model, criterion, optimizer, center_optimizer, scaler,
                                         trainloader, device, args, distillation)
            if args.rank == 0:
                training_log.epoch(epoch + 1, loss, lr, images_per_s=rate)
            scheduler.step()
            result = None
            if (args.eval_step > 0 and (epoch + 1) % args.eval_step == 0) or epoch + 1 == args.max_epoch:
                rank1 = mAP = thresholds = None
                if targets:
                    print('==> Test')
                    rank1, mAP, thresholds = test_targets(model, targets, device, args)
                    if args.rank == 0:
                        training_log.evaluation(epoch + 1, rank1, mAP)
                is_best = rank1 is not None and rank1 > best_rank1
                if is_best:
                    best_rank1, best_epoch = rank1, epoch + 1
                result = (rank1, mAP, is_best, thresholds)
            written = checkpoints.save_training_state(model, criterion, optimizer, center_optimizer, scaler,
                                                      epoch + 1, (best_rank1, best_epoch), args, video, result,
                                                      distillation)
            last_checkpoint = written or last_checkpoint
    except KeyboardInterrupt:
        print(f'\nInterrupted. Last checkpoint: {last_checkpoint or "none written yet"}')
        sys.exit(130)

    if best_epoch:
        print(f'==> Best Rank-1 {best_rank1:.1%}, achieved at epoch {best_epoch}')
    print(f'Finished. Total elapsed time (h:m:s): {datetime.timedelta(seconds=round(time.time() - start_time))}')
