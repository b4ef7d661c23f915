"""Small helpers the training scripts share: progress and time left, a log of stdout, and
seeding and saving the random generators. Checkpoint files live in checkpoints.py, the
distributed-training pieces in distributed.py."""
import contextlib
import datetime
import os
import random
import sys
import time

import numpy as np
import torch

__all__ = ['Progress', 'tee_stdout', 'set_seed', 'rng_state', 'set_rng_state']


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
