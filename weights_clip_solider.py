"""Key-layout converters for two third-party checkpoints into timm layouts.

* :func:`convert_openai_clip_visual`: OpenAI CLIP (``openai/CLIP`` ``clip/model.py``) or a CLIP-ReID trained
  checkpoint (``Syliz517/CLIP-ReID`` ``model/make_model_clipreid.py``) -> timm
  ``vit_base_patch16_clip_quickgelu_224(num_classes=0)``.
* :func:`convert_solider_swin`: a SOLIDER teacher backbone (``tinyvision/SOLIDER`` ``swin_transformer.py``, the mmcv
  Swin layout also used by ``tinyvision/SOLIDER-REID`` ``model/backbones/swin_transformer.py``) -> timm
  ``swin_{tiny,small,base}_patch4_window7_224(num_classes=0)``, plus the fixed per-channel affine of SOLIDER's
  semantic controller.

Both are pure functions on flat ``{name: tensor}`` dicts: no file I/O, no printing, the input dict is not modified
and tensors keep their dtype (``load_state_dict`` casts on copy).
"""
import re

import torch
import torch.nn.functional as F

__all__ = ['convert_openai_clip_visual', 'convert_solider_swin', 'patch_merging_mmcv_to_timm']


# --------------------------------------------------------------------------------------------------------------
# CLIP / CLIP-ReID
# --------------------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------------------
# SOLIDER Swin
# --------------------------------------------------------------------------------------------------------------

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
