"""Multi-camera scenes for link_cameras.py: the cameras of a scene folder (frames or a video
each), their single-camera tracks and clocks, and one pooled re-ID feature per tracklet.

A scene is one folder per camera, named by the folder (c001, ...):
    SCENE/<camera>/img1/000001.jpg ...  frames (numbers from the names), with seqinfo.ini (frameRate,
                                        imWidth, imHeight; else --fps and the first frame's size)
    SCENE/<camera>/vdo.avi or vdo.mp4   or a video (AI City), decoded with OpenCV, an optional
                                        dependency: pip install opencv-python-headless
    SCENE/<camera>/<tracks>             the single-camera tracker's output, MOT rows
                                        frame,id,left,top,width,height[,conf,...] (6 to 10 numbers);
                                        <tracks> may be a pattern such as mtsc/mtsc_*.txt (one match)
Time on the scene clock is (frame - 1) / fps + the camera's offset (--time-offsets, AI City's
cam_timestamp format: 'c001 0.000' per line; cameras not named there have offset 0).

Boxes that reach past the image border are kept, as MOTChallenge ground truth keeps the boxes
of people entering the view (and the output rows are written as given); a box that lies wholly
outside the image, or has no area, is an error. For features, a box that touches or crosses the
border (within BORDER_MARGIN pixels) is skipped, as its crop shows part of a person.
"""
import glob
import io
import math
import os
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mot_to_reid import InputError, list_frames, read_gt, read_mot_rows, read_seqinfo
from tracklet_table import TrackletTable
from visualize import TILE_SIZE

try:
    import cv2
except ImportError:  # optional: only videos need it
    cv2 = None

__all__ = ['InputError', 'Camera', 'Tracks', 'read_scene', 'read_time_offsets', 'camera_number', 'choose_boxes',
           'split_points', 'tracklet_features', 'row_pieces', 'read_scene_gt', 'VIDEO_NAMES',
           'OPENCV_MISSING']

VIDEO_NAMES = ('vdo.avi', 'vdo.mp4')
OPENCV_MISSING = 'reading a video needs OpenCV: pip install opencv-python-headless'
TRACK_FIELDS = 'frame, id, left, top, width, height[, conf, ...]: 6 to 10 numbers'
BORDER_MARGIN = 2          # pixels: a box this close to the image border is taken as cut by it
MIN_SPLIT_BOXES = 3        # sampled boxes on each side of a split at an appearance jump
THUMBNAIL_QUALITY = 90


@dataclass
class Tracks:
    """The rows of one camera's tracks file, M boxes.

    line: (M,) int64 line numbers; frame, track: (M,) int64; boxes: (M, 4) float64 left, top,
    width, height; conf: (M,) float64 (1 where the file has no conf column)."""
    path: str
    line: np.ndarray
    frame: np.ndarray
    track: np.ndarray
    boxes: np.ndarray
    conf: np.ndarray


@dataclass
class Camera:
    """One camera of a scene: its name and folder, frames (image paths by frame number) or a
    video, frame rate, clock offset in seconds, image size (width, height; None when unknown
    without reading frames) and tracks."""
    name: str
    folder: str
    fps: float
    offset: float
    size: tuple
    frames: dict
    video: str
    tracks: Tracks

    def time(self, frame):
        """Scene-clock seconds of frame numbers (MOT frames count from 1)."""
        return (np.asarray(frame, dtype=np.float64) - 1) / self.fps + self.offset

    def read_frames(self, wanted):
        """Yield (frame number, RGB PIL image) for the sorted frame numbers `wanted`, reading
        only those (a video is decoded up to the last one)."""
        if self.video is None:
            for frame in wanted:
                path = self.frames[frame]
                try:
                    with Image.open(path) as image:
                        yield frame, image.convert('RGB')
                except OSError as error:
                    raise InputError(f'{path}: cannot read this frame ({error})') from error
            return
        capture = open_video(self.video)
        try:
            position = 0  # frames decoded so far
            for frame in wanted:
                while position < frame - 1:
                    if not capture.grab():
                        break
                    position += 1
                ok, image = capture.read()
                if not ok:
                    line = self.tracks.line[np.argmax(self.tracks.frame == frame)]
                    raise InputError(f'{self.tracks.path}, line {line}: frame {frame} is past the end of '
                                     f'{self.video} ({position} frames)')
                position += 1
                yield frame, Image.fromarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        finally:
            capture.release()


def open_video(path):
    if cv2 is None:
        raise InputError(f'{path}: {OPENCV_MISSING} (or extract its frames to img1/000001.jpg ...)')
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise InputError(f'{path}: OpenCV cannot open this video')
    return capture


def camera_number(name):
    """The integer id of a camera in AI City's files: the last number in its name (c001 -> 1)."""
    numbers = re.findall(r'\d+', name)
    if not numbers:
        raise InputError(f'camera {name}: the AI City output numbers cameras by the number in their folder '
                         f'names (c001 -> 1); rename the folder')
    return int(numbers[-1])


def read_time_offsets(path, cameras):
    """{camera: seconds} from a cam_timestamp file ('c001 0.000' per line); cameras it does not
    name get 0. One-line InputError for a bad line or a camera not in `cameras`."""
    offsets = dict.fromkeys(cameras, 0.0)
    seen = set()
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as error:
        raise InputError(f'--time-offsets {path}: {error.strerror}') from error
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith('#'):
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError
            offset = float(fields[1])
        except ValueError:
            raise InputError(f'{path}, line {number}: {line.strip()!r} is not "<camera> <seconds>"') from None
        if fields[0] not in offsets:
            raise InputError(f'{path}, line {number}: camera {fields[0]} is not in the scene '
                             f'({", ".join(cameras)})')
        if fields[0] in seen:
            raise InputError(f'{path}, line {number}: camera {fields[0]} is given twice')
        seen.add(fields[0])
        offsets[fields[0]] = offset
    return offsets


def find_tracks_file(folder, pattern):
    matches = sorted(glob.glob(os.path.join(glob.escape(folder), pattern)))
    if not matches:
        raise InputError(f'{folder}: no tracks file {pattern} in this camera folder (check --tracks)')
    if len(matches) > 1:
        names = ', '.join(os.path.relpath(m, folder) for m in matches)
        raise InputError(f'{folder}: --tracks {pattern} matches {len(matches)} files ({names}); name one')
    return matches[0]


def read_tracks(path, size=None, frames=None):
    """Tracks of one camera from a MOT file, checked: 6 to 10 numeric fields, whole frame and
    track numbers, a frame from 1 on that exists (frames: the set of frame numbers, None when
    not known), a box with area that is not wholly outside the image (size: (width, height) or
    None). One-line InputError naming the file and line otherwise."""
    rows = read_mot_rows(path, TRACK_FIELDS)
    if not rows:
        raise InputError(f'{path}: no track in this file')
    line = np.array([number for number, _ in rows], dtype=np.int64)
    values = np.full((len(rows), 7), 1.0)
    for i, (_, row) in enumerate(rows):
        values[i, :min(7, len(row))] = row[:7]
    frame, track, boxes = values[:, 0], values[:, 1], values[:, 2:6]

    def fail(bad, problem):
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f'{path}, line {line[i]}: {problem(i)}')

    whole = (frame == np.round(frame)) & (track == np.round(track)) & (frame >= 1)
    if not whole.all():
        fail(~whole, lambda i: f'frame {frame[i]:g} and id {track[i]:g} must be whole numbers, frames from 1')
    frame, track = frame.astype(np.int64), track.astype(np.int64)
    if not ((boxes[:, 2] > 0) & (boxes[:, 3] > 0)).all():
        fail((boxes[:, 2] <= 0) | (boxes[:, 3] <= 0), lambda i: f'box of width {boxes[i, 2]:g} and height '
                                                               f'{boxes[i, 3]:g}: both must be positive')
    if size is not None:
        width, height = size
        outside = ((boxes[:, 0] >= width) | (boxes[:, 1] >= height) | (boxes[:, 0] + boxes[:, 2] <= 0)
                   | (boxes[:, 1] + boxes[:, 3] <= 0))
        if outside.any():
            fail(outside, lambda i: f'box ({", ".join(f"{v:g}" for v in boxes[i])}) lies outside the '
                                    f'{width}x{height} image (left, top, width, height in pixels?)')
    if frames is not None:
        missing = ~np.isin(frame, np.fromiter(frames, np.int64, len(frames)))
        if missing.any():
            fail(missing, lambda i: f'frame {frame[i]} has no image in the camera\'s frame folder')
    return Tracks(path, line, frame, track, boxes.copy(), values[:, 6].copy())


def read_camera(folder, tracks, fps, offset, read_images=True):
    """A Camera from its folder (see the module docstring); read_images=False only lists what
    is needed to place the tracks (no video is opened)."""
    name = os.path.basename(os.path.normpath(folder))
    info = read_seqinfo(folder)
    videos = [os.path.join(folder, v) for v in VIDEO_NAMES if os.path.isfile(os.path.join(folder, v))]
    image_dir = os.path.join(folder, info['imDir'])
    frames = video = None
    size = (info['imWidth'], info['imHeight']) if info['imWidth'] and info['imHeight'] else None
    rate = info['frameRate']
    if os.path.isdir(image_dir):
        frames = {frame: os.path.join(image_dir, file) for frame, file in list_frames(image_dir, info['imExt']).items()}
        if size is None:
            with Image.open(frames[min(frames)]) as image:
                size = image.size
    elif videos:
        video = videos[0]
        if read_images:
            capture = open_video(video)
            size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
            rate = rate or capture.get(cv2.CAP_PROP_FPS) or None
            capture.release()
    elif read_images:
        raise InputError(f'{folder}: no frames ({info["imDir"]}/000001.jpg ...) and no video '
                         f'({" or ".join(VIDEO_NAMES)}) in this camera folder')
    rate = rate or fps
    if not rate:
        raise InputError(f'{folder}: no frame rate (seqinfo.ini frameRate{", the video" if video else ""}); '
                         f'pass --fps')
    track_rows = read_tracks(find_tracks_file(folder, tracks), size, frames if read_images else None)
    return Camera(name, folder, float(rate), offset, size, frames, video, track_rows)


def read_scene(scene, tracks='tracks.txt', fps=None, time_offsets=None, read_images=True):
    """[Camera] of a scene folder, sorted by name: every folder in it is a camera.

    tracks: the tracks file in each camera folder (a pattern allowed); fps: the frame rate where
    a camera does not record one; time_offsets: a cam_timestamp file or None; read_images=False:
    frames and videos are not required (linking a saved tracklet table)."""
    if not os.path.isdir(scene):
        raise InputError(f'--scene {scene}: no such folder')
    names = sorted(n for n in os.listdir(scene) if not n.startswith('.') and os.path.isdir(os.path.join(scene, n)))
    if not names:
        raise InputError(f'--scene {scene}: no camera folder in it (SCENE/<camera>/img1, SCENE/<camera>/{tracks})')
    offsets = read_time_offsets(time_offsets, names) if time_offsets else dict.fromkeys(names, 0.0)
    return [read_camera(os.path.join(scene, n), tracks, fps, offsets[n], read_images) for n in names]


def read_scene_gt(cameras, gt='gt/gt.txt'):
    """{camera name: (frame (G,) int64, id (G,) int64, boxes (G, 4) float64)}: each camera's
    ground truth with global ids (rows whose consider flag is 0 are left out)."""
    truth = {}
    for camera in cameras:
        path = os.path.join(camera.folder, gt)
        rows = [r for r in read_gt(path) if r[6] is None or r[6] != 0]
        table = np.array([r[:6] for r in rows], dtype=np.float64).reshape(-1, 6)
        truth[camera.name] = (table[:, 0].astype(np.int64), table[:, 1].astype(np.int64), table[:, 2:6])
    return truth


def occlusion(frame, boxes):
    """(M,) fraction of each box covered by one other box of the same frame that stands in front
    of it (its bottom edge lower in the image: nearer the camera); the largest such fraction."""
    covered = np.zeros(len(frame))
    order = np.argsort(frame, kind='stable')
    starts = np.flatnonzero(np.diff(frame[order], prepend=-1))
    for rows in np.split(order, starts[1:]):
        if len(rows) < 2:
            continue
        left, top = boxes[rows, 0], boxes[rows, 1]
        right, bottom = left + boxes[rows, 2], top + boxes[rows, 3]
        width = np.clip(np.minimum(right[:, None], right[None]) - np.maximum(left[:, None], left[None]), 0, None)
        height = np.clip(np.minimum(bottom[:, None], bottom[None]) - np.maximum(top[:, None], top[None]), 0, None)
        fraction = width * height / (boxes[rows, 2] * boxes[rows, 3])[:, None]  # [i, j]: i covered by j
        in_front = bottom[None] > bottom[:, None]
        covered[rows] = np.where(in_front, fraction, 0).max(axis=1)
    return covered


def choose_boxes(tracks, size, boxes_per_tracklet=16, min_box_height=32, max_occlusion=0.5):
    """{track id: row indices (into tracks, in frame order)} of the boxes whose crops make the
    track's feature: at most boxes_per_tracklet, evenly spread in time, among those at least
    min_box_height pixels high, clear of the image border and covered by no box in front beyond
    max_occlusion. A track with no such box is left out (it keeps an identity of its own)."""
    width, height = size
    left, top = tracks.boxes[:, 0], tracks.boxes[:, 1]
    right, bottom = left + tracks.boxes[:, 2], top + tracks.boxes[:, 3]
    inside = ((left >= BORDER_MARGIN) & (top >= BORDER_MARGIN) & (right <= width - BORDER_MARGIN)
              & (bottom <= height - BORDER_MARGIN))
    usable = inside & (tracks.boxes[:, 3] >= min_box_height)
    usable &= occlusion(tracks.frame, tracks.boxes) <= max_occlusion
    chosen = {}
    order = np.lexsort((tracks.frame, tracks.track))
    order = order[usable[order]]
    for track, rows in zip(*_groups(tracks.track[order], order)):
        picks = np.unique(np.round(np.linspace(0, len(rows) - 1, min(boxes_per_tracklet, len(rows)))).astype(int))
        chosen[int(track)] = rows[picks]
    return chosen


def _groups(keys, values):
    """(unique keys, [values of each]) of values sorted by key."""
    starts = np.flatnonzero(np.diff(keys, prepend=keys[:1] - 1)) if len(keys) else np.array([], dtype=np.int64)
    return keys[starts], np.split(values, starts[1:])


def split_points(features, split_distance):
    """Where a tracklet's appearance jumps (a tracker swapped two people): sorted indices k
    that cut the (n, D) L2-normalised box features, in time order, into pieces [..k), [k..).

    Binary segmentation: the cut that maximises the cosine distance between the mean feature
    before and after it, kept when that distance exceeds split_distance and each side has
    MIN_SPLIT_BOXES boxes, then the same within each side. split_distance None: no cut."""
    if split_distance is None or len(features) < 2 * MIN_SPLIT_BOXES:
        return []
    sums = np.cumsum(features, axis=0, dtype=np.float64)
    cuts = np.arange(MIN_SPLIT_BOXES, len(features) - MIN_SPLIT_BOXES + 1)
    before = sums[cuts - 1]
    after = sums[-1] - before
    before /= np.linalg.norm(before, axis=1, keepdims=True) + 1e-12
    after /= np.linalg.norm(after, axis=1, keepdims=True) + 1e-12
    distance = 1 - (before * after).sum(axis=1)
    best = int(np.argmax(distance))
    if distance[best] <= split_distance:
        return []
    k = int(cuts[best])
    return (split_points(features[:k], split_distance) + [k]
            + [k + j for j in split_points(features[k:], split_distance)])


def tracklet_features(cameras, extractor, boxes_per_tracklet=16, min_box_height=32, max_occlusion=0.5,
                      split_distance=None, camera_ids=False, chunk=256, progress=None):
    """(TrackletTable, {tracklet index: thumbnail JPEG bytes}) of the scene's tracks.

    Each track's chosen boxes (choose_boxes) are cropped from their frames and go through the
    extractor (a feature_extractor.FeatureExtractor; a video model sees each crop as a
    one-frame tracklet); the L2-normalised box features are cut at appearance jumps
    (split_points) and each piece's feature is the L2-normalised mean of its box features.
    Pieces of a track cover consecutive frame ranges: a cut falls halfway between the two
    sampled boxes around it. camera_ids: give a model with a camera embedding each camera's
    number (c003 -> id 2); else the camera-agnostic feature. chunk: crops per extractor call.
    progress(camera name, crops done, crops in all) is called after each chunk."""
    rows = {k: [] for k in ('camera', 'local_id', 'segment', 'first_frame', 'last_frame', 'start_time',
                            'end_time', 'num_boxes', 'features')}
    thumbnails = {}
    for c, camera in enumerate(cameras):
        tracks = camera.tracks
        chosen = choose_boxes(tracks, camera.size, boxes_per_tracklet, min_box_height, max_occlusion)
        wanted = np.concatenate(list(chosen.values())) if chosen else np.zeros(0, dtype=np.int64)
        camid = camera_number(camera.name) - 1 if camera_ids else -1
        box_features, crop_rows, crops, thumbs = {}, [], [], {}

        def flush():
            items = [[crop] for crop in crops] if extractor.video else crops
            features = extractor(items, camids=[camid] * len(crops) if camid >= 0 else None)
            features /= np.linalg.norm(features, axis=1, keepdims=True) + 1e-12
            box_features.update(zip(crop_rows, features))
            crop_rows.clear()
            crops.clear()
            if progress is not None:
                progress(camera.name, len(box_features), len(wanted))

        by_frame = {}
        for row in wanted.tolist():
            by_frame.setdefault(int(tracks.frame[row]), []).append(row)
        for frame, image in camera.read_frames(sorted(by_frame)):
            for row in by_frame[frame]:
                left, top, w, h = tracks.boxes[row]
                crop = image.crop((math.floor(left + 0.5), math.floor(top + 0.5),
                                   math.floor(left + w + 0.5), math.floor(top + h + 0.5)))
                crop_rows.append(row)
                crops.append(crop)
                buffer = io.BytesIO()
                crop.resize(TILE_SIZE, Image.BILINEAR).save(buffer, format='JPEG', quality=THUMBNAIL_QUALITY)
                thumbs[row] = buffer.getvalue()
            if len(crops) >= chunk:
                flush()
        if crops:
            flush()

        for track, sampled in sorted(chosen.items()):
            track_rows = np.flatnonzero(tracks.track == track)
            track_frames = np.sort(tracks.frame[track_rows])
            features = np.stack([box_features[r] for r in sampled.tolist()])
            cuts = split_points(features, split_distance)
            sampled_frames = tracks.frame[sampled]
            bounds = [track_frames[0]] + [(sampled_frames[k - 1] + sampled_frames[k]) // 2 + 1 for k in cuts]
            ends = [b - 1 for b in bounds[1:]] + [track_frames[-1]]
            for segment, (piece, first, last) in enumerate(zip(np.split(np.arange(len(sampled)), cuts), bounds, ends)):
                in_piece = track_frames[(track_frames >= first) & (track_frames <= last)]
                pooled = features[piece].mean(axis=0)
                thumbnails[len(rows['camera'])] = thumbs[int(sampled[piece[len(piece) // 2]])]
                rows['camera'].append(c)
                rows['local_id'].append(track)
                rows['segment'].append(segment)
                rows['first_frame'].append(in_piece[0])
                rows['last_frame'].append(in_piece[-1])
                rows['start_time'].append(camera.time(in_piece[0]))
                rows['end_time'].append(camera.time(in_piece[-1]))
                rows['num_boxes'].append(len(piece))
                rows['features'].append(pooled / (np.linalg.norm(pooled) + 1e-12))
    dim = extractor.feat_dim
    table = TrackletTable(
        cameras=[camera.name for camera in cameras],
        camera=np.array(rows['camera'], dtype=np.int64), local_id=np.array(rows['local_id'], dtype=np.int64),
        segment=np.array(rows['segment'], dtype=np.int64),
        first_frame=np.array(rows['first_frame'], dtype=np.int64),
        last_frame=np.array(rows['last_frame'], dtype=np.int64),
        start_time=np.array(rows['start_time'], dtype=np.float64),
        end_time=np.array(rows['end_time'], dtype=np.float64),
        num_boxes=np.array(rows['num_boxes'], dtype=np.int64),
        features=np.array(rows['features'], dtype=np.float32).reshape(-1, dim))
    return table, thumbnails


def row_pieces(camera_index, tracks, table):
    """(M,) index into table of the tracklet each row of a camera's tracks belongs to (its
    track's piece whose frame range holds the row's frame), -1 for a row of a track that has no
    tracklet (no usable box)."""
    mine = np.flatnonzero(table.camera == camera_index)
    pieces = np.full(len(tracks.frame), -1, dtype=np.int64)
    if not len(mine):
        return pieces
    order = mine[np.lexsort((table.first_frame[mine], table.local_id[mine]))]
    keys = np.stack([table.local_id[order], table.first_frame[order]], axis=1)
    # the last piece of the row's track that starts at or before the row's frame
    position = np.searchsorted(keys[:, 0] * (1 << 32) + keys[:, 1], tracks.track * (1 << 32) + tracks.frame,
                               side='right') - 1
    found = position >= 0
    candidate = order[np.clip(position, 0, None)]
    found &= (table.local_id[candidate] == tracks.track) & (tracks.frame <= table.last_frame[candidate])
    pieces[found] = candidate[found]
    return pieces
