"""HACNN, the Harmonious Attention CNN (Li et al., "Harmonious Attention Network for Person
Re-Identification", CVPR 2018), in torchreid's tree (torchreid/models/hacnn.py), so its `hacnn_*`
zoo files load strictly into `backbone`. torchreid accepts 160x64 images only (its files are
trained at that size and this repo's checkpoints of them record it); this model takes any size
divisible by 16, the regions keeping their fixed sizes.

A global branch of three Inception stages (an Inception-A block, then a stride-2 Inception-B
block), each followed by a Harmonious Attention module that learns jointly
  - soft attention, which multiplies the stage's map: a spatial map (channel mean, 3x3 stride-2
    conv, bilinear x2 upsampling, 1x1 conv) times a channel vector (SE-like: pooled, C -> C/16 ->
    C), through a 1x1 conv and a sigmoid; every conv here is conv (with bias), BN, ReLU;
  - hard attention: four translations (tanh of a Linear on the pooled map) of fixed boxes of full
    width and a quarter of the height, initialised as the four horizontal stripes;
and a local branch that samples those four regions (spatial transformer: affine grid and
bilinear sampling, zero padding) from the previous stage's global map, resizes them to fixed
sizes (24x28, 12x14, 6x7), adds the previous local map and runs its own Inception-B blocks
(shared by the four regions). Global: average pool, `fc_global` (Linear 384 -> 512, BN, ReLU);
local: the four regions' pooled 384-d maps concatenated, `fc_local` (1536 -> 512, BN, ReLU). The
test feature, as torchreid's eval mode gives it: the two 512-d features, each L2-normalised,
concatenated (1024-d, norm sqrt 2).

The grid is sampled with align_corners=False, PyTorch's default since 1.3 and so what torchreid's
code computes when run today (it passes no align_corners); the resizes use align_corners=True,
as torchreid asks. This model returns the normalised feature in training too (its classifier
reads it), where torchreid trains two classifiers on the raw halves: torchreid's
`classifier_global` / `classifier_local` are not part of this tree.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .base import TrunkFeatureModel

__all__ = ['HACNN', 'HACNN_ARCHS', 'HACNN_SIZE']

HACNN_SIZE = (160, 64)  # the only input torchreid's HACNN takes
STAGE_CHANNELS = (128, 256, 384)
FEATURE_DIM = 512  # per branch; the test feature is 2 x 512
REGIONS = 4
_LOCAL_SIZES = ((24, 28), (12, 14), (6, 7))  # the sampled regions' sizes before each local block
_REGION_HEIGHT = 0.25  # the boxes' scale: full width, a quarter of the height
_INITIAL_TRANSLATIONS = (0, -0.75, 0, -0.25, 0, 0.25, 0, 0.75)  # (x, y) per region: the four stripes


class _ConvBNReLU(nn.Module):
    """torchreid's hacnn ConvBlock: conv (with bias), `bn`, ReLU."""

    def __init__(self, in_channels, out_channels, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class _InceptionA(nn.Module):
    """(N, C_in, H, W) -> (N, C_out, H, W): three 1x1 -> 3x3 streams and a 3x3 average pool -> 1x1
    stream, C_out / 4 channels each, concatenated."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        mid = out_channels // 4
        for name in ('stream1', 'stream2', 'stream3'):
            setattr(self, name, nn.Sequential(_ConvBNReLU(in_channels, mid, 1), _ConvBNReLU(mid, mid, 3, padding=1)))
        self.stream4 = nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), _ConvBNReLU(in_channels, mid, 1))

    def forward(self, x):
        return torch.cat([self.stream1(x), self.stream2(x), self.stream3(x), self.stream4(x)], dim=1)


class _InceptionB(nn.Module):
    """(N, C_in, H, W) -> (N, C_out, ceil(H / 2), ceil(W / 2)): 1x1 -> 3x3 stride 2 (C_out / 4),
    1x1 -> 3x3 -> 3x3 stride 2 (C_out / 4), 3x3 max pool stride 2 -> 1x1 (C_out / 2), concatenated."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        mid = out_channels // 4
        self.stream1 = nn.Sequential(_ConvBNReLU(in_channels, mid, 1), _ConvBNReLU(mid, mid, 3, stride=2, padding=1))
        self.stream2 = nn.Sequential(_ConvBNReLU(in_channels, mid, 1), _ConvBNReLU(mid, mid, 3, padding=1),
                                     _ConvBNReLU(mid, mid, 3, stride=2, padding=1))
        self.stream3 = nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), _ConvBNReLU(in_channels, 2 * mid, 1))

    def forward(self, x):
        return torch.cat([self.stream1(x), self.stream2(x), self.stream3(x)], dim=1)


class _SpatialAttention(nn.Module):
    """(N, C, H, W) -> (N, 1, H, W) for even H, W: channel mean, 3x3 stride-2 conv, x2 upsampling."""

    def __init__(self):
        super().__init__()
        self.conv1 = _ConvBNReLU(1, 1, 3, stride=2, padding=1)
        self.conv2 = _ConvBNReLU(1, 1, 1)

    def forward(self, x):
        y = self.conv1(x.mean(dim=1, keepdim=True))
        y = F.interpolate(y, (y.shape[2] * 2, y.shape[3] * 2), mode='bilinear', align_corners=True)
        return self.conv2(y)


class _ChannelAttention(nn.Module):
    """(N, C, H, W) -> (N, C, 1, 1): pooled, C -> C / 16 -> C (1x1 conv, BN, ReLU each)."""

    def __init__(self, channels, reduction=16):
        super().__init__()
        self.conv1 = _ConvBNReLU(channels, channels // reduction, 1)
        self.conv2 = _ConvBNReLU(channels // reduction, channels, 1)

    def forward(self, x):
        return self.conv2(self.conv1(x.mean(dim=(2, 3), keepdim=True)))


class _SoftAttention(nn.Module):
    """(N, C, H, W) -> (N, C, H, W) in (0, 1): sigmoid(conv(spatial x channel))."""

    def __init__(self, channels):
        super().__init__()
        self.spatial_attn = _SpatialAttention()
        self.channel_attn = _ChannelAttention(channels)
        self.conv = _ConvBNReLU(channels, channels, 1)

    def forward(self, x):
        return torch.sigmoid(self.conv(self.spatial_attn(x) * self.channel_attn(x)))


class _HardAttention(nn.Module):
    """(N, C, H, W) -> (N, 4, 2): the (x, y) translations of the four regions, in (-1, 1)."""

    def __init__(self, channels):
        super().__init__()
        self.fc = nn.Linear(channels, REGIONS * 2)
        nn.init.zeros_(self.fc.weight)
        with torch.no_grad():
            self.fc.bias.copy_(torch.tensor(_INITIAL_TRANSLATIONS))

    def forward(self, x):
        return torch.tanh(self.fc(x.mean(dim=(2, 3)))).view(-1, REGIONS, 2)


class _HarmoniousAttention(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.soft_attn = _SoftAttention(channels)
        self.hard_attn = _HardAttention(channels)


def _sample_region(feature_map, translation, size):
    """The region of `feature_map` (N, C, H, W) with translation (N, 2), full width and a quarter
    of the height, bilinearly sampled (zeros outside) and resized to `size`: (N, C, *size)."""
    ones = torch.ones_like(translation[:, :1])  # built from tensors, so an export keeps the batch dynamic
    zeros = torch.zeros_like(ones)
    theta = torch.stack([torch.cat([ones, zeros, translation[:, :1]], dim=1),
                         torch.cat([zeros, _REGION_HEIGHT * ones, translation[:, 1:]], dim=1)], dim=1)  # (N, 2, 3)
    grid = F.affine_grid(theta, list(feature_map.shape), align_corners=False)
    region = F.grid_sample(feature_map, grid, align_corners=False)
    return F.interpolate(region, size, mode='bilinear', align_corners=True)


class _HACNNTrunk(nn.Module):
    """torchreid's HACNN less `classifier_global` and `classifier_local`: (N, 3, H, W) -> (N,
    1024), the L2-normalised global and local features concatenated; H, W multiples of 16."""

    feature_dim = 2 * FEATURE_DIM

    def __init__(self):
        super().__init__()
        c1, c2, c3 = STAGE_CHANNELS
        self.conv = _ConvBNReLU(3, 32, 3, stride=2, padding=1)
        self.inception1 = nn.Sequential(_InceptionA(32, c1), _InceptionB(c1, c1))
        self.ha1 = _HarmoniousAttention(c1)
        self.inception2 = nn.Sequential(_InceptionA(c1, c2), _InceptionB(c2, c2))
        self.ha2 = _HarmoniousAttention(c2)
        self.inception3 = nn.Sequential(_InceptionA(c2, c3), _InceptionB(c3, c3))
        self.ha3 = _HarmoniousAttention(c3)
        self.fc_global = nn.Sequential(nn.Linear(c3, FEATURE_DIM), nn.BatchNorm1d(FEATURE_DIM), nn.ReLU())
        self.local_conv1 = _InceptionB(32, c1)
        self.local_conv2 = _InceptionB(c1, c2)
        self.local_conv3 = _InceptionB(c2, c3)
        self.fc_local = nn.Sequential(nn.Linear(c3 * REGIONS, FEATURE_DIM), nn.BatchNorm1d(FEATURE_DIM), nn.ReLU())

    def forward(self, images):
        if images.shape[2] % 16 or images.shape[3] % 16:
            raise ValueError(f'HACNN needs a height and width divisible by 16 (its attention maps are halved and '
                             f'doubled at 1/16), got {images.shape[2]}x{images.shape[3]}; its trained files '
                             f'take {HACNN_SIZE[0]}x{HACNN_SIZE[1]}: --height 160 --width 64')
        previous = self.conv(images)
        local = [None] * REGIONS
        stages = ((self.inception1, self.ha1, self.local_conv1), (self.inception2, self.ha2, self.local_conv2),
                  (self.inception3, self.ha3, self.local_conv3))
        for (inception, attention, local_conv), size in zip(stages, _LOCAL_SIZES):
            x = inception(previous)
            translations = attention.hard_attn(x)
            for region in range(REGIONS):
                sampled = _sample_region(previous, translations[:, region], size)
                local[region] = local_conv(sampled if local[region] is None else sampled + local[region])
            previous = x * attention.soft_attn(x)  # the attended map feeds the next stage and its regions
        global_feature = self.fc_global(previous.mean(dim=(2, 3)))
        local_feature = self.fc_local(torch.cat([part.mean(dim=(2, 3)) for part in local], dim=1))
        return torch.cat([F.normalize(global_feature, dim=1), F.normalize(local_feature, dim=1)], dim=1)


class HACNN(TrunkFeatureModel):
    """torchreid's HACNN (`backbone`, 1024-d feature, 160x64 input for its files), then the
    repo's (neck and) classifier."""

    def __init__(self, num_classes, loss=('xent',), pool='avg', neck='none', neck_feat='after'):
        super().__init__(num_classes, _HACNNTrunk(), loss, pool, neck, neck_feat)


HACNN_ARCHS = {'hacnn': (HACNN, {})}
