"""CLIP-ReID trained checkpoints whole (Syliz517/CLIP-ReID, ViT-B-16 files such as
ViT-B-16_60.pth): the image encoder, its image-text projection and the two BN-necks, as
clipreid_vit_base (models/vit.py); the text side and the classifiers dropped.

The layout, from CLIP-ReID's model/make_model_clipreid.py (build_transformer, saved as
model.state_dict(), possibly under DataParallel's `module.`) and model/clip/model.py, with D the
tower width (768), E the projection width (512), L the blocks (12), P the patch (16), N the patches:
    image_encoder.conv1.weight (D, 3, P, P), .class_embedding (D,), .positional_embedding (1 + N, D),
    .ln_pre.{weight,bias} (D,), .transformer.resblocks.{i}.{ln_1, ln_2}.* (D,),
    .attn.in_proj_weight (3D, D), .attn.in_proj_bias (3D,), .attn.out_proj.weight (D, D), .bias (D,),
    .mlp.c_fc.weight (4D, D), .bias (4D,), .mlp.c_proj.weight (D, 4D), .bias (D,),
    .ln_post.{weight,bias} (D,), .proj (D, E);
    bottleneck.{weight, bias, running_mean, running_var} (D,), num_batches_tracked ();
    bottleneck_proj.* the same with (E,);
    classifier.weight (identities, D), classifier_proj.weight (identities, E);
    cv_embed (cameras x views, D) with SIE (MODEL.SIE_CAMERA / SIE_VIEW);
    prompt_learner.{cls_ctx, token_prefix, token_suffix}, text_encoder.* (CLIP's text tower).

The test feature as CLIP-ReID evaluates it (build_transformer.forward in eval mode): the class
token after ln_post (D) and its projection (E) concatenated, before the BN-necks with its person
configs' TEST.NECK_FEAT 'before' (configs/person/vit_clipreid.yml; 'after' is the BN-necks'
output), L2-normalised (TEST.FEAT_NORM 'yes': cosine). Input: 256x128 (INPUT.SIZE_TEST), PIL's
bilinear resize (T.Resize), mean and std 0.5 (INPUT.PIXEL_MEAN / PIXEL_STD). The patch stride is
16, or 12 for the published SIE+OLP runs, whose 256x128 table has a 21x10 grid (MODEL.STRIDE_SIZE
[12, 12]); cv_embed is added, times SIE_COE, to the class token: 1.0 in those runs' command (the
file does not record it). CLIP-ReID's RN50 files (image_encoder.attnpool.*) are not supported.
"""
import re

import torch

from .clip import convert_openai_clip_visual
from .core import HALF, PretrainedWeightsError, register_source
from .grid import KNOWN_GRIDS

__all__ = ['recognise', 'to_checkpoint', 'CLIPREID_SIE_WEIGHT']

CLIPREID_SIE_WEIGHT = 1.0  # MODEL.SIE_COE of the published SIE+OLP command
_VIT_B16 = {'width': 768, 'layers': 12, 'projection': 512}
_NECK_STATS = ('weight', 'bias', 'running_mean', 'running_var')
_DROPPED = {'prompt_learner.': 'prompt learner', 'text_encoder.': 'text encoder'}
_BLOCK_RE = re.compile(r'^image_encoder\.transformer\.resblocks\.(\d+)\.')


def recognise(state_dict):
    """{'rn50', 'width', 'layers', 'projection', 'patches'} of a CLIP-ReID file, read off its
    image encoder, or None when the file has no `image_encoder.` tree and BN-neck or prompt
    learner beside it."""
    if not any(k.startswith('image_encoder.') for k in state_dict):
        return None
    if not any(k.startswith(('bottleneck', 'prompt_learner.', 'classifier')) for k in state_dict):
        return None  # an image encoder alone: pretrained weights for --pretrained-path, not a trained model
    if any(k.startswith('image_encoder.attnpool.') for k in state_dict):
        return {'rn50': True}
    blocks = [int(m.group(1)) for m in map(_BLOCK_RE.match, state_dict) if m]
    conv, proj = state_dict.get('image_encoder.conv1.weight'), state_dict.get('image_encoder.proj')
    table = state_dict.get('image_encoder.positional_embedding')
    return {'rn50': False, 'width': None if conv is None else conv.shape[0], 'layers': 1 + max(blocks, default=-1),
            'projection': None if proj is None or proj.dim() != 2 else proj.shape[1],
            'patches': None if table is None else table.shape[0] - 1}


def _expected_shapes(info):
    """{source name: shape} of every tensor a CLIP-ReID ViT file of this size must hold."""
    d, e, p = info['width'], info['projection'], 16  # ViT-B-16: CLIP-ReID's only ViT
    shapes = {'conv1.weight': (d, 3, p, p), 'class_embedding': (d,), 'positional_embedding': (info['patches'] + 1, d),
              'ln_pre.weight': (d,), 'ln_pre.bias': (d,), 'ln_post.weight': (d,), 'ln_post.bias': (d,), 'proj': (d, e)}
    block = {'ln_1.weight': (d,), 'ln_1.bias': (d,), 'attn.in_proj_weight': (3 * d, d), 'attn.in_proj_bias': (3 * d,),
             'attn.out_proj.weight': (d, d), 'attn.out_proj.bias': (d,), 'ln_2.weight': (d,), 'ln_2.bias': (d,),
             'mlp.c_fc.weight': (4 * d, d), 'mlp.c_fc.bias': (4 * d,), 'mlp.c_proj.weight': (d, 4 * d),
             'mlp.c_proj.bias': (d,)}
    for i in range(info['layers']):
        shapes.update({f'transformer.resblocks.{i}.{name}': shape for name, shape in block.items()})
    shapes = {'image_encoder.' + name: shape for name, shape in shapes.items()}
    for neck, width in (('bottleneck', d), ('bottleneck_proj', e)):
        shapes.update({f'{neck}.{stat}': (width,) for stat in _NECK_STATS})
    return shapes


def _input_size(patches, path):
    """(height, width, patch stride) of a position table of `patches` cells: CLIP-ReID's 256x128
    with stride 16 (16x8) or 12 (21x10), 384x128 with stride 16 (24x8)."""
    grid = KNOWN_GRIDS.get(patches)
    if grid is None:
        raise PretrainedWeightsError(f'{path}: a CLIP-ReID position table of {patches} patches, none of the published '
                                     f'grids (16x8, 21x10 at 256x128; 24x8 at 384x128)')
    return (256, 128, 12) if grid == (21, 10) else (grid[0] * 16, grid[1] * 16, 16)


def to_checkpoint(state_dict, info, path):
    """This repo's checkpoint of a CLIP-ReID ViT file (see the module docstring), strictly: a
    tensor missing from the table of its size, a stray one, or one of another shape is an error
    naming it."""
    if info['rn50']:
        raise PretrainedWeightsError(f'{path} is a CLIP-ReID RN50 file (image_encoder.attnpool.*): only its ViT-B-16 '
                                     f'files are supported')
    for key, what in (('width', 'image_encoder.conv1.weight'), ('projection', 'image_encoder.proj'),
                      ('patches', 'image_encoder.positional_embedding')):
        if info[key] is None:
            raise PretrainedWeightsError(f'{path} looks like a CLIP-ReID file but lacks {what}')
    expected = _expected_shapes(info)
    for key, shape in expected.items():
        if key not in state_dict:
            neck = ' (a BN-neck: CLIP-ReID evaluates through it)' if key.startswith('bottleneck') else ''
            raise PretrainedWeightsError(f'{path}: CLIP-ReID tensor {key}{neck} is missing')
        if tuple(state_dict[key].shape) != shape:
            raise PretrainedWeightsError(f'{path}: {key} has shape {tuple(state_dict[key].shape)}, a CLIP-ReID file of '
                                         f'width {info["width"]} (projection {info["projection"]}) has {shape}')
    dropped, classifiers = {}, {'classifier.weight': info['width'], 'classifier_proj.weight': info['projection']}
    for key, value in state_dict.items():
        if key in expected or key in ('bottleneck.num_batches_tracked', 'bottleneck_proj.num_batches_tracked'):
            continue
        if key in classifiers:
            if value.dim() != 2 or value.shape[1] != classifiers[key]:
                raise PretrainedWeightsError(f'{path}: {key} has shape {tuple(value.shape)}, expected (identities, '
                                             f'{classifiers[key]})')
            dropped.setdefault('classifier', []).append(key)
        elif key == 'cv_embed':
            if value.dim() != 2 or value.shape[1] != info['width']:
                raise PretrainedWeightsError(f'{path}: cv_embed has shape {tuple(value.shape)}, expected (cameras, '
                                             f'{info["width"]})')
        elif key.startswith(tuple(_DROPPED)):
            dropped.setdefault(_DROPPED[next(p for p in _DROPPED if key.startswith(p))], []).append(key)
        else:
            raise PretrainedWeightsError(f'{path}: unexpected tensor {key!r} in a CLIP-ReID file')
    visual, _ = convert_openai_clip_visual({k: v for k, v in state_dict.items()
                                            if k.startswith('image_encoder.') or k == 'cv_embed'})
    cameras = visual.pop('camera_embed', None)
    state = {'backbone.' + k: v for k, v in visual.items()}
    state['proj'] = state_dict['image_encoder.proj']
    if cameras is not None:
        state['camera_embed'] = cameras
    # One BatchNorm over the concatenated feature is CLIP-ReID's two, channel by channel.
    for stat in _NECK_STATS:
        state[f'bottleneck.{stat}'] = torch.cat([state_dict[f'bottleneck.{stat}'], state_dict[f'bottleneck_proj.{stat}']])
    state['bottleneck.num_batches_tracked'] = state_dict.get('bottleneck.num_batches_tracked', torch.tensor(0))
    height, width, stride = _input_size(info['patches'], path)
    size = {'width': info['width'], 'layers': info['layers'], 'projection': info['projection']}
    arch_options = {} if size == _VIT_B16 else {
        'timm_options': {'embed_dim': info['width'], 'depth': info['layers'], 'num_heads': info['width'] // 64},
        'projection': info['projection']}  # CLIP's heads: width / 64
    config = {'arch': 'clipreid_vit_base', 'arch_options': arch_options, 'neck': 'bnneck', 'neck_feat': 'before',
              'dist_metric': 'cosine', 'height': height, 'width': width, 'patch_stride': stride,
              'resize_mode': 'pil', 'pixel_mean': list(HALF), 'pixel_std': list(HALF),
              'num_cameras': 0 if cameras is None else cameras.shape[0], 'camera_weight': CLIPREID_SIE_WEIGHT}
    shape = 'ViT-B-16' if not arch_options else f'ViT width {info["width"]}, {info["layers"]} blocks'
    sie = '' if cameras is None else f', SIE over {cameras.shape[0]} cameras (weight {CLIPREID_SIE_WEIGHT})'
    source = (f'CLIP-ReID trained checkpoint ({shape}, {height}x{width}, stride {stride}{sie}; feature: the '
              f'{info["width"]} + {info["projection"]}-d class token and projection before the BN-necks)')
    return {'state_dict': state, 'model': config, 'source': source,
            'dropped': {kind: sorted(names) for kind, names in dropped.items()}}


register_source('CLIP-ReID', recognise, to_checkpoint)
