"""OSNet (Zhou et al., "Omni-Scale Feature Learning for Person Re-Identification", ICCV 2019) and
OSNet-AIN (Zhou et al., "Learning Generalisable Omni-Scale Representations for Person
Re-Identification", TPAMI 2021) re-ID models.

OSNet is a light network built from omni-scale blocks: a block reduces its input to a quarter of
its output width with a 1x1 conv, runs four streams of 1, 2, 3 and 4 lightweight 3x3 convs (a
pointwise 1x1 then a depthwise 3x3, so the streams see receptive fields of 3, 5, 7 and 9 pixels),
weighs every stream channel-wise by ONE channel gate shared by the four streams (so the gate mixes
scales according to the input rather than learning a fixed mixture per stream), sums them,
expands back with a 1x1 conv and adds the residual. A 512-d `fc` (Linear, BatchNorm1d, ReLU) after
global pooling gives the re-ID feature at every width, so it is non-negative.

Two module trees, both written so that torchreid's model-zoo files (ImageNet `*_imagenet.pth` and
the re-ID `*_market1501`, `*_msmt17` ... files) load with strict=True into `model.backbone` once
their `classifier.*` is dropped:
  OSNet     torchreid/models/osnet.py: osnet_x1_0, osnet_x0_75, osnet_x0_5, osnet_x0_25 and
            osnet_ibn_x1_0. Stages `conv2`, `conv3` end with their transition (1x1 conv and 2x2
            average pool) as item 2 of the stage; the four streams are `conv2a`..`conv2d`.
            osnet_ibn_x1_0 instance-normalises the stem (`conv1.bn` is an InstanceNorm) and the
            output of both conv2 blocks, after the residual sum (`conv2.{0,1}.IN`).
  OSNetAIN  torchreid/models/osnet_ain.py: osnet_ain_x1_0, x0_75, x0_5, x0_25. The transitions are
            separate modules `pool2`, `pool3`; the streams are `conv2.{0..3}.layers.{m}`; the stem is
            instance-normalised and the "IN-in" blocks found by the TPAMI architecture search
            (conv2.0, conv2.1, conv3.1, conv4.0) normalise the residual branch before the sum and
            drop that branch's BatchNorm (`conv3.conv` without `conv3.bn`).
Neither family's weights fit the other tree.

Instance norms are affine and keep no running statistics (torchreid's default), so they
normalise each image by its own statistics in training and evaluation alike: that removes
per-image style (colour, contrast) and is why the IBN / AIN variants generalise across domains.
The models load no weights; converting files is another module's job.
"""
import torch.nn.functional as F
from torch import nn

from .base import ReIDModel, make_global_pool

__all__ = ['OSNet', 'OSNetAIN', 'OSNET_ARCHS', 'OSNET_WIDTHS', 'AIN_BLOCK_INSTANCE_NORM', 'FEATURE_DIM', 'init_torchreid_weights']

FEATURE_DIM = 512  # torchreid's feature_dim: the fc output at every width
# stem, conv2, conv3 and conv4 (= conv5) output channels of torchreid's four widths
OSNET_WIDTHS = {
    'x1_0': (64, 256, 384, 512),
    'x0_75': (48, 192, 288, 384),
    'x0_5': (32, 128, 192, 256),
    'x0_25': (16, 64, 96, 128),
}
# Which of the two blocks of conv2, conv3, conv4 are "IN-in" blocks in OSNet-AIN: torchreid's
# [[OSBlockINin, OSBlockINin], [OSBlock, OSBlockINin], [OSBlockINin, OSBlock]].
AIN_BLOCK_INSTANCE_NORM = ((True, True), (False, True), (True, False))
_BOTTLENECK_REDUCTION = 4  # a block's streams run at out_channels / 4
_GATE_REDUCTION = 16  # the channel gate's hidden width is its input width / 16


class _ConvUnit(nn.Module):
    """Conv (no bias) -> norm -> optional ReLU: (N, C_in, H, W) -> (N, C_out, H / stride, W / stride).

    norm: 'batch' (BatchNorm2d), 'instance' (affine InstanceNorm2d, no running statistics) or None.
    The norm is called `bn` whatever its kind, as torchreid names it, and is absent when None.
    """

    def __init__(self, in_channels, out_channels, kernel_size=1, stride=1, padding=0, norm='batch',
                 relu=True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              bias=False)
        if norm == 'batch':
            self.bn = nn.BatchNorm2d(out_channels)
        elif norm == 'instance':
            self.bn = nn.InstanceNorm2d(out_channels, affine=True)
        elif norm is None:
            self.bn = None
        else:
            raise ValueError(f"unknown norm {norm!r}; choose 'batch', 'instance' or None")
        self.relu = nn.ReLU(inplace=True) if relu else None

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return x if self.relu is None else self.relu(x)


class _LightConv3x3(nn.Module):
    """Lightweight 3x3 conv, (N, C, H, W) -> (N, C, H, W): pointwise 1x1 `conv1` (linear), depthwise
    3x3 `conv2`, `bn`, ReLU. About 9x fewer weights and MACs than a dense 3x3 conv at C = 64."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.bn(self.conv2(self.conv1(x))))


def _light_stack(channels, depth):
    """`depth` lightweight 3x3 convs in a row: a receptive field of 2 * depth + 1 pixels."""
    return nn.Sequential(*[_LightConv3x3(channels) for _ in range(depth)])


class _ChannelGate(nn.Module):
    """Channel gate, (N, C, H, W) -> (N, C, H, W): the input times sigmoid(fc2(relu(fc1(GAP(x))))),
    fc1 and fc2 being 1x1 convs with bias through C / 16 hidden channels (an SE block)."""

    def __init__(self, channels):
        super().__init__()
        hidden = channels // _GATE_REDUCTION
        if hidden < 1:
            raise ValueError(f'a channel gate needs at least {_GATE_REDUCTION} channels, got {channels}')
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        gates = self.fc2(self.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return x * gates.sigmoid()


def _mid_channels(out_channels):
    if out_channels % _BOTTLENECK_REDUCTION:
        raise ValueError(f'an OSNet block width must be a multiple of {_BOTTLENECK_REDUCTION}, got {out_channels}')
    return out_channels // _BOTTLENECK_REDUCTION


def _gated_sum(gate, streams, x):
    """Sum over the streams of gate(stream(x)): one gate, shared by every scale."""
    return sum(gate(stream(x)) for stream in streams)


class _OSBlock(nn.Module):
    """Omni-scale block of torchreid's osnet.py: (N, C_in, H, W) -> (N, C_out, H, W).

    1x1 `conv1` to C_out / 4 (BN, ReLU); streams `conv2a` (one lightweight 3x3), `conv2b` (two),
    `conv2c` (three), `conv2d` (four); the shared `gate` weighs each and they are summed; 1x1
    `conv3` to C_out with BN and no ReLU; plus the shortcut (`downsample`, 1x1 conv and BN, when
    C_in != C_out); with instance_norm, InstanceNorm `IN` of that sum; ReLU.
    """

    def __init__(self, in_channels, out_channels, instance_norm=False):
        super().__init__()
        mid = _mid_channels(out_channels)
        self.conv1 = _ConvUnit(in_channels, mid)
        self.conv2a = _LightConv3x3(mid)
        self.conv2b = _light_stack(mid, 2)
        self.conv2c = _light_stack(mid, 3)
        self.conv2d = _light_stack(mid, 4)
        self.gate = _ChannelGate(mid)
        self.conv3 = _ConvUnit(mid, out_channels, relu=False)
        self.downsample = _ConvUnit(in_channels, out_channels, relu=False) if in_channels != out_channels else None
        self.IN = nn.InstanceNorm2d(out_channels, affine=True) if instance_norm else None

    def forward(self, x):
        x1 = self.conv1(x)
        out = self.conv3(_gated_sum(self.gate, (self.conv2a, self.conv2b, self.conv2c, self.conv2d), x1))
        out = out + (x if self.downsample is None else self.downsample(x))
        if self.IN is not None:
            out = self.IN(out)  # IBN placement: after the residual sum
        return F.relu(out)


class _LightConvStream(nn.Module):
    """One OSNet-AIN stream: `layers`, `depth` lightweight 3x3 convs, (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, channels, depth):
        super().__init__()
        self.layers = _light_stack(channels, depth)

    def forward(self, x):
        return self.layers(x)


class _OSBlockAIN(nn.Module):
    """Omni-scale block of torchreid's osnet_ain.py: (N, C_in, H, W) -> (N, C_out, H, W).

    The computation of _OSBlock without its IN, in another tree: the streams are `conv2.0`..`conv2.3`
    of depths 1..4. With instance_norm (torchreid's OSBlockINin), `conv3` has no BatchNorm and the
    residual branch goes through InstanceNorm `IN` before the shortcut is added, so the identity
    path keeps the content the IN would remove.
    """

    def __init__(self, in_channels, out_channels, instance_norm=False):
        super().__init__()
        mid = _mid_channels(out_channels)
        self.conv1 = _ConvUnit(in_channels, mid)
        self.conv2 = nn.ModuleList(_LightConvStream(mid, depth) for depth in range(1, 5))
        self.gate = _ChannelGate(mid)
        # the IN right after conv3 would undo a BN's affine anyway: torchreid drops the BN
        self.conv3 = _ConvUnit(mid, out_channels, norm=None if instance_norm else 'batch', relu=False)
        self.downsample = _ConvUnit(in_channels, out_channels, relu=False) if in_channels != out_channels else None
        self.IN = nn.InstanceNorm2d(out_channels, affine=True) if instance_norm else None

    def forward(self, x):
        out = self.conv3(_gated_sum(self.gate, self.conv2, self.conv1(x)))
        if self.IN is not None:
            out = self.IN(out)  # AIN placement: inside the residual branch
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


def _transition(channels):
    """1x1 conv (BN, ReLU) and 2x2 average pool with stride 2: (N, C, H, W) -> (N, C, H / 2, W / 2)."""
    return nn.Sequential(_ConvUnit(channels, channels), nn.AvgPool2d(2, stride=2))


def _stem(out_channels, instance_norm):
    """7x7 stride-2 conv with BN (or IN) and ReLU: (N, 3, H, W) -> (N, C, H / 2, W / 2)."""
    return _ConvUnit(3, out_channels, 7, stride=2, padding=3, norm='instance' if instance_norm else 'batch')


def _embedding(in_channels):
    """torchreid's `fc`: Linear to 512, BatchNorm1d, ReLU: (N, C) -> (N, 512), non-negative."""
    return nn.Sequential(nn.Linear(in_channels, FEATURE_DIM), nn.BatchNorm1d(FEATURE_DIM), nn.ReLU(inplace=True))


def _check_channels(channels):
    channels = tuple(int(c) for c in channels)
    if len(channels) != 4:
        raise ValueError(f'OSNet channels are (stem, conv2, conv3, conv4) widths, got {channels}')
    return channels


def init_torchreid_weights(root):
    """torchreid's initialisation: Kaiming-normal (fan_out, relu) convs with zero bias, unit-scale
    zero-shift batch and instance norms, Linear weights N(0, 0.01) with zero bias."""
    for module in root.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm2d)):
            if module.weight is not None:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class _OSNetTrunk(nn.Module):
    """torchreid's OSNet (osnet.py) less `classifier`: forward (N, 3, H, W) -> (N, C4, H / 16, W / 16)
    conv5 feature map (16 x 8 for 256 x 128 input); `fc` (C4 -> 512) is applied by the model after
    global pooling, as torchreid does.

    conv1 (stem) and maxpool (/4); conv2: two blocks and a transition (/8); conv3: the same (/16);
    conv4: two blocks; conv5: 1x1 conv, BN, ReLU. instance_norm (osnet_ibn_x1_0): IN stem and IN
    after both conv2 blocks.
    """

    def __init__(self, channels, instance_norm=False):
        super().__init__()
        c1, c2, c3, c4 = _check_channels(channels)
        self.conv1 = _stem(c1, instance_norm)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = nn.Sequential(_OSBlock(c1, c2, instance_norm), _OSBlock(c2, c2, instance_norm),
                                   _transition(c2))
        self.conv3 = nn.Sequential(_OSBlock(c2, c3), _OSBlock(c3, c3), _transition(c3))
        self.conv4 = nn.Sequential(_OSBlock(c3, c4), _OSBlock(c4, c4))
        self.conv5 = _ConvUnit(c4, c4)
        self.fc = _embedding(c4)
        init_torchreid_weights(self)

    def forward(self, images):
        x = self.maxpool(self.conv1(images))
        return self.conv5(self.conv4(self.conv3(self.conv2(x))))


class _OSNetAINTrunk(nn.Module):
    """torchreid's OSNet-AIN (osnet_ain.py) less `classifier`: forward (N, 3, H, W) ->
    (N, C4, H / 16, W / 16) conv5 feature map; `fc` (C4 -> 512) is applied by the model.

    The stages of _OSNetTrunk with the transitions as `pool2` and `pool3`; block_instance_norm says
    which two blocks of conv2, conv3, conv4 are IN-in blocks; stem_instance_norm: IN in the stem.
    """

    def __init__(self, channels, stem_instance_norm=True, block_instance_norm=AIN_BLOCK_INSTANCE_NORM):
        super().__init__()
        c1, c2, c3, c4 = _check_channels(channels)
        block_instance_norm = tuple(tuple(bool(flag) for flag in stage) for stage in block_instance_norm)
        if len(block_instance_norm) != 3 or any(len(stage) != 2 for stage in block_instance_norm):
            raise ValueError(f'block_instance_norm needs two flags for each of conv2, conv3, conv4, '
                             f'got {block_instance_norm}')

        def stage(in_channels, out_channels, flags):
            return nn.Sequential(_OSBlockAIN(in_channels, out_channels, flags[0]),
                                 _OSBlockAIN(out_channels, out_channels, flags[1]))

        self.conv1 = _stem(c1, stem_instance_norm)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = stage(c1, c2, block_instance_norm[0])
        self.pool2 = _transition(c2)
        self.conv3 = stage(c2, c3, block_instance_norm[1])
        self.pool3 = _transition(c3)
        self.conv4 = stage(c3, c4, block_instance_norm[2])
        self.conv5 = _ConvUnit(c4, c4)
        self.fc = _embedding(c4)
        init_torchreid_weights(self)

    def forward(self, images):
        x = self.maxpool(self.conv1(images))
        x = self.pool3(self.conv3(self.pool2(self.conv2(x))))
        return self.conv5(self.conv4(x))


class _OSNetModel(ReIDModel):
    """Shared head: global pooling of the backbone's map, the backbone's 512-d `fc`, then the
    repo's (neck and) classifier."""

    def _finish(self, global_pool, num_classes):
        self.global_pool = make_global_pool(global_pool)
        self.build_head(FEATURE_DIM, num_classes)

    def features(self, images):
        """(N, 3, H, W) images -> (N, 512) features: pooled conv5 map through `fc` (Linear,
        BatchNorm1d, ReLU), so non-negative; torchreid's test feature with global_pool='avg'."""
        return self.backbone.fc(self.global_pool(self.backbone(images)))


class OSNet(_OSNetModel):
    """OSNet of torchreid's osnet.py (`backbone`), global pooling (`global_pool`: 'avg', 'max' or
    'gem'), 512-d `fc`, (neck and) linear classifier.

    channels: (stem, conv2, conv3, conv4) widths, OSNET_WIDTHS[...] for torchreid's models;
    instance_norm: the IBN variant (osnet_ibn_x1_0). `backbone.load_state_dict(strict=True)` takes
    a torchreid file of the same variant once `classifier.*` is removed.
    """

    def __init__(self, num_classes, loss=('xent',), pool='avg', neck='none', neck_feat='after',
                 global_pool='avg', channels=OSNET_WIDTHS['x1_0'], instance_norm=False):
        super().__init__(loss, pool, neck, neck_feat)
        self.backbone = _OSNetTrunk(channels, instance_norm)
        self._finish(global_pool, num_classes)


class OSNetAIN(_OSNetModel):
    """OSNet-AIN of torchreid's osnet_ain.py (`backbone`), global pooling, 512-d `fc`, (neck and)
    linear classifier.

    channels: (stem, conv2, conv3, conv4) widths; stem_instance_norm and block_instance_norm: the
    IN placement (torchreid's: IN stem and AIN_BLOCK_INSTANCE_NORM). `backbone.load_state_dict(
    strict=True)` takes a torchreid osnet_ain file of the same width once `classifier.*` is removed.
    """

    def __init__(self, num_classes, loss=('xent',), pool='avg', neck='none', neck_feat='after',
                 global_pool='avg', channels=OSNET_WIDTHS['x1_0'], stem_instance_norm=True,
                 block_instance_norm=AIN_BLOCK_INSTANCE_NORM):
        super().__init__(loss, pool, neck, neck_feat)
        self.backbone = _OSNetAINTrunk(channels, stem_instance_norm, block_instance_norm)
        self._finish(global_pool, num_classes)


# torchreid's model names -> (class, keyword arguments): model = cls(num_classes, **kwargs)
OSNET_ARCHS = {
    **{f'osnet_{width}': (OSNet, {'channels': channels, 'instance_norm': False})
       for width, channels in OSNET_WIDTHS.items()},
    'osnet_ibn_x1_0': (OSNet, {'channels': OSNET_WIDTHS['x1_0'], 'instance_norm': True}),
    **{f'osnet_ain_{width}': (OSNetAIN, {'channels': channels, 'stem_instance_norm': True,
                                         'block_instance_norm': AIN_BLOCK_INSTANCE_NORM})
       for width, channels in OSNET_WIDTHS.items()},
}
