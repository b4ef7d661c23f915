"""torchreid's ResNet50 re-ID models (torchreid/models/resnet.py): `resnet50` and `resnet50_fc512`.

Both are torchvision's ResNet50 (He et al., CVPR 2016; stride on the 3x3 conv) with torchreid's
head: global average pooling of layer4, then, for resnet50_fc512 only, `fc` = Linear(2048, 512),
BatchNorm1d, ReLU, and a linear classifier. resnet50 keeps layer4's stride 2 and its test feature
is the pooled 2048-d map; resnet50_fc512 sets layer4's stride to 1 and its test feature is the
512-d `fc` output (non-negative). There is no BN-neck.

They are registered as `torchreid_resnet50` and `torchreid_resnet50_fc512`: this repo's own
`resnet50` keeps the 2018 layout (`base.N` names). Their `backbone` is torchreid's tree less
`classifier`: conv1, bn1, layer1..layer4 (and fc), so a torchreid file loads strictly into it.
"""
from torch import nn
from torchvision.models import resnet50

from .base import TrunkFeatureModel
from .resnet import set_last_stride

__all__ = ['TorchreidResNet50', 'TORCHREID_RESNET_ARCHS']

_FC_DIM = 512


class _TorchreidResNetTrunk(nn.Module):
    """torchreid's ResNet50 less `classifier`: (N, 3, H, W) -> (N, feature_dim), the pooled layer4
    map (2048) or, with fc512, its `fc` output (512)."""

    def __init__(self, last_stride, fc512):
        super().__init__()
        net = resnet50(weights=None)  # torchreid's tree is torchvision's: same names and shapes
        set_last_stride(net, last_stride)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.fc = None
        self.feature_dim = _FC_DIM if fc512 else 2048
        if fc512:
            self.fc = nn.Sequential(nn.Linear(2048, _FC_DIM), nn.BatchNorm1d(_FC_DIM), nn.ReLU(inplace=True))
            nn.init.normal_(self.fc[0].weight, 0, 0.01)  # torchreid's Linear initialisation
            nn.init.zeros_(self.fc[0].bias)

    def forward(self, images):
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        pooled = x.mean(dim=(2, 3))
        return pooled if self.fc is None else self.fc(pooled)


class TorchreidResNet50(TrunkFeatureModel):
    """torchreid's resnet50 (fc512 False: last stride 2, 2048-d) or resnet50_fc512 (last stride 1,
    512-d fc feature) as `backbone`, then the repo's (neck and) classifier."""

    def __init__(self, num_classes, loss=('xent',), pool='avg', neck='none', neck_feat='after', fc512=False):
        super().__init__(num_classes, _TorchreidResNetTrunk(1 if fc512 else 2, fc512), loss, pool, neck, neck_feat)


# this repo's -a names -> (class, keyword arguments): model = cls(num_classes, **kwargs)
TORCHREID_RESNET_ARCHS = {
    'torchreid_resnet50': (TorchreidResNet50, {'fc512': False}),
    'torchreid_resnet50_fc512': (TorchreidResNet50, {'fc512': True}),
}
