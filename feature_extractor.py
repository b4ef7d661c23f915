"""Re-ID features from a trained checkpoint, for use outside the training scripts (a tracker,
a search index): the same preprocessing and test feature as the evaluation.

    from feature_extractor import FeatureExtractor
    extractor = FeatureExtractor('log/bot-market1501/best_model.pth.tar', device='cuda')
    features = extractor(crops, bgr=True)     # (N, D) float32 numpy array
"""
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import checkpoints
import model_config
import models
from dataset_loader import VideoDataset, read_image
from transforms import build_transforms, normalize

__all__ = ['FeatureExtractor', 'feature_net', 'pretrained_checkpoint']


def feature_net(checkpoint, device='cpu'):
    """(the test-time network of a checkpoint dict, in eval mode on `device`, its model config).

    models.TestFeatureNet with the checkpoint's flip test, L2-normalising for the cosine metric;
    except for video, whose features are normalised only after the frames are pooled, as the
    evaluation does.
    """
    model, config = model_config.from_checkpoint(checkpoint, device)
    unit_length = config['dist_metric'] == 'cosine' and not config['video']
    return models.TestFeatureNet(model, flip=config['flip_test'], normalize=unit_length).eval(), config


def pretrained_checkpoint(arch, pretrained_path=None, height=256, width=128, pretrained_grid=None):
    """A checkpoint dict of a model that has not been trained for re-ID: `arch` with the weights
    of `pretrained_path` (weights.load_pretrained), or randomly initialised without it, at
    height x width, with the preprocessing of the weights and the cosine metric (the L2-normalised
    backbone feature). What `--evaluate -a ARCH --pretrained-path FILE` measures, as a file
    FeatureExtractor takes."""
    model = models.init_model(arch, 1, pretrained=bool(pretrained_path), pretrained_path=pretrained_path,
                              height=height, width=width, pretrained_grid=pretrained_grid)
    report = model.pretrained_report
    config = dict(model_config.CONFIG_DEFAULTS, arch=arch, height=height, width=width, dist_metric='cosine')
    if report is not None:
        print(report)
        config.update(pixel_mean=report.pixel_mean, pixel_std=report.pixel_std)
    return {'state_dict': model.state_dict(), 'model': config}


class FeatureExtractor:
    """Callable that turns images (or, for a video checkpoint, tracklets) into test features.

    checkpoint: a path or a dict as checkpoints.load_checkpoint returns it. Everything that shapes the
    test feature comes from its recorded model config (model_config.checkpoint_config): arch, last
    stride, neck and neck feature, flip test, input size and resize, pixel mean and std, camera embedding, and
    for video the temporal pooling and frame sampling (pretrained_checkpoint() makes such a dict
    for a model with pretrained weights only). With the cosine metric the features are L2-normalised (for video, after
    pooling), so squared Euclidean distances between them rank exactly as the evaluation ranks.
    device: 'cpu', 'cuda' or a torch.device; batch_size: images per forward pass; amp: bfloat16
    autocast on CUDA (ignored on the CPU, as in training).
    """

    def __init__(self, checkpoint, device='cpu', batch_size=64, amp=False):
        if isinstance(checkpoint, (str, os.PathLike)):
            checkpoint = checkpoints.load_checkpoint(checkpoint)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.amp = amp and self.device.type == 'cuda'
        self.net, self.config = feature_net(checkpoint, self.device)
        self.video = self.config['video']
        self.transform = build_transforms(self.config['height'], self.config['width'],
                                          resize=self.config['resize_mode'])[1]
        # The frame selection of testing: VideoDataset.frame_indices with the checkpoint's settings.
        self._sampler = VideoDataset([], self.config['seq_len'], self.config['test_sample'])

    @property
    def feat_dim(self):
        return self.net.model.feat_dim

    def select_frames(self, tracklet):
        """The frames of a tracklet that its feature uses: seq_len evenly spaced ones (repeating
        the last one for a short tracklet), or all of them with test_sample 'all'."""
        return [tracklet[i] for i in self._sampler.frame_indices(len(tracklet)).tolist()]

    @property
    def num_cameras(self):
        """Cameras of the model's camera embedding (0: none; camids are then not needed)."""
        return self.config['num_cameras']

    def preprocess(self, image, bgr=False):
        """One image -> (3, height, width) uint8 tensor, resized as in testing (the forward pass
        normalises it on the device).

        image: a file path, a PIL image, or an (H, W, 3) uint8 array, RGB, or BGR with bgr=True
        (OpenCV's order). Arrays go through PIL like files do, so the resize is the same.
        """
        if isinstance(image, (str, os.PathLike)):
            image = read_image(image)
        elif isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f'expected an (H, W, 3) uint8 image array, got {image.dtype} of shape {image.shape}')
            image = Image.fromarray(np.ascontiguousarray(image[:, :, ::-1] if bgr else image))
        elif isinstance(image, Image.Image):
            image = image.convert('RGB')
        else:
            raise TypeError(f'expected an image path, a PIL image or a uint8 array, got {type(image).__name__}')
        return self.transform(image)

    @torch.inference_mode()
    def _forward(self, images, camids=None):
        """(N, 3, H, W) uint8, (N,) camids or None -> (N, D) float32 per-image features,
        batch_size images at a time."""
        features = []
        mean, std = self.config['pixel_mean'], self.config['pixel_std']
        batches = images.split(self.batch_size)
        batch_camids = [None] * len(batches) if camids is None else camids.split(self.batch_size)
        for batch, cams in zip(batches, batch_camids):
            cams = None if cams is None else cams.to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                features.append(self.net(normalize(batch.to(self.device), mean, std), cams).float())
        return torch.cat(features)

    def __call__(self, items, bgr=False, camids=None):
        """Features of a list of images, or, for a video checkpoint, of tracklets (lists of
        frames), each image as preprocess() takes it. Returns an (N, D) float32 numpy array.

        camids: for a model with a camera embedding, each item's camera id (0-based, as the
        training data numbered them); None, or -1 for an item, means unknown (a new camera, a
        tracker): the camera-agnostic feature. Models without a camera embedding ignore them.
        """
        if len(items) == 0:
            return np.zeros((0, self.feat_dim), dtype=np.float32)
        if camids is not None:
            camids = torch.as_tensor(np.asarray(camids), dtype=torch.long).reshape(-1)
            if len(camids) != len(items):
                raise ValueError(f'{len(camids)} camids for {len(items)} items')
            if not self.num_cameras:
                camids = None
        if not self.video:
            images = torch.stack([self.preprocess(image, bgr) for image in items])
            return self._forward(images, camids).cpu().numpy()
        if any(isinstance(tracklet, (str, os.PathLike, np.ndarray, Image.Image)) for tracklet in items):
            raise TypeError('this is a video checkpoint: pass a list of tracklets, each a list of frames')
        frames = [self.select_frames(tracklet) for tracklet in items]
        if any(not tracklet for tracklet in frames):
            raise ValueError('a tracklet has no frames')
        images = [self.preprocess(frame, bgr) for tracklet in frames for frame in tracklet]
        if camids is not None:
            camids = camids.repeat_interleave(torch.tensor([len(tracklet) for tracklet in frames]))
        frame_features = self._forward(torch.stack(images), camids)
        features = torch.cat([models.temporal_pool(part[None], self.config['pool'])
                              for part in frame_features.split([len(tracklet) for tracklet in frames])])
        if self.config['dist_metric'] == 'cosine':
            features = F.normalize(features, dim=1)
        return features.cpu().numpy()
