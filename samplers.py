"""Training samplers, on one process or sharded over DDP ranks: random identities (P x K) for
triplet training, random clusters (P x K, across cameras) for unsupervised training, a plain
shuffle otherwise.

Both compute the epoch's global order from a generator seeded with seed + epoch (set_epoch),
not from the global RNG: every rank computes the same global sequence whatever else draws
random numbers, and a resumed run needs only the epoch. With batch_size = the global batch B
and num_replicas ranks, the order is cut into complete global batches (the incomplete tail is
dropped, as drop_last does) and rank r yields the r-th B / num_replicas entries of each: the
ranks' batches together are exactly the single-process batch. Without batch_size, the whole
order is yielded.

With item_seeds=True every entry is an (index, seed) pair instead of an index. The seed,
drawn along with the order, fixes the augmentation of that sample (ImageDataset and
VideoDataset take such pairs), so an augmentation depends only on the epoch and the sample's
place in it: not on the number of loader workers, on whether they persist across epochs, or
on the number of ranks; and a resumed run repeats it exactly.
"""
from collections import defaultdict

import torch
from torch.utils.data import Sampler

__all__ = ['EpochSampler', 'RandomIdentitySampler', 'ClusterSampler', 'ShuffleSampler']


class EpochSampler(Sampler):
    """The seeding, sharding and item seeds described above; a subclass gives epoch_order."""

    def __init__(self, batch_size=None, num_replicas=1, rank=0, seed=0, item_seeds=False):
        self.batch_size, self.num_replicas, self.rank = batch_size, num_replicas, rank
        self.seed, self.epoch, self.item_seeds = seed, 0, item_seeds

    def set_epoch(self, epoch):
        self.epoch = epoch

    def epoch_order(self, generator):
        """The epoch's global order: a 1-D LongTensor of dataset indices."""
        raise NotImplementedError

    def epoch_size(self):
        """len(epoch_order(...)), known without drawing it."""
        raise NotImplementedError

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = self.epoch_order(generator)
        entries = order[:, None]  # (epoch size, 1), or (epoch size, 2) with the seeds
        if self.item_seeds:
            entries = torch.cat([entries, torch.randint(2 ** 62, entries.shape, generator=generator)], dim=1)
        if self.batch_size is not None:
            share = self.batch_size // self.num_replicas
            complete = len(entries) // self.batch_size * self.batch_size
            batches = entries[:complete].view(-1, self.batch_size, entries.shape[1])
            entries = batches[:, self.rank * share:(self.rank + 1) * share].flatten(0, 1)
        return iter(map(tuple, entries.tolist()) if self.item_seeds else entries[:, 0].tolist())

    def __len__(self):
        if self.batch_size is None:
            return self.epoch_size()
        return self.epoch_size() // self.batch_size * (self.batch_size // self.num_replicas)


class ShuffleSampler(EpochSampler):
    """Every index of a dataset of `size` items once per epoch, in random order (the order of
    torch's DistributedSampler on one process: a randperm seeded with seed + epoch)."""

    def __init__(self, size, batch_size=None, num_replicas=1, rank=0, seed=0, item_seeds=False):
        if batch_size is not None and batch_size % num_replicas:
            raise ValueError(f'batch_size {batch_size} must be a multiple of num_replicas {num_replicas}')
        super().__init__(batch_size, num_replicas, rank, seed, item_seeds)
        self.size = size

    def epoch_order(self, generator):
        return torch.randperm(self.size, generator=generator)

    def epoch_size(self):
        return self.size


class RandomIdentitySampler(EpochSampler):
    """K = num_instances indices per identity, identities in random order.

    Each epoch visits every identity once: its K indices are drawn without replacement, or
    with replacement when the identity has fewer than K items. With a DataLoader of
    batch_size = P * K every batch then holds P identities x K instances. Sharded, a rank's
    share of a global batch is whole identities, since B / num_replicas is a multiple of K:
    every rank's batch holds triplets.
    """

    def __init__(self, data_source, num_instances=4, batch_size=None, num_replicas=1, rank=0, seed=0,
                 item_seeds=False):
        if num_instances < 1:
            raise ValueError(f'num_instances must be at least 1, got {num_instances}')
        if batch_size is not None and batch_size % (num_instances * num_replicas):
            raise ValueError(f'batch_size {batch_size} must be a multiple of num_instances x num_replicas '
                             f'({num_instances} x {num_replicas}) so that every rank gets whole identities')
        super().__init__(batch_size, num_replicas, rank, seed, item_seeds)
        self.num_instances = num_instances
        index_by_pid = defaultdict(list)
        for index, (_, pid, _) in enumerate(data_source):
            index_by_pid[pid].append(index)
        self.pids = sorted(index_by_pid)
        self.index_by_pid = [torch.tensor(index_by_pid[pid]) for pid in self.pids]

    def epoch_order(self, generator):
        k = self.num_instances
        chosen = []
        for pid_index in torch.randperm(len(self.pids), generator=generator).tolist():
            indices = self.index_by_pid[pid_index]
            if len(indices) >= k:
                picks = torch.randperm(len(indices), generator=generator)[:k]
            else:
                picks = torch.randint(len(indices), (k,), generator=generator)
            chosen.append(indices[picks])
        return torch.cat(chosen)

    def epoch_size(self):
        return len(self.pids) * self.num_instances


class ClusterSampler(EpochSampler):
    """P x K batches over pseudo labels, K = num_instances per cluster, by the rule of Cluster
    Contrast's RandomMultipleGallerySampler: a fixed number of batches per epoch
    (`iterations` x batch_size indices), K instances of a cluster taken across cameras.

    labels: (N,) cluster id of each dataset index, -1 for an outlier (never drawn); camids (N,).
    A pass visits every cluster once, in random order: an anchor drawn among its members, then
    K - 1 more drawn from the members seen by another camera than the anchor, if there are any,
    else from the other members (without replacement when there are at least K candidates,
    else with, as the reference draws). A cluster of one repeats its anchor K times (the
    reference then yields the anchor alone, which shifts the rest of its batches off P x K).
    Passes follow one another until the epoch is full; batches of whole clusters then stay
    whole, as batch_size is a multiple of K.
    """

    def __init__(self, labels, camids, num_instances=16, iterations=200, batch_size=256, num_replicas=1, rank=0,
                 seed=0, item_seeds=False):
        if batch_size % (num_instances * num_replicas):
            raise ValueError(f'batch_size {batch_size} must be a multiple of num_instances x num_replicas '
                             f'({num_instances} x {num_replicas}) so that every rank gets whole clusters')
        super().__init__(batch_size, num_replicas, rank, seed, item_seeds)
        labels, camids = torch.as_tensor(labels), torch.as_tensor(camids)
        if not (labels >= 0).any():
            raise ValueError('no cluster to sample from: every sample is an outlier')
        self.num_instances, self.iterations = num_instances, iterations
        kept = torch.nonzero(labels >= 0).flatten()
        order = kept[torch.argsort(labels[kept], stable=True)]
        _, counts = torch.unique_consecutive(labels[order], return_counts=True)
        self.members = list(order.split(counts.tolist()))
        self.cameras = [camids[m] for m in self.members]

    def _draw(self, candidates, generator):
        k = self.num_instances - 1
        if len(candidates) >= self.num_instances:
            return candidates[torch.randperm(len(candidates), generator=generator)[:k]]
        return candidates[torch.randint(len(candidates), (k,), generator=generator)]

    def epoch_order(self, generator):
        chosen, total = [], 0
        while total < self.epoch_size():
            for cluster in torch.randperm(len(self.members), generator=generator).tolist():
                members, cameras = self.members[cluster], self.cameras[cluster]
                anchor = int(torch.randint(len(members), (1,), generator=generator))
                others = torch.arange(len(members)) != anchor
                candidates = members[others & (cameras != cameras[anchor])]
                if not len(candidates):
                    candidates = members[others] if others.any() else members
                chosen += [members[anchor:anchor + 1], self._draw(candidates, generator)]
                total += self.num_instances
        return torch.cat(chosen)[:self.epoch_size()]

    def epoch_size(self):
        return self.iterations * self.batch_size
