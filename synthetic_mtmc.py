"""Generate small multi-camera scenes (MOTChallenge layout, global-id ground truth, a simulated
single-camera tracker's output) and a re-ID training set of other people seen by the same cameras.

    python synthetic_mtmc.py --out data/mtmc_scene --train-set data/mtmc_train
    python synthetic_mtmc.py --out data/mtmc_async --unsynchronised --cameras 5 --people 16 --seconds 90

A scene is a few cameras on a camera graph. Each camera has its own backdrop (gradient, clutter),
colour cast and light, and a perspective: a person's box is about 45-150 px tall as they walk from the
far end of the floor to the near one. People (synthetic_data.py's renderer: shirt, pattern,
trousers, hair, bag, build) walk across a camera from one side to the other and on to a
neighbouring camera, along a random route, arriving after a transit time drawn from that camera
pair's window. A pair of cameras is one of three kinds: 'overlap' (the views share ground: the
person enters the next view 0.5-3.5 s before leaving this one, a negative transit), 'short' (a few
seconds) or 'long' (a corridor: tens of seconds). Some people are seen by one camera only; some
pairs of people look nearly the same (look-alikes); some people cross another person in a camera,
so boxes overlap and one hides the other.

Layout written under --out (SCENE):
    SCENE/<camera>/img1/000001.jpg ...   frames, numbered from 1 per camera (cameras c001, c002, ...)
    SCENE/<camera>/seqinfo.ini           [Sequence] name, imDir, frameRate, seqLength, imWidth,
                                         imHeight, imExt
    SCENE/<camera>/gt/gt.txt             frame,id,left,top,width,height,1,1,visibility: GLOBAL ids
                                         (one per person over all cameras); boxes in 0-based
                                         pixels, clipped to the frame; visibility is the fraction
                                         of the person not hidden by others or the frame border
    SCENE/<camera>/tracks.txt            frame,id,left,top,width,height,conf,-1,-1,-1: what a
                                         single-camera tracker leaves: LOCAL ids, a person's stay
                                         broken into several tracks at gaps, missed detections of
                                         hidden people, occasional id swaps where two people cross
                                         (the track goes on with the other person), jittered boxes
    SCENE/transitions_true.json          the camera graph: per allowed ordered pair its transit
                                         window in seconds and whether the views overlap
    SCENE/scene.json                     what was generated: cameras (offset, frames), each
                                         person's stays, look-alike pairs, crossings and swaps
    SCENE/cam_timestamp.txt              with --unsynchronised only: 'c001 0.000' per line, the
                                         scene-clock time in seconds of each camera's frame 1
The scene clock: time = (frame - 1) / fps + offset(camera). A transit is the enter time of a
person's stay in the next camera minus the exit time (last frame) of their stay in this one.

--train-set DIR writes an image_folder re-ID dataset of OTHER people drawn by the same renderer
under the same cameras (same --seed and --cameras): DIR/{train,query,gallery}/<id>/c00K_NNNN.jpg,
crops cut as a tracker cuts them, the camera in the name (the default --camera-pattern 'c(\\d+)'),
so that a briefly trained model (train_img_model_xent_htri.py -d image_folder --root DIR) learns
this appearance space. The same seed gives the same files.
"""
import argparse
import configparser
import contextlib
import json
import math
import os
import shutil
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from synthetic_data import (
    IMG_HEIGHT,
    Camera,
    Person,
    expose,
    paint_background,
    paint_person,
    random_camera,
    random_colour,
    random_person,
)

FRAME_WIDTH, FRAME_HEIGHT = 320, 240
JPEG_QUALITY = 75
NOISE, NOISE_FIELDS = 0.02, 8  # sensor noise of scene frames: std, and how many fields a camera cycles through
AVERAGE_HEIGHT = 0.85       # synthetic_data.Person.height of an average person (0.78-0.92)
BOX_HALF_WIDTH = 0.8        # a box spans this many torso widths either side of the body axis (bag included)
SPEED = (0.3, 0.5)          # walking speed, person heights per second (strolling, oblique paths): a
                            # stay lasts 4 s or more, longer than any overlap, so stays begin in route order
STRIDE = 0.7                # person heights per walking cycle
# Transit windows per pair kind: (range of the window's lower bound, range of its length), seconds.
PAIR_KINDS = {'overlap': ((-3.5, -2.5), (1.5, 2.0)),
              'short': ((1.0, 3.0), (2.0, 5.0)),
              'long': ((8.0, 12.0), (6.0, 10.0))}
KIND_CYCLE = ('overlap', 'short', 'long')
# The simulated tracker.
MIN_DETECTED_VISIBILITY = 0.3  # a person hidden more than this is not detected
MISS_RATE = 0.03               # other missed detections, per box
BREAK_RATE = 0.08              # the tracker loses a person this often, per second of a stay
MAX_GAP_SECONDS = 1.0          # a track survives missed detections this long
MIN_TRACK_FRAMES = 3           # shorter pieces are never confirmed as tracks
JITTER = 0.03                  # box noise, fraction of the box size


@dataclass
class SceneCamera:
    name: str               # folder name, c001 ...
    look: Camera            # colour cast, light and backdrop colours (synthetic_data.random_camera)
    backdrop: np.ndarray    # (FRAME_HEIGHT, FRAME_WIDTH, 3) float64 in [0, 1]: gradient and clutter
    far_row: float          # foot row of the farthest walkable ground
    far_height: float       # height in pixels of an average person with feet at far_row
    near_height: float      # ... with feet on the bottom row
    offset: float = 0.0     # scene-clock time of frame 1, seconds


@dataclass
class Figure:
    """A person drawn in one frame: feet at (foot_x, foot_y) pixels, height_px tall."""
    person: Person
    foot_x: float
    foot_y: float
    height_px: float
    phase: float = 0.0
    mirror: bool = False

    def box(self):
        """(left, top, right, bottom) of the whole figure in pixels, not clipped to the frame."""
        half = BOX_HALF_WIDTH * self.height_px * self.person.girth / (2 * self.person.height)
        return self.foot_x - half, self.foot_y - self.height_px, self.foot_x + half, self.foot_y


@dataclass
class Stay:
    """One pass of a person through a camera: frames first_frame .. first_frame + len(foot) - 1."""
    person: int             # index into the scene's people (global id - 1)
    camera: int             # index into the scene's cameras
    first_frame: int
    foot: np.ndarray        # (n, 2) float foot positions (x, y) per frame
    phase: np.ndarray       # (n,) walking cycle per frame
    mirror: bool
    cut: bool               # the scene ended before the person left the view

    @property
    def last_frame(self):
        return self.first_frame + len(self.foot) - 1


def camera_name(index):
    return f'c{index + 1:03d}'


def make_camera(index, seed):
    """Camera `index` of every scene and train set of this seed (independent of how many there are)."""
    rng = np.random.default_rng([seed, 2, index])
    look = random_camera(rng)
    clutter = []
    for _ in range(int(rng.integers(3, 9))):
        y0, x0 = int(rng.integers(0, FRAME_HEIGHT - 40)), int(rng.integers(0, FRAME_WIDTH - 20))
        clutter.append((y0, y0 + int(rng.integers(20, 90)), x0, x0 + int(rng.integers(12, 70)),
                        random_colour(rng, saturation=(0, 0.4), value=(0.2, 0.8))))
    rows = np.mgrid[0:FRAME_HEIGHT, 0:FRAME_WIDTH][0].astype(np.float32)
    # paint_background spreads its gradient over synthetic_data's crop height: scale the rows to it.
    backdrop = paint_background(replace(look, clutter=clutter), rows * (IMG_HEIGHT / FRAME_HEIGHT))
    near = rng.uniform(105, 128) * look.scale / 0.925  # look.scale: 0.85-1, some cameras see people smaller
    return SceneCamera(name=camera_name(index), look=look, backdrop=backdrop,
                       far_row=rng.uniform(0.42, 0.5) * FRAME_HEIGHT, far_height=rng.uniform(0.5, 0.6) * near,
                       near_height=near)


def height_at(camera, person, foot_y):
    """Height in pixels of a person with feet at row foot_y (perspective, then the person's build)."""
    along = (foot_y - camera.far_row) / (FRAME_HEIGHT - 1 - camera.far_row)
    return (camera.far_height + (camera.near_height - camera.far_height) * along) * person.height / AVERAGE_HEIGHT


def noise_fields(rng):
    """(NOISE_FIELDS, FRAME_HEIGHT, FRAME_WIDTH, 3) float32 sensor noise for a camera's frames: drawn
    once and picked at random per frame, because fresh noise costs more than the rest of a frame."""
    return NOISE * rng.standard_normal((NOISE_FIELDS, FRAME_HEIGHT, FRAME_WIDTH, 3), dtype=np.float32)


def render_view(camera, figures, rng, noise, region=None):
    """Draw figures (farther first, so nearer ones hide them) over the camera's backdrop, as the
    camera records it. region: (top, left, bottom, right) window of the frame to draw (default
    the whole frame). Returns (image (h, w, 3) uint8 of the region, visibility (K,) float: the
    fraction of each figure's pixels seen in the whole frame, less what other figures and the
    frame border hide; only exact when the region holds the figures). noise: the camera's
    noise_fields."""
    top, left, bottom, right = region or (0, 0, FRAME_HEIGHT, FRAME_WIDTH)
    img = camera.backdrop[top:bottom, left:right].copy()
    owner = np.full(img.shape[:2], -1, np.int32)
    areas = np.zeros(len(figures))
    for k in sorted(range(len(figures)), key=lambda i: figures[i].foot_y):
        fig = figures[k]
        x0, y0, x1, y1 = fig.box()
        r0, r1 = math.floor(y0), math.ceil(y1) + 1
        c0, c1 = math.floor(x0), math.ceil(x1) + 1
        yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float32)
        canvas = np.zeros((r1 - r0, c1 - c0, 3))
        body_w = fig.height_px * fig.person.girth / (2 * fig.person.height)
        painted = paint_person(canvas, yy, xx, fig.person, cx=fig.foot_x, y_top=y0, body_h=fig.height_px,
                               body_w=body_w, phase=fig.phase, mirror=fig.mirror)
        areas[k] = painted.sum()
        # The part of the figure's canvas inside the region.
        a0, a1, b0, b1 = max(r0, top), min(r1, bottom), max(c0, left), min(c1, right)
        if a0 >= a1 or b0 >= b1:
            continue
        sub = painted[a0 - r0:a1 - r0, b0 - c0:b1 - c0]
        img[a0 - top:a1 - top, b0 - left:b1 - left][sub] = canvas[a0 - r0:a1 - r0, b0 - c0:b1 - c0][sub]
        owner[a0 - top:a1 - top, b0 - left:b1 - left][sub] = k
    seen = np.bincount(owner[owner >= 0], minlength=len(figures))
    field = noise[rng.integers(len(noise)), top:bottom, left:right]
    return expose(img, camera.look, rng, field), seen / np.maximum(areas, 1)


def clipped_box(figure):
    """The figure's box clipped to the frame, as integer (left, top, width, height); None when
    less than 40% of the box is inside (a stay starts and ends with half the box inside)."""
    x0, y0, x1, y1 = figure.box()
    left, top = max(0, round(x0)), max(0, round(y0))
    right, bottom = min(FRAME_WIDTH, round(x1)), min(FRAME_HEIGHT, round(y1))
    if right <= left or bottom <= top or (right - left) * (bottom - top) < 0.4 * (x1 - x0) * (y1 - y0):
        return None
    return left, top, right - left, bottom - top


def jitter_box(box, rng):
    """A detector's version of an (N, 4) array of (left, top, width, height) boxes: each side
    moved by noise of JITTER times the box size, clipped to the frame; (N, 4) float."""
    left, top, width, height = np.asarray(box, float).T
    x0 = left + rng.normal(0, JITTER, len(left)) * width
    x1 = left + width + rng.normal(0, JITTER, len(left)) * width
    y0 = top + rng.normal(0, JITTER, len(left)) * height
    y1 = top + height + rng.normal(0, JITTER, len(left)) * height
    x0, x1 = np.clip(x0, 0, FRAME_WIDTH - 1), np.clip(np.maximum(x1, x0 + 1), 1, FRAME_WIDTH)
    y0, y1 = np.clip(y0, 0, FRAME_HEIGHT - 1), np.clip(np.maximum(y1, y0 + 1), 1, FRAME_HEIGHT)
    return np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)


def lookalike(person, rng):
    """A near copy of a person: the same clothes, pattern, hair and bag, colours moved a little,
    build a little different."""
    def near(colour):
        return np.clip(colour + rng.normal(0, 0.04, 3), 0, 1)
    return replace(person, shirt=near(person.shirt), shirt2=near(person.shirt2), trousers=near(person.trousers),
                   hair=near(person.hair), bag=None if person.bag is None else near(person.bag),
                   height=float(np.clip(person.height + rng.normal(0, 0.02), 0.78, 0.92)),
                   girth=float(np.clip(person.girth + rng.normal(0, 0.02), 0.32, 0.45)))


def camera_graph(num_cameras, seed):
    """{(a, b): (lo, hi, kind)} for each allowed ordered pair of camera indices: a chain c001 -
    c002 - ... whose links cycle through the kinds overlap, short, long, closed into a ring by a
    long link when there are 4 cameras or more. Both directions share a window."""
    rng = np.random.default_rng([seed, 1])
    links = [(i, i + 1) for i in range(num_cameras - 1)]
    if num_cameras >= 4:
        links.append((0, num_cameras - 1))
    graph = {}
    for number, (a, b) in enumerate(links):
        kind = 'long' if number == num_cameras - 1 else KIND_CYCLE[number % len(KIND_CYCLE)]
        (lo_min, lo_max), (len_min, len_max) = PAIR_KINDS[kind]
        lo = round(float(rng.uniform(lo_min, lo_max)), 2)
        hi = round(lo + float(rng.uniform(len_min, len_max)), 2)
        graph[a, b] = graph[b, a] = (lo, hi, kind)
    return graph


class _Schedule:
    """Lays out the stays of a scene: the walk through a camera and the routes between cameras."""

    def __init__(self, cameras, people, graph, fps, seconds, rng):
        self.cameras, self.people, self.graph, self.fps, self.rng = cameras, people, graph, fps, rng
        self.num_frames = [math.floor((seconds - c.offset) * fps + 1e-9) for c in cameras]
        self.stays = []

    def frame_at(self, camera, time):
        """The first frame of a camera at or after a scene-clock time."""
        return math.ceil((time - self.cameras[camera].offset) * self.fps - 1e-9) + 1

    def time_of(self, camera, frame):
        return self.cameras[camera].offset + (frame - 1) / self.fps

    def walk(self, person, camera, first_frame, start=None, end=None, speed=None):
        """A stay of `person` in `camera` from first_frame: across the view from one side to the
        other (start and end foot positions, random sides and rows unless given), the box centre
        on the frame border at the first and last frame. None when it starts after the camera's
        last frame; cut at that frame."""
        rng, cam = self.rng, self.cameras[camera]
        if first_frame > self.num_frames[camera]:
            return None
        if start is None:
            side = int(rng.integers(2))
            rows = rng.uniform(cam.far_row, FRAME_HEIGHT - 1, size=2)
            start, end = np.array([side * FRAME_WIDTH, rows[0]]), np.array([(1 - side) * FRAME_WIDTH, rows[1]])
        speed = speed if speed is not None else rng.uniform(*SPEED)
        mean_height = height_at(cam, self.people[person], (start[1] + end[1]) / 2)
        count = max(2, round(np.linalg.norm(end - start) / (speed * mean_height) * self.fps) + 1)
        along = np.linspace(0, 1, count)[:, None]
        foot = start + (end - start) * along
        cycles = np.linalg.norm(end - start) * along[:, 0] / (STRIDE * mean_height)
        phase = rng.uniform(0, 2 * np.pi) + 2 * np.pi * cycles
        keep = min(count, self.num_frames[camera] - first_frame + 1)
        stay = Stay(person, camera, first_frame, foot[:keep], phase[:keep], bool(rng.random() < 0.5), keep < count)
        self.stays.append(stay)
        return stay

    def route(self, person, stay, length):
        """Continue a person's route from a stay through up to `length` cameras in all: each time
        to a random neighbour other than the one just left, after a transit drawn from the pair's
        window; stops at the end of the scene or the graph."""
        previous = None
        for _ in range(length - 1):
            here = stay.camera
            choices = sorted(b for (a, b) in self.graph if a == here and b != previous)
            if not choices or stay.cut:
                return
            there = int(self.rng.choice(choices))
            lo, hi, _ = self.graph[here, there]
            # Drawn up to one frame short of hi: the next frame of the camera comes at most 1/fps later.
            arrive = self.time_of(here, stay.last_frame) + self.rng.uniform(lo, hi - 1 / self.fps)
            if arrive < self.cameras[there].offset:
                return
            following = self.walk(person, there, self.frame_at(there, arrive))
            if following is None:
                return
            previous, stay = here, following


@contextlib.contextmanager
def _whole_folder(out_dir, flag):
    """Yield a folder beside out_dir to write into; it becomes out_dir when the block ends, or is
    removed when the block fails, so out_dir is written whole or not at all. out_dir must not
    exist, or be empty (flag names it in the error)."""
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f'{out_dir} exists and is not empty: remove it or choose another {flag}')
    partial = os.path.normpath(out_dir) + '.partial'
    shutil.rmtree(partial, ignore_errors=True)  # left by a killed run
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if os.path.exists(out_dir):
        os.rmdir(out_dir)
    os.replace(partial, out_dir)


def _write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)


def _write_jpeg(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, quality=JPEG_QUALITY)


def _figures_by_frame(schedule, camera):
    """{frame: [(stay index, Figure)]} of the stays in one camera."""
    cam, by_frame = schedule.cameras[camera], {}
    for index, stay in enumerate(schedule.stays):
        if stay.camera != camera:
            continue
        person = schedule.people[stay.person]
        for k, (x, y) in enumerate(stay.foot):
            figure = Figure(person, x, y, height_at(cam, person, y), stay.phase[k], stay.mirror)
            by_frame.setdefault(stay.first_frame + k, []).append((index, figure))
    return by_frame


def _simulate_tracker(stays_rows, swaps, fps, rng):
    """A single-camera tracker's output from ground truth. stays_rows: {stay: (frames, boxes,
    visibility)}; swaps: [(stay a, stay b, frame)]: from that frame the track of a follows b's
    person and the reverse. Returns rows (frame, local id, left, top, width, height, conf) sorted
    by frame and id, local ids from 1 in order of first appearance."""
    tracks = {stay: [(int(f), stay, box, vis) for f, box, vis in zip(*rows)] for stay, rows in stays_rows.items()}
    protected = {}
    for a, b, frame in swaps:
        before_a = [e for e in tracks[a] if e[0] < frame]
        before_b = [e for e in tracks[b] if e[0] < frame]
        tracks[a], tracks[b] = (before_a + [e for e in tracks[b] if e[0] >= frame],
                                before_b + [e for e in tracks[a] if e[0] >= frame])
        protected[a], protected[b] = frame, frame
    max_gap = max(1, round(MAX_GAP_SECONDS * fps))
    pieces = []
    for key in sorted(tracks):
        entries = tracks[key]
        detected = [e for e in entries if e[3] >= MIN_DETECTED_VISIBILITY and rng.random() >= MISS_RATE]
        if not detected:
            continue
        frames = np.array([e[0] for e in detected])
        # Lost now and then (Poisson over the stay), never right at a swap, where the swap is the point.
        breaks = set()
        for _ in range(rng.poisson(BREAK_RATE * len(entries) / fps)):
            cut = int(rng.integers(len(detected)))
            if key in protected and abs(frames[cut] - protected[key]) <= 3:
                continue
            breaks.add(cut)
        piece = []
        for i, entry in enumerate(detected):
            if piece and (i in breaks or entry[0] - piece[-1][0] > max_gap):
                pieces.append(piece)
                piece = []
            if i in breaks:
                continue  # the frame the tracker lost the person: no box
            piece.append(entry)
        pieces.append(piece)
    pieces = sorted((p for p in pieces if len(p) >= MIN_TRACK_FRAMES), key=lambda p: (p[0][0], p[0][1]))
    rows = []
    for local_id, piece in enumerate(pieces, start=1):
        boxes = jitter_box([e[2] for e in piece], rng)
        visibility = np.array([e[3] for e in piece])
        conf = np.clip((0.35 + 0.6 * visibility) * rng.uniform(0.85, 1.0, len(piece)), 0.05, 0.99)
        rows += [(e[0], local_id, *box, c) for e, box, c in zip(piece, boxes, conf)]
    return sorted(rows, key=lambda r: (r[0], r[1]))


def _crossing_frame(a, b):
    """The frame where two stays of one camera are closest in x (boxes overlapping most), or None."""
    first, last = max(a.first_frame, b.first_frame), min(a.last_frame, b.last_frame)
    if first > last:
        return None
    xa = a.foot[first - a.first_frame:last - a.first_frame + 1, 0]
    xb = b.foot[first - b.first_frame:last - b.first_frame + 1, 0]
    return first + int(np.argmin(np.abs(xa - xb)))


def _cast(num_people, num_lookalike_pairs, rng):
    """(people, look-alike pairs of person indices): random people, num_lookalike_pairs of them near
    copies of another, in random order."""
    people = [random_person(rng) for _ in range(num_people)]
    for pair in range(num_lookalike_pairs):  # people 2k and 2k+1 look alike before the shuffle
        people[2 * pair + 1] = lookalike(people[2 * pair], rng)
    order = rng.permutation(num_people)  # order[i]: the person drawn as number order[i] plays person i
    position = {int(p): i for i, p in enumerate(order)}
    pairs = sorted(tuple(sorted((position[2 * k], position[2 * k + 1]))) for k in range(num_lookalike_pairs))
    return [people[i] for i in order], pairs


def _cross(schedule, crossers, rng):
    """Start each crosser's route by walking against a random earlier stay (other ends first, the
    same speed, rows within 10 px), from about when that stay starts (+-1 s); return the crossings
    [{'camera', 'frame' (where the two are closest), 'stays': (the other's, the crosser's),
    'swapped'}]: the tracker swaps ids at the first crossing and at about half of the others."""
    fps, crossings = schedule.fps, []
    candidates = [s for s in schedule.stays if s.last_frame - s.first_frame >= 4 * fps]
    chosen = rng.choice(len(candidates), size=min(len(crossers), len(candidates)), replace=False)
    for person, index in zip(crossers, chosen):
        other = candidates[int(index)]
        cam = schedule.cameras[other.camera]
        start, end = other.foot[-1].copy(), other.foot[0].copy()
        start[1], end[1] = np.clip(np.array([start[1], end[1]]) + rng.uniform(-10, 10), cam.far_row,
                                     FRAME_HEIGHT - 1)
        pixels_per_second = np.linalg.norm(other.foot[-1] - other.foot[0]) / len(other.foot) * fps
        speed = pixels_per_second / height_at(cam, schedule.people[person], (start[1] + end[1]) / 2)
        begin = max(1, other.first_frame + int(rng.integers(-int(fps), int(fps) + 1)))
        stay = schedule.walk(person, other.camera, begin, start, end, speed)
        frame = _crossing_frame(other, stay) if stay is not None else None
        if frame is None:
            continue
        crossings.append({'camera': other.camera, 'frame': frame,
                          'stays': (schedule.stays.index(other), len(schedule.stays) - 1),
                          'swapped': not crossings or bool(rng.random() < 0.5)})
        schedule.route(person, stay, int(rng.integers(1, 4)))
    return crossings


def make_scene(out_dir, num_cameras=4, num_people=12, seconds=40.0, fps=8.0, seed=0, unsynchronised=False,
               num_lookalike_pairs=None, num_crossings=None, single_camera_fraction=0.2):
    """Write a multi-camera scene to out_dir (the layout of this module's docstring); return the
    contents of its scene.json: {'seed', 'fps', 'seconds', 'frame_size': [width, height],
    'cameras': {name: {'offset': s, 'frames': n}}, 'people': [{'id': global id, 'stays':
    [{'camera', 'first_frame', 'last_frame', 'enter_time', 'exit_time'}]}], 'lookalikes':
    [[id, id]], 'crossings': [{'camera', 'frame', 'ids': [id, id], 'swapped': bool}]}.

    num_lookalike_pairs (default num_people // 6, at least 1) people are near copies of others;
    num_crossings (default num_people // 5, at least 1) people begin their route by crossing
    another person in a camera (walking the other way on nearly the same rows), and the tracker
    swaps their ids at the first crossing and at about half of the others; single_camera_fraction
    of the other people are seen by one camera only, the rest walk routes of 2-4 cameras.
    unsynchronised: camera c001 starts the scene clock, every other camera at a random 0.5-4 s
    later (frames count from each camera's start), written to cam_timestamp.txt. The directory is
    written whole or not at all; it must not exist, or be empty.
    """
    if num_cameras < 2 or num_people < 2 or seconds <= 0 or fps < 1:
        raise ValueError(f'make_scene needs at least 2 cameras and 2 people, positive seconds and 1 fps or more '
                         f'(got {num_cameras} cameras, {num_people} people, {seconds} s, {fps} fps)')
    rng = np.random.default_rng([seed, 0])
    cameras = [make_camera(i, seed) for i in range(num_cameras)]
    if unsynchronised:
        for cam in cameras[1:]:
            cam.offset = round(float(rng.uniform(0.5, 4.0)), 3)
    graph = camera_graph(num_cameras, seed)

    num_lookalikes = max(1, num_people // 6) if num_lookalike_pairs is None else num_lookalike_pairs
    num_crossers = max(1, num_people // 5) if num_crossings is None else num_crossings
    if 2 * num_lookalikes + num_crossers > num_people:
        raise ValueError(f'{num_people} people cannot hold {num_lookalikes} look-alike pairs and '
                         f'{num_crossers} crossings: use more people or fewer of those')
    people, lookalike_pairs = _cast(num_people, num_lookalikes, rng)
    schedule = _Schedule(cameras, people, graph, fps, seconds, rng)
    walkers = num_people - num_crossers
    num_single = round(single_camera_fraction * walkers)
    for person in range(walkers):
        camera = int(rng.integers(num_cameras))
        cam_start = cameras[camera].offset
        start = cam_start + rng.uniform(0, 0.4 * (seconds - cam_start))
        stay = schedule.walk(person, camera, schedule.frame_at(camera, start))
        if stay is not None:
            schedule.route(person, stay, 1 if person < num_single else int(rng.integers(2, 5)))
    crossings = _cross(schedule, range(walkers, num_people), rng)

    scene = {'seed': seed, 'fps': fps, 'seconds': seconds, 'frame_size': [FRAME_WIDTH, FRAME_HEIGHT],
             'cameras': {c.name: {'offset': c.offset, 'frames': n} for c, n in zip(cameras, schedule.num_frames)},
             'people': [], 'lookalikes': [[a + 1, b + 1] for a, b in lookalike_pairs],
             'crossings': [{'camera': cameras[c['camera']].name, 'frame': c['frame'],
                            'ids': [schedule.stays[s].person + 1 for s in c['stays']], 'swapped': c['swapped']}
                           for c in crossings]}
    for person in range(num_people):
        stays = sorted((s for s in schedule.stays if s.person == person),
                       key=lambda s: schedule.time_of(s.camera, s.first_frame))
        scene['people'].append({'id': person + 1, 'stays': [
            {'camera': cameras[s.camera].name, 'first_frame': s.first_frame, 'last_frame': s.last_frame,
             'enter_time': round(schedule.time_of(s.camera, s.first_frame), 6),
             'exit_time': round(schedule.time_of(s.camera, s.last_frame), 6)} for s in stays]})
    pairs = [{'from': cameras[a].name, 'to': cameras[b].name, 'min': lo, 'max': hi, 'overlap': kind == 'overlap',
              'kind': kind} for (a, b), (lo, hi, kind) in sorted(graph.items())]
    with _whole_folder(out_dir, '--out') as partial:
        for camera in range(num_cameras):
            _write_camera(partial, schedule, camera, crossings, seed)
        _write_text(os.path.join(partial, 'scene.json'), json.dumps(scene, indent=1) + '\n')
        _write_text(os.path.join(partial, 'transitions_true.json'),
                    json.dumps({'cameras': [c.name for c in cameras], 'pairs': pairs}, indent=1) + '\n')
        if unsynchronised:
            _write_text(os.path.join(partial, 'cam_timestamp.txt'),
                        ''.join(f'{c.name} {c.offset:.3f}\n' for c in cameras))
    return scene


def _write_camera(scene_dir, schedule, camera, crossings, seed):
    """Frames, seqinfo.ini, gt/gt.txt and tracks.txt of one camera."""
    cam, fps = schedule.cameras[camera], schedule.fps
    render_rng = np.random.default_rng([seed, 3, camera])
    noise = noise_fields(render_rng)
    by_frame = _figures_by_frame(schedule, camera)
    folder = os.path.join(scene_dir, cam.name)
    rows = {}  # stay -> [(frame, box, visibility)]
    gt_lines = []
    for frame in range(1, schedule.num_frames[camera] + 1):
        present = by_frame.get(frame, [])
        image, visibility = render_view(cam, [fig for _, fig in present], render_rng, noise)
        _write_jpeg(os.path.join(folder, 'img1', f'{frame:06d}.jpg'), image)
        for (stay, fig), vis in zip(present, visibility):
            box = clipped_box(fig)
            if box is None:
                continue
            rows.setdefault(stay, []).append((frame, box, float(vis)))
            gt_lines.append((frame, schedule.stays[stay].person + 1, *box, round(float(vis), 3)))
    gt_lines.sort()
    _write_text(os.path.join(folder, 'gt', 'gt.txt'),
                ''.join(f'{f},{i},{x},{y},{w},{h},1,1,{v:g}\n' for f, i, x, y, w, h, v in gt_lines))
    stays_rows = {stay: tuple(np.array(column) for column in zip(*entries)) for stay, entries in rows.items()}
    swaps = [(*c['stays'], c['frame']) for c in crossings
             if c['camera'] == camera and c['swapped'] and all(s in stays_rows for s in c['stays'])]
    tracks = _simulate_tracker(stays_rows, swaps, fps, np.random.default_rng([seed, 4, camera]))
    _write_text(os.path.join(folder, 'tracks.txt'),
                ''.join(f'{f},{i},{x:.2f},{y:.2f},{w:.2f},{h:.2f},{c:.3f},-1,-1,-1\n'
                        for f, i, x, y, w, h, c in tracks))
    info = configparser.ConfigParser()
    info.optionxform = str
    info['Sequence'] = {'name': cam.name, 'imDir': 'img1', 'frameRate': f'{fps:g}',
                        'seqLength': str(schedule.num_frames[camera]), 'imWidth': str(FRAME_WIDTH),
                        'imHeight': str(FRAME_HEIGHT), 'imExt': '.jpg'}
    with open(os.path.join(folder, 'seqinfo.ini'), 'w') as f:
        info.write(f, space_around_delimiters=False)


def make_train_set(out_dir, num_ids=100, num_test_ids=50, num_cameras=4, images_per_camera=3, seed=0,
                   lookalike_fraction=0.15, occluded_fraction=0.25):
    """Write an image_folder re-ID dataset of people other than any scene's, seen by the cameras
    of make_scene(num_cameras=..., seed=seed): out_dir/train/<id>/c00K_NNNN.jpg for num_ids
    identities and out_dir/{query,gallery}/<id>/c00K_NNNN.jpg for num_test_ids more (ids are
    4-digit numbers; the camera token reads with the default --camera-pattern 'c(\\d+)').

    Each identity is seen by 2 to num_cameras cameras, images_per_camera crops per camera, each
    at a random place on the camera's floor (so at its box size there) in a random pose, cut
    by a jittered box as a tracker cuts it; occluded_fraction of the crops have a second person
    close by, in front or behind; lookalike_fraction of the identities are near copies of the
    identity before them (hard negatives, as in the scenes). A test identity's first crop in
    each of its cameras is a query, the others are gallery. Returns {split: number of images}.
    The directory is written whole or not at all; it must not exist, or be empty.
    """
    if num_ids < 1 or num_test_ids < 0 or num_cameras < 2 or images_per_camera < 2:
        raise ValueError(f'make_train_set needs at least 1 train id, 2 cameras and 2 images per camera '
                         f'(got {num_ids} ids, {num_cameras} cameras, {images_per_camera} images per camera)')
    rng = np.random.default_rng([seed, 5])
    cameras = [make_camera(i, seed) for i in range(num_cameras)]
    noise = [noise_fields(rng) for _ in cameras]
    counts = {'train': 0, 'query': 0, 'gallery': 0}
    person = None
    with _whole_folder(out_dir, '--train-set') as partial:
        for number in range(num_ids + num_test_ids):
            person = lookalike(person, rng) if person is not None and rng.random() < lookalike_fraction \
                else random_person(rng)
            seen = rng.choice(num_cameras, size=int(rng.integers(2, num_cameras + 1)), replace=False)
            for camera in sorted(int(c) for c in seen):
                for shot in range(images_per_camera):
                    split = 'train' if number < num_ids else 'query' if shot == 0 else 'gallery'
                    crop = _crop(cameras[camera], noise[camera], person, rng, rng.random() < occluded_fraction)
                    _write_jpeg(os.path.join(partial, split, f'{number + 1:04d}',
                                             f'{cameras[camera].name}_{counts[split]:04d}.jpg'), crop)
                    counts[split] += 1
    return counts


def _crop(camera, noise, person, rng, occluded):
    """One (h, w, 3) uint8 crop of a person at a random place on the camera's floor, cut by a
    jittered box; with occluded, a random other person stands close by."""
    foot_y = rng.uniform(camera.far_row, FRAME_HEIGHT - 1)
    figure = Figure(person, rng.uniform(0.15, 0.85) * FRAME_WIDTH, foot_y, height_at(camera, person, foot_y),
                    rng.uniform(0, 2 * np.pi), bool(rng.random() < 0.5))
    figures = [figure]
    if occluded:
        other = random_person(rng)
        x0, _, x1, _ = figure.box()
        other_y = np.clip(foot_y + rng.uniform(-15, 15), camera.far_row, FRAME_HEIGHT - 1)
        figures.append(Figure(other, figure.foot_x + rng.choice([-1, 1]) * rng.uniform(0.4, 0.9) * (x1 - x0),
                              other_y, height_at(camera, other, other_y), rng.uniform(0, 2 * np.pi)))
    left, top, width, height = jitter_box([clipped_box(figure)], rng)[0]
    region = (round(top), round(left), round(top + height), round(left + width))
    return render_view(camera, figures, rng, noise, region)[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', required=True, metavar='SCENE',
                        help='folder of the scene to write; must not exist, or be empty')
    parser.add_argument('--cameras', type=int, default=4, metavar='N',
                        help='number of cameras, c001 ..., 2 or more (default: %(default)s)')
    parser.add_argument('--people', type=int, default=12, metavar='N',
                        help='number of people, 3 or more: a look-alike pair per 6 and a crossing per 5, at least one '
                             'of each (default: %(default)s)')
    parser.add_argument('--seconds', type=float, default=40.0, metavar='S',
                        help='length of the scene in seconds (default: %(default)s)')
    parser.add_argument('--fps', type=float, default=8.0, metavar='F',
                        help='frames per second, 1 or more (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0, metavar='N',
                        help='the same seed gives the same files; the train set of a seed uses its scene\'s '
                             'cameras (default: %(default)s)')
    parser.add_argument('--unsynchronised', action='store_true',
                        help='cameras start at different scene-clock times (0.5-4 s after c001): each counts '
                             'frames from its own start, and SCENE/cam_timestamp.txt gives the offsets')
    parser.add_argument('--train-set', metavar='DIR',
                        help='also write an image_folder re-ID dataset of other people under the same cameras '
                             '(train with -d image_folder --root DIR)')
    parser.add_argument('--train-ids', type=int, default=100, metavar='N',
                        help='train identities of --train-set (default: %(default)s)')
    parser.add_argument('--test-ids', type=int, default=50, metavar='N',
                        help='query/gallery identities of --train-set (default: %(default)s)')
    args = parser.parse_args()
    if args.cameras < 2 or args.people < 3:
        parser.error(f'--cameras {args.cameras} --people {args.people}: at least 2 cameras and 3 people')
    if args.seconds <= 0 or args.fps < 1:
        parser.error(f'--seconds {args.seconds} --fps {args.fps}: the length must be positive, the frame rate '
                     f'1 or more')
    if args.train_ids < 1 or args.test_ids < 0:
        parser.error(f'--train-ids {args.train_ids} --test-ids {args.test_ids}: at least 1 train id, and no '
                     f'negative count')
    for flag, path in (('--out', args.out), ('--train-set', args.train_set)):
        if path and os.path.exists(path) and os.listdir(path):
            parser.error(f'{flag} {path}: exists and is not empty; remove it or choose another folder')
    scene = make_scene(args.out, num_cameras=args.cameras, num_people=args.people, seconds=args.seconds,
                       fps=args.fps, seed=args.seed, unsynchronised=args.unsynchronised)
    seen = sum(len({s['camera'] for s in p['stays']}) > 1 for p in scene['people'])
    print(f'Wrote {args.out}: {args.cameras} cameras, {args.people} people ({seen} seen by several cameras), '
          f'{args.seconds:g} s at {args.fps:g} fps, {len(scene["crossings"])} crossings '
          f'({sum(c["swapped"] for c in scene["crossings"])} id swaps), {len(scene["lookalikes"])} look-alike pairs')
    if args.train_set:
        counts = make_train_set(args.train_set, num_ids=args.train_ids, num_test_ids=args.test_ids,
                                num_cameras=args.cameras, seed=args.seed)
        print(f'Wrote {args.train_set}: ' + ', '.join(f'{split} {n} images' for split, n in counts.items()))


if __name__ == '__main__':
    main()
