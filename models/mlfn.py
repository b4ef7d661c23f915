"""MLFN, the Multi-Level Factorisation Net (Chang et al., CVPR 2018), in torchreid's tree
(torchreid/models/mlfn.py), so its `mlfn_*` zoo files load strictly into `backbone`.

A ResNeXt-50-like trunk (32 groups) of 16 blocks, 3-4-6-3 by stage, whose blocks are
"factor modules": the grouped 3x3 conv's 32 groups are the latent factors, and each block's factor
selection module (FSM) looks at the block's input (global average pool, three 1x1 convs with BN:
C -> a -> b -> 32, sigmoid) and weighs every group of the 3x3 conv's output by one gate. The 16
blocks' 32-d selections, concatenated (512-d), are the "factor signature" S. The 1024-d feature
is the mean of two embeddings: `fc_x` of the pooled last map and `fc_s` of S (each a 1x1 conv,
BN, ReLU), so it is non-negative.
"""
import torch
from torch import nn

from .base import TrunkFeatureModel
from .osnet import init_torchreid_weights

__all__ = ['MLFN', 'MLFN_ARCHS']

GROUPS = 32
EMBED_DIM = 1024
# (output channels, stride, FSM hidden widths) of the 16 blocks, torchreid's channels
# [64, 256, 512, 1024, 2048]: three blocks at 256, four at 512, six at 1024, three at 2048
_BLOCKS = ([(256, 1, (128, 64))] * 3
           + [(512, 2, (256, 128))] + [(512, 1, (256, 128))] * 3
           + [(1024, 2, (512, 128))] + [(1024, 1, (512, 128))] * 5
           + [(2048, 2, (512, 128))] + [(2048, 1, (512, 128))] * 2)


def _conv_bn(in_channels, out_channels, kernel=1, stride=1, groups=1):
    """A conv without bias ('same' padding) and its BatchNorm, as a pair."""
    return (nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, groups=groups,
                      bias=False), nn.BatchNorm2d(out_channels))


class _FactorModule(nn.Module):
    """One MLFN block: (N, C_in, H, W) -> ((N, C_out, H / stride, W / stride), (N, 32, 1, 1) factor
    selection). Bottleneck 1x1 -> grouped 3x3 (stride) -> 1x1 at C_out / 2, each with BN and ReLU;
    the grouped conv's output is gated group by group by the FSM's selection (computed from the
    block input), the result ReLU'd and added to the (projected) shortcut."""

    def __init__(self, in_channels, out_channels, stride, fsm_widths):
        super().__init__()
        mid = out_channels // 2
        self.fm_conv1, self.fm_bn1 = _conv_bn(in_channels, mid)
        self.fm_conv2, self.fm_bn2 = _conv_bn(mid, mid, 3, stride, groups=GROUPS)
        self.fm_conv3, self.fm_bn3 = _conv_bn(mid, out_channels)
        hidden, narrow = fsm_widths
        self.fsm = nn.Sequential(  # indices as torchreid's: pool 0, conv 1/4/7, BN 2/5/8
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, narrow, 1), nn.BatchNorm2d(narrow), nn.ReLU(inplace=True),
            nn.Conv2d(narrow, GROUPS, 1), nn.BatchNorm2d(GROUPS), nn.Sigmoid())
        self.downsample = (nn.Sequential(*_conv_bn(in_channels, out_channels, 1, stride))
                           if in_channels != out_channels or stride > 1 else None)

    def forward(self, x):
        selection = self.fsm(x)
        out = torch.relu(self.fm_bn1(self.fm_conv1(x)))
        out = torch.relu(self.fm_bn2(self.fm_conv2(out)))
        # group g of the grouped conv is channels [g * C / 32, (g + 1) * C / 32): one gate each
        out = out * selection.repeat_interleave(out.shape[1] // GROUPS, dim=1)
        out = torch.relu(self.fm_bn3(self.fm_conv3(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(shortcut + out), selection


class _MLFNTrunk(nn.Module):
    """torchreid's MLFN less `classifier`: (N, 3, H, W) -> (N, 1024) feature."""

    feature_dim = EMBED_DIM

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)  # with bias, as torchreid's
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        blocks, in_channels = [], 64
        for out_channels, stride, fsm_widths in _BLOCKS:
            blocks.append(_FactorModule(in_channels, out_channels, stride, fsm_widths))
            in_channels = out_channels
        self.feature = nn.ModuleList(blocks)
        self.fc_x = nn.Sequential(nn.Conv2d(2048, EMBED_DIM, 1, bias=False), nn.BatchNorm2d(EMBED_DIM),
                                  nn.ReLU(inplace=True))
        self.fc_s = nn.Sequential(nn.Conv2d(GROUPS * len(_BLOCKS), EMBED_DIM, 1, bias=False),
                                  nn.BatchNorm2d(EMBED_DIM), nn.ReLU(inplace=True))
        init_torchreid_weights(self)

    def forward(self, images):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(images))))
        selections = []
        for block in self.feature:
            x, selection = block(x)
            selections.append(selection)
        signature = torch.cat(selections, dim=1)  # (N, 512, 1, 1)
        embedded = self.fc_x(x.mean(dim=(2, 3), keepdim=True)) + self.fc_s(signature)
        return (embedded / 2).flatten(1)


class MLFN(TrunkFeatureModel):
    """torchreid's MLFN (`backbone`, 1024-d feature), then the repo's (neck and) classifier."""

    def __init__(self, num_classes, loss=('xent',), pool='avg', neck='none', neck_feat='after'):
        super().__init__(num_classes, _MLFNTrunk(), loss, pool, neck, neck_feat)


MLFN_ARCHS = {'mlfn': (MLFN, {})}
