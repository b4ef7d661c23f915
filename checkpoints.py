"""Saving a training run and continuing it: what a checkpoint holds, --resume auto, and the
restore of weights, optimizers, loss state and random streams for an exact resume.

Files in --save-dir: checkpoint_ep{N}.pth.tar at each evaluation, best_model.pth.tar when
Rank-1 improves, and checkpoint_last.pth.tar every --save-freq epochs, each written
atomically (utils.save_checkpoint), so a crash at any moment leaves the last good one.
"""
import os

import options
import utils

__all__ = ['resolve_resume', 'restore_training_state', 'save_training_state']


def resolve_resume(args):
    """Turn --resume auto into the newest complete checkpoint of --save-dir, or '' when there
    is none (a fresh start), saying which; returns the loaded checkpoint or None."""
    if args.resume != 'auto':
        return utils.load_checkpoint(args.resume) if args.resume else None
    path, checkpoint = utils.find_last_checkpoint(args.save_dir)
    if path is None:
        print(f'--resume auto: no checkpoint in {args.save_dir} yet, starting fresh')
        args.resume = ''
        return None
    print(f'--resume auto: continuing from {path} (epoch {checkpoint["epoch"]})')
    args.resume = path
    return checkpoint


def restore_training_state(checkpoint, model, criterion, optimizer, center_optimizer, scaler, args):
    """Load the weights (and, to continue training, the optimizer, RNG and loss states) of a
    checkpoint; returns (start_epoch, best_rank1, best_epoch)."""
    start_epoch, best_rank1, best_epoch = args.start_epoch, -float('inf'), 0
    skipped = utils.load_model_weights(model, checkpoint['state_dict'])
    print(f'Loaded checkpoint {args.resume}' + (f' (epoch {checkpoint["epoch"]})' if 'epoch' in checkpoint else ''))
    if skipped:
        print(f'Note: skipped the checkpoint\'s classifier ({", ".join(skipped)}): it was trained on '
              f'another number of identities; features, and so evaluation, do not use it')
    if args.evaluate:
        return start_epoch, best_rank1, best_epoch
    if 'optimizer' not in checkpoint or skipped:
        print('Note: the checkpoint holds weights only (no optimizer state for this data); '
              f'training starts from them at epoch {start_epoch + 1} with a fresh optimizer')
        return start_epoch, best_rank1, best_epoch
    optimizer.load_state_dict(checkpoint['optimizer'])
    if center_optimizer is not None:
        if 'center_optimizer' not in checkpoint:
            raise utils.CheckpointError(f'--center-loss is on but the checkpoint {args.resume} was trained '
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


def save_training_state(model, criterion, optimizer, center_optimizer, scaler, epoch, best, args, video,
                        result=None):
    """Checkpoint after `epoch` (1-based) on rank 0, atomically: checkpoint_ep{epoch} at an
    evaluation (result = (rank1, mAP, is_best), given on every rank; best_model too when
    is_best), and checkpoint_last every --save-freq epochs and at the end. Every rank must call
    it (the RNG states of all ranks are gathered). Returns the path of the newest checkpoint
    written, or None."""
    save_last = epoch % args.save_freq == 0 or epoch == args.max_epoch
    if result is None and not save_last:
        return None
    state = {
        'state_dict': model.state_dict(), 'epoch': epoch, 'arch': args.arch,
        'model': options.model_config(args, video), 'best_rank1': float(best[0]), 'best_epoch': best[1],
        'optimizer': optimizer.state_dict(), 'args': vars(args),
    }
    rng_ranks = utils.all_gather_objects(utils.rng_state())
    state['rng'] = rng_ranks[0]
    if args.distributed:
        state['rng_ranks'] = rng_ranks
    if center_optimizer is not None:
        state.update(criterion=criterion.state_dict(), center_optimizer=center_optimizer.state_dict())
    if scaler.is_enabled():
        state['scaler'] = scaler.state_dict()
    if args.rank != 0:
        return None
    written = None
    if result is not None:
        rank1, mAP, is_best = result
        state.update(rank1=rank1, mAP=mAP)
        written = os.path.join(args.save_dir, f'checkpoint_ep{epoch}.pth.tar')
        utils.save_checkpoint(state, written)
        if is_best:
            utils.copy_file_atomic(written, os.path.join(args.save_dir, 'best_model.pth.tar'))
    if save_last:
        last = os.path.join(args.save_dir, 'checkpoint_last.pth.tar')
        if written is not None:
            utils.copy_file_atomic(written, last)
        else:
            utils.save_checkpoint(state, last)
        written = last
    return written
