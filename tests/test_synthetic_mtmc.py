"""The multi-camera scene generator: layout, determinism, the simulated tracker's faults, the
transit times against the generator's own windows, time offsets, and the re-ID train set."""
import configparser
import itertools
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import synthetic_mtmc
from data_manager.folders import ImageFolder
from synthetic_mtmc import FRAME_HEIGHT, FRAME_WIDTH, make_scene, make_train_set

TINY = {'num_cameras': 3, 'num_people': 10, 'seconds': 24.0, 'fps': 5.0}


@pytest.fixture(scope='module')
def scene(tmp_path_factory):
    """A tiny unsynchronised scene: (folder, scene.json contents)."""
    out = str(tmp_path_factory.mktemp('mtmc') / 'scene')
    return out, make_scene(out, seed=3, unsynchronised=True, **TINY)


def read_rows(path, columns):
    """(N, columns) float array of a MOT text file, checking every line has that many fields."""
    with open(path) as f:
        lines = f.read().splitlines()
    for number, line in enumerate(lines, 1):
        assert len(line.split(',')) == columns, f'{path}, line {number}: {line!r}'
    return np.array([[float(v) for v in line.split(',')] for line in lines]).reshape(-1, columns)


def cameras_of(folder):
    return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))


def iou(a, b):
    """IoU of (left, top, width, height) boxes a (4,) and b (N, 4)."""
    x0, y0 = np.maximum(a[0], b[:, 0]), np.maximum(a[1], b[:, 1])
    x1, y1 = np.minimum(a[0] + a[2], b[:, 0] + b[:, 2]), np.minimum(a[1] + a[3], b[:, 1] + b[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    return inter / (a[2] * a[3] + b[:, 2] * b[:, 3] - inter)


def track_identities(gt, tracks):
    """{local id: [gt id per row, in frame order]}: each track box matched to the gt box of its frame
    it overlaps most."""
    out = {}
    for row in tracks[np.argsort(tracks[:, 0], kind='stable')]:
        same = gt[gt[:, 0] == row[0]]
        overlap = iou(row[2:6], same[:, 2:6])
        assert overlap.max() > 0.5, f'track {int(row[1])} frame {int(row[0])} matches no gt box'
        out.setdefault(int(row[1]), []).append(int(same[np.argmax(overlap), 1]))
    return out


def gt_stays(folder, scene_json):
    """[(id, camera, enter time, exit time)] of every stay in the gt files: runs of consecutive frames."""
    stays = []
    for camera in cameras_of(folder):
        gt = read_rows(os.path.join(folder, camera, 'gt', 'gt.txt'), 9)
        offset, fps = scene_json['cameras'][camera]['offset'], scene_json['fps']
        for pid in np.unique(gt[:, 1]):
            frames = np.sort(gt[gt[:, 1] == pid, 0])
            cuts = np.flatnonzero(np.diff(frames) > 1)
            for first, last in zip(np.r_[frames[0], frames[cuts + 1]], np.r_[frames[cuts], frames[-1]]):
                stays.append((int(pid), camera, offset + (first - 1) / fps, offset + (last - 1) / fps))
    return stays


def test_layout_is_complete_and_parses(scene):
    folder, info = scene
    cameras = cameras_of(folder)
    assert cameras == ['c001', 'c002', 'c003'] == sorted(info['cameras'])
    for camera in cameras:
        parser = configparser.ConfigParser()
        parser.optionxform = str
        parser.read(os.path.join(folder, camera, 'seqinfo.ini'))
        seq = parser['Sequence']
        length = int(seq['seqLength'])
        assert (seq['name'], seq['imDir'], seq['imExt']) == (camera, 'img1', '.jpg')
        assert float(seq['frameRate']) == 5.0
        assert (int(seq['imWidth']), int(seq['imHeight'])) == (FRAME_WIDTH, FRAME_HEIGHT)
        assert length == info['cameras'][camera]['frames'] == int((24.0 - info['cameras'][camera]['offset']) * 5)
        frames = sorted(os.listdir(os.path.join(folder, camera, 'img1')))
        assert frames == [f'{k:06d}.jpg' for k in range(1, length + 1)]
        with Image.open(os.path.join(folder, camera, 'img1', frames[0])) as image:
            assert image.size == (FRAME_WIDTH, FRAME_HEIGHT) and image.mode == 'RGB'
        gt = read_rows(os.path.join(folder, camera, 'gt', 'gt.txt'), 9)
        tracks = read_rows(os.path.join(folder, camera, 'tracks.txt'), 10)
        for rows in (gt, tracks):
            assert len(rows) > 0
            assert np.all((rows[:, 0] >= 1) & (rows[:, 0] <= length)) and np.all(rows[:, 0] == np.round(rows[:, 0]))
            assert np.all(rows[:, 2:4] >= 0) and np.all(rows[:, 4:6] > 0)
            assert np.all(rows[:, 2] + rows[:, 4] <= FRAME_WIDTH + 1e-6)
            assert np.all(rows[:, 3] + rows[:, 5] <= FRAME_HEIGHT + 1e-6)
            assert len({(f, i) for f, i in rows[:, :2]}) == len(rows)  # one box per id and frame
        assert np.all(gt[:, 2:6] == np.round(gt[:, 2:6])) and np.all(gt[:, 6:8] == 1)
        assert np.all((gt[:, 8] >= 0) & (gt[:, 8] <= 1))
        assert np.all((tracks[:, 6] > 0) & (tracks[:, 6] < 1)) and np.all(tracks[:, 7:] == -1)
    ids = {p['id'] for p in info['people']}
    assert ids == set(range(1, 11))
    transitions = json.loads(Path(folder, 'transitions_true.json').read_text())
    assert transitions['cameras'] == cameras
    for pair in transitions['pairs']:
        assert pair['min'] < pair['max'] and pair['overlap'] == (pair['max'] < 0)
    assert {p['kind'] for p in transitions['pairs']} == {'overlap', 'short'}  # a chain of 3: overlap, short


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    def digest(folder):
        return {os.path.relpath(os.path.join(d, f), folder): Path(d, f).read_bytes()
                for d, _, files in os.walk(folder) for f in files}
    small = {'num_cameras': 2, 'num_people': 5, 'seconds': 10.0, 'fps': 4.0}
    for name, seed in (('a', 1), ('b', 1), ('c', 2)):
        make_scene(str(tmp_path / name), seed=seed, **small)
    assert digest(tmp_path / 'a') == digest(tmp_path / 'b')
    assert digest(tmp_path / 'a') != digest(tmp_path / 'c')
    with pytest.raises(FileExistsError, match='not empty'):
        make_scene(str(tmp_path / 'a'), seed=1, **small)
    assert not any(name.endswith('.partial') for name in os.listdir(tmp_path))


def test_gt_transits_fall_inside_the_true_windows(scene):
    folder, info = scene
    pairs = {(p['from'], p['to']): (p['min'], p['max'])
             for p in json.loads(Path(folder, 'transitions_true.json').read_text())['pairs']}
    stays = gt_stays(folder, info)
    transits = 0
    for pid in {s[0] for s in stays}:
        mine = sorted((s for s in stays if s[0] == pid), key=lambda s: s[2])
        for (_, a, _, exit_a), (_, b, enter_b, _) in itertools.pairwise(mine):
            assert (a, b) in pairs, f'person {pid} goes {a} -> {b}, not a link of the camera graph'
            lo, hi = pairs[a, b]
            assert lo - 1e-6 <= enter_b - exit_a <= hi + 1e-6, (pid, a, b, enter_b - exit_a, lo, hi)
            transits += 1
    assert transits >= 4
    # The gt stays are the stays scene.json lists.
    listed = sorted((p['id'], s['camera'], s['enter_time'], s['exit_time'])
                    for p in info['people'] for s in p['stays'])
    assert [(i, c) for i, c, _, _ in sorted(stays)] == [(i, c) for i, c, _, _ in listed]
    assert np.allclose([s[2:] for s in sorted(stays)], [s[2:] for s in listed])
    cameras_per_person = [len({s['camera'] for s in p['stays']}) for p in info['people']]
    assert min(cameras_per_person) == 1 and max(cameras_per_person) >= 2  # some seen by one camera only


def test_tracks_are_fragmented_and_swap_where_people_cross(scene):
    folder, info = scene
    swapped = {(c['camera'], tuple(sorted(c['ids']))) for c in info['crossings'] if c['swapped']}
    assert swapped  # the first crossing always swaps
    pieces, runs, mixed = 0, 0, set()
    for camera in cameras_of(folder):
        gt = read_rows(os.path.join(folder, camera, 'gt', 'gt.txt'), 9)
        tracks = read_rows(os.path.join(folder, camera, 'tracks.txt'), 10)
        runs += sum(1 for s in gt_stays(folder, info) if s[1] == camera)
        for local_id, identities in track_identities(gt, tracks).items():
            # A swap: the track follows one person for frames, then another for frames. Runs under
            # 3 frames are where two boxes overlap so much that the test's matching may pick either.
            cuts = np.flatnonzero(np.diff(identities)) + 1
            runs_of = [(run[0], len(run)) for run in np.split(np.array(identities), cuts)]
            people = [person for person, length in runs_of if length >= 3]
            if len(set(people)) > 1:
                assert len(people) == 2, f'{camera} track {local_id}: {identities}'
                mixed.add((camera, tuple(sorted(people))))
            pieces += 1
    assert pieces > runs  # more tracks than stays: stays are broken into pieces
    assert mixed and mixed <= swapped


def test_occlusions_and_box_sizes(scene):
    folder, info = scene
    heights, hidden = [], 0
    for camera in cameras_of(folder):
        gt = read_rows(os.path.join(folder, camera, 'gt', 'gt.txt'), 9)
        inside = (gt[:, 2] > 0) & (gt[:, 2] + gt[:, 4] < FRAME_WIDTH)
        heights += list(gt[inside, 5])
        hidden += int(np.sum(inside & (gt[:, 8] < 0.5)))
        for crossing in info['crossings']:
            if crossing['camera'] == camera:
                rows = gt[gt[:, 0] == crossing['frame']]
                a, b = (rows[rows[:, 1] == i][0] for i in crossing['ids'])
                assert iou(a[2:6], b[None, 2:6])[0] > 0.2 and min(a[8], b[8]) < 0.8
    assert hidden > 0  # people hidden by others, away from the frame border
    assert max(heights) > 1.5 * min(heights)  # perspective: far people small, near ones big


def test_time_offsets_only_when_unsynchronised(scene, tmp_path):
    folder, info = scene
    with open(os.path.join(folder, 'cam_timestamp.txt')) as f:
        offsets = {name: float(value) for name, value in (line.split() for line in f)}
    assert offsets == {c: v['offset'] for c, v in info['cameras'].items()}
    assert offsets['c001'] == 0 and all(0.5 <= v <= 4 for c, v in offsets.items() if c != 'c001')
    synced = make_scene(str(tmp_path / 'synced'), seed=3, num_cameras=2, num_people=4, seconds=8.0, fps=4.0)
    assert not os.path.exists(tmp_path / 'synced' / 'cam_timestamp.txt')
    assert all(v['offset'] == 0 for v in synced['cameras'].values())


def test_train_set_reads_as_image_folder_with_cameras(tmp_path):
    counts = make_train_set(str(tmp_path / 'train'), num_ids=6, num_test_ids=3, num_cameras=3, images_per_camera=2)
    dataset = ImageFolder(root=str(tmp_path / 'train'), verbose=False)
    assert dataset.has_camera_ids and dataset.has_test_split
    assert (len(dataset.train), len(dataset.query), len(dataset.gallery)) == (counts['train'], counts['query'],
                                                                             counts['gallery'])
    assert dataset.num_train_pids == 6 and {c for _, _, c in dataset.train} <= {0, 1, 2}
    for _, pid, camid in dataset.query:  # every query has its identity in another camera of the gallery
        assert any(p == pid and c != camid for _, p, c in dataset.gallery)
    with Image.open(dataset.train[0][0]) as crop:
        assert 40 <= crop.height <= 160 and crop.width < crop.height


def test_command_line(tmp_path, monkeypatch, capsys):
    out = tmp_path / 'cli'
    monkeypatch.setattr(sys, 'argv', ['synthetic_mtmc.py', '--out', str(out), '--cameras', '2', '--people', '4',
                                      '--seconds', '6', '--fps', '4', '--seed', '5', '--unsynchronised'])
    synthetic_mtmc.main()
    assert 'Wrote' in capsys.readouterr().out and os.path.isfile(out / 'cam_timestamp.txt')
    with pytest.raises(SystemExit):
        synthetic_mtmc.main()  # the folder is not empty now
    assert 'not empty' in capsys.readouterr().err


def test_lookalikes_differ_only_a_little(scene):
    _, info = scene
    assert len(info['lookalikes']) == 1 and len(set(info['lookalikes'][0])) == 2
    rng = np.random.default_rng(0)
    for _ in range(20):
        person = synthetic_mtmc.random_person(rng)
        twin = synthetic_mtmc.lookalike(person, rng)
        assert twin.pattern == person.pattern and (twin.bag is None) == (person.bag is None)
        for part in ('shirt', 'shirt2', 'trousers', 'hair'):
            assert 0 < np.abs(getattr(twin, part) - getattr(person, part)).max() < 0.2
