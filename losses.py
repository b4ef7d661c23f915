"""Re-ID objectives: label-smoothed cross entropy, batch-hard triplet loss and center loss; knowledge
distillation from a frozen teacher; the cluster-contrast loss of unsupervised training."""
import torch
import torch.nn.functional as F
from torch import nn

import distributed

__all__ = ['CrossEntropyLabelSmooth', 'TripletLoss', 'CenterLoss', 'ReIDLoss', 'ClusterContrastLoss',
           'pairwise_euclidean', 'logit_distillation', 'relation_distillation', 'DistillationLoss']


class CrossEntropyLabelSmooth(nn.Module):
    """Cross entropy against smoothed targets (1 - epsilon) * onehot + epsilon / num_classes,
    averaged over the batch (Szegedy et al., CVPR 2016).

    torch's own label_smoothing computes exactly this target mixture, so it is used directly;
    tensors may live on any device.
    inputs: logits (B, num_classes); targets: class indices (B,).
    """

    def __init__(self, num_classes, epsilon=0.1):
        super().__init__()
        self.num_classes = num_classes
        self.epsilon = epsilon

    def forward(self, inputs, targets):
        if inputs.shape[1] != self.num_classes:
            raise ValueError(f'expected logits for {self.num_classes} classes, got shape {tuple(inputs.shape)}')
        return F.cross_entropy(inputs, targets, label_smoothing=self.epsilon)


def pairwise_euclidean(x, eps=1e-12):
    """(N, D) -> (N, N) Euclidean distances, from one matmul.

    Squared distances are clamped at eps before the square root, so identical features give
    distance sqrt(eps) with a zero (not infinite or NaN) gradient.
    """
    sq_norm = x.pow(2).sum(dim=1)
    dist_sq = sq_norm[:, None] + sq_norm[None, :] - 2 * (x @ x.t())
    return dist_sq.clamp(min=eps).sqrt()


class TripletLoss(nn.Module):
    """Triplet loss with batch-hard mining (Hermans et al., arXiv:1703.07737).

    For each anchor, the farthest positive (same pid, other sample) and the closest negative
    (other pid) by Euclidean distance give max(0, d_ap - d_an + margin), or with soft=True the
    soft margin log(1 + exp(d_ap - d_an)) of TransReID (no margin); the loss is the mean
    over anchors. An anchor with no positive or no negative in the batch has no triplet and is
    left out of the mean; a batch with no triplet at all gives 0 (still connected to the graph,
    so backward works and contributes nothing). Masks select (masked_fill, where) rather than
    index, so the loss never waits for the device (no host sync).
    inputs: features (B, D); targets: pids (B,).
    """

    def __init__(self, margin=0.3, soft=False):
        super().__init__()
        self.margin = margin
        self.soft = soft

    def forward(self, inputs, targets):
        dist = pairwise_euclidean(inputs)
        same = targets[:, None] == targets[None, :]
        positive = same & ~torch.eye(len(targets), dtype=torch.bool, device=targets.device)
        negative = ~same
        dist_ap = dist.masked_fill(~positive, float('-inf')).amax(dim=1)
        dist_an = dist.masked_fill(~negative, float('inf')).amin(dim=1)
        has_triplet = positive.any(dim=1) & negative.any(dim=1)
        # An anchor without a triplet has an infinite term: zero it with where, not a product.
        gap = dist_ap - dist_an
        # soft: TransReID's SoftMarginLoss(d_an - d_ap, 1) = log(1 + exp(d_ap - d_an)), no margin.
        terms = torch.where(has_triplet, F.softplus(gap) if self.soft else F.relu(gap + self.margin), 0.0)
        return terms.sum() / has_triplet.sum().clamp(min=1)


class CenterLoss(nn.Module):
    """Center loss (Wen et al., ECCV 2016) as the BoT reference computes it: the mean over the
    batch of the squared Euclidean distance between each feature and its class center,
    (1 / B) sum_i ||x_i - c_{y_i}||^2 (each term clamped to [1e-12, 1e12]).

    The centers (num_classes, feat_dim) are a parameter of this module, trained by an optimizer
    of their own (engine: SGD at --center-lr), not by the network's.
    inputs: features (B, feat_dim); targets: pids (B,).
    """

    def __init__(self, num_classes, feat_dim):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, inputs, targets):
        dist = (inputs - self.centers[targets]).pow(2).sum(dim=1)
        return dist.clamp(min=1e-12, max=1e12).mean()


class ReIDLoss(nn.Module):
    """The objective of the training scripts: cross entropy on the logits (label_smooth: epsilon of
    the label smoothing, 0 for plain cross entropy), plus,
    on the features, the batch-hard triplet loss (margin given) and the center loss weighted by
    center_weight (> 0); htri_only keeps the triplet term alone.

    inputs: the model's training output, logits (B, num_classes) or (logits, features (B, D)) (a
    model distilled from a teacher returns the features even when no term here reads them);
    targets: (B,). The losses run in float32 whatever autocast chose for the network: squared
    distances of float16 features overflow.

    Under DistributedDataParallel (a process group of several ranks) the triplet and center
    terms see the global batch: features and pids of every rank are gathered (distributed.all_gather_grad),
    so every rank computes the same global term and its gradient flows back into the local
    features, scaled so that DDP's averaging gives the single-process gradient. The cross
    entropy stays local: the mean of the ranks' local means is the global mean.
    """

    def __init__(self, num_classes, label_smooth=0.1, margin=None, htri_only=False, center_weight=0.0,
                 feat_dim=None, soft_margin=False):
        super().__init__()
        if htri_only and margin is None:
            raise ValueError('htri_only needs the triplet loss (a margin)')
        self.xent = CrossEntropyLabelSmooth(num_classes, epsilon=label_smooth)
        self.htri = TripletLoss(margin, soft=soft_margin) if margin is not None else None
        self.htri_only = htri_only
        self.center_weight = center_weight
        self.center = CenterLoss(num_classes, feat_dim) if center_weight > 0 else None

    @property
    def needs_features(self):
        return self.htri is not None or self.center is not None

    def forward(self, inputs, targets):
        logits, features = inputs if isinstance(inputs, tuple) else (inputs, None)
        with torch.autocast(logits.device.type, enabled=False):
            # At least float32 (float64 stays float64).
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            features = features.to(logits.dtype) if self.needs_features else None
            loss = logits.new_zeros(()) if self.htri_only else self.xent(logits, targets)
            if self.needs_features and distributed.is_distributed() and torch.is_grad_enabled():
                features, targets = distributed.all_gather_grad(features), distributed.all_gather_grad(targets)
            if self.htri is not None:
                loss = loss + self.htri(features, targets)
            if self.center is not None:
                loss = loss + self.center_weight * self.center(features, targets)
        return loss


def logit_distillation(student_logits, teacher_logits, temperature):
    """Hinton et al.'s distillation term (arXiv:1503.02531): T^2 KL(softmax(z_t / T) || softmax(z_s / T)),
    summed over classes and averaged over the batch. The T^2 keeps its gradient on the scale of
    the cross entropy's whatever T. (B, C) logits each, the same C -> 0-d tensor."""
    return temperature ** 2 * F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                                       F.log_softmax(teacher_logits / temperature, dim=1),
                                       reduction='batchmean', log_target=True)


def relation_distillation(student_features, teacher_features):
    """The mean squared difference of the batch's cosine-similarity matrices, ||C_s - C_t||_F^2 / B^2,
    C = F F^T of the L2-normalised features, a relational term in the spirit of Park et al. (CVPR
    2019) and Tung & Mori (ICCV 2019): the student learns how alike the teacher finds each pair of
    the batch, which needs no common feature size. (B, D_s) and (B, D_t) -> 0-d tensor; 0 when the
    two sets of features have the same cosines (equal up to scale, or up to a rotation)."""
    student, teacher = F.normalize(student_features, dim=1), F.normalize(teacher_features, dim=1)
    return (student @ student.t() - teacher @ teacher.t()).pow(2).mean()


class DistillationLoss(nn.Module):
    """Knowledge distillation from a frozen teacher (--teacher), added to the student's re-ID loss:
    logit_weight x logit_distillation at `temperature`, plus relation_weight x relation_distillation
    (a weight of 0 leaves its term out).

    teacher: a models.FrozenTeacher, which reads the student's batch (imgs, camids) in its own
    preprocessing and returns (logits (B, C), test feature (B, D_t)) without gradients; the
    student's outputs are its training output (logits (B, C), f (B, D_s)), f being the feature
    the metric losses see (before the BNNeck). The losses run in float32, as ReIDLoss's do.

    Under DistributedDataParallel the relation term compares the global batch (student and
    teacher features of every rank gathered, as ReIDLoss gathers them for the triplet loss), so
    a step on N processes is the single-process step; the logit term is per sample and stays
    local (the mean of the ranks' means is the global mean).
    """

    def __init__(self, teacher, logit_weight=1.0, temperature=4.0, relation_weight=30.0):
        super().__init__()
        self.teacher = teacher
        self.logit_weight, self.temperature, self.relation_weight = logit_weight, temperature, relation_weight

    def forward(self, student_outputs, imgs, camids=None):
        """student_outputs: (logits, f) of the student on imgs (B, 3, H, W) or clips (B, S, 3, H, W),
        normalised as the student's input; camids (B,) or None -> 0-d loss."""
        logits, features = student_outputs
        teacher_logits, teacher_features = self.teacher(imgs, camids)
        with torch.autocast(logits.device.type, enabled=False):
            dtype = torch.promote_types(logits.dtype, torch.float32)
            loss = logits.new_zeros((), dtype=dtype)
            if self.logit_weight > 0:
                loss = loss + self.logit_weight * logit_distillation(logits.to(dtype), teacher_logits.to(dtype),
                                                                     self.temperature)
            if self.relation_weight > 0:
                features, teacher_features = features.to(dtype), teacher_features.to(dtype)
                if distributed.is_distributed() and torch.is_grad_enabled():
                    features = distributed.all_gather_grad(features)
                    teacher_features = distributed.all_gather_grad(teacher_features)
                loss = loss + self.relation_weight * relation_distillation(features, teacher_features)
        return loss


class ClusterContrastLoss(nn.Module):
    """The cluster-contrast loss (Dai et al., "Cluster Contrast for Unsupervised Person
    Re-Identification", ACCV 2022) against a memory of one feature per cluster.

    loss = cross entropy of normalize(f) @ memory^T / temperature against the pseudo labels,
    the memory (C, D) holding normalised cluster features (set_memory: the cluster means at
    the start of an epoch). After each training forward pass the memory moves toward the
    batch, in the convention of the reference code (clustercontrast/models/cm.py): momentum
    is the weight of the OLD memory, m <- normalize(momentum * m + (1 - momentum) * f), so the
    published momentum 0.1 keeps a tenth of the old feature. Each sample updates its cluster
    in batch order, one after another (a cluster seen K times in a batch is updated K times);
    with hard=True each cluster of the batch is updated once, by its instance least similar
    to the memory (the reference's cm_hard). The update reads the memory as the loss saw it
    and replaces it (no in-place change of a tensor autograd saved).

    Under DistributedDataParallel the update uses the global batch in rank order (features
    gathered), so every rank keeps the same memory, that of the single-process run; the loss
    itself is each rank's mean, which DDP's gradient averaging turns into the global mean.
    features: (B, D), any scale; targets: (B,) cluster ids in 0..C-1.
    """

    def __init__(self, temperature=0.05, momentum=0.1, hard=False):
        super().__init__()
        if temperature <= 0 or not 0 <= momentum <= 1:
            raise ValueError(f'the cluster-contrast loss needs temperature > 0 and momentum in [0, 1]; '
                             f'got {temperature}, {momentum}')
        self.temperature, self.momentum, self.hard = temperature, momentum, hard
        self.register_buffer('memory', torch.zeros(0, 0))
        self.center = None  # no parameters of its own (engine's center-loss optimizer: none)

    def set_memory(self, centers):
        """Start from these (C, D) cluster features (normalised here)."""
        self.memory = F.normalize(centers.detach().float(), dim=1).to(self.memory.device)

    def forward(self, features, targets):
        with torch.autocast(features.device.type, enabled=False):
            features = F.normalize(features.float(), dim=1)
            loss = F.cross_entropy(features @ self.memory.t() / self.temperature, targets)
        if torch.is_grad_enabled() and self.training:
            self.update(distributed.all_gather_grad(features.detach()), distributed.all_gather_grad(targets))
        return loss

    @torch.no_grad()
    def update(self, features, targets):
        """The momentum update of the memory by normalised (B, D) features of clusters targets (B,)."""
        memory = self.memory.clone()
        if self.hard:
            similarity = (features * memory[targets]).sum(dim=1)
            order = torch.argsort(similarity, stable=True)  # least similar first
            clusters, inverse = torch.unique(targets[order], return_inverse=True)
            first = torch.full((len(clusters),), len(order), device=targets.device)
            first = first.scatter_reduce(0, inverse, torch.arange(len(order), device=targets.device), 'amin')
            steps = [(clusters, features[order[first]])]
        else:
            # The k-th occurrence of each cluster in batch order goes in the k-th round.
            occurrence = torch.zeros_like(targets)
            order = torch.argsort(targets, stable=True)
            _, counts = torch.unique_consecutive(targets[order], return_counts=True)
            occurrence[order] = torch.arange(len(targets), device=targets.device) - \
                torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
            steps = [(targets[occurrence == k], features[occurrence == k]) for k in range(int(counts.max()))]
        for clusters, batch in steps:
            memory[clusters] = F.normalize(self.momentum * memory[clusters] + (1 - self.momentum) * batch, dim=1)
        self.memory = memory
