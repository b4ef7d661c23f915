"""Multi-camera linking (linking.py) against a brute-force constrained average-linkage reference,
its constraints under every merge order, time gates, the Jaccard option, and the tracklet table
file (tracklet_table.py)."""
import itertools
import re
import sys

import numpy as np
import pytest
import torch

import cluster
import linking
from camera_transitions import TransitionModel
from conftest import REPO, run_script
from tracklet_table import TrackletTable

sys.path.insert(0, str(REPO / 'benchmarks'))
import bench_mtmc  # noqa: E402


class FakeTransitions:
    """window / max_window / cost over camera names: windows {(a, b): (lo, hi)}, absent pairs
    forbidden; cost = slope * |gap - middle of the window| inside it, inf outside."""

    def __init__(self, windows, slope=0.0):
        self.windows, self.slope = windows, slope

    def window(self, a, b):
        assert a != b, 'camera_transitions.TransitionModel refuses same-camera pairs'
        return self.windows.get((a, b))

    def max_window(self):
        return max(hi for _, hi in self.windows.values())

    def cost(self, a, b, gap):
        assert a != b, 'camera_transitions.TransitionModel refuses same-camera pairs'
        gap = np.asarray(gap, dtype=float)
        if (a, b) not in self.windows:
            return np.full(gap.shape, np.inf)
        lo, hi = self.windows[a, b]
        return np.where((gap >= lo) & (gap <= hi), self.slope * np.abs(gap - (lo + hi) / 2), np.inf)

    def renamed(self, names):
        return FakeTransitions({(names[a], names[b]): w for (a, b), w in self.windows.items()}, self.slope)


def make_table(camera, start, end, features, cameras=None, gt_id=None, fps=10.0):
    camera = np.asarray(camera)
    num = len(camera)
    cameras = cameras or [f'c{c:03d}' for c in range(int(camera.max()) + 1)]
    features = np.asarray(features, dtype=np.float64)
    features = features / np.linalg.norm(features, axis=1, keepdims=True)
    start, end = np.asarray(start, dtype=float), np.asarray(end, dtype=float)
    return TrackletTable(cameras, camera, np.arange(num) + 1, np.zeros(num), np.round(start * fps) + 1,
                         np.round(end * fps) + 1, start, end, np.full(num, 5), features.astype(np.float32), gt_id)


def reference_pairs(table, transitions=None, disjoint_views=False):
    """The rules, literally, pair by pair: {(i, j), i < j: transition cost} of the allowed pairs."""
    allowed = {}
    for i, j in itertools.combinations(range(len(table)), 2):
        a, b = sorted((i, j), key=lambda r: (table.start_time[r], table.end_time[r], r))
        ca, cb = table.cameras[table.camera[a]], table.cameras[table.camera[b]]
        gap = table.start_time[b] - table.end_time[a]
        if gap <= 0 and (ca == cb or disjoint_views):
            continue
        cost = 0.0
        if transitions is not None and ca == cb:
            if gap > transitions.max_window():
                continue
        elif transitions is not None:
            window = transitions.window(ca, cb)
            if window is None or not window[0] <= gap <= window[1]:
                continue
            cost = float(transitions.cost(ca, cb, np.array([gap]))[0])
            if not np.isfinite(cost):
                continue
        allowed[i, j] = cost
    return allowed


def reference_link(table, threshold, transitions=None, prior_weight=1.0, disjoint_views=False, appearance=None):
    """The definition, literally: a dense matrix of pair distances (inf: forbidden), then merge
    the clusters of smallest mean distance over all member pairs while below the threshold.
    Returns the partition as a set of frozensets of rows."""
    num = len(table)
    if appearance is None:
        f = table.features.astype(np.float64)
        appearance = 1 - f @ f.T
    d = np.full((num, num), np.inf)
    for (i, j), cost in reference_pairs(table, transitions, disjoint_views).items():
        d[i, j] = d[j, i] = appearance[i, j] + prior_weight * cost
    clusters = [[i] for i in range(num)]
    while len(clusters) > 1:
        best, pair = np.inf, None
        for p, q in itertools.combinations(range(len(clusters)), 2):
            mean = d[np.ix_(clusters[p], clusters[q])].mean()
            if mean < best:
                best, pair = mean, (p, q)
        if not best < threshold:
            break
        p, q = pair
        clusters[p] += clusters.pop(q)
    return {frozenset(c) for c in clusters}


def partition(labels, order=None):
    """The set of frozensets of rows sharing a label; order maps rows of a permuted table back."""
    labels = np.asarray(labels)
    rows = np.arange(len(labels)) if order is None else np.asarray(order)
    return {frozenset(rows[labels == g].tolist()) for g in np.unique(labels)}


def random_case(seed, num=24, num_cameras=3, dim=6):
    """Tracklets of a few identities over cameras, features near identity centres, times in a
    short span so that many pairs overlap."""
    rng = np.random.default_rng(seed)
    identity = rng.integers(0, 6, num)
    features = rng.normal(size=(6, dim))[identity] + 0.6 * rng.normal(size=(num, dim))
    start = rng.uniform(0, 60, num)
    end = start + rng.uniform(0.5, 8, num)
    return make_table(rng.integers(0, num_cameras, num), start, end, features)


def relabelled(table, seed):
    """The same tracklets in another row order, with the camera names permuted (so camera
    indices change) and other local ids; (table, order: new row -> old row, name map)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(table))
    names = dict(zip(table.cameras, rng.permutation([f'x{k}' for k in range(len(table.cameras))])))
    cameras = sorted(names.values())
    index = np.array([cameras.index(names[c]) for c in table.cameras])
    moved = table.subset(order)
    moved.cameras, moved.camera = cameras, index[moved.camera]
    moved.local_id = rng.permutation(len(table)) + 100
    return moved, order, names


WINDOWS = {('c000', 'c001'): (-2.0, 30.0), ('c001', 'c002'): (0.0, 25.0), ('c000', 'c002'): (5.0, 40.0),
           ('c001', 'c000'): (-2.0, 30.0)}


@pytest.mark.parametrize('seed', range(6))
@pytest.mark.parametrize('gated', [False, True])
def test_matches_brute_force_reference_under_reordering(seed, gated):
    table = random_case(seed)
    transitions = FakeTransitions(WINDOWS, slope=0.004) if gated else None
    threshold = 0.7
    expected = reference_link(table, threshold, transitions, prior_weight=1.5)
    assert 1 < len(expected) < len(table), 'the case should link some tracklets and not all'
    assert partition(linking.link_tracklets(table, threshold, transitions, prior_weight=1.5)) == expected
    for relabel_seed in range(3):
        moved, order, names = relabelled(table, 100 * seed + relabel_seed)
        moved_transitions = transitions.renamed(names) if gated else None
        labels = linking.link_tracklets(moved, threshold, moved_transitions, prior_weight=1.5)
        assert partition(labels, order) == expected


@pytest.mark.parametrize('seed', range(3))
def test_sweep_and_groups_give_exactly_the_allowed_pairs(seed):
    """The binary-search sweep and the enumeration of groups both yield each allowed pair once,
    with the costs of the literal rules (reference_link's matrix, features all equal)."""
    table = random_case(20 + seed, num=30)
    table.features[:] = table.features[0]
    transitions = FakeTransitions(WINDOWS, slope=0.01)
    for disjoint_views in (False, True):
        expected = reference_pairs(table, transitions, disjoint_views)
        rules = linking.PairRules(table, transitions, disjoint_views)
        for chunks in (rules.sweep(), rules.within(np.zeros(30, dtype=np.int64))):
            found = {}
            for i, j, cost in chunks:
                for key, value in zip(zip(np.minimum(i, j).tolist(), np.maximum(i, j).tolist()), cost.tolist()):
                    assert key not in found
                    found[key] = value
            assert found.keys() == expected.keys()
            assert np.allclose([found[k] for k in sorted(found)], [expected[k] for k in sorted(found)])
        groups = np.arange(30) % 4  # only pairs inside a group
        within = {(min(a, b), max(a, b)) for i, j, _ in rules.within(groups) for a, b in zip(i.tolist(), j.tolist())}
        assert within == {k for k in expected if groups[k[0]] == groups[k[1]]}


@pytest.mark.parametrize('seed', range(3))
def test_large_components_match_reference(seed):
    """A threshold above most distances: one large component, whose pairs come from the sweep."""
    table = random_case(30 + seed, num=18)
    transitions = FakeTransitions(WINDOWS)
    assert partition(linking.link_tracklets(table, 1.8, transitions)) == reference_link(table, 1.8, transitions)


def test_with_a_transition_model_from_a_topology_file(tmp_path):
    (tmp_path / 'topology.txt').write_text('c000 c001 10 20\n')
    model = TransitionModel.from_topology(tmp_path / 'topology.txt')
    table = make_table([0, 1, 0, 1, 0], [0.0, 25.0, 12.0, 100.0, 130.0], [10.0, 27.0, 14.0, 110.0, 140.0],
                       np.ones((5, 4)))
    expected = reference_link(table, 0.5, model)
    assert partition(linking.link_tracklets(table, 0.5, model)) == expected
    assert expected == {frozenset({0, 1, 2}), frozenset({3}), frozenset({4})}


@pytest.mark.parametrize('seed', range(4))
def test_disjoint_views_matches_reference(seed):
    table = random_case(10 + seed, num=20)
    expected = reference_link(table, 0.8, disjoint_views=True)
    labels = linking.link_tracklets(table, 0.8, disjoint_views=True)
    assert partition(labels) == expected
    for g in np.unique(labels):  # no two members of one identity at the same time
        rows = np.flatnonzero(labels == g)
        rows = rows[np.argsort(table.start_time[rows])]
        assert (table.start_time[rows[1:]] > table.end_time[rows[:-1]]).all()


def test_same_camera_overlap_never_linked_through_a_chain():
    """a1 and a2 overlap in camera 0; b, c (cameras 1, 2) and a1, a2 have identical features, so
    every distance is 0 and every merge order is a tie-break of the input order: chaining a1 - b
    - c - a2 would link a1 with a2 unless the cannot-link propagates through every merge."""
    table = make_table([0, 0, 1, 2, 1], [0, 5, 20, 40, 60], [10, 12, 25, 45, 70], np.ones((5, 4)))
    for order in itertools.permutations(range(5)):
        moved = table.subset(np.array(order))
        labels = linking.link_tracklets(moved, 0.5)
        back = np.empty(5, dtype=np.int64)
        back[np.array(order)] = labels
        assert back[0] != back[1], order
        assert len(np.unique(back)) == 2  # the three others join one of them


def test_chain_of_near_pairs_respects_every_forbidden_pair():
    """Ten tracklets in two cameras, pairwise overlapping in each camera; near-identical features.
    However the merges go, no identity holds two tracklets of one camera."""
    rng = np.random.default_rng(0)
    camera = np.tile([0, 1], 5)
    start = np.repeat(np.arange(5) * 2.0, 2) + rng.uniform(0, 0.1, 10)
    table = make_table(camera, start, start + 30, np.ones((10, 4)) + 1e-3 * rng.normal(size=(10, 4)))
    for seed in range(20):
        order = np.random.default_rng(seed).permutation(10)
        labels = np.empty(10, dtype=np.int64)
        labels[order] = linking.link_tracklets(table.subset(order), 1.0)
        for g in np.unique(labels):
            cams = table.camera[labels == g]
            assert len(cams) == len(np.unique(cams))
        assert len(np.unique(labels)) == 5


def test_disjoint_views_forbids_simultaneous_cameras():
    table = make_table([0, 1], [0.0, 5.0], [10.0, 15.0], np.ones((2, 4)))
    assert len(np.unique(linking.link_tracklets(table, 0.5))) == 1
    assert len(np.unique(linking.link_tracklets(table, 0.5, disjoint_views=True))) == 2


def test_time_gates_and_prior():
    windows = {('c000', 'c001'): (10.0, 20.0)}
    same = np.ones((2, 4))
    inside = make_table([0, 1], [90.0, 115.0], [100.0, 120.0], same)   # gap 15: in the window
    outside = make_table([0, 1], [90.0, 130.0], [100.0, 140.0], same)  # gap 30
    backwards = make_table([1, 0], [90.0, 115.0], [100.0, 120.0], same)  # (c001, c000) forbidden
    gates = FakeTransitions(windows)
    assert len(np.unique(linking.link_tracklets(inside, 0.5, gates))) == 1
    assert len(np.unique(linking.link_tracklets(outside, 0.5, gates))) == 2
    assert len(np.unique(linking.link_tracklets(backwards, 0.5, gates))) == 2
    assert len(np.unique(linking.link_tracklets(outside, 0.5))) == 1  # no gates without a model
    # one camera: any gap up to max_window() (20 s), at cost 0
    returns = make_table([0, 0, 0], [0.0, 30.0, 70.0], [10.0, 50.0, 80.0], np.ones((3, 4)))
    assert partition(linking.link_tracklets(returns, 0.5, gates)) == {frozenset({0, 1}), frozenset({2})}
    # cost 0.1 * |15 - 15| = 0 at the middle; at gap 11: 0.4, over the threshold 0.3 with weight 1
    sloped = FakeTransitions(windows, slope=0.1)
    off_middle = make_table([0, 1], [90.0, 111.0], [100.0, 120.0], same)
    assert len(np.unique(linking.link_tracklets(off_middle, 0.3, sloped, prior_weight=1.0))) == 2
    assert len(np.unique(linking.link_tracklets(off_middle, 0.3, sloped, prior_weight=0.5))) == 1
    # a route c000 -> c001 -> c002 with no window for (c000, c002): the three never form one identity
    route = make_table([0, 1, 2], [0.0, 25.0, 50.0], [10.0, 30.0, 60.0], np.ones((3, 4)))
    chain = FakeTransitions({('c000', 'c001'): (10.0, 20.0), ('c001', 'c002'): (10.0, 30.0)})
    assert len(np.unique(linking.link_tracklets(route, 0.5, chain))) == 2
    composed = FakeTransitions({**chain.windows, ('c000', 'c002'): (30.0, 50.0)})
    assert len(np.unique(linking.link_tracklets(route, 0.5, composed))) == 1


def test_perfect_features_give_the_true_partition():
    """One-hot identity features, 60 identities walking through 5 cameras: every tracklet of an
    identity is at distance 0 from the others, all other pairs at distance 1."""
    rng = np.random.default_rng(1)
    camera, start, identity = [], [], []
    for person in range(60):
        t = rng.uniform(0, 600)
        for c in rng.permutation(5)[:3]:
            for _ in range(rng.integers(1, 3)):  # a track broken in one or two pieces
                camera.append(c), start.append(t), identity.append(person)
                t += rng.uniform(12, 20)
    start = np.array(start)
    features = np.eye(60)[identity]
    table = make_table(camera, start, start + 10, features, gt_id=identity)
    windows = {(f'c{a:03d}', f'c{b:03d}'): (0.0, 200.0) for a in range(5) for b in range(5) if a != b}
    for transitions in (None, FakeTransitions(windows)):
        labels = linking.link_tracklets(table, 0.5, transitions, disjoint_views=True)
        assert partition(labels) == partition(np.array(identity))


def test_jaccard_equals_cluster_jaccard_when_every_pair_is_a_candidate():
    """With no gates and no overlap (every pair a candidate), the candidate neighbourhoods are
    cluster.k_nearest's, so the linking matches the reference on cluster.jaccard_distance."""
    rng = np.random.default_rng(5)
    num, k1, k2 = 40, 8, 3
    identity = rng.integers(0, 8, num)
    features = rng.normal(size=(8, 16))[identity] + 0.7 * rng.normal(size=(num, 16))
    start = np.arange(num) * 20.0
    table = make_table(rng.integers(0, 3, num), start, start + 5, features)
    x = torch.from_numpy(table.features)
    index, similarity = linking._nearest_candidates(table, lambda: linking.candidate_pairs(table), k1)
    expected_index, expected_similarity = cluster.k_nearest(x, k1)
    assert torch.equal(index, expected_index)
    assert torch.allclose(similarity[:, 1:], expected_similarity[:, 1:], atol=1e-6)
    closest = cluster.jaccard_distance(x, k1, k2, max_distance=1.0).tocoo()  # absent pairs: distance 1
    dense = np.ones((num, num))
    dense[closest.row, closest.col] = closest.data
    expected = reference_link(table, 0.6, appearance=dense)
    assert 1 < len(expected) < num
    labels = linking.link_tracklets(table, 0.6, distance='jaccard', k1=k1, k2=k2)
    assert partition(labels) == expected


def test_jaccard_with_gates_runs_and_respects_constraints():
    table = random_case(3, num=30)
    labels = linking.link_tracklets(table, 0.8, FakeTransitions(WINDOWS), distance='jaccard', k1=6, k2=2)
    for g in np.unique(labels):
        rows = np.flatnonzero(labels == g)
        for i, j in itertools.combinations(rows, 2):
            if table.camera[i] == table.camera[j]:
                assert table.start_time[j] > table.end_time[i] or table.start_time[i] > table.end_time[j]


def test_bad_arguments():
    table = random_case(0, num=6)
    with pytest.raises(ValueError, match='distance must be'):
        linking.link_tracklets(table, 0.5, distance='euclidean')
    with pytest.raises(ValueError, match='prior_weight'):
        linking.link_tracklets(table, 0.5, prior_weight=-1)
    jaccard = linking._jaccard_distances(table, linking.PairRules(table).sweep, 3, 2)
    assert jaccard(np.empty(0, np.int64), np.empty(0, np.int64)).shape == (0,)  # a chunk the gates emptied
    table.features = table.features * 2
    with pytest.raises(ValueError, match='L2-normalised'):
        linking.link_tracklets(table, 0.5)
    empty = random_case(0, num=6).subset(np.zeros(6, dtype=bool))
    assert linking.link_tracklets(empty, 0.5).shape == (0,)


def test_table_roundtrip(tmp_path):
    table = random_case(1, num=12)
    table.gt_id = np.arange(12) % 4
    path = tmp_path / 'tracklets.npz'
    table.save(path)
    loaded = TrackletTable.load(path, feature_dim=6)
    assert loaded.cameras == table.cameras and len(loaded) == 12
    for name in ('camera', 'local_id', 'segment', 'first_frame', 'last_frame', 'start_time', 'end_time',
                 'num_boxes', 'features', 'gt_id'):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(table, name))
        assert getattr(loaded, name).dtype == getattr(table, name).dtype
    table.gt_id = None
    table.save(path)
    assert TrackletTable.load(path).gt_id is None
    part = table.subset(table.camera == 0)
    assert len(part) == (table.camera == 0).sum() and part.cameras == table.cameras


def test_table_errors_name_the_file(tmp_path):
    table = random_case(2, num=5)
    path = tmp_path / 'tracklets.npz'
    table.save(path)
    with pytest.raises(ValueError, match=r'tracklets\.npz.*6-d, expected 512-d'):
        TrackletTable.load(path, feature_dim=512)
    arrays = dict(np.load(path))
    del arrays['start_time']
    np.savez(tmp_path / 'missing.npz', **arrays)
    with pytest.raises(ValueError, match=r'missing\.npz: missing array\(s\) start_time'):
        TrackletTable.load(tmp_path / 'missing.npz')
    arrays = dict(np.load(path))
    arrays['end_time'] = arrays['end_time'][:3]
    np.savez(tmp_path / 'short.npz', **arrays)
    with pytest.raises(ValueError, match=r'short\.npz: end_time has 3 rows, camera has 5'):
        TrackletTable.load(tmp_path / 'short.npz')
    arrays = dict(np.load(path))
    arrays['camera'] = arrays['camera'] + 7
    np.savez(tmp_path / 'cams.npz', **arrays)
    with pytest.raises(ValueError, match=r'cams\.npz: camera indices'):
        TrackletTable.load(tmp_path / 'cams.npz')
    (tmp_path / 'junk.npz').write_bytes(b'not a zip')
    with pytest.raises(ValueError, match=r'junk\.npz: not a readable tracklet table'):
        TrackletTable.load(tmp_path / 'junk.npz')
    with pytest.raises(ValueError, match='sorted unique'):
        TrackletTable(['b', 'a'], *(np.zeros(1),) * 8, np.ones((1, 2)))


def test_bench_mtmc_scale_scene_is_linked_with_its_own_windows():
    """The scale benchmark's tables have the density asked for, and its generator's windows let
    the linking find the people (else the timing would measure something else)."""
    table, _ = bench_mtmc.scale_scene(1500, 10, 120.0, 128)
    assert len(table) == 1500 and table.gt_id is not None
    transitions = bench_mtmc.transition_model('routes', table.cameras, 120.0, 128)
    labels = linking.link_tracklets(table, 0.55, transitions, disjoint_views=True)
    assert cluster.pairwise_scores(labels, table.gt_id)[2] > 0.95


def test_bench_mtmc_scale_runs():
    """benchmarks/bench_mtmc.py --case scale at a tiny size (a smoke test, not a measurement)."""
    result = run_script('benchmarks/bench_mtmc.py', '--case', 'scale', '--sizes', '1000', '--cameras', '10',
                        '--dim', '64')
    assert re.search(r'^ +1,000 tracklets .* pairwise F1 [\d.]+$', result.stdout, re.M), result.stdout
    assert 'transitions learnt' in result.stdout
