"""Camera transition model: how long people take from one camera to another, learnt or given.

Learnt (TransitionModel.fit) from stays, the time spans one identity spends in one camera
(enter, exit), e.g. from a scene's ground truth (fit_mot, stays_from_mot): per ordered pair of
cameras (a, b), the transition time is enter_time in b minus exit_time in a for consecutive
stays of one identity (negative where views overlap). Its distribution is a histogram in bins
of bin_seconds smoothed by a Gaussian (a Parzen estimate, as st-ReID smooths its histograms),
normalised to a probability per bin. Three rules make it usable on scenes the learning data
did not fully show:
  * hard windows: a transit outside [fastest observed - margin, slowest observed + margin]
    is impossible (margin: 3 smoothing sigmas by default, where the smoothed density ends);
  * composition: a pair never observed directly but reachable through other cameras
    (c001 -> c002 -> c004) gets the distribution of the sum transit + stay + transit along the
    camera graph (up to max_hops intermediate cameras), paths weighted by how often people
    leaving a camera went to each next one; stays in the intermediate cameras are learnt too;
    an observed pair gets these longer routes mixed into its direct transits (a person's
    tracklets in c001 and c004 are a pair whichever way they walked);
  * a pair neither observed nor composable costs a finite penalty (unobserved_cost) inside
    the widest known window: rare routes are unlikely, not impossible. Only a topology file
    forbids pairs.
Given by hand (TransitionModel.from_topology): allowed pairs with min / max seconds; pairs the
file does not list are forbidden; a learnt model restricted by a topology (fit(topology=...))
keeps the learnt distributions on the allowed pairs.

Tracklets are pieces of stays: the gap between the end of a tracklet in a and the start of one
in b is the transit plus what the two tracklets miss of their stays (the tail of a's stay,
the head of b's). window() and cost() therefore widen the transit window upwards by
widen(a) + widen(b), where widen(c) is the widen_quantile of the stay durations learnt in
camera c (a tracklet misses at most its stay), or by a `widen` (seconds) given per call,
e.g. 0 for whole stays. Inside the widened window, cost() takes the most likely transit
consistent with the gap (gap - widening <= transit <= gap).

The same model serves st-ReID's evaluation (--st of the image scripts, Wang et al., AAAI 2019):
st_model learns it from a train split's frame-numbered names (time unit: frames; one point
stay per identity and camera at its mean frame; every pair of an identity's cameras, not only
consecutive ones; 100-frame bins smoothed with sigma 50 bins), st_probability looks up the
probability of a query-gallery time difference, st_fuse combines it with the visual similarity
by their logistic fusion, and evaluate_st prints visual-only and fused results side by side.
"""
import json
import math
import os
import re
from dataclasses import dataclass

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import gaussian_filter1d

from checkpoints import write_atomic
from data_manager import DatasetError
from eval_metrics import Reiterable, evaluate_blocks

__all__ = ['TransitionModel', 'TransitionFileError', 'stays_from_mot', 'NoFrameNumbersError', 'frame_times',
           'st_model', 'st_probability', 'st_fuse', 'evaluate_st', 'ST_PUBLISHED']

FORMAT = 'camera-transitions'
VERSION = 1
# cost() of the least likely transit inside a window: log of the density ratio to the mode,
# capped where the smoothed density is 1/1000 of the mode's (its tails are not data anymore).
COST_CAP = math.log(1000.0)
# cost() of a pair never observed nor composable: as unlikely as a transit at 1/10 of the mode's density.
UNOBSERVED_COST = math.log(10.0)
ROUTES = ('consecutive', 'all')
# st-ReID's published figures (Wang et al., AAAI 2019, without re-ranking): Rank-1 / mAP in %.
ST_PUBLISHED = {'market1501': (98.1, 87.6), 'dukemtmcreid': (94.4, 83.9)}


class TransitionFileError(ValueError):
    """A topology or transition-model file cannot be read; the message names the file (and line)."""


@dataclass
class _Distribution:
    """Probability per bin of a time (a transit, or a stay's duration) on the grid
    [origin, origin + len(prob) * bin_seconds); lo, hi: the hard window (seconds);
    count: samples it was learnt from (0: composed or given by hand); source: 'observed',
    'composed' or 'topology'."""
    origin: float
    prob: np.ndarray  # (K,) float64, sums to 1
    lo: float
    hi: float
    count: int
    source: str


def _smoothed(samples, bin_seconds, smooth_seconds, margin, min_value, source='observed'):
    """The _Distribution of samples (n,): a histogram in bins aligned to multiples of
    bin_seconds, smoothed by a Gaussian of smooth_seconds truncated at 3 sigmas (None:
    Silverman's rule for these samples, at least one bin), over the hard window [min - margin,
    max + margin] (margin None: 3 sigmas, at least two bins), not below min_value (None: no
    floor). Mass smoothed off the grid is dropped and the rest renormalised, as st-ReID does."""
    samples = np.asarray(samples, dtype=np.float64)
    if smooth_seconds is None:
        spread = np.std(samples)
        q75, q25 = np.percentile(samples, [75, 25])
        if q75 > q25:
            spread = min(spread, (q75 - q25) / 1.34)
        smooth_seconds = 0.9 * spread * len(samples) ** -0.2
    sigma = max(smooth_seconds, bin_seconds)
    margin = max(3 * sigma, 2 * bin_seconds) if margin is None else margin
    lo, hi = samples.min() - margin, samples.max() + margin
    if min_value is not None:
        lo = max(lo, min_value)
    origin = math.floor(lo / bin_seconds) * bin_seconds
    num_bins = math.floor((hi - origin) / bin_seconds) + 1  # the bin holding hi included
    index = np.clip(np.floor((samples - origin) / bin_seconds).astype(np.int64), 0, num_bins - 1)
    hist = np.bincount(index, minlength=num_bins).astype(np.float64)
    hist = gaussian_filter1d(hist, sigma / bin_seconds, mode='constant', truncate=3.0)
    return _Distribution(float(origin), hist / hist.sum(), float(lo), float(hi), len(samples), source)


def _convolve(first, second, bin_seconds):
    """(origin, prob) of the sum of two independent binned times. A sum of bin offsets i + j
    lands half a bin above bin i + j's centre on average, hence the half bin on the origin."""
    return first[0] + second[0] + bin_seconds / 2, np.convolve(first[1], second[1])


def _accumulate(into, origin, prob, bin_seconds):
    """into: dict {'origin', 'prob'} or empty; add the binned prob at origin (same bin phase)."""
    if not into:
        into.update(origin=origin, prob=prob.copy())
        return
    start = min(into['origin'], origin)
    offset_a = round((into['origin'] - start) / bin_seconds)
    offset_b = round((origin - start) / bin_seconds)
    total = np.zeros(max(offset_a + len(into['prob']), offset_b + len(prob)))
    total[offset_a:offset_a + len(into['prob'])] += into['prob']
    total[offset_b:offset_b + len(prob)] += prob
    into.update(origin=start, prob=total)


class TransitionModel:
    """Transition-time distributions per ordered pair of cameras (see the module docstring).

    cameras: the camera names (sorted); methods take a camera as its name or its index in
    cameras. Times are seconds on the scene clock (any unit works if used consistently:
    st_model uses frames). Same-camera pairs are not modelled: window/cost refuse them.
    """

    def __init__(self, cameras, pairs, bin_seconds, widening=None, unobserved_cost=UNOBSERVED_COST,
                 forbid_unlisted=False):
        """pairs: {(camera a, camera b): _Distribution} by name; widening: {camera: seconds}
        a tracklet may miss of its stay at each end (missing: 0); forbid_unlisted: pairs
        absent from `pairs` are forbidden (a topology) rather than merely unobserved."""
        self.cameras = list(cameras)
        self.pairs = dict(pairs)
        self.bin_seconds = float(bin_seconds)
        self.widening = {c: float(w) for c, w in (widening or {}).items()}
        self.unobserved_cost = float(unobserved_cost)
        self.forbid_unlisted = bool(forbid_unlisted)
        self._profiles = {}  # (a, b, widening) -> (origin, cost per bin) of cost()
        self._table = None   # st_probability's padded (C * C, K) lookup
        self._unobserved = None  # _unobserved_window(), once asked for

    # ---- learning -------------------------------------------------------------------------
    @classmethod
    def fit(cls, identity, camera, enter_time, exit_time, cameras, *, bin_seconds=1.0, smooth_seconds=None,
            margin=None, min_transit=None, routes='consecutive', max_hops=2, widen_quantile=0.9,
            unobserved_cost=UNOBSERVED_COST, topology=None):
        """Learn the model from N stays: identity (N,) int, camera (N,) int index into cameras,
        enter_time, exit_time (N,) float seconds (exit >= enter).

        routes: 'consecutive' learns each pair from consecutive stays of an identity (the
        direct transitions of the camera graph); 'all' from every pair of an identity's stays
        in time order (st-ReID's choice, and what any two tracklets of one identity can span).
        smooth_seconds (None: per pair by Silverman's rule), margin (None: 3 sigmas) and
        min_transit (None: no floor; 0 when times are ordered, as st_model's) shape each
        histogram (see _smoothed). max_hops: intermediate cameras a composed route may pass.
        widen_quantile: the quantile of each camera's stay durations by which window/cost
        widen on tracklet ends (None: no widening). topology: a TransitionModel from
        from_topology; its unlisted pairs are forbidden, its pairs the data never showed keep
        the file's window.
        """
        if routes not in ROUTES:
            raise ValueError(f'routes={routes!r}: use one of {", ".join(ROUTES)}')
        identity, camera = np.asarray(identity, np.int64), np.asarray(camera, np.int64)
        enter_time, exit_time = np.asarray(enter_time, np.float64), np.asarray(exit_time, np.float64)
        if not len(identity) == len(camera) == len(enter_time) == len(exit_time):
            raise ValueError(f'identity, camera, enter_time and exit_time must have one length; got '
                             f'{len(identity)}, {len(camera)}, {len(enter_time)} and {len(exit_time)}')
        cameras = list(cameras)
        if len(camera) and (camera.min() < 0 or camera.max() >= len(cameras)):
            raise ValueError(f'camera indices must be in 0..{len(cameras) - 1} (one per name in cameras)')
        if not (np.isfinite(enter_time).all() and np.isfinite(exit_time).all() and (exit_time >= enter_time).all()):
            raise ValueError('stay times must be finite with exit_time >= enter_time')

        order = np.lexsort((exit_time, enter_time, identity))
        transits = {}
        for start, stop in _runs(identity[order]):
            rows = order[start:stop]
            for i in range(len(rows) - 1):
                later = rows[i + 1:i + 2] if routes == 'consecutive' else rows[i + 1:]
                for j in later:
                    a, b = camera[rows[i]], camera[j]
                    if a != b:
                        transits.setdefault((cameras[a], cameras[b]), []).append(enter_time[j] - exit_time[rows[i]])
        if not transits:
            raise ValueError('no identity was seen in two cameras: there is no transition to learn from')
        if topology is not None:
            transits = {pair: t for pair, t in transits.items() if pair in topology.pairs}

        def learn(samples, floor):
            return _smoothed(samples, bin_seconds, smooth_seconds, margin, floor)

        pairs = {pair: learn(times, min_transit) for pair, times in transits.items()}
        durations = {name: exit_time[camera == c] - enter_time[camera == c] for c, name in enumerate(cameras)}
        stays = {name: learn(d, 0.0) for name, d in durations.items() if len(d)}
        counts = {pair: len(times) for pair, times in transits.items()}
        for pair, composed in _compose(pairs, counts, stays, bin_seconds, max_hops).items():
            if topology is None or pair in topology.pairs:
                pairs[pair] = composed
        if topology is not None:
            pairs = {pair: pairs.get(pair, given) for pair, given in topology.pairs.items()}
            cameras = sorted(set(cameras) | set(topology.cameras))
        widening = {}
        if widen_quantile is not None:
            widening = {name: float(np.quantile(d, widen_quantile)) for name, d in durations.items() if len(d)}
        return cls(cameras, pairs, bin_seconds, widening, unobserved_cost, forbid_unlisted=topology is not None)

    @classmethod
    def fit_mot(cls, tracks, fps, offsets=None, max_gap=2.0, **fit_options):
        """fit() on the stays of ground truth in MOT form (stays_from_mot's arguments)."""
        identity, camera, enter_time, exit_time, cameras = stays_from_mot(tracks, fps, offsets, max_gap)
        return cls.fit(identity, camera, enter_time, exit_time, cameras, **fit_options)

    @classmethod
    def from_topology(cls, path, bin_seconds=1.0):
        """A model from a hand-written topology file: one allowed ordered pair per line,

            # comment
            FROM TO MIN_SECONDS MAX_SECONDS      e.g.  c001 c002 5 40

        (camera names as the scene's folders; MIN may be negative where two views overlap;
        list both directions of a two-way route). Every gap inside [MIN, MAX] costs 0; pairs
        not listed are forbidden. Tracklet-end widening: only a `widen` given per call (a
        file has no stays to learn it from). Errors name the file and line."""
        pairs = {}
        try:
            with open(path, encoding='utf-8') as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise TransitionFileError(f'{path}: cannot read the topology file: {error}') from error
        for number, line in enumerate(lines, start=1):
            fields = line.split('#', 1)[0].split()
            if not fields:
                continue
            where = f'{path}, line {number}'
            if len(fields) != 4:
                raise TransitionFileError(f'{where}: expected "FROM TO MIN_SECONDS MAX_SECONDS", got {line.strip()!r}')
            a, b = fields[:2]
            try:
                lo, hi = float(fields[2]), float(fields[3])
            except ValueError:
                raise TransitionFileError(f'{where}: MIN_SECONDS and MAX_SECONDS must be numbers, got '
                                          f'{fields[2]!r} and {fields[3]!r}') from None
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise TransitionFileError(f'{where}: need finite MIN_SECONDS <= MAX_SECONDS, got {lo} and {hi}')
            if a == b:
                raise TransitionFileError(f'{where}: {a} to itself: list pairs of different cameras')
            if (a, b) in pairs:
                raise TransitionFileError(f'{where}: the pair {a} {b} is listed twice')
            num_bins = max(1, math.ceil((hi - lo) / bin_seconds))
            pairs[a, b] = _Distribution(lo, np.full(num_bins, 1.0 / num_bins), lo, hi, 0, 'topology')
        if not pairs:
            raise TransitionFileError(f'{path}: no camera pair in the topology file (lines "FROM TO MIN MAX")')
        cameras = sorted({c for pair in pairs for c in pair})
        return cls(cameras, pairs, bin_seconds, forbid_unlisted=True)

    # ---- queries --------------------------------------------------------------------------
    def _name(self, camera):
        if isinstance(camera, (int, np.integer)):
            if not 0 <= camera < len(self.cameras):
                raise IndexError(f'camera index {camera} out of range: the model has {len(self.cameras)} cameras')
            return self.cameras[camera]
        return camera

    def _pair(self, a, b):
        """(name a, name b, _Distribution or None for an unobserved pair); raises on a same-camera pair.
        A forbidden pair gives (a, b, False)."""
        a, b = self._name(a), self._name(b)
        if a == b:
            raise ValueError(f'{a} to itself: the transition model covers pairs of different cameras')
        found = self.pairs.get((a, b))
        if found is None and self.forbid_unlisted:
            return a, b, False
        return a, b, found

    def widen(self, a, b, widen=None):
        """Seconds by which windows on tracklet ends are widened: `widen` when given, else the
        learnt widening of a plus that of b."""
        if widen is not None:
            return float(widen)
        return self.widening.get(self._name(a), 0.0) + self.widening.get(self._name(b), 0.0)

    def _unobserved_window(self):
        """The widest known window, computed once: cost() asks for it per call and pair."""
        if self._unobserved is None:
            self._unobserved = min(d.lo for d in self.pairs.values()), max(d.hi for d in self.pairs.values())
        return self._unobserved

    def window(self, a, b, widen=None):
        """(lo, hi) seconds allowed between the end of a tracklet in a and the start of a
        later one in b, widened (see widen()); None when the pair is forbidden. An unobserved,
        uncomposable pair gets the widest known window (at a cost)."""
        a, b, found = self._pair(a, b)
        if found is False:
            return None
        lo, hi = (found.lo, found.hi) if found is not None else self._unobserved_window()
        return float(lo), float(hi + self.widen(a, b, widen))

    def max_window(self, widen=None):
        """The largest hi of window() over all camera pairs (bounds a linker's candidate search)."""
        if self.forbid_unlisted:
            return max(d.hi + self.widen(a, b, widen) for (a, b), d in self.pairs.items())
        widest = max((self.widen(a, b, widen) for a in self.cameras for b in self.cameras if a != b), default=0.0)
        return max(d.hi for d in self.pairs.values()) + widest

    def cost(self, a, b, gap, widen=None):
        """Prior cost of gaps (array, seconds: start of the later tracklet in b minus end of
        the earlier in a): 0 at the most likely transit, log(mode density / density) up to
        COST_CAP for less likely ones, unobserved_cost on an unobserved pair, np.inf outside
        the (widened) window or on a forbidden pair. Same shape as gap, float64."""
        gap = np.asarray(gap, dtype=np.float64)
        a, b, found = self._pair(a, b)
        if found is False:
            return np.full(gap.shape, np.inf)
        widening = self.widen(a, b, widen)
        if found is None:
            lo, hi = self._unobserved_window()
            return np.where((gap >= lo) & (gap <= hi + widening), self.unobserved_cost, np.inf)
        key = (a, b, widening)
        if key not in self._profiles:
            # The best transit in [gap - widening, gap]: a running maximum over that many bins.
            reach = int(math.ceil(widening / self.bin_seconds))
            padded = np.concatenate([np.zeros(reach), found.prob, np.zeros(reach)])
            best = sliding_window_view(padded, reach + 1).max(axis=1)  # (K + reach,)
            with np.errstate(divide='ignore'):
                self._profiles[key] = np.minimum(np.log(best.max() / best), COST_CAP)
        profile = self._profiles[key]
        inside = (gap >= found.lo) & (gap <= found.hi + widening)
        index = np.clip(np.floor((gap - found.origin) / self.bin_seconds).astype(np.int64), 0, len(profile) - 1)
        return np.where(inside, profile[index], np.inf)

    def probability(self, a, b, gap):
        """Probability per bin of transit gaps: a, b (int camera indices) and gap (seconds)
        are broadcast arrays; 0 for unobserved or same-camera pairs and outside the grid."""
        if self._table is None:
            index = {name: i for i, name in enumerate(self.cameras)}
            size = max(len(d.prob) for d in self.pairs.values())
            num = len(self.cameras)
            table = np.zeros((num * num + 1, size))  # the last row: all zeros, for pairs without a model
            origin, length = np.zeros(num * num + 1), np.ones(num * num + 1, np.int64)
            for (name_a, name_b), dist in self.pairs.items():
                row = index[name_a] * num + index[name_b]
                table[row, :len(dist.prob)], origin[row], length[row] = dist.prob, dist.origin, len(dist.prob)
            self._table = table, origin, length
        table, origin, length = self._table
        a, b, gap = np.broadcast_arrays(np.asarray(a, np.int64), np.asarray(b, np.int64), np.asarray(gap, np.float64))
        num = len(self.cameras)
        row = np.where((a == b) | (a < 0) | (a >= num) | (b < 0) | (b >= num), num * num, a * num + b)
        column = np.floor((gap - origin[row]) / self.bin_seconds)
        # Off the grid: the all-zero last row's first cell. One gather from the flat table.
        flat = np.where((column >= 0) & (column < length[row]), row * table.shape[1] + column, num * num * table.shape[1])
        return table.ravel()[flat.astype(np.int64)]

    def summary(self):
        """Printable lines: one per modelled pair (source, count, window before widening),
        then the widening per camera."""
        lines = [f'{a} -> {b}: {d.source}' + (f' ({d.count} transits)' if d.count else '')
                 + f', window {d.lo:.1f} .. {d.hi:.1f} s' for (a, b), d in sorted(self.pairs.items())]
        if self.widening:
            lines.append('tracklet-end widening: ' + ', '.join(f'{c} {w:.1f} s' for c, w in sorted(self.widening.items())))
        lines.append('other pairs: ' + ('forbidden' if self.forbid_unlisted else f'cost {self.unobserved_cost:.2f}'))
        return lines

    # ---- files ----------------------------------------------------------------------------
    def to_dict(self):
        return {'format': FORMAT, 'version': VERSION, 'cameras': self.cameras, 'bin_seconds': self.bin_seconds,
                'unobserved_cost': self.unobserved_cost, 'forbid_unlisted': self.forbid_unlisted,
                'widening': self.widening,
                'pairs': [{'from': a, 'to': b, 'origin': d.origin, 'lo': d.lo, 'hi': d.hi, 'count': d.count,
                           'source': d.source, 'prob': d.prob.tolist()} for (a, b), d in sorted(self.pairs.items())]}

    def save(self, path):
        """Write the model as JSON, atomically (whole or not at all)."""
        text = json.dumps(self.to_dict(), indent=1).encode()
        write_atomic(path, lambda f: f.write(text))

    @classmethod
    def load(cls, path):
        """Read a file written by save(); TransitionFileError naming the file and what is wrong."""
        try:
            with open(path, encoding='utf-8') as f:
                data = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise TransitionFileError(f'{path}: not a readable transition-model JSON file: {error}') from error
        if not isinstance(data, dict) or data.get('format') != FORMAT:
            raise TransitionFileError(f'{path}: not a transition-model file (no "format": "{FORMAT}")')
        if data.get('version') != VERSION:
            raise TransitionFileError(f'{path}: transition-model version {data.get("version")!r}; this code '
                                      f'reads version {VERSION}')
        try:
            pairs = {}
            for number, entry in enumerate(data['pairs']):
                prob = np.asarray(entry['prob'], dtype=np.float64)
                if prob.ndim != 1 or not len(prob) or not np.isfinite(prob).all() or (prob < 0).any():
                    raise ValueError(f'pairs[{number}].prob must be a non-empty list of probabilities')
                if not float(entry['lo']) <= float(entry['hi']):
                    raise ValueError(f'pairs[{number}]: lo > hi')
                pairs[str(entry['from']), str(entry['to'])] = _Distribution(
                    float(entry['origin']), prob, float(entry['lo']), float(entry['hi']), int(entry['count']),
                    str(entry['source']))
            if not pairs:
                raise ValueError('no pair')
            model = cls([str(c) for c in data['cameras']], pairs, float(data['bin_seconds']),
                        {str(c): float(w) for c, w in data['widening'].items()}, float(data['unobserved_cost']),
                        bool(data['forbid_unlisted']))
        except KeyError as error:
            raise TransitionFileError(f'{path}: missing key {error} in the transition-model file') from None
        except (TypeError, ValueError, AttributeError) as error:
            raise TransitionFileError(f'{path}: malformed transition-model file: {error}') from None
        if model.bin_seconds <= 0:
            raise TransitionFileError(f'{path}: bin_seconds must be positive, got {model.bin_seconds}')
        return model


def _runs(sorted_keys):
    """(start, stop) of each run of equal values in a sorted (N,) array."""
    if not len(sorted_keys):
        return []
    edges = np.flatnonzero(np.diff(sorted_keys)) + 1
    return zip(np.concatenate([[0], edges]), np.concatenate([edges, [len(sorted_keys)]]))


def _compose(pairs, counts, stays, bin_seconds, max_hops):
    """{(a, d): _Distribution} over the pairs that paths of up to max_hops intermediate cameras
    reach: the distribution of transit + stay + transit + ..., each path weighted by the
    product of its steps' shares of the transits leaving their camera. A pair absent from
    `pairs` gets that composed distribution; an observed pair gets the mixture of its direct
    transits (weighted by their share of the transits leaving a) and the composed ones, over
    the union of both windows: two tracklets of a person who walked a -> b -> d are a pair
    (a, d) too, whose gap is the whole route, even where people also walk a -> d directly.
    Paths may revisit cameras (people do). O(cameras^3 x max_hops) convolutions."""
    leaving = {}
    for (a, b), count in counts.items():
        leaving[a] = leaving.get(a, 0) + count
    steps = {}
    for (a, b), dist in pairs.items():
        steps.setdefault(a, []).append((b, counts[a, b] / leaving[a], dist))
    composed = {}
    for source in steps:
        frontier = {b: (dist.origin, share * dist.prob) for b, share, dist in steps[source]}
        for _ in range(max_hops):
            arrivals = {}
            for via, (origin, prob) in frontier.items():
                if via not in stays or via not in steps:
                    continue
                stay = stays[via]
                after_stay = _convolve((origin, prob), (stay.origin, stay.prob), bin_seconds)
                for target, share, dist in steps[via]:
                    arrived_origin, arrived = _convolve(after_stay, (dist.origin, dist.prob), bin_seconds)
                    _accumulate(arrivals.setdefault(target, {}), arrived_origin, share * arrived, bin_seconds)
            frontier = {target: (a['origin'], a['prob']) for target, a in arrivals.items()}
            for target, (origin, prob) in frontier.items():
                if target != source:
                    _accumulate(composed.setdefault((source, target), {}), origin, prob, bin_seconds)
    result = {}
    for pair, mix in composed.items():
        support = np.flatnonzero(mix['prob'] > 0)
        if not len(support):
            continue
        prob = mix['prob'][support[0]:support[-1] + 1]
        origin = float(mix['origin'] + support[0] * bin_seconds)
        lo, hi = origin, origin + len(prob) * bin_seconds
        direct = pairs.get(pair)
        if direct is None:
            result[pair] = _Distribution(origin, prob / prob.sum(), lo, hi, 0, 'composed')
            continue
        both = {}
        _accumulate(both, direct.origin, counts[pair] / leaving[pair[0]] * direct.prob, bin_seconds)
        _accumulate(both, origin, prob, bin_seconds)
        result[pair] = _Distribution(both['origin'], both['prob'] / both['prob'].sum(), min(direct.lo, lo),
                                     max(direct.hi, hi), direct.count, direct.source)
    return result


def stays_from_mot(tracks, fps, offsets=None, max_gap=2.0):
    """Stays of ground truth in MOT form: tracks {camera name: (M, 2) int array of rows
    (frame, global id)} (frames from 1), fps a number or {camera: fps}, offsets {camera:
    seconds} (missing: 0). time = (frame - 1) / fps + offset. A stay is the span from the first
    to the last time an id is seen in a camera, broken where the id is absent for longer than
    max_gap seconds. Returns (identity (S,) int64, camera (S,) int64 index into cameras,
    enter_time (S,), exit_time (S,) float64, cameras: the sorted names)."""
    cameras = sorted(tracks)
    offsets = offsets or {}
    out = [[], [], [], []]
    for index, name in enumerate(cameras):
        rows = np.asarray(tracks[name], dtype=np.int64).reshape(-1, 2)
        rate = fps[name] if isinstance(fps, dict) else fps
        times = (rows[:, 0] - 1) / float(rate) + float(offsets.get(name, 0.0))
        order = np.lexsort((times, rows[:, 1]))
        ids, times = rows[order, 1], times[order]
        # A new stay starts at each new id and after each absence longer than max_gap.
        breaks = np.flatnonzero((np.diff(ids) != 0) | (np.diff(times) > max_gap)) + 1
        starts, stops = np.concatenate([[0], breaks]), np.concatenate([breaks, [len(ids)]]) - 1
        if len(ids):
            out[0].append(ids[starts])
            out[1].append(np.full(len(starts), index))
            out[2].append(times[starts])
            out[3].append(times[stops])
    identity, camera, enter_time, exit_time = (np.concatenate(x) if x else np.zeros(0) for x in out)
    return identity.astype(np.int64), camera.astype(np.int64), enter_time, exit_time, cameras


# ---- st-ReID in re-ID evaluation (--st) ----------------------------------------------------
class NoFrameNumbersError(DatasetError):
    """--st on a dataset whose file names carry no frame numbers."""


# DukeMTMC-reID: 0001_c2_f0046182.jpg (pid, camera, frame in the camera's video).
DUKE_NAME = re.compile(r'^(?:-1|\d+)_c(\d+)_f(\d+)\.jpg$')
# Market-1501: 0002_c1s1_000451_03.jpg (pid, camera, sequence, frame within the sequence, box).
MARKET_NAME = re.compile(r'^(?:-1|\d+)_c(\d+)s(\d+)_(\d+)_\d+\.jpg(?:\.jpg)?$')
# st-ReID's histogram: 100-frame bins smoothed by a Gaussian of 50 bins; logistic fusion
# 1 / (1 + lambda0 exp(-gamma0 s)) x 1 / (1 + lambda1 exp(-gamma1 p)) with gamma 5, lambdas 1 and 2.
ST_BIN_FRAMES, ST_SMOOTH_FRAMES = 100.0, 5000.0
ST_GAMMA, ST_LAMBDAS = 5.0, (1.0, 2.0)


def frame_times(dataset):
    """{'train', 'query', 'gallery': (N,) float64 frame numbers on each camera's clock} of an
    image dataset's items, parsed from their file names: DukeMTMC-reID's c<cam>_f<frame>, or
    Market-1501's c<cam>s<seq>_<frame>, whose sequences are laid end to end per camera as
    st-ReID does (the offset of sequence s is the sum of the lengths of sequences 1..s-1 of that
    camera, a sequence's length being the largest frame any image of the dataset gives it).
    Raises NoFrameNumbersError naming the dataset and a file when the names carry no frames."""
    splits = {s: [os.path.basename(path) for path, _, _ in getattr(dataset, s)] for s in ('train', 'query', 'gallery')}
    names = [name for split in splits.values() for name in split]
    for pattern in (DUKE_NAME, MARKET_NAME):
        matches = [pattern.match(name) for name in names]
        if all(matches):
            break
    else:
        example = next(name for name in names if not DUKE_NAME.match(name) and not MARKET_NAME.match(name))
        raise NoFrameNumbersError(
            f'--st needs frame numbers in the file names (DukeMTMC-reID\'s 0001_c2_f0046182.jpg or Market-1501\'s '
            f'0002_c1s1_000451_03.jpg); {dataset.title} has none, e.g. {example}: leave --st out for it')
    if pattern is DUKE_NAME:
        frames = [float(m.group(2)) for m in matches]
    else:
        length = {}
        for m in matches:
            key = int(m.group(1)), int(m.group(2))
            length[key] = max(length.get(key, 0), int(m.group(3)))
        offset = {(cam, seq): sum(length.get((cam, s), 0) for s in range(1, seq)) for cam, seq in length}
        frames = [float(offset[int(m.group(1)), int(m.group(2))] + int(m.group(3))) for m in matches]
    out, start = {}, 0
    for split, split_names in splits.items():
        out[split] = np.array(frames[start:start + len(split_names)], dtype=np.float64)
        start += len(split_names)
    return out


def st_model(train, times, num_cameras):
    """st-ReID's spatial-temporal model from a train split: train [(path, pid, camid)], times
    (N,) frames. Each identity's time in a camera is the mean frame of its images there (a point
    stay); every pair of its cameras in time order gives a transit (routes='all'); transits
    are never negative (min_transit 0), nothing is composed, nothing widened."""
    pids = np.array([pid for _, pid, _ in train], dtype=np.int64)
    camids = np.array([camid for _, _, camid in train], dtype=np.int64)
    keys, inverse = np.unique(np.stack([pids, camids], axis=1), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    mean_time = np.bincount(inverse, weights=times) / np.bincount(inverse)
    return TransitionModel.fit(keys[:, 0], keys[:, 1], mean_time, mean_time, [f'c{i + 1}' for i in range(num_cameras)],
                               bin_seconds=ST_BIN_FRAMES, smooth_seconds=ST_SMOOTH_FRAMES, min_transit=0.0,
                               routes='all', max_hops=0, widen_quantile=None)


def st_probability(model, q_camids, q_times, g_camids, g_times):
    """(M, N) probabilities of the time differences of M queries and N gallery items under
    model, in time order: from the earlier of the two cameras to the later (0 in one camera)."""
    q_camids, q_times = np.asarray(q_camids)[:, None], np.asarray(q_times)[:, None]
    query_first = q_times <= g_times[None, :]
    earlier = np.where(query_first, q_camids, g_camids[None, :])
    later = np.where(query_first, g_camids[None, :], q_camids)
    return model.probability(earlier, later, np.abs(g_times[None, :] - q_times))


def st_fuse(similarity, probability, gamma=ST_GAMMA, lambdas=ST_LAMBDAS):
    """st-ReID's joint score of visual similarities (cosine) and st probabilities, elementwise:
    1 / (1 + lambda0 exp(-gamma s)) * 1 / (1 + lambda1 exp(-gamma p)); higher is more similar."""
    return 1 / (1 + lambdas[0] * np.exp(-gamma * similarity)) / (1 + lambdas[1] * np.exp(-gamma * probability))


def evaluate_st(dataset, qf, gf, q_pids, g_pids, q_camids, g_camids, block_size=256):
    """--st: learn st-ReID's model from dataset's train split and print, side by side, the
    results of ranking the gallery by the cosine similarity of qf (M, D) and gf (N, D) alone and
    by its fusion with the st probability (st_fuse), so the columns differ by the fusion only.
    q_pids, q_camids (M,), g_pids, g_camids (N,) in the order of dataset.query / .gallery.
    Returns (visual, fused) eval_metrics.ReIDMetrics."""
    times = frame_times(dataset)
    num_cameras = 1 + max(camid for split in (dataset.train, dataset.query, dataset.gallery) for _, _, camid in split)
    model = st_model(dataset.train, times['train'], num_cameras)
    unit_q, unit_g = torch.nn.functional.normalize(qf, dim=1), torch.nn.functional.normalize(gf, dim=1)
    q_cams, g_cams = np.asarray(q_camids), np.asarray(g_camids)

    def blocks(fuse):
        for start in range(0, len(unit_q), block_size):
            rows = slice(start, start + block_size)
            similarity = (unit_q[rows] @ unit_g.t()).cpu().double().numpy()
            if fuse:
                probability = st_probability(model, q_cams[rows], times['query'][rows], g_cams, times['gallery'])
                similarity = st_fuse(similarity, probability)
            yield start, -similarity  # a distance: lower ranks first

    visual, fused = (evaluate_blocks(Reiterable(lambda fuse=fuse: blocks(fuse)), q_pids, g_pids, q_camids, g_camids,
                                     verbose=False, fprs=()) for fuse in (False, True))
    print(f'Spatial-temporal fusion (--st, st-ReID): learnt from {dataset.title}\'s train split '
          f'({len(model.pairs)} camera pairs); cosine similarity alone and fused with the transit time')
    print(f'{"":9}{"cosine":>8}{"cosine+st":>11}')
    print(f'{"mAP":9}{visual.mAP:8.1%}{fused.mAP:11.1%}')
    for rank in (1, 5, 10, 20):
        if rank <= len(fused.cmc):
            print(f'{f"Rank-{rank}":9}{visual.cmc[rank - 1]:8.1%}{fused.cmc[rank - 1]:11.1%}')
    if dataset.name in ST_PUBLISHED:
        rank1, mAP = ST_PUBLISHED[dataset.name]
        print(f'(st-ReID published on {dataset.title}: Rank-1 {rank1}%, mAP {mAP}%, with its own PCB features)')
    return visual, fused
