"""Export the test-time network of a checkpoint to ONNX, with BoxMOT's metadata sidecar.

    python export_onnx.py --resume log/bot-market1501/best_model.pth.tar --output reid.onnx

Input 'images': (batch, 3, height, width) float32 RGB, resized to the checkpoint's input size as
the evaluation does, scaled to [0, 1], then normalised with the ImageNet mean and std: the
convention of trackers (BoxMOT applies exactly that outside the graph, and cannot be told
otherwise). A model whose weights were trained with another normalisation (0.5 / 0.5 for the
person-pretrained ViTs, LUPerson's, CLIP's) gets the conversion inside the graph, a per-channel
affine; `--input-norm model` leaves it out, so that the input is normalised with the model's own
mean and std instead. The metadata says which ('input_mean' / 'input_std').
A model with a camera embedding has a second input 'camids': (batch,) int64, each image's camera
id as training numbered them, or -1 for an unknown camera (the camera-agnostic feature).
Output 'features': (batch, D), the evaluation's test feature (flip averaging, neck feature, and
L2 normalisation for a cosine checkpoint, all inside the graph): rank by squared Euclidean
distance. For a video checkpoint the graph is the per-frame network: average (or max, the
checkpoint's 'pool') the frame features of a tracklet, then, for a cosine checkpoint,
L2-normalise the result. The model config is stored in the ONNX metadata ('reid_config', JSON).
The batch axis is dynamic unless --batch N; the opset is the one the installed torch exporter
chooses.

For OSNet checkpoints, `--boxmot-pt FILE` also writes BoxMOT's `.pt` route: the weights in
torchreid's names (BoxMOT builds its own OSNet from the architecture name in the file name, e.g.
osnet_x0_25_mydata.pt, and loads them strictly); that network's feature is the one before any
BNNeck, so for a BNNeck checkpoint tested 'after' the neck the ONNX file is the faithful one.

Beside the file, `<output>.metadata.json` is the sidecar BoxMOT reads (`img_size` [H, W], the
crop `preprocess`, feature size and metric), with `model_name` null so that BoxMOT does not
guess an architecture from the file name.
"""
import argparse
import json
import sys

import numpy as np
import onnx
import torch
from torch import nn

import checkpoints
import model_config
import models
from feature_extractor import feature_net
from transforms import IMAGENET_MEAN, IMAGENET_STD

INPUT_NORMS = ('imagenet', 'model')


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--resume', required=True, metavar='CKPT', help='checkpoint of a training script')
    parser.add_argument('--output', required=True, metavar='FILE', help='the .onnx file to write')
    parser.add_argument('--batch', default='dynamic', metavar='dynamic|N',
                        help='dynamic batch axis, or a fixed batch size N (default: %(default)s)')
    parser.add_argument('--height', type=int, help="input height (default: the checkpoint's)")
    parser.add_argument('--width', type=int, help="input width (default: the checkpoint's)")
    parser.add_argument('--boxmot-pt', metavar='FILE',
                        help="OSNet checkpoints: also write the weights in torchreid's names as BoxMOT's .pt route "
                             'loads them, with the architecture and crop size BoxMOT reads (any name ending in .pt)')
    parser.add_argument('--input-norm', choices=INPUT_NORMS, default='imagenet',
                        help="normalisation of the input: ImageNet's (trackers' convention; the model's own is "
                             "converted to inside the graph) or the model's own (default: %(default)s)")
    return parser


class Renormalize(nn.Module):
    """Images normalised with one (mean, std) -> the same images normalised with another:
    x * (std_in / std) + (mean_in - mean) / std per RGB channel, (B, 3, H, W)."""

    def __init__(self, mean_in, std_in, mean, std):
        super().__init__()
        mean_in, std_in, mean, std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1)
                                      for v in (mean_in, std_in, mean, std))
        self.register_buffer('scale', std_in / std)
        self.register_buffer('shift', (mean_in - mean) / std)

    def forward(self, images):
        return images * self.scale + self.shift


class ExportNet(nn.Module):
    """The exported graph: (Renormalize, then) the test-time network; camids passed through."""

    def __init__(self, net, renormalize=None):
        super().__init__()
        self.net, self.renormalize = net, renormalize

    def forward(self, images, camids=None):
        if self.renormalize is not None:
            images = self.renormalize(images)
        return self.net(images, camids)


def sidecar(config, height, width, feat_dim, thresholds=None):
    """BoxMOT's `<file>.metadata.json` (schema 1): the crop size and resize, no model name (BoxMOT
    would build its own architecture of that name), what the features are, and the cosine-
    distance thresholds of the checkpoint's last evaluation ({str(fpr): distance}), from which a
    tracker's appearance threshold is set (see docs/using-a-model.md)."""
    return {'appearance_thresholds': thresholds or {}, 'schema_version': 1, 'model_name': None, 'model_kwargs_schema_version': 1,
            'model_kwargs': {'img_size': [height, width]}, 'img_size': [height, width], 'preprocess': 'resize',
            'trained_resize': config['resize_mode'],
            'num_classes': config['num_classes'], 'feature_dim': feat_dim,
            'metric': config['dist_metric'], 'l2_normalized': config['dist_metric'] == 'cosine' and not config['video'],
            'input_mean': list(IMAGENET_MEAN), 'input_std': list(IMAGENET_STD)}


def export(checkpoint, output, batch='dynamic', height=None, width=None, input_norm='imagenet'):
    """Write the ONNX file and its sidecar; return (graph module, model config, example inputs)
    for checking it."""
    net, config = feature_net(checkpoint)
    height, width = height or config['height'], width or config['width']
    model_norm = (list(config['pixel_mean']), list(config['pixel_std']))
    input_mean, input_std = (IMAGENET_MEAN, IMAGENET_STD) if input_norm == 'imagenet' else model_norm
    renormalize = None
    if (list(input_mean), list(input_std)) != model_norm:
        renormalize = Renormalize(input_mean, input_std, *model_norm)
    graph = ExportNet(net, renormalize).eval()
    example = (torch.randn(2 if batch == 'dynamic' else batch, 3, height, width),)
    names = ['images']
    if config['num_cameras']:
        example += (torch.arange(len(example[0])) % config['num_cameras'],)
        names.append('camids')
    dynamic_shapes = None
    if batch == 'dynamic':
        batch_dim = torch.export.Dim('batch', min=1)
        dynamic_shapes = ({0: batch_dim},) + (({0: batch_dim},) if len(names) > 1 else ())
    torch.onnx.export(graph, example, output, input_names=names, output_names=['features'],
                      dynamic_shapes=dynamic_shapes, external_data=False, verbose=False)
    # Record what a user of the file needs and cannot see in the graph.
    onnx_model = onnx.load(output)
    metadata = {'reid_config': json.dumps(config), 'input_mean': json.dumps(list(input_mean)),
                'input_std': json.dumps(list(input_std))}
    for key, value in metadata.items():
        onnx_model.metadata_props.add(key=key, value=value)
    onnx.save(onnx_model, output)
    info = dict(sidecar(config, height, width, net.model.feat_dim, checkpoint.get('tracker_thresholds')),
                input_mean=list(input_mean),
                input_std=list(input_std))
    checkpoints.write_atomic(output + '.metadata.json', lambda f: f.write(json.dumps(info, indent=2).encode()))
    return graph, config, example


def write_boxmot_pt(checkpoint, path):
    """The weights of an OSNet checkpoint as torchreid (and so BoxMOT's `.pt` route) names them: the
    backbone without its `backbone.` prefix, and the classifier when it is torchreid's (a Linear
    with bias, no BNNeck), under 'state_dict', with what BoxMOT reads beside it: 'model_name' (the
    OSNet it builds, whatever the file is called) and 'model_kwargs' {'img_size': [H, W]} (the
    crop size; without it BoxMOT resizes to its 256x128 default). Raises ValueError for other
    models or a name without BoxMOT's `.pt` suffix."""
    config = model_config.checkpoint_config(checkpoint)
    arch = config['arch']
    if arch not in models.OSNET_ARCHS:
        raise ValueError(f'--boxmot-pt: BoxMOT builds its own networks for .pt files; this is a {arch} checkpoint, '
                         f'not OSNet: use the ONNX file')
    if not path.endswith('.pt'):
        raise ValueError(f'--boxmot-pt {path}: BoxMOT recognises the format by the suffix: name it <name>.pt')
    state = {k.removeprefix('backbone.'): v for k, v in checkpoint['state_dict'].items()
             if k.startswith('backbone.') or (config['neck'] == 'none' and k.startswith('classifier.'))}
    checkpoints.save_checkpoint({'state_dict': state, 'model_name': arch, 'model_kwargs_schema_version': 1,
                                 'model_kwargs': {'img_size': [config['height'], config['width']]},
                                 'preprocess': 'resize'}, path)
    return config


def main():
    args = get_args_parser().parse_args()
    try:
        if args.batch != 'dynamic':
            if not args.batch.isdigit() or int(args.batch) < 1:
                raise ValueError(f"--batch {args.batch}: give 'dynamic' or a positive batch size")
            args.batch = int(args.batch)
        for flag, value in (('--height', args.height), ('--width', args.width)):
            if value is not None and value < 1:
                raise ValueError(f'{flag} {value}: give a positive number of pixels')
        checkpoint = checkpoints.load_checkpoint(args.resume, report=True)
        if args.boxmot_pt:
            config = write_boxmot_pt(checkpoint, args.boxmot_pt)
            print(f"Wrote {args.boxmot_pt}: the {config['arch']} weights in torchreid's names, for BoxMOT's .pt route"
                  + (' (its feature is the one before the BNNeck)' if config['neck'] != 'none' else ''))
    except (ValueError, checkpoints.CheckpointError) as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(1)
    net, config, example = export(checkpoint, args.output, args.batch, args.height, args.width, args.input_norm)
    shape = ('batch' if args.batch == 'dynamic' else args.batch, *example[0].shape[1:])
    cameras = f' + camids ({shape[0]},)' if len(example) > 1 else ''
    print(f'Wrote {args.output}: images {shape}{cameras} -> features ({shape[0]}, {net.net.model.feat_dim}), and '
          f'{args.output}.metadata.json for BoxMOT')
    if net.renormalize is not None:
        print(f"The input is ImageNet-normalised; the graph converts it to the model's own normalisation "
              f"(mean {config['pixel_mean']}, std {config['pixel_std']})")
    if config['video']:
        print(f"Video checkpoint: these are per-frame features; pool a tracklet's frames ({config['pool']})"
              + (', then L2-normalise' if config['dist_metric'] == 'cosine' else ''))
    try:
        import onnxruntime
    except ImportError:
        return
    session = onnxruntime.InferenceSession(args.output, providers=['CPUExecutionProvider'])
    with torch.inference_mode():
        expected = net(*example).numpy()
    got = session.run(None, dict(zip(('images', 'camids'), (x.numpy() for x in example))))[0]
    print(f'onnxruntime check on a random batch: max |onnx - torch| = {np.abs(got - expected).max():.2e}')


if __name__ == '__main__':
    main()
