"""Dataset managers: parse re-ID benchmarks and your own folders into split lists.

Every dataset exposes
    train, query, gallery:  lists of (img_path, pid, camid) for images, or
                            (tuple_of_img_paths, pid, camid) for video tracklets
    num_train_pids, num_query_pids, num_gallery_pids, num_train_cams
    video, has_camera_ids, has_test_split
with 0-based camera ids, junk (pid -1) dropped, distractors kept in the gallery, and train
pids relabelled 0..N-1 in ascending order of the original pid. Parsing reads names and
directory listings only: no image is opened or stat-ed here.

    dataset = init_dataset('cuhk03', root='data', cuhk03_labeled=True)
    combined = combine_train([init_dataset('market1501'), init_dataset('dukemtmcreid')])
"""
from ._common import DatasetError, ReidDataset
from .folders import CombinedDataset, ImageFolder, VideoFolder, combine_train
from .images import CUHK03, MSMT17, DukeMTMCreID, Market1501, cuhk03_image_name, extract_cuhk03_images
from .videos import ILIDSVID, PRID2011, DukeMTMCVidReID, Mars, mars_folder

__all__ = ['DatasetError', 'ReidDataset', 'Market1501', 'DukeMTMCreID', 'CUHK03', 'MSMT17', 'Mars',
           'ILIDSVID', 'PRID2011', 'DukeMTMCVidReID', 'ImageFolder', 'VideoFolder', 'CombinedDataset',
           'combine_train', 'init_dataset', 'get_names', 'is_video', 'mars_folder',
           'extract_cuhk03_images', 'cuhk03_image_name']

_FACTORY = {cls.name: cls for cls in (Market1501, DukeMTMCreID, CUHK03, MSMT17, Mars, ILIDSVID,
                                      PRID2011, DukeMTMCVidReID, ImageFolder, VideoFolder)}


def get_names():
    return list(_FACTORY)


def _lookup(name):
    if name not in _FACTORY:
        raise DatasetError(f'unknown dataset {name!r}; known datasets: {", ".join(_FACTORY)}')
    return _FACTORY[name]


def is_video(name):
    """Whether dataset name holds video tracklets; reads no data."""
    return _lookup(name).video


def init_dataset(name, root='data', verbose=True, **options):
    """Load dataset name from root. Options every dataset accepts and ignores when irrelevant:
    split_id=0, cuhk03_labeled=False, cuhk03_classic_split=False, msmt17_train_val=False,
    camera_pattern=r'c(\\d+)', min_seq_len=0."""
    return _lookup(name)(root=root, verbose=verbose, **options)
