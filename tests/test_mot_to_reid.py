"""mot_to_reid.py: MOTChallenge sequences (generated here in the real layout) to image_folder /
video_folder trees."""
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import data_manager
import mot_to_reid
from eval_metrics import evaluate
from mot_to_reid import InputError, convert

REPO = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 640, 480
FPS = {'MOT17-01': 10, 'dance0001': mot_to_reid.DEFAULT_FRAME_RATE}  # dance0001 has no seqinfo.ini


def colour(track):
    """A distinct saturated colour per track id."""
    return [(230, 30, 30), (30, 230, 30), (30, 30, 230), (230, 230, 30), (230, 30, 230), (30, 230, 230),
            (240, 140, 20), (140, 20, 240), (20, 140, 90), (250, 250, 250)][track % 10]


def mot17_rows():
    """MOT17-style rows (frame, id, x, y, w, h, flag, class, visibility) over 30 frames: tracks
    1, 2, 6, 7, 9 give crops; 3 (too small), 4 (flag 0), 5 (a car) and 8 (outside) none."""
    rows = []
    for f in range(1, 31):
        rows += [(f, 1, 60, 100, 40, 120, 1, 1, 1.0),
                 (f, 2, 120, 50, 50, 150, 1, 1, 0.1 if 11 <= f <= 15 else 0.9),  # occluded in frames 11-15
                 (f, 3, 200, 100, 30, 40, 1, 1, 1.0),     # 40 px high
                 (f, 4, 260, 100, 40, 120, 0, 1, 1.0),    # ignored
                 (f, 5, 320, 100, 60, 120, 1, 3, 1.0),    # class 3, car
                 (f, 6, 600, 400, 80, 120, 1, 1, 0.5),    # partly below and right of the image: 40x80
                 (f, 7, -20, 200, 60, 100, 1, 1, 0.6),    # partly left of the image: 40x100
                 (f, 8, 700, 100, 40, 120, 1, 1, 1.0)]    # right of the image
        if f <= 3:
            rows.append((f, 9, 400, 100, 40, 100, 1, 1, 1.0))  # 3 frames: one crop with --every 5
    return rows


def dance_rows():
    """DanceTrack/SportsMOT-style rows over 20 frames: ids from 0, flag, class and visibility 1."""
    return [(f, t, 100 + 200 * t, 100, 60, 150, 1, 1, 1) for f in range(1, 21) for t in (0, 1)]


def write_sequence(seq_dir, rows, num_frames, digits, seqinfo, separator=','):
    """<seq>/img1/<frame>.jpg (boxes drawn in their track's colour on grey), <seq>/gt/gt.txt and
    optionally <seq>/seqinfo.ini."""
    (seq_dir / 'img1').mkdir(parents=True)
    (seq_dir / 'gt').mkdir()
    by_frame = defaultdict(list)
    for row in rows:
        by_frame[row[0]].append(row)
    for f in range(1, num_frames + 1):
        img = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
        for _, track, x, y, w, h, *_ in by_frame[f]:
            img[max(0, y):max(0, y + h), max(0, x):max(0, x + w)] = colour(track)
        Image.fromarray(img).save(seq_dir / 'img1' / f'{f:0{digits}d}.jpg', quality=95)
    (seq_dir / 'gt' / 'gt.txt').write_text(''.join(separator.join(map(str, row)) + '\n' for row in rows))
    if seqinfo:
        (seq_dir / 'seqinfo.ini').write_text(
            f'[Sequence]\nname={seq_dir.name}\nimDir=img1\nframeRate={FPS[seq_dir.name]}\nseqLength={num_frames}\n'
            f'imWidth={WIDTH}\nimHeight={HEIGHT}\nimExt=.jpg\n')


@pytest.fixture(scope='module')
def sequences(tmp_path_factory):
    """A folder of two sequences: MOT17-01 (MOT17 layout, seqinfo.ini, 10 fps) and dance0001
    (8-digit frame names, ', ' separators, no seqinfo.ini)."""
    root = tmp_path_factory.mktemp('mot')
    write_sequence(root / 'MOT17-01', mot17_rows(), 30, 6, seqinfo=True)
    write_sequence(root / 'dance0001', dance_rows(), 20, 8, seqinfo=False, separator=', ')
    return root


def listing(out):
    """{split: {identity: {camera: [frame numbers]}}} of an image tree, or of a tracklet tree
    with the frames of all tracklets of a camera together."""
    tree = {}
    for split in ('train', 'query', 'gallery'):
        tree[split] = {}
        if not (out / split).is_dir():
            continue
        for identity in sorted(os.listdir(out / split)):
            cams = tree[split][identity] = {}
            for path in sorted((out / split / identity).rglob('*.jpg')):
                camera = path.relative_to(out / split / identity).parts[0]
                cams.setdefault(camera, []).append(int(re.search(r'_f(\d+)\.jpg$', path.name)[1]))
    return tree


def test_identities_filters_and_crops(sequences, tmp_path):
    out = tmp_path / 'reid'
    summary = convert([str(sequences)], str(out), test_fraction=0, verbose=False)
    expected = {'MOT17-01_1': [1, 6, 11, 16, 21, 26], 'MOT17-01_2': [1, 6, 16, 21, 26],
                'MOT17-01_6': [1, 6, 11, 16, 21, 26], 'MOT17-01_7': [1, 6, 11, 16, 21, 26],
                'MOT17-01_9': [1], 'dance0001_0': [1, 6, 11, 16], 'dance0001_1': [1, 6, 11, 16]}
    tree = listing(out)
    assert sorted(os.listdir(out)) == ['train']
    assert {identity: sorted(sum(cams.values(), [])) for identity, cams in tree['train'].items()} == expected
    assert summary['identities']['train'] == sorted(expected) and summary['crops']['train'] == 32
    # 30 rows each for tracks 3, 4, 5 and 8; 5 occluded rows of track 2; the rest of --every 5.
    assert summary['left_out'] == {'flag': 30, 'class': 30, 'visibility': 5, 'outside': 30, 'height': 30,
                                   'no_frame': 0, 'every': 24 + 20 + 24 + 24 + 2 + 16 + 16,
                                   'max_per_identity': 0, 'gap': 0}
    # Segments: contiguous runs of equal length in time order, one crop per segment for short tracks.
    assert tree['train']['MOT17-01_1'] == {'s1': [1, 6], 's2': [11, 16], 's3': [21, 26]}
    assert tree['train']['MOT17-01_2'] == {'s1': [1, 6], 's2': [16, 21], 's3': [26]}
    assert tree['train']['MOT17-01_9'] == {'s1': [1]}
    # Crops are the boxes clipped to the image, cut from the right place (the track's colour).
    sizes = {'MOT17-01_1': (40, 120), 'MOT17-01_2': (50, 150), 'MOT17-01_6': (40, 80), 'MOT17-01_7': (40, 100),
             'dance0001_0': (60, 150), 'dance0001_1': (60, 150)}
    for identity, size in sizes.items():
        track = int(identity.rsplit('_', 1)[1])
        for path in (out / 'train' / identity).rglob('*.jpg'):
            with Image.open(path) as crop:
                assert crop.size == size, path
                assert np.abs(np.asarray(crop, np.float32).mean((0, 1)) - colour(track)).max() < 12, path
    dataset = data_manager.init_dataset('image_folder', root=str(out), verbose=False)
    assert not dataset.has_test_split and dataset.has_camera_ids
    assert dataset.num_train_pids == 7 and len(dataset.train) == 32 and dataset.num_train_cams == 3


def test_filter_options(sequences, tmp_path):
    everything = convert([str(sequences / 'MOT17-01')], str(tmp_path / 'a'), test_fraction=0, classes=None,
                         min_visibility=0, min_height=0, every=1, verbose=False)
    # Only the flag-0 track and the box outside the image are left.
    assert everything['left_out'] == {**dict.fromkeys(mot_to_reid.REASONS, 0), 'flag': 30, 'outside': 30}
    assert everything['crops']['train'] == 6 * 30 + 3
    assert len(listing(tmp_path / 'a')['train']['MOT17-01_2']['s2']) == 10
    capped = convert([str(sequences / 'MOT17-01')], str(tmp_path / 'b'), test_fraction=0, every=1,
                     max_per_identity=4, classes=mot_to_reid.parse_classes('1,3'), verbose=False)
    tree = listing(tmp_path / 'b')['train']
    assert sorted(sum(tree['MOT17-01_1'].values(), [])) == [1, 11, 20, 30]  # evenly spread in time
    assert sorted(sum(tree['MOT17-01_5'].values(), [])) == [1, 11, 20, 30]  # class 3 asked for
    assert capped['left_out']['max_per_identity'] == 26 * 4 + 21 and capped['left_out']['class'] == 0


def test_time_aware_split(sequences, tmp_path):
    options = dict(test_fraction=0.5, gap=0.6, seed=3, verbose=False)
    summary = convert([str(sequences)], str(tmp_path / 'a'), **options)
    tree = listing(tmp_path / 'a')
    test_ids = set(tree['query'])
    assert len(test_ids) == 4 and set(tree['gallery']) == test_ids and not test_ids & set(tree['train'])
    assert set(tree['train']) | test_ids == set(summary['identities']['train']) | set(summary['identities']['query'])
    assert 'MOT17-01_9' in tree['train'], 'a one-crop identity cannot be split'
    for identity in test_ids:
        (query_cam, query_frames), = tree['query'][identity].items()  # one segment
        assert query_cam not in tree['gallery'][identity]
        gap_frames = round(0.6 * FPS[identity.rsplit('_', 1)[0]])
        gallery_frames = sum(tree['gallery'][identity].values(), [])
        assert min(abs(q - g) for q in query_frames for g in gallery_frames) >= gap_frames
    assert summary['left_out']['gap'] > 0
    # Reproducible with the seed.
    convert([str(sequences)], str(tmp_path / 'b'), **options)
    assert listing(tmp_path / 'b') == tree

    dataset = data_manager.init_dataset('image_folder', root=str(tmp_path / 'a'), verbose=False)
    assert dataset.has_test_split and dataset.has_camera_ids and dataset.num_query_pids == 4
    for split in ('train', 'query', 'gallery'):
        for path, _, camid in getattr(dataset, split):
            assert Path(path).parent.name == f's{camid + 1}'
    # Every query has a match in another segment and none in its own: a perfect ranking scores 100%.
    q_pids, q_cams = np.array([p for _, p, _ in dataset.query]), np.array([c for _, _, c in dataset.query])
    g_pids, g_cams = np.array([p for _, p, _ in dataset.gallery]), np.array([c for _, _, c in dataset.gallery])
    assert not ((q_pids[:, None] == g_pids[None]) & (q_cams[:, None] == g_cams[None])).any()
    cmc, mean_ap = evaluate((q_pids[:, None] != g_pids[None]).astype(np.float32), q_pids, g_pids, q_cams, g_cams,
                            verbose=False)[:2]
    assert cmc[0] == 1 and mean_ap == pytest.approx(1)


def test_tracklets(sequences, tmp_path):
    options = dict(test_fraction=0.5, gap=0.6, seed=3, verbose=False)
    images = convert([str(sequences)], str(tmp_path / 'images'), **options)
    summary = convert([str(sequences)], str(tmp_path / 'video'), tracklets=True, **options)
    assert summary['crops'] == images['crops'] and summary['identities'] == images['identities']
    assert listing(tmp_path / 'video') == listing(tmp_path / 'images')
    dataset = data_manager.init_dataset('video_folder', root=str(tmp_path / 'video'), verbose=False)
    assert dataset.video and dataset.has_camera_ids and dataset.num_query_pids == len(summary['identities']['query'])
    for split in ('train', 'query', 'gallery'):
        tracklets = getattr(dataset, split)
        assert len(tracklets) == summary['tracklets'][split]
        assert sum(len(frames) for frames, _, _ in tracklets) == summary['crops'][split]
        for frames, _, camid in tracklets:
            folder = Path(frames[0]).parent
            assert {Path(f).parent for f in frames} == {folder}, 'one tracklet per folder'
            assert folder.parent.name == f's{camid + 1}' and folder.name == f'{folder.parent.parent.name}_s{camid + 1}'
            numbers = [int(re.search(r'_f(\d+)\.jpg$', f)[1]) for f in frames]
            assert numbers == sorted(numbers), 'frames in time order'
    assert len(dataset.query) == dataset.num_query_pids, 'one query tracklet per identity'


def test_duplicate_sequences_and_existing_output(sequences, tmp_path):
    # MOT17 ships each sequence once per detector, with the same gt.txt.
    root = tmp_path / 'train'
    shutil.copytree(sequences / 'MOT17-01', root / 'MOT17-01-DPM')
    shutil.copytree(sequences / 'MOT17-01', root / 'MOT17-01-FRCNN')
    summary = convert([str(root)], str(tmp_path / 'out'), test_fraction=0, verbose=False)
    assert summary['skipped'] == [str(root / 'MOT17-01-FRCNN')]
    assert all(name.startswith('MOT17-01-DPM_') for name in summary['identities']['train'])
    with pytest.raises(InputError, match='--out .* exists'):
        convert([str(root)], str(tmp_path / 'out'), verbose=False)


def test_cli(sequences, tmp_path):
    result = subprocess.run([sys.executable, str(REPO / 'mot_to_reid.py'), str(sequences),
                             '--out', str(tmp_path / 'out'), '--test-fraction', '0.5', '--gap', '0.6', '--seed', '3',
                             '--classes', '1'],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert re.search(r'^  train +\| +3 \| +\d+$', result.stdout, re.M), result.stdout
    assert re.search(r'^  query +\| +4 \| ', result.stdout, re.M) and 'Boxes left out:' in result.stdout
    assert re.search(r'^ +30  consider flag 0', result.stdout, re.M)
    assert 'dance0001 has no seqinfo.ini frameRate' in result.stdout
    assert listing(tmp_path / 'out') == listing(_converted(sequences, tmp_path / 'function'))


def _converted(sequences, out):
    convert([str(sequences)], str(out), test_fraction=0.5, gap=0.6, seed=3, verbose=False)
    return out


@pytest.mark.parametrize('case', ['missing gt', 'bad row', 'bad flag', 'bad classes', 'not a sequence'])
def test_bad_input(sequences, tmp_path, case):
    args = [str(tmp_path / 'seq'), '--out', str(tmp_path / 'out')]
    if case in ('missing gt', 'bad row'):
        shutil.copytree(sequences / 'MOT17-01', tmp_path / 'seq')
        if case == 'missing gt':
            (tmp_path / 'seq' / 'gt' / 'gt.txt').unlink()
            expected = re.escape(str(tmp_path / 'seq' / 'gt' / 'gt.txt')) + ': no such file'
        else:
            with open(tmp_path / 'seq' / 'gt' / 'gt.txt', 'a') as f:
                f.write('31,1,10,10\n')
            expected = re.escape(str(tmp_path / 'seq' / 'gt' / 'gt.txt')) + ', line 244: .* not a MOTChallenge row'
    elif case == 'bad flag':
        args = [str(sequences), '--out', str(tmp_path / 'out'), '--segments', '1']
        expected = '--segments 1: give 2 or more'
    elif case == 'bad classes':
        args = [str(sequences), '--out', str(tmp_path / 'out'), '--classes', 'people']
        expected = '--classes people: give class numbers'
    else:
        (tmp_path / 'seq').mkdir()
        expected = re.escape(str(tmp_path / 'seq')) + ': neither a sequence folder'
    result = subprocess.run([sys.executable, str(REPO / 'mot_to_reid.py'), *args], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1 and re.match('error: ' + expected, result.stderr), result.stderr
    assert not (tmp_path / 'out').exists() and not (tmp_path / 'out.partial').exists()
