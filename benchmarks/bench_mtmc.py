"""Multi-camera linking (linking.py, link_cameras.py): what each part of the recipe adds on generated
scenes, and its cost at scale from tracklet tables alone.

    python benchmarks/bench_mtmc.py --case scenes                      # 3 generated scenes, a model trained here
    python benchmarks/bench_mtmc.py --case scenes --resume CKPT --seeds 1 2 3 4 5
    python benchmarks/bench_mtmc.py --case scale                       # 10k and 100k tracklets, 100 cameras
    python benchmarks/bench_mtmc.py --case scale --sizes 1000000       # 1M (about 83 hours of 100 cameras)
    python benchmarks/bench_mtmc.py --case scale --transitions routes  # the generator's own windows
    python benchmarks/bench_mtmc.py --case scale --density 240 --dim 256 --distance jaccard --sizes 10000

--case scale: tracklet tables at a fixed density (--density tracklets per camera-hour; the span
of time grows with the number of tracklets) over --cameras cameras on a random camera graph
(each camera linked to its 3 nearest on a unit square, transit seconds 20 + 400 x distance).
People walk routes of 1 to 4 cameras (never straight back), stay 5-40 s in each view, cross
each link in 0.8-1.25 x its transit time; 30% of stays are broken in two tracklets (0.5-3 s
apart). Features (--dim, 512) are identity centres plus Gaussian noise, L2-normalised: same
person ~0.4 cosine distance apart, others ~1. Transitions (--transitions): 'learnt',
camera_transitions.TransitionModel.fit on the stays of one hour of another scene on the same
graph, with its defaults (pairs composed through up to 2 cameras; the pairs it never saw get
its widest window at a finite cost, so every camera pair has candidates); or 'routes', the
generator's windows composed along walks of up to 3 links and widened by the parts of stays a
tracklet misses (RouteWindows; farther pairs forbidden). Linking: threshold 0.55, prior weight
1, disjoint views.
Each size reports the seconds of link_tracklets alone (and its stages), the peak resident
memory during it (the kernel's VmHWM, reset just before; the table is included), candidate
pairs per tracklet, and the pairwise F1 of the result against the true identities (a check
that the linking does its job, not a quality claim). Time per tracklet across sizes shows how
the cost grows: flat is linear.

--case scenes: synthetic_mtmc.make_scene scenes (--seeds, --people, --seconds, 4 cameras, a
simulated tracker's fragmented tracks with swaps), tracklet features from a model trained here on
other people (make_train_set under the cameras of scene seed 1, not those of other seeds;
timm:resnet18 at 64x32, --epochs; or --resume). Multi-camera IDF1 (motmetrics, all cameras
jointly) of: no linking (every track its own identity); appearance with the same-camera rule
only; the plain recipe (+ time gates: the transition model learnt from the scene's ground truth,
prior weight 0); + splitting tracks at appearance jumps (each --split-distances); + the
transition prior (weight calibrated); + the Jaccard distance. Each variant is scored at its best
threshold (and prior weight) on the scene itself, so each figure is that variant's ceiling and
the comparison is between variants.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, '..')
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)
import link_cameras  # noqa: E402
import linking  # noqa: E402
import mtmc_scene  # noqa: E402
import synthetic_mtmc  # noqa: E402
from bench_rerank import reset_peak_rss, rss_mib  # noqa: E402
from camera_transitions import TransitionModel  # noqa: E402
from cluster import pairwise_scores  # noqa: E402
from feature_extractor import FeatureExtractor  # noqa: E402
from mtmc_eval import best_linking  # noqa: E402
from tracklet_table import TrackletTable  # noqa: E402

FPS = 10.0
STAY = (5.0, 40.0)          # seconds a person is in one view
TRANSIT_SPREAD = (0.8, 1.25)  # x the link's transit time
BROKEN_STAYS = 0.3          # fraction of stays that the single-camera tracker breaks in two
PIECE_GAP = (0.5, 3.0)      # seconds between the two pieces of a broken stay
ROUTE_CAMERAS = 4           # at most, per person
SCENE_MODEL_SEED = 1        # the training set's cameras: those of scene seed 1, not of the others
PRIOR_SCALE = 0.1           # cost at the edge of a window (0 at its middle)


def camera_graph(num_cameras, rng, degree=3):
    """((C, C) bool links, each camera to its `degree` nearest, symmetrised; (C, C) transit
    seconds 20 + 400 x the distance on a unit square)."""
    position = rng.uniform(0, 1, (num_cameras, 2))
    distance = np.linalg.norm(position[:, None] - position[None], axis=2)
    np.fill_diagonal(distance, np.inf)
    links = np.zeros((num_cameras, num_cameras), dtype=bool)
    links[np.arange(num_cameras)[:, None], np.argsort(distance, axis=1)[:, :degree]] = True
    links |= links.T
    return links, 20 + 400 * np.where(np.isfinite(distance), distance, 0)


class RouteWindows:
    """The generator's transition windows over camera names, the linking's `transitions`: for
    (a, c), the hull of the gaps of walks a -> ... -> c of 1 to ROUTE_CAMERAS - 1 links (transits
    plus the stays in between), the upper end widened by two whole stays (a tracklet can end
    before its person leaves, the next can start after it enters); camera pairs further apart
    are forbidden. cost: PRIOR_SCALE x ((gap - middle) / half width)^2 inside, inf outside."""

    def __init__(self, cameras, links, transit):
        step_lo = np.where(links, TRANSIT_SPREAD[0] * transit, np.inf)
        step_hi = np.where(links, TRANSIT_SPREAD[1] * transit, -np.inf)
        lo, hi = step_lo.copy(), step_hi.copy()
        walk_lo, walk_hi = step_lo, step_hi
        for _ in range(ROUTE_CAMERAS - 2):  # min-plus / max-plus products: one more stay and link
            walk_lo = (walk_lo[:, :, None] + STAY[0] + step_lo[None]).min(axis=1)
            walk_hi = (walk_hi[:, :, None] + STAY[1] + step_hi[None]).max(axis=1)
            lo, hi = np.minimum(lo, walk_lo), np.maximum(hi, walk_hi)
        hi = hi + 2 * STAY[1]
        self.index = {name: k for k, name in enumerate(cameras)}
        self.lo, self.hi = lo, hi

    def window(self, a, b):
        lo, hi = self.lo[self.index[a], self.index[b]], self.hi[self.index[a], self.index[b]]
        return (float(lo), float(hi)) if lo <= hi else None

    def max_window(self):
        return float(self.hi[np.isfinite(self.hi)].max())

    def cost(self, a, b, gap):
        window = self.window(a, b)
        gap = np.asarray(gap, dtype=np.float64)
        if window is None:
            return np.full(gap.shape, np.inf)
        middle, half = (window[0] + window[1]) / 2, max((window[1] - window[0]) / 2, 1e-9)
        return np.where((gap >= window[0]) & (gap <= window[1]), PRIOR_SCALE * ((gap - middle) / half) ** 2, np.inf)


def scale_scene(num_tracklets, num_cameras, density, dim, noise=0.8, seed=0):
    """(TrackletTable of num_tracklets tracklets with gt_id, stays (person, camera, enter,
    leave), each (S,)): people walking the camera graph (the same for every seed) over
    num_tracklets / (num_cameras x density) hours (module docstring)."""
    links, transit = camera_graph(num_cameras, np.random.default_rng(0))
    rng = np.random.default_rng([seed, num_tracklets])
    cameras = [f'c{c:03d}' for c in range(num_cameras)]
    seconds = 3600.0 * num_tracklets / (num_cameras * density)
    # Routes: enough people for num_tracklets (about 3.25 tracklets each), then cut to size.
    num_people = int(1.05 * num_tracklets / ((ROUTE_CAMERAS + 1) / 2 * (1 + BROKEN_STAYS))) + 100
    route = np.empty((num_people, ROUTE_CAMERAS), dtype=np.int64)
    route[:, 0] = rng.integers(0, num_cameras, num_people)
    neighbours = [np.flatnonzero(row) for row in links]
    degree = np.array([len(n) for n in neighbours])
    padded = np.array([np.resize(n, degree.max()) for n in neighbours])
    for k in range(1, ROUTE_CAMERAS):
        here = route[:, k - 1]
        choice = rng.integers(0, degree[here])
        if k > 1:  # not straight back
            back = padded[here, choice] == route[:, k - 2]
            choice[back] = (choice[back] + 1) % degree[here[back]]
        route[:, k] = padded[here, choice]
    length = rng.integers(1, ROUTE_CAMERAS + 1, num_people)
    stay = rng.uniform(*STAY, (num_people, ROUTE_CAMERAS))
    crossing = transit[route[:, :-1], route[:, 1:]] * rng.uniform(*TRANSIT_SPREAD, (num_people, ROUTE_CAMERAS - 1))
    enter = rng.uniform(0, seconds, num_people)[:, None] + np.concatenate(
        [np.zeros((num_people, 1)), np.cumsum(stay[:, :-1] + crossing, axis=1)], axis=1)
    walked = np.arange(ROUTE_CAMERAS) < length[:, None]
    person = np.repeat(np.arange(num_people), length)
    camera, enter, leave = route[walked], enter[walked], enter[walked] + stay[walked]
    stay_person, camera_of_stay = person, camera
    # Broken stays: a first piece to a split point, a second from a little after it.
    split = enter + rng.uniform(0.3, 0.7, len(camera)) * (leave - enter)
    resume = split + rng.uniform(*PIECE_GAP, len(camera))
    broken = (rng.random(len(camera)) < BROKEN_STAYS) & (resume + 1 < leave)
    # Whole people, in order, up to num_tracklets tracklets.
    kept = np.argsort(np.concatenate([person, person[broken]]), kind='stable')[:num_tracklets]
    person = np.concatenate([person, person[broken]])[kept]
    camera = np.concatenate([camera, camera[broken]])[kept]
    start = np.concatenate([enter, resume[broken]])[kept]
    end = np.concatenate([np.where(broken, split, leave), leave[broken]])[kept]
    first_frame, last_frame = np.round(start * FPS).astype(np.int64) + 1, np.round(end * FPS).astype(np.int64) + 1
    centre = rng.standard_normal((num_people, dim), dtype=np.float32)
    features = np.empty((len(camera), dim), dtype=np.float32)
    for lo in range(0, len(camera), 1 << 16):  # in slices: no (N, D) temporaries
        block = centre[person[lo:lo + (1 << 16)]]
        block += noise * rng.standard_normal(block.shape, dtype=np.float32)
        features[lo:lo + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    del centre
    table = TrackletTable(cameras, camera, np.arange(len(camera)), np.zeros(len(camera)), first_frame, last_frame,
                          (first_frame - 1) / FPS, (last_frame - 1) / FPS, np.full(len(camera), 10), features, person)
    return table, (stay_person, camera_of_stay, enter, leave)


def transition_model(kind, cameras, density, dim):
    """The linking's transitions on the benchmark's camera graph: 'learnt', TransitionModel.fit
    on the stays of an hour of another scene of the same graph; 'routes', RouteWindows."""
    if kind == 'routes':
        return RouteWindows(cameras, *camera_graph(len(cameras), np.random.default_rng(0)))
    _, stays = scale_scene(int(len(cameras) * density), len(cameras), density, dim, seed=1)
    return TransitionModel.fit(*stays, cameras)


def scale(args):
    cameras = [f'c{c:03d}' for c in range(args.cameras)]
    tic = time.perf_counter()
    transitions = transition_model(args.transitions, cameras, args.density, args.dim)
    sources = [pair.source for pair in getattr(transitions, 'pairs', {}).values()]
    print(f'{args.cameras} cameras, {args.density:g} tracklets per camera-hour, {args.dim}-d features '
          f'(noise {args.noise:g}), {args.distance} distance, threshold {args.threshold}, prior weight '
          f'{args.prior_weight}, disjoint views; '
          f'transitions {args.transitions} ({time.perf_counter() - tic:.1f} s'
          + (f'; {sources.count("observed")} camera pairs observed, {sources.count("composed")} composed, the '
             f'other {args.cameras * (args.cameras - 1) - len(sources)} unobserved' if sources else '')
          + f'), max_window {transitions.max_window():.0f} s', flush=True)
    per_tracklet = None
    for num in args.sizes:
        table, _ = scale_scene(num, args.cameras, args.density, args.dim, args.noise)
        report = {}
        reset_peak_rss()
        before = rss_mib('VmRSS')
        tic = time.perf_counter()
        global_id = linking.link_tracklets(table, args.threshold, transitions, prior_weight=args.prior_weight,
                                           disjoint_views=True, distance=args.distance, report=report)
        seconds = time.perf_counter() - tic
        peak = rss_mib()
        _, _, f1 = pairwise_scores(global_id, table.gt_id)
        per_tracklet = per_tracklet or seconds / num
        print(f'{num:>9,d} tracklets ({num / (args.cameras * args.density):.1f} h): {seconds:7.1f} s '
              f'({1e6 * seconds / num:.0f} us a tracklet, x{seconds / num / per_tracklet:.2f} the first size), '
              f'peak RSS {peak:,.0f} MiB ({before:,.0f} before: the table and the interpreter); '
              f'{report["candidate_pairs"] / num:.0f} candidate pairs a tracklet, '
              f'{report["pairs_clustered"] / num:.2f} kept; stages: sweep and components '
              f'{report["components_seconds"]:.1f} s, pairs in components {report["pairs_seconds"]:.1f} s, '
              f'linkage {report["linkage_seconds"]:.1f} s; {len(np.unique(global_id)):,d} identities '
              f'({len(np.unique(table.gt_id)):,d} true), pairwise F1 {f1:.3f}', flush=True)
        del table, global_id


def train_scene_model(save_dir, epochs):
    """A model trained briefly on other people seen by the scenes' cameras (64x32, timm:resnet18);
    its best_model.pth.tar."""
    train = os.path.join(save_dir, 'train')
    synthetic_mtmc.make_train_set(train, seed=SCENE_MODEL_SEED)
    subprocess.run([sys.executable, os.path.join(REPO, 'train_img_model_xent_htri.py'), '-d', 'image_folder',
                    '--root', train, '-a', 'timm:resnet18', '--height', '64', '--width', '32', '--no-pretrained',
                    '--workers', '0', '--lr', '1e-3', '--stepsize', str(max(1, epochs * 3 // 4)),
                    '--max-epoch', str(epochs), '--print-freq', '100', '--save-dir', os.path.join(save_dir, 'model')],
                   check=True, stdout=subprocess.DEVNULL)
    return os.path.join(save_dir, 'model', 'best_model.pth.tar')


def scene_variants(scene, extractor, split_distances):
    """{variant: (multi-camera IDF1, threshold, prior weight)} of one generated scene, each
    linking variant at its best threshold (and prior weight) on the scene itself."""
    cameras = mtmc_scene.read_scene(scene)
    truth = mtmc_scene.read_scene_gt(cameras)
    learnt = TransitionModel.fit_mot({name: np.stack(t[:2], axis=1) for name, t in truth.items()},
                                     {c.name: c.fps for c in cameras})
    results = {}

    def calibrated(name, table, transitions=None, weights=(0.0,), distance='cosine'):
        units, track_of_unit = link_cameras.scene_units(cameras, table)
        evaluation = link_cameras.evaluation(cameras, units, 'gt/gt.txt')
        if transitions is None and distance == 'none':
            results[name] = (evaluation.scores(track_of_unit, per_camera=False)['all']['idf1'], None, None)
            return
        threshold, weight, idf1, _ = best_linking(
            lambda labels: evaluation.scores(labels, per_camera=False)['all']['idf1'],
            lambda t, w: link_cameras.unit_labels(linking.link_tracklets(table, t, transitions, w, distance=distance),
                                                  len(track_of_unit)),
            link_cameras.THRESHOLDS, weights)
        results[name] = (idf1, threshold, weight)

    tables = {d: mtmc_scene.tracklet_features(cameras, extractor, split_distance=d)[0] for d in split_distances}
    plain, split = tables[None], tables[link_cameras.SPLIT_DISTANCE]
    calibrated('no linking', plain, distance='none')
    calibrated('appearance + same-camera rule', plain)
    calibrated('plain recipe (+ time gates)', plain, learnt)
    for d in split_distances[1:]:
        calibrated(f'+ splitting at {d:g}', tables[d], learnt)
    calibrated(f'+ transition prior (split {link_cameras.SPLIT_DISTANCE:g})', split, learnt, link_cameras.PRIOR_WEIGHTS)
    calibrated('+ Jaccard distance', split, learnt, link_cameras.PRIOR_WEIGHTS, 'jaccard')
    return results


def scenes(args):
    """Multi-camera IDF1 of the linking recipe and each addition on generated scenes."""
    with tempfile.TemporaryDirectory() as work:
        checkpoint = args.resume or train_scene_model(work, args.epochs)
        extractor = FeatureExtractor(checkpoint)
        split_distances = [None] + sorted(set(args.split_distances) | {link_cameras.SPLIT_DISTANCE})
        table = {}
        for seed in args.seeds:
            scene = os.path.join(work, f'scene{seed}')
            synthetic_mtmc.make_scene(scene, num_people=args.people, seconds=args.seconds, seed=seed)
            for name, result in scene_variants(scene, extractor, split_distances).items():
                table.setdefault(name, []).append(result)
            print(f'scene seed {seed}: ' + ', '.join(f'{name} {r[-1][0]:.1%}' for name, r in table.items()), flush=True)
    print(f'Multi-camera IDF1 on {len(args.seeds)} generated scenes ({args.people} people, {args.seconds:g} s, 4 '
          f'cameras), each variant at its best threshold / prior weight on the scene:')
    for name, results in table.items():
        idf1 = np.array([r[0] for r in results])
        settings = '' if results[0][1] is None else '  (threshold ' + ', '.join(
            f'{r[1]:g}' + (f'/w {r[2]:g}' if r[2] else '') for r in results) + ')'
        print(f'  {name:<34} mean {idf1.mean():6.1%}  per scene {" ".join(f"{v:6.1%}" for v in idf1)}{settings}')


CASES = {'scale': scale, 'scenes': scenes}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--case', required=True, choices=sorted(CASES))
    parser.add_argument('--sizes', type=int, nargs='+', default=[10000, 100000], help='tracklets (scale)')
    parser.add_argument('--cameras', type=int, default=100, help='cameras (scale)')
    parser.add_argument('--density', type=float, default=120.0, help='tracklets per camera-hour (scale)')
    parser.add_argument('--dim', type=int, default=512, help='feature size (scale)')
    parser.add_argument('--noise', type=float, default=0.8,
                        help='feature noise around the identity centres, per dimension (scale): 0.8 puts one '
                             "person's tracklets ~0.4 apart in cosine distance, 1.2 ~0.6")
    parser.add_argument('--threshold', type=float, default=0.55, help='linking distance threshold (scale)')
    parser.add_argument('--distance', choices=('cosine', 'jaccard'), default='cosine',
                        help='appearance distance of the linking (scale); jaccard costs time quadratic in N')
    parser.add_argument('--prior-weight', type=float, default=1.0, help='weight of the transition cost (scale)')
    parser.add_argument('--transitions', choices=('learnt', 'routes'), default='learnt',
                        help='learnt: camera_transitions.TransitionModel fit on an hour of another scene; '
                             "routes: the generator's windows (scale)")
    parser.add_argument('--seeds', type=int, nargs='+', default=[1, 2, 3], help='generated scenes (scenes)')
    parser.add_argument('--people', type=int, default=12, help='people per scene (scenes)')
    parser.add_argument('--seconds', type=float, default=40.0, help='length of a scene (scenes)')
    parser.add_argument('--resume', metavar='CKPT', help='model for the tracklet features (scenes; default: '
                                                         'trained here)')
    parser.add_argument('--epochs', type=int, default=20, help='training epochs of that model (scenes)')
    parser.add_argument('--split-distances', type=float, nargs='+', default=[0.1, 0.15, 0.3],
                        help='--split-distance values compared (scenes)')
    args = parser.parse_args()
    CASES[args.case](args)


if __name__ == '__main__':
    main()
