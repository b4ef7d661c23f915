"""DenseNet121 re-ID model on torchvision's DenseNet121."""
import torch.nn.functional as F
from torch import nn
from torchvision.models import DenseNet121_Weights, densenet121

from .base import ReIDModel, imagenet_backbone

__all__ = ['DenseNet121']


class DenseNet121(ReIDModel):
    """DenseNet121 features (with the final ReLU torchvision applies), pooled, 1024-d, linear classifier."""

    def __init__(self, num_classes, loss=('xent',), pretrained=True, pretrained_path=None, pool='avg'):
        super().__init__(loss, pool)
        net = imagenet_backbone(densenet121, DenseNet121_Weights.IMAGENET1K_V1, pretrained, pretrained_path)
        self.base = net.features
        self.feat_dim = 1024
        self.classifier = nn.Linear(self.feat_dim, num_classes)

    def features(self, images):
        return F.adaptive_avg_pool2d(F.relu(self.base(images)), 1).flatten(1)
