"""visrank pictures (layout, frame colours, order, index) and the training curves log."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from eval_metrics import evaluate
from visualize import BORDER, COLOURS, GAP, LABEL_HEIGHT, TILE_SIZE, TrainingLog, visrank

TILE_W, TILE_H = TILE_SIZE
STRIP_H = TILE_H + 2 * BORDER + LABEL_HEIGHT

# Gallery (pid, camid); query 0 is pid 1 in camera 0, query 1 pid 2 in camera 0, query 2 pid 9
# (no match) given as a 3-frame tracklet.
GALLERY = [(1, 0), (1, 1), (3, 1), (2, 1), (1, 2), (4, 0)]
QUERY = [(1, 0), (2, 0), (9, 0)]
DIST = np.array([[0.5, 0.1, 0.3, 0.3, 0.9, 0.2],    # -> 1, 5, 2, 3 (tie: gallery order), 0, 4
                 [0.4, 0.3, 0.2, 0.6, 0.1, 0.5],    # -> 4, 2, 1, 0, 5, 3
                 [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])


def colour(i):
    """A distinct solid colour per image."""
    return (17 * i, 255 - 15 * i, 60 + 10 * i)


@pytest.fixture
def items(tmp_path):
    def image(name, i):
        path = tmp_path / f'{name}.png'
        Image.new('RGB', (20, 40), colour(i)).save(path)
        return str(path)
    gallery = [(image(f'g{i}', i), pid, cam) for i, (pid, cam) in enumerate(GALLERY)]
    query = [(image('q0', 10), 1, 0), (image('q1', 11), 2, 0),
             (tuple(image(f'q2_{i}', 12 + i) for i in range(3)), 9, 0)]
    return query, gallery


def tile_pixels(picture, k, top=0):
    """(frame pixel, centre pixel) of the k-th tile (0: the query) of a strip starting at row top."""
    x = k * (TILE_W + 2 * BORDER) + (GAP if k else 0)
    return picture.getpixel((x + 1, top + 1)), picture.getpixel((x + BORDER + TILE_W // 2, top + BORDER + TILE_H // 2))


def test_visrank_frames_order_and_index(items, tmp_path):
    query, gallery = items
    q_pids, q_camids = np.array([p for p, _ in QUERY]), np.array([c for _, c in QUERY])
    g_pids, g_camids = np.array([p for p, _ in GALLERY]), np.array([c for _, c in GALLERY])
    # AP as the evaluator computes it: query 0 has matches at valid ranks 1 and 5 (the grey
    # entry does not count): (1/1 + 2/5) / 2; query 1 its only one at rank 6.
    ap = evaluate(DIST, q_pids, g_pids, q_camids, g_camids, verbose=False).ap
    assert ap[:2] == pytest.approx([0.7, 1 / 6]) and math.isnan(ap[2])
    paths = visrank(torch.from_numpy(DIST), [0, 1, 2], query, gallery, q_pids, g_pids, q_camids, g_camids, ap,
                    tmp_path / 'visrank', topk=5)
    assert [p.rsplit('/', 1)[1] for p in paths] == ['query00000_pid1_cam0.png', 'query00001_pid2_cam0.png',
                                                   'query00002_pid9_cam0.png', 'index.png']

    expected = {0: ([1, 5, 2, 3, 0], ['match', 'wrong', 'wrong', 'wrong', 'junk']),
                1: ([4, 2, 1, 0, 5], ['wrong'] * 5),
                2: ([0, 1, 2, 3, 4], ['wrong'] * 5)}
    query_colour = {0: colour(10), 1: colour(11), 2: colour(13)}  # a tracklet shows its middle frame
    for q, (order, kinds) in expected.items():
        picture = Image.open(paths[q]).convert('RGB')
        assert picture.size == (6 * (TILE_W + 2 * BORDER) + GAP, STRIP_H)
        assert tile_pixels(picture, 0) == (COLOURS['query'], query_colour[q])
        for k, (g, kind) in enumerate(zip(order, kinds), 1):
            assert tile_pixels(picture, k) == (COLOURS[kind], colour(g)), (q, k)
        label = np.asarray(picture)[STRIP_H - LABEL_HEIGHT:, TILE_W + 2 * BORDER + GAP:]
        assert (label < 100).any()  # the distances are written under the tiles

    # The index: worst AP first (query 1, then 0), no valid match last (query 2).
    index = Image.open(paths[-1]).convert('RGB')
    assert index.size == (6 * (TILE_W + 2 * BORDER) + GAP, 3 * (STRIP_H + BORDER))
    for row, q in enumerate([1, 0, 2]):
        assert tile_pixels(index, 0, top=row * (STRIP_H + BORDER))[1] == query_colour[q]
        assert tile_pixels(index, 1, top=row * (STRIP_H + BORDER))[1] == colour(expected[q][0][0])


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_training_log_writes_updates_and_resumes(tmp_path):
    log = TrainingLog(tmp_path)
    log.epoch(1, 2.0, 1e-3, images_per_s=50.0)
    first_picture = (tmp_path / 'curves.png').read_bytes()
    log.epoch(2, 1.5, 1e-3)
    log.evaluation(2, np.float64(0.4), torch.tensor(0.25, dtype=torch.float64), mINP=np.float32(0.125))
    log.epoch(3, 1.2, 1e-4)
    log.evaluation(3, 0.5, 0.3)
    assert records(tmp_path / 'metrics.jsonl') == [
        {'epoch': 1, 'loss': 2.0, 'lr': 1e-3, 'images_per_s': 50.0}, {'epoch': 2, 'loss': 1.5, 'lr': 1e-3},
        {'epoch': 2, 'rank1': 0.4, 'mAP': 0.25, 'mINP': 0.125}, {'epoch': 3, 'loss': 1.2, 'lr': 1e-4},
        {'epoch': 3, 'rank1': 0.5, 'mAP': 0.3}]
    picture = (tmp_path / 'curves.png').read_bytes()
    assert picture != first_picture and Image.open(tmp_path / 'curves.png').size == (1200, 360)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['curves.png', 'metrics.jsonl']  # no temp files left

    # Resumed from the epoch-2 checkpoint: epoch 3 of the interrupted run is replaced, and a
    # line it was killed while writing is dropped.
    with open(tmp_path / 'metrics.jsonl', 'a') as f:
        f.write('{"epoch": 4, "lo')
    resumed = TrainingLog(tmp_path)
    resumed.epoch(3, 1.1, 1e-4)
    assert records(tmp_path / 'metrics.jsonl') == [
        {'epoch': 1, 'loss': 2.0, 'lr': 1e-3, 'images_per_s': 50.0}, {'epoch': 2, 'loss': 1.5, 'lr': 1e-3},
        {'epoch': 2, 'rank1': 0.4, 'mAP': 0.25, 'mINP': 0.125}, {'epoch': 3, 'loss': 1.1, 'lr': 1e-4}]
    assert (tmp_path / 'curves.png').read_bytes() != picture


def test_training_log_tensorboard(tmp_path, capsys):
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        TrainingLog(tmp_path, tensorboard=True).epoch(1, 1.0, 1e-3)
        assert 'pip install tensorboard' in capsys.readouterr().out
        return
    TrainingLog(tmp_path, tensorboard=True).epoch(1, 1.0, 1e-3)
    assert any((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))
