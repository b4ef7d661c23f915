"""Torch datasets over the split lists of data_manager: images and video tracklets."""
from contextlib import contextmanager

import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = ['ImageReadError', 'read_image', 'seeded_rng', 'ImageDataset', 'VideoDataset', 'frames_of']


class ImageReadError(OSError):
    """An image file is missing, empty, truncated or not an image."""


def read_image(img_path, split=None):
    """Open an image as RGB, fully decoded, or raise ImageReadError naming the file (and split).

    Decoding happens here, not lazily later, so a truncated JPEG fails at once instead of
    surfacing as a confusing error inside a transform. No retry: a bad file stays bad.
    """
    try:
        with Image.open(img_path) as img:
            return img.convert('RGB')
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        where = f' in the {split} split' if split else ''
        raise ImageReadError(f'cannot read image {img_path}{where}: {error}. '
                             f'Replace or remove the file and run again.') from error


@contextmanager
def seeded_rng(seed):
    """Run the block on torch's CPU generator seeded with `seed`, then give the caller's stream
    back untouched; with seed None, run it on the stream as it is.

    A sampler's (index, seed) pair fixes a sample's augmentation this way (samplers.py), in a
    loader worker or in the main process alike.
    """
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class ImageDataset(Dataset):
    """Items (img, pid, camid) from a list of (img_path, pid, camid), indexed by position or by
    an (index, augmentation seed) pair (samplers.py)."""

    def __init__(self, dataset, transform=None, split=None):
        self.dataset = dataset
        self.transform = transform
        self.split = split

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        index, seed = index if isinstance(index, tuple) else (index, None)
        img_path, pid, camid = self.dataset[index]
        img = read_image(img_path, self.split)
        if self.transform is not None:
            with seeded_rng(seed):
                img = self.transform(img)
        return img, pid, camid


class VideoDataset(Dataset):
    """Items (imgs, pid, camid) from a list of (img_paths, pid, camid) tracklets, indexed as
    ImageDataset is.

    imgs has shape (seq_len, C, H, W) for sample='evenly' or 'random', and (num_frames, C, H, W),
    the whole tracklet, for sample='all'.
      evenly: seq_len frames at indices floor(i * num_frames / seq_len), i = 0..seq_len-1,
              spread over the whole tracklet; a tracklet shorter than seq_len gives all its
              frames followed by copies of the last one.
      random: seq_len distinct frames drawn at random and kept in temporal order; a tracklet
              shorter than seq_len is drawn with replacement (still in temporal order).
    Randomness comes from torch's generator: the item's seed when indexed by an (index, seed)
    pair, else the stream as it is (which DataLoader seeds per worker).
    """
    sample_methods = ('evenly', 'random', 'all')

    def __init__(self, dataset, seq_len=15, sample='evenly', transform=None, split=None):
        if sample not in self.sample_methods:
            raise ValueError(f'unknown sample method {sample!r}; choose from {self.sample_methods}')
        if seq_len < 1:
            raise ValueError(f'seq_len must be at least 1, got {seq_len}')
        self.dataset = dataset
        self.seq_len = seq_len
        self.sample = sample
        self.transform = transform
        self.split = split

    def __len__(self):
        return len(self.dataset)

    def frame_indices(self, num_frames):
        """Indices (a 1-D LongTensor) of the frames that make up one item."""
        if self.sample == 'all':
            return torch.arange(num_frames)
        if self.sample == 'evenly':
            if num_frames >= self.seq_len:
                return torch.arange(self.seq_len) * num_frames // self.seq_len
            padding = torch.full((self.seq_len - num_frames,), num_frames - 1)
            return torch.cat([torch.arange(num_frames), padding])
        if num_frames >= self.seq_len:
            return torch.randperm(num_frames)[:self.seq_len].sort().values
        return torch.randint(num_frames, (self.seq_len,)).sort().values

    def __getitem__(self, index):
        index, seed = index if isinstance(index, tuple) else (index, None)
        img_paths, pid, camid = self.dataset[index]
        imgs = []
        with seeded_rng(seed):
            for i in self.frame_indices(len(img_paths)).tolist():
                img = read_image(img_paths[i], self.split)
                imgs.append(self.transform(img) if self.transform is not None else img)
        return torch.stack(imgs), pid, camid


def frames_of(tracklets):
    """Decompose [(img_paths, pid, camid)] tracklets into [(img_path, pid, camid)] frames."""
    return [(path, pid, camid) for paths, pid, camid in tracklets for path in paths]
