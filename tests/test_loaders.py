from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler
from torchvision.transforms import v2

import data_manager
import distributed
from dataset_loader import ImageDataset, ImageReadError, VideoDataset, build_train_loader, frames_of, read_image
from samplers import RandomIdentitySampler, ShuffleSampler
from transforms import IMAGENET_MEAN, IMAGENET_STD, Random2DTranslation, build_transforms, normalize


@pytest.fixture(scope='module')
def market(synthetic_root):
    return data_manager.Market1501(root=str(synthetic_root), verbose=False)


@pytest.fixture(scope='module')
def mars(synthetic_root):
    return data_manager.Mars(root=str(synthetic_root), verbose=False)


def test_image_dataset_items(market):
    _, test_transform = build_transforms(64, 32)
    img, pid, camid = ImageDataset(market.query, test_transform)[0]
    assert img.shape == (3, 64, 32) and img.dtype == torch.uint8
    assert (pid, camid) == market.query[0][1:]


@pytest.mark.parametrize('sample', ['evenly', 'random'])
def test_video_dataset_clip_shape(mars, sample):
    _, test_transform = build_transforms(32, 16)
    imgs, pid, camid = VideoDataset(mars.query, seq_len=4, sample=sample, transform=test_transform)[0]
    assert imgs.shape == (4, 3, 32, 16)
    assert (pid, camid) == mars.query[0][1:]


def test_video_dataset_all_frames(mars):
    _, test_transform = build_transforms(32, 16)
    imgs, _, _ = VideoDataset(mars.gallery, sample='all', transform=test_transform)[1]
    assert imgs.shape == (len(mars.gallery[1][0]), 3, 32, 16)


def test_evenly_spreads_and_pads():
    dataset = VideoDataset([], seq_len=4, sample='evenly')
    assert dataset.frame_indices(8).tolist() == [0, 2, 4, 6]
    assert dataset.frame_indices(10).tolist() == [0, 2, 5, 7]
    assert dataset.frame_indices(4).tolist() == [0, 1, 2, 3]
    assert dataset.frame_indices(2).tolist() == [0, 1, 1, 1], 'short tracklets repeat the last frame'
    assert dataset.frame_indices(1).tolist() == [0, 0, 0, 0]


def test_random_sampling_is_ordered_and_distinct():
    dataset = VideoDataset([], seq_len=5, sample='random')
    torch.manual_seed(0)
    for num_frames in (5, 9, 30):
        indices = dataset.frame_indices(num_frames).tolist()
        assert indices == sorted(indices) and len(set(indices)) == 5 and max(indices) < num_frames
    short = dataset.frame_indices(3).tolist()
    assert len(short) == 5 and short == sorted(short) and set(short) <= {0, 1, 2}


def test_bad_sample_arguments():
    with pytest.raises(ValueError, match='dense'):
        VideoDataset([], sample='dense')
    with pytest.raises(ValueError, match='seq_len'):
        VideoDataset([], seq_len=0)


def test_frames_of():
    frames = frames_of([(('a', 'b'), 3, 1), (('c',), 4, 0)])
    assert frames == [('a', 3, 1), ('b', 3, 1), ('c', 4, 0)]


def _bad_files(tmp_path, good_image):
    data = open(good_image, 'rb').read()
    (tmp_path / 'truncated.jpg').write_bytes(data[:len(data) // 2])
    (tmp_path / 'empty.jpg').write_bytes(b'')
    (tmp_path / 'text.jpg').write_text('not an image')
    return {name: str(tmp_path / name) for name in ('truncated.jpg', 'empty.jpg', 'text.jpg', 'missing.jpg')}


def test_bad_images_raise_naming_file_and_split(market, tmp_path):
    for name, path in _bad_files(tmp_path, market.train[0][0]).items():
        with pytest.raises(ImageReadError) as info:
            read_image(path, split='gallery')
        assert name in str(info.value) and 'gallery split' in str(info.value)


def test_bad_image_stops_dataloader_workers(market, tmp_path):
    """A bad file inside a multi-worker DataLoader stops the iteration with the file's name."""
    bad = _bad_files(tmp_path, market.train[0][0])['truncated.jpg']
    items = list(market.train[:6]) + [(bad, 0, 0)] + list(market.train[6:12])
    _, test_transform = build_transforms(32, 16)
    loader = DataLoader(ImageDataset(items, test_transform, split='train'), batch_size=2, num_workers=2)
    with pytest.raises(ImageReadError, match='truncated.jpg'):
        for _ in loader:
            pass


def _batches(sampler, batch_size):
    indices = list(sampler)
    return [indices[i:i + batch_size] for i in range(0, len(indices) - batch_size + 1, batch_size)]


def test_random_identity_sampler_structure(market):
    sampler = RandomIdentitySampler(market.train, num_instances=4)
    indices = list(sampler)
    num_ids = market.num_train_pids
    assert len(sampler) == len(indices) == num_ids * 4
    for batch in _batches(sampler, 8):  # P = 2 identities x K = 4
        counts = Counter(market.train[i][1] for i in batch)
        assert sorted(counts.values()) == [4, 4]
    # Every identity appears once per epoch, with distinct images when it has enough.
    per_pid = {}
    for i in indices:
        per_pid.setdefault(market.train[i][1], []).append(i)
    assert len(per_pid) == num_ids
    available = Counter(pid for _, pid, _ in market.train)
    for pid, chosen in per_pid.items():
        if available[pid] >= 4:
            assert len(set(chosen)) == 4


def test_random_identity_sampler_replacement_for_small_ids():
    data = [('x', 0, 0), ('y', 1, 0), ('z', 1, 1)]
    indices = list(RandomIdentitySampler(data, num_instances=4, seed=0))
    assert Counter(data[i][1] for i in indices) == {0: 4, 1: 4}


def test_random_identity_sampler_reproducible(market):
    def order(seed, workers):
        torch.manual_seed(seed)
        _, transform = build_transforms(16, 8)
        loader = DataLoader(ImageDataset(market.train, transform), batch_size=8,
                            sampler=RandomIdentitySampler(market.train, 4, seed=seed), num_workers=workers)
        return [pids.tolist() for _, pids, _ in loader]
    assert order(1, 0) == order(1, 2)
    assert order(1, 2) == order(1, 2)
    assert order(1, 0) != order(2, 0)


def test_random_2d_translation_output_size(market):
    img = Image.open(market.train[0][0])
    for p in (0.0, 1.0):
        out = Random2DTranslation(48, 24, p=p)(img)
        assert out.size == (24, 48)
    tensor = torch.rand(3, 100, 50)
    assert Random2DTranslation(64, 32, p=1.0)(tensor).shape == (3, 64, 32)
    train, test = build_transforms(64, 32)
    assert train(img).shape == test(img).shape == (3, 64, 32)


@pytest.mark.parametrize('augment', ['translate', 'pad-crop'])
def test_uint8_pipeline_then_normalize_is_the_float_pipeline(market, augment):
    """The loader's uint8 images, normalised as a batch on the device, are bit for bit the
    float pipeline (the augmentation with ToDtype and Normalize in the worker), same seed."""
    images = [read_image(path) for path, _, _ in market.train[:8]]
    for pipeline in build_transforms(64, 32, augment):
        float_pipeline = v2.Compose([pipeline, v2.ToDtype(torch.float32, scale=True),
                                     v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        torch.manual_seed(0)
        batch = torch.stack([pipeline(image) for image in images])
        torch.manual_seed(0)
        expected = torch.stack([float_pipeline(image) for image in images])
        assert batch.dtype == torch.uint8
        assert torch.equal(normalize(batch), expected)
        assert torch.equal(normalize(batch[None])[0], expected)  # video clips: (B, S, 3, H, W)


def test_shuffle_sampler_order_is_distributed_samplers_on_one_process():
    ours = ShuffleSampler(23, batch_size=5, seed=3)
    theirs = DistributedSampler(range(23), num_replicas=1, rank=0, shuffle=True, seed=3, drop_last=True)
    for epoch in (0, 4):
        ours.set_epoch(epoch)
        theirs.set_epoch(epoch)
        assert list(ours) == list(theirs)[:20] and len(ours) == 20


def epoch_batches(market, monkeypatch, triplet, workers, world_size=1, rank=0, epochs=(0, 1)):
    """The training loader's batches (uint8 images, pids) for these epochs, as the scripts build
    it for rank `rank` of `world_size` processes."""
    monkeypatch.setattr(distributed, 'get_world_size', lambda: world_size)
    monkeypatch.setattr(distributed, 'get_rank', lambda: rank)
    args = SimpleNamespace(height=32, width=16, augment='pad-crop', random_erasing=0.5, clip_train=False,
                           train_batch=8, num_instances=4, seed=7, workers=workers, pixel_mean=None, resize_mode='pil')
    loader = build_train_loader(args, market, video=False, triplet=triplet, use_gpu=False)
    batches = []
    for epoch in epochs:
        loader.sampler.set_epoch(epoch)
        batches.append([(imgs, pids) for imgs, pids, _ in loader])
    return batches


@pytest.mark.parametrize('triplet', [False, True])
def test_augmentations_follow_the_sampler_not_the_workers(market, monkeypatch, triplet):
    """Each sample's augmentation comes from its sampler seed: the same batches with 0 or 2
    persistent workers, and two ranks' shares together are the single-process batch, pixel for
    pixel; the global random stream is left alone."""
    state = torch.get_rng_state()
    single = epoch_batches(market, monkeypatch, triplet, workers=0)
    assert torch.equal(torch.get_rng_state(), state)
    workers = epoch_batches(market, monkeypatch, triplet, workers=2)
    ranks = [epoch_batches(market, monkeypatch, triplet, workers=0, world_size=2, rank=r) for r in range(2)]
    for epoch in range(2):
        assert len(single[epoch]) == len(workers[epoch]) == len(ranks[0][epoch]) > 1
        for (imgs, pids), (w_imgs, w_pids), (r0_imgs, r0_pids), (r1_imgs, r1_pids) in zip(
                single[epoch], workers[epoch], ranks[0][epoch], ranks[1][epoch]):
            assert torch.equal(imgs, w_imgs) and torch.equal(pids, w_pids)
            assert torch.equal(imgs, torch.cat([r0_imgs, r1_imgs])) and torch.equal(pids, torch.cat([r0_pids, r1_pids]))


def test_item_seed_fixes_the_augmentation(market, mars):
    """The same (index, seed) gives the same item, other seeds other augmentations (for video,
    the random frame choice too), and the caller's random stream is left as it was."""
    train, _ = build_transforms(32, 16, 'pad-crop', random_erasing=0.5)
    long_tracklet = max(range(len(mars.train)), key=lambda i: len(mars.train[i][0]))
    for dataset, index in ((ImageDataset(market.train, train), 0),
                           (VideoDataset(mars.train, seq_len=3, sample='random', transform=train), long_tracklet)):
        state = torch.get_rng_state()
        seeded = [dataset[(index, seed)][0] for seed in (11, 11, 12, 13, 14)]
        assert torch.equal(torch.get_rng_state(), state)
        assert torch.equal(seeded[0], seeded[1])
        assert len({tuple(item.flatten().tolist()) for item in seeded[1:]}) == 4


def test_tracker_resize_is_bilinear_without_antialiasing():
    """--resize-mode tracker resizes as trackers do (OpenCV's INTER_LINEAR: half-pixel centres, no
    antialiasing; checked against OpenCV itself, within one grey level, when this was written);
    pil keeps PIL's antialiased resize."""
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 256, (128, 64, 3), dtype=np.uint8)
    tracker = build_transforms(64, 32, resize='tracker')[1](Image.fromarray(crop))
    by_hand = torch.nn.functional.interpolate(torch.from_numpy(crop).permute(2, 0, 1)[None].float(), size=(64, 32),
                                              mode='bilinear', align_corners=False, antialias=False)[0]
    assert (tracker.float() - by_hand).abs().max() <= 1
    pil = build_transforms(64, 32, resize='pil')[1](Image.fromarray(crop))
    assert torch.equal(pil, torch.from_numpy(np.asarray(Image.fromarray(crop).resize((32, 64), Image.BILINEAR))).permute(2, 0, 1))
    assert (pil.float() - by_hand).abs().max() > 20  # antialiasing averages the texture away
    for augment in ('translate', 'pad-crop', 'flip'):
        image = build_transforms(64, 32, augment, 0.5, resize='tracker')[0](Image.fromarray(crop))
        assert image.dtype == torch.uint8 and image.shape == (3, 64, 32)
