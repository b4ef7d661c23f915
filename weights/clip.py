"""OpenAI CLIP ViT-B/16 files (state dict or TorchScript archive) and CLIP-ReID's `image_encoder.*`:
the image tower in timm's QuickGELU CLIP ViT names (text tower, prompt learner, projection,
BN-necks and classifiers dropped)."""
import re

from .core import HALF, PretrainedWeightsError, put
from .grid import resample_to_model
from .vit import camera_table

__all__ = ['OPENAI_CLIP_MEAN', 'OPENAI_CLIP_STD', 'convert_clip', 'convert_openai_clip_visual']

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def convert_clip(state, model, report, grid=None):
    """OpenAI CLIP or CLIP-ReID files -> timm's QuickGELU CLIP ViT names (and the image-text
    projection for a model that has one, clipreid_vit_base)."""
    clip_reid = any(k.startswith('image_encoder.') for k in state)
    projection = next((state[k] for k in ('visual.proj', 'image_encoder.proj') if k in state), None)
    try:
        state, dropped = convert_openai_clip_visual(state)
    except ValueError as error:
        raise PretrainedWeightsError(f'{report.path}: {error}') from error
    extras = {}
    if model.proj is not None and projection is not None:  # clipreid_vit_base: the projection is the model's
        extras['proj'] = projection
        dropped.pop('projection')
    for kind, names in dropped.items():
        report.drop(kind, names)
    report.source = 'CLIP-ReID trained checkpoint (image encoder)' if clip_reid else 'OpenAI CLIP (image tower)'
    report.person_pretrained = clip_reid
    report.pixel_mean, report.pixel_std = (list(HALF), list(HALF)) if clip_reid else (list(OPENAI_CLIP_MEAN),
                                                                                      list(OPENAI_CLIP_STD))
    resample_to_model(state, model, report, grid)
    cameras = state.pop('camera_embed', None)
    return state, {**extras, **camera_table(cameras, model, report, 'cv_embed')}


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
                put(out, 'camera_embed', value.reshape(-1, value.shape[-1]), key)
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
            put(out, 'cls_token', value.reshape(1, 1, -1), key)
        elif name == 'positional_embedding':
            if value.ndim != 2:
                raise ValueError(f'convert_openai_clip_visual: {key!r} should be (1 + N, D), got {tuple(value.shape)}')
            put(out, 'pos_embed', value.unsqueeze(0), key)
        elif name in _CLIP_TOP_MAP:
            put(out, _CLIP_TOP_MAP[name], value, key)
        else:
            match = _CLIP_BLOCK_RE.match(name)
            if match is None or match.group(2) not in _CLIP_BLOCK_MAP:
                raise ValueError(f'convert_openai_clip_visual: unexpected key {key!r}')
            put(out, f'blocks.{int(match.group(1))}.{_CLIP_BLOCK_MAP[match.group(2)]}', value, key)
    return out, {kind: sorted(keys) for kind, keys in dropped.items()}

