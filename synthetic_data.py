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
import os
import shutil
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.io import savemat

from data_manager import mars_folder

IMG_HEIGHT, IMG_WIDTH = 128, 64  # Market-1501's image size
NUM_CAMERAS = 6


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


def _colour(rng, saturation=(0.5, 1.0), value=(0.35, 1.0)):
    hue = rng.uniform(0, 6)
    s, v = rng.uniform(*saturation), rng.uniform(*value)
    c = v * s
    x = c * (1 - abs(hue % 2 - 1))
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(hue) % 6]
    return np.array(rgb) + (v - c)


def random_person(rng):
    return Person(
        shirt=_colour(rng), shirt2=_colour(rng), pattern=int(rng.integers(4)),
        trousers=_colour(rng, saturation=(0.2, 0.9), value=(0.15, 0.8)),
        hair=_colour(rng, saturation=(0.2, 0.7), value=(0.05, 0.5)),
        skin=np.array([0.9, 0.7, 0.55]) * rng.uniform(0.5, 1.0),
        bag=_colour(rng) if rng.random() < 0.5 else None,
        height=rng.uniform(0.78, 0.92), girth=rng.uniform(0.32, 0.45))


def random_camera(rng):
    clutter = []
    for _ in range(int(rng.integers(1, 4))):
        y0 = int(rng.integers(0, IMG_HEIGHT - 20))
        x0 = int(rng.integers(0, IMG_WIDTH - 10))
        clutter.append((y0, y0 + int(rng.integers(10, 50)), x0, x0 + int(rng.integers(6, 30)),
                        _colour(rng, saturation=(0, 0.4), value=(0.2, 0.8))))
    return Camera(cast=rng.uniform(0.8, 1.2, size=3), light=rng.uniform(0.7, 1.15),
                  background=(_colour(rng, (0, 0.3), (0.3, 0.9)), _colour(rng, (0, 0.3), (0.2, 0.7))),
                  clutter=clutter, scale=rng.uniform(0.85, 1.0))


def render(person, camera, rng, x_shift=0.0, y_shift=0.0, phase=0.0, mirror=False,
           crop_to=None):
    """Draw a person seen by a camera; return an (IMG_HEIGHT, IMG_WIDTH, 3) uint8 array.

    x_shift/y_shift move the person (fractions of the image), phase is the walking cycle,
    mirror puts the bag on the other side, crop_to keeps only a band of rows (junk boxes).
    """
    h, w = IMG_HEIGHT, IMG_WIDTH
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    top, bottom = camera.background
    img = top + (bottom - top) * (yy / h)[..., None]
    for y0, y1, x0, x1, colour in camera.clutter:
        img[y0:y1, x0:x1] = colour

    body_h = person.height * camera.scale * h
    body_w = person.girth * camera.scale * w
    cx = w / 2 + x_shift * w
    y_top = (h - body_h) / 2 + y_shift * h
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
    if person.bag is not None:
        side = -1 if mirror else 1
        bag = (np.abs(u - side * 0.6) <= 0.16) & (v >= 0.3) & (v < 0.5)
        img[bag] = person.bag

    if crop_to is not None:
        keep = np.zeros(h, dtype=bool)
        keep[crop_to[0]:crop_to[1]] = True
        img[~keep] = top

    img = img * camera.cast * camera.light * rng.uniform(0.9, 1.1)
    img = img + rng.normal(0, 0.03, size=img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _save(array, path):
    Image.fromarray(array).save(path, quality=90)


def _identity_views(rng, cameras_per_id, min_cameras):
    """Random distinct cameras (1-based) for one identity."""
    count = int(rng.integers(min_cameras, cameras_per_id + 1))
    return sorted(int(c) + 1 for c in rng.choice(NUM_CAMERAS, size=count, replace=False))


def make_market1501(out_dir, num_train_ids=32, num_test_ids=32, images_per_camera=(2, 4),
                    cameras_per_id=4, num_distractors=40, num_junk=20, seed=0):
    """Write out_dir/{bounding_box_train,query,bounding_box_test}/ with Market-1501 names.

    Train and test identities are disjoint, drawn from 1..1500 so train pids have gaps.
    Each test identity is seen by at least two cameras and has one query per camera; every
    other image goes to the gallery, together with distractors (0000_) and junk (-1_).
    """
    rng = np.random.default_rng(seed)
    cameras = [random_camera(rng) for _ in range(NUM_CAMERAS)]
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

    def tracklet(person, cam, num_frames, crop=False):
        """Frames of one walk across the camera: smooth drift, steady walking cycle."""
        start, drift = rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1)
        phase0, mirror = rng.uniform(0, 2 * np.pi), bool(rng.random() < 0.5)
        row = int(rng.integers(0, IMG_HEIGHT - 24))
        return [render(person, cameras[cam - 1], rng, x_shift=start + drift * t / num_frames,
                       y_shift=0.01 * np.sin(t), phase=phase0 + 0.6 * t, mirror=mirror,
                       crop_to=(row, row + 24) if crop else None)
                for t in range(num_frames)]

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
            for f, img in enumerate(tracklet(person, cam, num_frames, crop), start=1):
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--root', default='data/synthetic',
                        help='writes <root>/market1501 and <root>/mars (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--datasets', nargs='+', choices=('market1501', 'mars'),
                        default=['market1501', 'mars'])
    args = parser.parse_args()
    makers = {'market1501': make_market1501, 'mars': make_mars}
    for name in args.datasets:
        out_dir = os.path.join(args.root, name)
        if os.path.exists(out_dir):
            print(f'{out_dir} exists; leaving it as it is (delete it to regenerate)')
            continue
        # Build beside the target and rename, so an interrupted run leaves no half dataset.
        partial = out_dir + '.partial'
        shutil.rmtree(partial, ignore_errors=True)
        makers[name](partial, seed=args.seed)
        os.replace(partial, out_dir)
        print(f'Wrote synthetic {name} to {out_dir}')


if __name__ == '__main__':
    main()
