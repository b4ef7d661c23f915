"""MGN (Wang et al., "Learning Discriminative Features with Multiple Granularities for Person
Re-Identification", ACM MM 2018) as fast-reid builds it (`fastreid/modeling/meta_arch/mgn.py`), so that
fast-reid's MGN files run here with the architecture they were trained with.

A ResNet-50/101 (IBN-a or plain; models.fastreid's, so the stem max-pool follows the file's era as for
fast-reid's Baselines) is cut after the first block of layer3: the stem, layer1, layer2 and
layer3[0] are shared (`backbone`, an nn.Sequential with fast-reid's indices 0-6); three branches `b1`, `b2`,
`b3` each own a copy of the rest of layer3 and of layer4, all at stride 1 (fast-reid's MGN configs set
LAST_STRIDE 1 for the global branch, and its part branches `res_p_conv5` are stride 1 by construction), so
every branch gives a (B, 2048, H/16, W/16) map (24 x 8 at 384x128). b2's map is cut into 2 horizontal
stripes and b3's into 3 with `torch.chunk` (so 16 rows give stripes of 6, 6 and 4, as in fast-reid).
Eight heads, one per map (b1, b2, b3 globals; b21, b22, b31, b32, b33 stripes), pool and reduce it to 256
channels with a 1x1 conv; in fast-reid's first layout (its v0.1 zoo files, until 2020-09-01) the reduction
is followed by a BN and a ReLU, afterwards the reduction feeds the BN-neck directly.

Every head ends with its own BN-neck. Eight BatchNorms over disjoint 256-channel slices are one
BatchNorm over their concatenation, so the eight necks are ReIDModel's `bottleneck` (BatchNorm1d(2048))
over the heads' reductions concatenated in fast-reid's test order b1, b2, b3, b21, b22, b31, b32, b33:
the eval feature is then fast-reid's, and training, evaluation, export and distillation go through
ReIDModel unchanged (one classifier reads the 2048-d BN-neck feature; fast-reid's eight per-head
classifiers are not kept).
"""
import copy

import torch
from torch import nn

from weights.mgn import FEATURE_ORDER  # fast-reid's torch.cat order of the eight head features

from .base import ReIDModel, make_global_pool
from .fastreid import build_backbone
from .resnet_ibn import init_resnet_weights

__all__ = ['BACKBONES', 'FEATURE_ORDER', 'HEAD_LAYOUTS', 'MGN']

STRIPES = {'b2': ('b21', 'b22'), 'b3': ('b31', 'b32', 'b33')}
# 'bn_relu': pool, 1x1 conv, BN, ReLU (fast-reid until 2020-09-01); 'conv': pool, 1x1 conv (later).
HEAD_LAYOUTS = ('bn_relu', 'conv')
BACKBONES = ('resnet50', 'resnet101')  # MGN's part branches are bottleneck stages of 1024 -> 2048 channels


class _Reduction(nn.Module):
    """A head before its BN-neck: (B, 2048, h, w) -> pool -> 1x1 conv -> [BN -> ReLU] -> (B, dim)."""

    def __init__(self, pool, dim, layout, in_channels=2048):
        super().__init__()
        self.pool = pool
        self.conv = nn.Conv2d(in_channels, dim, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm1d(dim) if layout == 'bn_relu' else None

    def forward(self, feature_map):
        reduced = self.conv(self.pool(feature_map)[:, :, None, None]).flatten(1)
        return reduced if self.bn is None else torch.relu(self.bn(reduced))


def _stripes(feature_map, count, name):
    """torch.chunk of the rows into `count` stripes, as fast-reid cuts them; an error when the map is too
    short for chunk to give `count` pieces (1, 2 or 4 rows for three stripes)."""
    pieces = torch.chunk(feature_map, count, dim=2)
    if len(pieces) != count:
        raise ValueError(f'MGN branch {name}: a feature map of {feature_map.shape[2]} rows cannot be cut into '
                         f'{count} stripes; use a taller input (fast-reid tests at 384x128, a 24-row map)')
    return pieces


class MGN(ReIDModel):
    """fast-reid's MGN on one of its ResNet trunks (models.fastreid.build_backbone, which owns the eras'
    stem max-pool).

    backbone: 'resnet50' or 'resnet101'; ibn: IBN-a in layer1-layer3; stem_pool: 'pad' or 'ceil'
    (models.fastreid); head: 'bn_relu' or 'conv' (HEAD_LAYOUTS); embedding_dim: each head's width
    (fast-reid: 256, so the feature is 2048-d); global_pool: the heads' pool ('gem' with a trainable p,
    'gem_fixed', 'avg' or 'max'); shared_pool: one pool module for all eight heads, as fast-reid's first
    layout built it (a single trainable p). neck: 'bnneck', the heads' BN-necks, as fast-reid has them and
    weights.mgn records for its files; 'none' leaves them out (the feature is then the reductions').
    """

    def __init__(self, num_classes, loss=('xent',), pool='avg', neck='bnneck', neck_feat='after',
                 backbone='resnet50', ibn=True, stem_pool='ceil', head='conv', embedding_dim=256, global_pool='gem',
                 shared_pool=False):
        super().__init__(loss, pool, neck, neck_feat)
        if backbone not in BACKBONES:
            raise ValueError(f'MGN backbone {backbone!r}: choose from {BACKBONES}')
        if head not in HEAD_LAYOUTS:
            raise ValueError(f'MGN head layout {head!r}: choose from {HEAD_LAYOUTS}')
        trunk = build_backbone(backbone, last_stride=1, ibn=ibn, stem_pool=stem_pool)
        self.backbone = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool, trunk.layer1, trunk.layer2,
                                      trunk.layer3[0])
        # nn.Sequential(*...) renumbers the blocks from 0, as fast-reid's `b1.0.0` names them
        branch = nn.Sequential(nn.Sequential(*trunk.layer3[1:]), trunk.layer4)
        self.b1, self.b2, self.b3 = branch, copy.deepcopy(branch), copy.deepcopy(branch)
        shared = make_global_pool(global_pool) if shared_pool else None
        self.heads = nn.ModuleDict({name: _Reduction(shared or make_global_pool(global_pool), embedding_dim, head)
                                    for name in FEATURE_ORDER})
        init_resnet_weights(self.heads)  # fast-reid's weights_init_kaiming: Kaiming fan_out convs
        self.build_head(len(FEATURE_ORDER) * embedding_dim, num_classes)

    def features(self, images):
        """(B, 3, H, W) -> (B, 8 * embedding_dim): the heads' reductions, in fast-reid's order."""
        shared = self.backbone(images)
        maps = {name: getattr(self, name)(shared) for name in ('b1', 'b2', 'b3')}
        for branch, stripes in STRIPES.items():
            maps.update(zip(stripes, _stripes(maps[branch], len(stripes), branch)))
        return torch.cat([self.heads[name](maps[name]) for name in FEATURE_ORDER], dim=1)
