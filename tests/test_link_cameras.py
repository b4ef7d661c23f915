"""Multi-camera linking (link_cameras.py, mtmc_scene.py, mtmc_eval.py): scene reading and its
one-line errors, videos through OpenCV (optional), the box choice and the split at appearance
jumps, multi-camera IDF1 against motmetrics run by hand, and end to end on a generated scene with
a briefly trained model: linking beats no linking and the same features clustered without
constraints; the outputs read back; a saved tracklet table relinks without images."""
import json
import re
import shutil

import motmetrics as mm
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.cluster import AgglomerativeClustering

import link_cameras
import mtmc_scene
import synthetic_mtmc
from cluster import pairwise_scores
from conftest import FAST, run_main, run_script
from feature_extractor import pretrained_checkpoint
from mtmc_eval import MultiCameraEvaluation
from tracklet_table import TrackletTable

SIZE = (64, 48)  # width, height of the hand-made scenes' frames


def write_camera(folder, tracks, frames=5, fps=10, colour=(90, 120, 150)):
    """A camera folder: img1/000001.jpg.. of SIZE, seqinfo.ini, tracks.txt with the given rows."""
    (folder / 'img1').mkdir(parents=True)
    for frame in range(1, frames + 1):
        Image.new('RGB', SIZE, colour).save(folder / 'img1' / f'{frame:06d}.jpg')
    (folder / 'seqinfo.ini').write_text(f'[Sequence]\nframeRate={fps}\nimWidth={SIZE[0]}\nimHeight={SIZE[1]}\n')
    (folder / 'tracks.txt').write_text(''.join(row + '\n' for row in tracks))


@pytest.fixture
def tiny_scene(tmp_path):
    scene = tmp_path / 'scene'
    write_camera(scene / 'c001', ['1,1,10,5,10,30,0.9,-1,-1,-1', '2,1,11,5,10,30,0.9,-1,-1,-1'])
    write_camera(scene / 'c002', ['3,4,20,5,10,30,0.8,-1,-1,-1', '4,4,21,5,10,30,0.8,-1,-1,-1'])
    return scene


@pytest.fixture(scope='module')
def random_checkpoint(tmp_path_factory):
    """A small randomly initialised model with a recorded FPR 1e-3 threshold (errors and plumbing)."""
    checkpoint = pretrained_checkpoint('osnet_x0_25', height=64, width=32)
    checkpoint['tracker_thresholds'] = {'0.0001': 0.1, '0.001': 0.2, '0.01': 0.3}
    path = tmp_path_factory.mktemp('random') / 'random.pth.tar'
    torch.save(checkpoint, path)
    return path


def test_scene_reading(tiny_scene, tmp_path):
    offsets = tmp_path / 'cam_timestamp.txt'
    offsets.write_text('c002 1.5\n')
    c001, c002 = mtmc_scene.read_scene(str(tiny_scene), time_offsets=str(offsets))
    assert (c001.name, c001.fps, c001.size, c002.offset) == ('c001', 10.0, SIZE, 1.5)
    assert c002.time(np.array([1, 11])).tolist() == [1.5, 2.5]
    assert c001.tracks.frame.tolist() == [1, 2] and c002.tracks.boxes[1].tolist() == [21, 5, 10, 30]
    assert [frame for frame, image in c001.read_frames([2, 4])] == [2, 4]
    assert mtmc_scene.camera_number('c012') == 12


@pytest.mark.parametrize('case', ['no frames', 'no tracks', 'fields', 'outside', 'missing frame', 'offsets',
                                  'feature size', 'no threshold', 'learning cameras'])
def test_bad_input(tiny_scene, tmp_path, random_checkpoint, monkeypatch, capsys, case):
    """Each bad input is one line naming the file (and line), and nothing is written."""
    tracks = tiny_scene / 'c002' / 'tracks.txt'
    args = ['--scene', tiny_scene, '--resume', random_checkpoint, '--output', tmp_path / 'out']
    if case == 'no frames':
        shutil.rmtree(tiny_scene / 'c002' / 'img1')
        expected = re.escape(str(tiny_scene / 'c002')) + ': no frames .* and no video'
    elif case == 'no tracks':
        tracks.unlink()
        expected = re.escape(str(tiny_scene / 'c002')) + ': no tracks file tracks.txt'
    elif case == 'fields':
        tracks.write_text(tracks.read_text() + '5,4,20,5,10\n')
        expected = re.escape(str(tracks)) + r", line 3: '5,4,20,5,10' is not a MOTChallenge row"
    elif case == 'outside':
        tracks.write_text(tracks.read_text() + '5,4,70,5,10,30,1\n')
        expected = re.escape(str(tracks)) + r', line 3: box \(70, 5, 10, 30\) lies outside the 64x48 image'
    elif case == 'missing frame':
        tracks.write_text(tracks.read_text() + '9,4,20,5,10,30,1\n')
        expected = re.escape(str(tracks)) + ', line 3: frame 9 has no image'
    elif case == 'offsets':
        (tmp_path / 'offsets.txt').write_text('c001 0\nc009 2.0\n')
        args += ['--time-offsets', tmp_path / 'offsets.txt']
        expected = re.escape(str(tmp_path / 'offsets.txt')) + ', line 2: camera c009 is not in the scene'
    elif case == 'feature size':
        TrackletTable(['c001', 'c002'], [0, 1], [1, 4], [0, 0], [1, 3], [2, 4], [0, .3], [.1, .4], [2, 2],
                      np.eye(2, 8, dtype=np.float32)).save(tmp_path / 't.npz')
        args += ['--tracklets', tmp_path / 't.npz']
        expected = '--tracklets ' + re.escape(str(tmp_path / 't.npz')) + r': features are 8-d, expected \d+-d'
    elif case == 'learning cameras':
        write_camera(tmp_path / 'other' / 'c001', ['1,1,10,5,10,30,0.9,-1,-1,-1'])
        args += ['--learn-transitions', tmp_path / 'other']
        expected = '--learn-transitions ' + re.escape(str(tmp_path / 'other')) + ': has no camera c002 of --scene'
    else:
        args = ['--scene', tiny_scene, '--tracklets', tmp_path / 't.npz', '--output', tmp_path / 'out']
        TrackletTable(['c001', 'c002'], [0, 1], [1, 4], [0, 0], [1, 3], [2, 4], [0, .3], [.1, .4], [2, 2],
                      np.eye(2, 8, dtype=np.float32)).save(tmp_path / 't.npz')
        expected = 'no linking threshold: no checkpoint given; pass --threshold'
    code, _, err = run_main(link_cameras, monkeypatch, capsys, *args)
    assert code == 1
    assert len(err.splitlines()) == 1 and re.match('error: ' + expected, err), err
    assert not (tmp_path / 'out').exists() and not (tmp_path / 'out.partial').exists()


def test_video_without_opencv_says_what_to_install(tiny_scene, monkeypatch):
    shutil.rmtree(tiny_scene / 'c002' / 'img1')
    (tiny_scene / 'c002' / 'vdo.avi').write_bytes(b'not decoded')
    monkeypatch.setattr(mtmc_scene, 'cv2', None)
    with pytest.raises(mtmc_scene.InputError, match='vdo.avi: reading a video needs OpenCV: '
                                                    'pip install opencv-python-headless'):
        mtmc_scene.read_scene(str(tiny_scene))


def test_video_frames_are_decoded_in_order(tiny_scene):
    """A camera given as vdo.avi (MJPG): the frames the tracks name come back, numbered from 1."""
    cv2 = pytest.importorskip('cv2')
    folder = tiny_scene / 'c002'
    shutil.rmtree(folder / 'img1')
    (folder / 'seqinfo.ini').unlink()
    writer = cv2.VideoWriter(str(folder / 'vdo.avi'), cv2.VideoWriter_fourcc(*'MJPG'), 5, SIZE)
    for frame in range(1, 7):
        writer.write(np.full((SIZE[1], SIZE[0], 3), frame * 40, dtype=np.uint8))
    writer.release()
    camera = mtmc_scene.read_scene(str(tiny_scene))[1]
    assert (camera.fps, camera.size, camera.video) == (5.0, SIZE, str(folder / 'vdo.avi'))
    frames = list(camera.read_frames([3, 4, 6]))
    assert [f for f, _ in frames] == [3, 4, 6]
    assert [round(np.asarray(image).mean() / 40) for _, image in frames] == [3, 4, 6]
    with pytest.raises(mtmc_scene.InputError, match=r'tracks.txt, line \d: frame 9 is past the end of .*vdo.avi'):
        camera.tracks.frame[0] = 9
        list(camera.read_frames([9]))


def test_choose_boxes_skips_small_cut_and_hidden_boxes():
    # rows: track 1 fine; track 2 touches the border; track 3 too small; track 4 behind track 5
    boxes = np.array([[10, 5, 10, 30], [0, 5, 10, 30], [30, 5, 5, 10], [40, 2, 10, 30], [42, 6, 10, 30.]])
    tracks = mtmc_scene.Tracks('t', np.arange(5), np.ones(5, np.int64), np.array([1, 2, 3, 4, 5]), boxes, np.ones(5))
    chosen = mtmc_scene.choose_boxes(tracks, SIZE, min_box_height=20, max_occlusion=0.5)
    assert sorted(chosen) == [1, 5]  # 5 stands in front of 4 (lower bottom edge): 4 is 69% hidden
    assert mtmc_scene.occlusion(tracks.frame, boxes)[3] == pytest.approx(8 * 26 / 300)


def test_split_at_an_appearance_jump():
    rng = np.random.default_rng(0)
    a, b = np.eye(16)[0], np.eye(16)[1]
    features = np.stack([a] * 9 + [b] * 5) + 0.05 * rng.normal(size=(14, 16))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    assert mtmc_scene.split_points(features, 0.3) == [9]
    assert mtmc_scene.split_points(features[:9], 0.3) == [] and mtmc_scene.split_points(features, None) == []
    three = np.concatenate([features, np.stack([a] * 4)])
    assert mtmc_scene.split_points(three, 0.3) == [9, 14]


def test_multi_camera_idf1_equals_motmetrics_by_hand():
    """Two cameras, two people; the tracker broke person 1 into tracklets 10 (c1) and 11 (c2) and
    mixed person 2 into 12. Frames of both cameras form one sequence keyed by (camera, frame)."""
    box, far = [0, 0, 10, 20], [30, 0, 10, 20]
    truth = {'c1': (np.array([1, 2, 2, 3]), np.array([1, 1, 2, 2]), np.array([box, box, far, far], float)),
             'c2': (np.array([1, 2]), np.array([1, 1]), np.array([box, box], float))}
    frames = [np.array([1, 2, 2, 3]), np.array([1, 2])]
    boxes = [np.array([box, box, far, far], float), np.array([box, [1, 0, 10, 20]], float)]
    units = [np.array([10, 10, 12, 12]), np.array([11, 11])]
    evaluation = MultiCameraEvaluation(['c1', 'c2'], truth, frames, boxes, units)
    for labels in ({10: 1, 11: 2, 12: 3}, {10: 1, 11: 1, 12: 3}, {10: 1, 11: 2, 12: 2}):
        by_hand = mm.MOTAccumulator(auto_id=False)
        for c, name in enumerate(['c1', 'c2']):
            for frame in (1, 2, 3):
                g, h = truth[name][0] == frame, frames[c] == frame
                iou = mm.distances.boxiou(truth[name][2][g][:, None], boxes[c][h][None])
                by_hand.update(truth[name][1][g], [labels[u] for u in units[c][h]],
                               np.where(iou >= 0.5, 1 - iou, np.nan), frameid=1000 * c + frame)
        expected = mm.metrics.create().compute(by_hand, metrics=['idf1', 'idp', 'idr'], name='all')
        scores = evaluation.scores(labels)['all']
        assert scores == pytest.approx({m: expected.loc['all', m] for m in ('idf1', 'idp', 'idr')})
    # linked: person 1 is id 1 in all 4 of its boxes, person 2 id 3 in its 2: every box right
    assert evaluation.scores({10: 1, 11: 1, 12: 3})['all']['idf1'] == 1.0
    # unlinked: 11 is a second id for person 1; IDTP = 2 + 2 of 6 boxes each side
    assert evaluation.scores({10: 1, 11: 2, 12: 3})['all']['idf1'] == pytest.approx(4 / 6)
    assert evaluation.scores({10: 1, 11: 2, 12: 3})['c2']['idf1'] == 1.0
    assert evaluation.majority_truth() == {10: 1, 11: 1, 12: 2}
    with pytest.raises(ValueError, match='two boxes in one camera frame'):
        evaluation.scores({10: 1, 11: 2, 12: 1})


@pytest.fixture(scope='module')
def generated(tmp_path_factory):
    """A generated scene with its true camera graph as a topology file, and a model trained
    briefly on other people seen by the same cameras (synthetic_mtmc.make_train_set)."""
    root = tmp_path_factory.mktemp('mtmc')
    synthetic_mtmc.make_scene(root / 'scene', num_cameras=4, num_people=10, seconds=30, seed=2)
    synthetic_mtmc.make_train_set(root / 'train', num_ids=60, num_test_ids=10, seed=2)
    pairs = json.loads((root / 'scene' / 'transitions_true.json').read_text())['pairs']
    (root / 'topology.txt').write_text(''.join(f'{p["from"]} {p["to"]} {p["min"]} {p["max"]}\n' for p in pairs))
    run_script('train_img_model_xent_htri.py', *FAST, '-d', 'image_folder', '--root', root / 'train',
               '-a', 'timm:resnet18', '--max-epoch', '6', '--print-freq', '50', '--save-dir', root / 'model')
    return root


def test_linking_a_generated_scene(generated, tmp_path, monkeypatch, capsys):
    """Calibrated on a labelled scene (here the same one), linking beats no linking in
    multi-camera IDF1, and the same features clustered without constraints in pairwise F1; the
    outputs read back; the saved table and transition model relink the scene without images
    to the same identities."""
    scene, out = generated / 'scene', tmp_path / 'out'
    code, stdout, err = run_main(link_cameras, monkeypatch, capsys, '--scene', scene, '--output', out,
                                 '--resume', generated / 'model' / 'best_model.pth.tar', '--gt', 'gt/gt.txt',
                                 '--learn-transitions', scene, '--topology', generated / 'topology.txt')
    assert code == 0, err
    assert re.search(r'^Calibrated on .*: threshold [\d.]+, prior weight [\d.]+ \(multi-camera IDF1 [\d.]+% there\)$',
                     stdout, re.M)
    summary = json.loads((out / 'summary.json').read_text())
    linked, alone = summary['scores']['linked']['all'], summary['scores']['no_linking']['all']
    assert linked['idf1'] > alone['idf1'] + 0.05, stdout

    table = TrackletTable.load(out / 'tracklets.npz')
    identities = np.array([line.split() for line in (out / 'identities.txt').read_text().splitlines()[1:]])
    global_id = identities[:, 5].astype(int)
    known = table.gt_id >= 0
    free = AgglomerativeClustering(n_clusters=None, metric='cosine', linkage='average',
                                   distance_threshold=summary['threshold']).fit_predict(table.features)
    f1 = pairwise_scores(global_id[known], table.gt_id[known])[2]
    assert f1 > pairwise_scores(free[known], table.gt_id[known])[2]

    cameras = mtmc_scene.read_scene(str(scene))
    aicity = np.loadtxt(out / 'aicity.txt', ndmin=2)
    assert len(aicity) == sum(len(c.tracks.frame) for c in cameras) and (aicity[:, 7:] == -1).all()
    for camera in cameras:
        written = np.loadtxt(out / f'{camera.name}.txt', delimiter=',', ndmin=2)
        written = written[np.lexsort((written[:, 3], written[:, 2], written[:, 0]))]
        boxes = camera.tracks.boxes
        order = np.lexsort((boxes[:, 1], boxes[:, 0], camera.tracks.frame))
        assert written[:, 0].tolist() == camera.tracks.frame[order].tolist()
        assert written[:, 2:6] == pytest.approx(boxes[order])
        for name, local, _, first, last, gid in identities[identities[:, 0] == camera.name]:
            frames = camera.tracks.frame[order]
            rows = (camera.tracks.track[order] == int(local)) & (frames >= int(first)) & (frames <= int(last))
            assert rows.any() and (written[rows, 1] == int(gid)).all()
        mine = aicity[aicity[:, 0] == mtmc_scene.camera_number(camera.name)]
        assert sorted(map(tuple, mine[:, [2, 1, 3, 4, 5, 6]])) == sorted(map(tuple, np.round(written[:, :6])))
    assert (out / 'pictures' / 'index.html').is_file()

    for camera in cameras:
        shutil.rmtree(camera.folder + '/img1')
    code, _, err = run_main(link_cameras, monkeypatch, capsys, '--scene', scene, '--tracklets', out / 'tracklets.npz',
                            '--transitions', out / 'transitions.json', '--threshold', summary['threshold'],
                            '--prior-weight', summary['prior_weight'], '--output', tmp_path / 'again')
    assert code == 0, err
    assert (tmp_path / 'again' / 'identities.txt').read_text() == (out / 'identities.txt').read_text()
    for camera in cameras:
        assert (tmp_path / 'again' / f'{camera.name}.txt').read_text() == (out / f'{camera.name}.txt').read_text()
