"""Link the single-camera tracks of several cameras into global identities (multi-camera tracking).

    python link_cameras.py --scene S01 --tracks tracks.txt --resume log/bot/best_model.pth.tar --output out
    # AI City layout: videos, the tracker files of mtsc/, clock offsets; scores against gt/gt.txt
    python link_cameras.py --scene S02 --tracks 'mtsc/mtsc_deepsort_ssd512.txt' --time-offsets cam_timestamp/S02.txt \\
        --resume CKPT --output out --gt gt/gt.txt
    # learn the camera transitions, threshold and prior weight on a labelled scene, then link another
    python link_cameras.py --scene S02 --learn-transitions S01 --resume CKPT --output out
    # relink a saved tracklet table at another threshold without reading any image
    python link_cameras.py --scene S01 --tracklets out/tracklets.npz --threshold 0.3 --output out2 --gt gt/gt.txt

Input: see mtmc_scene.py (SCENE/<camera>/img1 or vdo.avi/.mp4, the tracks file, seqinfo.ini).
Each track gets a feature: up to --boxes-per-tracklet crops spread along it, skipping boxes
lower than --min-box-height, cut by the image border or covered by a box in front beyond
--max-occlusion, through the checkpoint's FeatureExtractor, L2-normalised and averaged; a track
whose appearance jumps by more than --split-distance (a tracker swap) is split there. Tracklets
are linked by average-linkage clustering (linking.py) under constraints: two tracklets of one
camera that overlap in time never share an identity; with --disjoint-views neither do two
tracklets of any cameras that overlap in time; a camera transition model (--learn-transitions,
--topology or --transitions; camera_transitions.py) forbids impossible transits and adds
--prior-weight times its cost to the appearance distance. The threshold: --threshold, else the
one --learn-transitions calibrates, else the checkpoint's cosine distance at FPR 1e-3.

Output, in --output DIR, written whole or not at all (an earlier output of this script there is
replaced): <camera>.txt per camera (MOT rows frame,id,left,top,width,height,conf,-1,-1,-1 with
global ids from 1, frames as in the input), aicity.txt (camera_id obj_id frame_id left top width
height -1 -1, camera_id the number in the camera's name), identities.txt (camera local_id segment
first_frame last_frame global_id per tracklet), tracklets.npz (the tracklet table, for
--tracklets), transitions.json (the model used), summary.json (settings and scores) and
pictures/index.html (per identity one crop per tracklet in time order, least certain first).
With --gt (each camera's ground truth with global ids): multi-camera and per-camera IDF1 / IDP /
IDR (motmetrics) beside the same without linking, and pairwise tracklet precision / recall.
"""
import argparse
import json
import os
import shutil
import sys
from io import BytesIO

import numpy as np
import torch
from PIL import Image

import checkpoints
import models
import mtmc_scene
import visualize
from camera_transitions import TransitionFileError, TransitionModel
from cluster import pairwise_scores
from feature_extractor import FeatureExtractor
from linking import link_tracklets
from mtmc_eval import MultiCameraEvaluation, best_linking
from mtmc_scene import InputError
from tracklet_table import TrackletTable

SPLIT_DISTANCE = 0.15                     # default --split-distance (bench_mtmc.py --case scenes)
THRESHOLDS = np.round(np.arange(0.05, 1.0001, 0.05), 2)  # --learn-transitions grid
PRIOR_WEIGHTS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5)
PRIOR_WEIGHT = 0.1                        # default --prior-weight without calibration (bench_mtmc --case scenes)


def split_distance(text):
    return None if text == 'off' else float(text)


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--scene', required=True, metavar='DIR', help='one folder per camera')
    parser.add_argument('--tracks', default='tracks.txt', metavar='PATH',
                        help='tracks file in each camera folder, a pattern allowed (default: %(default)s)')
    parser.add_argument('--resume', metavar='CKPT', help='re-ID checkpoint for the tracklet features')
    parser.add_argument('--output', required=True, metavar='DIR', help='output folder')
    parser.add_argument('--gt', metavar='PATH', help='ground truth in each camera folder (e.g. gt/gt.txt): scores')
    parser.add_argument('--tracklets', metavar='FILE', help='link this saved tracklet table (no image is read)')
    parser.add_argument('--threshold', type=float, metavar='D', help='average distance below which identities merge')
    model = parser.add_mutually_exclusive_group()
    model.add_argument('--learn-transitions', metavar='SCENE',
                       help='learn transitions from this labelled scene (its --gt, default gt/gt.txt) and calibrate '
                            'the threshold and prior weight on it')
    model.add_argument('--transitions', metavar='FILE', help='a saved transition model (transitions.json)')
    parser.add_argument('--topology', metavar='FILE',
                        help='allowed camera pairs with min/max seconds (alone, or restricting --learn-transitions)')
    parser.add_argument('--prior-weight', type=float, metavar='W',
                        help='weight of the transition cost (default: calibrated with --learn-transitions, else '
                             f'{PRIOR_WEIGHT}, what calibration chose on generated scenes)')
    parser.add_argument('--disjoint-views', action='store_true', help='the cameras share no ground')
    parser.add_argument('--distance', choices=('cosine', 'jaccard'), default='cosine',
                        help='appearance distance: cosine, or the k-reciprocal Jaccard distance (default: %(default)s)')
    parser.add_argument('--time-offsets', metavar='FILE', help="clock offsets, 'c001 0.000' per line")
    parser.add_argument('--learn-time-offsets', metavar='FILE', help='clock offsets of the --learn-transitions scene')
    parser.add_argument('--fps', type=float, metavar='F', help='frame rate of cameras that record none')
    parser.add_argument('--boxes-per-tracklet', type=int, default=16, metavar='N',
                        help='crops per track (default: %(default)s)')
    parser.add_argument('--min-box-height', type=int, default=32, metavar='PX', help='pixels (default: %(default)s)')
    parser.add_argument('--max-occlusion', type=float, default=0.5, metavar='F',
                        help='largest fraction of a box covered by a box in front (default: %(default)s)')
    parser.add_argument('--split-distance', type=split_distance, default=SPLIT_DISTANCE, metavar='D|off',
                        help='split a track where its appearance jumps by more than this cosine distance '
                             '(default: %(default)s)')
    parser.add_argument('--camera-embedding', action='store_true',
                        help='give a model with a camera embedding the number in each camera name (c003 -> id 2); '
                             'only for the cameras it was trained on')
    parser.add_argument('--pictures', type=int, default=200, metavar='N',
                        help='draw the N least certain identities of several tracklets (default: %(default)s)')
    parser.add_argument('--batch-size', type=int, default=64, metavar='N',
                        help='crops per forward pass (default: %(default)s)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='cpu, cuda or cuda:N (default: %(default)s)')
    return parser


def scene_features(cameras, extractor, args):
    """(TrackletTable, thumbnails) of a scene's tracks, printing progress per camera."""
    def progress(camera, done, total):
        print(f'  {camera}: {done}/{total} crops', flush=True)
    return mtmc_scene.tracklet_features(cameras, extractor, args.boxes_per_tracklet, args.min_box_height,
                                        args.max_occlusion, args.split_distance, args.camera_embedding,
                                        progress=progress)


def scene_units(cameras, table):
    """Per camera (M,) units of its rows: the table row of the tracklet, or for a track without
    one (no usable box) len(table) + a number of its own; and the (U,) units' (camera, track)
    number, which scores no linking."""
    units, track_of_unit, extra = [], {}, {}
    tracks_seen = {}
    for c, camera in enumerate(cameras):
        pieces = mtmc_scene.row_pieces(c, camera.tracks, table)
        unit = pieces.copy()
        for row in np.flatnonzero(pieces < 0).tolist():
            unit[row] = extra.setdefault((c, int(camera.tracks.track[row])), len(table) + len(extra))
        for u, track in zip(unit.tolist(), camera.tracks.track.tolist()):
            track_of_unit[u] = tracks_seen.setdefault((c, track), len(tracks_seen))
        units.append(unit)
    return units, np.array([track_of_unit[u] for u in range(len(table) + len(extra))])


def evaluation(cameras, units, gt):
    """MultiCameraEvaluation of a scene's tracks, units as scene_units gives them, against the
    ground truth file gt in each camera folder."""
    truth = mtmc_scene.read_scene_gt(cameras, gt)
    return MultiCameraEvaluation([c.name for c in cameras], truth, [c.tracks.frame for c in cameras],
                                 [c.tracks.boxes for c in cameras], units)


def unit_labels(global_id, num_units):
    """(U,) identity of every unit: the linking's for tracklets, a new one for each other unit."""
    return np.concatenate([global_id, global_id.max(initial=-1) + 1 + np.arange(num_units - len(global_id))])


def calibrate(args, extractor, topology, linked_cameras, linked_table):
    """(transition model, threshold, prior weight) learnt on the labelled --learn-transitions scene:
    the model from its ground truth, the threshold and weight of the best multi-camera IDF1 of its
    tracks (a given --threshold or --prior-weight is kept). linked_cameras, linked_table: the
    scene to link, which the learning scene must cover, and its tracklet table (None when read
    from --tracklets); when the learning scene is that very scene on the same clock, both are
    reused rather than read and extracted a second time."""
    same_scene = (linked_table is not None and os.path.isdir(args.learn_transitions)
                  and os.path.samefile(args.learn_transitions, args.scene)
                  and args.learn_time_offsets == args.time_offsets)
    if same_scene:
        cameras, table = linked_cameras, linked_table
    else:
        cameras = mtmc_scene.read_scene(args.learn_transitions, args.tracks, args.fps, args.learn_time_offsets)
    unknown = sorted({c.name for c in linked_cameras} - {c.name for c in cameras})
    if unknown:
        raise InputError(f'--learn-transitions {args.learn_transitions}: has no camera {", ".join(unknown)} of '
                         f'--scene {args.scene}; learn on a labelled scene of the same cameras')
    gt = args.gt or 'gt/gt.txt'
    truth = mtmc_scene.read_scene_gt(cameras, gt)
    transitions = TransitionModel.fit_mot({name: np.stack(t[:2], axis=1) for name, t in truth.items()},
                                          {c.name: c.fps for c in cameras}, {c.name: c.offset for c in cameras},
                                          topology=topology)
    if not same_scene:
        print(f'Learning on {args.learn_transitions}: tracklet features')
        table, _ = scene_features(cameras, extractor, args)
    units, track_of_unit = scene_units(cameras, table)
    scenes = evaluation(cameras, units, gt)

    def link(threshold, weight):
        return unit_labels(link_tracklets(table, threshold, transitions, weight, args.disjoint_views, args.distance),
                           len(track_of_unit))
    thresholds = [args.threshold] if args.threshold is not None else THRESHOLDS
    weights = [args.prior_weight] if args.prior_weight is not None else PRIOR_WEIGHTS
    threshold, weight, idf1, _ = best_linking(lambda labels: scenes.scores(labels, per_camera=False)['all']['idf1'],
                                              link, thresholds, weights)
    print(f'Calibrated on {args.learn_transitions}: threshold {threshold:g}, prior weight {weight:g} '
          f'(multi-camera IDF1 {idf1:.1%} there)')
    return transitions, threshold, weight


def recorded_threshold(checkpoint, args):
    thresholds = (checkpoint or {}).get('tracker_thresholds') or {}
    if args.distance != 'cosine' or '0.001' not in thresholds:
        why = ('the checkpoint records cosine thresholds only' if args.distance != 'cosine' and thresholds else
               'no checkpoint given' if checkpoint is None else 'the checkpoint records no distance threshold')
        raise InputError(f'no linking threshold: {why}; pass --threshold D (a {args.distance} distance, e.g. 0.3) '
                         f'or calibrate one with --learn-transitions SCENE')
    return float(thresholds['0.001'])


def doubts(features, global_id):
    """(N,) for each tracklet the mean cosine distance to the other tracklets of its identity
    (0 alone): how loosely it is attached."""
    doubt = np.zeros(len(global_id))
    order = np.argsort(global_id, kind='stable')
    starts = np.flatnonzero(np.diff(global_id[order], prepend=-1))
    for rows in np.split(order, starts[1:]):
        if len(rows) > 1:
            similarity = features[rows] @ features[rows].T
            doubt[rows] = 1 - (similarity.sum(axis=1) - np.diag(similarity)) / (len(rows) - 1)
    return doubt


def draw_identities(table, global_id, thumbnails, save_dir, limit):
    """visualize.identity_strips of the `limit` least certain identities of several tracklets."""
    doubt = doubts(table.features, global_id)
    identities = []
    for gid in np.unique(global_id).tolist():
        rows = np.flatnonzero(global_id == gid)
        if len(rows) > 1:
            identities.append((doubt[rows].max(), gid, rows[np.argsort(table.start_time[rows], kind='stable')]))
    identities.sort(key=lambda x: (-x[0], x[1]))
    pictures = []
    for worst, gid, rows in identities[:limit]:
        truth = table.gt_id[rows] if table.gt_id is not None else None
        majority = np.bincount(truth[truth >= 0]).argmax() if truth is not None and (truth >= 0).any() else None
        tiles = [(Image.open(BytesIO(thumbnails[r])),
                  f'{table.cameras[table.camera[r]]} {table.start_time[r]:.1f}s',
                  'unknown' if majority is None else 'match' if truth[i] == majority else 'wrong')
                 for i, r in enumerate(rows.tolist())]
        caption = (f'identity {gid}: {len(rows)} tracklets in {", ".join(sorted({t[1].split()[0] for t in tiles}))}; '
                   f'least certain: mean distance {worst:.3f}')
        pictures.append((f'identity{gid:06d}', caption, tiles))
    visualize.identity_strips(pictures, save_dir)


def write_outputs(out, cameras, units, labels, table, transitions, summary, draw):
    """Everything of --output into out + '.partial', then renamed over out."""
    partial = out + '.partial'
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    try:
        lines = []
        for camera, unit in zip(cameras, units):
            ids, t = labels[unit], camera.tracks
            order = np.lexsort((ids, t.frame))
            rows = [f'{t.frame[i]},{ids[i]},{",".join(np.format_float_positional(v, trim="-") for v in t.boxes[i])},'
                    f'{np.format_float_positional(t.conf[i], trim="-")},-1,-1,-1\n' for i in order.tolist()]
            with open(os.path.join(partial, f'{camera.name}.txt'), 'w') as f:
                f.writelines(rows)
            number = mtmc_scene.camera_number(camera.name)
            lines += [f'{number} {ids[i]} {t.frame[i]} {" ".join(str(round(v)) for v in t.boxes[i])} -1 -1\n'
                      for i in order.tolist()]
        with open(os.path.join(partial, 'aicity.txt'), 'w') as f:
            f.writelines(lines)
        table.save(os.path.join(partial, 'tracklets.npz'))
        with open(os.path.join(partial, 'identities.txt'), 'w') as f:
            f.write('# camera local_id segment first_frame last_frame global_id\n')
            f.writelines(f'{table.cameras[table.camera[i]]} {table.local_id[i]} {table.segment[i]} '
                         f'{table.first_frame[i]} {table.last_frame[i]} {labels[i]}\n' for i in range(len(table)))
        if transitions is not None:
            transitions.save(os.path.join(partial, 'transitions.json'))
        if draw is not None:
            draw(os.path.join(partial, 'pictures'))
        with open(os.path.join(partial, 'summary.json'), 'w') as f:
            json.dump(summary, f, indent=1)
        if os.path.exists(out):
            old = out + '.old'
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(partial, out)
            shutil.rmtree(old)
        else:
            os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def print_scores(name, scores, pairwise=None):
    line = f'{name:<22} IDF1 {scores["idf1"]:6.1%}  IDP {scores["idp"]:6.1%}  IDR {scores["idr"]:6.1%}'
    print(line + (f'  pairs P {pairwise[0]:6.1%} R {pairwise[1]:6.1%}' if pairwise else ''))


def run(args):
    out = os.path.normpath(args.output)
    if os.path.exists(out) and not os.path.isfile(os.path.join(out, 'summary.json')):
        raise InputError(f'--output {out} exists and is not an output of link_cameras.py; choose another folder')
    checkpoint = checkpoints.load_checkpoint(args.resume) if args.resume else None
    extractor = None
    if checkpoint is not None:
        extractor = FeatureExtractor(checkpoint, device=args.device, batch_size=args.batch_size)
        if extractor.num_cameras and not args.camera_embedding:
            print(f'Note: the model has a camera embedding ({extractor.num_cameras} cameras): without '
                  f'--camera-embedding the features are the camera-agnostic ones')
    cameras = mtmc_scene.read_scene(args.scene, args.tracks, args.fps, args.time_offsets,
                                    read_images=args.tracklets is None)
    print(f'{args.scene}: {len(cameras)} cameras, {sum(len(c.tracks.frame) for c in cameras)} boxes in '
          f'{sum(len(np.unique(c.tracks.track)) for c in cameras)} tracks')
    thumbnails = None
    if args.tracklets:
        try:
            table = TrackletTable.load(args.tracklets, feature_dim=extractor.feat_dim if extractor else None)
        except ValueError as error:
            raise InputError(f'--tracklets {error}') from None
        if table.cameras != [c.name for c in cameras]:
            raise InputError(f'--tracklets {args.tracklets}: its cameras ({", ".join(table.cameras)}) are not the '
                             f'scene\'s ({", ".join(c.name for c in cameras)})')
    else:
        print(f'Tracklet features ({extractor.feat_dim}-d)')
        table, thumbnails = scene_features(cameras, extractor, args)
    print(f'{len(table)} tracklets ({int((table.segment > 0).sum())} from splitting tracks at appearance jumps)')

    topology = TransitionModel.from_topology(args.topology) if args.topology else None
    threshold, weight = args.threshold, args.prior_weight
    if args.learn_transitions:
        if extractor is None:
            raise InputError('--learn-transitions extracts tracklet features of its scene: pass --resume CKPT')
        transitions, threshold, weight = calibrate(args, extractor, topology, cameras,
                                                    None if args.tracklets else table)
    else:
        transitions = TransitionModel.load(args.transitions) if args.transitions else topology
        threshold = threshold if threshold is not None else recorded_threshold(checkpoint, args)
    weight = PRIOR_WEIGHT if weight is None else weight

    units, track_of_unit = scene_units(cameras, table)
    covered = np.isin(np.arange(len(table)), np.concatenate(units))
    if not covered.all():
        i = int(np.flatnonzero(~covered)[0])
        raise InputError(f'--tracklets {args.tracklets}: tracklet {i} (camera {table.cameras[table.camera[i]]}, track '
                         f'{table.local_id[i]}, frames {table.first_frame[i]}..{table.last_frame[i]}) has no row in '
                         f'the scene\'s tracks: the table was made from other tracks')
    global_id = link_tracklets(table, threshold, transitions, weight, args.disjoint_views, args.distance)
    labels = unit_labels(global_id, len(track_of_unit))
    # Output ids from 1, in the order identities first appear on the scene clock.
    first_time = np.full(labels.max(initial=-1) + 1, np.inf)
    for camera, unit in zip(cameras, units):
        np.minimum.at(first_time, labels[unit], camera.time(camera.tracks.frame))
    labels = np.argsort(np.argsort(first_time, kind='stable'))[labels] + 1
    print(f'Linked at threshold {threshold:g}' + (f', prior weight {weight:g}' if transitions is not None else '')
          + f': {len(np.unique(labels))} identities')

    summary = {'threshold': threshold, 'prior_weight': weight if transitions is not None else None,
               'distance': args.distance, 'disjoint_views': args.disjoint_views, 'tracklets': len(table),
               'identities': int(len(np.unique(labels)))}
    if args.gt:
        scenes = evaluation(cameras, units, args.gt)
        truth = scenes.majority_truth()
        table.gt_id = np.array([truth.get(i, -1) for i in range(len(table))], dtype=np.int64)
        unit_truth = np.array([truth.get(u, -1) for u in range(len(labels))])
        known = unit_truth >= 0  # pairs of tracklets matched to ground truth
        linked, alone = scenes.scores(labels), scenes.scores(track_of_unit)
        pairs_linked = pairwise_scores(labels[known], unit_truth[known])[:2]
        pairs_alone = pairwise_scores(track_of_unit[known], unit_truth[known])[:2]
        print('Scores against --gt (multi-camera: all cameras jointly)')
        print_scores('no linking', alone['all'], pairs_alone)
        print_scores('linked', linked['all'], pairs_linked)
        for camera in cameras:
            print_scores(f'  {camera.name} no linking', alone[camera.name])
            print_scores(f'  {camera.name} linked', linked[camera.name])
        summary['scores'] = {'linked': linked, 'no_linking': alone,
                             'pairwise': {'linked': dict(zip(('precision', 'recall'), pairs_linked)),
                                          'no_linking': dict(zip(('precision', 'recall'), pairs_alone))}}
    draw = None
    if thumbnails is not None and args.pictures > 0:
        def draw(save_dir):
            draw_identities(table, labels[:len(table)], thumbnails, save_dir, args.pictures)
    write_outputs(out, cameras, units, labels, table, transitions, summary, draw)
    print(f'Wrote {out}: {", ".join(c.name + ".txt" for c in cameras)}, aicity.txt, identities.txt, tracklets.npz'
          + (', transitions.json' if transitions is not None else '') + (', pictures/' if draw else ''))


def main():
    parser = get_args_parser()
    args = parser.parse_args()
    if args.tracklets is None and args.resume is None:
        parser.error('--resume CKPT is required to extract tracklet features (or pass --tracklets FILE)')
    for flag, value, least in (('--boxes-per-tracklet', args.boxes_per_tracklet, 1),
                               ('--min-box-height', args.min_box_height, 0), ('--batch-size', args.batch_size, 1),
                               ('--pictures', args.pictures, 0)):
        if value < least:
            parser.error(f'{flag} {value}: give {least} or more')
    if not 0 <= args.max_occlusion <= 1:
        parser.error(f'--max-occlusion {args.max_occlusion}: give a fraction in [0, 1]')
    try:
        run(args)
    except (InputError, TransitionFileError, checkpoints.CheckpointError, models.PretrainedWeightsError) as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    main()
