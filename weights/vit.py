"""ViT files: timm / DeiT ImageNet, DINO, TransReID-SSL and PersonViT ViT-S/B (LUPerson
self-supervised: DINO `teacher` -> `backbone.*`, DINO head dropped, or `model` / `state_dict` /
`module` / `target_encoder` wrappers; the ICS variant with a convolutional stem; pretrained on a
16x8 grid), and TransReID trained checkpoints (`base.*`, camera embedding `base.sie_embed`,
stride 12, JPM)."""
import torch

from .core import HALF, PretrainedWeightsError
from .grid import resample_to_model

__all__ = ['convert_vit', 'camera_table']

_TRANSREID_HEAD = ('bottleneck', 'classifier')
_TRANSREID_JPM = ('b1.', 'b2.')


def _transreid_layout(state, report):
    """TransReID trained checkpoint (`base.*`) -> timm ViT names, and its camera table."""
    report.drop("TransReID's unused fc of the backbone", [k for k in state if k.startswith('base.fc.')])
    report.drop('re-ID head (BNNeck, classifiers)', [k for k in state if k.startswith(_TRANSREID_HEAD)])
    report.drop('JPM branches', [k for k in state if k.startswith(_TRANSREID_JPM)])
    other = [k for k in state if not k.startswith(('base.',) + _TRANSREID_HEAD + _TRANSREID_JPM)]
    if other:
        raise PretrainedWeightsError(f'{report.path}: unexpected tensor {other[0]!r} in a TransReID checkpoint')
    out = {k.removeprefix('base.'): v for k, v in state.items() if k.startswith('base.') and not k.startswith('base.fc.')}
    cameras = out.pop('sie_embed', None)
    return out, None if cameras is None else cameras.flatten(1)


def camera_table(table, model, report, name):
    """The camera embedding of a file for this model: loaded when the camera sets agree in size,
    else reported and left to train afresh."""
    if table is None:
        return {}
    if model.num_cameras == table.shape[0]:
        width = model.camera_embed.shape[1]
        if table.shape[1] != width:
            raise PretrainedWeightsError(f'{report.path}: {name} has width {table.shape[1]}, the model {width}')
        return {'camera_embed': table}
    why = ('the model has no camera embedding (--camera-embedding)' if not model.num_cameras else
           f'{table.shape[0]} cameras in the file, {model.num_cameras} in this training set: trained afresh')
    report.drop(f'camera embedding ({why})', [name])
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
    report.drop('ImageNet / DINO classifier head', [k for k in state if k.startswith(('head.', 'head_dist.', 'pre_logits.'))])
    report.drop('iBOT mask token', [k for k in state if k == 'masked_embed'])
    state = {k: v for k, v in state.items() if not k.startswith(('head.', 'head_dist.', 'pre_logits.', 'masked_embed'))}
    prefix = 1
    if 'dist_token' in state:  # DeiT distilled: drop the distillation token and its position
        report.drop('DeiT distillation token', ['dist_token'])
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
    if prefix == 2:
        state['pos_embed'] = torch.cat([state['pos_embed'][:, :1], state['pos_embed'][:, 2:]], dim=1)
    old = resample_to_model(state, model, report, grid)
    if report.source == '?':
        person = old == (16, 8) or 'teacher' in report.wrappers or 'target_encoder' in report.wrappers
        report.source = ('person-pretrained ViT (TransReID-SSL / PersonViT, LUPerson)' if person
                         else 'timm / DeiT ViT (ImageNet)')
        if person:
            report.pixel_mean, report.pixel_std = list(HALF), list(HALF)
            report.person_pretrained = True
    return state, camera_table(cameras, model, report, camera_name)
