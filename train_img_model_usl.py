"""Train an image re-ID model without identity labels: Cluster Contrast (Dai et al., ACCV 2022).
Started from a checkpoint of another script (--resume), it is unsupervised domain adaptation.

    python train_img_model_usl.py -d market1501 --save-dir log/usl-market1501 --gpu-devices 0
    python train_img_model_usl.py -d image_folder --root my_crops --save-dir log/usl-crops
    python train_img_model_usl.py -d image_folder --root my_tracks --train-folders cameras --tracklets folder \\
        --save-dir log/usl-tracks      # my_tracks/train/<camera>/<tracklet>/<image>
    python train_img_model_usl.py -d market1501 --resume log/bot-duke/best_model.pth.tar \\
        --save-dir log/duke2market

Every epoch: features of all training images (test transform, eval mode); the k-reciprocal
Jaccard distance and DBSCAN (cluster.py) give pseudo labels, outliers left out for the epoch;
a memory holds each cluster's mean normalised feature; --iters batches of P clusters x K
instances train the cluster-contrast loss (losses.ClusterContrastLoss). The training split's
identity labels are never read: where it has them, they only give the printed pairwise
precision / recall / F1 of the pseudo labels. The cluster state is not saved: each epoch,
a resumed one included, recomputes it from the weights, so --resume continues exactly.

The defaults are the reference's published command (clustercontrast run_code.sh: -b 256
--num-instances 16 --iters 200 --momentum 0.1 --eps 0.6, k1 30, k2 6, temperature 0.05, 50
epochs, Adam 3.5e-4, weight decay 5e-4, x0.1 every 20 epochs, flip + pad-crop + random
erasing 0.5), and its model: GeM pooling, last stride 1, the BatchNorm'd 2048-d feature,
L2-normalised (--bnneck, cosine distance), for a fresh model; with --resume, the
checkpoint's model. The reference ran DataParallel on 4 GPUs, so its BatchNorm layers saw
groups of 64 images: --bn-group 64 does the same on any number of GPUs (0: the whole batch).
"""
import os
import re
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

import cluster
import distributed
import engine
import options
from data_manager.folders import natural_key
from dataset_loader import ImageDataset, build_test_loader
from losses import ClusterContrastLoss
from options import UsageError
from samplers import ClusterSampler
from transforms import build_transforms

CLUSTER_CONTRAST = {'train_batch': 256, 'lr': 3.5e-4, 'weight_decay': 5e-4, 'max_epoch': 50, 'stepsize': 20,
                    'optim': 'adam', 'augment': 'pad-crop', 'random_erasing': 0.5, 'eval_step': 10,
                    'model_defaults': {'global_pool': 'gem', 'last_stride': 1, 'neck': 'bnneck',
                                       'dist_metric': 'cosine'}}
LARGE = 25000  # training images from which --iters defaults to 400 (MSMT17's 32,621; Market's 12,936: 200)


def get_args_parser():
    parser = options.get_args_parser(__doc__, max_epoch=50, stepsize=20, test_batch=256)
    parser.set_defaults(**CLUSTER_CONTRAST)
    usl = parser.add_argument_group('unsupervised training (Cluster Contrast)')
    usl.add_argument('--num-instances', type=int, default=16,
                     help='K, instances per cluster in a batch, from other cameras where the cluster has them '
                          '(default: %(default)s)')
    usl.add_argument('--iters', type=int,
                     help=f'batches per epoch (default: 200, or 400 from {LARGE} training images, as the reference '
                          f'trains MSMT17)')
    usl.add_argument('--eps', type=float, default=0.6, help='DBSCAN radius on the Jaccard distance (default: %(default)s)')
    usl.add_argument('--min-samples', type=int, default=4,
                     help='DBSCAN core-point neighbourhood size, itself included (tracklets count once) '
                          '(default: %(default)s)')
    usl.add_argument('--cluster-k1', type=int, default=30,
                     help='k1 of the clustering Jaccard distance (--k1 is the evaluation re-ranking\'s) '
                          '(default: %(default)s)')
    usl.add_argument('--cluster-k2', type=int, default=6, help='k2 of the clustering Jaccard distance (default: %(default)s)')
    usl.add_argument('--temperature', type=float, default=0.05, help='of the cluster-contrast loss (default: %(default)s)')
    usl.add_argument('--memory-momentum', type=float, default=0.1,
                     help="weight of the OLD cluster feature in each memory update, the reference's convention "
                          '(default: %(default)s)')
    usl.add_argument('--hard-update', action='store_true',
                     help='update each cluster of a batch once, by its instance least similar to the memory')
    usl.add_argument('--bn-group', type=int, default=64,
                     help='BatchNorm statistics over groups of this many images of a batch, as the reference\'s '
                          '4-GPU DataParallel; 0: over the whole batch (default: %(default)s)')
    usl.add_argument('--train-folders', choices=('identities', 'cameras'), default='identities',
                     help="what the folders of an image_folder's train/ are: 'identities' (image_folder's layout, or "
                          "a flat train/ of crops, cameras from --camera-pattern); 'cameras': train/<camera>/<image>, "
                          "or with --tracklets folder train/<camera>/<tracklet>/<image>, camera ids from the folder "
                          "(default: %(default)s)")
    usl.add_argument('--tracklets', metavar='folder|REGEX',
                     help="crops of one tracklet are clustered as one (their mean feature) and never split: "
                          "'folder': each image's folder is its tracklet (<root>/train/<tracklet>/<image>, read "
                          "by image_folder as identities but used here only as must-link groups); otherwise a "
                          "regular expression whose first group (or match) in the file name is the tracklet id")
    return parser


def validate(parser, args):
    """Flag checks argparse cannot make; the reference's model options kept where -a has them."""
    arch = args.arch or 'resnet50'
    args.model_defaults = dict(args.model_defaults)
    if arch not in ('resnet50', 'resnet50m', 'resnet50_ibn_a', 'densenet121'):
        del args.model_defaults['last_stride']
    if arch in ('resnet50m', 'densenet121'):
        del args.model_defaults['global_pool']
    if args.num_instances < 1 or args.train_batch % args.num_instances:
        parser.error(f'--train-batch {args.train_batch} must be a multiple of --num-instances {args.num_instances} '
                     f'(each batch holds P clusters x K instances)')
    if args.iters is not None and args.iters < 1:
        parser.error(f'--iters must be positive, got {args.iters}')
    if args.teacher:
        parser.error('--teacher is for the four supervised scripts; to start from a trained model here, give it '
                     'to --resume')
    if args.eps <= 0 or args.min_samples < 1 or args.bn_group < 0:
        parser.error('--eps must be positive, --min-samples at least 1 and --bn-group at least 0')
    if args.cluster_k1 < 1 or not 1 <= args.cluster_k2 <= args.cluster_k1:
        parser.error(f'need --cluster-k1 >= 1 and 1 <= --cluster-k2 <= --cluster-k1; got {args.cluster_k1}, '
                     f'{args.cluster_k2}')
    if args.temperature <= 0 or not 0 <= args.memory_momentum <= 1:
        parser.error('--temperature must be positive and --memory-momentum in [0, 1]')
    if args.tracklets not in (None, 'folder'):
        try:
            re.compile(args.tracklets)
        except re.error as error:
            parser.error(f'--tracklets {args.tracklets!r} is neither folder nor a valid regular expression: {error}')


def tracklet_keys(paths, tracklets):
    """(N,) must-link keys of the training images, or None without --tracklets."""
    if tracklets is None:
        return None
    if tracklets == 'folder':
        return np.array([path.rsplit('/', 1)[0] for path in paths])
    pattern, keys = re.compile(tracklets), []
    for path in paths:
        match = pattern.search(path.rsplit('/', 1)[-1])
        if match is None:
            raise UsageError(f'--tracklets {tracklets!r} finds no tracklet id in {path}: every training file name '
                             f'needs one')
        keys.append(match.group(1) if pattern.groups else match.group(0))
    return np.array(keys)


def camera_folder_ids(paths, train_dir, tracklets):
    """(N,) int64 camera ids of the training images under train_dir laid out as
    train/<camera>/<image>, or train/<camera>/<tracklet>/<image> with --tracklets folder: one
    id per camera folder name, in image_folder's order of camera names (numeric names in
    numeric order, others by name)."""
    depth = 3 if tracklets == 'folder' else 2
    layout = 'train/<camera>/<tracklet>/<image>' if tracklets == 'folder' else 'train/<camera>/<image>'
    names = []
    for path in paths:
        parts = os.path.relpath(path, train_dir).split(os.sep)
        if len(parts) != depth:
            raise UsageError(f'--train-folders cameras{" with --tracklets folder" if depth == 3 else ""} reads '
                             f'{layout}, but {path} is not laid out so')
        names.append(parts[0])
    cameras = {name: i for i, name in enumerate(sorted(set(names), key=natural_key))}
    return np.array([cameras[name] for name in names], dtype=np.int64)


class PseudoLabels:
    """The clustering step of each epoch (engine.run calls epoch_loader at every epoch start).

    The training items are kept with their camera ids only; the identity labels are copied
    aside for the diagnostic print (where the split has them and --tracklets is not 'folder',
    whose folders are read as identities) and go nowhere else."""

    def __init__(self, args, dataset, use_gpu):
        if dataset.video:
            raise UsageError('train_img_model_usl.py trains on images; -d names a video dataset')
        if args.train_batch % (args.num_instances * distributed.get_world_size()):
            raise UsageError(f'--train-batch {args.train_batch} (the global batch) must be divisible by '
                             f'{distributed.get_world_size()} processes x --num-instances {args.num_instances}')
        self.args, self.use_gpu = args, use_gpu
        self.paths = [path for path, _, _ in dataset.train]
        self.camids = torch.tensor([camid for _, _, camid in dataset.train])
        if args.train_folders == 'cameras':
            if dataset.name != 'image_folder':
                raise UsageError(f'--train-folders cameras is for -d image_folder, not {dataset.name}')
            self.camids = torch.from_numpy(camera_folder_ids(self.paths, os.path.join(dataset.dataset_dir, 'train'),
                                                             args.tracklets))
        self.truth = None
        if dataset.has_train_ids and args.tracklets != 'folder' and args.train_folders == 'identities':
            self.truth = np.array([pid for _, pid, _ in dataset.train])
        self.groups = tracklet_keys(self.paths, args.tracklets)
        if args.iters is None:
            args.iters = 400 if len(self.paths) >= LARGE else 200
        unlabelled = [(path, 0, camid) for path, camid in zip(self.paths, self.camids.tolist())]
        self.feature_loader = build_test_loader(args, unlabelled, False, use_gpu, 'train')
        print(f'Unsupervised training on {len(self.paths)} images'
              + (f' in {len(set(self.groups.tolist()))} tracklets' if self.groups is not None else '')
              + f', {args.iters} batches of {args.train_batch // args.num_instances} clusters x '
                f'{args.num_instances} per epoch (identity labels not read)')

    def epoch_loader(self, epoch, model, criterion, device):
        """Cluster the training features of `model`, set the criterion's memory, and return the
        epoch's DataLoader of (image, pseudo label, camid) batches."""
        args = self.args
        tic = time.perf_counter()
        features, _, _ = engine.extract_split(model, self.feature_loader, device, args, 'train')
        seconds = time.perf_counter() - tic
        labels = np.zeros(len(features), dtype=np.int64)
        if distributed.get_rank() == 0:
            try:
                labels, report = cluster.pseudo_labels(features, self.groups, args.cluster_k1, args.cluster_k2,
                                                       args.eps, args.min_samples)
            except ValueError as error:
                raise UsageError(str(error)) from error
        labels = torch.from_numpy(labels).to(device)
        if distributed.is_distributed():  # rank 0's clustering for all (GPU sums are not bitwise repeatable)
            torch.distributed.broadcast(labels, 0)
        num_clusters = int(labels.max()) + 1
        if num_clusters == 0:
            raise UsageError(f'epoch {epoch + 1}: DBSCAN found no cluster (every image an outlier): raise --eps '
                             f'{args.eps} or lower --min-samples {args.min_samples}')
        centers = cluster.cluster_centers(features, labels)
        if distributed.is_distributed():
            torch.distributed.broadcast(centers, 0)
        criterion.set_memory(centers)
        if distributed.get_rank() == 0:
            print(f'Pseudo labels: {num_clusters} clusters, {report["outliers"]} outliers of {len(labels)} images; '
                  f'features {seconds:.1f} s, neighbours {report["neighbours"]:.1f} s, Jaccard {report["jaccard"]:.1f} s, '
                  f'DBSCAN {report["dbscan"]:.1f} s')
            if self.truth is not None:
                precision, recall, f1 = cluster.pairwise_scores(labels.cpu().numpy(), self.truth)
                print(f'Pseudo labels against the identity labels (printed only): pairwise precision {precision:.3f}, '
                      f'recall {recall:.3f}, F1 {f1:.3f}')
        return self.train_loader(labels.cpu())

    def train_loader(self, labels):
        args = self.args
        kept = torch.nonzero(labels >= 0).flatten().tolist()
        items = [(self.paths[i], int(labels[i]), int(self.camids[i])) for i in kept]
        transform_train, _ = build_transforms(args.height, args.width, args.augment, args.random_erasing,
                                              fill_mean=args.pixel_mean, resize=args.resize_mode)
        world_size = distributed.get_world_size()
        sampler = ClusterSampler(labels[kept], self.camids[kept], args.num_instances, args.iters, args.train_batch,
                                 num_replicas=world_size, rank=distributed.get_rank(), seed=args.seed,
                                 item_seeds=True)
        return DataLoader(ImageDataset(items, transform_train, split='train'), batch_size=args.train_batch // world_size,
                          sampler=sampler, num_workers=args.workers, pin_memory=self.use_gpu, drop_last=True,
                          generator=torch.Generator())


def build_criterion(args, num_classes, feat_dim):
    return ClusterContrastLoss(args.temperature, args.memory_momentum, hard=args.hard_update)


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    validate(parser, args)
    engine.main(args, video=False, loss={'feature'}, build_criterion=build_criterion, unsupervised=PseudoLabels)


if __name__ == '__main__':
    main()
