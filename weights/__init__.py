"""Third-party weights -> this repo's models: pretrained weights (`--pretrained-path FILE`) and
other projects' trained re-ID files as checkpoints.

load_pretrained(model, path) reads the file (nothing is downloaded), recognises its source from
its wrappers and tensor names, converts it to the model's names, loads it strictly and returns
a LoadReport: how many tensors were loaded, which were dropped and why (by kind, from an
explicit list per source), which position table was resampled from which grid to which, and
the pixel mean and std the weights were trained with (the preprocessing that travels with them).
An unexpected tensor, a missing one, or a shape that cannot be made to fit is an error naming
the tensor: nothing is dropped silently.

One module per source family, on one shared core (core.py: reading, unwrapping, the strict load
and its error wording, the report, the registry of trained-file sources):
- resnet.py: torchvision / timm ImageNet ResNet50, LUPerson MoCo-v2, IBN-Net ResNet50-IBN-a;
- vit.py: timm / DeiT / DINO ViTs, TransReID-SSL and PersonViT (LUPerson), TransReID trained
  checkpoints (`base.*`, camera embedding, stride 12, JPM); grid.py: their position tables;
- clip.py: OpenAI CLIP ViT-B/16 (state dict or TorchScript archive), CLIP-ReID's `image_encoder.*`;
- swin.py: SOLIDER Swin-T/S/B (mmcv names), timm / Microsoft Swin;
- clipreid.py: CLIP-ReID's trained ViT-B-16 files whole (BN-necks, projection), a trained-file source;
- torchreid.py: torchreid's OSNet and OSNet-AIN files (ImageNet and re-ID zoo) and its re-ID zoo's
  resnet50, resnet50_fc512, mlfn, hacnn, mobilenetv2_x1_0 / x1_4 files;
- lightmbn.py: LightMBN lmbn_n trained files (`backone.` or BoxMOT's `backbone.`);
- timm_net.py: any timm file for `-a timm:<name>`;
- fastreid.py: fast-reid's Baseline files of its three eras (model zoo, trackers' re-ID files),
  a trained-file source;
- mgn.py: fast-reid's MGN files of its three eras (both head layouts), a trained-file source.

Trained re-ID files of other projects as checkpoints: checkpoints.load_checkpoint passes every
file's object to adapt_checkpoint(checkpoint, path), which tries each registered source in turn
and returns this repo's checkpoint dict (or the object unchanged when no source recognises it, a
checkpoint of this repo included). A source module plugs in with three things:

    def recognise(state_dict):        # flat {name: tensor}, 'module.' stripped, from the file's
        ...                           # top level, 'model' (fast-reid) or 'state_dict' entry
        return info or None           # from tensor NAMES AND SHAPES, never the file name; not
                                      # None once the file looks like this source
    def to_checkpoint(state_dict, info, path):
        return {'state_dict': {...this repo's names...},
                'model': {'arch': ..., 'arch_options': {...}, 'height': ..., 'width': ...,
                          'resize_mode': ..., 'pixel_mean': [...], 'pixel_std': [...],
                          'dist_metric': ..., 'neck': ..., ...},   # model_config.CONFIG_DEFAULTS keys;
                                                                   # those left out take its defaults
                'source': 'what was recognised (era, architecture)',
                'dropped': {'kind': [source tensor names], ...}}
    register_source('name', recognise, to_checkpoint)   # at the module's end (core.register_source)

and its name in the `from . import ...` line below (importing it registers its source). Once a
file looks like the source, to_checkpoint is strict: a stray, missing or misshapen tensor (a
missing BN-neck, another width) raises PretrainedWeightsError naming it and what was expected
(load_strict words it so for a model's own state dict). Source modules import nothing of
`models` (models imports this package); they name tensors and options, model_config.from_checkpoint
builds the model. The same files start fine-tuning with `--pretrained-path FILE` on a model of a
family with no converter below (FAMILIES): load_pretrained then loads the source's checkpoint,
less its classifier, strictly into the model.
"""
import torch

from . import clipreid, fastreid, lightmbn, mgn, torchreid  # noqa: F401 (importing a source module registers it)
from .clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, convert_clip, convert_openai_clip_visual
from .core import (
    HALF,
    LoadReport,
    PretrainedWeightsError,
    adapt_checkpoint,
    describe_adapted,
    load_strict,
    read_weights,
    register_source,
    report_of_adapted,
    trained_sources,
    unwrap,
)
from .grid import parse_grid, resample_position_table, source_grid
from .resnet import LUPERSON_MEAN, LUPERSON_STD, convert_resnet
from .swin import convert_solider_swin, convert_swin, patch_merging_mmcv_to_timm
from .timm_net import convert_timm
from .torchreid import convert_osnet, torchreid_arch, torchreid_osnet_arch
from .vit import convert_vit

__all__ = ['load_pretrained', 'trained_file_checkpoint', 'adapt_checkpoint', 'describe_adapted', 'register_source',
           'trained_sources', 'torchreid_osnet_arch', 'torchreid_arch', 'LoadReport', 'PretrainedWeightsError',
           'read_weights', 'unwrap', 'load_strict',
           'resample_position_table', 'source_grid', 'parse_grid', 'convert_openai_clip_visual',
           'convert_solider_swin', 'patch_merging_mmcv_to_timm', 'LUPERSON_MEAN', 'LUPERSON_STD', 'HALF',
           'OPENAI_CLIP_MEAN', 'OPENAI_CLIP_STD']


def _family(model):
    """(converter, the module it loads into) of a model's pretrained files, or None for a family
    whose pretrained files are the trained files of a registered source."""
    kind = type(model).__name__
    if kind in ('ResNet50', 'ResNet50M', 'ResNet50IBNa'):
        return convert_resnet, (model.base if hasattr(model, 'base') else model.backbone)
    if kind == 'VisionTransformer':
        return (convert_clip if model.camera_tokens == 'cls' else convert_vit), model.backbone
    if kind == 'SwinTransformer':
        return convert_swin, model.backbone
    if kind == 'TimmNet':
        return convert_timm, model.backbone
    if kind in ('OSNet', 'OSNetAIN'):
        return convert_osnet, model.backbone
    return None


def load_pretrained(model, path, grid=None):
    """Load a pretrained file into `model` (see the module docstring); returns a LoadReport.
    grid: (rows, columns) of the file's position table when it cannot be recognised."""
    report = LoadReport(path=path, source='?')
    obj = read_weights(path)
    family = _family(model)
    if family is None:
        return _load_trained(model, obj, report)
    state, report.wrappers = unwrap(obj, report)
    convert, trunk = family
    state, extras = convert(state, model, report, grid)
    report.loaded = load_strict(trunk, state, path)
    with torch.no_grad():
        for name, value in extras.items():
            target = getattr(model, name)
            if target.shape != value.shape:
                raise PretrainedWeightsError(f'{path}: {name} has shape {tuple(value.shape)}, the model '
                                             f'{tuple(target.shape)}')
            target.copy_(value)
            report.loaded += 1
    return report


def trained_file_checkpoint(path):
    """The checkpoint dict (adapt_checkpoint) of a weights file that is a trained re-ID file of a
    registered source, or None for any other weights file (ImageNet, self-supervised, ...): what
    fine-tuning from it (--pretrained-path) takes its architecture and preprocessing from."""
    checkpoint = adapt_checkpoint(read_weights(path), path)
    return checkpoint if isinstance(checkpoint, dict) and 'source' in checkpoint else None


def _load_trained(model, obj, report):
    """A trained re-ID file of a registered source as the start of fine-tuning: its checkpoint
    (adapt_checkpoint) loaded strictly into `model`, less its classifier (the new data has other
    identities), with the source's preprocessing."""
    checkpoint = adapt_checkpoint(obj, report.path)
    if not isinstance(checkpoint, dict) or 'source' not in checkpoint:
        raise PretrainedWeightsError(f'{report.path}: no converter of pretrained weights for '
                                     f'{type(model).__name__}, and the file is no trained file of a known source '
                                     f'({", ".join(source.name for source in trained_sources())})')
    report = report_of_adapted(checkpoint, report.path)
    classifier = [k for k in checkpoint['state_dict'] if k.startswith('classifier.')]
    report.drop('classifier', classifier)
    state = {k: v for k, v in checkpoint['state_dict'].items() if k not in classifier}
    report.loaded = load_strict(model, state, report.path, skip=('classifier.',))
    report.person_pretrained = True
    return report
