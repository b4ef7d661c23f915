"""Small helpers the training scripts share: logging, meters, checkpoints, RNG state."""
import contextlib
import datetime
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

__all__ = ['AverageMeter', 'Progress', 'write_atomic', 'tee_stdout', 'set_seed', 'rng_state', 'set_rng_state', 'CheckpointError',
           'save_checkpoint', 'copy_file_atomic', 'load_checkpoint', 'load_model_weights']


class AverageMeter:
    """The latest value and the running (weighted) average."""

    def __init__(self):
        self.val = self.avg = self.sum = 0.0
        self.count = 0

    def update(self, val, n=1):
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count


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
