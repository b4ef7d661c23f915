"""Re-ID models: init_model(name, num_classes, loss, pretrained, ...) and get_names()."""
from .base import PretrainedWeightsError, ReIDModel, temporal_pool
from .densenet import DenseNet121
from .resnet import ResNet50, ResNet50M

__all__ = ['init_model', 'get_names', 'ReIDModel', 'PretrainedWeightsError', 'temporal_pool']

_FACTORY = {
    'resnet50': ResNet50,
    'resnet50m': ResNet50M,
    'densenet121': DenseNet121,
}


def get_names():
    return list(_FACTORY)


def init_model(name, num_classes, loss=('xent',), pretrained=True, pretrained_path=None, pool='avg'):
    """Build a model by name.

    loss: {'xent'} (train mode returns logits) or {'xent', 'htri'} (returns (logits, feature)).
    pretrained: ImageNet initialisation through torchvision's weights API (downloads once);
    pretrained_path: a local torchvision ImageNet state dict instead; pool: 'avg' or 'max'
    temporal pooling for (B, S, C, H, W) clips.
    """
    if name not in _FACTORY:
        raise KeyError(f'unknown model {name!r}; known models: {", ".join(_FACTORY)}')
    return _FACTORY[name](num_classes, loss=loss, pretrained=pretrained,
                          pretrained_path=pretrained_path, pool=pool)
