"""camera_transitions: the transition model learnt from stays (windows, composition, penalties,
topology files, files) and st-ReID's fusion in re-ID evaluation."""
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest

import engine
import synthetic_data
import synthetic_mtmc
import train_img_model_xent
from camera_transitions import (
    COST_CAP,
    NoFrameNumbersError,
    TransitionFileError,
    TransitionModel,
    frame_times,
    st_fuse,
    st_model,
    st_probability,
    stays_from_mot,
)
from conftest import FAST, shared_path
from reference_st_reid import reference_distribution, reference_probability

CAMERAS = ['c001', 'c002', 'c003', 'c004']
# The generated camera graph: c001 -> c002, then c002 -> c003 or c002 -> c004; transit times
# uniform in these windows (seconds), stays uniform in STAY. c001 -> c004 is never direct.
TRUE_WINDOWS = {('c001', 'c002'): (10.0, 20.0), ('c002', 'c003'): (5.0, 15.0), ('c002', 'c004'): (30.0, 40.0)}
STAY = (5.0, 15.0)


def walk_stays(num_people=300, seed=0):
    """Stays (identity, camera, enter, exit) of people walking c001 -> c002 -> c003 or c004."""
    rng = np.random.default_rng(seed)
    rows = []
    for person in range(num_people):
        time = rng.uniform(0, 1000)
        route = ['c001', 'c002', 'c003' if rng.random() < 0.5 else 'c004']
        for step, camera in enumerate(route):
            duration = rng.uniform(*STAY)
            rows.append((person, CAMERAS.index(camera), time, time + duration))
            time += duration
            if step + 1 < len(route):
                time += rng.uniform(*TRUE_WINDOWS[camera, route[step + 1]])
    identity, camera, enter, exit_ = (np.array(column) for column in zip(*rows))
    return identity, camera, enter, exit_


@pytest.fixture(scope='module')
def model():
    return TransitionModel.fit(*walk_stays(), CAMERAS)


def test_learnt_windows_recover_the_true_ones(model):
    for (a, b), (true_lo, true_hi) in TRUE_WINDOWS.items():
        lo, hi = model.window(a, b, widen=0)
        assert true_lo - 5 <= lo <= true_lo and true_hi <= hi <= true_hi + 5, (a, b, lo, hi)
        inside = np.linspace(true_lo, true_hi, 21)
        assert np.isfinite(model.cost(a, b, inside, widen=0)).all()
        assert np.isinf(model.cost(a, b, [lo - 0.5, hi + 0.5], widen=0)).all()
        assert model.cost(a, b, [(true_lo + true_hi) / 2], widen=0)[0] < 0.5  # typical: near 0
    assert model.pairs['c001', 'c002'].count == 300


def test_composition_covers_a_route_never_observed(model):
    """c001 -> c004 goes through c002: transit + stay + transit, 10+5+30 .. 20+15+40 seconds."""
    assert model.pairs['c001', 'c004'].source == 'composed'
    lo, hi = model.window('c001', 'c004', widen=0)
    assert 45 - 10 <= lo <= 45 and 75 <= hi <= 75 + 10
    costs = model.cost('c001', 'c004', np.linspace(46, 74, 15), widen=0)
    assert np.isfinite(costs).all() and costs.min() < 0.1
    assert abs(np.linspace(46, 74, 15)[costs.argmin()] - 60) <= 2  # the sum's mode: 15 + 10 + 35
    # Indices name cameras too.
    assert model.window(0, 3, widen=0) == (lo, hi)


def test_unobserved_pair_is_a_finite_penalty(model):
    """Nobody walked back to c001: a penalty inside the widest known window, not a ban."""
    window = model.window('c004', 'c001', widen=0)
    assert window is not None
    costs = model.cost('c004', 'c001', [window[0], 30.0, window[1]], widen=0)
    assert costs.tolist() == [model.unobserved_cost] * 3
    assert np.isinf(model.cost('c004', 'c001', [window[0] - 1], widen=0)[0])
    assert 0 < model.unobserved_cost < COST_CAP
    with pytest.raises(ValueError, match='different cameras'):
        model.window('c002', 'c002')


def test_widening_takes_the_best_transit_within_the_missed_part(model):
    """cost(gap, widen=W) is the smallest cost(t, widen=0) over transits t in [gap - W, gap]
    (a brute-force reference over a fine grid of t); the learnt widening is a stay quantile."""
    width = 7.0
    gaps = np.arange(0.0, 40.0, 0.25)
    wide = model.cost('c001', 'c002', gaps, widen=width)
    for gap, cost in zip(gaps, wide):
        transits = np.arange(gap - width, gap + 1e-9, model.bin_seconds)
        assert cost == pytest.approx(model.cost('c001', 'c002', transits, widen=0).min())
    lo, hi = model.window('c001', 'c002', widen=0)
    assert model.window('c001', 'c002', widen=width) == (lo, hi + width)
    learnt = model.widening['c001'] + model.widening['c002']
    assert 2 * 12 < learnt < 2 * 15  # the 0.9 quantile of durations uniform in 5..15 s: 14
    assert model.window('c001', 'c002') == pytest.approx((lo, hi + learnt))
    assert model.max_window() >= model.window('c001', 'c004')[1]


def test_learnt_from_a_generated_scene_recovers_its_camera_graph(tmp_path):
    """From the gt.txt files of a generated, unsynchronised scene (synthetic_mtmc): the observed
    pairs are exactly the generator's camera graph, each learnt window holds the true one (to a
    frame, 0.5 s at 2 fps) with at most 5 s to spare, overlapping views give negative windows,
    and the pairs two steps apart are composed."""
    scene = tmp_path / 'scene'
    synthetic_mtmc.make_scene(scene, num_cameras=4, num_people=48, seconds=150, fps=2, seed=2, unsynchronised=True)
    truth = json.loads((scene / 'transitions_true.json').read_text())
    offsets = {name: float(offset) for name, offset in
               (line.split() for line in (scene / 'cam_timestamp.txt').read_text().splitlines())}
    tracks = {name: np.loadtxt(scene / name / 'gt' / 'gt.txt', delimiter=',', ndmin=2)[:, :2].astype(np.int64)
              for name in truth['cameras']}
    model = TransitionModel.fit_mot(tracks, fps=2, offsets=offsets, max_gap=1.0)
    true_pairs = {(p['from'], p['to']): p for p in truth['pairs']}
    assert {pair for pair, d in model.pairs.items() if d.source == 'observed'} == set(true_pairs)
    for (a, b), pair in true_pairs.items():
        lo, hi = model.window(a, b, widen=0)
        assert pair['min'] - 5 <= lo <= pair['min'] + 0.5 and pair['max'] - 0.5 <= hi <= pair['max'] + 5, (a, b, lo, hi)
        if pair['overlap']:
            assert lo < 0
    composed = {pair for pair, d in model.pairs.items() if d.source == 'composed'}
    assert composed == {('c001', 'c003'), ('c003', 'c001'), ('c002', 'c004'), ('c004', 'c002')}


def write(path, text):
    path.write_text(text)
    return path


def test_topology_file_allows_only_its_pairs(tmp_path):
    topology = TransitionModel.from_topology(write(tmp_path / 'topology.txt', (
        '# hand-written\n'
        'c001 c002 10 20\n'
        '\n'
        'c002 c004 -5 40   # overlapping views: negative gaps allowed\n')))
    assert topology.window('c001', 'c002') == (10, 20)
    assert topology.window('c001', 'c004') is None and topology.window('c002', 'c001') is None
    assert topology.cost('c001', 'c002', [9.9, 10, 15, 20, 20.1]).tolist() == [np.inf, 0, 0, 0, np.inf]
    assert topology.cost('c001', 'c002', [25], widen=5).tolist() == [0]
    assert np.isinf(topology.cost('c001', 'c004', [15])).all()
    assert topology.cost('c002', 'c004', [-5])[0] == 0
    assert topology.max_window() == 40

    restricted = TransitionModel.fit(*walk_stays(), CAMERAS, topology=topology)
    assert restricted.pairs['c001', 'c002'].source == 'observed'  # learnt inside the allowed pair
    assert restricted.window('c002', 'c003') is None  # observed, but the topology forbids it
    assert restricted.window('c004', 'c001') is None  # unobserved and unlisted: forbidden, not penalised


@pytest.mark.parametrize('line, message', [
    ('c001 c002 10', 'line 2: expected "FROM TO MIN_SECONDS MAX_SECONDS"'),
    ('c001 c002 ten 20', 'line 2: MIN_SECONDS and MAX_SECONDS must be numbers'),
    ('c001 c002 30 20', 'line 2: need finite MIN_SECONDS <= MAX_SECONDS'),
    ('c001 c001 1 2', 'line 2: c001 to itself'),
    ('c002 c003 1 2', 'line 2: the pair c002 c003 is listed twice'),
])
def test_bad_topology_lines_name_file_and_line(tmp_path, line, message):
    path = write(tmp_path / 'topo.txt', f'c002 c003 1 2\n{line}\n')
    with pytest.raises(TransitionFileError, match=f'{path}, {message}'):
        TransitionModel.from_topology(path)
    with pytest.raises(TransitionFileError, match='no camera pair'):
        TransitionModel.from_topology(write(tmp_path / 'empty.txt', '# nothing\n'))


def test_save_load_roundtrip(model, tmp_path):
    path = tmp_path / 'transitions.json'
    model.save(path)
    loaded = TransitionModel.load(path)
    gaps = np.linspace(-20, 150, 200)
    for a in CAMERAS:
        for b in CAMERAS:
            if a != b:
                assert loaded.window(a, b) == model.window(a, b)
                np.testing.assert_array_equal(loaded.cost(a, b, gaps), model.cost(a, b, gaps))
    assert loaded.summary() == model.summary()


@pytest.mark.parametrize('edit, message', [
    (lambda d: d.pop('pairs'), "missing key 'pairs'"),
    (lambda d: d.update(format='other'), 'not a transition-model file'),
    (lambda d: d.update(version=99), 'version 99'),
    (lambda d: d['pairs'][0].update(prob='x'), 'malformed'),
    (lambda d: d['pairs'][0].update(lo=1e9), 'lo > hi'),
])
def test_bad_model_files_name_the_file(model, tmp_path, edit, message):
    data = model.to_dict()
    edit(data)
    path = write(tmp_path / 'bad.json', json.dumps(data))
    with pytest.raises(TransitionFileError, match=f'{path}: .*{message}'):
        TransitionModel.load(path)
    with pytest.raises(TransitionFileError, match=f'{tmp_path / "broken.json"}: not a readable'):
        TransitionModel.load(write(tmp_path / 'broken.json', '{"format": '))


def test_stays_from_mot_by_hand():
    """Id 7 in c001 at frames 1-3 and 40-41 (a 36-frame absence > max_gap breaks the stay), in
    c002 at frames 11-20 with the camera's clock 100 s ahead; 10 fps."""
    tracks = {'c002': np.array([[f, 7] for f in range(11, 21)]),
              'c001': np.array([[1, 7], [2, 7], [3, 7], [40, 7], [41, 7], [2, 9]])}
    identity, camera, enter, exit_, cameras = stays_from_mot(tracks, fps=10, offsets={'c002': 100.0}, max_gap=2.0)
    assert cameras == ['c001', 'c002']
    stays = sorted(zip(identity.tolist(), camera.tolist(), enter.tolist(), exit_.tolist()))
    assert stays == [(7, 0, 0.0, 0.2), (7, 0, 3.9, 4.0), (7, 1, 101.0, 101.9), (9, 0, 0.1, 0.1)]
    model = TransitionModel.fit_mot(tracks, fps=10, offsets={'c002': 100.0}, max_gap=2.0, smooth_seconds=0.5)
    # Consecutive stays of id 7: c001 (exit 4.0) -> c002 (enter 101.0): one transit of 97 s.
    assert model.pairs['c001', 'c002'].count == 1
    lo, hi = model.window('c001', 'c002', widen=0)
    assert (lo, hi) == pytest.approx((97 - 3, 97 + 3))  # margin: 3 sigmas of one bin
    assert ('c002', 'c001') not in model.pairs


def test_fit_rejects_bad_stays():
    with pytest.raises(ValueError, match='two cameras'):
        TransitionModel.fit([0, 1], [0, 1], [0, 0], [1, 1], CAMERAS)
    with pytest.raises(ValueError, match='exit_time >= enter_time'):
        TransitionModel.fit([0, 0], [0, 1], [0, 5], [1, 4], CAMERAS)
    with pytest.raises(ValueError, match='camera indices'):
        TransitionModel.fit([0, 0], [0, 7], [0, 5], [1, 6], CAMERAS)


# ---- st-ReID (--st) ------------------------------------------------------------------------
def named(title, train=(), query=(), gallery=(), name=''):
    """A dataset-like object whose items are (file name, pid, camid)."""
    return SimpleNamespace(title=title, name=name, train=list(train), query=list(query), gallery=list(gallery))


def test_st_fuse_by_hand():
    """st-ReID's 1 / (1 + exp(-5 s)) x 1 / (1 + 2 exp(-5 p)) at s = 0.5, p = 0.01 and s = 0, p = 0:
    1 / 1.0820850 x 1 / (1 + 2 x 0.9512294) = 0.9241418 x 0.3445355 and 1/2 x 1/3."""
    fused = st_fuse(np.array([0.5, 0.0]), np.array([0.01, 0.0]))
    np.testing.assert_allclose(fused, [0.9241418 * 0.3445355, 1 / 6], rtol=1e-6)


def test_st_model_and_probability_by_hand():
    """Identity 0: camera 1 at frames 1000 and 1200 (mean 1100), camera 2 at 5100: one transit
    c1 -> c2 of 4000 frames, bin 40. st-ReID's smoothed histogram there: a Gaussian of 50 bins
    around bin 40, cut at 3 sigmas and at bin 0, normalised; its value at bin 40 is
    1 / sum_{k=0}^{190} exp(-(k - 40)^2 / 5000). Identity 1 walks c2 -> c3 -> c1: every pair of
    its cameras in time order is a transit (routes 'all')."""
    train = [('a', 0, 0), ('b', 0, 0), ('c', 0, 1), ('d', 1, 1), ('e', 1, 2), ('f', 1, 0)]
    model = st_model(train, np.array([1000.0, 1200, 5100, 90000, 91000, 93000]), num_cameras=3)
    assert sorted(model.pairs) == [('c1', 'c2'), ('c2', 'c1'), ('c2', 'c3'), ('c3', 'c1')]
    peak = 1 / np.exp(-(np.arange(0, 191) - 40.0) ** 2 / 5000).sum()
    # Query in c2 at 9000, gallery c1 at 5000: the gallery came first (c1 -> c2, 4000 frames);
    # and the other way round; the same camera: 0.
    probability = st_probability(model, np.array([1, 0]), np.array([9000.0, 5000.0]),
                                 np.array([0, 1, 0]), np.array([5000.0, 9000.0, 4000.0]))
    assert probability[0, 0] == pytest.approx(peak, rel=1e-9)
    assert probability[1, 1] == probability[0, 0] and probability[1, 2] == 0
    # c3 before c2 was never seen: 0.
    assert st_probability(model, np.array([2]), np.array([5000.0]), np.array([1]), np.array([9000.0]))[0, 0] == 0


def test_frame_times_lay_market_sequences_end_to_end():
    names = ['0002_c1s1_001000_01.jpg', '0002_c1s2_000050_01.jpg', '0002_c2s1_000300_01.jpg',
             '0003_c1s3_000007_02.jpg.jpg', '0003_c1s2_000400_00.jpg']
    dataset = named('Market1501', train=[(f'/x/{n}', 0, 0) for n in names[:3]],
                    query=[(n, 0, 0) for n in names[3:4]], gallery=[(n, 0, 0) for n in names[4:]])
    times = frame_times(dataset)
    assert times['train'].tolist() == [1000, 1050, 300]
    assert times['query'].tolist() == [1000 + 400 + 7] and times['gallery'].tolist() == [1400]
    duke = named('DukeMTMC-reID', train=[('0001_c2_f0046182.jpg', 0, 1)], gallery=[('0007_c8_f0000001.jpg', 0, 7)])
    assert frame_times(duke)['gallery'].tolist() == [1]


def test_st_without_frame_numbers_names_dataset_and_file():
    dataset = named('CUHK03', train=[('1_001_1_01.png', 0, 0)], query=[('1_002_2_06.png', 1, 1)])
    with pytest.raises(NoFrameNumbersError, match="CUHK03 has none, e.g. 1_001_1_01.png: leave --st out"):
        frame_times(dataset)


@pytest.mark.parametrize('benchmark, lists, num_pairs', [
    ('market1501', ('market1501-lists',), 30),
    ('dukemtmcreid', ('extra', 'dukemtmcreid'), 46),
])
def test_frame_parsing_covers_every_real_name(benchmark, lists, num_pairs):
    """Every file name of the real train, query and gallery lists (junk included) carries a
    frame; Market's sequences laid end to end keep each camera's clock increasing; the model
    learnt from the real train split sees num_pairs ordered camera pairs."""
    folder = shared_path('data', *lists)
    splits = {split: (folder / f'{split}.txt').read_text().split() for split in ('train', 'query', 'gallery')}
    items = {split: [(n, int(n.split('_')[0]), int(re.match(r'\S+?_c(\d)', n).group(1)) - 1) for n in names]
             for split, names in splits.items()}
    times = frame_times(named(benchmark, **items))
    assert all(len(times[s]) == len(splits[s]) and (times[s] >= 0).all() for s in splits)
    if benchmark == 'market1501':
        frames = {}
        for name, time in zip(splits['train'] + splits['query'] + splits['gallery'],
                              np.concatenate([times['train'], times['query'], times['gallery']])):
            cam, seq = map(int, re.match(r'\S+?_c(\d)s(\d)', name).groups())
            frames.setdefault((cam, seq), []).append(time)
        for (cam, seq), values in frames.items():
            if (cam, seq + 1) in frames:
                assert max(values) <= min(frames[cam, seq + 1]) + 1  # a frame number starts at 0 or 1
    train = [item for item in items['train'] if item[1] >= 0]
    model = st_model(train, times['train'][[item[1] >= 0 for item in items['train']]], num_cameras=8)
    assert len(model.pairs) == num_pairs


def test_st_matches_st_reid_on_real_dukemtmcreid_names():
    """The model learnt from the real DukeMTMC-reID train names gives the probabilities of
    st-ReID's own code (a literal transcription: tests/reference_st_reid.py) for 40 real
    queries against the whole real gallery, to their 1e-7 normalisation epsilon."""
    folder = shared_path('data', 'extra', 'dukemtmcreid')
    names = {split: (folder / f'{split}.txt').read_text().split() for split in ('train', 'query', 'gallery')}
    reference = reference_distribution(names['train'])
    items = {split: [(n, int(n[:4]), int(n[6]) - 1) for n in split_names] for split, split_names in names.items()}
    times = frame_times(named('DukeMTMC-reID', **items))
    model = st_model(items['train'], times['train'], num_cameras=8)
    queries = np.random.default_rng(0).choice(len(names['query']), 40, replace=False)
    g_cams = np.array([camid for _, _, camid in items['gallery']])
    ours = st_probability(model, np.array([items['query'][q][2] for q in queries]), times['query'][queries],
                          g_cams, times['gallery'])
    for row, q in enumerate(queries):
        expected = reference_probability(reference, names['query'][q], names['gallery'])
        np.testing.assert_allclose(ours[row], expected, rtol=1e-6, atol=1e-12)


def run_image_script(capsys, *argv):
    """train_img_model_xent.py in this process (its imports are paid once): (exit code, stdout, stderr)."""
    args = train_img_model_xent.get_args_parser().parse_args([*map(str, FAST), *map(str, argv)])
    code = 0
    try:
        engine.main(args, video=False, loss={'xent'}, build_criterion=train_img_model_xent.build_criterion)
    except SystemExit as stop:
        code = stop.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_st_improves_map_on_walking_people(tmp_path, capsys):
    """On a DukeMTMC-reID-style set whose frame numbers follow walks between cameras, an
    untrained model's ranking improves a lot once fused with the transit times."""
    synthetic_data.make_dukemtmcreid(tmp_path / 'dukemtmc-reid', num_train_ids=80, num_test_ids=30,
                                     num_distractors=10, seed=1, walk=True)
    code, out, _ = run_image_script(capsys, '-a', 'osnet_x0_25', '-d', 'dukemtmcreid', '--root', tmp_path,
                                    '--evaluate', '--st', '--use-cpu', '--save-dir', tmp_path / 'log')
    assert code == 0
    table = {row: (float(visual), float(fused))
             for row, visual, fused in re.findall(r'^(mAP|Rank-1) +([\d.]+)% +([\d.]+)%$', out, re.M)}
    (visual_map, fused_map), (visual_rank1, fused_rank1) = table['mAP'], table['Rank-1']
    assert fused_map > visual_map + 20 and fused_rank1 > visual_rank1
    assert 'published on DukeMTMC-reID: Rank-1 94.4%, mAP 83.9%' in out


def test_st_flag_on_a_dataset_without_frames_stops_before_training(tmp_path, capsys):
    synthetic_data.make_image_folder(tmp_path, num_train_ids=3, num_test_ids=3)
    code, out, err = run_image_script(capsys, '-d', 'image_folder', '--root', tmp_path, '--st', '--max-epoch', '1',
                                      '--save-dir', tmp_path / 'log')
    assert code == 1
    assert re.search(r'^error: --st needs frame numbers .*image_folder .* has none, e\.g\. \S+', err, re.M)
    assert 'Start training' not in out
