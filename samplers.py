"""Random-identity (P x K) sampling for triplet training."""
from collections import defaultdict

import torch
from torch.utils.data import Sampler

__all__ = ['RandomIdentitySampler']


class RandomIdentitySampler(Sampler):
    """Yield K = num_instances indices per identity, identities in random order.

    Each epoch visits every identity once: its K indices are drawn without replacement, or
    with replacement when the identity has fewer than K items. With a DataLoader of
    batch_size = P * K and drop_last=True every batch then holds P identities x K instances.

    len(sampler) = num_identities * num_instances, exactly the number of indices yielded.

    Randomness comes from `generator` if given, else from torch's global generator (seeded by
    --seed and saved in checkpoints), so the order is reproducible and resumable. The sampler
    runs in the main process, so DataLoader workers do not affect it.
    """

    def __init__(self, data_source, num_instances=4, generator=None):
        if num_instances < 1:
            raise ValueError(f'num_instances must be at least 1, got {num_instances}')
        self.num_instances = num_instances
        self.generator = generator
        index_by_pid = defaultdict(list)
        for index, (_, pid, _) in enumerate(data_source):
            index_by_pid[pid].append(index)
        self.pids = sorted(index_by_pid)
        self.index_by_pid = [torch.tensor(index_by_pid[pid]) for pid in self.pids]

    def __iter__(self):
        k = self.num_instances
        chosen = []
        for pid_index in torch.randperm(len(self.pids), generator=self.generator).tolist():
            indices = self.index_by_pid[pid_index]
            if len(indices) >= k:
                picks = torch.randperm(len(indices), generator=self.generator)[:k]
            else:
                picks = torch.randint(len(indices), (k,), generator=self.generator)
            chosen.append(indices[picks])
        return iter(torch.cat(chosen).tolist())

    def __len__(self):
        return len(self.pids) * self.num_instances
