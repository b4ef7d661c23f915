"""Turn MOTChallenge tracking ground truth into re-ID folders (-d image_folder / video_folder).

    python mot_to_reid.py MOT17/train --out data/mot17_reid
    python mot_to_reid.py dancetrack/train dancetrack/val --out data/dance_reid --tracklets
    python train_img_model_xent_htri.py -d image_folder --root data/mot17_reid --save-dir log/mot17

Input: sequence folders in the MOTChallenge layout (MOT17, MOT20, DanceTrack, SportsMOT), or
folders of them (e.g. MOT17/train):
    <seq>/img1/000001.jpg ...   frames, numbered from 1 (MOT: 6 digits, DanceTrack: 8)
    <seq>/gt/gt.txt             frame, id, x, y, w, h, flag, class, visibility: one box a line
    <seq>/seqinfo.ini           optional: imDir, imExt, frameRate, imWidth, imHeight
MOT17/20 rows have all 9 columns: flag 0 marks a box the benchmark ignores, class 1 is a
pedestrian (2 person on vehicle, 7 static person, 8 distractor, 12 reflection, ...), visibility
is the visible fraction in [0, 1]. DanceTrack and SportsMOT write 1, 1, 1 in the last three
columns (every box is a person; SportsMOT counts ids from 0). A class or visibility column that
is missing or negative (-1, as in 10-column files) is not filtered on. Sequences whose gt.txt is
byte-identical to an earlier one (MOT17 ships each sequence once per detector: -DPM, -FRCNN,
-SDP) are skipped. Test splits without gt/gt.txt cannot be converted.

Each (sequence, track id) is one identity, <seq>_<id>. A box becomes a crop when its flag is not
0, its class is in --classes (default 1; 'all' keeps every class), its visibility is at least
--min-visibility and, clipped to the image, it is at least --min-height pixels high. From each
track's boxes in frame order, a crop is kept when it is at least --every frames after the last
kept one; --max-per-identity keeps that many, evenly spread in time.

Output, the repository's folder layouts with the camera as a folder level:
    OUT/{train,query,gallery}/<seq>_<id>/s<k>/<seq>_<id>_f<frame>.jpg                  images
    OUT/{train,query,gallery}/<seq>_<id>/s<k>/<seq>_<id>_s<k>/<seq>_<id>_f<frame>.jpg  --tracklets
Time-aware split: each identity's crops are cut into --segments contiguous time segments with
equal numbers of crops, s1 (earliest) to s<k>, and the segment is the 'camera'. --test-fraction
of the identities (chosen with --seed) go to the test split: one segment, picked at random, is
the query, the other segments are the gallery, less every gallery crop within --gap seconds of a
query crop. The evaluator ignores gallery entries of the query's identity and camera, so a query
is only matched to the same person at another time, never to a neighbouring frame. Identities
too short for that (one segment, or no gallery crop left after the gap) stay in train, as do the
others; train identities keep their segment cameras too (for camera-aware training). With
--tracklets each (identity, segment) is one tracklet.

Prints a table of identities and crops per split, and how many boxes were left out and why.
"""
import argparse
import configparser
import hashlib
import math
import os
import shutil
import sys
from collections import Counter, defaultdict

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
SPLITS = ('train', 'query', 'gallery')
DEFAULT_FRAME_RATE = 30  # for --gap when a sequence has no seqinfo.ini frameRate
JPEG_QUALITY = 95

# Why boxes are left out, in the order the filters run: key -> text of the summary.
REASONS = {
    'flag': 'consider flag 0 (ignored by the benchmark)',
    'class': 'class not in --classes',
    'visibility': 'visibility below --min-visibility',
    'outside': 'box outside the image',
    'height': 'clipped height below --min-height',
    'no_frame': 'no frame image in the image folder',
    'every': 'closer than --every frames to the last kept crop',
    'max_per_identity': 'over --max-per-identity',
    'gap': 'test gallery crop within --gap of a query crop',
}


class InputError(Exception):
    """The input or an option cannot be used as given."""


def parse_classes(text):
    """--classes: 'all' (None: no class filter) or comma-separated class numbers (a frozenset)."""
    if text.strip().lower() == 'all':
        return None
    try:
        classes = frozenset(int(c) for c in text.split(',') if c.strip())
    except ValueError:
        classes = None
    if not classes:
        raise InputError(f'--classes {text}: give class numbers such as 1 or 1,7, or all')
    return classes


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('sources', nargs='+', metavar='SEQ_OR_DIR',
                        help='MOTChallenge sequence folders, or folders holding them')
    parser.add_argument('--out', required=True, metavar='DIR', help='output folder (must not exist yet)')
    parser.add_argument('--tracklets', action='store_true',
                        help='write tracklets (-d video_folder), one per identity and segment, instead of images')
    parser.add_argument('--classes', default='1', metavar='N[,N...]|all',
                        help='classes to keep where gt.txt has a class column (default: %(default)s, pedestrian)')
    parser.add_argument('--min-visibility', type=float, default=0.3,
                        help='least visible fraction where gt.txt has one (default: %(default)s)')
    parser.add_argument('--min-height', type=int, default=50,
                        help='least crop height in pixels, after clipping to the image (default: %(default)s)')
    parser.add_argument('--every', type=int, default=5,
                        help='least number of frames between two crops of a track (default: %(default)s)')
    parser.add_argument('--max-per-identity', type=int, metavar='N',
                        help='at most N crops per identity, evenly spread in time (default: no limit)')
    parser.add_argument('--test-fraction', type=float, default=0.2,
                        help='fraction of identities for query/gallery; 0 writes train/ only (default: %(default)s)')
    parser.add_argument('--segments', type=int, default=3,
                        help='time segments per identity, the camera folders s1, s2, ... (default: %(default)s)')
    parser.add_argument('--gap', type=float, default=1.0, metavar='SECONDS',
                        help='least time between a query and a gallery crop of one identity, from seqinfo.ini '
                             f'frameRate ({DEFAULT_FRAME_RATE} fps without one) (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the test identities and query segments')
    return parser


def check_options(classes, min_visibility, min_height, every, max_per_identity, test_fraction, segments, gap):
    """Raise InputError naming the first option out of range."""
    if classes is not None and not classes:
        raise InputError('--classes: give class numbers such as 1 or 1,7, or all')
    if not 0 <= min_visibility <= 1:
        raise InputError(f'--min-visibility {min_visibility}: give a fraction in [0, 1]')
    if min_height < 0:
        raise InputError(f'--min-height {min_height}: give a number of pixels, 0 or more')
    if every < 1:
        raise InputError(f'--every {every}: give 1 (every frame) or more')
    if max_per_identity is not None and max_per_identity < 1:
        raise InputError(f'--max-per-identity {max_per_identity}: give 1 or more, or leave it out')
    if not 0 <= test_fraction < 1:
        raise InputError(f'--test-fraction {test_fraction}: give a fraction in [0, 1) (train/ must not be empty)')
    if segments < 1 or (test_fraction > 0 and segments < 2):
        raise InputError(f'--segments {segments}: give 2 or more (query and gallery come from different '
                         f'segments), or 1 with --test-fraction 0')
    if gap < 0:
        raise InputError(f'--gap {gap}: give a number of seconds, 0 or more')


def is_sequence(path):
    return any(os.path.exists(os.path.join(path, name)) for name in ('gt', 'img1', 'seqinfo.ini'))


def find_sequences(sources):
    """Sequence folders: each source that is one, else the sequence folders directly inside it."""
    sequences = []
    for source in sources:
        if not os.path.isdir(source):
            raise InputError(f'{source}: no such folder; give MOTChallenge sequence folders or folders of them')
        if is_sequence(source):
            sequences.append(source)
            continue
        inside = sorted(os.path.join(source, name) for name in os.listdir(source)
                        if os.path.isdir(os.path.join(source, name)) and is_sequence(os.path.join(source, name)))
        if not inside:
            raise InputError(f'{source}: neither a sequence folder (<seq>/img1/, <seq>/gt/gt.txt) nor a folder '
                             f'holding sequence folders')
        sequences += inside
    names = Counter(os.path.basename(os.path.normpath(s)) for s in sequences)
    repeated = [n for n, count in names.items() if count > 1]
    if repeated:
        paths = [s for s in sequences if os.path.basename(os.path.normpath(s)) == repeated[0]]
        raise InputError(f'two sequences named {repeated[0]} ({", ".join(paths)}): identities are named after '
                         f'the sequence folder, so convert them separately or rename one')
    return sequences


def read_seqinfo(seq_dir):
    """The [Sequence] fields of <seq>/seqinfo.ini we use (None where absent): imDir (default
    img1), imExt, frameRate, imWidth, imHeight."""
    info = {'imDir': 'img1', 'imExt': None, 'frameRate': None, 'imWidth': None, 'imHeight': None}
    path = os.path.join(seq_dir, 'seqinfo.ini')
    if not os.path.isfile(path):
        return info
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
        section = parser['Sequence']
        info['imDir'] = section.get('imDir', 'img1').strip() or 'img1'
        info['imExt'] = section.get('imExt', '').strip() or None
        for key, kind in (('frameRate', float), ('imWidth', int), ('imHeight', int)):
            if section.get(key, '').strip():
                info[key] = kind(section[key])
    except (configparser.Error, KeyError, ValueError) as error:
        raise InputError(f'{path}: not a readable seqinfo.ini ({error}); fix it or remove it') from error
    return info


def list_frames(image_dir, extension):
    """{frame number: file name} of the numbered frames in image_dir (000001.jpg -> 1)."""
    if not os.path.isdir(image_dir):
        raise InputError(f'{image_dir}: no such folder (the frames of the sequence); check seqinfo.ini imDir')
    extensions = (extension.lower(),) if extension else IMAGE_EXTENSIONS
    frames = {}
    for name in os.listdir(image_dir):
        stem, ext = os.path.splitext(name)
        if stem.isdigit() and ext.lower() in extensions:
            frames[int(stem)] = name
    if not frames:
        raise InputError(f'{image_dir}: no numbered frame ({", ".join(extensions)}) in this folder')
    return frames


def read_mot_rows(path, what, max_fields=10):
    """[(line number, values)] of a MOTChallenge text file: frame, id, left, top, width, height,
    then up to max_fields - 6 more numbers, as floats. One-line InputError naming the file and
    line for a row that is not numeric or has too few or too many fields (`what` says what the
    fields are), or a (frame, id) given twice."""
    rows, seen = [], set()
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                values = [float(v) for v in line.strip().rstrip(',').split(',')]
                if not 6 <= len(values) <= max_fields:
                    raise ValueError
            except ValueError:
                raise InputError(f'{path}, line {number}: {line.strip()!r} is not a MOTChallenge row '
                                 f'({what})') from None
            frame, track = int(values[0]), int(values[1])
            if (frame, track) in seen:
                raise InputError(f'{path}, line {number}: track {track} appears twice in frame {frame}; '
                                 f'fix the file (one box per track and frame)')
            seen.add((frame, track))
            rows.append((number, values))
    return rows


def read_gt(path):
    """Rows of a MOTChallenge gt.txt: (frame, id, x, y, w, h, flag, class, visibility), the
    last three None where the line has no such column or a negative class or visibility."""
    if not os.path.isfile(path):
        raise InputError(f'{path}: no such file; each sequence needs its ground truth gt/gt.txt '
                         f'(test splits ship none: convert train or val sequences)')
    rows = []
    for _, values in read_mot_rows(path, 'frame, id, x, y, w, h[, flag, class, visibility]'):
        values += [None] * (9 - len(values))
        frame, track = int(values[0]), int(values[1])
        flag = values[6]
        cls = int(values[7]) if values[7] is not None and values[7] >= 0 else None
        visibility = values[8] if values[8] is not None and values[8] >= 0 else None
        rows.append((frame, track, *values[2:6], flag, cls, visibility))
    return rows


def clip_box(x, y, w, h, width, height):
    """Pixel box (left, top, right, bottom) of a gt box, corners rounded to the nearest pixel and
    clipped to the image; None when nothing of it is inside."""
    left, top = max(0, math.floor(x + 0.5)), max(0, math.floor(y + 0.5))
    right, bottom = min(width, math.floor(x + w + 0.5)), min(height, math.floor(y + h + 0.5))
    if right <= left or bottom <= top:
        return None
    return left, top, right, bottom


def select_crops(rows, frames, size, classes, min_visibility, min_height, every, max_per_identity, left_out):
    """{track id: [(frame, box)] in frame order} of the boxes that pass the filters; the others
    are counted in left_out by reason."""
    width, height = size
    tracks = defaultdict(list)
    for frame, track, x, y, w, h, flag, cls, visibility in rows:
        box = clip_box(x, y, w, h, width, height)
        if flag is not None and flag == 0:
            reason = 'flag'
        elif classes is not None and cls is not None and cls not in classes:
            reason = 'class'
        elif visibility is not None and visibility < min_visibility:
            reason = 'visibility'
        elif box is None:
            reason = 'outside'
        elif box[3] - box[1] < min_height:
            reason = 'height'
        elif frame not in frames:
            reason = 'no_frame'
        else:
            tracks[track].append((frame, box))
            continue
        left_out[reason] += 1
    selected = {}
    for track, boxes in sorted(tracks.items()):
        boxes.sort()
        kept, last = [], None
        for frame, box in boxes:
            if last is None or frame - last >= every:
                kept.append((frame, box))
                last = frame
        left_out['every'] += len(boxes) - len(kept)
        if max_per_identity is not None and len(kept) > max_per_identity:
            picks = np.unique(np.round(np.linspace(0, len(kept) - 1, max_per_identity)).astype(int))
            left_out['max_per_identity'] += len(kept) - len(picks)
            kept = [kept[i] for i in picks]
        selected[track] = kept
    return selected


def segment_ids(count, segments):
    """Segment number (1-based) of each of count crops in time order: min(segments, count)
    contiguous runs of (nearly) equal length."""
    runs = np.array_split(np.arange(count), min(segments, count))
    return [k for k, run in enumerate(runs, 1) for _ in run]


def query_gallery(crops, gap_frames, rng):
    """(query segment, query crops, gallery crops, gallery crops dropped for the gap) of an
    identity's crops [(frame, box, segment)], or None when no segment leaves a gallery."""
    segments = sorted({c[2] for c in crops})
    if len(segments) < 2:
        return None
    for q in rng.permutation(segments):
        query = [c for c in crops if c[2] == q]
        query_frames = np.array([c[0] for c in query])
        others = [c for c in crops if c[2] != q]
        gallery = [c for c in others if np.abs(query_frames - c[0]).min() >= gap_frames]
        if gallery:
            return int(q), query, gallery, len(others) - len(gallery)
    return None


def write_crops(seq, frame, crops):
    """Cut the crops [(box, path)] out of one frame of a sequence and save them as JPEG."""
    path = os.path.join(seq['image_dir'], seq['frames'][frame])
    try:
        with Image.open(path) as image:
            size = image.size
            image = image.convert('RGB')
    except OSError as error:
        raise InputError(f'{path}: cannot read this frame ({error})') from error
    if size != seq['size']:
        raise InputError(f'{path}: {size[0]}x{size[1]} pixels, but seqinfo.ini says '
                         f'{seq["size"][0]}x{seq["size"][1]}; fix imWidth/imHeight')
    for box, crop_file in crops:
        os.makedirs(os.path.dirname(crop_file), exist_ok=True)
        image.crop(box).save(crop_file, quality=JPEG_QUALITY)


def crop_path(out, split, identity, segment, frame, tracklets):
    folder = os.path.join(out, split, identity, f's{segment}')
    if tracklets:
        folder = os.path.join(folder, f'{identity}_s{segment}')
    return os.path.join(folder, f'{identity}_f{frame:06d}.jpg')


def print_summary(counts, tracklets, left_out, notes, out):
    rows = [(split, len(counts[split]['ids']), counts[split]['crops'], len(counts[split]['tracklets']))
            for split in SPLITS if counts[split]['crops']]
    rule = '  ' + '-' * (46 if tracklets else 32)
    print(f'Wrote {out}' + (' (-d video_folder)' if tracklets else ' (-d image_folder)'))
    print(rule)
    print('  subset   | # ids | # crops' + (' | # tracklets' if tracklets else ''))
    print(rule)
    for split, ids, crops, num_tracklets in rows:
        print(f'  {split:<8} | {ids:5d} | {crops:7d}' + (f' | {num_tracklets:11d}' if tracklets else ''))
    print(rule)
    total_tracklets = sum(r[3] for r in rows)
    print(f'  {"total":<8} | {len(set().union(*(counts[s]["ids"] for s in SPLITS))):5d} | '
          f'{sum(r[2] for r in rows):7d}' + (f' | {total_tracklets:11d}' if tracklets else ''))
    print(rule)
    if any(left_out.values()):
        print('Boxes left out:')
        for reason, text in REASONS.items():
            if left_out[reason]:
                print(f'  {left_out[reason]:8d}  {text}')
    for note in notes:
        print(f'Note: {note}')


def convert(sources, out, tracklets=False, classes=frozenset({1}), min_visibility=0.3, min_height=50, every=5,
            max_per_identity=None, test_fraction=0.2, segments=3, gap=1.0, seed=0, verbose=True):
    """Convert MOTChallenge sequences (folders, or folders of them) to re-ID folders under out
    (see the module docstring). Writes into out + '.partial' and renames it at the end, so an
    interrupted run leaves no half dataset. Returns a summary dict: 'identities' {split: sorted
    names}, 'crops' {split: count}, 'tracklets' {split: count}, 'left_out' {reason: boxes} (keys
    of REASONS), 'skipped' [sequence folders skipped as duplicates], 'notes' [lines]."""
    check_options(classes, min_visibility, min_height, every, max_per_identity, test_fraction, segments, gap)
    out = os.path.normpath(out)
    if os.path.exists(out):
        raise InputError(f'--out {out} exists; delete it or choose another folder')
    left_out, notes, skipped = Counter(), [], []
    identities = {}  # name -> (sequence info, [(frame, box, segment)])
    seen_gt = {}
    for seq_dir in find_sequences(sources):
        name = os.path.basename(os.path.normpath(seq_dir))
        gt_path = os.path.join(seq_dir, 'gt', 'gt.txt')
        rows = read_gt(gt_path)
        with open(gt_path, 'rb') as f:
            digest = hashlib.sha1(f.read()).hexdigest()
        if digest in seen_gt:
            skipped.append(seq_dir)
            notes.append(f'skipped {seq_dir}: its gt.txt is the same as {seen_gt[digest]}\'s')
            continue
        seen_gt[digest] = seq_dir
        info = read_seqinfo(seq_dir)
        image_dir = os.path.join(seq_dir, info['imDir'])
        frames = list_frames(image_dir, info['imExt'])
        if info['imWidth'] and info['imHeight']:
            size = (info['imWidth'], info['imHeight'])
        else:
            with Image.open(os.path.join(image_dir, frames[min(frames)])) as image:
                size = image.size
        seq = {'name': name, 'image_dir': image_dir, 'frames': frames, 'size': size,
               'frame_rate': info['frameRate'] or DEFAULT_FRAME_RATE}
        if info['frameRate'] is None and test_fraction > 0 and gap > 0:
            notes.append(f'{seq_dir} has no seqinfo.ini frameRate: --gap assumes {DEFAULT_FRAME_RATE} fps')
        tracks = select_crops(rows, frames, size, classes, min_visibility, min_height, every, max_per_identity,
                              left_out)
        for track, crops in tracks.items():
            if crops:
                identity = f'{name}_{track}'
                identities[identity] = (seq, [(f, box, s) for (f, box), s in
                                              zip(crops, segment_ids(len(crops), segments))])
        if verbose:
            print(f'{seq_dir}: {len(rows)} boxes, {len(tracks)} tracks kept, '
                  f'{sum(map(len, tracks.values()))} crops')
    if not identities:
        raise InputError('no crop left after the filters in ' + ', '.join(sources) + '; see --classes, '
                         '--min-visibility and --min-height')

    # Test identities: a seeded order of all names, taking those that can give a query and a gallery.
    rng = np.random.default_rng(seed)
    names = sorted(identities)
    wanted = min(round(test_fraction * len(names)), len(names) - 1)
    tests = {}
    for i in rng.permutation(len(names)):
        if len(tests) == wanted:
            break
        seq, crops = identities[names[i]]
        split = query_gallery(crops, math.ceil(gap * seq['frame_rate'] - 1e-6), rng)
        if split is not None:
            tests[names[i]] = split
    if len(tests) < wanted:
        notes.append(f'only {len(tests)} of the {wanted} test identities asked for: the others are too short for '
                     f'a query and a gallery {segments} segments and --gap {gap} s apart')

    counts = {s: {'ids': set(), 'crops': 0, 'tracklets': set()} for s in SPLITS}
    jobs = defaultdict(list)  # (sequence name, frame) -> [(box, path)]
    sequences = {}
    for identity in names:
        seq, crops = identities[identity]
        sequences[seq['name']] = seq
        if identity in tests:
            _, query, gallery, dropped = tests[identity]
            left_out['gap'] += dropped
            parts = (('query', query), ('gallery', gallery))
        else:
            parts = (('train', crops),)
        for split, part in parts:
            counts[split]['ids'].add(identity)
            counts[split]['crops'] += len(part)
            for frame, box, segment in part:
                counts[split]['tracklets'].add((identity, segment))
                jobs[seq['name'], frame].append((box, crop_path(out + '.partial', split, identity, segment, frame,
                                                                tracklets)))

    partial = out + '.partial'
    shutil.rmtree(partial, ignore_errors=True)
    try:
        for (name, frame), crops in sorted(jobs.items()):
            write_crops(sequences[name], frame, crops)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    os.replace(partial, out)

    summary = {'identities': {s: sorted(counts[s]['ids']) for s in SPLITS},
               'crops': {s: counts[s]['crops'] for s in SPLITS},
               'tracklets': {s: len(counts[s]['tracklets']) for s in SPLITS},
               'left_out': {reason: left_out[reason] for reason in REASONS},
               'skipped': skipped, 'notes': notes}
    if verbose:
        print_summary(counts, tracklets, left_out, notes, out)
    return summary


def main():
    args = get_args_parser().parse_args()
    try:
        convert(args.sources, args.out, tracklets=args.tracklets, classes=parse_classes(args.classes),
                min_visibility=args.min_visibility, min_height=args.min_height, every=args.every,
                max_per_identity=args.max_per_identity, test_fraction=args.test_fraction, segments=args.segments,
                gap=args.gap, seed=args.seed)
    except InputError as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    main()
