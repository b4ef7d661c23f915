"""torchreid's model-zoo files (KaiyangZhou/deep-person-reid; BoxMOT re-hosts the trained ones as
`<arch>_<dataset>.pt`): OSNet and OSNet-AIN (ImageNet and re-ID zoo), and the re-ID zoo's
resnet50, resnet50_fc512, mlfn, hacnn, mobilenetv2_x1_0 and mobilenetv2_x1_4.

Every family's model here has torchreid's tree as its `backbone` (models.osnet,
models.torchreid_resnet, mlfn, hacnn, mobilenetv2), so a file converts by name: its tensors go
under `backbone.`, its classifier stays `classifier.*` (HACNN's two, `classifier_global` and
`classifier_local`, are dropped: the model has one classifier over the 1024-d feature). The
architecture is read off the tensor names and shapes; a file that is recognised but does not fit
the tree completely (a stray tensor, another width or depth) fails the strict load of
model_config.from_checkpoint, which names the tensor. As pretrained weights for an OSNet
(convert_osnet) the classifier is dropped; the other families start fine-tuning from these files
through their checkpoints (weights.load_pretrained).
"""
from transforms import IMAGENET_MEAN, IMAGENET_STD

from .core import register_source

__all__ = ['torchreid_osnet_arch', 'torchreid_arch', 'convert_osnet', 'TORCHREID_TEST_SIZES']

# torchreid's test size of a family where it is not 256x128: HACNN's local branch has fixed sizes
TORCHREID_TEST_SIZES = {'hacnn': (160, 64)}
# torchreid's MODEL_ZOO evaluates every osnet_ain file (cross-domain, multi-source) with the cosine
# distance, its other zoo files with the Euclidean one
_COSINE_PREFIX = 'osnet_ain_'
_MOBILENETV2_STEM_WIDTHS = {32: 'mobilenetv2_x1_0', 44: 'mobilenetv2_x1_4'}  # int(32 x multiplier)
_CLASSIFIERS = {'hacnn': ('classifier_global.', 'classifier_local.')}  # dropped; other families keep theirs


def torchreid_osnet_arch(state_dict):
    """The -a name of a torchreid OSNet state dict (`conv1.conv.weight` at the top level, no
    `backbone.`, channel-gated blocks), or None: the family from its tree (OSNet-AIN has separate
    `pool2` transitions; osnet_ibn's stem norm is an InstanceNorm, so it has no running
    statistics), the width from the stem's channels."""
    keys = {k.removeprefix('module.') for k in state_dict}
    stem = next((v for k, v in state_dict.items() if k.removeprefix('module.') == 'conv1.conv.weight'), None)
    if stem is None or stem.dim() != 4 or 'conv2.0.gate.fc1.weight' not in keys:
        return None  # MobileNetV2's tree also starts with conv1.conv and conv2.0.conv1.conv, without gates
    width = {64: 'x1_0', 48: 'x0_75', 32: 'x0_5', 16: 'x0_25'}.get(stem.shape[0])
    if width is None:
        return None
    if any(k.startswith('pool2.') for k in keys):
        return f'osnet_ain_{width}'
    if 'conv1.bn.running_mean' not in keys:
        return 'osnet_ibn_x1_0' if width == 'x1_0' else None
    return f'osnet_{width}'


def torchreid_arch(state_dict):
    """The -a name of a torchreid zoo state dict ('module.' stripped), or None: OSNet as above;
    resnet50 (torchvision's tree with torchreid's `classifier`, no `fc.weight`) or resnet50_fc512
    (`fc.0` Linear); mlfn (`feature.N.fm_*` factor modules); hacnn (harmonious attention `ha1`);
    mobilenetv2 (`conv9`, depthwise `dwconv2`), its width from the stem's channels."""
    osnet = torchreid_osnet_arch(state_dict)
    if osnet:
        return osnet
    stem = state_dict.get('conv1.weight')
    if stem is not None and 'layer4.0.conv3.weight' in state_dict and 'fc.weight' not in state_dict \
            and not any('.IN.' in k for k in state_dict):  # torchvision's own files end in fc; IBN-a has INs
        return 'torchreid_resnet50_fc512' if 'fc.0.weight' in state_dict else 'torchreid_resnet50'
    if 'feature.0.fm_conv1.weight' in state_dict and 'fc_s.0.weight' in state_dict:
        return 'mlfn'
    if 'ha1.hard_attn.fc.weight' in state_dict and 'local_conv1.stream1.0.conv.weight' in state_dict:
        return 'hacnn'
    if 'conv9.conv.weight' in state_dict and 'conv2.0.dwconv2.conv.weight' in state_dict:
        return _MOBILENETV2_STEM_WIDTHS.get(state_dict['conv1.conv.weight'].shape[0])
    return None


def convert_osnet(state, model, report, grid=None):
    """torchreid OSNet / OSNet-AIN files (ImageNet or re-ID zoo): the backbone's own names; the
    classifier (1000 ImageNet classes, or the training identities) dropped."""
    report.drop('classifier', [k for k in state if k.startswith('classifier.')])
    report.source = f'torchreid {torchreid_osnet_arch(state) or "OSNet"} file'
    return {k: v for k, v in state.items() if not k.startswith('classifier.')}, {}


def to_checkpoint(state_dict, arch, path):
    """A torchreid zoo file in this repo's names: its backbone under `backbone.`, its classifier
    kept (same names) or, for HACNN, dropped; torchreid's test setting (256x128, or 160x64 for
    HACNN; ImageNet normalisation, no neck, Euclidean distance or, for OSNet-AIN, cosine); nothing
    of its training state."""
    dropped_prefixes = _CLASSIFIERS.get(arch, ())
    dropped = sorted(k for k in state_dict if k.startswith(dropped_prefixes)) if dropped_prefixes else []
    state = {(k if k.startswith('classifier.') else 'backbone.' + k): v
             for k, v in state_dict.items() if k not in dropped}
    height, width = TORCHREID_TEST_SIZES.get(arch, (256, 128))
    metric = 'cosine' if arch.startswith(_COSINE_PREFIX) else 'euclidean'
    config = {'arch': arch, 'neck': 'none', 'dist_metric': metric, 'height': height, 'width': width,
              'pixel_mean': list(IMAGENET_MEAN), 'pixel_std': list(IMAGENET_STD)}
    return {'state_dict': state, 'arch': arch, 'model': config, 'source': f'torchreid {arch} file',
            'dropped': {'classifier': dropped} if dropped else {}}


register_source('torchreid', torchreid_arch, to_checkpoint)
