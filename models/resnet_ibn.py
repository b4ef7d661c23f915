"""ResNet50-IBN-a (Pan et al., "Two at Once: Enhancing Learning and Generalization Capacities via
IBN-Net", ECCV 2018) re-ID model.

IBN-a is torchvision's ResNet50 (v1.5: the stride of a bottleneck sits in its 3x3 conv) with one
change: in every bottleneck of layer1-layer3 the BatchNorm after the first 1x1 conv (`bn1`) is an
IBN layer, which instance-normalises half of the channels and batch-normalises the other half.
Instance normalisation removes per-image appearance statistics (colour, contrast, illumination),
which is why IBN-a transfers across re-ID domains better than a plain ResNet50; layer4 keeps
plain BatchNorm because its features must stay discriminative.

The backbone's state-dict names are exactly those of the IBN-Net release
(resnet50_ibn_a-d9d0bb7b.pth, also what fast-reid loads) without its `fc.*`:
`conv1`, `bn1`, `layer1..layer4` as in torchvision, and in layer1-layer3
`layerX.Y.bn1.IN.{weight,bias}` and `layerX.Y.bn1.BN.{weight,bias,running_mean,running_var,
num_batches_tracked}`. So that file loads with strict=True once `fc.*` is dropped. The model
itself loads no weights; converting files is another module's job.
"""
import torch
from torch import nn

from .base import ReIDModel, make_global_pool

__all__ = ['ResNet50IBNa', 'IBN', 'Bottleneck', 'make_bottleneck_stage', 'init_resnet_weights']


class IBN(nn.Module):
    """Instance-Batch Normalisation: (N, C, H, W) -> (N, C, H, W).

    The first int(C * ratio) channels go through InstanceNorm2d(affine=True) (`IN`), the rest
    through BatchNorm2d (`BN`), and the two are concatenated back in channel order. The IN keeps
    no running statistics (IBN-Net's default, so no `IN.running_mean` in its files): it normalises
    each image by its own statistics in training and evaluation alike.
    """

    def __init__(self, planes, ratio=0.5):
        super().__init__()
        half = int(planes * ratio)
        if not 0 < half < planes:
            raise ValueError(f'IBN ratio {ratio} leaves no channels for IN or BN of {planes} channels')
        self.half = half
        self.IN = nn.InstanceNorm2d(half, affine=True)
        self.BN = nn.BatchNorm2d(planes - half)

    def forward(self, x):
        instance_part, batch_part = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat([self.IN(instance_part), self.BN(batch_part)], dim=1)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: (N, inplanes, H, W) -> (N, 4 * planes, H / stride, W / stride).

    1x1 conv -> bn1 (IBN when ibn) -> relu -> 3x3 conv with the stride -> bn2 -> relu ->
    1x1 conv to 4 * planes -> bn3, plus the shortcut (`downsample`: strided 1x1 conv and BN
    whenever the shape changes), then relu.
    """

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, ibn=False):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = IBN(planes) if ibn else nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out_planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out_planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


def init_resnet_weights(root):
    """torchvision's ResNet initialisation, so a randomly initialised IBN-a trains like the
    plain ResNet50 of this repo: Kaiming-normal (fan_out) convs, unit-scale zero-shift norms."""
    for module in root.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
        elif isinstance(module, (nn.BatchNorm2d, nn.InstanceNorm2d)) and module.affine:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def make_bottleneck_stage(inplanes, planes, blocks, stride, ibn):
    """A stage of `blocks` bottlenecks, (N, inplanes, H, W) -> (N, 4 * planes, H / stride, W / stride);
    only the first block strides and changes the width."""
    layers = [Bottleneck(inplanes, planes, stride=stride, ibn=ibn)]
    layers += [Bottleneck(planes * Bottleneck.expansion, planes, ibn=ibn) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class _ResNet50IBNaTrunk(nn.Module):
    """The ResNet50-IBN-a trunk without avgpool and fc: (N, 3, H, W) -> (N, 2048, H / 32, W / 32),
    or (N, 2048, H / 16, W / 16) with last_stride 1 (e.g. a 16x8 map for 256x128 input).

    Stem: 7x7 stride-2 conv, BN, relu, 3x3 stride-2 max pool with padding 1, as in torchvision and
    IBN-Net. (fast-reid pools with ceil_mode and no padding instead: the same map size for even
    input sizes, but windows shifted by one pixel, so its features differ slightly.)
    Stages of 3, 4, 6, 3 bottlenecks; IBN in layer1-layer3 only.
    """

    def __init__(self, last_stride=2):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = make_bottleneck_stage(64, 64, 3, stride=1, ibn=True)
        self.layer2 = make_bottleneck_stage(256, 128, 4, stride=2, ibn=True)
        self.layer3 = make_bottleneck_stage(512, 256, 6, stride=2, ibn=True)
        # last_stride only changes layer4[0]'s conv2 and shortcut stride; its weights are the same
        self.layer4 = make_bottleneck_stage(1024, 512, 3, stride=last_stride, ibn=False)
        init_resnet_weights(self)

    def forward(self, images):
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class ResNet50IBNa(ReIDModel):
    """ResNet50-IBN-a trunk (`backbone`), global pooling (`global_pool`: 'avg', 'max' or 'gem'),
    2048-d feature, (neck and) linear classifier.

    last_stride: 1 or 2 for layer4 (1 doubles the final map's height and width). No weights are
    loaded here: `backbone.load_state_dict` takes the IBN-Net ImageNet file once `fc.*` is removed.
    """

    def __init__(self, num_classes, loss=('xent',), pool='avg', last_stride=2, neck='none',
                 neck_feat='after', global_pool='avg'):
        super().__init__(loss, pool, neck, neck_feat)
        if last_stride not in (1, 2):
            raise ValueError(f'last stride must be 1 or 2, got {last_stride}')
        self.backbone = _ResNet50IBNaTrunk(last_stride)
        self.global_pool = make_global_pool(global_pool)
        self.build_head(2048, num_classes)

    def features(self, images):
        """(N, 3, H, W) images -> (N, 2048) pooled backbone features."""
        return self.global_pool(self.backbone(images))
