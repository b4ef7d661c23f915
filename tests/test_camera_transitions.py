"""camera_transitions: the transition model learnt from stays (windows, composition, penalties,
topology files, files) and st-ReID's fusion in re-ID evaluation."""
import json

import numpy as np
import pytest

from camera_transitions import COST_CAP, TransitionFileError, TransitionModel, stays_from_mot

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
