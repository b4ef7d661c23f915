"""Random-identity (P x K) sampling for triplet training, on one process or sharded over DDP ranks."""
from collections import defaultdict

import torch
from torch.utils.data import Sampler

__all__ = ['RandomIdentitySampler']


class RandomIdentitySampler(Sampler):
    """Yield K = num_instances indices per identity, identities in random order.

    Each epoch visits every identity once: its K indices are drawn without replacement, or
    with replacement when the identity has fewer than K items. With a DataLoader of
    batch_size = P * K every batch then holds P identities x K instances.

    Sharding (DistributedDataParallel): with batch_size = the global batch B and num_replicas
    ranks, the epoch is cut into complete global batches (the incomplete tail is dropped, as
    drop_last does), and rank r yields the r-th B / num_replicas indices of each, which is
    whole identities when B / num_replicas is a multiple of K: every rank's batch holds
    triplets, and the ranks' batches together are exactly the single-process batch.
    Without batch_size, every index of the epoch is yielded (len = num_identities * K).

    The order comes from a generator seeded with seed + epoch (set_epoch), not from the global
    RNG: every rank computes the same global sequence whatever else draws random numbers, and
    a resumed run needs only the epoch.
    """

    def __init__(self, data_source, num_instances=4, batch_size=None, num_replicas=1, rank=0, seed=0):
        if num_instances < 1:
            raise ValueError(f'num_instances must be at least 1, got {num_instances}')
        if batch_size is not None and batch_size % (num_instances * num_replicas):
            raise ValueError(f'batch_size {batch_size} must be a multiple of num_instances x num_replicas '
                             f'({num_instances} x {num_replicas}) so that every rank gets whole identities')
        self.num_instances = num_instances
        self.batch_size, self.num_replicas, self.rank = batch_size, num_replicas, rank
        self.seed, self.epoch = seed, 0
        index_by_pid = defaultdict(list)
        for index, (_, pid, _) in enumerate(data_source):
            index_by_pid[pid].append(index)
        self.pids = sorted(index_by_pid)
        self.index_by_pid = [torch.tensor(index_by_pid[pid]) for pid in self.pids]

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        k = self.num_instances
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        chosen = []
        for pid_index in torch.randperm(len(self.pids), generator=generator).tolist():
            indices = self.index_by_pid[pid_index]
            if len(indices) >= k:
                picks = torch.randperm(len(indices), generator=generator)[:k]
            else:
                picks = torch.randint(len(indices), (k,), generator=generator)
            chosen.append(indices[picks])
        indices = torch.cat(chosen)
        if self.batch_size is None:
            return iter(indices.tolist())
        share = self.batch_size // self.num_replicas
        batches = indices[:len(indices) // self.batch_size * self.batch_size].view(-1, self.batch_size)
        return iter(batches[:, self.rank * share:(self.rank + 1) * share].flatten().tolist())

    def __len__(self):
        total = len(self.pids) * self.num_instances
        if self.batch_size is None:
            return total
        return total // self.batch_size * (self.batch_size // self.num_replicas)
