"""Swin files: SOLIDER Swin-T/S/B (Chen et al., CVPR 2023: mmcv Swin names, permuted patch merging,
the semantic controller at lambda 0.2) and timm / Microsoft Swin ImageNet files."""
import re

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import checkpoint_filter_fn

from .core import HALF, PretrainedWeightsError, put

__all__ = ['convert_swin', 'convert_solider_swin', 'patch_merging_mmcv_to_timm']


def convert_swin(state, model, report, grid=None):
    """SOLIDER (mmcv names) or timm / Microsoft Swin files -> timm Swin names (+ SOLIDER's
    semantic affine as the model's semantic_scale_k / semantic_shift_k buffers)."""
    if any(k.startswith(('stages.', 'patch_embed.projection.')) for k in state):
        try:
            state, affine, dropped = convert_solider_swin(state)
        except ValueError as error:
            raise PretrainedWeightsError(f'{report.path}: {error}') from error
        for kind, names in dropped.items():
            report.drop(kind, names)
        report.source = 'SOLIDER Swin (LUPerson, semantic weight 0.2)'
        report.person_pretrained = True
        report.pixel_mean, report.pixel_std = list(HALF), list(HALF)
        report.notes.append("SOLIDER's mmcv Swin pads its windows before the cyclic shift, timm after: a "
                            'fine-tuning start, not a bit-exact copy of SOLIDER\'s forward')
        extras = {}
        for k, (scale, shift) in affine.items():
            extras[f'semantic_scale_{k}'], extras[f'semantic_shift_{k}'] = scale, shift
        return state, extras
    report.drop('buffers the model rebuilds', [k for k in state if k.endswith(('relative_position_index', 'attn_mask'))])
    report.drop('ImageNet classifier', [k for k in state if k.startswith('head')])
    state = checkpoint_filter_fn({k: v for k, v in state.items() if not k.startswith('head')}, model.backbone)
    report.source = 'timm / Microsoft Swin (ImageNet)'
    return state, {}



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
            put(out, _SWIN_TOP_MAP[key], value, key)
            continue
        match = _SWIN_BLOCK_RE.match(key)
        if match:
            stage, block, name = match.groups()
            if name not in _SWIN_BLOCK_MAP:
                raise ValueError(f'convert_solider_swin: unexpected key {key!r}')
            put(out, f'layers.{int(stage)}.blocks.{int(block)}.{_SWIN_BLOCK_MAP[name]}', value, key)
            continue
        match = _SWIN_DOWN_RE.match(key)
        if match and int(match.group(1)) < num_stages - 1:
            stage, name = match.groups()
            put(out, f'layers.{int(stage) + 1}.downsample.{name}', patch_merging_mmcv_to_timm(value), key)
            continue
        match = _SWIN_NORM_RE.match(key)
        if match and int(match.group(1)) < num_stages:
            if int(match.group(1)) == num_stages - 1:
                put(out, f'norm.{match.group(2)}', value, key)
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
