"""fast-reid's Baseline (He et al., "FastReID: A Pytorch Toolbox for General Instance
Re-identification", 2020): the BoT, AGW and SBS recipes of its model zoo and the re-ID files that
trackers ship (BoT-SORT, Deep OC-SORT, StrongSORT), rebuilt as they were trained, era by era.

Baseline = backbone -> global pooling -> BN-neck; the test feature is the BN-neck output (2048-d
for the ResNet50/101 and ResNeSt-50 backbones, 512-d for ResNet18/34), compared by cosine.
fast-reid normalises inside its model, (x - 255 * mean) / (255 * std) on 0-255 input, which is
ImageNet's normalisation of 0-1 input: here the images arrive normalised like every model of this
repo, so the model does no normalisation of its own (and never touches its input in place).

Backbones (`backbone` option), module names as fast-reid's `backbone.*` tensors:
  resnet18, resnet34   BasicBlocks (fast-reid's distillation students, e.g. kd-r34-r101_ibn)
  resnet50, resnet101  torchvision bottlenecks (stride on the 3x3 conv)
  resnest50            ResNeSt-50 (Zhang et al., 2020): deep stem, split-attention blocks with
                       radix 2, average-pool downsampling ("avd" and "avg_down")
Options of the ResNets: `ibn` (IBN-a: half instance-normalised `bn1` in every block of
layer1-layer3), `non_local` (blocks after the last 2 blocks of layer2 and the last 3 (R50) / 9
(R101) of layer3, inter-channel width 'one' or 'half' of the stage's width) and `stem_pool`.

What changed under unchanged tensor names, and so what a file's era decides (weights.fastreid
reads it off the file):
  stem max-pool   'pad': MaxPool2d(3, 2, padding=1), fast-reid until 2020-11-06 (the v0.1.1 model
                  zoo); 'ceil': MaxPool2d(3, 2, ceil_mode=True) without padding, from then on.
                  Same map size at even input sizes, windows shifted by a pixel; other sizes at
                  odd ones. ResNeSt's stem always pads.
  non-local width 'one': fast-reid's `reduc_ratio // reduc_ratio` (1 channel) in every era but
                  'half' (C / 2) from 2020-09-10 to 2020-12-07.
  ResNeSt layer4  layer4_dilation True: with last stride 1, blocks 1-2 of layer4 dilated by 2
                  (fast-reid from 2020-12-07, and every tracker file); False: not dilated, as
                  before, when its files could also carry non-local blocks.
The first block of ResNeSt's layer4 keeps a 3x3 stride-1 average pool ("avd") after its
split-attention conv in every era: with last stride 1 it blurs instead of downsampling.
"""
from torch import nn

from .base import ReIDModel, make_global_pool
from .resnet_ibn import IBN, init_resnet_weights, make_bottleneck_stage

__all__ = ['FastReIDBaseline', 'FastReIDResNet', 'FastReIDResNeSt', 'NonLocal', 'SplitAttentionConv',
           'build_backbone', 'BACKBONES', 'NON_LOCAL_WIDTHS', 'STEM_POOLS']

# stage depths; for the ResNets also whether the blocks are bottlenecks
BACKBONES = {
    'resnet18': ((2, 2, 2, 2), False),
    'resnet34': ((3, 4, 6, 3), False),
    'resnet50': ((3, 4, 6, 3), True),
    'resnet101': ((3, 4, 23, 3), True),
    'resnest50': ((3, 4, 6, 3), True),
}
# non-local blocks per stage (fast-reid's nl_layers_per_stage; ResNeSt-50 as R50)
NON_LOCAL_COUNTS = {'resnet50': (0, 2, 3, 0), 'resnet101': (0, 2, 9, 0), 'resnest50': (0, 2, 3, 0)}
NON_LOCAL_WIDTHS = ('one', 'half')
STEM_POOLS = ('pad', 'ceil')


class NonLocal(nn.Module):
    """fast-reid's non-local block (Wang et al., CVPR 2018, dot-product form, no softmax):
    (B, C, H, W) -> (B, C, H, W), x + W(y) with y = (theta(x)^T phi(x) / N) g(x) over the N = H * W
    positions; theta, phi, g: 1x1 convs with bias to `inter_channels`; W: 1x1 conv back to C
    (with bias) and a BatchNorm (`W.0`, `W.1`)."""

    def __init__(self, channels, inter_channels):
        super().__init__()
        self.inter_channels = inter_channels
        self.g = nn.Conv2d(channels, inter_channels, 1)
        self.theta = nn.Conv2d(channels, inter_channels, 1)
        self.phi = nn.Conv2d(channels, inter_channels, 1)
        self.W = nn.Sequential(nn.Conv2d(inter_channels, channels, 1), nn.BatchNorm2d(channels))
        nn.init.zeros_(self.W[1].weight)  # as fast-reid: a fresh block starts as the identity
        nn.init.zeros_(self.W[1].bias)

    def forward(self, x):
        g = self.g(x).flatten(2)  # (B, I, N)
        theta = self.theta(x).flatten(2)
        phi = self.phi(x).flatten(2)
        # (theta^T phi) g^T computed as theta^T (phi g^T): the same product without the (N, N)
        # affinity matrix (N is 768 at layer2 of a 384x128 input).
        y = theta.transpose(1, 2) @ (phi @ g.transpose(1, 2)) / g.shape[2]  # (B, N, I)
        y = y.transpose(1, 2).reshape(x.shape[0], self.inter_channels, *x.shape[2:])
        return x + self.W(y)


class _StagedBackbone(nn.Module):
    """A stem (`conv1`, `bn1`, `relu`, `maxpool`) and four stages (`layer1`..`layer4`), with non-local
    blocks after some blocks of a stage: (B, 3, H, W) -> (B, C, H / 16, W / 16) at last stride 1
    (H / 32 at 2). Subclasses build the modules."""

    def _add_non_local(self, name, non_local, widths):
        """Registers NL_1..NL_4 (fast-reid's `backbone.NL_k.i.*`) for `non_local` ('one', 'half'
        or None) after the last blocks of each stage, as fast-reid places them."""
        self.non_local_after = [[] for _ in range(4)]
        if non_local is None:
            return
        if name not in NON_LOCAL_COUNTS:
            raise ValueError(f'{name} has no non-local blocks in fast-reid; choose from {sorted(NON_LOCAL_COUNTS)}')
        if non_local not in NON_LOCAL_WIDTHS:
            raise ValueError(f'non_local {non_local!r}: choose from {NON_LOCAL_WIDTHS}, or None for no blocks')
        for stage, (count, blocks, channels) in enumerate(zip(NON_LOCAL_COUNTS[name], BACKBONES[name][0], widths)):
            inter = 1 if non_local == 'one' else channels // 2
            setattr(self, f'NL_{stage + 1}', nn.ModuleList([NonLocal(channels, inter) for _ in range(count)]))
            self.non_local_after[stage] = list(range(blocks - count, blocks))

    def stem(self, images):
        """conv1 (a 7x7 conv, or ResNeSt's three 3x3 convs), bn1, relu, max-pool."""
        return self.maxpool(self.relu(self.bn1(self.conv1(images))))

    def forward(self, images):
        x = self.stem(images)
        for stage, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4)):
            after = self.non_local_after[stage]
            for index, block in enumerate(layer):
                x = block(x)
                if index in after:
                    x = getattr(self, f'NL_{stage + 1}')[after.index(index)](x)
        return x


class _BasicBlock(nn.Module):
    """ResNet basic block: (N, inplanes, H, W) -> (N, planes, H / stride, W / stride): 3x3 conv
    with the stride -> bn1 (IBN when ibn) -> relu -> 3x3 conv -> bn2, plus the shortcut (strided
    1x1 conv and BN, `downsample.0/1`, whenever the shape changes), then relu."""

    def __init__(self, inplanes, planes, stride=1, ibn=False):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = IBN(planes) if ibn else nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def _basic_stage(inplanes, planes, blocks, stride, ibn):
    return nn.Sequential(_BasicBlock(inplanes, planes, stride, ibn),
                         *[_BasicBlock(planes, planes, ibn=ibn) for _ in range(1, blocks)])


class FastReIDResNet(_StagedBackbone):
    """fast-reid's ResNet 18/34/50/101 (`build_resnet_backbone`), optionally IBN-a and non-local:
    (B, 3, H, W) -> (B, 512 or 2048, H / 16, W / 16) at last stride 1.

    Stem: 7x7 stride-2 conv, BN, relu, 3x3 stride-2 max pool (`stem_pool` 'pad' or 'ceil', see
    the module docstring). IBN in every block of layer1-layer3, never in layer4 or the stem.
    """

    def __init__(self, name='resnet50', last_stride=1, ibn=False, non_local=None, stem_pool='ceil'):
        super().__init__()
        if name not in BACKBONES or name == 'resnest50':
            raise ValueError(f'unknown fast-reid ResNet {name!r}; choose from resnet18, resnet34, resnet50, resnet101')
        if last_stride not in (1, 2):
            raise ValueError(f'last stride must be 1 or 2, got {last_stride}')
        if stem_pool not in STEM_POOLS:
            raise ValueError(f'stem_pool {stem_pool!r}: choose from {STEM_POOLS}')
        depths, bottleneck = BACKBONES[name]
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = (nn.MaxPool2d(3, 2, padding=1) if stem_pool == 'pad' else
                        nn.MaxPool2d(3, 2, ceil_mode=True))
        stage = make_bottleneck_stage if bottleneck else _basic_stage
        expansion = 4 if bottleneck else 1
        planes = (64, 128, 256, 512)
        inplanes = (64, *(p * expansion for p in planes[:3]))
        strides = (1, 2, 2, last_stride)
        for index in range(4):
            setattr(self, f'layer{index + 1}', stage(inplanes[index], planes[index], depths[index],
                                                     stride=strides[index], ibn=ibn and index < 3))
        self.feat_dim = planes[3] * expansion
        init_resnet_weights(self)
        self._add_non_local(name, non_local, [p * expansion for p in planes])


class SplitAttentionConv(nn.Module):
    """ResNeSt's split-attention 3x3 conv with radix 2 and one cardinal group (fast-reid's
    SplAtConv2d): (N, C, H, W) -> (N, C, H / stride, W / stride).

    A grouped conv (2 groups, `conv`) gives two C-channel splits, `bn0`, relu; their sum is
    average-pooled and goes through `fc1` (1x1 conv with bias to max(C / 2, 32) channels), `bn1`,
    relu, `fc2` (1x1 conv with bias back to 2C); a softmax over the two splits, channel by
    channel, gives the weights of the splits' weighted sum.
    """

    radix = 2

    def __init__(self, channels, stride=1, dilation=1):
        super().__init__()
        inter = max(channels * self.radix // 4, 32)
        self.conv = nn.Conv2d(channels, channels * self.radix, 3, stride=stride, padding=dilation,
                              dilation=dilation, groups=self.radix, bias=False)
        self.bn0 = nn.BatchNorm2d(channels * self.radix)
        self.relu = nn.ReLU(inplace=True)
        self.fc1 = nn.Conv2d(channels, inter, 1)
        self.bn1 = nn.BatchNorm2d(inter)
        self.fc2 = nn.Conv2d(inter, channels * self.radix, 1)

    def forward(self, x):
        splits = self.relu(self.bn0(self.conv(x)))
        batch, channels = splits.shape[0], splits.shape[1] // self.radix
        splits = splits.view(batch, self.radix, channels, *splits.shape[2:])  # (N, 2, C, H, W)
        gap = splits.sum(dim=1).mean(dim=(2, 3), keepdim=True)
        logits = self.fc2(self.relu(self.bn1(self.fc1(gap))))  # (N, 2C, 1, 1), split-major
        weights = logits.view(batch, self.radix, channels, 1, 1).softmax(dim=1)
        return (weights * splits).sum(dim=1)


class _ResNeStBottleneck(nn.Module):
    """ResNeSt bottleneck: (N, inplanes, H, W) -> (N, 4 * planes, H / stride, W / stride).

    1x1 conv -> bn1 (IBN when ibn) -> relu -> split-attention 3x3 conv -> [avd: AvgPool2d(3,
    stride, padding 1) where the block strides or is the first of layer2-layer4] -> 1x1 conv ->
    bn3, plus the shortcut (`downsample`: AvgPool2d(stride, ceil_mode, count_include_pad False),
    1x1 conv, BN), then relu. With avd the split-attention conv itself does not stride.
    """

    def __init__(self, inplanes, planes, stride=1, dilation=1, avd=False, ibn=False):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = IBN(planes) if ibn else nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = SplitAttentionConv(planes, stride=1 if avd else stride, dilation=dilation)
        self.avd_layer = nn.AvgPool2d(3, stride, padding=1) if avd else None
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False),
                nn.Conv2d(inplanes, planes * 4, 1, bias=False),
                nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = self.conv2(self.relu(self.bn1(self.conv1(x))))
        if self.avd_layer is not None:
            out = self.avd_layer(out)
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class FastReIDResNeSt(_StagedBackbone):
    """fast-reid's ResNeSt-50 (`build_resnest_backbone`: radix 2, one group, width 64, deep stem
    of width 32, avg_down, avd): (B, 3, H, W) -> (B, 2048, H / 16, W / 16) at last stride 1.

    Stem `conv1`: three 3x3 convs (3 -> 32 stride 2, 32 -> 32, 32 -> 64) with BN and relu
    between them, then `bn1`, relu and MaxPool2d(3, 2, padding=1). layer4_dilation (last stride 1
    only): blocks 1-2 of layer4 dilated by 2 (fast-reid from 2020-12-07); without it no dilation,
    and optionally non-local blocks and IBN in layer1-layer3 (the v0.1.x code, whose zoo files
    carry them).
    """

    def __init__(self, last_stride=1, layer4_dilation=True, non_local=None, ibn=False):
        super().__init__()
        if last_stride not in (1, 2):
            raise ValueError(f'last stride must be 1 or 2, got {last_stride}')
        if layer4_dilation and last_stride != 1:
            raise ValueError('layer4_dilation needs last stride 1 (fast-reid dilates layer4 instead of striding it)')
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, padding=1, bias=False))
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        depths = BACKBONES['resnest50'][0]
        inplanes = 64
        for index, (planes, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, last_stride))):
            dilated = layer4_dilation and index == 3
            blocks = [_ResNeStBottleneck(inplanes, planes, stride, avd=index > 0, ibn=ibn and index < 3)]
            blocks += [_ResNeStBottleneck(planes * 4, planes, dilation=2 if dilated else 1, ibn=ibn and index < 3)
                       for _ in range(1, depths[index])]
            setattr(self, f'layer{index + 1}', nn.Sequential(*blocks))
            inplanes = planes * 4
        self.feat_dim = 2048
        init_resnet_weights(self)
        self._add_non_local('resnest50', non_local, (256, 512, 1024, 2048))


def build_backbone(name, last_stride=1, ibn=False, non_local=None, stem_pool=None, layer4_dilation=None):
    """A fast-reid backbone by name (BACKBONES) with the options of the module docstring; None
    for stem_pool / layer4_dilation is the current fast-reid's choice ('ceil'; dilated when last
    stride is 1), and an option that does not apply to the backbone is an error."""
    if name not in BACKBONES:
        raise ValueError(f'unknown fast-reid backbone {name!r}; choose from {", ".join(BACKBONES)}')
    if name == 'resnest50':
        if stem_pool not in (None, 'pad'):
            raise ValueError("ResNeSt's stem max-pool always pads (stem_pool 'pad')")
        return FastReIDResNeSt(last_stride, last_stride == 1 if layer4_dilation is None else layer4_dilation,
                               non_local, ibn)
    if layer4_dilation:
        raise ValueError(f'layer4_dilation applies to resnest50, not to {name}')
    return FastReIDResNet(name, last_stride, ibn, non_local, stem_pool or 'ceil')


class FastReIDBaseline(ReIDModel):
    """fast-reid's Baseline meta-architecture: `backbone` (build_backbone), global pooling
    (`global_pool`: 'avg' for BoT, 'gem_fixed' for AGW from 2020-09-10, 'gem' with a trained p
    for SBS and the older AGW), and this repo's neck and classifier. fast-reid always has a
    BN-neck whose output is its test feature: neck='bnneck', neck_feat='after' (what
    weights.fastreid records for its files).

    backbone, ibn, non_local, stem_pool, layer4_dilation: build_backbone's options (the
    checkpoint's `arch_options`); last_stride: 1 in every fast-reid recipe.
    """

    def __init__(self, num_classes, loss=('xent',), pool='avg', neck='bnneck', neck_feat='after',
                 global_pool='avg', last_stride=1, backbone='resnet50', ibn=False, non_local=None,
                 stem_pool=None, layer4_dilation=None):
        super().__init__(loss, pool, neck, neck_feat)
        self.backbone = build_backbone(backbone, last_stride, ibn, non_local, stem_pool, layer4_dilation)
        self.global_pool = make_global_pool(global_pool)
        self.build_head(self.backbone.feat_dim, num_classes)

    def features(self, images):
        """(N, 3, H, W) normalised images -> (N, feat_dim) pooled backbone features."""
        return self.global_pool(self.backbone(images))
