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
- OpenAI CLIP ViT-B/16 (state dict or TorchScript archive) and CLIP-ReID's `image_encoder.*`.

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
from timm.layers import resample_abs_pos_embed

from models.base import PretrainedWeightsError
from transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ['load_pretrained', 'LoadReport', 'read_weights', 'unwrap', 'resample_position_table',
           'source_grid', 'parse_grid', 'LUPERSON_MEAN', 'LUPERSON_STD', 'HALF', 'OPENAI_CLIP_MEAN',
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
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location='cpu', weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        if zipfile.is_zipfile(path) and any(n.endswith('constants.pkl') for n in zipfile.ZipFile(path).namelist()):
            return dict(torch.jit.load(path, map_location='cpu').state_dict())
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
    weight = state['patch_embed.proj.weight']
    if weight.dim() == 2:  # old timm files: a linear patch projection
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
    state, dropped = convert_openai_clip_visual(state)
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
        state, affine, dropped = convert_solider_swin(state)
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


# The CLIP and SOLIDER layouts.
from weights_clip_solider import convert_openai_clip_visual, convert_solider_swin  # noqa: E402
