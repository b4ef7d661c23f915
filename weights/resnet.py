"""ResNet50 files: torchvision / timm ImageNet, LUPerson MoCo-v2 (Fu et al., CVPR 2021: flat
torchvision names, or the MoCo training checkpoint `state_dict` -> `module.encoder_q.*`, key
encoder, queue and MLP head dropped) and IBN-Net ResNet50-IBN-a (Pan et al., ECCV 2018:
`layerX.Y.bn1.IN.*` / `bn1.BN.*`)."""
import os

from .core import PretrainedWeightsError

__all__ = ['LUPERSON_MEAN', 'LUPERSON_STD', 'convert_resnet']

LUPERSON_MEAN = [0.3525, 0.3106, 0.3140]  # fast-reid LUPerson configs: PIXEL_MEAN [89.896, 79.200, 80.073] / 255
LUPERSON_STD = [0.2505, 0.2522, 0.2503]  # PIXEL_STD [63.872, 64.305, 63.839] / 255


def _split_moco(state, report):
    """LUPerson MoCo training checkpoint -> flat torchvision names of the query encoder."""
    if not any(k.startswith('encoder_q.') for k in state):
        return state, False
    report.drop('MoCo key encoder', [k for k in state if k.startswith('encoder_k.')])
    report.drop('MoCo queue', [k for k in state if k.startswith('queue')])
    report.drop('MoCo projection head', [k for k in state if k.startswith('encoder_q.fc.')])
    known = ('encoder_q.', 'encoder_k.', 'queue')
    other = [k for k in state if not k.startswith(known)]
    if other:
        raise PretrainedWeightsError(f'{report.path}: unexpected tensor {other[0]!r} in a MoCo checkpoint')
    return {k.removeprefix('encoder_q.'): v for k, v in state.items()
            if k.startswith('encoder_q.') and not k.startswith('encoder_q.fc.')}, True


def convert_resnet(state, model, report, grid=None):
    """torchvision / LUPerson / IBN-Net ResNet50 files -> the model's trunk (torchvision names
    for resnet50_ibn_a's `backbone`; the 2018 nn.Sequential indices `0..7` for resnet50 and
    resnet50m's `base`)."""
    state, moco = _split_moco(state, report)
    report.drop('ImageNet classifier', [k for k in state if k.startswith('fc.')])
    state = {k: v for k, v in state.items() if not k.startswith('fc.')}
    has_ibn = any('.bn1.IN.' in k for k in state)
    wants_ibn = type(model).__name__ == 'ResNet50IBNa'
    if has_ibn != wants_ibn:
        raise PretrainedWeightsError(
            f'{report.path} is a ResNet50-IBN-a file (tensors such as layer1.0.bn1.IN.weight): use -a resnet50_ibn_a'
            if has_ibn else f'{report.path} is a plain ResNet50 file: use -a resnet50, or an IBN-Net file for '
                            f'-a resnet50_ibn_a')
    name = os.path.basename(report.path).lower()
    if moco or 'lup' in name:
        report.source = 'LUPerson MoCo-v2 ResNet50' + (' (MoCo training checkpoint, query encoder)' if moco else '')
        report.person_pretrained = True
        report.pixel_mean, report.pixel_std = list(LUPERSON_MEAN), list(LUPERSON_STD)
        if not moco:
            report.notes.append("LUPerson's pixel mean/std chosen from the file name ('lup'); "
                                "override with --pixel-mean/--pixel-std")
    else:
        report.source = 'IBN-Net ResNet50-IBN-a (ImageNet)' if has_ibn else 'torchvision / timm ResNet50 (ImageNet)'
    if wants_ibn:
        return state, {}
    stage = {'conv1': '0', 'bn1': '1', 'layer1': '4', 'layer2': '5', 'layer3': '6', 'layer4': '7'}
    renamed = {}
    for key, value in state.items():
        head, _, rest = key.partition('.')
        if head not in stage:
            raise PretrainedWeightsError(f'{report.path}: unexpected tensor {key!r} for a ResNet50')
        renamed[f'{stage[head]}.{rest}'] = value
    return renamed, {}
