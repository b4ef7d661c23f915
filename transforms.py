"""Image transforms, built on torchvision's v2 API.

Re-exports what the scripts use, plus Random2DTranslation, the augmentation of the classic
re-ID recipe, and the train/test pipelines.
"""
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import (Compose, Normalize, Pad, RandomCrop, RandomErasing,
                                       RandomHorizontalFlip, Resize, ToDtype, ToImage)
from torchvision.transforms.v2 import functional as F

__all__ = ['Compose', 'Normalize', 'Pad', 'RandomCrop', 'RandomErasing', 'RandomHorizontalFlip', 'Resize',
           'ToDtype', 'ToImage', 'Random2DTranslation', 'build_transforms', 'AUGMENTATIONS',
           'IMAGENET_MEAN', 'IMAGENET_STD']

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
AUGMENTATIONS = ('translate', 'pad-crop')


class Random2DTranslation(torch.nn.Module):
    """With probability p, enlarge the image by 1/8 and random-crop it back to (height, width);
    otherwise resize it to (height, width).

    Accepts what v2 transforms accept (PIL image or tensor image); random numbers come from
    torch's generator so DataLoader workers are seeded correctly.
    """

    def __init__(self, height, width, p=0.5, interpolation=InterpolationMode.BILINEAR):
        super().__init__()
        self.height = height
        self.width = width
        self.p = p
        self.interpolation = interpolation

    def forward(self, img):
        if torch.rand(1).item() >= self.p:
            return F.resize(img, [self.height, self.width], interpolation=self.interpolation)
        new_height, new_width = round(self.height * 1.125), round(self.width * 1.125)
        img = F.resize(img, [new_height, new_width], interpolation=self.interpolation)
        top = torch.randint(new_height - self.height + 1, (1,)).item()
        left = torch.randint(new_width - self.width + 1, (1,)).item()
        return F.crop(img, top, left, self.height, self.width)

    def extra_repr(self):
        return f'height={self.height}, width={self.width}, p={self.p}'


def build_transforms(height, width, augment='translate', random_erasing=0.0):
    """(train, test) pipelines: PIL image -> normalised float tensor of shape (3, height, width).

    augment: 'translate', the classic recipe (Random2DTranslation, then a horizontal flip), or
    'pad-crop', the BoT recipe (resize, flip, pad with zeros, random crop back): 10 pixels at
    256x128 as published, scaled with the image (2 at 64x32), so that the crop moves the person
    by the same fraction of the image at any size.
    random_erasing: probability of erasing a random rectangle (Zhong et al., AAAI 2020) of 2-40%
    of the image area and aspect ratio 0.3-3.3, after normalisation, filled with 0, which is
    the ImageNet mean pixel once normalised.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f'unknown augmentation {augment!r}; choose from {AUGMENTATIONS}')
    to_tensor = [ToImage(), ToDtype(torch.float32, scale=True),
                 Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)]
    if augment == 'translate':
        geometry = [Random2DTranslation(height, width), RandomHorizontalFlip()]
    else:
        padding = max(1, round(10 * min(height / 256, width / 128)))
        geometry = [Resize((height, width)), RandomHorizontalFlip(), Pad(padding), RandomCrop((height, width))]
    erasing = [RandomErasing(p=random_erasing, scale=(0.02, 0.4), ratio=(0.3, 3.3), value=0)] if random_erasing > 0 else []
    train = Compose(geometry + to_tensor + erasing)
    test = Compose([Resize((height, width))] + to_tensor)
    return train, test
