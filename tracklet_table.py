"""The tracklet table of multi-camera linking: one row per single-camera tracklet, numpy arrays.

    table = TrackletTable(cameras, camera, local_id, segment, first_frame, last_frame,
                          start_time, end_time, num_boxes, features)
    table.save('tracklets.npz')                      # atomic: whole or not at all
    table = TrackletTable.load('tracklets.npz', feature_dim=512)

Time is seconds on the scene-wide clock: (frame - 1) / fps + the camera's offset. Cameras are
named by their folder names; `camera` indexes the sorted list `cameras`. A tracklet is a
single-camera track, or a piece of one (`segment` > 0) where a track was split at an
appearance jump. Its feature is the L2-normalised mean of the L2-normalised box features.

The .npz holds one array per field (cameras as a unicode array, gt_id only when known) and is
read without pickle; every array is checked on load, and an error names the file and the array.
"""
import dataclasses

import numpy as np

from checkpoints import write_atomic

__all__ = ['TrackletTable']

# Integer fields of shape (N,), then float fields of shape (N,).
_INT_FIELDS = ('camera', 'local_id', 'segment', 'first_frame', 'last_frame', 'num_boxes')
_TIME_FIELDS = ('start_time', 'end_time')


@dataclasses.dataclass
class TrackletTable:
    """N tracklets.

    cameras: list[str], sorted camera names; camera: (N,) int64 index into cameras;
    local_id: (N,) int64 single-camera track id; segment: (N,) int64 piece of the track (0 when
    unsplit); first_frame, last_frame: (N,) int64; start_time, end_time: (N,) float64 seconds on
    the scene clock; num_boxes: (N,) int64 boxes pooled; features: (N, D) float32 L2-normalised;
    gt_id: (N,) int64 majority ground-truth identity (-1 unknown), or None.
    The arrays are converted to those dtypes and checked when the table is made."""
    cameras: list
    camera: np.ndarray
    local_id: np.ndarray
    segment: np.ndarray
    first_frame: np.ndarray
    last_frame: np.ndarray
    start_time: np.ndarray
    end_time: np.ndarray
    num_boxes: np.ndarray
    features: np.ndarray
    gt_id: np.ndarray = None

    def __post_init__(self):
        self._check('TrackletTable')

    def _check(self, source, feature_dim=None):
        """Convert the fields to their dtypes and raise ValueError naming `source` (a file, or
        the class) and the field at the first inconsistency."""
        def fail(message):
            raise ValueError(f'{source}: {message}')

        self.cameras = [str(name) for name in self.cameras]
        if self.cameras != sorted(set(self.cameras)):
            fail(f'cameras must be sorted unique names, got {self.cameras[:10]}')
        for name in _INT_FIELDS + ('gt_id',):
            if name != 'gt_id' or self.gt_id is not None:
                setattr(self, name, _as_array(getattr(self, name), np.int64, name, fail))
        for name in _TIME_FIELDS:
            setattr(self, name, _as_array(getattr(self, name), np.float64, name, fail))
        self.features = _as_array(self.features, np.float32, 'features', fail, ndim=2)
        num = len(self.camera)
        for name in _INT_FIELDS + _TIME_FIELDS + ('features', 'gt_id'):
            value = getattr(self, name)
            if value is not None and len(value) != num:
                fail(f'{name} has {len(value)} rows, camera has {num}: every array needs one row per tracklet')
        if feature_dim is not None and self.features.shape[1] != feature_dim:
            fail(f'features are {self.features.shape[1]}-d, expected {feature_dim}-d: this table was made '
                 f'with another model; extract the tracklet features again with this one')
        if num and (self.camera.min() < 0 or self.camera.max() >= len(self.cameras)):
            fail(f'camera indices must lie in [0, {len(self.cameras)}) (the cameras list), '
                 f'got {self.camera.min()}..{self.camera.max()}')
        if not (np.isfinite(self.start_time).all() and np.isfinite(self.end_time).all()):
            fail('start_time and end_time must be finite')
        if (self.last_frame < self.first_frame).any() or (self.end_time < self.start_time).any():
            at = int(np.flatnonzero((self.last_frame < self.first_frame) | (self.end_time < self.start_time))[0])
            fail(f'tracklet {at} ends before it starts (frames {self.first_frame[at]}..{self.last_frame[at]}, '
                 f'seconds {self.start_time[at]}..{self.end_time[at]})')
        if not np.isfinite(self.features).all():
            fail('features hold NaN or infinite values')

    def __len__(self):
        return len(self.camera)

    def subset(self, mask):
        """A table of the rows selected by `mask`: (N,) bool, or indices (in their order);
        the same cameras list."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return TrackletTable(**{name: value if name == 'cameras' or value is None else value[mask]
                                for name, value in fields.items()})

    def save(self, path):
        """Write the table to `path` (.npz, uncompressed) atomically."""
        arrays = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}
        arrays['cameras'] = np.array(self.cameras, dtype=str)
        write_atomic(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path, feature_dim=None):
        """Read a table written by save; feature_dim, when given, is the feature size the caller
        needs. ValueError naming the file on a missing or inconsistent array."""
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError) as error:
            raise ValueError(f'{path}: not a readable tracklet table (.npz): {error}') from None
        required = [f.name for f in dataclasses.fields(cls) if f.name != 'gt_id']
        missing = [name for name in required if name not in arrays]
        if missing:
            raise ValueError(f'{path}: missing array(s) {", ".join(missing)}: not a tracklet table written by '
                             f'TrackletTable.save')
        unexpected = sorted(set(arrays) - set(required) - {'gt_id'})
        if unexpected:
            raise ValueError(f'{path}: unexpected array(s) {", ".join(unexpected)}')
        if arrays['cameras'].ndim != 1 or arrays['cameras'].dtype.kind != 'U':
            raise ValueError(f'{path}: cameras must be a 1-d array of names')
        table = cls.__new__(cls)
        for f in dataclasses.fields(cls):
            setattr(table, f.name, arrays.get(f.name))
        table.cameras = arrays['cameras'].tolist()
        table._check(path, feature_dim)
        return table


def _as_array(value, dtype, name, fail, ndim=1):
    """`value` as a numpy array of `dtype` with `ndim` dimensions; integers must be whole."""
    array = np.asarray(value)
    if array.ndim != ndim:
        fail(f'{name} must have {ndim} dimension(s), got shape {array.shape}')
    if np.issubdtype(dtype, np.integer) and array.dtype.kind not in 'iub':
        if array.dtype.kind != 'f' or not np.array_equal(array, np.round(array)):
            fail(f'{name} must hold integers, got {array.dtype}')
    elif array.dtype.kind not in 'iubf':
        fail(f'{name} must be numeric, got {array.dtype}')
    return array.astype(dtype, copy=False)
