"""Distributed training collectives: process group (torchrun), differentiable gathers,
SyncBatchNorm on the CPU."""
import os

import torch
import torch.distributed as dist
from torch import nn

__all__ = ['init_distributed_mode', 'is_distributed', 'get_rank', 'get_world_size', 'all_gather_grad',
           'gather_in_order', 'all_gather_objects', 'CPUSyncBatchNorm', 'convert_sync_batchnorm']


def init_distributed_mode(args):
    """Join the process group when launched by torchrun (RANK, WORLD_SIZE, LOCAL_RANK in the
    environment), as torchvision's references do: NCCL with one GPU per process, or gloo on
    the CPU. Sets args.distributed, args.rank, args.world_size, args.local_rank."""
    if 'RANK' not in os.environ or 'WORLD_SIZE' not in os.environ:
        args.distributed, args.rank, args.world_size, args.local_rank = False, 0, 1, 0
        return
    args.rank, args.world_size = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
    args.local_rank = int(os.environ.get('LOCAL_RANK', 0))
    args.distributed = True
    use_cuda = not args.use_cpu and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(args.local_rank)
    backend, device_id = ('nccl', torch.device('cuda', args.local_rank)) if use_cuda else ('gloo', None)
    if os.environ.get('TORCHELASTIC_USE_AGENT_STORE') != 'True':
        dist.init_process_group(backend=backend, device_id=device_id)
        return
    # torchrun's store outlives a restart of the workers (--max-restarts), and the keys the
    # killed workers left there would let the new ones dial dead addresses and hang. So every
    # generation of workers takes a fresh key prefix: the number of workers started so far,
    # counted in the store, divided by the world size (the same on every rank and node).
    store = dist.TCPStore(os.environ['MASTER_ADDR'], int(os.environ['MASTER_PORT']), is_master=False)
    generation = (store.add('reid/workers_started', 1) - 1) // args.world_size
    dist.init_process_group(backend=backend, device_id=device_id, rank=args.rank, world_size=args.world_size,
                            store=dist.PrefixStore(f'reid/generation_{generation}/', store))


def is_distributed():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank():
    return dist.get_rank() if is_distributed() else 0


def get_world_size():
    return dist.get_world_size() if is_distributed() else 1


class _AllGatherGrad(torch.autograd.Function):
    """Concatenate every rank's (B, ...) tensor, in rank order; backward sums the incoming
    gradient over ranks and returns this rank's slice (each rank's loss depends on every
    slice, so each slice's gradient is the sum of what all ranks send back)."""

    @staticmethod
    def forward(ctx, tensor):
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad.chunk(dist.get_world_size())[dist.get_rank()]


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of a sum that every rank uses is the sum of the gradients."""

    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_gather_grad(tensor):
    """(B, ...) on every rank -> (world_size * B, ...), differentiable (see _AllGatherGrad).

    When every rank computes the same loss of the gathered tensor, DDP's gradient averaging
    then yields exactly the single-process gradient of that loss. Every rank must pass the
    same B. Without a process group this is the identity."""
    return _AllGatherGrad.apply(tensor) if is_distributed() else tensor


def gather_in_order(tensor):
    """(n_rank, ...) shards of contiguous ranges, on every rank -> (sum of n_rank, ...) in rank
    order, so dataset order when rank r holds the r-th contiguous range. Shards may differ
    in length by any amount: they are padded to the longest for the collective."""
    if not is_distributed():
        return tensor
    sizes = [torch.zeros((), dtype=torch.long, device=tensor.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor(len(tensor), device=tensor.device))
    sizes = [int(n) for n in sizes]
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[:len(tensor)] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


def all_gather_objects(obj):
    """[obj of rank 0, obj of rank 1, ...] (picklable objects; [obj] without a process group)."""
    if not is_distributed():
        return [obj]
    objects = [None] * dist.get_world_size()
    dist.all_gather_object(objects, obj)
    return objects


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """SyncBatchNorm for the CPU (gloo), where nn.SyncBatchNorm refuses to run: batch statistics
    over the global batch from two differentiable all-reduces (sum, then sum of squared
    deviations), so autograd gives the gradients of BatchNorm over the whole batch. Outside
    training or without a process group it is plain BatchNorm. Inputs (N, C, ...)."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f'expected at least 2-D input (N, C, ...), got {x.dim()}-D')

    def forward(self, x):
        if not self.training or not is_distributed():
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor(float(x.numel() // x.shape[1]))
        dist.all_reduce(count)
        mean = _AllReduceSum.apply(x.sum(dims)) / count
        centered = x - mean.view(shape)
        var = _AllReduceSum.apply(centered.pow(2).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(var * count / (count - 1), momentum)
        out = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_sync_batchnorm(module, device):
    """Replace every BatchNorm layer of `module` by one that normalises over the global batch:
    nn.SyncBatchNorm on GPUs, CPUSyncBatchNorm on the CPU (weights and running statistics
    kept); returns the converted module."""
    if device.type != 'cpu':
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        like = next(t for t in (module.weight, module.running_mean) if t is not None)
        converted = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                     module.track_running_stats, device=like.device, dtype=like.dtype)
        converted.load_state_dict(module.state_dict())
        return converted
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, device))
    return module
