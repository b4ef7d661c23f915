"""Torch datasets over the split lists of data_manager (images and video tracklets), and the
training and test DataLoaders that the scripts build from their flags."""
from contextlib import contextmanager
from typing import NamedTuple

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

import data_manager
import distributed
import options
from options import UsageError
from samplers import RandomIdentitySampler, ShuffleSampler
from transforms import build_transforms

__all__ = ['check_train_batch', 'ImageReadError', 'read_image', 'seeded_rng', 'ImageDataset', 'VideoDataset', 'frames_of',
           'build_train_loader', 'Target', 'build_test_loader', 'build_target', 'load_datasets', 'build_loaders']


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
    # The CPU generator alone: torch.manual_seed would also seed every accelerator backend,
    # about 30x the cost (115 against 4 microseconds a sample here).
    generator = torch.default_generator
    state = generator.get_state()
    generator.manual_seed(seed)
    try:
        yield
    finally:
        generator.set_state(state)


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


def check_train_batch(args, dataset, video, triplet):
    """The training items (frames for video unless --clip-train), once --train-batch is known
    to fit them: divisible among the processes (and into whole identities for P x K batches),
    and no larger than the data. Raises UsageError otherwise, before any model is built."""
    if not dataset.has_train_ids:
        raise UsageError(f'the training split of {" + ".join(args.dataset)} has no identity folders (a flat folder '
                         f'of crops): train on it without labels, with train_img_model_usl.py')
    train_items = dataset.train if not video or args.clip_train else frames_of(dataset.train)
    world_size = distributed.get_world_size()
    if args.train_batch % (world_size * (args.num_instances if triplet else 1)):
        per_rank = f'{world_size} processes x --num-instances {args.num_instances}' if triplet else f'{world_size} processes'
        raise UsageError(f'--train-batch {args.train_batch} (the global batch) must be divisible by {per_rank}, '
                         f'so that every process gets an equal share' + (' of whole identities' if triplet else ''))
    if triplet:
        identities, identities_per_batch = len({pid for _, pid, _ in train_items}), args.train_batch // args.num_instances
        if identities < identities_per_batch:
            raise UsageError(f'the training split has {identities} identities, fewer than the '
                             f'{identities_per_batch} a batch needs (--train-batch {args.train_batch} / '
                             f'--num-instances {args.num_instances}); lower --train-batch')
    elif len(train_items) < args.train_batch:
        raise UsageError(f'the training split has {len(train_items)} samples, fewer than '
                         f'--train-batch {args.train_batch}')
    return train_items


def build_train_loader(args, dataset, video, triplet, use_gpu):
    """The training DataLoader. Video training decomposes tracklets into frames (image batches)
    unless --clip-train.

    --train-batch is the global batch: each of the world_size processes loads its share, and
    the samplers, seeded by --seed and the epoch (set_epoch), give the ranks together the
    batches of a single process (P x K: whole identities per rank), augmented alike.
    """
    transform_train, _ = build_transforms(args.height, args.width, args.augment, args.random_erasing,
                                          fill_mean=args.pixel_mean, resize=args.resize_mode)
    train_items = check_train_batch(args, dataset, video, triplet)
    if video and args.clip_train:
        train_set = VideoDataset(train_items, args.seq_len, 'random', transform_train, split='train')
    else:
        train_set = ImageDataset(train_items, transform_train, split='train')
    world_size, rank = distributed.get_world_size(), distributed.get_rank()
    if triplet:
        sampler = RandomIdentitySampler(train_items, num_instances=args.num_instances, batch_size=args.train_batch,
                                        num_replicas=world_size, rank=rank, seed=args.seed, item_seeds=True)
    else:
        sampler = ShuffleSampler(len(train_set), batch_size=args.train_batch, num_replicas=world_size, rank=rank,
                                 seed=args.seed, item_seeds=True)
    # The workers persist across epochs (no start-up per epoch): the samplers' item seeds make
    # the augmentations independent of the workers' random streams, so an exact resume holds.
    # Worker seeds come from the loader's own generator and leave the global stream alone.
    return DataLoader(train_set, batch_size=args.train_batch // world_size, sampler=sampler,
                      num_workers=args.workers, pin_memory=use_gpu, drop_last=True,
                      persistent_workers=args.workers > 0, generator=torch.Generator())


class Target(NamedTuple):
    """A dataset to evaluate on, with its query and gallery loaders."""
    dataset: object
    queryloader: DataLoader
    galleryloader: DataLoader


def build_test_loader(args, items, video, use_gpu, split):
    """A test-transform loader over items (query, gallery, or the training split when features
    of it are wanted). It draws from its own generator, so it never moves the training RNG.
    Under DDP each rank reads one contiguous range of the items (extract_split gathers them
    back in order)."""
    _, transform_test = build_transforms(args.height, args.width, resize=args.resize_mode)
    world_size, rank = distributed.get_world_size(), distributed.get_rank()
    if not video:
        test_set, batch_size = ImageDataset(items, transform_test, split=split), args.test_batch
    elif args.test_sample == 'all':  # whole tracklets differ in length: one per batch
        test_set, batch_size = VideoDataset(items, args.seq_len, 'all', transform_test, split=split), 1
    else:
        test_set = VideoDataset(items, args.seq_len, 'evenly', transform_test, split=split)
        batch_size = args.test_batch
    if world_size > 1:
        bounds = [len(test_set) * r // world_size for r in range(world_size + 1)]
        test_set = Subset(test_set, range(bounds[rank], bounds[rank + 1]))
    return DataLoader(test_set, batch_size=batch_size, shuffle=False, num_workers=args.workers,
                      pin_memory=use_gpu, generator=torch.Generator())


def build_target(args, dataset, video, use_gpu):
    """Test loaders of a dataset's query and gallery splits (build_test_loader)."""
    return Target(dataset, *(build_test_loader(args, getattr(dataset, split), video, use_gpu, split)
                             for split in ('query', 'gallery')))


def load_datasets(args):
    """(train dataset, [test datasets]): the union of the -d datasets for training, and each
    --target (default: the -d datasets) that has a query/gallery split for testing."""
    def load(name):
        return data_manager.init_dataset(name, root=args.root, **options.dataset_options(args))

    train_sets = [load(name) for name in args.dataset]
    train_data = train_sets[0] if len(train_sets) == 1 else data_manager.combine_train(train_sets)
    test_sets = []
    for name in args.target or args.dataset:
        dataset = next((d for d in train_sets if d.name == name), None) or load(name)
        if not dataset.has_test_split:
            print(f'Note: {name} has no query/gallery folders, so it is not evaluated')
            continue
        if not dataset.has_camera_ids:
            print(f'Note: {name} has no camera ids, so cross-camera filtering is off: a query is only kept '
                  f'from matching the very same image or tracklet; every other gallery entry counts')
        test_sets.append(dataset)
    if not test_sets:
        print('Note: no dataset to evaluate on: evaluation is disabled; checkpoints are still written')
    return train_data, test_sets


def build_loaders(args, train_data, test_sets, video, triplet, use_gpu, train=True):
    """(trainloader, [Target]) of load_datasets' datasets, once args.pixel_mean is known (the
    random-erasing fill is the mean pixel of the weights' normalisation); trainloader None
    without train (unsupervised training builds one per epoch)."""
    return (build_train_loader(args, train_data, video, triplet, use_gpu) if train else None,
            [build_target(args, dataset, video, use_gpu) for dataset in test_sets])
