"""fast-reid Baseline files (its model zoo, the trackers' re-ID files) -> this repo's checkpoint.

Every fast-reid file is `{'model': state_dict, ...}` (its Checkpointer adds optimizer and
scheduler state), with or without `module.` prefixes; fast-reid itself loads them non-strictly,
so a file whose BN-neck does not fit runs with an identity BN-neck and no warning anyone reads.
Here the era, the backbone and the pooling are read off the tensors (names and shapes, never the
file name) and everything must fit.

Eras (their head tensors):
  A  v0.1.x (to 2020-09-10; the v0.1.1 model zoo): `heads.bnneck.*`, `heads.classifier.weight`,
     `pixel_mean` / `pixel_std` buffers; stem max-pool padded; ResNeSt not dilated.
  B  v0.2-v1.1 (to 2021-03-23): `heads.bottleneck.0.*`, `heads.classifier.weight`, `pixel_*`.
  C  v1.2+ (PyPI fastreid 1.4.0; BoT-SORT, Deep OC-SORT, StrongSORT files): `heads.bottleneck.0.*`,
     `heads.weight`, no `pixel_*`; stem max-pool with ceil_mode; ResNeSt's layer4 dilated.
Era B spans both architectures: a file with non-local blocks of width C / 2 (fast-reid
2020-09-10 to 2020-12-07) or a ResNeSt with non-local blocks predates 2020-12-07 and gets the
padded stem and no dilation; any other era-B file the v1.0 architecture (January 2021, when the
vehicle zoo was re-uploaded), and the report says so.

Recipes and input sizes (what the file does not record): a trained GeM p is SBS (384x128; in era
A also AGW, whose files look the same: 256x128 via --height/--width); non-local blocks without a
trained p are AGW, whose GeM p is fixed at 3 from era B on (256x128); average pooling is BoT
(256x128). fast-reid tests with PIL bicubic resizing and ImageNet normalisation (on 0-255 input,
inside its model), cosine distance, the BN-neck output as the feature.
"""
import re

from transforms import IMAGENET_MEAN, IMAGENET_STD

from .core import PretrainedWeightsError, register_source

__all__ = ['ARCH', 'read_architecture', 'recognise', 'to_checkpoint']

ARCH = 'fastreid_baseline'
_BASELINE_PREFIXES = ('backbone.', 'heads.')
_PIXEL = ('pixel_mean', 'pixel_std')
_RESNET_DEPTHS = {((2, 2, 2, 2), False): 'resnet18', ((3, 4, 6, 3), False): 'resnet34',
                  ((3, 4, 6, 3), True): 'resnet50', ((3, 4, 23, 3), True): 'resnet101'}
_STAGE_WIDTHS = (256, 512, 1024, 2048)  # bottleneck stages' output channels (the non-local blocks' C)
_HEAD_NAMES = {  # era -> (BN-neck prefix, classifier)
    'A': ('heads.bnneck.', 'heads.classifier.weight'),
    'B': ('heads.bottleneck.0.', 'heads.classifier.weight'),
    'C': ('heads.bottleneck.0.', 'heads.weight'),
}
_NECK_TENSORS = ('weight', 'bias', 'running_mean', 'running_var')
_RECIPE_SIZES = {'SBS': (384, 128), 'AGW': (256, 128), 'BoT': (256, 128)}


def recognise(state_dict):
    """{'keys': n} when the flat state dict is a fast-reid Baseline's (backbone.* and heads.*,
    nothing else but fast-reid's pixel_mean / pixel_std), else None. MGN files (b1.*, b1_head.*)
    are not Baselines."""
    if not any(k.startswith('heads.') for k in state_dict) or not any(k.startswith('backbone.') for k in state_dict):
        return None
    return {'keys': len(state_dict)}


def _fail(path, message):
    raise PretrainedWeightsError(f'{path}: {message}')


def _era(state, path):
    def has(prefix):
        return any(k.startswith(prefix) for k in state)

    if has('heads.bnneck.'):
        if has('heads.bottleneck.'):
            _fail(path, "heads.bottleneck.* next to heads.bnneck.*: fast-reid v0.1's ReductionHead (an embedding "
                        "reduction before the BN-neck) is not supported")
        return 'A'
    if has('heads.bottleneck.1.'):
        _fail(path, 'heads.bottleneck.1.* : an EMBEDDING_DIM reduction head (1x1 conv, then the BN-neck) is not '
                    'supported, only the plain BN-neck (heads.bottleneck.0.* a BatchNorm of the backbone width)')
    if has('heads.bottleneck.0.'):
        if 'heads.weight' in state:
            return 'C'
        if 'heads.classifier.weight' in state or all(k in state for k in _PIXEL):
            return 'B'
        return 'C'
    _fail(path, 'a fast-reid Baseline (backbone.*, heads.*) without a BN-neck: expected heads.bnneck.weight '
                '(fast-reid v0.1) or heads.bottleneck.0.weight (later versions); found heads tensors '
                + ', '.join(sorted(k for k in state if k.startswith('heads.'))[:4]))


def _stage_depths(state):
    depths = []
    for stage in range(1, 5):
        blocks = {int(m[1]) for k in state if (m := re.match(rf'backbone\.layer{stage}\.(\d+)\.', k))}
        depths.append(max(blocks) + 1 if blocks else 0)
    return tuple(depths)


def _non_local(state, path, widths):
    """None, 'one' or 'half' from the non-local blocks' g convs (their inter-channel width)."""
    kinds = set()
    for key, value in state.items():
        match = re.fullmatch(r'backbone\.NL_([1-4])\.\d+\.g\.weight', key)
        if match is None:
            continue
        channels = widths[int(match[1]) - 1]
        if value.ndim != 4 or value.shape[1] != channels:
            _fail(path, f'{key} has shape {tuple(value.shape)}; a non-local block of stage {match[1]} reads '
                        f'{channels} channels')
        if value.shape[0] == 1:
            kinds.add('one')
        elif value.shape[0] == channels // 2:
            kinds.add('half')
        else:
            _fail(path, f'{key} has shape {tuple(value.shape)}: a non-local inter-channel width of {value.shape[0]}; '
                        f'fast-reid used 1 or {channels // 2} (C / 2)')
    if len(kinds) > 1:
        _fail(path, 'non-local blocks of both widths (1 and C / 2): no fast-reid version built those')
    return kinds.pop() if kinds else None


def read_architecture(state, path='fast-reid file'):
    """The architecture of a fast-reid Baseline state dict ('module.' stripped):
    {'era', 'backbone', 'ibn', 'non_local', 'global_pool', 'recipe', 'stem_pool',
    'layer4_dilation', 'notes'}. Raises PretrainedWeightsError naming what is not supported."""
    era = _era(state, path)
    notes = []
    if any('.se.' in k for k in state if k.startswith('backbone.layer')):
        _fail(path, 'squeeze-excitation blocks (backbone.layer*.se.*, WITH_SE): not supported')
    if 'backbone.conv1.0.weight' in state:
        stem = state['backbone.conv1.0.weight']
        if tuple(stem.shape) != (32, 3, 3, 3):
            _fail(path, f'backbone.conv1.0.weight has shape {tuple(stem.shape)}: a ResNeSt deep stem of width '
                        f'{stem.shape[0]} (ResNeSt-101/200/269); only ResNeSt-50 (width 32) is supported')
        backbone = 'resnest50'
        if _stage_depths(state) != (3, 4, 6, 3):
            _fail(path, f'ResNeSt stages of {_stage_depths(state)} blocks: only ResNeSt-50 (3, 4, 6, 3) is supported')
        widths = _STAGE_WIDTHS
    elif 'backbone.conv1.weight' in state and state['backbone.conv1.weight'].shape[-1] == 7:
        bottleneck = 'backbone.layer1.0.conv3.weight' in state
        depths = _stage_depths(state)
        backbone = _RESNET_DEPTHS.get((depths, bottleneck))
        if backbone is None:
            _fail(path, f'a ResNet of {"bottleneck" if bottleneck else "basic"} blocks in stages of {depths}: '
                        f'fast-reid builds 18, 34, 50 and 101 only')
        conv2 = state.get('backbone.layer1.0.conv2.weight')
        if conv2 is not None and conv2.shape[0] != conv2.shape[1]:
            _fail(path, f'backbone.layer1.0.conv2.weight has shape {tuple(conv2.shape)}: grouped 3x3 convs '
                        f'(ResNeXt), not supported')
        widths = _STAGE_WIDTHS if bottleneck else (64, 128, 256, 512)
    else:
        first = next((k for k in state if k.startswith('backbone.')), '?')
        _fail(path, f'a fast-reid backbone other than ResNet and ResNeSt-50 (first tensor {first}): not supported '
                    f'(OSNet, RegNet, MobileNet, ShuffleNet, RepVGG, EfficientNet, ViT backbones are not)')
    ibn = any('.bn1.IN.' in k for k in state if k.startswith('backbone.'))
    non_local = _non_local(state, path, widths)
    if backbone == 'resnest50' and ibn and era == 'C':
        _fail(path, 'backbone.layer*.bn1.IN.*: IBN in an era-C ResNeSt, which fast-reid never builds')

    # the architecture under the names, by era (module docstring)
    before_december = era == 'A' or (era == 'B' and (non_local == 'half' or (backbone == 'resnest50' and non_local)))
    if era == 'C' and backbone == 'resnest50' and non_local:
        _fail(path, "backbone.NL_* in an era-C ResNeSt: fast-reid's ResNeSt has no non-local blocks since "
                    "2020-12-07, so these tensors belong to no model that file's heads come from")
    if era == 'B':
        notes.append('era B (fast-reid 2020-09-10 to 2021-03-23) changed the architecture within itself: '
                     + ('non-local blocks of that kind date it before 2020-12-07' if before_december else
                        'built as fast-reid v1.0 (January 2021)')
                     + '; a file trained with another version of that era may differ in '
                     + ('the stem max-pool' if backbone != 'resnest50' else 'layer4 dilation'))
    stem_pool = None if backbone == 'resnest50' else ('pad' if before_december else 'ceil')
    layer4_dilation = (not before_december) if backbone == 'resnest50' else None

    trained_p = 'heads.pool_layer.p' in state
    if trained_p:
        global_pool, recipe = 'gem', 'SBS'
        if era == 'A':
            notes.append('fast-reid v0.1 trained GeM p in both AGW and SBS, and their files look alike: '
                         'SBS (384x128) chosen; an AGW file tests at 256x128 (--height 256 --width 128)')
    elif non_local and era != 'A':
        global_pool, recipe = 'gem_fixed', 'AGW'
    else:
        global_pool, recipe = 'avg', 'BoT'
        if non_local:
            notes.append('non-local blocks with average pooling: not a published fast-reid recipe; 256x128 chosen')
    return {'era': era, 'backbone': backbone, 'ibn': ibn, 'non_local': non_local, 'global_pool': global_pool,
            'recipe': recipe, 'stem_pool': stem_pool, 'layer4_dilation': layer4_dilation, 'notes': notes}


def _pixel_statistics(state, path):
    """(mean, std) in [0, 1] units from era A/B's pixel_mean / pixel_std buffers (1, 3, 1, 1), given
    on 0-255 input; ImageNet's when absent (era C configs all use it)."""
    if not any(k in state for k in _PIXEL):
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    values = []
    for key in _PIXEL:
        if key not in state:
            _fail(path, f'{key} is missing next to {_PIXEL[1 - _PIXEL.index(key)]}')
        if state[key].numel() != 3:
            _fail(path, f'{key} has shape {tuple(state[key].shape)}; expected 3 values (1, 3, 1, 1)')
        values.append([round(v / 255, 6) for v in state[key].flatten().tolist()])
    return values[0], values[1]


def to_checkpoint(state, info, path):
    """This repo's checkpoint dict of a fast-reid Baseline state dict (see the module docstring):
    backbone.* as they are, the BN-neck -> bottleneck.*, the trained GeM p -> global_pool.p, the
    classifier -> classifier.weight (kept: a teacher's logits; --pretrained-path drops it), the
    pixel_* buffers -> the config's pixel_mean / pixel_std. Strict: anything else raises."""
    arch = read_architecture(state, path)
    neck_prefix, classifier = _HEAD_NAMES[arch['era']]
    out, dropped = {}, {}
    for key, value in state.items():
        if key.startswith('backbone.'):
            out[key] = value
        elif key.startswith(neck_prefix) and key[len(neck_prefix):] in (*_NECK_TENSORS, 'num_batches_tracked'):
            out['bottleneck.' + key[len(neck_prefix):]] = value
        elif key == classifier:
            out['classifier.weight'] = value
        elif key == 'heads.pool_layer.p':
            if value.numel() != 1:
                _fail(path, f'heads.pool_layer.p has shape {tuple(value.shape)}; expected (1,)')
            out['global_pool.p'] = value.reshape(())
        elif key in _PIXEL and arch['era'] != 'C':
            dropped.setdefault('normalisation (the model input is normalised outside)', []).append(key)
        else:
            _fail(path, f'unexpected tensor {key!r} in a fast-reid era-{arch["era"]} Baseline '
                        f'({arch["backbone"]}): expected backbone.*, {neck_prefix}*, {classifier}'
                        + (', heads.pool_layer.p' if arch['global_pool'] == 'gem' else '')
                        + (', pixel_mean, pixel_std' if arch['era'] != 'C' else ''))
    missing = [neck_prefix + name for name in _NECK_TENSORS if neck_prefix + name not in state]
    if missing:
        _fail(path, f'the BN-neck is incomplete: {", ".join(missing)} missing (fast-reid would run it as an '
                    f'identity)')
    feat_dim = 512 if arch['backbone'] in ('resnet18', 'resnet34') else 2048
    for name in _NECK_TENSORS:
        if tuple(state[neck_prefix + name].shape) != (feat_dim,):
            _fail(path, f'{neck_prefix}{name} has shape {tuple(state[neck_prefix + name].shape)}; the BN-neck of '
                        f'{arch["backbone"]} has {feat_dim} channels')
    if classifier in state and (state[classifier].ndim != 2 or state[classifier].shape[1] != feat_dim):
        _fail(path, f'{classifier} has shape {tuple(state[classifier].shape)}; expected (identities, {feat_dim})')
    mean, std = _pixel_statistics(state, path)
    height, width = _RECIPE_SIZES[arch['recipe']]
    options = {'backbone': arch['backbone'], 'ibn': arch['ibn'], 'non_local': arch['non_local']}
    if arch['stem_pool'] is not None:
        options['stem_pool'] = arch['stem_pool']
    if arch['layer4_dilation'] is not None:
        options['layer4_dilation'] = arch['layer4_dilation']
    described = (f'{arch["backbone"]}' + ('-IBN-a' if arch['ibn'] else '')
                 + (f', non-local (width {"1" if arch["non_local"] == "one" else "C/2"})' if arch['non_local'] else '')
                 + f', {arch["global_pool"]} pooling')
    return {
        'state_dict': out,
        'model': {'arch': ARCH, 'arch_options': options, 'last_stride': 1, 'neck': 'bnneck', 'neck_feat': 'after',
                  'dist_metric': 'cosine', 'global_pool': arch['global_pool'], 'height': height, 'width': width,
                  'resize_mode': 'pil-bicubic', 'pixel_mean': mean, 'pixel_std': std},
        'source': f'fast-reid era {arch["era"]} Baseline, {described} ({arch["recipe"]} recipe: '
                  f'{height}x{width}, PIL bicubic; --height/--width override)',
        'notes': arch['notes'],
        'dropped': dropped,
    }


register_source('fast-reid Baseline', recognise, to_checkpoint)
