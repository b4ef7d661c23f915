"""The shared core of reading third-party weights: the file (read_weights), its wrappers (unwrap),
the strict load with its error wording (load_strict), the report of what was loaded and dropped
(LoadReport), the errors, and the registry of trained-file sources (register_source,
adapt_checkpoint; see weights/__init__.py for how a source module plugs in).

Nothing here knows a model family: each source module (weights/resnet.py, vit.py, clip.py, ...)
converts its files' names to a model's and calls back into this core. The package imports
nothing of `models` (models imports it: init_model loads pretrained weights through it), so the
errors of reading weights are defined here.
"""
import argparse
import contextlib
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np
import torch

from transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ['PretrainedWeightsError', 'LoadReport', 'read_weights', 'unwrap', 'load_strict', 'put',
           'TrainedSource', 'register_source', 'trained_sources', 'trained_state_dict', 'adapt_checkpoint',
           'describe_adapted', 'report_of_adapted', 'HALF', 'WRAPPERS']


class PretrainedWeightsError(RuntimeError):
    """A weights file cannot be used: unreadable, of no known layout, or not fitting the model."""


HALF = [0.5, 0.5, 0.5]
WRAPPERS = ('teacher', 'model', 'state_dict', 'module', 'target_encoder')


@dataclass
class LoadReport:
    """What load_pretrained did, printed by the scripts."""
    path: str
    source: str
    loaded: int = 0
    dropped: dict = field(default_factory=dict)  # kind -> source tensor names
    resampled: list = field(default_factory=list)  # sentences: 'pos_embed 14x14 -> 16x8'
    pixel_mean: list = field(default_factory=lambda: list(IMAGENET_MEAN))
    pixel_std: list = field(default_factory=lambda: list(IMAGENET_STD))
    notes: list = field(default_factory=list)
    wrappers: list = field(default_factory=list)  # the wrapper keys the state dict sat under
    person_pretrained: bool = False  # decides --recipe vit's learning rate

    def __str__(self):
        lines = [f'Pretrained weights {self.path}: {self.source}',
                 f'  loaded {self.loaded} tensors']
        for kind, names in sorted(self.dropped.items()):
            shown = ', '.join(names[:3]) + (f', ... ({len(names)} in all)' if len(names) > 3 else '')
            lines.append(f'  dropped {len(names)} ({kind}): {shown}')
        lines += [f'  resampled {line}' for line in self.resampled]
        lines.append(f'  pixel mean {fmt(self.pixel_mean)}, std {fmt(self.pixel_std)}')
        lines += [f'  note: {line}' for line in self.notes]
        return '\n'.join(lines)

    def drop(self, kind, names):
        """Record source tensors left out on purpose, by kind ('classifier', 'text encoder', ...)."""
        names = sorted(names)
        if names:
            self.dropped.setdefault(kind, []).extend(names)


def fmt(values):
    return '(' + ', '.join(f'{v:.4g}' for v in values) + ')'


# ----------------------------------------------------------------------------------------------
# Reading and unwrapping

_SAFE_GLOBALS = [np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32)), argparse.Namespace]
with contextlib.suppress(ImportError):
    from numpy._core.multiarray import scalar as _numpy_scalar
    _SAFE_GLOBALS.append(_numpy_scalar)


def read_weights(path):
    """The object in a weights file, loaded without running code: torch.load(weights_only) with
    numpy scalars and argparse.Namespace (the `args` of DINO and MoCo checkpoints) allowed, or
    the tensors of a TorchScript archive (OpenAI's CLIP files)."""
    if not os.path.isfile(path):
        raise PretrainedWeightsError(f'--pretrained-path {path}: no such file')
    if zipfile.is_zipfile(path) and any(n.endswith('/constants.pkl') for n in zipfile.ZipFile(path).namelist()):
        return dict(torch.jit.load(path, map_location='cpu').state_dict())  # TorchScript: tensors only
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location='cpu', weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise PretrainedWeightsError(f'cannot read --pretrained-path {path}: not a PyTorch weights file, or one '
                                     f'that would run code when loaded ({str(error).splitlines()[0]})') from error


def unwrap(obj, report):
    """(flat state dict, wrappers) from a file's object: descend through the wrapper keys of
    the sources above ('teacher', 'model', 'state_dict', 'module', 'target_encoder'), strip
    'module.' prefixes; inside a DINO 'teacher', keep 'backbone.*' (prefix stripped) and drop
    the DINO projection head."""
    wrappers = []
    while isinstance(obj, dict) and not all(torch.is_tensor(v) for v in obj.values()):
        key = next((k for k in WRAPPERS if isinstance(obj.get(k), dict)), None)
        if key is None:
            break
        wrappers.append(key)
        obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise PretrainedWeightsError(f'{report.path} holds no state dict (found {type(obj).__name__})')
    state = {}
    for key, value in obj.items():
        if not torch.is_tensor(value):
            raise PretrainedWeightsError(f'{report.path}: entry {key!r} of its state dict is a {type(value).__name__}, '
                                         f'not a tensor: not a weights file of a known layout')
        state[key.removeprefix('module.')] = value
    if 'teacher' in wrappers:
        report.drop('DINO projection head', [k for k in state if k.startswith('head.')])
        other = [k for k in state if not k.startswith(('backbone.', 'head.'))]
        if other:
            raise PretrainedWeightsError(f'{report.path}: unexpected tensor {other[0]!r} in the DINO teacher '
                                         f'(expected backbone.* and head.*)')
        state = {k.removeprefix('backbone.'): v for k, v in state.items() if k.startswith('backbone.')}
    return state, wrappers


def load_strict(module, state, path, skip=()):
    """load_state_dict(strict) with an error that names the tensors that do not fit. skip: name
    prefixes of the module's own tensors that the file need not hold (a new classifier)."""
    own = {k: v for k, v in module.state_dict().items() if not k.startswith(tuple(skip))}
    missing = [k for k in own if k not in state and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state if k not in own]
    wrong = [f'{k} {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model'
             for k, v in state.items() if k in own and v.shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f'{len(wrong)} of another shape (e.g. {wrong[0]}; another model width?)')
        if missing:
            parts.append(f'{len(missing)} missing (e.g. {", ".join(missing[:3])})')
        if unexpected:
            parts.append(f'{len(unexpected)} unexpected (e.g. {", ".join(unexpected[:3])})')
        raise PretrainedWeightsError(f'{path} does not fit the model: ' + '; '.join(parts))
    module.load_state_dict(state, strict=False)  # num_batches_tracked may be absent in old files
    return len(state)


def put(out, name, value, source_key):
    """out[name] = value, refusing a second source tensor for the same name."""
    if name in out:
        raise ValueError(f'duplicate target {name!r} (second source key {source_key!r})')
    out[name] = value



# ----------------------------------------------------------------------------------------------
# Trained re-ID files of other projects as this repo's checkpoints


class TrainedSource(NamedTuple):
    """A project whose trained re-ID files become checkpoints here (weights/__init__.py says how
    a source module provides and registers one)."""
    name: str
    recognise: Callable  # (state_dict) -> info or None
    to_checkpoint: Callable  # (state_dict, info, path) -> this repo's checkpoint dict


_SOURCES = []


def register_source(name, recognise, to_checkpoint):
    """Add a trained-file source; adapt_checkpoint tries them in the order registered."""
    if any(source.name == name for source in _SOURCES):
        raise ValueError(f'trained-file source {name!r} is registered twice')
    _SOURCES.append(TrainedSource(name, recognise, to_checkpoint))


def trained_sources():
    return list(_SOURCES)


def _is_repo_checkpoint(checkpoint):
    """A checkpoint of this repo: a 'state_dict' beside a 'model' config of plain values (fast-reid
    keeps its tensors under 'model')."""
    config = checkpoint.get('model')
    return isinstance(checkpoint.get('state_dict'), dict) and isinstance(config, dict) and \
        not any(torch.is_tensor(v) for v in config.values())


def trained_state_dict(checkpoint):
    """The flat {name: tensor} of a trained file's object, 'module.' stripped: the dict itself,
    or its 'model' (fast-reid) or 'state_dict' (torchreid, this repo) entry; None if none is one."""
    for candidate in (checkpoint, checkpoint.get('model'), checkpoint.get('state_dict')):
        if isinstance(candidate, dict) and candidate and all(torch.is_tensor(v) for v in candidate.values()):
            return {k.removeprefix('module.'): v for k, v in candidate.items()}
    return None


def adapt_checkpoint(checkpoint, path):
    """A file's object as this repo's checkpoint dict: a trained file of a registered source
    converted by it (its 'source' says what was recognised, 'dropped' what was left out by kind),
    anything else returned as it is. Raises PretrainedWeightsError, naming the tensor, for a file
    a source recognises but that does not fit it completely."""
    if not isinstance(checkpoint, dict) or _is_repo_checkpoint(checkpoint):
        return checkpoint
    state = trained_state_dict(checkpoint)
    if state is None:
        return checkpoint
    for source in _SOURCES:
        info = source.recognise(state)
        if info is not None:
            adapted = source.to_checkpoint(state, info, path)
            missing = [k for k in ('state_dict', 'model', 'source') if k not in adapted]
            if missing:
                raise ValueError(f'trained-file source {source.name!r} returned no {", ".join(missing)}')
            # what the file holds beside its weights (fast-reid's optimizer, scheduler, iteration)
            training = sorted(k for k, v in checkpoint.items() if k not in ('model', 'state_dict') and
                              not torch.is_tensor(v))
            if training:
                adapted.setdefault('dropped', {})['training state'] = training
            return adapted
    return checkpoint


def report_of_adapted(checkpoint, path):
    """The LoadReport of what adapt_checkpoint made of the trained file `path` (a checkpoint with
    a 'source'): its source, tensors, what it dropped by kind, notes and preprocessing."""
    report = LoadReport(path=path, source=checkpoint['source'], loaded=len(checkpoint['state_dict']))
    for kind, names in checkpoint.get('dropped', {}).items():
        report.drop(kind, names)
    config = checkpoint['model']
    report.pixel_mean = list(config.get('pixel_mean', report.pixel_mean))
    report.pixel_std = list(config.get('pixel_std', report.pixel_std))
    report.notes = list(checkpoint.get('notes', []))
    return report


def describe_adapted(checkpoint, path):
    """What adapt_checkpoint made of the trained file `path` (a checkpoint with a 'source'), in
    the words of LoadReport."""
    return str(report_of_adapted(checkpoint, path)).replace('Pretrained weights', 'Trained file', 1)
