"""Small helpers the training scripts share: logging, meters, checkpoints, RNG state, and the
pieces of distributed training (process group, gathers, SyncBatchNorm on the CPU)."""
import contextlib
import datetime
import glob
import os
import pickle
import random
import shutil
import sys
import tempfile
import time
import zipfile

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = ['Progress', 'write_atomic', 'tee_stdout', 'set_seed', 'rng_state', 'set_rng_state',
           'CheckpointError', 'save_checkpoint', 'copy_file_atomic', 'load_checkpoint', 'load_model_weights',
           'find_last_checkpoint', 'init_distributed_mode', 'is_distributed', 'get_rank', 'get_world_size',
           'all_gather_grad', 'gather_in_order', 'all_gather_objects', 'convert_sync_batchnorm']


class Progress:
    """Rate and time left of a loop over `total` items (images, batches...)."""

    def __init__(self, total):
        self.total, self.done, self.start = total, 0, time.time()

    def update(self, n):
        self.done += n

    @property
    def rate(self):
        """Items per second so far."""
        return self.done / max(time.time() - self.start, 1e-9)

    def eta(self, remaining=None):
        """Time left for `remaining` items (default: the rest of this loop), as h:mm:ss."""
        remaining = self.total - self.done if remaining is None else remaining
        return str(datetime.timedelta(seconds=round(remaining / max(self.rate, 1e-9))))


class _Tee:
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for stream in self.streams:
            stream.write(text)
            stream.flush()  # a crashed run keeps its log up to the crash

    def flush(self):
        for stream in self.streams:
            stream.flush()


@contextlib.contextmanager
def tee_stdout(path):
    """Copy everything printed to stdout (and stderr) into `path` while the block runs."""
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    with open(path, 'a') as log_file:
        old_stdout, old_stderr = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(old_stdout, log_file), _Tee(old_stderr, log_file)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = old_stdout, old_stderr


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state():
    """Every random generator a run draws from, as plain types and tensors (weights_only-safe)."""
    np_state = np.random.get_state()
    state = {'python': random.getstate(),
             'numpy': (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
             'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    python_state = state['python']
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    name, keys, *rest = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be used: missing, not a checkpoint, truncated or unsafe."""


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
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def save_checkpoint(state, path):
    write_atomic(path, lambda f: torch.save(state, f))


def copy_file_atomic(src, dst):
    def write(f):
        with open(src, 'rb') as source:
            shutil.copyfileobj(source, f)
    write_atomic(dst, write)


# What released checkpoints pickle besides tensors and containers: the 2018 code stored
# rank-1 as a numpy float64 scalar. Nothing else is allowed, so nothing else can run.
_SAFE_NUMPY_GLOBALS = [np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32))]
with contextlib.suppress(ImportError):
    from numpy._core.multiarray import scalar as _numpy_scalar
    _SAFE_NUMPY_GLOBALS.append(_numpy_scalar)


def load_checkpoint(path):
    """Load a checkpoint dict safely: torch.load with weights_only=True and only numpy's scalar
    types allowed besides tensors and plain containers, so a malicious pickle is refused
    without running anything. Raises CheckpointError with what went wrong."""
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
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get('state_dict'), dict):
        raise CheckpointError(f'{path} is not a re-ID checkpoint: expected a dict with a "state_dict"')
    return checkpoint


def load_model_weights(model, state_dict):
    """Load weights into `model`, accepting checkpoints of other runs and of the 2018 code.

    A 'module.' prefix (saved from DataParallel) is stripped; num_batches_tracked, which old
    PyTorch did not save, may be missing; a classifier of another shape (another number of
    training identities) is skipped, which is fine for evaluation, where only features count.
    Anything else that does not match is an error. Returns the names of skipped tensors.
    """
    state_dict = {k.removeprefix('module.'): v for k, v in state_dict.items()}
    own = model.state_dict()
    skipped = [k for k, v in state_dict.items()
               if k.startswith('classifier.') and k in own and own[k].shape != v.shape]
    for k in skipped:
        del state_dict[k]
    mismatched = [k for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise CheckpointError(f'tensor shapes differ from the model for {mismatched[:3]} (wrong --arch?)')
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in missing if not k.endswith('num_batches_tracked') and k not in skipped]
    if missing or unexpected:
        raise CheckpointError(
            f'the checkpoint does not fit this model (wrong --arch?): {len(missing)} missing tensors '
            f'(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})')
    return skipped


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
