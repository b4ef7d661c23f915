"""The model configuration: what a checkpoint records under 'model' so that it alone rebuilds the
model and its test feature (CONFIG_DEFAULTS, SHAPING_OPTIONS), how resolved flags become that
record (config_from_args), how a checkpoint's config is read (checkpoint_config, the 2018 files
included), and the model rebuilt from it with its weights (from_checkpoint, load_model_weights).

Why a top-level module of its own: the config sits between the architectures and everything that
handles checkpoint files. It needs `models` (init_model builds what it describes) and is needed
by checkpoints.py (what a training checkpoint records and how weights go back in), options.py
(flags against the recorded config), feature_extractor.py, export_onnx.py and the teacher of
distillation (checkpoints.load_teacher). Inside `models` it would have to import the package that
imports it; in checkpoints.py or options.py, `models` would import back up the command line. Here
the imports run one way only:

    weights  <-  models  <-  model_config  <-  checkpoints  <-  options  <-  engine / scripts

arch_options: keyword arguments of the family constructor for architectures that need more than
their name (depth, IBN, non-local blocks, stem era, pool kind of a file trained elsewhere), passed
by from_checkpoint to init_model(..., arch_options=...), which passes them to the constructor;
{} for every architecture built from -a alone. A trained-file source records them (weights/).
"""
import models
import weights
from transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ['CheckpointError', 'CONFIG_DEFAULTS', 'SHAPING_OPTIONS', 'config_from_args', 'checkpoint_config',
           'load_model_weights', 'from_checkpoint']


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be used: missing, not a checkpoint, truncated, unsafe, or not
    fitting its model."""


# What a checkpoint records under 'model'. SHAPING_OPTIONS shape the model or the ranking, so a
# flag that contradicts them is an error; the others describe the test input and feature, which
# a user may change at test time. pixel_mean/std: the preprocessing of the weights.
CONFIG_DEFAULTS = {
    'arch': 'resnet50', 'arch_options': {}, 'last_stride': 2, 'neck': 'none', 'neck_feat': 'after',
    'dist_metric': 'euclidean', 'global_pool': 'avg', 'patch_stride': 16, 'num_cameras': 0, 'camera_weight': 3.0,
    'pool': 'avg', 'flip_test': False, 'height': 256, 'width': 128, 'resize_mode': 'pil',
    'video': False, 'seq_len': 15, 'test_sample': 'evenly',
    'pixel_mean': list(IMAGENET_MEAN), 'pixel_std': list(IMAGENET_STD),
}
SHAPING_OPTIONS = ('arch', 'arch_options', 'last_stride', 'neck', 'neck_feat', 'dist_metric', 'global_pool',
                   'patch_stride')


def config_from_args(args, video):
    """The config a checkpoint records (CONFIG_DEFAULTS' keys) from resolved args
    (options.resolve_model_config)."""
    return {'arch': args.arch, 'arch_options': dict(args.arch_options), 'last_stride': args.last_stride,
            'neck': 'bnneck' if args.bnneck else 'none',
            'neck_feat': args.neck_feat, 'dist_metric': args.dist_metric, 'global_pool': args.global_pool,
            'patch_stride': args.patch_stride, 'num_cameras': args.num_cameras,
            'camera_weight': args.camera_embedding_weight, 'pixel_mean': list(args.pixel_mean),
            'pixel_std': list(args.pixel_std), 'pool': getattr(args, 'pool', 'avg'),
            'flip_test': args.flip_test, 'height': args.height, 'width': args.width,
            'resize_mode': args.resize_mode, 'video': video,
            'seq_len': getattr(args, 'seq_len', CONFIG_DEFAULTS['seq_len']),
            'test_sample': getattr(args, 'test_sample', CONFIG_DEFAULTS['test_sample'])}


def _infer_arch(state_dict):
    """The architecture of a state dict that does not name it: the 2018 checkpoints, and
    torchreid's OSNet zoo files (weights.torchreid_osnet_arch)."""
    osnet = weights.torchreid_osnet_arch(state_dict)
    if osnet:
        return osnet
    keys = {k.removeprefix('module.') for k in state_dict}
    if any(k.startswith('layers5a.') for k in keys):
        return 'resnet50m'
    if any(k.startswith('base.denseblock') for k in keys):
        return 'densenet121'
    return 'resnet50'


def checkpoint_config(checkpoint):
    """The model config of a checkpoint (a dict as checkpoints.load_checkpoint returns it), with
    'num_classes' from its classifier.

    Checkpoints of this repo, and trained files of other projects once converted
    (weights.adapt_checkpoint), record it under 'model'. Older ones get the classic model (last
    stride 2, no neck, Euclidean): this repo's earlier checkpoints name the arch and the test
    input in 'args'; the 2018 ones name nothing and their arch is read off their tensor names.
    """
    config = dict(CONFIG_DEFAULTS)
    if 'model' in checkpoint:
        config.update(checkpoint['model'])
    else:
        old_args = checkpoint.get('args', {})
        config.update({k: old_args[k] for k in ('height', 'width', 'pool', 'seq_len', 'test_sample')
                       if k in old_args})
        config['arch'] = checkpoint.get('arch') or _infer_arch(checkpoint['state_dict'])
    classifier = {k.removeprefix('module.'): v for k, v in checkpoint['state_dict'].items()}.get('classifier.weight')
    config['num_classes'] = classifier.shape[0] if classifier is not None else 0  # 0: no classifier
    return config


def load_model_weights(model, state_dict):
    """Load weights into `model`, accepting checkpoints of other runs and of the 2018 code.

    A 'module.' prefix (saved from DataParallel) is stripped; num_batches_tracked, which old
    PyTorch did not save, may be missing; a classifier of another shape (another number of
    training identities), or one on one side only (unsupervised models have none), is skipped,
    which is fine for evaluation, where only features count. Anything else that does not
    match is an error. Returns the names of skipped tensors.
    """
    state_dict = {k.removeprefix('module.'): v for k, v in state_dict.items()}
    own = model.state_dict()
    skipped = [k for k, v in state_dict.items()
               if k.startswith('classifier.') and (k not in own or own[k].shape != v.shape)]
    skipped += [k for k in own if k.startswith('classifier.') and k not in state_dict]
    for k in skipped:
        state_dict.pop(k, None)
    mismatched = [k for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise CheckpointError(f'tensor shapes differ from the model for {mismatched[:3]} (wrong --arch?)')
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in missing if not k.endswith('num_batches_tracked') and k not in skipped]
    if missing or unexpected:
        raise CheckpointError(
            f'the checkpoint does not fit this model (wrong --arch?): {len(missing)} missing tensors '
            f'(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})')
    return skipped


def from_checkpoint(checkpoint, device='cpu'):
    """(model in eval mode on `device`, config) rebuilt from a checkpoint dict alone."""
    config = checkpoint_config(checkpoint)
    model = models.init_model(config['arch'], config['num_classes'], pretrained=False, pool=config['pool'],
                              last_stride=config['last_stride'], neck=config['neck'], neck_feat=config['neck_feat'],
                              global_pool=config['global_pool'], height=config['height'], width=config['width'],
                              patch_stride=config['patch_stride'], num_cameras=config['num_cameras'],
                              camera_weight=config['camera_weight'], arch_options=config['arch_options'])
    load_model_weights(model, checkpoint['state_dict'])
    return model.to(device).eval(), config
