"""Checkpoint files and training runs: atomic writing, safe loading (weights_only; trained files
of other projects converted by weights.adapt_checkpoint), a checkpoint file as a distillation
teacher; what a checkpoint holds, --resume auto, and the restore of weights, optimizers, loss
state and random streams for an exact resume (of a distilled run too: the teacher's SHA-256 is
recorded and checked). The model config a checkpoint records, and the model rebuilt from it,
are model_config.py's.

Files in --save-dir: checkpoint_ep{N}.pth.tar at each evaluation, best_model.pth.tar when
Rank-1 improves, and checkpoint_last.pth.tar every --save-freq epochs, each written
atomically (save_checkpoint), so a crash at any moment leaves the last good one.
"""
import contextlib
import glob
import os
import pickle
import shutil
import tempfile
import zipfile

import numpy as np
import torch

import distributed
import models
import utils
import weights
from model_config import CheckpointError, config_from_args, from_checkpoint, load_model_weights

__all__ = ['CheckpointError', 'write_atomic', 'save_checkpoint', 'copy_file_atomic', 'load_checkpoint',
           'load_teacher', 'find_last_checkpoint', 'resolve_resume', 'restore_training_state',
           'check_teacher', 'distillation_record', 'save_training_state']


_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(path, write):
    """Write a file through a temporary file in the same directory, fsync it, then rename it
    over `path`: a crash at any moment leaves either the old file or the new one, whole."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual mode
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)
        raise
    fsync_directory(directory)  # make the rename itself durable


def fsync_directory(directory):
    """Flush a directory's entries (a rename or a new link) to disk."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(state, path):
    write_atomic(path, lambda f: torch.save(state, f))


def copy_file_atomic(src, dst):
    """Make `dst` a copy of `src`, atomically: a hard link where the file system allows it (no
    second copy on disk), else a byte copy. A link is safe because checkpoints are never
    modified in place: write_atomic replaces a file by renaming a new one over it, which leaves
    the other name's content as it was."""
    directory = os.path.dirname(os.path.abspath(dst))
    tmp_path = os.path.join(directory, f'.{os.path.basename(dst)}.{os.getpid()}.link')
    try:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)
        os.link(src, tmp_path)
        os.replace(tmp_path, dst)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)

        def write(f):
            with open(src, 'rb') as source:
                shutil.copyfileobj(source, f)
        write_atomic(dst, write)
        return
    fsync_directory(directory)  # make the new name durable


# What released checkpoints pickle besides tensors and containers: the 2018 code stored
# rank-1 as a numpy float64 scalar. Nothing else is allowed, so nothing else can run.
_SAFE_NUMPY_GLOBALS = [np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32))]
with contextlib.suppress(ImportError):
    from numpy._core.multiarray import scalar as _numpy_scalar
    _SAFE_NUMPY_GLOBALS.append(_numpy_scalar)


def load_checkpoint(path, report=False):
    """Load a checkpoint dict safely: torch.load with weights_only=True and only numpy's scalar
    types allowed besides tensors and plain containers, so a malicious pickle is refused
    without running anything; a trained file of another project (weights.adapt_checkpoint) comes
    back as this repo's checkpoint, and with `report` what it was recognised as and what was
    dropped is printed. Raises CheckpointError with what went wrong."""
    if not os.path.isfile(path):
        raise CheckpointError(f'checkpoint {path} does not exist')
    try:
        with torch.serialization.safe_globals(_SAFE_NUMPY_GLOBALS):
            checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as error:
        if 'GLOBAL' not in str(error):  # no disallowed class or function named: just not a pickle
            raise CheckpointError(f'cannot read checkpoint {path}: it is truncated, corrupt or not a '
                                  f'PyTorch checkpoint ({str(error).splitlines()[-1]})') from error
        raise CheckpointError(
            f'refused to load {path}: it is not a plain checkpoint (tensors, numbers, strings and '
            f'containers only), so it could run code when unpickled. Nothing was executed. '
            f'Details: {str(error).splitlines()[0]}') from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise CheckpointError(f'cannot read checkpoint {path}: it is truncated, corrupt or not a '
                              f'PyTorch checkpoint ({type(error).__name__}: {error})') from error
    if isinstance(checkpoint, dict) and 'state_dict' not in checkpoint and \
            all(torch.is_tensor(v) for v in checkpoint.values()):
        checkpoint = {'state_dict': checkpoint}  # a bare state dict
    try:
        checkpoint = weights.adapt_checkpoint(checkpoint, path)
    except weights.PretrainedWeightsError as error:
        raise CheckpointError(str(error)) from error
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get('state_dict'), dict):
        raise CheckpointError(f'{path} is not a re-ID checkpoint: expected a dict with a "state_dict"')
    if report and 'source' in checkpoint:
        print(weights.describe_adapted(checkpoint, path))
    return checkpoint


def load_teacher(path, student_mean, student_std, datasets, device='cpu'):
    """The models.FrozenTeacher of a checkpoint file (load_checkpoint, model_config.from_checkpoint)
    on `device`, for a student normalised with student_mean / student_std and trained on
    `datasets` (the -d names; a teacher with a camera embedding trained on the same ones reads the
    batch's camera ids). Raises CheckpointError for a file that is not a usable checkpoint."""
    checkpoint = load_checkpoint(path)
    model, config = from_checkpoint(checkpoint, device)
    same_data = checkpoint.get('args', {}).get('dataset') == list(datasets)
    return models.FrozenTeacher(model, config, student_mean, student_std, cameras=same_data,
                                path=os.path.abspath(path), sha256=models.file_sha256(path))


def find_last_checkpoint(save_dir):
    """The newest complete training checkpoint in save_dir, as (path, checkpoint), or (None, None).

    checkpoint_last.pth.tar is the newest unless --save-freq skipped epochs that evaluation
    checkpoints cover, so checkpoint_ep{N} files of later epochs are tried too, newest first.
    A file that cannot be read (which atomic saving rules out, short of disk damage) is skipped
    with a note, falling back to an older one.
    """
    def epoch_of(path):
        return int(os.path.basename(path)[len('checkpoint_ep'):-len('.pth.tar')])

    candidates = sorted(glob.glob(os.path.join(glob.escape(save_dir), 'checkpoint_ep*.pth.tar')),
                        key=epoch_of, reverse=True)
    last = os.path.join(save_dir, 'checkpoint_last.pth.tar')
    if os.path.isfile(last):
        candidates.insert(0, last)
    best_path, best = None, None
    for path in candidates:
        if best is not None and path != last and epoch_of(path) <= best['epoch']:
            break
        try:
            checkpoint = load_checkpoint(path)
        except CheckpointError as error:
            print(f'Note: skipping {path}: {error}')
            continue
        if 'optimizer' in checkpoint and (best is None or checkpoint['epoch'] > best['epoch']):
            best_path, best = path, checkpoint
    return best_path, best


def resolve_resume(args):
    """Turn --resume auto into the newest complete checkpoint of --save-dir, or '' when there
    is none (a fresh start), saying which (and what a trained file of another project was
    recognised as); returns the loaded checkpoint or None."""
    if args.resume != 'auto':
        return load_checkpoint(args.resume, report=True) if args.resume else None
    path, checkpoint = find_last_checkpoint(args.save_dir)
    if path is None:
        print(f'--resume auto: no checkpoint in {args.save_dir} yet, starting fresh')
        args.resume = ''
        return None
    print(f'--resume auto: continuing from {path} (epoch {checkpoint["epoch"]})')
    args.resume = path
    return checkpoint


def restore_training_state(checkpoint, model, criterion, optimizer, center_optimizer, scaler, args,
                           distillation=None):
    """Load the weights (and, to continue training, the optimizer, RNG and loss states) of a
    checkpoint; returns (start_epoch, best_rank1, best_epoch).

    A distilled run continues with the same teacher file only (distillation: the run's
    losses.DistillationLoss, or None without --teacher), checked by its SHA-256: another teacher,
    or none, would not continue the run that was interrupted."""
    start_epoch, best_rank1, best_epoch = args.start_epoch, -float('inf'), 0
    skipped = load_model_weights(model, checkpoint['state_dict'])
    print(f'Loaded checkpoint {args.resume}' + (f' (epoch {checkpoint["epoch"]})' if 'epoch' in checkpoint else ''))
    if skipped:
        print(f'Note: skipped the checkpoint\'s classifier ({", ".join(skipped)}): it was trained on '
              f'another number of identities (or one side has none); features, and so evaluation, do not use it')
    if args.evaluate:
        return start_epoch, best_rank1, best_epoch
    if 'optimizer' not in checkpoint or skipped:
        print('Note: the checkpoint holds weights only (no optimizer state for this data); '
              f'training starts from them at epoch {start_epoch + 1} with a fresh optimizer')
        return start_epoch, best_rank1, best_epoch
    check_teacher(checkpoint, distillation, args)
    optimizer.load_state_dict(checkpoint['optimizer'])
    if center_optimizer is not None:
        if 'center_optimizer' not in checkpoint:
            raise CheckpointError(f'--center-loss is on but the checkpoint {args.resume} was trained '
                                  f'without it: resume with the flags of that run')
        criterion.load_state_dict(checkpoint['criterion'])
        center_optimizer.load_state_dict(checkpoint['center_optimizer'])
    if scaler.is_enabled() and 'scaler' in checkpoint:
        scaler.load_state_dict(checkpoint['scaler'])
    # Each rank continues its own random streams (dropout; augmentations follow the samplers'
    # item seeds); a checkpoint of another number of processes cannot give them, so the ranks
    # then reseed.
    rng_ranks = checkpoint.get('rng_ranks', [checkpoint['rng']])
    if len(rng_ranks) == args.world_size:
        utils.set_rng_state(rng_ranks[args.rank])
    else:
        print(f'Note: the checkpoint was written by {len(rng_ranks)} processes, this run has '
              f'{args.world_size}: each process reseeds its random numbers with --seed + rank + epoch')
        utils.set_seed(args.seed + args.rank + checkpoint['epoch'])
    print(f'Resuming training from epoch {checkpoint["epoch"] + 1}')
    return checkpoint['epoch'], checkpoint['best_rank1'], checkpoint['best_epoch']


def check_teacher(checkpoint, distillation, args):
    """Raise CheckpointError unless a resumed run has the teacher its checkpoint was distilled
    from (the same file contents), or no teacher when it had none. Adding a teacher to a run
    trained without one is allowed, and said."""
    recorded = checkpoint.get('distillation')
    if recorded is None:
        if distillation is not None:
            print(f'Note: {args.resume} was trained without a teacher; distillation starts at epoch '
                  f'{checkpoint["epoch"] + 1}')
        return
    if distillation is None:
        raise CheckpointError(f'{args.resume} was distilled from the teacher {recorded["teacher"]}: resume it '
                              f'with --teacher {recorded["teacher"]} (and the flags of that run)')
    if distillation.teacher.sha256 != recorded['teacher_sha256']:
        raise CheckpointError(f'--teacher {args.teacher} (sha256 {distillation.teacher.sha256}) is not the teacher '
                              f'{args.resume} was distilled from: {recorded["teacher"]} (sha256 '
                              f'{recorded["teacher_sha256"]}); resume with that file')


def distillation_record(distillation):
    """What a distilled checkpoint records of its teacher and of the distillation objective. It
    is kept out of the model config ('model'): the teacher does not shape the student's model."""
    return {'teacher': distillation.teacher.path, 'teacher_sha256': distillation.teacher.sha256,
            'kd_logit': distillation.logit_weight, 'kd_temp': distillation.temperature,
            'kd_relation': distillation.relation_weight}


def save_training_state(model, criterion, optimizer, center_optimizer, scaler, epoch, best, args, video,
                        result=None, distillation=None):
    """Checkpoint after `epoch` (1-based) on rank 0, atomically: checkpoint_ep{epoch} at an
    evaluation (result = (rank1, mAP, is_best, tracker thresholds or None), given on every rank;
    the thresholds are kept as 'tracker_thresholds' {str(fpr): cosine distance}; best_model too when
    is_best), and checkpoint_last every --save-freq epochs and at the end. Every rank must call
    it (the RNG states of all ranks are gathered). distillation: the losses.DistillationLoss of
    a --teacher run, recorded under 'distillation' (distillation_record). Returns the path of
    the newest checkpoint written, or None."""
    save_last = epoch % args.save_freq == 0 or epoch == args.max_epoch
    if result is None and not save_last:
        return None
    state = {
        'state_dict': model.state_dict(), 'epoch': epoch, 'arch': args.arch,
        'model': config_from_args(args, video), 'best_rank1': float(best[0]), 'best_epoch': best[1],
        'optimizer': optimizer.state_dict(), 'args': vars(args),
    }
    rng_ranks = distributed.all_gather_objects(utils.rng_state())
    state['rng'] = rng_ranks[0]
    if args.distributed:
        state['rng_ranks'] = rng_ranks
    if center_optimizer is not None:
        state.update(criterion=criterion.state_dict(), center_optimizer=center_optimizer.state_dict())
    if scaler.is_enabled():
        state['scaler'] = scaler.state_dict()
    if distillation is not None:
        state['distillation'] = distillation_record(distillation)
    if args.rank != 0:
        return None
    written = None
    if result is not None:
        rank1, mAP, is_best, thresholds = result
        state.update(rank1=rank1, mAP=mAP)
        if thresholds:
            state['tracker_thresholds'] = {str(fpr): t for fpr, t in thresholds.items()}
        written = os.path.join(args.save_dir, f'checkpoint_ep{epoch}.pth.tar')
        save_checkpoint(state, written)
        if is_best:
            copy_file_atomic(written, os.path.join(args.save_dir, 'best_model.pth.tar'))
    if save_last:
        last = os.path.join(args.save_dir, 'checkpoint_last.pth.tar')
        if written is not None:
            copy_file_atomic(written, last)
        else:
            save_checkpoint(state, last)
        written = last
    return written
