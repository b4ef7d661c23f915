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
import models
from dataset_loader import VideoDataset, read_image
from transforms import build_transforms, normalize

__all__ = ['FeatureExtractor', 'feature_net']


def feature_net(checkpoint, device='cpu'):
    """(the test-time network of a checkpoint dict, in eval mode on `device`, its model config).

    models.TestFeatureNet with the checkpoint's flip test, L2-normalising for the cosine metric;
    except for video, whose features are normalised only after the frames are pooled, as the
    evaluation does.
    """
    model, config = models.from_checkpoint(checkpoint, device)
    unit_length = config['dist_metric'] == 'cosine' and not config['video']
    return models.TestFeatureNet(model, flip=config['flip_test'], normalize=unit_length).eval(), config


class FeatureExtractor:
    """Callable that turns images (or, for a video checkpoint, tracklets) into test features.

    checkpoint: a path or a dict as checkpoints.load_checkpoint returns it. Everything that shapes the
    test feature comes from its recorded model config (models.checkpoint_config): arch, last
    stride, neck and neck feature, flip test, input size, and for video the temporal pooling and
    frame sampling. With the cosine metric the features are L2-normalised (for video, after
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
        self.transform = build_transforms(self.config['height'], self.config['width'])[1]
        # The frame selection of testing: VideoDataset.frame_indices with the checkpoint's settings.
        self._sampler = VideoDataset([], self.config['seq_len'], self.config['test_sample'])

    @property
    def feat_dim(self):
        return self.net.model.feat_dim

    def select_frames(self, tracklet):
        """The frames of a tracklet that its feature uses: seq_len evenly spaced ones (repeating
        the last one for a short tracklet), or all of them with test_sample 'all'."""
        return [tracklet[i] for i in self._sampler.frame_indices(len(tracklet)).tolist()]

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
    def _forward(self, images):
        """(N, 3, H, W) uint8 -> (N, D) float32 per-image features, batch_size images at a time."""
        features = []
        for batch in images.split(self.batch_size):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                features.append(self.net(normalize(batch.to(self.device))).float())
        return torch.cat(features)

    def __call__(self, items, bgr=False):
        """Features of a list of images, or, for a video checkpoint, of tracklets (lists of
        frames), each image as preprocess() takes it. Returns an (N, D) float32 numpy array."""
        if len(items) == 0:
            return np.zeros((0, self.feat_dim), dtype=np.float32)
        if not self.video:
            return self._forward(torch.stack([self.preprocess(image, bgr) for image in items])).cpu().numpy()
        if any(isinstance(tracklet, (str, os.PathLike, np.ndarray, Image.Image)) for tracklet in items):
            raise TypeError('this is a video checkpoint: pass a list of tracklets, each a list of frames')
        frames = [self.select_frames(tracklet) for tracklet in items]
        if any(not tracklet for tracklet in frames):
            raise ValueError('a tracklet has no frames')
        images = [self.preprocess(frame, bgr) for tracklet in frames for frame in tracklet]
        frame_features = self._forward(torch.stack(images))
        features = torch.cat([models.temporal_pool(part[None], self.config['pool'])
                              for part in frame_features.split([len(tracklet) for tracklet in frames])])
        if self.config['dist_metric'] == 'cosine':
            features = F.normalize(features, dim=1)
        return features.cpu().numpy()
