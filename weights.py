"""Third-party pretrained weights -> this repo's models (`--pretrained-path FILE`).

load_pretrained(model, path) reads the file (nothing is downloaded), recognises its source from
its wrappers and tensor names, converts it to the model's names, loads it strictly and returns
a LoadReport: how many tensors were loaded, which were dropped and why (by kind, from an
explicit list per source), which position table was resampled from which grid to which, and
the pixel mean and std the weights were trained with (the preprocessing that travels with them).
An unexpected tensor, a missing one, or a shape that cannot be made to fit is an error naming
the tensor: nothing is dropped silently.

Sources (the layouts come from each project's own loading code):
- torchvision / timm ImageNet files (ResNet50, ViT, Swin, any timm model);
- LUPerson MoCo-v2 ResNet50 (Fu et al., CVPR 2021): flat torchvision names, or the MoCo
  training checkpoint `state_dict` -> `module.encoder_q.*` (key encoder, queue and MLP head dropped);
- IBN-Net ResNet50-IBN-a (Pan et al., ECCV 2018): `layerX.Y.bn1.IN.*` / `bn1.BN.*`;
- TransReID-SSL and PersonViT ViT-S/B (LUPerson self-supervised): DINO `teacher` -> `backbone.*`
  (DINO head dropped), or `model` / `state_dict` / `module` / `target_encoder` wrappers; the
  ICS variant with a convolutional stem; pretrained on a 16x8 grid;
- TransReID trained checkpoints: `base.*`, camera embedding `base.sie_embed`, stride 12, JPM;
- SOLIDER Swin-T/S/B (Chen et al., CVPR 2023): mmcv Swin names, permuted patch merging, the
  semantic controller at lambda 0.2;
- OpenAI CLIP ViT-B/16 (state dict or TorchScript archive) and CLIP-ReID's `image_encoder.*`;
- torchreid's OSNet and OSNet-AIN files (ImageNet and re-ID zoo): the model's own tree.

torchreid's trained OSNet zoo files also work as checkpoints (`--evaluate --resume`,
extract_features.py): checkpoints.load_checkpoint recognises them (torchreid_osnet_arch) and
moves their backbone under `backbone.`.

Position tables are resampled bilinearly without antialiasing from the source grid to the
model's, as TransReID, TransReID-SSL and CLIP-ReID do (timm's own default is bicubic with
antialiasing, which differs by up to 0.03 on a table of std 0.02).
"""
import argparse
import contextlib
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

from models.base import PretrainedWeightsError
from transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ['load_pretrained', 'torchreid_osnet_arch', 'adapt_torchreid_checkpoint', 'LoadReport', 'read_weights', 'unwrap', 'resample_position_table',
           'source_grid', 'parse_grid', 'convert_openai_clip_visual', 'convert_solider_swin',
           'patch_merging_mmcv_to_timm', 'LUPERSON_MEAN', 'LUPERSON_STD', 'HALF', 'OPENAI_CLIP_MEAN',
           'OPENAI_CLIP_STD']

HALF = [0.5, 0.5, 0.5]
LUPERSON_MEAN = [0.3525, 0.3106, 0.3140]  # fast-reid LUPerson configs: PIXEL_MEAN [89.896, 79.200, 80.073] / 255
LUPERSON_STD = [0.2505, 0.2522, 0.2503]  # PIXEL_STD [63.872, 64.305, 63.839] / 255
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
WRAPPERS = ('teacher', 'model', 'state_dict', 'module', 'target_encoder')


@dataclass
class LoadReport:
    """What load_pretrained did, printed by the scripts."""
    path: str
    source: str
    loaded: int = 0
    dropped: dict = field(default_factory=dict)  # kind -> source tensor names
    resampled: list = field(default_factory=list)  # sentences: 'pos_embed 14x14 -> 16x8'
    pixel_mean: list = field(default_factory=lambda: list(IMAGENET_MEAN))
    pixel_std: list = field(default_factory=lambda: list(IMAGENET_STD))
    notes: list = field(default_factory=list)
    wrappers: list = field(default_factory=list)  # the wrapper keys the state dict sat under
    person_pretrained: bool = False  # decides --recipe vit's learning rate

    def __str__(self):
        lines = [f'Pretrained weights {self.path}: {self.source}',
                 f'  loaded {self.loaded} tensors']
        for kind, names in sorted(self.dropped.items()):
            shown = ', '.join(names[:3]) + (f', ... ({len(names)} in all)' if len(names) > 3 else '')
            lines.append(f'  dropped {len(names)} ({kind}): {shown}')
        lines += [f'  resampled {line}' for line in self.resampled]
        lines.append(f'  pixel mean {fmt(self.pixel_mean)}, std {fmt(self.pixel_std)}')
        lines += [f'  note: {line}' for line in self.notes]
        return '\n'.join(lines)


def fmt(values):
    return '(' + ', '.join(f'{v:.4g}' for v in values) + ')'


def _drop(report, kind, names):
    names = sorted(names)
    if names:
        report.dropped.setdefault(kind, []).extend(names)


# ----------------------------------------------------------------------------------------------
# Reading and unwrapping

_SAFE_GLOBALS = [np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32)), argparse.Namespace]
with contextlib.suppress(ImportError):
    from numpy._core.multiarray import scalar as _numpy_scalar
    _SAFE_GLOBALS.append(_numpy_scalar)


def read_weights(path):
    """The object in a weights file, loaded without running code: torch.load(weights_only) with
    numpy scalars and argparse.Namespace (the `args` of DINO and MoCo checkpoints) allowed, or
    the tensors of a TorchScript archive (OpenAI's CLIP files)."""
    if not os.path.isfile(path):
        raise PretrainedWeightsError(f'--pretrained-path {path}: no such file')
    if zipfile.is_zipfile(path) and any(n.endswith('/constants.pkl') for n in zipfile.ZipFile(path).namelist()):
        return dict(torch.jit.load(path, map_location='cpu').state_dict())  # TorchScript: tensors only
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location='cpu', weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise PretrainedWeightsError(f'cannot read --pretrained-path {path}: not a PyTorch weights file, or one '
                                     f'that would run code when loaded ({str(error).splitlines()[0]})') from error


def unwrap(obj, report):
    """(flat state dict, wrappers) from a file's object: descend through the wrapper keys of
    the sources above ('teacher', 'model', 'state_dict', 'module', 'target_encoder'), strip
    'module.' prefixes; inside a DINO 'teacher', keep 'backbone.*' (prefix stripped) and drop
    the DINO projection head."""
    wrappers = []
    while isinstance(obj, dict) and not all(torch.is_tensor(v) for v in obj.values()):
        key = next((k for k in WRAPPERS if isinstance(obj.get(k), dict)), None)
        if key is None:
            break
        wrappers.append(key)
        obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise PretrainedWeightsError(f'{report.path} holds no state dict (found {type(obj).__name__})')
    state = {}
    for key, value in obj.items():
        if not torch.is_tensor(value):
            raise PretrainedWeightsError(f'{report.path}: entry {key!r} of its state dict is a {type(value).__name__}, '
                                         f'not a tensor: not a weights file of a known layout')
        state[key.removeprefix('module.')] = value
    if 'teacher' in wrappers:
        _drop(report, 'DINO projection head', [k for k in state if k.startswith('head.')])
        other = [k for k in state if not k.startswith(('backbone.', 'head.'))]
        if other:
            raise PretrainedWeightsError(f'{report.path}: unexpected tensor {other[0]!r} in the DINO teacher '
                                         f'(expected backbone.* and head.*)')
        state = {k.removeprefix('backbone.'): v for k, v in state.items() if k.startswith('backbone.')}
    return state, wrappers


# ----------------------------------------------------------------------------------------------
# Position tables

# Grids of published person-pretrained and TransReID files that a token count alone cannot
# tell apart from a square: LUPerson pretraining and 256x128 fine-tuning (16x8), TransReID's
# stride 12 at 256x128 (21x10), 384x128 (24x8).
KNOWN_GRIDS = {128: (16, 8), 210: (21, 10), 192: (24, 8)}


def parse_grid(text):
    """'16x8' -> (16, 8)."""
    match = re.fullmatch(r'(\d+)x(\d+)', text or '')
    if not match:
        raise ValueError(f'--pretrained-grid {text!r}: give ROWSxCOLUMNS, e.g. 16x8')
    return int(match[1]), int(match[2])


def source_grid(num_patches, model_grid, path, given=None):
    """The (rows, columns) grid of a file's position table of num_patches entries: `given`
    (--pretrained-grid), the model's own grid when the counts agree, a square, or a known person
    grid (KNOWN_GRIDS); otherwise an error asking for --pretrained-grid."""
    if given is not None:
        if given[0] * given[1] != num_patches:
            raise PretrainedWeightsError(f'--pretrained-grid {given[0]}x{given[1]} has {given[0] * given[1]} cells, '
                                         f'but the position table of {path} has {num_patches}')
        return given
    if num_patches == model_grid[0] * model_grid[1]:
        return tuple(model_grid)
    side = round(num_patches ** 0.5)
    if side * side == num_patches:
        return side, side
    if num_patches in KNOWN_GRIDS:
        return KNOWN_GRIDS[num_patches]
    raise PretrainedWeightsError(
        f'{path}: cannot tell the grid of its position table ({num_patches} patches): pass --pretrained-grid '
        f'ROWSxCOLUMNS, the patch grid it was trained on (e.g. 16x8 for 256x128 with stride 16)')


def resample_position_table(table, old_grid, new_grid, prefix_tokens=1):
    """(1, prefix + old rows * old cols, D) -> (1, prefix + new rows * new cols, D): the grid part
    resized bilinearly (align_corners False, no antialiasing), the prefix (class token) kept."""
    return resample_abs_pos_embed(table, new_size=list(new_grid), old_size=list(old_grid),
                                  num_prefix_tokens=prefix_tokens, interpolation='bilinear', antialias=False)


# ----------------------------------------------------------------------------------------------
# Converters: file state dict -> (trunk state dict, extras {model attribute: tensor}), per family


def _split_moco(state, report):
    """LUPerson MoCo training checkpoint -> flat torchvision names of the query encoder."""
    if not any(k.startswith('encoder_q.') for k in state):
        return state, False
    _drop(report, 'MoCo key encoder', [k for k in state if k.startswith('encoder_k.')])
    _drop(report, 'MoCo queue', [k for k in state if k.startswith('queue')])
    _drop(report, 'MoCo projection head', [k for k in state if k.startswith('encoder_q.fc.')])
    known = ('encoder_q.', 'encoder_k.', 'queue')
    other = [k for k in state if not k.startswith(known)]
    if other:
        raise PretrainedWeightsError(f'{report.path}: unexpected tensor {other[0]!r} in a MoCo checkpoint')
    return {k.removeprefix('encoder_q.'): v for k, v in state.items()
            if k.startswith('encoder_q.') and not k.startswith('encoder_q.fc.')}, True


def convert_resnet(state, model, report, grid=None):
    """torchvision / LUPerson / IBN-Net ResNet50 files -> the model's trunk (torchvision names
    for resnet50_ibn_a's `backbone`; the 2018 nn.Sequential indices `0..7` for resnet50 and
    resnet50m's `base`)."""
    state, moco = _split_moco(state, report)
    _drop(report, 'ImageNet classifier', [k for k in state if k.startswith('fc.')])
    state = {k: v for k, v in state.items() if not k.startswith('fc.')}
    has_ibn = any('.bn1.IN.' in k for k in state)
    wants_ibn = type(model).__name__ == 'ResNet50IBNa'
    if has_ibn != wants_ibn:
        raise PretrainedWeightsError(
            f'{report.path} is a ResNet50-IBN-a file (tensors such as layer1.0.bn1.IN.weight): use -a resnet50_ibn_a'
            if has_ibn else f'{report.path} is a plain ResNet50 file: use -a resnet50, or an IBN-Net file for '
                            f'-a resnet50_ibn_a')
    name = os.path.basename(report.path).lower()
    if moco or 'lup' in name:
        report.source = 'LUPerson MoCo-v2 ResNet50' + (' (MoCo training checkpoint, query encoder)' if moco else '')
        report.person_pretrained = True
        report.pixel_mean, report.pixel_std = list(LUPERSON_MEAN), list(LUPERSON_STD)
        if not moco:
            report.notes.append("LUPerson's pixel mean/std chosen from the file name ('lup'); "
                                "override with --pixel-mean/--pixel-std")
    else:
        report.source = 'IBN-Net ResNet50-IBN-a (ImageNet)' if has_ibn else 'torchvision / timm ResNet50 (ImageNet)'
    if wants_ibn:
        return state, {}
    stage = {'conv1': '0', 'bn1': '1', 'layer1': '4', 'layer2': '5', 'layer3': '6', 'layer4': '7'}
    renamed = {}
    for key, value in state.items():
        head, _, rest = key.partition('.')
        if head not in stage:
            raise PretrainedWeightsError(f'{report.path}: unexpected tensor {key!r} for a ResNet50')
        renamed[f'{stage[head]}.{rest}'] = value
    return renamed, {}


_TRANSREID_HEAD = ('bottleneck', 'classifier')
_TRANSREID_JPM = ('b1.', 'b2.')


def _transreid_layout(state, report):
    """TransReID trained checkpoint (`base.*`) -> timm ViT names, and its camera table."""
    _drop(report, "TransReID's unused fc of the backbone", [k for k in state if k.startswith('base.fc.')])
    _drop(report, 're-ID head (BNNeck, classifiers)', [k for k in state if k.startswith(_TRANSREID_HEAD)])
    _drop(report, 'JPM branches', [k for k in state if k.startswith(_TRANSREID_JPM)])
    other = [k for k in state if not k.startswith(('base.',) + _TRANSREID_HEAD + _TRANSREID_JPM)]
    if other:
        raise PretrainedWeightsError(f'{report.path}: unexpected tensor {other[0]!r} in a TransReID checkpoint')
    out = {k.removeprefix('base.'): v for k, v in state.items() if k.startswith('base.') and not k.startswith('base.fc.')}
    cameras = out.pop('sie_embed', None)
    return out, None if cameras is None else cameras.flatten(1)


def _camera_table(table, model, report, name):
    """The camera embedding of a file for this model: loaded when the camera sets agree in size,
    else reported and left to train afresh."""
    if table is None:
        return {}
    if model.num_cameras == table.shape[0]:
        if table.shape[1] != model.feat_dim:
            raise PretrainedWeightsError(f'{report.path}: {name} has width {table.shape[1]}, the model {model.feat_dim}')
        return {'camera_embed': table}
    why = ('the model has no camera embedding (--camera-embedding)' if not model.num_cameras else
           f'{table.shape[0]} cameras in the file, {model.num_cameras} in this training set: trained afresh')
    _drop(report, f'camera embedding ({why})', [name])
    return {}


def convert_vit(state, model, report, grid=None):
    """timm / DeiT / DINO / TransReID-SSL / PersonViT / TransReID ViT files -> timm ViT names."""
    cameras, camera_name = None, None
    if any(k.startswith('base.') for k in state):
        state, cameras = _transreid_layout(state, report)
        camera_name = 'base.sie_embed'
        report.source = 'TransReID trained checkpoint'
        report.person_pretrained = True
        report.pixel_mean, report.pixel_std = list(HALF), list(HALF)
    _drop(report, 'ImageNet / DINO classifier head', [k for k in state if k.startswith(('head.', 'head_dist.', 'pre_logits.'))])
    _drop(report, 'iBOT mask token', [k for k in state if k == 'masked_embed'])
    state = {k: v for k, v in state.items() if not k.startswith(('head.', 'head_dist.', 'pre_logits.', 'masked_embed'))}
    prefix = 1
    if 'dist_token' in state:  # DeiT distilled: drop the distillation token and its position
        _drop(report, 'DeiT distillation token', ['dist_token'])
        del state['dist_token']
        prefix = 2
    if 'pos_embed' not in state or 'cls_token' not in state:
        raise PretrainedWeightsError(f'{report.path} is not a ViT file (no pos_embed / cls_token): wrong -a?')
    if any(k.startswith('patch_embed.conv.') for k in state) != model.has_conv_stem:
        raise PretrainedWeightsError(
            f'{report.path} has a convolutional patch stem (patch_embed.conv.*): use -a vit_small_ics or vit_base_ics'
            if not model.has_conv_stem else f'{report.path} has no convolutional patch stem: use -a vit_small or vit_base')
    weight = state.get('patch_embed.proj.weight')
    if weight is not None and weight.dim() == 2:  # old timm files: a linear patch projection
        state['patch_embed.proj.weight'] = weight.reshape(model.backbone.patch_embed.proj.weight.shape)
    table = state['pos_embed']
    if prefix == 2:
        table = torch.cat([table[:, :1], table[:, 2:]], dim=1)
    old = source_grid(table.shape[1] - 1, model.grid_size, report.path, grid)
    if old != tuple(model.grid_size):
        table = resample_position_table(table, old, model.grid_size)
        report.resampled.append(f'pos_embed from a {old[0]}x{old[1]} grid to {model.grid_size[0]}x{model.grid_size[1]}')
    state['pos_embed'] = table
    if report.source == '?':
        person = old == (16, 8) or 'teacher' in report.wrappers or 'target_encoder' in report.wrappers
        report.source = ('person-pretrained ViT (TransReID-SSL / PersonViT, LUPerson)' if person
                         else 'timm / DeiT ViT (ImageNet)')
        if person:
            report.pixel_mean, report.pixel_std = list(HALF), list(HALF)
            report.person_pretrained = True
    return state, _camera_table(cameras, model, report, camera_name)


def convert_clip(state, model, report, grid=None):
    """OpenAI CLIP or CLIP-ReID files -> timm's QuickGELU CLIP ViT names."""
    clip_reid = any(k.startswith('image_encoder.') for k in state)
    try:
        state, dropped = convert_openai_clip_visual(state)
    except ValueError as error:
        raise PretrainedWeightsError(f'{report.path}: {error}') from error
    for kind, names in dropped.items():
        _drop(report, kind, names)
    report.source = 'CLIP-ReID trained checkpoint (image encoder)' if clip_reid else 'OpenAI CLIP (image tower)'
    report.person_pretrained = clip_reid
    report.pixel_mean, report.pixel_std = (list(HALF), list(HALF)) if clip_reid else (list(OPENAI_CLIP_MEAN),
                                                                                      list(OPENAI_CLIP_STD))
    table = state['pos_embed']
    old = source_grid(table.shape[1] - 1, model.grid_size, report.path, grid)
    if old != tuple(model.grid_size):
        state['pos_embed'] = resample_position_table(table, old, model.grid_size)
        report.resampled.append(f'pos_embed from a {old[0]}x{old[1]} grid to {model.grid_size[0]}x{model.grid_size[1]}')
    cameras = state.pop('camera_embed', None)
    return state, _camera_table(cameras, model, report, 'cv_embed')


def convert_swin(state, model, report, grid=None):
    """SOLIDER (mmcv names) or timm / Microsoft Swin files -> timm Swin names (+ SOLIDER's
    semantic affine as the model's semantic_scale_k / semantic_shift_k buffers)."""
    if any(k.startswith(('stages.', 'patch_embed.projection.')) for k in state):
        try:
            state, affine, dropped = convert_solider_swin(state)
        except ValueError as error:
            raise PretrainedWeightsError(f'{report.path}: {error}') from error
        for kind, names in dropped.items():
            _drop(report, kind, names)
        report.source = 'SOLIDER Swin (LUPerson, semantic weight 0.2)'
        report.person_pretrained = True
        report.pixel_mean, report.pixel_std = list(HALF), list(HALF)
        report.notes.append("SOLIDER's mmcv Swin pads its windows before the cyclic shift, timm after: a "
                            'fine-tuning start, not a bit-exact copy of SOLIDER\'s forward')
        extras = {}
        for k, (scale, shift) in affine.items():
            extras[f'semantic_scale_{k}'], extras[f'semantic_shift_{k}'] = scale, shift
        return state, extras
    from timm.models.swin_transformer import checkpoint_filter_fn
    _drop(report, 'buffers the model rebuilds', [k for k in state if k.endswith(('relative_position_index', 'attn_mask'))])
    _drop(report, 'ImageNet classifier', [k for k in state if k.startswith('head')])
    state = checkpoint_filter_fn({k: v for k, v in state.items() if not k.startswith('head')}, model.backbone)
    report.source = 'timm / Microsoft Swin (ImageNet)'
    return state, {}


def torchreid_osnet_arch(state_dict):
    """The -a name of a torchreid OSNet state dict (`conv1.conv.weight` at the top level, no
    `backbone.`), or None: the family from its tree (OSNet-AIN has separate `pool2` transitions;
    osnet_ibn's stem norm is an InstanceNorm, so it has no running statistics), the width from
    the stem's channels."""
    keys = {k.removeprefix('module.') for k in state_dict}
    stem = next((v for k, v in state_dict.items() if k.removeprefix('module.') == 'conv1.conv.weight'), None)
    if stem is None or stem.dim() != 4 or 'conv2.0.conv1.conv.weight' not in keys:
        return None
    width = {64: 'x1_0', 48: 'x0_75', 32: 'x0_5', 16: 'x0_25'}.get(stem.shape[0])
    if width is None:
        return None
    if any(k.startswith('pool2.') for k in keys):
        return f'osnet_ain_{width}'
    if 'conv1.bn.running_mean' not in keys:
        return 'osnet_ibn_x1_0' if width == 'x1_0' else None
    return f'osnet_{width}'


def convert_osnet(state, model, report, grid=None):
    """torchreid OSNet / OSNet-AIN files (ImageNet or re-ID zoo): the backbone's own names; the
    classifier (1000 ImageNet classes, or the training identities) dropped."""
    _drop(report, 'classifier', [k for k in state if k.startswith('classifier.')])
    report.source = f'torchreid {torchreid_osnet_arch(state) or "OSNet"} file'
    return {k: v for k, v in state.items() if not k.startswith('classifier.')}, {}


def convert_timm(state, model, report, grid=None):
    """A timm file for `-a timm:<name>`: timm's own filter for that model family, then the
    classifier (the model's pretrained_cfg 'classifier' names) dropped."""
    net = model.backbone
    module = __import__(type(net).__module__, fromlist=['checkpoint_filter_fn'])
    classifier = net.pretrained_cfg.get('classifier') or 'head'
    names = classifier if isinstance(classifier, (list, tuple)) else [classifier]
    heads = [k for k in state if any(k.startswith(n + '.') for n in names)]
    _drop(report, 'ImageNet classifier', heads)
    state = {k: v for k, v in state.items() if k not in heads}
    if hasattr(module, 'checkpoint_filter_fn'):
        state = module.checkpoint_filter_fn(state, net)
    report.source = f'timm {net.pretrained_cfg.get("architecture", type(net).__name__)} file'
    mean, std = net.pretrained_cfg.get('mean'), net.pretrained_cfg.get('std')
    if mean and std:
        report.pixel_mean, report.pixel_std = list(mean), list(std)
    return state, {}


# ----------------------------------------------------------------------------------------------
# CLIP / CLIP-ReID
# ----------------------------------------------------------------------------------------------

_CLIP_VISUAL_PREFIXES = ('visual.', 'image_encoder.')

# visual-tower name (prefix removed) -> timm name; ``{i}`` is the block index.
_CLIP_BLOCK_MAP = {
    'ln_1.weight': 'norm1.weight',
    'ln_1.bias': 'norm1.bias',
    'attn.in_proj_weight': 'attn.qkv.weight',
    'attn.in_proj_bias': 'attn.qkv.bias',
    'attn.out_proj.weight': 'attn.proj.weight',
    'attn.out_proj.bias': 'attn.proj.bias',
    'ln_2.weight': 'norm2.weight',
    'ln_2.bias': 'norm2.bias',
    'mlp.c_fc.weight': 'mlp.fc1.weight',
    'mlp.c_fc.bias': 'mlp.fc1.bias',
    'mlp.c_proj.weight': 'mlp.fc2.weight',
    'mlp.c_proj.bias': 'mlp.fc2.bias',
}
_CLIP_TOP_MAP = {
    'conv1.weight': 'patch_embed.proj.weight',
    'ln_pre.weight': 'norm_pre.weight',
    'ln_pre.bias': 'norm_pre.bias',
    'ln_post.weight': 'norm.weight',
    'ln_post.bias': 'norm.bias',
}
_CLIP_BLOCK_RE = re.compile(r'^transformer\.resblocks\.(\d+)\.(.+)$')

# Source keys (after the caller stripped wrappers / ``module.``) that are dropped, by kind.
_CLIP_TEXT_EXACT = ('token_embedding.weight', 'positional_embedding', 'text_projection', 'logit_scale')
_CLIP_TEXT_PREFIXES = ('transformer.', 'ln_final.', 'text_encoder.')
_CLIP_METADATA = ('input_resolution', 'context_length', 'vocab_size')


def _clip_drop_kind(key):
    """The dropped kind of a non-visual CLIP / CLIP-ReID key, or None if the key is unknown."""
    if key in _CLIP_TEXT_EXACT or key.startswith(_CLIP_TEXT_PREFIXES):
        return 'text encoder'
    if key in _CLIP_METADATA:
        return 'metadata'
    if key.startswith('prompt_learner.'):
        return 'prompt learner'
    if key.startswith(('classifier.', 'classifier_proj.')):
        return 'classifier'
    if key.startswith(('bottleneck.', 'bottleneck_proj.')):
        return 'BNNeck'
    return None


def convert_openai_clip_visual(state_dict):
    """Convert an OpenAI CLIP or CLIP-ReID ViT checkpoint to timm ``VisionTransformer`` keys.

    Sources: ``openai/CLIP`` ``clip/model.py`` (``VisionTransformer``, ``ResidualAttentionBlock``: pre-LN blocks,
    ``nn.MultiheadAttention`` with packed ``in_proj``, MLP ``c_fc`` -> QuickGELU -> ``c_proj``, ``ln_pre`` after the
    position embedding, ``ln_post`` on the output tokens) and ``Syliz517/CLIP-ReID`` ``model/make_model_clipreid.py``
    (``image_encoder = clip_model.visual``, ``prompt_learner``, ``text_encoder``, ``classifier``,
    ``classifier_proj``, ``bottleneck``, ``bottleneck_proj``, optional SIE ``cv_embed``) and ``model/clip/model.py``
    (the CLIP-ReID ``VisionTransformer`` adds ``cv_emb`` to the class token only, after the ``cat`` and before the
    position embedding and ``ln_pre``).

    The target is timm ``vit_base_patch16_clip_quickgelu_224(num_classes=0)``, i.e. ``VisionTransformer(
    pre_norm=True, norm_layer=partial(LayerNorm, eps=1e-5), act_layer='quick_gelu')`` (any width / depth: nothing
    here is specific to ViT-B, names are mapped one by one).

    Args:
        state_dict: flat ``{name: tensor}`` with wrappers and ``module.`` already removed, either

          * OpenAI layout: ``visual.conv1.weight`` (D, 3, P, P), ``visual.class_embedding`` (D,),
            ``visual.positional_embedding`` (1 + N, D), ``visual.ln_pre.*`` (D,),
            ``visual.transformer.resblocks.i.{ln_1, attn.in_proj_weight (3D, D), attn.in_proj_bias (3D,),
            attn.out_proj.*, ln_2, mlp.c_fc.* (4D, D), mlp.c_proj.* (D, 4D)}``, ``visual.ln_post.*``,
            ``visual.proj`` (D, E), and the text tower (``transformer.*``, ``token_embedding.weight``,
            ``positional_embedding``, ``ln_final.*``, ``text_projection``, ``logit_scale``) and the JIT metadata
            ``input_resolution`` / ``context_length`` / ``vocab_size``; or
          * CLIP-ReID trained layout: ``image_encoder.*`` with the same visual names, ``prompt_learner.*``,
            ``text_encoder.*``, ``classifier.weight``, ``classifier_proj.weight``, ``bottleneck.*``,
            ``bottleneck_proj.*`` and optionally ``cv_embed`` (C*V, D) (or (C, D) / (V, D)).

    Returns:
        ``(timm_state_dict, dropped)``:

        * ``timm_state_dict``: ``cls_token`` (1, 1, D), ``pos_embed`` (1, 1 + N, D) at the checkpoint's own grid
          (NOT resampled: the caller resamples it to its input size), ``patch_embed.proj.weight`` (D, 3, P, P),
          ``norm_pre.*``, ``blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.*``, ``norm.*``; and,
          only when the source has ``cv_embed``, ``camera_embed`` (C*V, D). ``camera_embed`` is not a timm key: the
          caller pops it into its own SIE parameter; CLIP-ReID adds ``SIE_COE * cv_embed[cam * V + view]`` to the
          class token before the position embedding, which equals using ``cls_token + that row``.
        * ``dropped``: ``{kind: sorted list of source keys}`` for the non-empty kinds among
          ``'text encoder'`` (text tower, including ``logit_scale``), ``'projection'`` (``visual.proj`` /
          ``image_encoder.proj``, the (D, E) image-text projection), ``'prompt learner'``, ``'classifier'``,
          ``'BNNeck'`` and ``'metadata'`` (the integer entries ``input_resolution`` / ``context_length`` /
          ``vocab_size`` of some OpenAI state dicts).

    Raises:
        ValueError: a key that is neither mapped nor of a dropped kind (the message names it), e.g. a ResNet CLIP
            tower (``visual.attnpool.*``), or a visual key seen under both prefixes.
    """
    out = {}
    dropped = {}
    for key, value in state_dict.items():
        prefix = next((p for p in _CLIP_VISUAL_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            if key == 'cv_embed':
                _put(out, 'camera_embed', value.reshape(-1, value.shape[-1]), key)
                continue
            kind = _clip_drop_kind(key)
            if kind is None:
                raise ValueError(f'convert_openai_clip_visual: unexpected key {key!r}')
            dropped.setdefault(kind, []).append(key)
            continue

        name = key[len(prefix):]
        if name == 'proj':
            dropped.setdefault('projection', []).append(key)
            continue
        if name == 'class_embedding':
            _put(out, 'cls_token', value.reshape(1, 1, -1), key)
        elif name == 'positional_embedding':
            if value.ndim != 2:
                raise ValueError(f'convert_openai_clip_visual: {key!r} should be (1 + N, D), got {tuple(value.shape)}')
            _put(out, 'pos_embed', value.unsqueeze(0), key)
        elif name in _CLIP_TOP_MAP:
            _put(out, _CLIP_TOP_MAP[name], value, key)
        else:
            match = _CLIP_BLOCK_RE.match(name)
            if match is None or match.group(2) not in _CLIP_BLOCK_MAP:
                raise ValueError(f'convert_openai_clip_visual: unexpected key {key!r}')
            _put(out, f'blocks.{int(match.group(1))}.{_CLIP_BLOCK_MAP[match.group(2)]}', value, key)
    return out, {kind: sorted(keys) for kind, keys in dropped.items()}


def _put(out, name, value, source_key):
    if name in out:
        raise ValueError(f'duplicate target {name!r} (second source key {source_key!r})')
    out[name] = value


# ----------------------------------------------------------------------------------------------
# SOLIDER Swin
# ----------------------------------------------------------------------------------------------

# mmcv PatchMerging (nn.Unfold, kernel 2, stride 2) orders the 4C merged vector as index c*4 + 2*dy + dx
# (channel-major, then the 2x2 offsets row by row). timm PatchMerging does
# x.reshape(B, H/2, 2, W/2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3), i.e. index (2*dx + dy)*C + c (the original
# Swin order x0=(0,0), x1=(1,0), x2=(0,1), x3=(1,1) as (dy, dx)). timm group g = 2*dx + dy holds the mmcv offset
# 2*dy + dx = _TIMM_GROUP_TO_MMCV_OFFSET[g]; the permutation is its own inverse.
_TIMM_GROUP_TO_MMCV_OFFSET = [0, 2, 1, 3]


def patch_merging_mmcv_to_timm(tensor):
    """Reorder a PatchMerging parameter from mmcv's Unfold order to timm's order along its 4C axis.

    Args:
        tensor: ``reduction.weight`` (out, 4C) (last axis reordered) or ``norm.weight`` / ``norm.bias`` (4C,).

    Returns:
        A new tensor of the same shape: entry ``g*C + c`` (timm, g = 2*dx + dy) is the mmcv entry
        ``c*4 + [0, 2, 1, 3][g]``. This is the inverse of ``correct_unfold_reduction_order`` /
        ``correct_unfold_norm_order`` in SOLIDER's ``swin_converter`` (Swin/timm order -> mmcv order).
    """
    if tensor.ndim not in (1, 2) or tensor.shape[-1] % 4:
        raise ValueError(f'PatchMerging tensor should be (4C,) or (out, 4C), got {tuple(tensor.shape)}')
    lead = tensor.shape[:-1]
    channels = tensor.shape[-1] // 4
    grouped = tensor.reshape(*lead, channels, 4).transpose(-1, -2)  # (..., 4 offsets (mmcv), C)
    return grouped[..., _TIMM_GROUP_TO_MMCV_OFFSET, :].reshape(*lead, 4 * channels).contiguous()


_SWIN_BLOCK_MAP = {
    'norm1.weight': 'norm1.weight',
    'norm1.bias': 'norm1.bias',
    'attn.w_msa.qkv.weight': 'attn.qkv.weight',
    'attn.w_msa.qkv.bias': 'attn.qkv.bias',
    'attn.w_msa.proj.weight': 'attn.proj.weight',
    'attn.w_msa.proj.bias': 'attn.proj.bias',
    'attn.w_msa.relative_position_bias_table': 'attn.relative_position_bias_table',
    'norm2.weight': 'norm2.weight',
    'norm2.bias': 'norm2.bias',
    'ffn.layers.0.0.weight': 'mlp.fc1.weight',
    'ffn.layers.0.0.bias': 'mlp.fc1.bias',
    'ffn.layers.1.weight': 'mlp.fc2.weight',
    'ffn.layers.1.bias': 'mlp.fc2.bias',
}
_SWIN_TOP_MAP = {
    'patch_embed.projection.weight': 'patch_embed.proj.weight',
    'patch_embed.projection.bias': 'patch_embed.proj.bias',
    'patch_embed.norm.weight': 'patch_embed.norm.weight',
    'patch_embed.norm.bias': 'patch_embed.norm.bias',
}
_SWIN_BLOCK_RE = re.compile(r'^stages\.(\d+)\.blocks\.(\d+)\.(.+)$')
_SWIN_DOWN_RE = re.compile(r'^stages\.(\d+)\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)$')
_SWIN_NORM_RE = re.compile(r'^norm(\d+)\.(weight|bias)$')
_SWIN_SEMANTIC_RE = re.compile(r'^semantic_embed_([wb])\.(\d+)\.(weight|bias)$')


def convert_solider_swin(state_dict, semantic_weight=0.2):
    """Convert a SOLIDER teacher Swin backbone (mmcv layout) to timm ``SwinTransformer`` keys.

    Sources: ``tinyvision/SOLIDER`` (``convert_model.py`` saves ``ckpt['teacher']``, whose backbone keys start with
    ``backbone.``; ``swin_transformer.py`` is the mmcv-style Swin with ``swin_converter``) and
    ``tinyvision/SOLIDER-REID`` ``model/backbones/swin_transformer.py`` (``init_weights`` keeps the ``backbone.``
    keys; ``forward``).

    Key mapping (stage i, block j):

    * ``patch_embed.projection.*`` -> ``patch_embed.proj.*``; ``patch_embed.norm.*`` unchanged.
    * ``stages.i.blocks.j.{norm1, norm2}`` -> ``layers.i.blocks.j.{norm1, norm2}``;
      ``attn.w_msa.{qkv, proj, relative_position_bias_table}`` -> ``attn.{...}``;
      ``ffn.layers.0.0`` / ``ffn.layers.1`` -> ``mlp.fc1`` / ``mlp.fc2``.
    * ``stages.i.downsample.{reduction.weight (2C, 4C), norm.* (4C,)}`` -> ``layers.(i+1).downsample.*`` (mmcv
      merges at the end of stage i, timm at the start of stage i+1), reordered by
      :func:`patch_merging_mmcv_to_timm` (mmcv ``nn.Unfold`` order ``c*4 + 2*dy + dx`` -> timm order
      ``(2*dx + dy)*C + c``).
    * ``norm3.*`` (``norm{num_stages - 1}``, the last stage's output norm) -> ``norm.*``.

    Semantic controller (SOLIDER-REID ``SwinTransformer.forward``): with ``s = [lambda, 1 - lambda]``
    (``torch.cat([w, 1 - w])``, ``w = semantic_weight``) each stage i = 0..3 returns ``x`` (the tokens after that
    stage's PatchMerging, or the stage output for the last stage, which has no downsample) and ``out`` (the stage
    output before PatchMerging); then ``x = x * softplus(semantic_embed_w[i](s)) + semantic_embed_b[i](s)``
    (``nn.Softplus()``, beta 1, threshold 20), and ``out`` goes through ``norm{i}``; the pooled feature is
    ``avgpool(norm3(out of stage 3))``. So for i = 0, 1, 2 the affine acts on the downsampled tokens that feed
    stage i+1, i.e. in timm after ``layers[i+1].downsample`` and before ``layers[i+1].blocks``; for i = 3 it rebinds
    ``x`` after ``out`` was taken, so it never reaches the pooled output and is left out (its keys are dropped as
    ``'unused semantic embedding'``). ``semantic_embed_*.3`` is ``Linear(2, C_3)`` (the index is clamped to 2 at
    construction). The embeddings are frozen (``requires_grad=False``) in SOLIDER-REID, so the affine is a constant
    per-channel scale and shift for a given lambda (0.2 in every released SOLIDER-REID run, ``run.sh``).

    Args:
        state_dict: flat ``{name: tensor}`` of the teacher backbone with ``backbone.`` (and ``module.``) already
            stripped; DINO head keys may be included under their original ``head.*`` names.
        semantic_weight: lambda. A negative value means SOLIDER's controller is off (``semantic_weight >= 0`` is
            its switch): ``semantic_affine`` is then empty and the embedding keys are dropped.

    Returns:
        ``(timm_state_dict, semantic_affine, dropped)``:

        * ``timm_state_dict``: exactly the keys of timm ``swin_*_patch4_window7_224(num_classes=0)`` for the same
          depths / widths (``relative_position_index`` and attention masks are non-persistent in timm).
        * ``semantic_affine``: ``{k: (scale (C_k,), shift (C_k,))}`` for timm layer index k = 1, 2, 3 (SOLIDER
          stage k-1), computed in float32, to apply as ``x * scale + shift`` on the (B, H, W, C_k) tokens right after
          ``layers[k].downsample``. Empty if the source has no ``semantic_embed_*`` keys or ``semantic_weight < 0``.
        * ``dropped``: ``{kind: sorted list of source keys}`` for the non-empty kinds among ``'DINO head'``
          (``head.*``), ``'unused stage norms'`` (``norm0..norm2``: only used for SOLIDER's multi-scale feature
          maps), ``'buffers rebuilt by the model'`` (``relative_position_index``), ``'unused semantic embedding'``
          (the last stage's ``semantic_embed_*``, or all of them when ``semantic_weight < 0``).

    Raises:
        ValueError: a key that is neither mapped nor of a dropped kind (the message names it; this includes a
            stage / norm / embedding index beyond the number of stages and a downsample on the last stage), or a
            semantic embedding stage lacking one of its four tensors.
    """
    out = {}
    dropped = {}
    semantic = {}
    stage_ids = [int(m.group(1)) for m in map(re.compile(r'^stages\.(\d+)\.').match, state_dict) if m]
    if not stage_ids:
        raise ValueError('convert_solider_swin: no stages.* keys (is this an mmcv Swin backbone?)')
    num_stages = 1 + max(stage_ids)

    def drop(kind, key):
        dropped.setdefault(kind, []).append(key)

    for key, value in state_dict.items():
        if key.startswith('head.'):
            drop('DINO head', key)
            continue
        if key.endswith('relative_position_index'):
            drop('buffers rebuilt by the model', key)
            continue
        if key in _SWIN_TOP_MAP:
            _put(out, _SWIN_TOP_MAP[key], value, key)
            continue
        match = _SWIN_BLOCK_RE.match(key)
        if match:
            stage, block, name = match.groups()
            if name not in _SWIN_BLOCK_MAP:
                raise ValueError(f'convert_solider_swin: unexpected key {key!r}')
            _put(out, f'layers.{int(stage)}.blocks.{int(block)}.{_SWIN_BLOCK_MAP[name]}', value, key)
            continue
        match = _SWIN_DOWN_RE.match(key)
        if match and int(match.group(1)) < num_stages - 1:
            stage, name = match.groups()
            _put(out, f'layers.{int(stage) + 1}.downsample.{name}', patch_merging_mmcv_to_timm(value), key)
            continue
        match = _SWIN_NORM_RE.match(key)
        if match and int(match.group(1)) < num_stages:
            if int(match.group(1)) == num_stages - 1:
                _put(out, f'norm.{match.group(2)}', value, key)
            else:
                drop('unused stage norms', key)
            continue
        match = _SWIN_SEMANTIC_RE.match(key)
        if match and int(match.group(2)) < num_stages:
            which, stage, param = match.groups()
            semantic.setdefault(int(stage), {})[f'{which}.{param}'] = (key, value)
            continue
        raise ValueError(f'convert_solider_swin: unexpected key {key!r}')

    semantic_affine = {}
    s = torch.tensor([semantic_weight, 1.0 - semantic_weight], dtype=torch.float32)
    for stage, parts in sorted(semantic.items()):
        missing = [n for n in ('w.weight', 'w.bias', 'b.weight', 'b.bias') if n not in parts]
        if missing:
            raise ValueError(f'convert_solider_swin: stage {stage} lacks '
                             + ', '.join(f'semantic_embed_{n[0]}.{stage}.{n[2:]}' for n in missing))
        if semantic_weight < 0 or stage == num_stages - 1:
            for key, _ in parts.values():
                drop('unused semantic embedding', key)
            continue
        weight = {n: v.detach().to(torch.float32) for n, (_, v) in parts.items()}
        scale = F.softplus(F.linear(s, weight['w.weight'], weight['w.bias']))
        shift = F.linear(s, weight['b.weight'], weight['b.bias'])
        semantic_affine[stage + 1] = (scale, shift)
    return out, semantic_affine, {kind: sorted(keys) for kind, keys in dropped.items()}


# ----------------------------------------------------------------------------------------------
# Loading


def _family(model):
    kind = type(model).__name__
    if kind in ('ResNet50', 'ResNet50M', 'ResNet50IBNa'):
        return convert_resnet, (model.base if hasattr(model, 'base') else model.backbone)
    if kind == 'VisionTransformer':
        return (convert_clip if model.camera_tokens == 'cls' else convert_vit), model.backbone
    if kind == 'SwinTransformer':
        return convert_swin, model.backbone
    if kind == 'TimmNet':
        return convert_timm, model.backbone
    if kind in ('OSNet', 'OSNetAIN'):
        return convert_osnet, model.backbone
    raise PretrainedWeightsError(f'no converter for {kind}')


def _load_strict(module, state, path):
    """load_state_dict(strict) with an error that names the tensors that do not fit."""
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state if k not in own]
    wrong = [f'{k} {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model'
             for k, v in state.items() if k in own and v.shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f'{len(wrong)} of another shape (e.g. {wrong[0]}; another model width?)')
        if missing:
            parts.append(f'{len(missing)} missing (e.g. {", ".join(missing[:3])})')
        if unexpected:
            parts.append(f'{len(unexpected)} unexpected (e.g. {", ".join(unexpected[:3])})')
        raise PretrainedWeightsError(f'{path} does not fit the model: ' + '; '.join(parts))
    module.load_state_dict(state, strict=False)  # num_batches_tracked may be absent in old files
    return len(state)


def adapt_torchreid_checkpoint(checkpoint):
    """A torchreid OSNet zoo file, loaded as a checkpoint dict, in this repo's names: the arch
    read off its tensors, its backbone under `backbone.`, its classifier kept (same names), and
    nothing else of torchreid's training state (the optimizer is another's). Any other
    checkpoint is returned as it is."""
    if 'model' in checkpoint:
        return checkpoint
    arch = torchreid_osnet_arch(checkpoint['state_dict'])
    if arch is None:
        return checkpoint
    state = {k.removeprefix('module.'): v for k, v in checkpoint['state_dict'].items()}
    state = {(k if k.startswith('classifier.') else 'backbone.' + k): v for k, v in state.items()}
    return {'state_dict': state, 'arch': arch}


def load_pretrained(model, path, grid=None):
    """Load a pretrained file into `model` (see the module docstring); returns a LoadReport.
    grid: (rows, columns) of the file's position table when it cannot be recognised."""
    report = LoadReport(path=path, source='?')
    state, report.wrappers = unwrap(read_weights(path), report)
    convert, trunk = _family(model)
    state, extras = convert(state, model, report, grid)
    report.loaded = _load_strict(trunk, state, path)
    with torch.no_grad():
        for name, value in extras.items():
            target = getattr(model, name)
            if target.shape != value.shape:
                raise PretrainedWeightsError(f'{path}: {name} has shape {tuple(value.shape)}, the model '
                                             f'{tuple(target.shape)}')
            target.copy_(value)
            report.loaded += 1
    return report

