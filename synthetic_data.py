"""Generate small, learnable re-ID datasets in the exact Market-1501 and MARS on-disk layouts.

    python synthetic_data.py --root data/synthetic       # writes data/synthetic/{market1501,mars}

Each identity has a stable appearance (shirt and trouser colours, shirt pattern, hair, bag,
build); each camera changes what is seen of it (colour cast, light, background, viewpoint
scale), each image varies pose and position, and video tracklets move smoothly across
frames. Galleries also hold distractors (pid 0, a new random person each time) and junk
(pid -1, background with a fragment of a person), as the real datasets do. The same seed
gives byte-identical datasets. The files go through the same parsers as the real data.
"""
import argparse
import json
import os
import shutil
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.io import savemat

from data_manager import cuhk03_image_name, mars_folder

IMG_HEIGHT, IMG_WIDTH = 128, 64  # Market-1501's image size
NUM_CAMERAS = 6
# make_dukemtmcreid(walk=True): walks start within WALK_SPAN frames (about 4.6 hours at
# DukeMTMC's 60 fps) and images of a camera are taken within WALK_STAY frames of the arrival.
WALK_SPAN, WALK_STAY = 1_000_000, 600
# synthetic_data.py --walk: enough identities to learn the 16 transits of the ring.
WALK_SIZES = {'num_train_ids': 160, 'num_test_ids': 80, 'num_distractors': 40}


@dataclass
class Person:
    shirt: np.ndarray      # RGB in [0, 1]
    shirt2: np.ndarray     # second colour of the shirt pattern
    pattern: int           # 0 plain, 1 horizontal stripes, 2 two halves, 3 chest band
    trousers: np.ndarray
    hair: np.ndarray
    skin: np.ndarray
    bag: np.ndarray | None  # colour of a shoulder bag, or None
    height: float          # fraction of the image height
    girth: float           # fraction of the image width


@dataclass
class Camera:
    cast: np.ndarray       # per-channel gain
    light: float
    background: tuple      # (top colour, bottom colour)
    clutter: list          # [(y0, y1, x0, x1, colour)] background boxes
    scale: float


def random_colour(rng, saturation=(0.5, 1.0), value=(0.35, 1.0)):
    hue = rng.uniform(0, 6)
    s, v = rng.uniform(*saturation), rng.uniform(*value)
    c = v * s
    x = c * (1 - abs(hue % 2 - 1))
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(hue) % 6]
    return np.array(rgb) + (v - c)


def random_person(rng):
    return Person(
        shirt=random_colour(rng), shirt2=random_colour(rng), pattern=int(rng.integers(4)),
        trousers=random_colour(rng, saturation=(0.2, 0.9), value=(0.15, 0.8)),
        hair=random_colour(rng, saturation=(0.2, 0.7), value=(0.05, 0.5)),
        skin=np.array([0.9, 0.7, 0.55]) * rng.uniform(0.5, 1.0),
        bag=random_colour(rng) if rng.random() < 0.5 else None,
        height=rng.uniform(0.78, 0.92), girth=rng.uniform(0.32, 0.45))


def random_camera(rng, domain_shift=0.0):
    """A camera; domain_shift > 0 draws it from another domain (the B of an adaptation
    experiment), on top of the same camera-to-camera variation as the default domain: at
    strength 1 every camera of that domain is dimmer (light x0.6), tinted blue-green (gains
    x0.6, x1, x1.4), has coloured rather than grey backgrounds (saturation 0.3-0.6 instead of
    0-0.3) and sees persons smaller (x0.75); a strength s in between moves each of these the
    fraction s of the way (0: the default domain)."""
    clutter = []
    background_saturation = (0.3 * domain_shift, 0.3 + 0.3 * domain_shift)
    for _ in range(int(rng.integers(1, 4))):
        y0 = int(rng.integers(0, IMG_HEIGHT - 20))
        x0 = int(rng.integers(0, IMG_WIDTH - 10))
        clutter.append((y0, y0 + int(rng.integers(10, 50)), x0, x0 + int(rng.integers(6, 30)),
                        random_colour(rng, saturation=(0, 0.4), value=(0.2, 0.8))))
    camera = Camera(cast=rng.uniform(0.8, 1.2, size=3), light=rng.uniform(0.7, 1.15),
                    background=(random_colour(rng, background_saturation, (0.3, 0.9)),
                                random_colour(rng, background_saturation, (0.2, 0.7))),
                    clutter=clutter, scale=rng.uniform(0.85, 1.0))
    camera.cast = camera.cast * (1 + domain_shift * np.array([-0.4, 0.0, 0.4]))
    camera.light *= 1 - 0.4 * domain_shift
    camera.scale *= 1 - 0.25 * domain_shift
    return camera


def paint_background(camera, yy):
    """The camera's backdrop at pixel rows yy (an (H, W) grid): a vertical gradient from its
    top to its bottom colour over the image height IMG_HEIGHT, and its clutter boxes;
    returns an (H, W, 3) float array."""
    top, bottom = camera.background
    img = top + (bottom - top) * (yy / IMG_HEIGHT)[..., None]
    for y0, y1, x0, x1, colour in camera.clutter:
        img[y0:y1, x0:x1] = colour
    return img


def paint_person(img, yy, xx, person, cx, y_top, body_h, body_w, phase=0.0, mirror=False):
    """Paint a person over img ((H, W, 3) float, changed in place) whose pixel centres are at
    rows yy and columns xx ((H, W) grids, in any coordinates; img may be a window of a larger
    picture). The body axis is at column cx, the top of the head at row y_top, the feet at
    y_top + body_h; body_w is the torso width; the bag reaches 0.76 body_w from the axis.
    phase is the walking cycle, mirror puts the bag on the other side. Returns the (H, W)
    bool mask of the pixels painted."""
    v = (yy - y_top) / body_h  # 0 at the top of the head, 1 at the feet
    u = (xx - cx) / body_w     # 0 on the body axis

    head = (u * body_w / (0.11 * body_h)) ** 2 + ((v - 0.08) / 0.08) ** 2 <= 1
    hair = head & (v < 0.07)
    torso = (np.abs(u) <= 0.5) & (v >= 0.16) & (v < 0.55)
    swing = 0.12 * np.sin(phase)
    left_leg = (np.abs(u + 0.22 + swing * (v - 0.55)) <= 0.2) & (v >= 0.55) & (v <= 1.0)
    right_leg = (np.abs(u - 0.22 - swing * (v - 0.55)) <= 0.2) & (v >= 0.55) & (v <= 1.0)

    img[head] = person.skin
    img[hair] = person.hair
    shirt = np.broadcast_to(person.shirt, img.shape).copy()
    second = {0: np.zeros_like(v, dtype=bool),
              1: (np.floor((v - 0.16) / 0.06) % 2) == 1,
              2: u > 0,
              3: (v > 0.28) & (v < 0.36)}[person.pattern]
    shirt[second] = person.shirt2
    img[torso] = shirt[torso]
    img[left_leg | right_leg] = person.trousers
    painted = head | torso | left_leg | right_leg
    if person.bag is not None:
        side = -1 if mirror else 1
        bag = (np.abs(u - side * 0.6) <= 0.16) & (v >= 0.3) & (v < 0.5)
        img[bag] = person.bag
        painted |= bag
    return painted


def expose(img, camera, rng, noise=None):
    """What the camera records of a scene img ((H, W, 3) float in [0, 1]): its colour cast and
    light, a random exposure change of +-10% and sensor noise (noise: an array broadcasting to
    img, e.g. drawn once for many frames; default fresh Gaussian noise of std 0.03); an
    (H, W, 3) uint8 array."""
    img = img * camera.cast * camera.light * rng.uniform(0.9, 1.1)
    img = img + (rng.normal(0, 0.03, size=img.shape) if noise is None else noise)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def render(person, camera, rng, x_shift=0.0, y_shift=0.0, phase=0.0, mirror=False,
           crop_to=None):
    """Draw a person seen by a camera; return an (IMG_HEIGHT, IMG_WIDTH, 3) uint8 array.

    x_shift/y_shift move the person (fractions of the image), phase is the walking cycle,
    mirror puts the bag on the other side, crop_to keeps only a band of rows (junk boxes).
    """
    h, w = IMG_HEIGHT, IMG_WIDTH
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = paint_background(camera, yy)
    body_h = person.height * camera.scale * h
    body_w = person.girth * camera.scale * w
    paint_person(img, yy, xx, person, cx=w / 2 + x_shift * w, y_top=(h - body_h) / 2 + y_shift * h,
                 body_h=body_h, body_w=body_w, phase=phase, mirror=mirror)
    if crop_to is not None:
        keep = np.zeros(h, dtype=bool)
        keep[crop_to[0]:crop_to[1]] = True
        img[~keep] = camera.background[0]
    return expose(img, camera, rng)


def _save(array, path):
    Image.fromarray(array).save(path, quality=90)


def snapshot(person, camera, rng):
    """One still of a person: random position, pose and side."""
    return render(person, camera, rng, x_shift=rng.uniform(-0.08, 0.08), y_shift=rng.uniform(-0.04, 0.04),
                  phase=rng.uniform(0, 2 * np.pi), mirror=bool(rng.random() < 0.5))


def walk(person, camera, rng, num_frames, crop=False):
    """Frames of one walk across the camera: smooth drift, steady walking cycle."""
    start, drift = rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1)
    phase0, mirror = rng.uniform(0, 2 * np.pi), bool(rng.random() < 0.5)
    row = int(rng.integers(0, IMG_HEIGHT - 24))
    return [render(person, camera, rng, x_shift=start + drift * t / num_frames,
                   y_shift=0.01 * np.sin(t), phase=phase0 + 0.6 * t, mirror=mirror,
                   crop_to=(row, row + 24) if crop else None)
            for t in range(num_frames)]


def _identity_views(rng, cameras_per_id, min_cameras):
    """Random distinct cameras (1-based) for one identity."""
    count = int(rng.integers(min_cameras, cameras_per_id + 1))
    return sorted(int(c) + 1 for c in rng.choice(NUM_CAMERAS, size=count, replace=False))


def make_market1501(out_dir, num_train_ids=32, num_test_ids=32, images_per_camera=(2, 4),
                    cameras_per_id=4, num_distractors=40, num_junk=20, seed=0, domain_shift=0.0):
    """Write out_dir/{bounding_box_train,query,bounding_box_test}/ with Market-1501 names.
    domain_shift: strength of the other domain's cameras (random_camera; 0 none, 1 the full
    shift), for adaptation experiments.

    Train and test identities are disjoint, drawn from 1..1500 so train pids have gaps.
    Each test identity is seen by at least two cameras and has one query per camera; every
    other image goes to the gallery, together with distractors (0000_) and junk (-1_).
    """
    rng = np.random.default_rng(seed)
    cameras = [random_camera(rng, domain_shift) for _ in range(NUM_CAMERAS)]
    pids = sorted(int(p) + 1 for p in rng.choice(1500, size=num_train_ids + num_test_ids, replace=False))
    order = rng.permutation(len(pids))
    train_pids = sorted(pids[i] for i in order[:num_train_ids])
    test_pids = sorted(pids[i] for i in order[num_train_ids:])
    folders = {s: os.path.join(out_dir, s) for s in ('bounding_box_train', 'query', 'bounding_box_test')}
    for folder in folders.values():
        os.makedirs(folder, exist_ok=True)
    frame = iter(range(1, 10**6))

    def name(pid, cam):
        return f'{pid:04d}_c{cam}s1_{next(frame):06d}_00.jpg' if pid >= 0 else \
            f'-1_c{cam}s1_{next(frame):06d}_00.jpg'

    def shoot(person, cam, pid, folder, **kwargs):
        img = render(person, cameras[cam - 1], rng, x_shift=rng.uniform(-0.08, 0.08),
                     y_shift=rng.uniform(-0.04, 0.04), phase=rng.uniform(0, 2 * np.pi),
                     mirror=bool(rng.random() < 0.5), **kwargs)
        _save(img, os.path.join(folders[folder], name(pid, cam)))

    for pid in train_pids:
        person = random_person(rng)
        for cam in _identity_views(rng, cameras_per_id, 2):
            for _ in range(int(rng.integers(images_per_camera[0], images_per_camera[1] + 1))):
                shoot(person, cam, pid, 'bounding_box_train')
    for pid in test_pids:
        person = random_person(rng)
        for cam in _identity_views(rng, cameras_per_id, 2):
            shoot(person, cam, pid, 'query')
            for _ in range(int(rng.integers(images_per_camera[0], images_per_camera[1] + 1))):
                shoot(person, cam, pid, 'bounding_box_test')
    for _ in range(num_distractors):
        shoot(random_person(rng), int(rng.integers(1, NUM_CAMERAS + 1)), 0, 'bounding_box_test')
    for _ in range(num_junk):
        row = int(rng.integers(0, IMG_HEIGHT - 24))
        shoot(random_person(rng), int(rng.integers(1, NUM_CAMERAS + 1)), -1, 'bounding_box_test',
              crop_to=(row, row + 24))


def make_mars(out_dir, num_train_ids=24, num_test_ids=24, frames=(6, 24), cameras_per_id=3,
              num_distractors=8, num_junk=4, seed=0):
    """Write out_dir/{info,bbox_train,bbox_test}/ in the official MARS layout.

    info/ holds tracks_{train,test}_info.mat (int32 rows start, end, pid, camera; 1-based
    inclusive line numbers into the name files), query_IDX.mat (uint16, 1-based test rows)
    and {train,test}_name.txt with CRLF line ends, as the official files have. Each identity
    has one tracklet per camera, at least two cameras; in test, its first tracklet is the
    query and the others (other cameras) are gallery. Rows are in folder order ('00-1' junk,
    '0000' distractors, then pids), which is the order of the real tables.
    """
    rng = np.random.default_rng(seed + 1)
    cameras = [random_camera(rng) for _ in range(NUM_CAMERAS)]
    pids = sorted(int(p) + 1 for p in rng.choice(1500, size=num_train_ids + num_test_ids, replace=False))
    order = rng.permutation(len(pids))
    split_pids = {'train': sorted(pids[i] for i in order[:num_train_ids]),
                  'test': sorted(pids[i] for i in order[num_train_ids:])}
    info = os.path.join(out_dir, 'info')
    os.makedirs(info, exist_ok=True)

    for split, home in (('train', 'bbox_train'), ('test', 'bbox_test')):
        tracks = []  # (pid, cam, frames)
        if split == 'test':
            for _ in range(num_junk):
                tracks.append((-1, int(rng.integers(1, NUM_CAMERAS + 1)), 'junk'))
            for _ in range(num_distractors):
                tracks.append((0, int(rng.integers(1, NUM_CAMERAS + 1)), 'distractor'))
        for pid in split_pids[split]:
            person = random_person(rng)
            for cam in _identity_views(rng, cameras_per_id, 2):
                tracks.append((pid, cam, person))
        tracks.sort(key=lambda t: (mars_folder(t[0]), t[1]))

        names, rows, query_rows, next_tracklet = [], [], [], {}
        for row_index, (pid, cam, person) in enumerate(tracks):
            num_frames = int(rng.integers(frames[0], frames[1] + 1))
            crop = isinstance(person, str) and person == 'junk'
            if isinstance(person, str):
                person = random_person(rng)
            folder = mars_folder(pid)
            os.makedirs(os.path.join(out_dir, home, folder), exist_ok=True)
            t_index = next_tracklet[pid] = next_tracklet.get(pid, 0) + 1
            rows.append((len(names) + 1, len(names) + num_frames, pid, cam))
            for f, img in enumerate(walk(person, cameras[cam - 1], rng, num_frames, crop), start=1):
                img_name = f'{folder}C{cam}T{t_index:04d}F{f:03d}.jpg'
                _save(img, os.path.join(out_dir, home, folder, img_name))
                names.append(img_name)
            if split == 'test' and pid > 0 and t_index == 1:
                query_rows.append(row_index + 1)
        with open(os.path.join(info, f'{split}_name.txt'), 'w', newline='') as f:
            f.write(''.join(n + '\r\n' for n in names))
        key = f'track_{split}_info'
        savemat(os.path.join(info, f'tracks_{split}_info.mat'), {key: np.array(rows, dtype=np.int32)})
        if split == 'test':
            savemat(os.path.join(info, 'query_IDX.mat'),
                    {'query_IDX': np.array([query_rows], dtype=np.uint16)})


def _half(array):
    """A smaller copy of a rendered image, to keep generated trees light."""
    return np.ascontiguousarray(array[::2, ::2])


def _write(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _save(array, path)


def make_dukemtmcreid(out_dir, num_train_ids=4, num_test_ids=4, num_distractors=2, seed=0, walk=False):
    """Write out_dir/DukeMTMC-reID/{bounding_box_train,query,bounding_box_test}/ (out_dir is
    <root>/dukemtmc-reid) with names like 0001_c2_f0046182.jpg, cameras 1-8.

    pids are drawn from 1..7140 as in the real data (so their set is not in ascending order);
    each test id has one query in each of two cameras and 1-2 gallery images per camera;
    distractors are ordinary ids found only in the gallery. No junk.

    walk: the frame numbers follow a camera-to-camera walk (for --st): the cameras form a ring
    c1 - c2 - ... - c8 - c1; each identity arrives in a random camera at a random frame of
    WALK_SPAN and walks on to a neighbour, either way round, arriving that ordered pair's
    transit time later (3,000-30,000 frames, fixed per pair, +-5% per walk); its images in a
    camera are taken within WALK_STAY frames of its arrival. The images are the same as
    without walk; only the cameras and frame numbers change. Without walk, frames just count up.
    """
    rng = np.random.default_rng(seed + 2)
    cameras = [random_camera(rng) for _ in range(8)]
    pids = [int(p) + 1 for p in rng.choice(7140, num_train_ids + num_test_ids + num_distractors, replace=False)]
    base = os.path.join(out_dir, 'DukeMTMC-reID')
    frame = iter(range(40000, 10**7, 7))
    clock = np.random.default_rng(seed + 3)  # the walk's own stream, so the images do not change
    transit = clock.uniform(3000, 30000, size=(8, 8))

    def shoot(person, pid, cam, folder, arrival=None):
        number = next(frame) if arrival is None else int(arrival + clock.uniform(0, WALK_STAY))
        while os.path.exists(path := os.path.join(base, folder, f'{pid:04d}_c{cam}_f{number:07d}.jpg')):
            number += 1  # two images of one walk drawn at the same frame
        _write(path, _half(snapshot(person, cameras[cam - 1], rng)))

    for i, pid in enumerate(pids):
        person = random_person(rng)
        cams = sorted(int(c) + 1 for c in rng.choice(8, 2, replace=False))
        arrival = {}
        if walk:
            first = int(clock.integers(8))
            second = (first + (1 if clock.random() < 0.5 else -1)) % 8
            start = clock.uniform(0, WALK_SPAN)
            cams = [first + 1, second + 1]
            arrival = {first + 1: start, second + 1: start + transit[first, second] * clock.uniform(0.95, 1.05)}
        for cam in cams:
            if i < num_train_ids:
                shoot(person, pid, cam, 'bounding_box_train', arrival.get(cam))
                shoot(person, pid, cam, 'bounding_box_train', arrival.get(cam))
                continue
            if i < num_train_ids + num_test_ids:
                shoot(person, pid, cam, 'query', arrival.get(cam))
            for _ in range(int(rng.integers(1, 3))):
                shoot(person, pid, cam, 'bounding_box_test', arrival.get(cam))


def _write_mat_v73(path, cells, testsets):
    """Write a MATLAB v7.3 (HDF5) file shaped like cuhk-03.mat.

    cells: {kind: [pair][person][slot] -> (H, W, 3) uint8 image or None}; testsets: list of
    (k, 2) [pair, person] arrays. MATLAB stores an (m x n) array as HDF5 (n, m), cells as
    object references into '#refs#', and an empty cell as the (2,) uint64 [0 0] with
    MATLAB_empty set.
    """
    import h5py
    with h5py.File(path, 'w', userblock_size=512) as f:
        refs = f.create_group('#refs#')

        def put(data, matlab_class, empty=False):
            dataset = refs.create_dataset(str(len(refs)), data=data)
            dataset.attrs['MATLAB_class'] = np.bytes_(matlab_class)
            if empty:
                dataset.attrs['MATLAB_empty'] = np.uint8(1)
            return dataset.ref

        def top(name, references):
            dataset = f.create_dataset(name, data=np.array([references], dtype=h5py.ref_dtype))
            dataset.attrs['MATLAB_class'] = np.bytes_('cell')

        for kind, pairs in cells.items():
            pair_refs = []
            for persons in pairs:
                grid = np.empty((10, len(persons)), dtype=h5py.ref_dtype)
                for p, slots in enumerate(persons):
                    for s, img in enumerate(slots):
                        grid[s, p] = (put(np.zeros(2, np.uint64), 'double', empty=True) if img is None
                                      else put(img.T, 'uint8'))
                pair_refs.append(put(grid, 'cell'))
            top(kind, pair_refs)
        top('testsets', [put(np.asarray(t, np.float64).T, 'double') for t in testsets])
    header = b'MATLAB 7.3 MAT-file, Platform: GLNXA64, written by synthetic_data.py HDF5 schema 1.00 .'
    with open(path, 'r+b') as f:
        f.write(header.ljust(116) + b'\x00' * 8 + b'\x00\x02IM')


def make_cuhk03(out_dir, persons_per_pair=(5, 4, 3, 2, 2), num_test_ids=4, num_testsets=3,
                testset_size=3, seed=0):
    """Write out_dir/cuhk03_release/cuhk-03.mat (MATLAB v7.3, written with h5py) and the new-protocol
    files out_dir/cuhk03_new_protocol_config_{detected,labeled}.mat (MATLAB 5.0, scipy).

    Each person fills a prefix of the slots of each view (1-5 view 1, 6-10 view 2); the last
    person of pair 1 has labeled images in view 1 only, as labeled person 3_068 of the real
    file. New protocol: num_test_ids persons (seen in both views) are test, each with one query
    per view and the rest of its images in the gallery; the others are train. testsets holds
    num_testsets classic splits of testset_size [pair, person] rows.
    """
    rng = np.random.default_rng(seed + 3)
    cameras = [random_camera(rng) for _ in range(10)]
    one_view = (1, persons_per_pair[0])
    cells, lists = {}, {}
    for kind in ('detected', 'labeled'):
        pairs, names = [], []
        for pair, count in enumerate(persons_per_pair, start=1):
            persons = []
            for person in range(1, count + 1):
                look = random_person(rng)
                slots = [None] * 10
                for view in (1, 2):
                    if view == 2 and kind == 'labeled' and (pair, person) == one_view:
                        continue
                    for k in range(int(rng.integers(1, 4))):
                        slot = 5 * (view - 1) + k + 1
                        slots[slot - 1] = _half(snapshot(look, cameras[2 * (pair - 1) + view - 1], rng))
                        names.append(cuhk03_image_name(pair, person, slot))
                persons.append(slots)
            pairs.append(persons)
        cells[kind], lists[kind] = pairs, names
    offsets = np.cumsum((0,) + tuple(persons_per_pair))
    both_views = [int(offsets[pair - 1] + person) for pair, count in enumerate(persons_per_pair, start=1)
                  for person in range(1, count + 1) if (pair, person) != one_view]
    test_ids = set(rng.choice(both_views, num_test_ids, replace=False).tolist())
    pool = [(pair, person) for pair, count in enumerate(persons_per_pair[:3], start=1)
            for person in range(1, count + 1)]
    testsets = [np.array(sorted(pool[i] for i in rng.choice(len(pool), testset_size, replace=False)))
                for _ in range(num_testsets)]
    os.makedirs(os.path.join(out_dir, 'cuhk03_release'), exist_ok=True)
    _write_mat_v73(os.path.join(out_dir, 'cuhk03_release', 'cuhk-03.mat'), cells, testsets)
    for kind, names in lists.items():
        parsed = [tuple(int(v) for v in n[:-4].split('_')) for n in names]  # pair, person, view, slot
        labels = [int(offsets[pair - 1] + person) for pair, person, _, _ in parsed]
        train, query, gallery, seen = [], [], [], set()
        for row, (label, (_, _, view, _)) in enumerate(zip(labels, parsed), start=1):
            if label not in test_ids:
                train.append(row)
            elif (label, view) not in seen:
                seen.add((label, view))
                query.append(row)
            else:
                gallery.append(row)
        filelist = np.empty((len(names), 1), dtype=object)
        filelist[:, 0] = names
        column = lambda values, dtype: np.array(values, dtype=dtype).reshape(-1, 1)  # noqa: E731
        savemat(os.path.join(out_dir, f'cuhk03_new_protocol_config_{kind}.mat'), {
            'filelist': filelist, 'labels': column(labels, np.uint16),
            'camId': column([view for _, _, view, _ in parsed], np.uint8),
            'train_idx': column(train, np.uint16), 'query_idx': column(query, np.uint16),
            'gallery_idx': column(gallery, np.uint16)})


def make_msmt17(out_dir, layout='v1', num_train_ids=4, num_test_ids=4, seed=0):
    """Write MSMT17 as a release unpacks: out_dir/MSMT17_V1/{train,test}/ (layout 'v1'),
    out_dir/MSMT17_V2/{mask_train_v2,mask_test_v2}/ ('v2') or out_dir/{train,test}/ ('flat'),
    each with list_{train,val,query,gallery}.txt of lines '<pid4>/<name>.jpg <pid>'.

    Names look like 0000_000_01_0303morning_0015_0.jpg (pid, index, camera 01-15, time,
    frame, a number; some end in _ex). Train and test pids both count from 0 and are
    different people; val holds one more image of each train id; lists are grouped by pid
    with the images of a pid in random order. Cameras 1 and 15 are always used.
    """
    rng = np.random.default_rng(seed + 4)
    cameras = [random_camera(rng) for _ in range(15)]
    version, train_dir, test_dir = {'v1': ('MSMT17_V1', 'train', 'test'),
                                    'v2': ('MSMT17_V2', 'mask_train_v2', 'mask_test_v2'),
                                    'flat': ('', 'train', 'test')}[layout]
    base = os.path.join(out_dir, version)
    lists = {'train': [], 'val': [], 'query': [], 'gallery': []}
    for split, image_dir, count in (('train', train_dir, num_train_ids), ('test', test_dir, num_test_ids)):
        for pid in range(count):
            person = random_person(rng)
            cams = [1, 15] if pid == 0 else sorted(int(c) + 1 for c in rng.choice(15, 2, replace=False))
            shots = [(cam, which) for cam in cams for which in
                     (('train', 'train', 'val') if split == 'train' else ('query', 'gallery', 'gallery'))]
            for index in rng.permutation(len(shots)):
                cam, which = shots[index]
                name = f'{pid:04d}_{index:03d}_{cam:02d}_0303morning_{int(rng.integers(1, 9999)):04d}_0' \
                       f'{"_ex" if rng.random() < 0.3 else ""}.jpg'
                _write(os.path.join(base, image_dir, f'{pid:04d}', name), _half(snapshot(person, cameras[cam - 1], rng)))
                lists[which].append(f'{pid:04d}/{name} {pid}\n')
    for which, lines in lists.items():
        with open(os.path.join(base, f'list_{which}.txt'), 'w') as f:
            f.writelines(lines)


def _persons_on_two_cameras(rng, numbers, cameras, frames, sequence_dir, name_of):
    """Write one walk per person number and camera folder under sequence_dir."""
    for number in numbers:
        person = random_person(rng)
        for cam_index, cam_folder in enumerate(cameras):
            for k, img in enumerate(walk(person, random_camera(rng), rng, int(rng.integers(frames[0], frames[1] + 1)))):
                path = name_of(cam_folder, number, k)
                _write(os.path.join(sequence_dir, path), _half(img))


def make_ilidsvid(out_dir, num_persons=6, num_splits=2, frames=(2, 4), seed=0):
    """Write out_dir/i-LIDS-VID/sequences/cam{1,2}/personNNN/cam<c>_personNNN_<FFFFF>.png and
    out_dir/train-test people splits/train_test_splits_ilidsvid.mat (ls_set (num_splits,
    num_persons) uint16: 1-based indices into the sorted person folders, first half test).

    Person numbers have gaps (as person001-person319 hold 300 persons), so an index is not a
    person number; frame numbers start anywhere in each sequence.
    """
    rng = np.random.default_rng(seed + 5)
    numbers = sorted(int(n) + 1 for n in rng.choice(3 * num_persons, num_persons, replace=False))
    starts = {}

    def name_of(cam, number, k):
        start = starts.setdefault((cam, number), int(rng.integers(1, 3000)))
        return f'{cam}/person{number:03d}/{cam}_person{number:03d}_{start + k:05d}.png'
    _persons_on_two_cameras(rng, numbers, ('cam1', 'cam2'), frames,
                            os.path.join(out_dir, 'i-LIDS-VID', 'sequences'), name_of)
    split_dir = os.path.join(out_dir, 'train-test people splits')
    os.makedirs(split_dir, exist_ok=True)
    ls_set = np.array([rng.permutation(num_persons) + 1 for _ in range(num_splits)], dtype=np.uint16)
    savemat(os.path.join(split_dir, 'train_test_splits_ilidsvid.mat'), {'ls_set': ls_set})


def make_prid2011(out_dir, num_persons=6, num_splits=2, frames=(2, 4), seed=0):
    """Write out_dir/prid_2011/multi_shot/cam_{a,b}/person_NNNN/NNNN.png and out_dir/splits_prid2011.json
    (num_splits of {"train": [...], "test": [...]}, half the persons each).

    Persons 1..num_persons+1 are seen by both cameras, but the last of them is in no split
    (as the real persons with under 27 frames); persons seen by one camera only follow.
    """
    rng = np.random.default_rng(seed + 6)
    sequence_dir = os.path.join(out_dir, 'prid_2011', 'multi_shot')
    name_of = lambda cam, number, k: f'{cam}/person_{number:04d}/{k + 1:04d}.png'  # noqa: E731
    _persons_on_two_cameras(rng, range(1, num_persons + 2), ('cam_a', 'cam_b'), frames, sequence_dir, name_of)
    _persons_on_two_cameras(rng, [num_persons + 2], ('cam_a',), frames, sequence_dir, name_of)
    _persons_on_two_cameras(rng, [num_persons + 2, num_persons + 3], ('cam_b',), frames, sequence_dir, name_of)
    splits = []
    for _ in range(num_splits):
        order = [f'person_{n + 1:04d}' for n in rng.permutation(num_persons)]
        half = num_persons // 2
        splits.append({'train': sorted(order[half:]), 'test': sorted(order[:half])})
    with open(os.path.join(out_dir, 'splits_prid2011.json'), 'w') as f:
        json.dump(splits, f)


def make_dukemtmcvidreid(out_dir, num_train_ids=3, num_test_ids=3, num_distractors=2, frames=(2, 4), seed=0):
    """Write out_dir/DukeMTMC-VideoReID/{train,query,gallery}/<pid4>/<tracklet4>/ (out_dir is
    <root>/dukemtmc-vidreid) with frames like 0001_C6_F0001_X30823.jpg.

    Each id walks past two of 8 cameras; a test id's first tracklet is copied to query/ with
    the same folders and names, and also stays in gallery/, as in the real release. Some
    tracklets start at F0002 and some frames carry D instead of X, as the release describes.
    """
    rng = np.random.default_rng(seed + 7)
    cameras = [random_camera(rng) for _ in range(8)]
    base = os.path.join(out_dir, 'DukeMTMC-VideoReID')
    pids = sorted(int(p) + 1 for p in rng.choice(7140, num_train_ids + num_test_ids + num_distractors, replace=False))
    roles = ['train'] * num_train_ids + ['test'] * num_test_ids + ['distractor'] * num_distractors
    roles = [roles[i] for i in rng.permutation(len(roles))]
    tracklet_no = iter(range(1, 10000))
    for pid, role in zip(pids, roles):
        person = random_person(rng)
        for t, cam in enumerate(sorted(int(c) + 1 for c in rng.choice(8, 2, replace=False))):
            folder = f'{pid:04d}/{next(tracklet_no):04d}'
            first, x0 = int(rng.integers(1, 3)), int(rng.integers(1, 50000))
            imgs = walk(person, cameras[cam - 1], rng, int(rng.integers(frames[0], frames[1] + 1)))
            for k, img in enumerate(imgs):
                name = f'{pid:04d}_C{cam}_F{first + k:04d}_{"D" if rng.random() < 0.2 else "X"}{x0 + 12 * k}.jpg'
                splits = (['train'] if role == 'train' else
                          ['query', 'gallery'] if role == 'test' and t == 0 else ['gallery'])
                for split in splits:
                    _write(os.path.join(base, split, folder, name), _half(img))


IDENTITY_NAMES = ('alice', 'bob', 'carol', 'dave', 'erin', 'frank', 'grace', 'heidi', 'ivan', 'judy',
                  'mallory', 'niaj', 'olivia', 'peggy', 'rupert', 'sybil', 'trent', 'victor', 'walter')


def _folder_tree(out_dir, video, with_cameras, num_train_ids, num_test_ids, train_only, frames, seed):
    """Write <out_dir>/{train,query,gallery}/<identity>/... for make_image_folder / make_video_folder."""
    if with_cameras not in ('folder', 'name', None):
        raise ValueError(f"with_cameras must be 'folder', 'name' or None, not {with_cameras!r}")
    rng = np.random.default_rng(seed + 8)
    cameras = [random_camera(rng) for _ in range(3)]
    identities = [f'{IDENTITY_NAMES[i % len(IDENTITY_NAMES)]}-{i}' for i in range(num_train_ids + num_test_ids + 1)]
    extensions = ('.jpg', '.png', '.JPG')

    def sample_path(identity, cam, index):
        if with_cameras == 'folder':
            return os.path.join(identity, f'cam{cam}', f'{index:03d}')
        return os.path.join(identity, f'{index:03d}' + (f'_c{cam}' if with_cameras == 'name' else ''))

    def write(split, identity, cam, index, person):
        """Write one image or tracklet; return its path relative to the split folder."""
        path = sample_path(identity, cam, index)
        if video:
            for k, img in enumerate(walk(person, cameras[cam - 1], rng, int(rng.integers(frames[0], frames[1] + 1)))):
                _write(os.path.join(out_dir, split, path, f'{k:04d}.jpg'), _half(img))
            return path
        path += extensions[index % len(extensions)]
        _write(os.path.join(out_dir, split, path), _half(snapshot(person, cameras[cam - 1], rng)))
        return path

    for i, identity in enumerate(identities):
        person = random_person(rng)
        if i < num_train_ids:
            for index, cam in enumerate((1, 2, 3)):
                write('train', identity, cam, index, person)
        elif not train_only and i < num_train_ids + num_test_ids:
            path = write('query', identity, 1, 0, person)
            copy = shutil.copytree if video else shutil.copyfile  # the query is also in the gallery
            os.makedirs(os.path.dirname(os.path.join(out_dir, 'gallery', path)), exist_ok=True)
            copy(os.path.join(out_dir, 'query', path), os.path.join(out_dir, 'gallery', path))
            for index, cam in enumerate((2, 3), start=1):
                write('gallery', identity, cam, index, person)
        elif not train_only:
            write('gallery', identity, 2, 0, person)  # an identity found only in the gallery


def make_image_folder(out_dir, with_cameras='folder', num_train_ids=3, num_test_ids=3, train_only=False, seed=0):
    """Write an image_folder dataset: out_dir/{train,query,gallery}/<identity>/<image>.

    Identity folders are names such as 'alice-0'; images use mixed extensions (.jpg, .png,
    .JPG). with_cameras: 'folder' puts images in <identity>/cam<k>/, 'name' writes the camera
    as a token (000_c1.jpg), None writes no camera at all. Each test identity's query image
    is also in the gallery under the same path, beside images from two other cameras; one
    identity is found only in the gallery. train_only writes train/ alone.
    """
    _folder_tree(out_dir, False, with_cameras, num_train_ids, num_test_ids, train_only, None, seed)


def make_video_folder(out_dir, with_cameras='folder', num_train_ids=3, num_test_ids=3, train_only=False,
                      frames=(2, 4), seed=0):
    """Write a video_folder dataset: out_dir/{train,query,gallery}/<identity>/<tracklet>/<frames>,
    laid out as make_image_folder lays out images, with the camera at the tracklet level
    (<identity>/cam<k>/<tracklet>/ or a tracklet folder named 000_c1)."""
    _folder_tree(out_dir, True, with_cameras, num_train_ids, num_test_ids, train_only, frames, seed)


# -d name: (folder under --root, writer)
MAKERS = {'market1501': ('market1501', make_market1501), 'mars': ('mars', make_mars),
          'dukemtmcreid': ('dukemtmc-reid', make_dukemtmcreid), 'cuhk03': ('cuhk03', make_cuhk03),
          'msmt17': ('msmt17', make_msmt17), 'ilidsvid': ('ilids-vid', make_ilidsvid),
          'prid2011': ('prid2011', make_prid2011), 'dukemtmcvidreid': ('dukemtmc-vidreid', make_dukemtmcvidreid),
          'image_folder': ('image_folder', make_image_folder), 'video_folder': ('video_folder', make_video_folder)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--root', default='data/synthetic',
                        help='writes <root>/<dataset folder>, e.g. <root>/market1501 (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--domain-shift', type=float, nargs='?', const=1.0, default=0.0, metavar='STRENGTH',
                        help='market1501 only: cameras of another domain (dim, tinted, busy backgrounds, smaller '
                             'persons), to train on one domain and adapt to the other; STRENGTH from 0 (none) to 1 '
                             '(the full shift, the default when the flag is given alone) scales every change')
    parser.add_argument('--walk', action='store_true',
                        help='dukemtmcreid only: frame numbers follow walks between cameras, for --st, with '
                             f'{WALK_SIZES["num_train_ids"]} train, {WALK_SIZES["num_test_ids"]} test and '
                             f'{WALK_SIZES["num_distractors"]} distractor identities')
    parser.add_argument('--datasets', nargs='+', choices=list(MAKERS), default=['market1501', 'mars'],
                        help='image_folder and video_folder go to <root>/image_folder and '
                             '<root>/video_folder: pass that folder as --root to train on them')
    args = parser.parse_args()
    if not 0 <= args.domain_shift <= 1:
        parser.error(f'--domain-shift {args.domain_shift}: the strength must be in [0, 1] (1: the full shift)')
    for name in args.datasets:
        folder, maker = MAKERS[name]
        out_dir = os.path.join(args.root, folder)
        if os.path.exists(out_dir):
            print(f'{out_dir} exists; leaving it as it is (delete it to regenerate)')
            continue
        # Build beside the target and rename, so an interrupted run leaves no half dataset.
        partial = out_dir + '.partial'
        shutil.rmtree(partial, ignore_errors=True)
        options = {'domain_shift': args.domain_shift} if args.domain_shift and name == 'market1501' else {}
        if args.walk and name == 'dukemtmcreid':
            options = {'walk': True, **WALK_SIZES}
        maker(partial, seed=args.seed, **options)
        os.replace(partial, out_dir)
        print(f'Wrote synthetic {name} to {out_dir}')


if __name__ == '__main__':
    main()
