"""Re-ID objectives: label-smoothed cross entropy and batch-hard triplet loss."""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['CrossEntropyLabelSmooth', 'TripletLoss', 'XentTripletLoss', 'pairwise_euclidean']


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
    (other pid) by Euclidean distance give max(0, d_ap - d_an + margin); the loss is the mean
    over anchors. An anchor with no positive or no negative in the batch has no triplet and is
    left out of the mean; a batch with no triplet at all gives 0 (still connected to the graph,
    so backward works and contributes nothing).
    inputs: features (B, D); targets: pids (B,).
    """

    def __init__(self, margin=0.3):
        super().__init__()
        self.margin = margin

    def forward(self, inputs, targets):
        dist = pairwise_euclidean(inputs)
        same = targets[:, None] == targets[None, :]
        positive = same & ~torch.eye(len(targets), dtype=torch.bool, device=targets.device)
        negative = ~same
        dist_ap = dist.masked_fill(~positive, float('-inf')).amax(dim=1)
        dist_an = dist.masked_fill(~negative, float('inf')).amin(dim=1)
        has_triplet = positive.any(dim=1) & negative.any(dim=1)
        if not has_triplet.any():
            return inputs.sum() * 0.0
        return F.relu(dist_ap - dist_an + self.margin)[has_triplet].mean()


class XentTripletLoss(nn.Module):
    """The objective of the *_xent_htri scripts: label-smoothed cross entropy on the logits plus
    the batch-hard triplet loss on the features, or the triplet term alone (htri_only).
    inputs: the model's training output (logits (B, num_classes), features (B, D)); targets: (B,).
    """

    def __init__(self, num_classes, margin=0.3, htri_only=False):
        super().__init__()
        self.xent = CrossEntropyLabelSmooth(num_classes)
        self.htri = TripletLoss(margin)
        self.htri_only = htri_only

    def forward(self, inputs, targets):
        logits, features = inputs
        if self.htri_only:
            return self.htri(features, targets)
        return self.xent(logits, targets) + self.htri(features, targets)
