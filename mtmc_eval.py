"""Scores of multi-camera tracking against ground truth with global ids, with motmetrics.

Multi-camera IDF1 / IDP / IDR are computed jointly over all cameras, as DukeMTMC and AI City
define them: the boxes of every (camera, frame) form one sequence, so one identity must keep
one id across cameras; per camera the same measures on that camera's frames. A hypothesis box
matches a ground-truth box of its (camera, frame) at IoU >= 0.5.

The tracker's boxes are fixed and only their identities change between linkings, so the
matching is computed once (MultiCameraEvaluation) and each labelling of the tracklets is
scored by relabelling the hypothesis ids of its events. Pairwise scores: cluster.pairwise_scores.
"""
import motmetrics as mm
import numpy as np

__all__ = ['MultiCameraEvaluation', 'best_linking', 'FRAME_STRIDE', 'MIN_IOU']

FRAME_STRIDE = 1 << 32   # key of (camera c, frame f) in the joint sequence: c * FRAME_STRIDE + f
MIN_IOU = 0.5
METRICS = ['idf1', 'idp', 'idr']


class MultiCameraEvaluation:
    """The matching of a scene's tracker boxes to its ground truth, for scoring labellings.

    camera_names: C names; truth: {name: (frame (G,) int, id (G,) int, boxes (G, 4) left, top,
    width, height)} with global ids; frames, boxes, units: per camera (the names' order) the
    hypothesis rows, (M,) frame numbers, (M, 4) boxes and (M,) unit: the tracklet (any integer
    key, unique over the scene) each row belongs to. Within a (camera, frame) units must differ
    (one box per track and frame).
    """

    def __init__(self, camera_names, truth, frames, boxes, units, min_iou=MIN_IOU):
        self.camera_names = list(camera_names)
        accumulator = mm.MOTAccumulator(auto_id=False)
        hyp_keys, hyp_units = [], []
        for c, name in enumerate(self.camera_names):
            gt_frame, gt_id, gt_boxes = truth[name]
            order_gt = np.argsort(gt_frame, kind='stable')
            order_hyp = np.argsort(frames[c], kind='stable')
            gt_frames, hyp_frames = np.asarray(gt_frame)[order_gt], np.asarray(frames[c])[order_hyp]
            for frame in np.union1d(gt_frames, hyp_frames).tolist():
                g = order_gt[np.searchsorted(gt_frames, frame):np.searchsorted(gt_frames, frame, side='right')]
                h = order_hyp[np.searchsorted(hyp_frames, frame):np.searchsorted(hyp_frames, frame, side='right')]
                distances = np.full((len(g), len(h)), np.nan)
                if len(g) and len(h):
                    iou = mm.distances.boxiou(np.asarray(gt_boxes, np.float64)[g][:, None],
                                              np.asarray(boxes[c], np.float64)[h][None])
                    distances = np.where(iou >= min_iou, 1 - iou, np.nan)
                accumulator.update(np.asarray(gt_id)[g], np.asarray(units[c])[h], distances,
                                   frameid=c * FRAME_STRIDE + frame)
            hyp_keys.append(c * FRAME_STRIDE + np.asarray(frames[c], np.int64))
            hyp_units.append(np.asarray(units[c], np.int64))
        self.events = accumulator.events
        self.hyp_keys, self.hyp_units = np.concatenate(hyp_keys), np.concatenate(hyp_units)
        frame_ids = self.events.index.get_level_values('FrameId').to_numpy()
        self.camera_of_event = frame_ids // FRAME_STRIDE
        self.metrics = mm.metrics.create()

    def scores(self, labels, per_camera=True):
        """{'all': {'idf1', 'idp', 'idr'}, camera name: {...}} of the labelling labels: {unit:
        identity} (a dict, or an array indexed by unit); per_camera=False: 'all' only (faster).
        ValueError when one identity has two boxes in one (camera, frame), which no
        single-camera track can (the same-camera rule was broken)."""
        relabel = (lambda u: labels[u]) if isinstance(labels, dict) else (lambda u: int(labels[u]))
        mapping = {u: relabel(u) for u in np.unique(self.hyp_units).tolist()}
        identity = np.array([mapping[u] for u in self.hyp_units.tolist()], dtype=np.int64)
        pairs = np.unique(np.stack([self.hyp_keys, identity], axis=1), axis=0)
        if len(pairs) < len(identity):
            raise ValueError('an identity has two boxes in one camera frame: two tracklets of one camera that '
                             'overlap in time were given one identity')
        events = self.events.copy()
        events['HId'] = events['HId'].map(mapping)
        names = ['all'] + (self.camera_names if per_camera else [])
        parts = [events] + [events[self.camera_of_event == c] for c in range(len(names) - 1)]
        table = self.metrics.compute_many(parts, metrics=METRICS, names=names, generate_overall=False)
        return {name: {m: float(table.loc[name, m]) for m in METRICS} for name in names}

    def majority_truth(self):
        """{unit: the ground-truth id its boxes are matched to most often}, for the units with a
        matched box (motmetrics' per-frame matches)."""
        matched = self.events[self.events['Type'].isin(['MATCH', 'SWITCH'])]
        counts = matched.groupby(['HId', 'OId']).size().reset_index(name='n')
        counts = counts.sort_values(['HId', 'n', 'OId'], ascending=[True, False, True]).drop_duplicates('HId')
        return {int(h): int(o) for h, o in zip(counts['HId'], counts['OId'])}


def best_linking(score, link, thresholds, prior_weights):
    """(threshold, prior weight, score, labels) of the grid point that scores best:
    link(threshold, prior_weight) -> labels, score(labels) -> a number, larger is better; ties
    go to the first (smallest threshold, then weight)."""
    best = None
    for threshold in thresholds:
        for weight in prior_weights:
            labels = link(threshold, weight)
            value = score(labels)
            if best is None or value > best[2]:
                best = (threshold, weight, value, labels)
    return best
