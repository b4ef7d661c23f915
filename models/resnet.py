"""ResNet50 and ResNet50M (Yu et al., arXiv:1711.08106) re-ID models on torchvision's ResNet50."""
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet50_Weights, resnet50

from .base import ReIDModel, imagenet_backbone, make_global_pool

__all__ = ['ResNet50', 'ResNet50M', 'set_last_stride']


def set_last_stride(net, last_stride):
    """Give torchvision-layout ResNet `net` (stride on the 3x3 conv) a layer4 stride of 1 or 2.

    last_stride 1 keeps layer4 at the resolution of layer3 (a 16x8 map for 256x128 input
    instead of 8x4); the weights are the same, only the stride of its first block changes."""
    if last_stride not in (1, 2):
        raise ValueError(f'last stride must be 1 or 2, got {last_stride}')
    net.layer4[0].conv2.stride = (last_stride, last_stride)
    net.layer4[0].downsample[0].stride = (last_stride, last_stride)


def _resnet50_trunk(pretrained, pretrained_path, last_stride):
    """torchvision ResNet50 without avgpool and fc, as nn.Sequential indices 0..7
    (conv1, bn1, relu, maxpool, layer1..layer4): the `base.N` names of the 2018 checkpoints;
    layer4's stride is last_stride (set_last_stride)."""
    if last_stride not in (1, 2):
        raise ValueError(f'last stride must be 1 or 2, got {last_stride}')
    net = imagenet_backbone(resnet50, ResNet50_Weights.IMAGENET1K_V1, pretrained, pretrained_path)
    set_last_stride(net, last_stride)
    return nn.Sequential(*list(net.children())[:-2])


def _pool(feature_map):
    """(N, C, H, W) -> (N, C) global average pooling."""
    return F.adaptive_avg_pool2d(feature_map, 1).flatten(1)


class ResNet50(ReIDModel):
    """ResNet50 trunk, global pooling (`global_pool`: avg as in 2018, max or gem), 2048-d
    feature, (neck and) linear classifier."""

    def __init__(self, num_classes, loss=('xent',), pretrained=True, pretrained_path=None, pool='avg',
                 last_stride=2, neck='none', neck_feat='after', global_pool='avg'):
        super().__init__(loss, pool, neck, neck_feat)
        self.base = _resnet50_trunk(pretrained, pretrained_path, last_stride)
        self.global_pool = make_global_pool(global_pool)
        self.build_head(2048, num_classes)

    def features(self, images):
        return self.global_pool(self.base(images))


class ResNet50M(ReIDModel):
    """ResNet50 with mid-level features: the last stage's three blocks are each pooled; the first
    two (2 x 2048) are fused by Linear(4096, 1024) + BatchNorm1d + ReLU and concatenated with the
    last block's 2048-d feature into a 3072-d feature.

    As in the 2018 code, the trunk is registered both as `base` and, split into stages, as
    `layers1`..`layers5c` (the same modules), so its checkpoints hold both sets of names.
    """

    def __init__(self, num_classes, loss=('xent',), pretrained=True, pretrained_path=None, pool='avg',
                 last_stride=2, neck='none', neck_feat='after'):
        super().__init__(loss, pool, neck, neck_feat)
        self.base = _resnet50_trunk(pretrained, pretrained_path, last_stride)
        self.layers1 = nn.Sequential(self.base[0], self.base[1], self.base[2])
        self.layers2 = nn.Sequential(self.base[3], self.base[4])
        self.layers3 = self.base[5]
        self.layers4 = self.base[6]
        self.layers5a = self.base[7][0]
        self.layers5b = self.base[7][1]
        self.layers5c = self.base[7][2]
        self.fc_fuse = nn.Sequential(nn.Linear(4096, 1024), nn.BatchNorm1d(1024), nn.ReLU())
        self.build_head(3072, num_classes)

    def features(self, images):
        x = self.layers4(self.layers3(self.layers2(self.layers1(images))))
        x5a = self.layers5a(x)
        x5b = self.layers5b(x5a)
        x5c = self.layers5c(x5b)
        mid = self.fc_fuse(torch.cat([_pool(x5a), _pool(x5b)], dim=1))
        return torch.cat([_pool(x5c), mid], dim=1)
