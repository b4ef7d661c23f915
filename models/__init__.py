"""Re-ID models: init_model(name, num_classes, ...), get_names(), and the model config that a
checkpoint records so that it alone rebuilds the model and its test feature."""
from .base import PretrainedWeightsError, ReIDModel, TestFeatureNet, temporal_pool
from .densenet import DenseNet121
from .resnet import ResNet50, ResNet50M

__all__ = ['init_model', 'get_names', 'ReIDModel', 'TestFeatureNet', 'PretrainedWeightsError',
           'temporal_pool', 'CONFIG_DEFAULTS', 'SHAPING_OPTIONS', 'checkpoint_config', 'from_checkpoint']

_FACTORY = {
    'resnet50': ResNet50,
    'resnet50m': ResNet50M,
    'densenet121': DenseNet121,
}

# What a checkpoint records under 'model'. The first five shape the model or the ranking, so a
# flag that contradicts them is an error; the others describe the test input and feature, which
# a user may change at test time.
CONFIG_DEFAULTS = {
    'arch': 'resnet50', 'last_stride': 2, 'neck': 'none', 'neck_feat': 'after', 'dist_metric': 'euclidean',
    'pool': 'avg', 'flip_test': False, 'height': 256, 'width': 128,
    'video': False, 'seq_len': 15, 'test_sample': 'evenly',
}
SHAPING_OPTIONS = ('arch', 'last_stride', 'neck', 'neck_feat', 'dist_metric')


def get_names():
    return list(_FACTORY)


def init_model(name, num_classes, loss=('xent',), pretrained=True, pretrained_path=None, pool='avg',
               last_stride=2, neck='none', neck_feat='after'):
    """Build a model by name.

    loss: {'xent'} (train mode returns logits), or with 'htri' and/or 'cent' (returns (logits,
    feature)). pretrained: ImageNet initialisation through torchvision's weights API (downloads
    once); pretrained_path: a local torchvision ImageNet state dict instead; pool: 'avg' or 'max'
    temporal pooling for (B, S, C, H, W) clips; last_stride: 1 or 2 for the last ResNet stage;
    neck: 'none' or 'bnneck'; neck_feat: the test feature, 'after' or 'before' the BNNeck.
    """
    if name not in _FACTORY:
        raise KeyError(f'unknown model {name!r}; known models: {", ".join(_FACTORY)}')
    return _FACTORY[name](num_classes, loss=loss, pretrained=pretrained, pretrained_path=pretrained_path,
                          pool=pool, last_stride=last_stride, neck=neck, neck_feat=neck_feat)


def _infer_arch(state_dict):
    """The architecture of a state dict that does not name it (the 2018 checkpoints)."""
    keys = {k.removeprefix('module.') for k in state_dict}
    if any(k.startswith('layers5a.') for k in keys):
        return 'resnet50m'
    if any(k.startswith('base.denseblock') for k in keys):
        return 'densenet121'
    return 'resnet50'


def checkpoint_config(checkpoint):
    """The model config of a checkpoint (a dict as checkpoints.load_checkpoint returns it), with
    'num_classes' from its classifier.

    Checkpoints of this repo record it under 'model'. Older ones get the classic model (last
    stride 2, no neck, Euclidean): this repo's earlier checkpoints name the arch and the test
    input in 'args'; the 2018 ones name nothing and their arch is read off their tensor names.
    """
    config = dict(CONFIG_DEFAULTS)
    if 'model' in checkpoint:
        config.update(checkpoint['model'])
    else:
        old_args = checkpoint.get('args', {})
        config.update({k: old_args[k] for k in ('height', 'width', 'pool', 'seq_len', 'test_sample')
                       if k in old_args})
        config['arch'] = checkpoint.get('arch') or _infer_arch(checkpoint['state_dict'])
    classifier = {k.removeprefix('module.'): v for k, v in checkpoint['state_dict'].items()}.get('classifier.weight')
    config['num_classes'] = classifier.shape[0] if classifier is not None else 1
    return config


def from_checkpoint(checkpoint, device='cpu'):
    """(model in eval mode on `device`, config) rebuilt from a checkpoint dict alone."""
    # Imported here, not at the top: checkpoints imports options, which imports this package, so
    # a top-level import would be circular; and `import models` stays free of the command line.
    from checkpoints import load_model_weights

    config = checkpoint_config(checkpoint)
    model = init_model(config['arch'], config['num_classes'], pretrained=False, pool=config['pool'],
                       last_stride=config['last_stride'], neck=config['neck'], neck_feat=config['neck_feat'])
    load_model_weights(model, checkpoint['state_dict'])
    return model.to(device).eval(), config
