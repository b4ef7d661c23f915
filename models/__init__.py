"""Re-ID models: init_model(name, num_classes, ...), get_names(), the model config that a
checkpoint records so that it alone rebuilds the model and its test feature, and a checkpoint's
model as a frozen distillation teacher (load_teacher)."""
import weights
from transforms import IMAGENET_MEAN, IMAGENET_STD

from .base import GLOBAL_POOLS, BatchNormGroups, PretrainedWeightsError, ReIDModel, TestFeatureNet, temporal_pool
from .densenet import DenseNet121
from .hacnn import HACNN_ARCHS
from .lightmbn import LIGHTMBN_ARCHS
from .mlfn import MLFN_ARCHS
from .mobilenetv2 import MOBILENETV2_ARCHS
from .osnet import OSNET_ARCHS
from .resnet import ResNet50, ResNet50M
from .resnet_ibn import ResNet50IBNa
from .swin import SWIN_ARCHS, SwinTransformer
from .teacher import FrozenTeacher, load_teacher
from .timm_net import TimmNet, is_timm_arch, timm_model_name
from .torchreid_resnet import TORCHREID_RESNET_ARCHS
from .vit import VIT_ARCHS, VisionTransformer

__all__ = ['init_model', 'get_names', 'check_arch', 'is_transformer', 'ReIDModel', 'TestFeatureNet', 'BatchNormGroups',
           'PretrainedWeightsError', 'temporal_pool', 'CONFIG_DEFAULTS', 'SHAPING_OPTIONS', 'GLOBAL_POOLS',
           'VIT_ARCHS', 'SWIN_ARCHS', 'OSNET_ARCHS', 'ZOO_ARCHS', 'checkpoint_config', 'from_checkpoint', 'FrozenTeacher',
           'load_teacher']

_CLASSIC = {
    'resnet50': ResNet50,
    'resnet50m': ResNet50M,
    'densenet121': DenseNet121,
}
# Models whose trees are those of published trained files (torchreid's zoo, LightMBN): -a name ->
# (class, keyword arguments), model = cls(num_classes, **kwargs, **arch_options).
ZOO_ARCHS = {**TORCHREID_RESNET_ARCHS, **MLFN_ARCHS, **HACNN_ARCHS, **MOBILENETV2_ARCHS, **LIGHTMBN_ARCHS}
# Every -a name but timm:<model>; the classic three keep their 2018 tensor layout.
NAMES = [*_CLASSIC, 'resnet50_ibn_a', *OSNET_ARCHS, *ZOO_ARCHS, *VIT_ARCHS, *SWIN_ARCHS]

# What a checkpoint records under 'model'. SHAPING_OPTIONS shape the model or the ranking, so a
# flag that contradicts them is an error; the others describe the test input and feature, which
# a user may change at test time. pixel_mean/std: the preprocessing of the weights.
CONFIG_DEFAULTS = {
    'arch': 'resnet50', 'last_stride': 2, 'neck': 'none', 'neck_feat': 'after', 'dist_metric': 'euclidean',
    'global_pool': 'avg', 'patch_stride': 16, 'num_cameras': 0, 'camera_weight': 3.0,
    'pool': 'avg', 'flip_test': False, 'height': 256, 'width': 128, 'resize_mode': 'pil',
    'video': False, 'seq_len': 15, 'test_sample': 'evenly',
    'pixel_mean': list(IMAGENET_MEAN), 'pixel_std': list(IMAGENET_STD),
}
SHAPING_OPTIONS = ('arch', 'last_stride', 'neck', 'neck_feat', 'dist_metric', 'global_pool', 'patch_stride')


def get_names():
    return list(NAMES)


def check_arch(name):
    """An -a value: one of get_names() or timm:<a timm model name>; ValueError otherwise."""
    if is_timm_arch(name):
        timm_model_name(name)
    elif name not in NAMES:
        raise ValueError(f'unknown model {name!r}; known models: {", ".join(NAMES)}, or timm:<any timm model name>')
    return name


def is_transformer(name):
    return name in VIT_ARCHS or name in SWIN_ARCHS


def init_model(name, num_classes, loss=('xent',), pretrained=True, pretrained_path=None, pool='avg',
               last_stride=2, neck='none', neck_feat='after', global_pool='avg', height=256, width=128,
               patch_stride=16, num_cameras=0, camera_weight=3.0, drop_path=0.0, pretrained_grid=None):
    """Build a model by name (get_names(), or timm:<model>) and load its pretrained weights.

    loss: {'xent'} (train mode returns logits), or with 'htri', 'cent' and/or 'kd' (returns (logits,
    feature)). pretrained_path: a local weights file, converted and loaded strictly by
    weights.load_pretrained (the report is `model.pretrained_report`, its pixel mean/std the
    preprocessing to use); pretrained without a path: torchvision's ImageNet weights for the
    classic three (downloaded once), an error for the others (nothing else is downloaded);
    pretrained False: random initialisation. pool: 'avg' or 'max' temporal pooling for
    (B, S, C, H, W) clips; last_stride: 1 or 2 for the last ResNet stage; neck: 'none' or
    'bnneck'; neck_feat: the test feature, 'after' or 'before' the BNNeck; global_pool: 'avg',
    'max' or 'gem' spatial pooling (CNNs, Swin); height, width: the input size transformers are
    built for; patch_stride, num_cameras, camera_weight: ViT options (models.vit); drop_path:
    stochastic depth of transformers and timm models; pretrained_grid: (rows, columns) of the
    file's position table when it cannot be recognised.
    """
    check_arch(name)
    head = {'loss': loss, 'pool': pool, 'neck': neck, 'neck_feat': neck_feat}
    vit = name in VIT_ARCHS
    if not vit and (patch_stride != 16 or num_cameras):
        raise ValueError(f'--patch-stride and --camera-embedding apply to the ViTs ({", ".join(VIT_ARCHS)}), '
                         f'not to {name}')
    if (name in ('resnet50m', 'densenet121') or name in ZOO_ARCHS) and global_pool != 'avg':
        raise ValueError(f'--global-pool applies to resnet50, resnet50_ibn_a, swin_* and timm models, not {name}')
    if last_stride != 2 and name not in ('resnet50', 'resnet50m', 'resnet50_ibn_a', 'densenet121'):
        raise ValueError(f'--last-stride applies to the ResNets, not to {name}')
    if name == 'densenet121':  # torchvision's DenseNet file layout is loaded by torchvision itself
        return _with_report(DenseNet121(num_classes, pretrained=pretrained, pretrained_path=pretrained_path,
                                        last_stride=last_stride, **head), None)
    if name in _CLASSIC:
        extra = {'global_pool': global_pool} if name == 'resnet50' else {}
        model = _CLASSIC[name](num_classes, pretrained=pretrained and not pretrained_path, last_stride=last_stride,
                               **extra, **head)
    elif name == 'resnet50_ibn_a':
        model = ResNet50IBNa(num_classes, last_stride=last_stride, global_pool=global_pool, **head)
    elif name in OSNET_ARCHS:
        family, options = OSNET_ARCHS[name]
        model = family(num_classes, global_pool=global_pool, **options, **head)
    elif name in ZOO_ARCHS:
        family, options = ZOO_ARCHS[name]
        model = family(num_classes, **options, **head)
    elif vit:
        timm_name, options = VIT_ARCHS[name]
        model = VisionTransformer(num_classes, timm_name, height=height, width=width, patch_stride=patch_stride,
                                  num_cameras=num_cameras, camera_weight=camera_weight, drop_path=drop_path,
                                  **options, **head)
    elif name in SWIN_ARCHS:
        model = SwinTransformer(num_classes, SWIN_ARCHS[name], height=height, width=width, global_pool=global_pool,
                                drop_path=drop_path, **head)
    else:
        model = TimmNet(num_classes, name, height=height, width=width, global_pool=global_pool,
                        drop_path=drop_path, **head)
    if pretrained_path:
        return _with_report(model, weights.load_pretrained(model, pretrained_path, pretrained_grid))
    if pretrained and name not in _CLASSIC:
        raise PretrainedWeightsError(
            f'-a {name}: no weights are downloaded for it; pass --pretrained-path FILE (ImageNet or person-pretrained '
            f'weights, see the README) or train from random initialisation with --no-pretrained')
    return _with_report(model, None)


def _with_report(model, report):
    model.pretrained_report = report
    return model


def _infer_arch(state_dict):
    """The architecture of a state dict that does not name it: the 2018 checkpoints, and
    torchreid's OSNet zoo files (weights.torchreid_osnet_arch)."""
    osnet = weights.torchreid_osnet_arch(state_dict)
    if osnet:
        return osnet
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
    config['num_classes'] = classifier.shape[0] if classifier is not None else 0  # 0: no classifier
    return config


def from_checkpoint(checkpoint, device='cpu'):
    """(model in eval mode on `device`, config) rebuilt from a checkpoint dict alone."""
    # Imported here, not at the top: checkpoints imports options, which imports this package, so
    # a top-level import would be circular; and `import models` stays free of the command line.
    from checkpoints import load_model_weights

    config = checkpoint_config(checkpoint)
    model = init_model(config['arch'], config['num_classes'], pretrained=False, pool=config['pool'],
                       last_stride=config['last_stride'], neck=config['neck'], neck_feat=config['neck_feat'],
                       global_pool=config['global_pool'], height=config['height'], width=config['width'],
                       patch_stride=config['patch_stride'], num_cameras=config['num_cameras'],
                       camera_weight=config['camera_weight'])
    load_model_weights(model, checkpoint['state_dict'])
    return model.to(device).eval(), config
