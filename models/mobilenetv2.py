"""MobileNetV2 (Sandler et al., CVPR 2018) re-ID models in torchreid's tree
(torchreid/models/mobilenetv2.py): `mobilenetv2_x1_0` and `mobilenetv2_x1_4`, so torchreid's zoo
files load strictly into `backbone`.

Inverted residual blocks: a 1x1 expansion to t x C_in channels (BN, ReLU6), a depthwise 3x3
(BN, ReLU6), a linear 1x1 projection (BN, no activation), and the identity added when the stride
is 1 and the width unchanged. torchreid's tree differs from torchvision's: every block, even the
first with t = 1, has its expansion conv (`conv1`), and the stages are `conv2`..`conv8` after the
stem `conv1` and before the final 1x1 `conv9`. The test feature is the average-pooled conv9 map:
1280-d at x1.0 and int(1280 x 1.4) = 1792-d at x1.4 (widths int(c x multiplier), truncated).
"""
from torch import nn

from .base import TrunkFeatureModel
from .osnet import init_torchreid_weights

__all__ = ['MobileNetV2', 'MOBILENETV2_ARCHS']

# (expansion t, output channels c at x1.0, blocks n, first stride s) of conv2..conv8
_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
           (6, 320, 1, 1))


class _ConvBNReLU6(nn.Module):
    """torchreid's ConvBlock: conv (no bias, `groups`), `bn`, ReLU6; (N, C_in, H, W) -> (N, C_out,
    H / stride, W / stride)."""

    def __init__(self, in_channels, out_channels, kernel, stride=1, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, groups=groups,
                              bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        return nn.functional.relu6(self.bn(self.conv(x)))


class _InvertedResidual(nn.Module):
    """Expansion `conv1`, depthwise `dwconv2` (stride), linear projection `conv3` (conv, BN)."""

    def __init__(self, in_channels, out_channels, expansion, stride):
        super().__init__()
        mid = in_channels * expansion
        self.residual = stride == 1 and in_channels == out_channels
        self.conv1 = _ConvBNReLU6(in_channels, mid, 1)
        self.dwconv2 = _ConvBNReLU6(mid, mid, 3, stride, groups=mid)
        self.conv3 = nn.Sequential(nn.Conv2d(mid, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x):
        out = self.conv3(self.dwconv2(self.conv1(x)))
        return x + out if self.residual else out


class _MobileNetV2Trunk(nn.Module):
    """torchreid's MobileNetV2 less `classifier` (no `fc`: torchreid's fc_dims is None for both
    zoo models): (N, 3, H, W) -> (N, feature_dim) pooled conv9 map."""

    def __init__(self, width_multiplier):
        super().__init__()
        channels = int(32 * width_multiplier)
        self.feature_dim = int(1280 * width_multiplier) if width_multiplier > 1 else 1280
        self.conv1 = _ConvBNReLU6(3, channels, 3, stride=2)
        for index, (expansion, width, blocks, stride) in enumerate(_STAGES, start=2):
            out_channels = int(width * width_multiplier)
            stage = []
            for block in range(blocks):
                stage.append(_InvertedResidual(channels, out_channels, expansion, stride if block == 0 else 1))
                channels = out_channels
            setattr(self, f'conv{index}', nn.Sequential(*stage))
        self.conv9 = _ConvBNReLU6(channels, self.feature_dim, 1)
        init_torchreid_weights(self)

    def forward(self, images):
        x = self.conv1(images)
        for index in range(2, 2 + len(_STAGES)):
            x = getattr(self, f'conv{index}')(x)
        return self.conv9(x).mean(dim=(2, 3))


class MobileNetV2(TrunkFeatureModel):
    """torchreid's MobileNetV2 at `width_multiplier` (1.0 or 1.4) as `backbone`, then the repo's
    (neck and) classifier."""

    def __init__(self, num_classes, loss=('xent',), pool='avg', neck='none', neck_feat='after', width_multiplier=1.0):
        super().__init__(num_classes, _MobileNetV2Trunk(width_multiplier), loss, pool, neck, neck_feat)


MOBILENETV2_ARCHS = {
    'mobilenetv2_x1_0': (MobileNetV2, {'width_multiplier': 1.0}),
    'mobilenetv2_x1_4': (MobileNetV2, {'width_multiplier': 1.4}),
}
