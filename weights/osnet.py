"""torchreid's OSNet and OSNet-AIN files (KaiyangZhou/deep-person-reid, ImageNet and re-ID zoo):
the model's own tree, so they load by name. As pretrained weights (convert_osnet) the classifier
is dropped; a trained re-ID zoo file is also a checkpoint here (the source registered below)."""
from transforms import IMAGENET_MEAN, IMAGENET_STD

from .core import register_source

__all__ = ['torchreid_osnet_arch', 'convert_osnet']


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
    report.drop('classifier', [k for k in state if k.startswith('classifier.')])
    report.source = f'torchreid {torchreid_osnet_arch(state) or "OSNet"} file'
    return {k: v for k, v in state.items() if not k.startswith('classifier.')}, {}


def to_checkpoint(state_dict, arch, path):
    """A torchreid OSNet zoo file in this repo's names: its backbone under `backbone.`, its
    classifier kept (same names), and torchreid's test setting (256x128, ImageNet normalisation,
    no neck, Euclidean distance); nothing of its training state (the optimizer is another's)."""
    state = {(k if k.startswith('classifier.') else 'backbone.' + k): v for k, v in state_dict.items()}
    config = {'arch': arch, 'neck': 'none', 'dist_metric': 'euclidean', 'height': 256, 'width': 128,
              'pixel_mean': list(IMAGENET_MEAN), 'pixel_std': list(IMAGENET_STD)}
    return {'state_dict': state, 'arch': arch, 'model': config, 'source': f'torchreid {arch} file', 'dropped': {}}


register_source('torchreid OSNet', torchreid_osnet_arch, to_checkpoint)
