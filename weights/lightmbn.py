"""LightMBN `LMBN_n` trained files (jixunbo/LightMBN; BoxMOT re-hosts them as
`lmbn_n_{market,duke,cuhk03_d}.pt`): a bare state dict (LightMBN's `model-best.pth`) or one under
`state_dict` (`model-latest.pth`), the shared trunk as `backone.*` (LightMBN's spelling) or
`backbone.*` (BoxMOT's renaming).

The model (models.lightmbn) has LightMBN's tree, so the file converts by name: `backone.` becomes
`backbone.`, the seven identity classifiers (`reduction_{0-4}.classifier.weight`,
`reduction_ch_{0,1}.classifier.weight`) are dropped, everything else is kept and loaded strictly
(model_config.from_checkpoint names any stray, missing or misshapen tensor). The config is
LightMBN's evaluation: 384x128, ImageNet normalisation, PIL resize, cosine distance, and its own
test feature (flip, each of the 7 parts L2-normalised): arch_options {'test_feature': 'lightmbn'};
{'test_feature': 'boxmot'} gives the flat single-pass feature BoxMOT computes.
"""
from transforms import IMAGENET_MEAN, IMAGENET_STD

from .core import PretrainedWeightsError, register_source

__all__ = ['recognise', 'to_checkpoint', 'LIGHTMBN_MODULES']

# LMBN_n's top-level modules (after `backone` -> `backbone`); a tensor outside them is refused here
LIGHTMBN_MODULES = ('backbone', 'global_branch', 'partial_branch', 'channel_branch', 'batch_drop_block', 'shared',
                    *(f'reduction_{i}' for i in range(5)), 'reduction_ch_0', 'reduction_ch_1')
_TRUNK_SPELLINGS = ('backone', 'backbone')
_PART_DIM = 512  # the osnet_x1_0 LMBN_n of the published files; other OSNet widths are not supported


def recognise(state_dict):
    """The trunk's spelling ('backone' or 'backbone') of a LightMBN LMBN_n state dict, or None."""
    if 'reduction_ch_0.bn.weight' not in state_dict or \
            'batch_drop_block.drop_batch_bottleneck.conv1.conv.weight' not in state_dict:
        return None
    return next((name for name in _TRUNK_SPELLINGS if f'{name}.0.conv.weight' in state_dict), None)


def to_checkpoint(state_dict, trunk, path):
    classifiers = sorted(k for k in state_dict if k.startswith('reduction_') and '.classifier.' in k)
    state = {}
    for key, value in state_dict.items():
        if key in classifiers:
            continue
        name = 'backbone.' + key.removeprefix(trunk + '.') if key.startswith(trunk + '.') else key
        if name.split('.', 1)[0] not in LIGHTMBN_MODULES:
            raise PretrainedWeightsError(f'{path}: unexpected tensor {key!r} in a LightMBN LMBN_n file (its modules: '
                                         f'{", ".join(LIGHTMBN_MODULES)}; the trunk spelt {trunk!r})')
        state[name] = value
    reduction = state.get('reduction_0.reduction.weight')
    if reduction is None or tuple(reduction.shape) != (_PART_DIM, _PART_DIM, 1, 1):
        found = 'missing' if reduction is None else f'of shape {tuple(reduction.shape)}'
        raise PretrainedWeightsError(f'{path}: reduction_0.reduction.weight is {found}; LMBN_n on osnet_x1_0 has '
                                     f'({_PART_DIM}, {_PART_DIM}, 1, 1) (other OSNet widths are not supported)')
    config = {'arch': 'lmbn_n', 'arch_options': {'test_feature': 'lightmbn'}, 'neck': 'none',
              'dist_metric': 'cosine', 'height': 384, 'width': 128, 'resize_mode': 'pil',
              'pixel_mean': list(IMAGENET_MEAN), 'pixel_std': list(IMAGENET_STD)}
    return {'state_dict': state, 'model': config, 'dropped': {'classifier': classifiers} if classifiers else {},
            'source': f'LightMBN lmbn_n file (trunk as {trunk!r}; test feature: LightMBN\'s flip and per-part L2)'}


register_source('LightMBN', recognise, to_checkpoint)
