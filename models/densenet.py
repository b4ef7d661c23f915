"""DenseNet121 re-ID model on torchvision's DenseNet121."""
import torch.nn.functional as F
from torchvision.models import DenseNet121_Weights, densenet121

from .base import ReIDModel, imagenet_backbone

__all__ = ['DenseNet121']


class DenseNet121(ReIDModel):
    """DenseNet121 features (with the final ReLU torchvision applies), pooled, 1024-d, (neck and)
    linear classifier.

    The last-stride option does not apply: DenseNet121 ends in a dense block, not a strided
    stage, so its last downsampling is a transition layer's pooling, and only 2 (the network
    as it is) is accepted."""

    def __init__(self, num_classes, loss=('xent',), pretrained=True, pretrained_path=None, pool='avg',
                 last_stride=2, neck='none', neck_feat='after'):
        super().__init__(loss, pool, neck, neck_feat)
        if last_stride != 2:
            raise ValueError('--last-stride does not apply to densenet121 (it has no strided last stage); '
                             'use resnet50 or resnet50m, or leave --last-stride at 2')
        net = imagenet_backbone(densenet121, DenseNet121_Weights.IMAGENET1K_V1, pretrained, pretrained_path)
        self.base = net.features
        self.build_head(1024, num_classes)

    def features(self, images):
        return F.adaptive_avg_pool2d(F.relu(self.base(images)), 1).flatten(1)
