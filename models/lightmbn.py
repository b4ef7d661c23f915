"""LightMBN `LMBN_n` (Herzog et al., "Lightweight Multi-Branch Network for Person
Re-Identification", ICIP 2021; jixunbo/LightMBN model/lmbn_n.py), in LightMBN's tree so that its
trained files load strictly once their seven classifiers are dropped.

An OSNet x1.0 (models.osnet's blocks) is split after the first block of conv3: the shared
`backbone` (stem, max pool, conv2, conv3's first block; LightMBN spells it `backone`, BoxMOT
renamed it) feeds three deep copies of the rest (conv3's second block and transition, conv4,
conv5): `global_branch`, `partial_branch`, `channel_branch`, each a (N, 512, H/16, W/16) map
(24 x 8 at 384x128). A slice of a Sequential keeps its indices, so their first stage is
`*_branch.0.1.*` (the block) and `*_branch.0.2.0.*` (the transition conv), as in LightMBN's files.
Seven 512-d features come out, each after a BatchNorm1d neck:
  glo       the global map through `batch_drop_block`'s OSBlock, average-pooled, `reduction_0`
  glo_drop  the same map max-pooled, `reduction_4` (Top-DropBlock erases rows of it in LightMBN's
            training only; at test time both see the whole map)
  g_par     the partial map max-pooled, `reduction_1`
  p0, p1    its top and bottom halves average-pooled, `reduction_2`, `reduction_3`
  c0, c1    the channel map average-pooled, split into two 256-channel halves, each through the
            `shared` 1x1 conv (256 -> 512, BN, ReLU), `reduction_ch_0`, `reduction_ch_1`
where `reduction_k` is a bias-free 1x1 conv (512 -> 512) then the neck. Stacked in the order
(glo, glo_drop, g_par, p0, p1, c0, c1) they form LightMBN's (N, 512, 7) output, flattened
channel-major (index = channel * 7 + part) to 3584.

Two test-feature conventions (`test_feature`):
  'lightmbn'  LightMBN's own evaluation (engine_v3.extract_feature), under which its figures were
              published: the outputs of the image and of its mirror image summed, each of the 7
              parts L2-normalised over its 512 channels, flattened (norm sqrt 7); cosine metric;
  'boxmot'    the flat output of one pass, as BoxMOT feeds its trackers (which L2-normalise the
              whole vector afterwards).
In training the model returns the flat 3584-d output of one pass, for the repo's single
classifier; LightMBN trains seven classifiers (dropped when a file is converted) with
Top-DropBlock, which this model does not reproduce.
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn

from .base import ReIDModel
from .osnet import OSNET_WIDTHS, _OSBlock, _OSNetTrunk

__all__ = ['LightMBN', 'LIGHTMBN_ARCHS', 'LIGHTMBN_TEST_FEATURES', 'PARTS', 'PART_DIM']

LIGHTMBN_TEST_FEATURES = ('lightmbn', 'boxmot')
PARTS = 7  # glo, glo_drop, g_par, p0, p1, c0, c1
PART_DIM = 512
_CHANNEL_SPLITS = 2


def _reduction():
    """BNNeck3 less its classifier: `reduction` (bias-free 1x1 conv), `bn` (BatchNorm1d whose
    shift stays 0 in training)."""
    neck = nn.ModuleDict({'reduction': nn.Conv2d(PART_DIM, PART_DIM, 1, bias=False), 'bn': _neck_norm()})
    nn.init.kaiming_normal_(neck['reduction'].weight, mode='fan_in')
    return neck


def _neck_norm():
    norm = nn.BatchNorm1d(PART_DIM)
    norm.bias.requires_grad_(False)
    return norm


class LightMBN(ReIDModel):
    """LightMBN LMBN_n (module docstring): (N, 3, H, W) -> (N, 3584) with test_feature 'lightmbn'
    or 'boxmot', then the repo's (neck and) classifier."""

    def __init__(self, num_classes, loss=('xent',), pool='avg', neck='none', neck_feat='after',
                 test_feature='lightmbn'):
        super().__init__(loss, pool, neck, neck_feat)
        if test_feature not in LIGHTMBN_TEST_FEATURES:
            raise ValueError(f'unknown LightMBN test feature {test_feature!r}; choose from {LIGHTMBN_TEST_FEATURES}')
        self.test_feature = test_feature
        osnet = _OSNetTrunk(OSNET_WIDTHS['x1_0'])
        self.backbone = nn.Sequential(osnet.conv1, osnet.maxpool, osnet.conv2, osnet.conv3[0])
        tail = nn.Sequential(osnet.conv3[1:], osnet.conv4, osnet.conv5)
        self.global_branch = tail
        self.partial_branch = copy.deepcopy(tail)
        self.channel_branch = copy.deepcopy(tail)
        self.batch_drop_block = nn.ModuleDict({'drop_batch_bottleneck': _OSBlock(PART_DIM, PART_DIM)})
        for index in range(5):
            setattr(self, f'reduction_{index}', _reduction())
        self.shared = nn.Sequential(nn.Conv2d(PART_DIM // _CHANNEL_SPLITS, PART_DIM, 1, bias=False),
                                    nn.BatchNorm2d(PART_DIM), nn.ReLU(inplace=True))
        nn.init.kaiming_normal_(self.shared[0].weight, mode='fan_in')
        self.reduction_ch_0 = nn.ModuleDict({'bn': _neck_norm()})
        self.reduction_ch_1 = nn.ModuleDict({'bn': _neck_norm()})
        self.build_head(PART_DIM * PARTS, num_classes)

    def part_features(self, images):
        """(N, 3, H, W) -> (N, 512, 7): LightMBN's eval output, parts in the order glo, glo_drop,
        g_par, p0, p1, c0, c1, each after its neck."""
        x = self.backbone(images)
        glo = self.batch_drop_block['drop_batch_bottleneck'](self.global_branch(x))
        par = self.partial_branch(x)
        cha = self.channel_branch(x).mean(dim=(2, 3), keepdim=True)
        halves = F.adaptive_avg_pool2d(par, (2, 1))
        pooled = [  # (N, 512, 1, 1) each, paired with its reduction
            (glo.mean(dim=(2, 3), keepdim=True), self.reduction_0),
            (glo.amax(dim=(2, 3), keepdim=True), self.reduction_4),
            (par.amax(dim=(2, 3), keepdim=True), self.reduction_1),
            (halves[:, :, 0:1], self.reduction_2),
            (halves[:, :, 1:2], self.reduction_3),
        ]
        parts = [neck['bn'](neck['reduction'](p).flatten(1)) for p, neck in pooled]
        for half, neck in zip(cha.chunk(_CHANNEL_SPLITS, dim=1), (self.reduction_ch_0, self.reduction_ch_1)):
            parts.append(neck['bn'](self.shared(half).flatten(1)))
        return torch.stack(parts, dim=2)

    def features(self, images):
        """(N, 3, H, W) -> (N, 3584), channel-major: the test feature of `test_feature` in eval
        mode, the flat output of one pass in training."""
        parts = self.part_features(images)
        if self.training or self.test_feature == 'boxmot':
            return parts.flatten(1)
        parts = parts + self.part_features(images.flip(dims=[3]))
        return F.normalize(parts, dim=1).flatten(1)


LIGHTMBN_ARCHS = {'lmbn_n': (LightMBN, {})}
