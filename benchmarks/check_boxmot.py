"""Check an exported model inside a real BoxMOT installation (run it in BoxMOT's environment).

    python benchmarks/check_boxmot.py --resume log/osnet/best_model.pth.tar

BoxMOT is not a requirement of this repo (it pins its own onnxruntime): run this in an
environment that has BoxMOT (`pip install boxmot[onnx]`) and this repo's requirements. It exports
the checkpoint with export_onnx.py's code (and, for OSNet, the `.pt` of `--boxmot-pt`) into a
temporary folder, pastes the query crops of a generated Market-1501-layout dataset into video
frames, and checks, for each file:
  1. BoxMOT's own re-ID runtime (boxmot.reid.core.ReID, the one its trackers call with the frame
     and the boxes) gives the checkpoint's features: FeatureExtractor on the same crops, resized
     both ways (the checkpoint's --resize-mode, and the other), max |difference| and cosine;
  2. every appearance tracker of BoxMOT runs on the file for a few frames and keeps the people's
     track ids (each person stands still, so a tracker that loses them is broken, not fooled).
Without BoxMOT it says how to install it and exits with status 1.
"""
import argparse
import importlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.insert(0, REPO)
import checkpoints  # noqa: E402
import data_manager  # noqa: E402
import export_onnx  # noqa: E402
import model_config  # noqa: E402
import models  # noqa: E402
import synthetic_data  # noqa: E402
from feature_extractor import FeatureExtractor  # noqa: E402
from transforms import RESIZE_MODES  # noqa: E402

# BoxMOT's trackers that use appearance, with the keyword that turns it on where it is optional.
APPEARANCE_TRACKERS = {'StrongSort': {}, 'BotSort': {'use_embeddings': True}, 'DeepOcSort': {'use_embeddings': True},
                       'HybridSort': {'use_embeddings': True}, 'BoostTrack': {'use_embeddings': True},
                       'OccluBoost': {'use_embeddings': True}}


def frames_with_people(paths, per_frame=4, num_frames=5, size=(480, 640)):
    """(frames (num_frames) of BGR uint8 (H, W, 3), boxes (per_frame, 4) x1 y1 x2 y2): the first
    per_frame crops pasted side by side at their own size on a grey background, still in every
    frame; and the BGR crops BoxMOT cuts out of a frame at those boxes."""
    frame = np.full((*size, 3), 114, dtype=np.uint8)
    boxes = []
    for i, path in enumerate(paths[:per_frame]):
        crop = np.asarray(Image.open(path).convert('RGB'))[:, :, ::-1]
        x, y = 40 + i * (crop.shape[1] + 60), 100
        frame[y:y + crop.shape[0], x:x + crop.shape[1]] = crop
        boxes.append([x, y, x + crop.shape[1], y + crop.shape[0]])
    boxes = np.array(boxes, dtype=np.float32)
    crops = [frame[int(y1):int(y2), int(x1):int(x2)] for x1, y1, x2, y2 in boxes]
    return [frame.copy() for _ in range(num_frames)], boxes, crops


def our_features(checkpoint, crops):
    """{resize mode: (N, D) L2-normalised FeatureExtractor features of the BGR crops}."""
    features = {}
    for mode in RESIZE_MODES:
        ours = FeatureExtractor({**checkpoint, 'model': {**checkpoint['model'], 'resize_mode': mode}})(crops, bgr=True)
        features[mode] = ours / np.linalg.norm(ours, axis=1, keepdims=True)  # BoxMOT L2-normalises every feature
    return features


def compare(reid, ours, frame, boxes):
    """Print BoxMOT's features of the boxes against ours (our_features), per resize mode."""
    boxmot_features = reid(frame, boxes=boxes)
    for mode, features in ours.items():
        cosine = np.sum(features * boxmot_features, axis=1)
        print(f'    FeatureExtractor, resize {mode:<7}: max |diff| {np.abs(features - boxmot_features).max():.1e}, '
              f'min cosine {cosine.min():.6f}')


def run_trackers(weights, frames, boxes):
    """Run each appearance tracker on the frames; return {name: 'ok' or what went wrong}."""
    boxmot = importlib.import_module('boxmot')
    detections = np.concatenate([boxes, np.full((len(boxes), 1), 0.9), np.zeros((len(boxes), 1))], axis=1)
    results = {}
    for name, options in APPEARANCE_TRACKERS.items():
        tracker = getattr(boxmot, name)(reid_weights=Path(weights), device='cpu', half=False, **options)
        ids = []
        for frame in frames:
            tracks = tracker.update(detections.astype(np.float32), frame)
            ids.append(sorted(tracks[:, 4].astype(int).tolist()))
        # Trackers confirm a track after a few frames (StrongSORT's n_init); from then on, the same ids.
        confirmed = [frame_ids for frame_ids in ids if frame_ids]
        stable = confirmed and all(frame_ids == confirmed[0] for frame_ids in confirmed) and len(ids[-1]) == len(boxes)
        results[name] = 'ok' if stable else f'track ids per frame {ids}'
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--resume', required=True, metavar='CKPT', help='checkpoint of a training script')
    args = parser.parse_args()
    try:
        reid_runtime = importlib.import_module('boxmot.reid.core.runtime')
    except ImportError:
        sys.exit('BoxMOT is not installed here: run this in its environment (pip install "boxmot[onnx]"), which '
                 'needs this repo\'s requirements too')
    checkpoint = checkpoints.load_checkpoint(args.resume)
    config = model_config.checkpoint_config(checkpoint)
    with tempfile.TemporaryDirectory() as root:
        synthetic_data.make_market1501(os.path.join(root, 'market1501'), seed=0)
        dataset = data_manager.init_dataset('market1501', root=root, verbose=False)
        frames, boxes, crops = frames_with_people([path for path, _, _ in dataset.query])
        files = [os.path.join(root, 'reid.onnx')]
        export_onnx.export(checkpoint, files[0])
        if config['arch'] in models.OSNET_ARCHS:
            files.append(os.path.join(root, 'mine.pt'))  # BoxMOT reads the architecture inside
            export_onnx.write_boxmot_pt(checkpoint, files[1])
        print(f'{args.resume}: {config["arch"]}, {config["height"]}x{config["width"]}, trained with '
              f'--resize-mode {config["resize_mode"]}')
        ours = our_features(checkpoint, crops)
        for weights in files:
            print(f'  {os.path.basename(weights)} in BoxMOT\'s ReID runtime (the crops BoxMOT cuts and resizes):')
            compare(reid_runtime.ReID(weights, device='cpu'), ours, frames[0], boxes)
            for name, verdict in run_trackers(weights, frames, boxes).items():
                print(f'    {name}: {verdict}')


if __name__ == '__main__':
    main()
