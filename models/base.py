"""What every re-ID model shares: the train/eval output contract and video input."""
import pickle
import socket
import urllib.error

import torch
from torch import nn

__all__ = ['ReIDModel', 'PretrainedWeightsError', 'temporal_pool', 'imagenet_backbone']

LOSSES = ({'xent'}, {'xent', 'htri'})


class PretrainedWeightsError(RuntimeError):
    """ImageNet weights could not be obtained."""


def temporal_pool(frame_features, pool):
    """(B, S, D) frame features -> (B, D) tracklet features by 'avg' or 'max' over S."""
    if pool == 'avg':
        return frame_features.mean(dim=1)
    if pool == 'max':
        return frame_features.amax(dim=1)
    raise ValueError(f"unknown temporal pooling {pool!r}; choose 'avg' or 'max'")


class ReIDModel(nn.Module):
    """Base class: subclasses set `feat_dim`, `classifier` and implement `features`.

    forward(x) takes images (B, C, H, W) or clips (B, S, C, H, W); a clip's S frame features
    are pooled over time (`pool`, 'avg' or 'max') into one feature per tracklet.
      eval mode:                       the feature, (B, feat_dim)
      train mode, loss {'xent'}:       logits, (B, num_classes)
      train mode, loss {'xent','htri'}: (logits, feature)
    """

    def __init__(self, loss, pool='avg'):
        super().__init__()
        loss = set(loss)
        if loss not in LOSSES:
            raise ValueError(f"unsupported loss {sorted(loss)}; use {{'xent'}} or {{'xent', 'htri'}}")
        temporal_pool(torch.zeros(1, 1, 1), pool)  # reject an unknown pool now, not mid-training
        self.loss = loss
        self.pool = pool

    def features(self, images):
        """(N, C, H, W) images -> (N, feat_dim) features."""
        raise NotImplementedError

    def forward(self, x):
        if x.dim() == 5:
            batch, seq_len = x.shape[:2]
            f = self.features(x.flatten(0, 1)).view(batch, seq_len, -1)
            f = temporal_pool(f, self.pool)
        else:
            f = self.features(x)
        if not self.training:
            return f
        logits = self.classifier(f)
        if self.loss == {'xent'}:
            return logits
        return logits, f


def imagenet_backbone(builder, weights, pretrained=True, pretrained_path=None, download_timeout=30):
    """Build a torchvision network, ImageNet-initialised.

    pretrained_path: a local torchvision ImageNet state dict (e.g. resnet50-0676ba61.pth);
    otherwise, when pretrained, torchvision's weights API (`weights`), which downloads into the
    torch hub cache once and reads it from there afterwards. A failed download stops at once
    with what to do instead; pretrained=False gives random initialisation.
    """
    if pretrained_path:
        net = builder(weights=None)
        try:
            state_dict = torch.load(pretrained_path, map_location='cpu', weights_only=True)
            net.load_state_dict(state_dict)
        except (OSError, RuntimeError, KeyError, pickle.UnpicklingError) as error:
            raise PretrainedWeightsError(
                f'cannot load ImageNet weights from --pretrained-path {pretrained_path}: {error}. '
                f'It must be a torchvision state dict such as {weights.url.rsplit("/", 1)[-1]}.') from error
        return net
    if not pretrained:
        return builder(weights=None)
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(download_timeout)  # an offline machine should fail fast, not hang
    try:
        return builder(weights=weights)
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        raise PretrainedWeightsError(
            f'cannot fetch ImageNet weights {weights.url} ({error}).\n'
            f'Offline? Either download that file elsewhere and pass --pretrained-path FILE (or copy '
            f'it into {torch.hub.get_dir()}/checkpoints/), or train from random initialisation '
            f'with --no-pretrained. --resume does not need ImageNet weights.') from error
    finally:
        socket.setdefaulttimeout(previous_timeout)
