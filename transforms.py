"""Image transforms, built on torchvision's v2 API.

Re-exports what the scripts use, plus Random2DTranslation, the augmentation of the classic
re-ID recipe, and the train/test pipelines.

The pipelines end in uint8 tensors: loader workers decode and augment, and `normalize` makes
the network's float input from a whole batch once it is on the device. A uint8 image is a
quarter of a float32 one to collate, pin and copy, and a worker skips the per-image float
arithmetic (about 1.8x the images/s per worker, benchmarks/bench_train.py).
"""
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import Compose, Pad, RandomCrop, RandomErasing, RandomHorizontalFlip, Resize, ToImage
from torchvision.transforms.v2 import functional as F

__all__ = ['RESIZE_MODES', 'Compose', 'Pad', 'RandomCrop', 'RandomErasing', 'RandomHorizontalFlip', 'Resize', 'ToImage', 'Random2DTranslation', 'build_transforms', 'AUGMENTATIONS',
           'IMAGENET_MEAN', 'IMAGENET_STD', 'MEAN_PIXEL', 'normalize']

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
MEAN_PIXEL = tuple(round(255 * m) for m in IMAGENET_MEAN)  # (124, 116, 104): about 0 once normalised
AUGMENTATIONS = ('translate', 'pad-crop', 'flip')
# How crops are resized: PIL's antialiased bilinear (the classic pipeline), PIL's bicubic (how
# fast-reid tests: torchvision Resize(interpolation=3) on PIL images), or bilinear without
# antialiasing on the pixel grid, as trackers resize with OpenCV's INTER_LINEAR (BoxMOT does).
RESIZE_MODES = ('pil', 'tracker', 'pil-bicubic')


class Random2DTranslation(torch.nn.Module):
    """With probability p, enlarge the image by 1/8 and random-crop it back to (height, width);
    otherwise resize it to (height, width).

    Accepts what v2 transforms accept (PIL image or tensor image); random numbers come from
    torch's generator so DataLoader workers are seeded correctly.
    """

    def __init__(self, height, width, p=0.5, interpolation=InterpolationMode.BILINEAR, antialias=True):
        super().__init__()
        self.height = height
        self.width = width
        self.p = p
        self.interpolation = interpolation
        self.antialias = antialias

    def forward(self, img):
        if torch.rand(1).item() >= self.p:
            return F.resize(img, [self.height, self.width], interpolation=self.interpolation, antialias=self.antialias)
        new_height, new_width = round(self.height * 1.125), round(self.width * 1.125)
        img = F.resize(img, [new_height, new_width], interpolation=self.interpolation, antialias=self.antialias)
        top = torch.randint(new_height - self.height + 1, (1,)).item()
        left = torch.randint(new_width - self.width + 1, (1,)).item()
        return F.crop(img, top, left, self.height, self.width)

    def extra_repr(self):
        return f'height={self.height}, width={self.width}, p={self.p}'


def build_transforms(height, width, augment='translate', random_erasing=0.0, fill_mean=None, resize='pil'):
    """(train, test) pipelines: PIL image -> uint8 tensor of shape (3, height, width), which
    `normalize` turns into the network's input.

    augment: 'translate', the classic recipe (Random2DTranslation, then a horizontal flip),
    'pad-crop', the BoT recipe (resize, flip, pad with zeros, random crop back): 10 pixels at
    256x128 as published, scaled with the image (2 at 64x32), so that the crop moves the person
    by the same fraction of the image at any size; or 'flip', torchreid's OSNet recipe (resize,
    horizontal flip).
    random_erasing: probability of erasing a random rectangle (Zhong et al., AAAI 2020) of 2-40%
    of the image area and aspect ratio 0.3-3.3, filled with the ImageNet mean pixel: the
    published recipe fills the normalised image with 0, which is that pixel up to its rounding
    to uint8 (at most 0.009 in normalised units). fill_mean: the mean of another normalisation
    (the pretrained weights' pixel mean, in [0, 1]) whose mean pixel fills instead.
    resize: 'pil', PIL's antialiased bilinear resize (the images go through PIL); 'pil-bicubic',
    PIL's bicubic resize (fast-reid's test pipeline, and what its files record); or 'tracker',
    bilinear without antialiasing on the uint8 pixel grid (half-pixel centres), which is how
    trackers resize their crops (OpenCV's INTER_LINEAR, up to its fixed-point rounding): a model
    that will run inside a tracker sees at training and test time what it will see there.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f'unknown augmentation {augment!r}; choose from {AUGMENTATIONS}')
    if resize not in RESIZE_MODES:
        raise ValueError(f'unknown resize mode {resize!r}; choose from {RESIZE_MODES}')
    antialias = resize != 'tracker'
    interpolation = InterpolationMode.BICUBIC if resize == 'pil-bicubic' else InterpolationMode.BILINEAR
    resize_to = Resize((height, width), interpolation=interpolation, antialias=antialias)
    if augment == 'translate':
        geometry = [Random2DTranslation(height, width, interpolation=interpolation, antialias=antialias),
                    RandomHorizontalFlip()]
    elif augment == 'flip':
        geometry = [resize_to, RandomHorizontalFlip()]
    else:
        padding = max(1, round(10 * min(height / 256, width / 128)))
        geometry = [resize_to, RandomHorizontalFlip(), Pad(padding), RandomCrop((height, width))]
    fill = MEAN_PIXEL if fill_mean is None else tuple(round(255 * m) for m in fill_mean)
    erasing = [RandomErasing(p=random_erasing, scale=(0.02, 0.4), ratio=(0.3, 3.3), value=fill)]
    # PIL always antialiases: the tracker mode works on the tensor from the start.
    first, last = ([], [ToImage()]) if antialias else ([ToImage()], [])
    train = Compose(first + geometry + last + (erasing if random_erasing > 0 else []))
    test = Compose(first + [resize_to] + last)
    return train, test


def normalize(imgs, mean=None, std=None):
    """uint8 images (..., 3, H, W) from the pipelines above, on any device -> the network's
    float32 input: scaled to [0, 1], minus the mean, over the std (per RGB channel; default
    ImageNet's; the weights' own for person-pretrained and CLIP models)."""
    return F.normalize(F.to_dtype(imgs, torch.float32, scale=True), list(mean or IMAGENET_MEAN), list(std or IMAGENET_STD))
