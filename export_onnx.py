"""Export the test-time network of a checkpoint to ONNX.

    python export_onnx.py --resume log/bot-market1501/best_model.pth.tar --output reid.onnx

Input 'images': (batch, 3, height, width) float32 RGB, scaled to [0, 1] then normalised with the
checkpoint's pixel mean and std (ImageNet's unless its pretrained weights had others; stored in the
metadata as 'input_mean' / 'input_std'), resized to the checkpoint's input size as the evaluation
does. A model with a camera embedding has a second input 'camids': (batch,) int64, each image's
camera id as training numbered them, or -1 for an unknown camera (the camera-agnostic feature). Output 'features': (batch, D), the evaluation's test feature
(flip averaging, neck feature, and L2 normalisation for a cosine checkpoint, all inside the
graph): rank by squared Euclidean distance. For a video checkpoint the graph is the per-frame
network: average (or max, the checkpoint's 'pool') the frame features of a tracklet, then, for a
cosine checkpoint, L2-normalise the result. The model config is stored in the ONNX metadata
('reid_config', JSON). The batch axis is dynamic unless --batch N; the opset is the one the
installed torch exporter chooses.
"""
import argparse
import json
import sys

import numpy as np
import onnx
import torch

import checkpoints
from feature_extractor import feature_net


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--resume', required=True, metavar='CKPT', help='checkpoint of a training script')
    parser.add_argument('--output', required=True, metavar='FILE', help='the .onnx file to write')
    parser.add_argument('--batch', default='dynamic', metavar='dynamic|N',
                        help='dynamic batch axis, or a fixed batch size N (default: %(default)s)')
    parser.add_argument('--height', type=int, help="input height (default: the checkpoint's)")
    parser.add_argument('--width', type=int, help="input width (default: the checkpoint's)")
    return parser


def export(checkpoint, output, batch='dynamic', height=None, width=None):
    """Write the ONNX file; return (network, its model config, example input) for checking it."""
    net, config = feature_net(checkpoint)
    height, width = height or config['height'], width or config['width']
    example = (torch.randn(2 if batch == 'dynamic' else batch, 3, height, width),)
    names = ['images']
    if config['num_cameras']:
        example += (torch.arange(len(example[0])) % config['num_cameras'],)
        names.append('camids')
    dynamic_shapes = None
    if batch == 'dynamic':
        batch_dim = torch.export.Dim('batch', min=1)
        dynamic_shapes = ({0: batch_dim},) + (({0: batch_dim},) if len(names) > 1 else ())
    torch.onnx.export(net, example, output, input_names=names, output_names=['features'],
                      dynamic_shapes=dynamic_shapes, external_data=False, verbose=False)
    # Record what a user of the file needs and cannot see in the graph.
    onnx_model = onnx.load(output)
    metadata = {'reid_config': json.dumps(config), 'input_mean': json.dumps(config['pixel_mean']),
                'input_std': json.dumps(config['pixel_std'])}
    for key, value in metadata.items():
        onnx_model.metadata_props.add(key=key, value=value)
    onnx.save(onnx_model, output)
    return net, config, example


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
        checkpoint = checkpoints.load_checkpoint(args.resume)
    except (ValueError, checkpoints.CheckpointError) as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(1)
    net, config, example = export(checkpoint, args.output, args.batch, args.height, args.width)
    shape = ('batch' if args.batch == 'dynamic' else args.batch, *example[0].shape[1:])
    cameras = f' + camids ({shape[0]},)' if len(example) > 1 else ''
    print(f'Wrote {args.output}: images {shape}{cameras} -> features ({shape[0]}, {net.model.feat_dim})')
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
