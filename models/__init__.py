"""Re-ID models: init_model(name, num_classes, ...), get_names(), and the frozen distillation
teacher (FrozenTeacher). The config a checkpoint records and the model rebuilt from it live in
model_config.py, above this package (model_config imports it, never the other way round)."""
import inspect

import weights

from .base import GLOBAL_POOLS, BatchNormGroups, PretrainedWeightsError, ReIDModel, TestFeatureNet, temporal_pool
from .densenet import DenseNet121
from .fastreid import FastReIDBaseline
from .hacnn import HACNN_ARCHS
from .lightmbn import LIGHTMBN_ARCHS
from .mgn import MGN
from .mlfn import MLFN_ARCHS
from .mobilenetv2 import MOBILENETV2_ARCHS
from .osnet import OSNET_ARCHS
from .resnet import ResNet50, ResNet50M
from .resnet_ibn import ResNet50IBNa
from .swin import SWIN_ARCHS, SwinTransformer
from .teacher import FrozenTeacher, file_sha256
from .timm_net import TimmNet, is_timm_arch, timm_model_name
from .torchreid_resnet import TORCHREID_RESNET_ARCHS
from .vit import VIT_ARCHS, VisionTransformer

__all__ = ['init_model', 'get_names', 'check_arch', 'is_transformer', 'ReIDModel', 'TestFeatureNet', 'BatchNormGroups',
           'PretrainedWeightsError', 'temporal_pool', 'GLOBAL_POOLS', 'VIT_ARCHS', 'SWIN_ARCHS', 'OSNET_ARCHS',
           'ZOO_ARCHS', 'FrozenTeacher', 'file_sha256']

_CLASSIC = {
    'resnet50': ResNet50,
    'resnet50m': ResNet50M,
    'densenet121': DenseNet121,
}
# Models whose trees are those of published trained files (torchreid's zoo, LightMBN): -a name ->
# (class, keyword arguments), model = cls(num_classes, **kwargs, **arch_options).
ZOO_ARCHS = {**TORCHREID_RESNET_ARCHS, **MLFN_ARCHS, **HACNN_ARCHS, **MOBILENETV2_ARCHS, **LIGHTMBN_ARCHS}
# Every -a name but timm:<model>; the classic three keep their 2018 tensor layout.
NAMES = [*_CLASSIC, 'resnet50_ibn_a', *OSNET_ARCHS, *ZOO_ARCHS, *VIT_ARCHS, *SWIN_ARCHS, 'fastreid_baseline',
         'fastreid_mgn']


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
               patch_stride=16, num_cameras=0, camera_weight=3.0, drop_path=0.0, pretrained_grid=None,
               arch_options=None):
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
    file's position table when it cannot be recognised; arch_options: further keyword arguments of
    the family's constructor (the config key 'arch_options', model_config.py), {} or None for none.
    """
    check_arch(name)
    head = {'loss': loss, 'pool': pool, 'neck': neck, 'neck_feat': neck_feat}
    vit = name in VIT_ARCHS
    if not vit and (patch_stride != 16 or num_cameras):
        raise ValueError(f'--patch-stride and --camera-embedding apply to the ViTs ({", ".join(VIT_ARCHS)}), '
                         f'not to {name}')
    if (name in ('resnet50m', 'densenet121') or name in ZOO_ARCHS) and global_pool != 'avg':
        raise ValueError(f'--global-pool applies to resnet50, resnet50_ibn_a, swin_* and timm models, not {name}')
    if last_stride != 2 and name not in ('resnet50', 'resnet50m', 'resnet50_ibn_a', 'fastreid_baseline', 'densenet121'):
        raise ValueError(f'--last-stride applies to the ResNets, not to {name}')
    table = {}  # the constructor options a name stands for (OSNET_ARCHS, VIT_ARCHS); arch_options override them
    if name == 'densenet121':  # torchvision's DenseNet file layout is loaded by torchvision itself
        family, options = DenseNet121, dict(pretrained=pretrained, pretrained_path=pretrained_path,
                                            last_stride=last_stride)
    elif name in _CLASSIC:
        family = _CLASSIC[name]
        options = dict(pretrained=pretrained and not pretrained_path, last_stride=last_stride,
                       **({'global_pool': global_pool} if name == 'resnet50' else {}))
    elif name == 'resnet50_ibn_a':
        family, options = ResNet50IBNa, dict(last_stride=last_stride, global_pool=global_pool)
    elif name == 'fastreid_baseline':  # backbone and era in arch_options (models.fastreid)
        family, options = FastReIDBaseline, dict(last_stride=last_stride, global_pool=global_pool)
    elif name == 'fastreid_mgn':  # backbone, era and head layout in arch_options (models.mgn)
        family, options = MGN, dict(global_pool=global_pool)
    elif name in OSNET_ARCHS:
        family, table = OSNET_ARCHS[name]
        options = dict(global_pool=global_pool)
    elif name in ZOO_ARCHS:
        family, table = ZOO_ARCHS[name]
        options = {}
    elif vit:
        timm_name, table = VIT_ARCHS[name]
        family = VisionTransformer
        options = dict(timm_name=timm_name, height=height, width=width, patch_stride=patch_stride,
                       num_cameras=num_cameras, camera_weight=camera_weight, drop_path=drop_path)
    elif name in SWIN_ARCHS:
        family = SwinTransformer
        options = dict(timm_name=SWIN_ARCHS[name], height=height, width=width, global_pool=global_pool,
                       drop_path=drop_path)
    else:
        family, options = TimmNet, dict(arch=name, height=height, width=width, global_pool=global_pool,
                                        drop_path=drop_path)
    arch_options = _checked_arch_options(name, family, arch_options or {}, {**options, **head})
    model = family(num_classes, **options, **{**table, **arch_options}, **head)
    if name == 'densenet121':
        return _with_report(model, None)
    if pretrained_path:
        return _with_report(model, weights.load_pretrained(model, pretrained_path, pretrained_grid))
    if pretrained and name not in _CLASSIC:
        raise PretrainedWeightsError(
            f'-a {name}: no weights are downloaded for it; pass --pretrained-path FILE (ImageNet or person-pretrained '
            f'weights, see docs/weights.md) or train from random initialisation with --no-pretrained')
    return _with_report(model, None)


def _checked_arch_options(name, family, arch_options, given):
    """arch_options, each a keyword argument of `family`'s constructor that init_model's own
    arguments (`given`) do not set; ValueError otherwise."""
    accepted = inspect.signature(family).parameters
    for key in arch_options:
        if key not in accepted:
            raise ValueError(f'arch_options {key!r} of -a {name}: {family.__name__} takes no such option')
        if key in given:
            raise ValueError(f'arch_options {key!r} of -a {name}: set by its own config key, not by arch_options')
    return arch_options


def _with_report(model, report):
    model.pretrained_report = report
    return model
