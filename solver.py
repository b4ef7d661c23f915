"""Optimizers and learning-rate schedules of the training scripts.

The learning rate is a pure function of the epoch (lr_factor), so a resumed run only needs
the epoch to be back on schedule, whatever checkpoint it resumes from.
"""
import math
from bisect import bisect_right
from functools import partial

import torch

__all__ = ['OPTIMIZERS', 'SCHEDULERS', 'param_groups', 'build_optimizer', 'lr_factor', 'build_scheduler']

OPTIMIZERS = ('adam', 'amsgrad', 'sgd')
SCHEDULERS = ('step', 'multistep', 'cosine')


def param_groups(model, bias_lr_factor=1.0):
    """The model's trainable parameters for build_optimizer: one group, or with bias_lr_factor
    != 1 a second group of the biases whose learning rate is that factor times the base one (the
    TransReID recipe's BIAS_LR_FACTOR 2; its bias weight decay equals the others')."""
    params = list(model.named_parameters())
    if bias_lr_factor == 1:
        return [p for _, p in params]
    return [{'params': [p for n, p in params if not n.endswith('bias')]},
            {'params': [p for n, p in params if n.endswith('bias')], 'lr_factor': bias_lr_factor}]


def build_optimizer(params, name, lr, weight_decay, momentum=0.9):
    """Adam (the classic recipe's), Adam with AMSGrad, or SGD with momentum. params: tensors, or
    groups from param_groups (a group's 'lr_factor' scales lr for it)."""
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [{'params': group['params'], 'lr': lr * group.get('lr_factor', 1.0)} for group in params]
    if name == 'adam':
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == 'amsgrad':
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, amsgrad=True)
    if name == 'sgd':
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum)
    raise ValueError(f'unknown optimizer {name!r}; choose from {OPTIMIZERS}')


def lr_factor(epoch, scheduler='step', max_epoch=60, stepsize=20, gamma=0.1, milestones=(),
              warmup_epochs=0, warmup_factor=0.01):
    """The multiplier of the base learning rate during `epoch` (0-based).

    warmup (epoch < warmup_epochs): warmup_factor + (1 - warmup_factor) * epoch / warmup_epochs,
    a line from warmup_factor x lr up to lr, multiplied by the decay below, as the BoT
    reference's WarmupMultiStepLR does. Decay:
      step:      gamma ** (epoch // stepsize), none when stepsize is 0 (the classic --stepsize)
      multistep: gamma ** (number of milestones <= epoch)
      cosine:    (1 + cos(pi * t)) / 2, t = (epoch - warmup_epochs) / (max_epoch - warmup_epochs),
                 1 during the warmup
    """
    warmup = 1.0
    if epoch < warmup_epochs:
        warmup = warmup_factor + (1 - warmup_factor) * epoch / warmup_epochs
    if scheduler == 'step':
        decay = gamma ** (epoch // stepsize) if stepsize > 0 else 1.0
    elif scheduler == 'multistep':
        decay = gamma ** bisect_right(sorted(milestones), epoch)
    elif scheduler == 'cosine':
        t = max(0, epoch - warmup_epochs) / max(1, max_epoch - warmup_epochs)
        decay = (1 + math.cos(math.pi * t)) / 2
    else:
        raise ValueError(f'unknown learning-rate scheduler {scheduler!r}; choose from {SCHEDULERS}')
    return warmup * decay


def build_scheduler(optimizer, args, start_epoch=0):
    """A per-epoch LambdaLR over lr_factor with the run's flags, positioned at start_epoch
    (call .step() once per finished epoch)."""
    factor = partial(lr_factor, scheduler=args.lr_scheduler, max_epoch=args.max_epoch,
                     stepsize=args.stepsize, gamma=args.gamma, milestones=tuple(args.milestones),
                     warmup_epochs=args.warmup_epochs, warmup_factor=args.warmup_factor)
    for group in optimizer.param_groups:
        group.setdefault('initial_lr', group['lr'])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor, last_epoch=start_epoch - 1)
