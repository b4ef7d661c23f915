"""Pictures of a model's behaviour: ranked lists per query (visrank), identities linked across
cameras (identity_strips) and training curves (TrainingLog, with the same numbers in
metrics.jsonl and optionally TensorBoard)."""
import html
import json
import math
import os

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageOps

from checkpoints import write_atomic
from dataset_loader import read_image

__all__ = ['visrank', 'identity_strips', 'TrainingLog', 'TILE_SIZE', 'BORDER', 'COLOURS']

TILE_SIZE = (64, 128)   # (width, height) of each image in a ranked list
BORDER = 4              # frame width in pixels
LABEL_HEIGHT = 14       # text line under each tile
GAP = 12                # between the query and its ranked list
COLOURS = {'match': (0, 200, 0), 'wrong': (220, 0, 0), 'junk': (150, 150, 150), 'query': (0, 0, 0),
           'unknown': (0, 0, 0)}
INDEX_ROWS = 20         # queries in the index picture


def _display_image(item_path):
    """The picture shown for a dataset item: the image, or a tracklet's middle frame."""
    if not isinstance(item_path, (str, os.PathLike)):
        item_path = item_path[len(item_path) // 2]
    return read_image(item_path)


def _tile(image, colour, label):
    """An image resized to TILE_SIZE in a BORDER-wide frame of `colour`, `label` under it."""
    framed = ImageOps.expand(image.resize(TILE_SIZE, Image.BILINEAR), border=BORDER, fill=colour)
    tile = Image.new('RGB', (framed.width, framed.height + LABEL_HEIGHT), 'white')
    tile.paste(framed, (0, 0))
    ImageDraw.Draw(tile).text((2, framed.height + 1), label, fill='black')
    return tile


def _strip(tiles, gap=GAP):
    """Tiles side by side, `gap` pixels after the first one (the query)."""
    width = sum(t.width for t in tiles) + gap
    strip = Image.new('RGB', (width, tiles[0].height), 'white')
    x = 0
    for i, tile in enumerate(tiles):
        strip.paste(tile, (x, 0))
        x += tile.width + (gap if i == 0 else 0)
    return strip


def visrank(dist, query_indices, query, gallery, q_pids, g_pids, q_camids, g_camids, ap, save_dir, topk=10):
    """Write one PNG per chosen query with its top `topk` gallery entries, and index.png.

    dist: (len(query_indices), num_gallery) distances of the chosen queries (numpy or torch).
    query_indices: indices into `query` of the rows of dist. query, gallery: dataset item lists
    [(path or tuple of frame paths, pid, camid)]; a tracklet is shown by its middle frame.
    q_pids, q_camids: (num_query,); g_pids, g_camids: (num_gallery,). ap: (num_query,) per-query
    AP, NaN for a query without a valid match.

    Each picture: the query (black frame) then its ranked gallery, ascending distance, ties in
    gallery order (a stable sort, as the evaluator ranks), each entry framed green for a true
    match, red for a wrong one, grey for a same-pid same-camera entry, which the evaluation
    removes: it stays at its place in the list, so the picture shows what the model ranked, and
    the evaluation's rank of a later entry is its position minus the grey entries before it.
    The distance is written under each entry, the AP under the query. index.png stacks the
    pictures of the INDEX_ROWS queries with the lowest AP, worst first (queries without a valid
    match last), so failures show at once. Returns the written paths, the index last.
    """
    dist = dist.detach().cpu().numpy() if torch.is_tensor(dist) else np.asarray(dist)
    q_pids, g_pids, q_camids, g_camids, ap = (np.asarray(x.cpu() if torch.is_tensor(x) else x)
                                              for x in (q_pids, g_pids, q_camids, g_camids, ap))
    query_indices = [int(q) for q in query_indices]
    os.makedirs(save_dir, exist_ok=True)
    # Worst AP first, NaN (no valid match) last, ties by query index. Only these strips are
    # kept in memory for the index.
    in_index = sorted(query_indices, key=lambda q: (np.nan_to_num(ap[q], nan=np.inf), q))[:INDEX_ROWS]
    index_strips, paths = {}, []
    for row, q in enumerate(query_indices):
        order = np.argsort(dist[row], kind='stable')[:topk]
        q_ap = 'no match' if math.isnan(ap[q]) else f'AP {ap[q]:.1%}'
        tiles = [_tile(_display_image(query[q][0]), COLOURS['query'], q_ap)]
        for g in order:
            same_pid = g_pids[g] == q_pids[q]
            kind = ('junk' if g_camids[g] == q_camids[q] else 'match') if same_pid else 'wrong'
            tiles.append(_tile(_display_image(gallery[g][0]), COLOURS[kind], f'{dist[row, g]:.3g}'))
        strip = _strip(tiles)
        path = os.path.join(save_dir, f'query{q:05d}_pid{q_pids[q]}_cam{q_camids[q]}.png')
        write_atomic(path, lambda f: strip.save(f, format='PNG'))
        paths.append(path)
        if q in in_index:
            index_strips[q] = strip

    if index_strips:
        strips = [index_strips[q] for q in in_index]
        index = Image.new('RGB', (max(s.width for s in strips), sum(s.height + BORDER for s in strips)), 'white')
        top = 0
        for strip in strips:
            index.paste(strip, (0, top))
            top += strip.height + BORDER
        path = os.path.join(save_dir, 'index.png')
        write_atomic(path, lambda f: index.save(f, format='PNG'))
        paths.append(path)
    return paths


def identity_strips(identities, save_dir):
    """Pictures of linked identities: one PNG strip per identity and index.html showing them in
    the order given (put the least certain first). Returns the written paths, the index last.

    identities: [(name, caption, tiles)]: name, a file name stem; caption, a line of text for
    the index; tiles: [(image, label, kind)] in time order: a PIL image, the text under it and
    a COLOURS key for its frame ('match' / 'wrong' against ground truth, 'unknown' without)."""
    os.makedirs(save_dir, exist_ok=True)
    paths, rows = [], []
    for name, caption, tiles in identities:
        strip = _strip([_tile(image, COLOURS[kind], label) for image, label, kind in tiles], gap=0)
        path = os.path.join(save_dir, f'{name}.png')
        write_atomic(path, lambda f: strip.save(f, format='PNG'))
        paths.append(path)
        rows.append(f'<p>{html.escape(caption)}<br><img src="{html.escape(name)}.png"></p>')
    page = '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Linked identities</title></head><body>\n' \
           + '\n'.join(rows) + '\n</body></html>\n'
    path = os.path.join(save_dir, 'index.html')
    write_atomic(path, lambda f: f.write(page.encode()))
    paths.append(path)
    return paths


class TrainingLog:
    """Per-epoch training figures in <save_dir>/metrics.jsonl, drawn in <save_dir>/curves.png.

    Each call appends one JSON line, {"epoch": 3, "loss": ..., "lr": ...} or {"epoch": 10,
    "rank1": ..., "mAP": ...} (fractions, as the evaluator returns them), and redraws the whole
    history: loss per epoch, Rank-1 and mAP at evaluation epochs, learning rate. Epochs are the
    1-based numbers the scripts print. A resumed run appends to the same files: the first
    epoch() call drops any record of that epoch or later (written by the interrupted run after
    its last checkpoint; a new run from epoch 1 in the same save_dir thus starts afresh).
    tensorboard=True also writes TensorBoard event files under <save_dir>/tensorboard when the
    package is installed (a note says so when it is not).
    """

    def __init__(self, save_dir, tensorboard=False):
        os.makedirs(save_dir, exist_ok=True)
        self.metrics_path = os.path.join(save_dir, 'metrics.jsonl')
        self.curves_path = os.path.join(save_dir, 'curves.png')
        self.records = []
        if os.path.exists(self.metrics_path):
            with open(self.metrics_path) as f:
                lines = f.read().splitlines()
            cut_short = bool(lines) and not lines[-1].endswith('}')  # a run killed while appending
            self.records = [json.loads(line) for line in lines[:-1 if cut_short else None] if line]
            if cut_short:
                write_atomic(self.metrics_path, self._write_all)
        self.started = False
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print('Note: --tensorboard needs the tensorboard package (pip install tensorboard); '
                      'continuing without event files (metrics.jsonl and curves.png are written)')
            else:
                self.writer = SummaryWriter(os.path.join(save_dir, 'tensorboard'))

    def epoch(self, epoch, loss, lr, images_per_s=None):
        if not self.started:
            self.started = True
            kept = [r for r in self.records if r['epoch'] < epoch]
            if len(kept) < len(self.records):
                self.records = kept
                write_atomic(self.metrics_path, self._write_all)
        record = {'epoch': epoch, 'loss': loss, 'lr': lr}
        if images_per_s is not None:
            record['images_per_s'] = images_per_s
        self._add(record)

    def evaluation(self, epoch, rank1, mAP, **extra):
        self._add({'epoch': epoch, 'rank1': rank1, 'mAP': mAP, **extra})

    def _write_all(self, f):
        f.write(''.join(json.dumps(r) + '\n' for r in self.records).encode())

    def _add(self, record):
        record = {k: v.item() if hasattr(v, 'item') else v for k, v in record.items()}  # numpy/torch scalars
        self.records.append(record)
        with open(self.metrics_path, 'a') as f:
            f.write(json.dumps(record) + '\n')
        if self.writer is not None:
            for key, value in record.items():
                if key != 'epoch' and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record['epoch'])
            self.writer.flush()
        write_atomic(self.curves_path, self._draw)

    def _draw(self, f):
        train = [r for r in self.records if 'loss' in r]
        evals = [r for r in self.records if 'rank1' in r]
        figure = Figure(figsize=(12, 3.6), layout='constrained')
        FigureCanvasAgg(figure)
        loss_ax, eval_ax, lr_ax = figure.subplots(1, 3)
        loss_ax.plot([r['epoch'] for r in train], [r['loss'] for r in train], marker='.')
        loss_ax.set(title='training loss', xlabel='epoch')
        for key, label in (('rank1', 'Rank-1'), ('mAP', 'mAP')):
            eval_ax.plot([r['epoch'] for r in evals], [100 * r[key] for r in evals], marker='o', label=label)
        eval_ax.set(title='evaluation', xlabel='epoch', ylabel='%')
        if evals:
            eval_ax.legend()
        lr_ax.plot([r['epoch'] for r in train], [r['lr'] for r in train], marker='.')
        lr_ax.set(title='learning rate', xlabel='epoch')
        if train and min(r['lr'] for r in train) > 0:
            lr_ax.set_yscale('log')
        for ax in (loss_ax, eval_ax, lr_ax):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        figure.savefig(f, format='png', dpi=100)
