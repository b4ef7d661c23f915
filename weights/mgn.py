"""fast-reid MGN files (its model zoo's `market_mgn_R50-ibn.pth` and `duke_mgn_R50-ibn.pth`, and MGN files
trained with any later fast-reid) -> this repo's checkpoint of models.mgn's MGN (`-a fastreid_mgn`).

An MGN file is `{'model': state_dict, ...}` like every fast-reid file (with or without `module.`). Its
tensors: `backbone.0-6.*` (stem, layer1, layer2 and layer3[0] of a ResNet-50/101, IBN-a or plain), `b1.*`,
`b2.*`, `b3.*` (each branch's copy of layer3[1:] and layer4), and eight heads h in b1, b2, b21, b22, b3,
b31, b32, b33, whose layout gives the era (fast-reid's `meta_arch/mgn.py` and heads):
  A  v0.1 (until 2020-09-01; the zoo files): `{h}_pool.0.p` (GeM-p, ONE module shared by the eight
     heads), `{h}_pool.1.weight` (1x1 conv to 256), `{h}_pool.2.*` (BN, then a ReLU), the BN-neck
     `{h}_head.bnneck.*`, the classifier `{h}_head.classifier.weight`; `pixel_mean` / `pixel_std`.
  B  2020-09-01 to 2021-03-23: `{h}_head.pool_layer.p`, `{h}_head.bottleneck.0.weight` (the 1x1 conv,
     nothing between it and the BN-neck), the BN-neck `{h}_head.bottleneck.1.*`,
     `{h}_head.classifier.weight`; `pixel_*`.
  C  v1.2+ (PyPI fastreid 1.4.0): as B with the classifier named `{h}_head.weight` and no `pixel_*`.
The stem max-pool follows the era as for fast-reid's Baselines: padded in era A, ceil_mode in era C, and
era B, whose code changed it on 2020-11-06, is built as fast-reid v1.0 (with a note). The heads' width
(EMBEDDING_DIM, 256 in every fast-reid config) is read from the tensors and must agree across the heads.
The eight BN-necks become the model's `bottleneck`, concatenated in fast-reid's test order (models.mgn);
the eight classifiers are dropped (models.mgn has one classifier over the whole feature).

What the file does not record: the input size (fast-reid's MGN configs test at 384x128) and the resize
(PIL bicubic), both recorded in the checkpoint and printed; --height/--width override. Heads without a
trained p pooled otherwise: max pooling in era B (fast-reid's MGN config of 2020-09-01 to 09-10), average
in eras A and C (no published MGN config), with a note.

Strict: a tensor of no known part, a head's missing part (a BN-neck tensor, a reduction, a p) or a width
other than the heads' raises PretrainedWeightsError naming the tensor; the trunk's tensors keep their
names, so the model's strict load names a stray or misshapen one.
"""
import re

import torch

from .core import register_source

# The Baseline converter's pieces MGN files share: the error, the BN-neck's tensors, eras A and B's
# normalisation buffers.
from .fastreid import _NECK_TENSORS, _PIXEL, _fail, _pixel_statistics

__all__ = ['ARCH', 'FEATURE_ORDER', 'recognise', 'to_checkpoint']

ARCH = 'fastreid_mgn'
FEATURE_ORDER = ('b1', 'b2', 'b3', 'b21', 'b22', 'b31', 'b32', 'b33')  # fast-reid's torch.cat at test time
_DEPTHS = {5: 'resnet50', 22: 'resnet101'}  # layer3 blocks of a branch (layer3[1:]) -> the ResNet
_TRUNK = re.compile(r'(backbone\.[0-6]|b[123]\.[01])\.')
# era -> a head's file names: GeM p, the 1x1 reduction conv, the BN after it (era A), BN-neck, classifier
_HEAD_NAMES = {
    'A': ('{h}_pool.0.p', '{h}_pool.1.weight', '{h}_pool.2.', '{h}_head.bnneck.', '{h}_head.classifier.weight'),
    'B': ('{h}_head.pool_layer.p', '{h}_head.bottleneck.0.weight', None, '{h}_head.bottleneck.1.',
          '{h}_head.classifier.weight'),
    'C': ('{h}_head.pool_layer.p', '{h}_head.bottleneck.0.weight', None, '{h}_head.bottleneck.1.', '{h}_head.weight'),
}


def recognise(state_dict):
    """{'era': 'A' | 'B' | 'C'} when the flat state dict is a fast-reid MGN's (heads `b1_head.*` beside
    branches `b1.*`), else None."""
    if not any(k.startswith('b1_head.') for k in state_dict) or not any(k.startswith('b1.') for k in state_dict):
        return None
    if any(k.startswith('b1_pool.') for k in state_dict):
        return {'era': 'A'}
    if 'b1_head.weight' not in state_dict and ('b1_head.classifier.weight' in state_dict or 'pixel_mean' in state_dict):
        return {'era': 'B'}
    return {'era': 'C'}


def _backbone(state, path):
    blocks = {int(m[1]) for k in state if (m := re.match(r'b1\.0\.(\d+)\.', k))}
    count = max(blocks) + 1 if blocks else 0
    if count not in _DEPTHS:
        _fail(path, f"b1.0 holds {count} layer3 blocks; fast-reid's MGN has 5 (ResNet-50) or 22 (ResNet-101)")
    return _DEPTHS[count]


def _take(state, name, shape, path, why):
    """state[name], which must exist and have `shape` (a tuple); `why` explains the expected shape."""
    if name not in state:
        _fail(path, f'{name} is missing ({why})')
    if tuple(state[name].shape) != shape:
        _fail(path, f'{name} has shape {tuple(state[name].shape)}; expected {shape} ({why})')
    return state[name]


def _heads(state, era, path):
    """(this repo's head tensors, the file names they came from, the classifiers, width, pool kind, shared
    pool) of the eight heads."""
    p_name, conv_name, bn_prefix, neck_prefix, classifier_name = _HEAD_NAMES[era]
    first_conv = state.get(conv_name.format(h='b1'))
    if first_conv is None or first_conv.ndim != 4:
        _fail(path, f'{conv_name.format(h="b1")} is missing or not a conv weight: expected the 1x1 reduction conv '
                    f'(width, 2048, 1, 1) of head b1')
    width = first_conv.shape[0]
    why = f'the heads are {width} wide, as {conv_name.format(h="b1")}'
    trained_p = p_name.format(h='b1') in state
    out, used, classifiers, necks = {}, set(), [], {leaf: [] for leaf in (*_NECK_TENSORS, 'num_batches_tracked')}

    def take(name, shape, reason, target=None):
        used.add(name)
        value = _take(state, name, shape, path, reason)
        if target:
            out[target] = value
        return value

    for h in FEATURE_ORDER:
        take(conv_name.format(h=h), (width, 2048, 1, 1), why, f'heads.{h}.conv.weight')
        if trained_p:
            out[f'heads.{h}.pool.p'] = take(p_name.format(h=h), (1,), 'GeM p, as in head b1').reshape(())
        for leaf in _NECK_TENSORS:
            if bn_prefix:
                take(bn_prefix.format(h=h) + leaf, (width,), why, f'heads.{h}.bn.{leaf}')
            necks[leaf].append(take(neck_prefix.format(h=h) + leaf, (width,),
                                    f'the BN-neck of head {h}; fast-reid would run a missing one as an identity'))
        for prefix, target in ((bn_prefix, f'heads.{h}.bn.num_batches_tracked'), (neck_prefix, None)):
            if prefix and prefix.format(h=h) + 'num_batches_tracked' in state:  # old PyTorch did not save it
                counter = take(prefix.format(h=h) + 'num_batches_tracked', (), 'a counter', target)
                necks['num_batches_tracked'] += [counter] if prefix == neck_prefix else []
        classifier = classifier_name.format(h=h)
        if classifier in state:
            if state[classifier].ndim != 2 or state[classifier].shape[1] != width:
                _fail(path, f'{classifier} has shape {tuple(state[classifier].shape)}; expected (identities, {width})')
            classifiers.append(classifier)
    out.update({f'bottleneck.{leaf}': torch.cat(necks[leaf]) for leaf in _NECK_TENSORS})
    if necks['num_batches_tracked']:
        out['bottleneck.num_batches_tracked'] = necks['num_batches_tracked'][0]
    shared = era == 'A' and trained_p
    if shared:  # fast-reid v0.1 passed one GeM module to all eight heads
        first = p_name.format(h='b1')
        different = next((p_name.format(h=h) for h in FEATURE_ORDER
                          if not torch.equal(state[p_name.format(h=h)], state[first])), None)
        if different:
            _fail(path, f'{different} = {state[different].item():.4g} differs from {first} = {state[first].item():.4g}: '
                        f'fast-reid v0.1 shares one GeM module among the eight heads')
    pool = 'gem' if trained_p else ('max' if era == 'B' else 'avg')
    return out, used | set(classifiers), classifiers, width, pool, shared


def to_checkpoint(state, info, path):
    """This repo's checkpoint dict of a fast-reid MGN state dict (see the module docstring)."""
    era = info['era']
    backbone = _backbone(state, path)
    out, used, classifiers, width, pool, shared = _heads(state, era, path)
    dropped = {"classifier (fast-reid's eight per-head classifiers)": classifiers} if classifiers else {}
    for key, value in state.items():
        if key in used:
            continue
        if _TRUNK.match(key):
            out[key] = value
        elif key in _PIXEL and era != 'C':
            dropped.setdefault('normalisation (the model input is normalised outside)', []).append(key)
        else:
            heads = ', '.join(n.format(h='{h}') + ('*' if n.endswith('.') else '') for n in _HEAD_NAMES[era] if n)
            _fail(path, f'unexpected tensor {key!r} in a fast-reid era-{era} MGN: expected backbone.0-6.*, '
                        f'b1/b2/b3.0-1.* and per head {heads}' + (', and pixel_mean, pixel_std' if era != 'C' else ''))
    mean, std = _pixel_statistics(state, path)
    ibn = 'backbone.4.0.bn1.IN.weight' in state
    notes = []
    if era == 'B':
        notes.append('era B (fast-reid 2020-09-01 to 2021-03-23) changed the stem max-pool on 2020-11-06: built as '
                     'fast-reid v1.0 (ceil_mode); a file trained before that date had the padded one')
    if pool != 'gem':
        notes.append(f'the heads have no trained GeM p: {pool} pooling assumed ('
                     + ("fast-reid's MGN config of 2020-09-01 to 09-10" if era == 'B' else 'no published MGN config')
                     + ')')
    described = f'{backbone}' + ('-IBN-a' if ibn else '') + f', 8 heads of {width}, {pool} pooling'
    return {
        'state_dict': out,
        'model': {'arch': ARCH, 'arch_options': {'backbone': backbone, 'ibn': ibn,
                                                 'stem_pool': 'pad' if era == 'A' else 'ceil',
                                                 'head': 'bn_relu' if era == 'A' else 'conv',
                                                 'embedding_dim': width, 'shared_pool': shared},
                  'neck': 'bnneck', 'neck_feat': 'after', 'dist_metric': 'cosine', 'global_pool': pool,
                  'height': 384, 'width': 128, 'resize_mode': 'pil-bicubic', 'pixel_mean': mean, 'pixel_std': std},
        'source': f'fast-reid era {era} MGN, {described} (384x128, PIL bicubic; --height/--width override)',
        'notes': notes,
        'dropped': dropped,
    }


register_source('fast-reid MGN', recognise, to_checkpoint)
