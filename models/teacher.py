"""A trained re-ID model as the frozen teacher of knowledge distillation (--teacher): any checkpoint
of this repo, whatever its architecture and feature size, fed the student's training batch in its
own preprocessing (checkpoints.load_teacher makes one of a checkpoint file)."""
import hashlib

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['FrozenTeacher', 'file_sha256']


def file_sha256(path):
    """The SHA-256 of a file's bytes, as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


class FrozenTeacher(nn.Module):
    """A re-ID model (models.ReIDModel) that gives distillation targets and never learns.

    It stays in eval mode: train() leaves it there, so its BatchNorm layers normalise with their
    running statistics and never update them, and dropout is off. Its parameters do not require
    gradients and its forward runs under no_grad.

    The batch arrives as the student's input: normalised with the student's student_mean /
    student_std and at the student's size. A teacher trained with another mean/std gets the batch
    re-normalised for it, x * (std_s / std_t) + (mean_s - mean_t) / std_t per channel, which is
    exactly its own normalisation of the same pixels; a teacher of another input size gets the
    batch resized to its size, bilinearly (antialiased when shrinking, as the PIL resize of the
    test pipeline is). Both maps are linear with weights summing to 1 per pixel, so their order
    does not matter. cameras: the batch's camids are the cameras of the teacher's camera embedding
    (it was trained on the student's datasets); otherwise such a teacher gives its camera-agnostic
    features, as evaluation on another dataset does.

    forward(imgs (B, 3, H, W) or clips (B, S, 3, H, W), camids (B,) or None) ->
    (logits (B, num_classes), or None for a teacher without a classifier, test feature (B, feat_dim)), from
    models.ReIDModel.logits_and_test_feature.
    """

    def __init__(self, model, config, student_mean, student_std, cameras=False, path=None, sha256=None):
        super().__init__()
        self.model = model.requires_grad_(False)
        self.config = config
        self.size = (config['height'], config['width'])
        self.cameras = cameras and model.num_cameras > 0
        self.path, self.sha256 = path, sha256
        self.renormalise = (list(student_mean), list(student_std)) != (list(config['pixel_mean']),
                                                                       list(config['pixel_std']))
        mean_s, std_s, mean_t, std_t = (torch.tensor(v, dtype=torch.float64).view(3, 1, 1) for v in (
            student_mean, student_std, config['pixel_mean'], config['pixel_std']))
        like = next(model.parameters())
        self.register_buffer('scale', (std_s / std_t).to(like), persistent=False)
        self.register_buffer('shift', ((mean_s - mean_t) / std_t).to(like), persistent=False)
        self.train(False)

    def train(self, mode=True):
        """Stays in eval mode whatever `mode` says: the teacher's BatchNorm statistics never change."""
        return super().train(False)

    @property
    def num_classes(self):
        return self.config['num_classes']

    @torch.no_grad()
    def forward(self, imgs, camids=None):
        if self.renormalise:
            imgs = imgs * self.scale.to(imgs.dtype) + self.shift.to(imgs.dtype)
        if tuple(imgs.shape[-2:]) != self.size:
            frames = imgs.flatten(0, imgs.dim() - 4)  # clips resize frame by frame
            frames = F.interpolate(frames, size=self.size, mode='bilinear', align_corners=False,
                                   antialias=frames.shape[-2] > self.size[0] or frames.shape[-1] > self.size[1])
            imgs = frames.reshape(*imgs.shape[:-2], *self.size)
        return self.model.logits_and_test_feature(imgs, camids if self.cameras else None)

    def describe(self, height, width):
        """What the teacher is and what it does to a student batch of height x width, for the log."""
        config = self.config
        neck = f'BNNeck, the feature {config["neck_feat"]} it' if config['neck'] == 'bnneck' else 'no neck'
        lines = [f'Teacher {self.path} (sha256 {self.sha256}): {config["arch"]}, {self.model.feat_dim}-d test '
                 f'feature ({neck}), {self.num_classes} identities, {config["height"]}x{config["width"]} input']
        if self.renormalise:
            lines.append(f'  its input is re-normalised to its own mean {config["pixel_mean"]}, '
                         f'std {config["pixel_std"]}')
        if (height, width) != self.size:
            lines.append(f'  its input is resized from the student\'s {height}x{width} to '
                         f'{self.size[0]}x{self.size[1]}')
        if self.model.num_cameras:
            lines.append('  its camera embedding reads the batch\'s camera ids' if self.cameras else
                         '  its camera embedding was trained on other datasets: camera-agnostic teacher features')
        return '\n'.join(lines)
