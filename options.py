"""The command line of the four training scripts: the classic deep-person-reid flags, the
strong-baseline (BoT) options, the --recipe presets, and how a checkpoint's recorded model
options combine with the flags."""
import argparse
import os

import data_manager
import model_config
import models
import rerank
import weights
from solver import OPTIMIZERS, SCHEDULERS
from transforms import AUGMENTATIONS, RESIZE_MODES

__all__ = ['UsageError', 'get_args_parser', 'recipe_settings', 'print_recipe', 'flag_name', 'dataset_options',
           'resolve_model_config']


class UsageError(Exception):
    """The arguments do not fit the data (found after the dataset is read)."""


# The published BoT configuration (Luo et al., CVPR-W 2019, softmax_triplet_with_center):
# Adam 3.5e-4, P16 x K4, 120 epochs, warmup 10 epochs from 0.01 x lr, x0.1 at 40 and 70,
# pad-crop + flip + random erasing 0.5, label smoothing, last stride 1, BNNeck, center loss
# 5e-4 (center lr 0.5), cosine distance on the BN feature at test time.
BOT = {
    'optim': 'adam', 'lr': 3.5e-4, 'weight_decay': 5e-4, 'train_batch': 64, 'num_instances': 4,
    'max_epoch': 120, 'lr_scheduler': 'multistep', 'milestones': [40, 70], 'gamma': 0.1,
    'warmup_epochs': 10, 'warmup_factor': 0.01, 'augment': 'pad-crop', 'random_erasing': 0.5,
    'label_smooth': 0.1, 'last_stride': 1, 'bnneck': True, 'neck_feat': 'after', 'center_loss': 5e-4,
    'center_lr': 0.5, 'dist_metric': 'cosine',
}
# The published ViT fine-tune (TransReID baseline, PersonViT): SGD momentum 0.9, batch 64 (16 x 4),
# 120 epochs, 5 warmup epochs from 0.01 x lr then cosine, weight decay 1e-4, bias lr x2, flip +
# pad-crop + random erasing 0.5, no label smoothing, soft-margin triplet, drop-path 0.1, BNNeck, and
# the feature before the BN with cosine distance. The base lr depends on the weights: 0.008 from
# ImageNet ones, 4e-4 from person-pretrained ones (lr None: engine picks it once the weights are read).
VIT = {
    'optim': 'sgd', 'momentum': 0.9, 'lr': None, 'weight_decay': 1e-4, 'bias_lr_factor': 2.0, 'train_batch': 64,
    'num_instances': 4, 'max_epoch': 120, 'lr_scheduler': 'cosine', 'warmup_epochs': 5, 'warmup_factor': 0.01,
    'augment': 'pad-crop', 'random_erasing': 0.5, 'label_smooth': 0.0, 'soft_margin': True, 'drop_path': 0.1,
    'bnneck': True, 'neck_feat': 'before', 'center_loss': 0.0, 'dist_metric': 'cosine',
}
VIT_LR = {'imagenet': 8e-3, 'person': 4e-4}
# torchreid's published OSNet recipe (its model zoo): AMSGrad 0.0015, batch 64, 150 epochs, x0.1 at
# epoch 60, softmax with label smoothing 0.1, random flip only, and the first 10 epochs train
# only the new layers (the backbone frozen: torchreid's fixbase_epoch 10).
OSNET = {
    'optim': 'amsgrad', 'lr': 0.0015, 'weight_decay': 5e-4, 'train_batch': 64, 'max_epoch': 150,
    'lr_scheduler': 'step', 'stepsize': 60, 'gamma': 0.1, 'label_smooth': 0.1, 'augment': 'flip',
    'random_erasing': 0.0, 'fixbase_epochs': 10,
}
RECIPES = {'bot': BOT, 'vit': VIT, 'osnet': OSNET}
# Video: the same schedule shape stretched to the classic video scripts' lengths (frames are
# trained as images, so an epoch of the xent script is every frame of MARS, and one of the
# triplet script is P x K frames per identity): 15 epochs (warmup 1, decay at 5 and 9) and
# 480 epochs (4 x 120: warmup 40, decay at 160 and 280).
BOT_VIDEO_SCHEDULE = {
    False: {'max_epoch': 15, 'warmup_epochs': 1, 'milestones': [5, 9]},
    True: {'max_epoch': 480, 'warmup_epochs': 40, 'milestones': [160, 280]},
}


def recipe_settings(recipe, video, triplet):
    """The flag defaults a --recipe sets (flags given explicitly still win)."""
    if recipe == 'classic':
        return {}
    settings = dict(RECIPES[recipe])
    if not triplet:
        for key in ('num_instances', 'soft_margin'):
            settings.pop(key, None)
    if video and recipe == 'bot':
        settings.update(BOT_VIDEO_SCHEDULE[triplet])
    return settings


def flag_name(dest):
    """The command-line flag of an argument's destination: 'last_stride' -> '--last-stride'."""
    return '--' + dest.replace('_', '-')


def print_recipe(args):
    """Say what --recipe set, and which of its settings flags given explicitly replaced."""
    if args.recipe_set:
        shown = {k: ('auto (0.008 from ImageNet weights, 4e-4 from person-pretrained ones)' if v is None else v)
                 for k, v in args.recipe_set.items()}
        print(f'--recipe {args.recipe} sets: ' + ', '.join(f'{flag_name(k)} {v}' for k, v in shown.items()))
    if args.recipe_overridden:
        print('  given explicitly instead: ' + ', '.join(f'{flag_name(k)} {getattr(args, k)}'
                                                     for k in args.recipe_overridden))


class ReIDArgumentParser(argparse.ArgumentParser):
    """ArgumentParser that applies the --recipe preset and rejects invalid flag combinations,
    argparse-style."""

    def __init__(self, *args, video=False, triplet=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.video, self.triplet = video, triplet

    def parse_args(self, args=None, namespace=None):
        # A recipe changes defaults, so explicit flags win: read --recipe first, then parse
        # again with the recipe's defaults in place.
        recipe = super().parse_known_args(args, namespace)[0].recipe
        settings = recipe_settings(recipe, self.video, self.triplet)
        self.set_defaults(**settings)
        args = super().parse_args(args, namespace)
        args.recipe_set = settings
        args.recipe_overridden = sorted(k for k, v in settings.items() if getattr(args, k) != v)
        self.validate(args)
        return args

    def validate(self, args):
        for name in args.dataset + (args.target or []):
            if data_manager.is_video(name) != self.video:
                kind, script = ('image', 'train_img_model_*.py') if self.video else ('video', 'train_vid_model_*.py')
                self.error(f'{name} is a{"n" if kind == "image" else ""} {kind} dataset: use {script} for it')
        for flag, value in (('--height', args.height), ('--width', args.width),
                            ('--train-batch', args.train_batch), ('--test-batch', args.test_batch),
                            ('--max-epoch', args.max_epoch)):
            if value is not None and value < 1:
                self.error(f'{flag} must be positive, got {value}')
        if args.eval_step == 0 or args.eval_step < -1:
            self.error(f'--eval-step must be a positive number of epochs, or -1 to test after '
                       f'training only; got {args.eval_step}')
        if args.stepsize < 0:
            self.error(f'--stepsize must be >= 0 (0 disables the decay), got {args.stepsize}')
        if args.lr_scheduler == 'multistep' and not args.milestones:
            self.error('--lr-scheduler multistep needs --milestones E1 E2 ...')
        if args.warmup_epochs < 0 or not 0 < args.warmup_factor <= 1:
            self.error(f'--warmup-epochs must be >= 0 and --warmup-factor in (0, 1]; got '
                       f'{args.warmup_epochs} and {args.warmup_factor}')
        if not 0 <= args.random_erasing <= 1:
            self.error(f'--random-erasing is a probability in [0, 1], got {args.random_erasing}')
        if not 0 <= args.label_smooth < 1:
            self.error(f'--label-smooth must be in [0, 1), got {args.label_smooth}')
        if args.center_loss < 0:
            self.error(f'--center-loss must be >= 0 (0: off), got {args.center_loss}')
        if args.resume and args.resume != 'auto' and not os.path.isfile(args.resume):
            self.error(f'--resume {args.resume}: no such file (or auto: the newest checkpoint of --save-dir)')
        if args.save_freq < 1:
            self.error(f'--save-freq must be a positive number of epochs, got {args.save_freq}')
        if args.amp_dtype and not args.amp:
            self.error(f'--amp-dtype {args.amp_dtype} needs --amp')
        if args.pretrained_path and not os.path.isfile(args.pretrained_path):
            self.error(f'--pretrained-path {args.pretrained_path}: no such file')
        for flag in ('pixel_mean', 'pixel_std'):
            values = getattr(args, flag)
            if values is not None and (flag == 'pixel_std' and min(values) <= 0 or max(values) > 1.0001):
                self.error(f'{flag_name(flag)} takes three values in [0, 1] (std > 0), for R, G and B; got {values}')
        if args.teacher and not os.path.isfile(args.teacher):
            self.error(f'--teacher {args.teacher}: no such file')
        if args.kd_logit < 0 or args.kd_relation < 0 or args.kd_temp <= 0:
            self.error(f'--kd-logit and --kd-relation must be >= 0 and --kd-temp > 0; got {args.kd_logit}, '
                       f'{args.kd_relation} and {args.kd_temp}')
        if args.teacher and args.kd_logit == args.kd_relation == 0:
            self.error('--teacher with --kd-logit 0 and --kd-relation 0 distils nothing: give one a weight')
        if args.lr is not None and args.lr <= 0:
            self.error(f'--lr must be positive, got {args.lr}')
        if args.fixbase_epochs < 0:
            self.error(f'--fixbase-epochs must be >= 0, got {args.fixbase_epochs}')
        if not 0 <= args.drop_path < 1:
            self.error(f'--drop-path is a probability in [0, 1), got {args.drop_path}')
        if self.triplet:
            if args.num_instances < 1:
                self.error(f'--num-instances must be positive, got {args.num_instances}')
            if args.train_batch % args.num_instances:
                self.error(f'--train-batch {args.train_batch} must be divisible by --num-instances '
                           f'{args.num_instances} (each batch holds P identities x K instances)')
        try:
            rerank.check_parameters(args.k1, args.k2, args.lambda_value)
        except ValueError as error:
            self.error(str(error))
        if self.video and args.seq_len < 1:
            self.error(f'--seq-len must be at least 1, got {args.seq_len}')


def get_args_parser(description, *, max_epoch, stepsize, test_batch, video=False, triplet=False):
    """The scripts' flags, with the script's defaults. Options that a checkpoint records
    (model_config.CONFIG_DEFAULTS) default to None here: resolve_model_config fills them in from the
    checkpoint being resumed, or from the defaults."""
    parser = ReIDArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                video=video, triplet=triplet)
    parser.add_argument('--recipe', default='classic', choices=('classic', *RECIPES),
                        help='classic: the deep-person-reid defaults; bot: the strong baseline of Luo et al. '
                             '(CVPR-W 2019); vit: the TransReID / PersonViT ViT fine-tune; osnet: torchreid\'s '
                             'OSNet recipe; printed at start; flags given explicitly win (default: %(default)s)')

    data = parser.add_argument_group('data')
    data.add_argument('-d', '--dataset', nargs='+', default=['mars' if video else 'market1501'],
                      choices=data_manager.get_names(), metavar='NAME',
                      help='one dataset, or several to train on their union (choices: %(choices)s; '
                           'default: %(default)s)')
    data.add_argument('--target', nargs='+', choices=data_manager.get_names(), metavar='NAME',
                      help='datasets to evaluate on, each in turn; the first one picks the best model '
                           '(default: the training datasets)')
    data.add_argument('--root', default='data',
                      help='datasets live in <root>/<dataset>; image_folder and video_folder read <root> '
                           'itself (default: %(default)s)')
    data.add_argument('--split-id', type=int, default=0,
                      help='split of cuhk03 (with --cuhk03-classic-split), ilidsvid, prid2011 (default: 0)')
    data.add_argument('--cuhk03-labeled', action='store_true', help='CUHK03: hand-labelled boxes (default: detected)')
    data.add_argument('--cuhk03-classic-split', action='store_true',
                      help='CUHK03: the 20 random 1,367/100 splits of the original paper (default: the 767/700 protocol)')
    data.add_argument('--msmt17-train-val', action='store_true',
                      help='MSMT17: train on list_train + list_val, as the paper does (default: list_train)')
    data.add_argument('--camera-pattern', default=r'c(\d+)', metavar='REGEX',
                      help='folder datasets: camera id in a file (or tracklet folder) name (default: %(default)s)')
    if video:
        data.add_argument('--min-seq-len', type=int, default=0, help='drop tracklets with fewer frames')
    data.add_argument('-j', '--workers', default=4, type=int, help='data loading processes (default: %(default)s)')
    data.add_argument('--height', type=int, help='image height (default: 256, or the checkpoint\'s)')
    data.add_argument('--width', type=int, help='image width (default: 128, or the checkpoint\'s)')
    data.add_argument('--augment', default='translate', choices=AUGMENTATIONS,
                      help='translate: Random2DTranslation + flip (classic); pad-crop: flip, pad 10 (at 256x128, '
                           'scaled with the size), random crop (BoT); flip: resize + flip (OSNet) (default: %(default)s)')
    data.add_argument('--resize-mode', choices=RESIZE_MODES,
                      help="pil: PIL's antialiased resize; pil-bicubic: PIL's bicubic (fast-reid's test resize); "
                           "tracker: bilinear without antialiasing, as trackers "
                           "(OpenCV's INTER_LINEAR) resize their crops: the choice for a model that will run in a "
                           "tracker (default: the checkpoint's, else pil)")
    data.add_argument('--random-erasing', type=float, default=0.0, metavar='P',
                      help='random erasing probability, 0 disables (default: %(default)s)')

    optim = parser.add_argument_group('optimisation')
    optim.add_argument('--optim', default='adam', choices=OPTIMIZERS)
    optim.add_argument('--momentum', type=float, default=0.9, help='SGD momentum (default: %(default)s)')
    optim.add_argument('--max-epoch', default=max_epoch, type=int)
    optim.add_argument('--start-epoch', default=0, type=int, help='first epoch, when not resuming')
    optim.add_argument('--train-batch', default=32, type=int)
    optim.add_argument('--test-batch', default=test_batch, type=int,
                       help='tracklets per test batch' if video else 'images per test batch')
    optim.add_argument('--lr', '--learning-rate', default=3e-4, type=float)
    optim.add_argument('--bias-lr-factor', default=1.0, type=float,
                       help='learning rate of biases = this x --lr (TransReID: 2) (default: %(default)s)')
    optim.add_argument('--weight-decay', default=5e-4, type=float)
    optim.add_argument('--lr-scheduler', default='step', choices=SCHEDULERS,
                       help='step: x gamma every --stepsize epochs; multistep: x gamma at each of --milestones; '
                            'cosine: cosine decay to 0 (default: %(default)s)')
    optim.add_argument('--stepsize', default=stepsize, type=int,
                       help='decay the learning rate every this many epochs; 0 disables (default: %(default)s)')
    optim.add_argument('--milestones', type=int, nargs='+', default=[], metavar='E', help='multistep epochs')
    optim.add_argument('--gamma', default=0.1, type=float, help='learning-rate decay factor')
    optim.add_argument('--warmup-epochs', type=int, default=0,
                       help='raise the learning rate linearly over this many epochs (default: %(default)s)')
    optim.add_argument('--warmup-factor', type=float, default=0.01,
                       help='the warmup starts at this fraction of --lr (default: %(default)s)')
    optim.add_argument('--fixbase-epochs', type=int, default=0, metavar='N',
                       help='train only the new layers (classifier, neck) for the first N epochs: the pretrained '
                            'backbone is frozen, BatchNorm statistics included (default: %(default)s)')

    loss = parser.add_argument_group('loss')
    loss.add_argument('--label-smooth', type=float, default=0.1, metavar='EPS',
                      help='label smoothing of the cross entropy, 0 disables (default: %(default)s)')
    loss.add_argument('--center-loss', type=float, default=0.0, metavar='W',
                      help='center loss weight, 0 disables (default: %(default)s)')
    loss.add_argument('--center-lr', type=float, default=0.5, help='SGD learning rate of the class centers')
    if triplet:
        loss.add_argument('--margin', type=float, default=0.3, help='triplet loss margin')
        loss.add_argument('--num-instances', type=int, default=4,
                          help='K, instances per identity in a batch (P = train-batch / K)')
        loss.add_argument('--htri-only', action='store_true', help='train with the triplet loss alone')
        loss.add_argument('--soft-margin', action=argparse.BooleanOptionalAction, default=False,
                          help='soft-margin triplet loss, log(1 + exp(d_ap - d_an)), instead of --margin '
                               '(TransReID) (default: off)')

    kd = parser.add_argument_group('knowledge distillation from a frozen teacher (docs/training.md: Distillation)')
    kd.add_argument('--teacher', metavar='CKPT',
                    help='a checkpoint of this repo (any architecture and feature size) as a frozen teacher, run on '
                         'each training batch; its path and SHA-256 are recorded in the checkpoints, and resuming '
                         'a distilled run needs the same --teacher again')
    kd.add_argument('--kd-logit', type=float, default=1.0, metavar='W',
                    help='with --teacher: weight of T^2 KL(teacher || student) of the softened class probabilities; '
                         'the teacher must know the training identities; 0 disables (default: %(default)s)')
    kd.add_argument('--kd-temp', type=float, default=4.0, metavar='T',
                    help='temperature T of --kd-logit (default: %(default)s)')
    kd.add_argument('--kd-relation', type=float, default=30.0, metavar='W',
                    help='with --teacher: weight of the mean squared difference between the student\'s and the '
                         'teacher\'s batch cosine-similarity matrices; 0 disables (default: %(default)s)')

    arch = parser.add_argument_group('model (recorded in checkpoints; default: the checkpoint\'s, else the classic model)')
    arch.add_argument('-a', '--arch', type=arch_name, metavar='ARCH',
                      help=f'{", ".join(models.get_names())}, or timm:<any timm model name> (default: resnet50)')
    arch.add_argument('--last-stride', type=int, choices=(1, 2),
                      help='stride of the last ResNet stage; 1 doubles the final map (default: 2)')
    arch.add_argument('--bnneck', action=argparse.BooleanOptionalAction,
                      help='BatchNorm neck between feature and classifier (BoT)')
    arch.add_argument('--neck-feat', choices=('after', 'before'),
                      help='test feature after or before the BNNeck (default: after)')
    arch.add_argument('--global-pool', choices=models.GLOBAL_POOLS,
                      help='spatial pooling of CNNs and Swin: avg, max, or gem (generalised mean, learnable p) '
                           '(default: avg)')
    arch.add_argument('--patch-stride', type=int,
                      help='ViTs: stride of the 16x16 patches; 12 overlaps them as TransReID does (default: 16)')
    arch.add_argument('--camera-embedding', action=argparse.BooleanOptionalAction,
                      help='ViTs: a learned embedding per training camera added to the tokens (TransReID SIE); '
                           'camera ids are then read at test time too, unknown cameras get the mean embedding')
    arch.add_argument('--camera-embedding-weight', type=float,
                      help='weight of the camera embedding (default: 3.0, as TransReID)')
    arch.add_argument('--drop-path', type=float, default=0.0, metavar='P',
                      help='stochastic depth of transformers and timm models (default: %(default)s)')
    arch.add_argument('--no-pretrained', action='store_true',
                      help='random initialisation instead of pretrained weights (no download)')
    arch.add_argument('--pretrained-path', metavar='PATH',
                      help='local pretrained weights: torchvision / timm ImageNet, LUPerson, IBN-Net, TransReID(-SSL), '
                           'PersonViT, SOLIDER, CLIP or CLIP-ReID files, recognised and converted (see docs/weights.md)')
    arch.add_argument('--pretrained-grid', type=pretrained_grid, metavar='ROWSxCOLS',
                      help='the patch grid of the --pretrained-path position table when it cannot be recognised')
    arch.add_argument('--pixel-mean', type=float, nargs=3, metavar=('R', 'G', 'B'),
                      help="input normalisation mean (default: the checkpoint's, else the pretrained weights', "
                           'else ImageNet\'s)')
    arch.add_argument('--pixel-std', type=float, nargs=3, metavar=('R', 'G', 'B'),
                      help='input normalisation std (default: as --pixel-mean)')
    if video:
        arch.add_argument('--seq-len', type=int, default=15, help='frames per clip')
        arch.add_argument('--pool', choices=('avg', 'max'), help='temporal pooling (default: avg)')
        arch.add_argument('--clip-train', action='store_true',
                          help='train on (B, seq-len, C, H, W) clips with temporal pooling; default: '
                               'decompose tracklets into frames and train on images')
        arch.add_argument('--test-sample', default='evenly', choices=('evenly', 'all'),
                          help='test on seq-len evenly spaced frames per tracklet, or on all of them')
        arch.add_argument('--test-chunk', type=int, default=64,
                          help='with --test-sample all: frames per forward pass (bounds memory)')

    test = parser.add_argument_group('test')
    test.add_argument('--dist-metric', choices=('euclidean', 'cosine'),
                      help='squared Euclidean, or cosine distance on L2-normalised features (default: euclidean)')
    test.add_argument('--flip-test', action=argparse.BooleanOptionalAction,
                      help='test feature = mean of the features of the image and its mirror image')
    if not video:
        test.add_argument('--st', action='store_true',
                          help="also rank by st-ReID's fusion of the cosine similarity with the camera-to-camera "
                               'transit time learnt from the train split (needs frame numbers in the file names: '
                               'DukeMTMC-reID, Market-1501); printed beside the visual-only results')

    misc = parser.add_argument_group('run')
    misc.add_argument('--print-freq', type=int, default=10, help='print every this many batches')
    misc.add_argument('--seed', type=int, default=1)
    misc.add_argument('--resume', default='', metavar='PATH',
                      help='checkpoint to continue from or evaluate; auto: the newest complete checkpoint in '
                           '--save-dir if there is one, else start fresh')
    misc.add_argument('--save-freq', type=int, default=1,
                      help='write <save-dir>/checkpoint_last.pth.tar every this many epochs (default: %(default)s)')
    misc.add_argument('--evaluate', action='store_true', help='evaluate only')
    misc.add_argument('--eval-step', type=int, default=-1,
                      help='test and checkpoint every this many epochs; -1: after training only')
    misc.add_argument('--save-dir', type=str, default='log')
    misc.add_argument('--use-cpu', action='store_true', help='run on the CPU even if CUDA is available')
    misc.add_argument('--gpu-devices', default='0', type=str, help='CUDA_VISIBLE_DEVICES, e.g. 0,1,2,3')
    misc.add_argument('--tensorboard', action='store_true',
                      help='also write TensorBoard event files to <save-dir>/tensorboard (needs the tensorboard package)')

    speed = parser.add_argument_group('speed and scale-out (several GPUs: torchrun --nproc-per-node N <script> ...)')
    speed.add_argument('--amp', action='store_true',
                       help='mixed precision on CUDA: autocast to --amp-dtype; ignored on the CPU')
    speed.add_argument('--amp-dtype', choices=('bfloat16', 'float16'),
                       help='default: bfloat16 where the GPU supports it (Ampere and newer), else float16 '
                            'with a GradScaler')
    speed.add_argument('--channels-last', action='store_true', help='channels-last memory format (faster convolutions '
                                                                    'on recent GPUs, with --amp)')
    speed.add_argument('--compile', action='store_true', help='torch.compile the model for training '
                                                              '(checkpoints keep the plain names)')
    speed.add_argument('--sync-bn', action='store_true',
                       help='under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm)')

    pictures = parser.add_argument_group('pictures of ranked results')
    pictures.add_argument('--visrank', type=int, default=0, metavar='K',
                          help='at each evaluation, write a PNG of the top K gallery entries per query to '
                               '<save-dir>/visrank[_<dataset>]/, and index.png with the worst queries first')
    pictures.add_argument('--visrank-queries', type=int, metavar='N', help='with --visrank: the first N queries only')

    reranking = parser.add_argument_group('k-reciprocal re-ranking (Zhong et al., CVPR 2017)')
    reranking.add_argument('--rerank', action='store_true', help='also report results after re-ranking')
    reranking.add_argument('--k1', type=int, default=20)
    reranking.add_argument('--k2', type=int, default=6)
    reranking.add_argument('--lambda-value', type=float, default=0.3)
    return parser


def arch_name(value):
    """argparse type of -a: a known name or timm:<model>."""
    try:
        return models.check_arch(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def pretrained_grid(value):
    """argparse type of --pretrained-grid: 'ROWSxCOLS' -> (rows, columns)."""
    try:
        return weights.parse_grid(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def dataset_options(args):
    """The keyword options of data_manager.init_dataset from the flags."""
    return {'split_id': args.split_id, 'cuhk03_labeled': args.cuhk03_labeled,
            'cuhk03_classic_split': args.cuhk03_classic_split, 'msmt17_train_val': args.msmt17_train_val,
            'camera_pattern': args.camera_pattern, 'min_seq_len': getattr(args, 'min_seq_len', 0)}


def _flag_values(args):
    """The model config keys as the flags give them (None: not given)."""
    return {'arch': args.arch, 'last_stride': args.last_stride,
            'neck': None if args.bnneck is None else ('bnneck' if args.bnneck else 'none'),
            'neck_feat': args.neck_feat, 'dist_metric': args.dist_metric, 'global_pool': args.global_pool,
            'patch_stride': args.patch_stride, 'camera_weight': args.camera_embedding_weight,
            'pool': getattr(args, 'pool', None), 'flip_test': args.flip_test, 'height': args.height,
            'width': args.width, 'resize_mode': args.resize_mode, 'pixel_mean': args.pixel_mean,
            'pixel_std': args.pixel_std}


def resolve_model_config(args, checkpoint=None, pretrained=None):
    """Fill the model flags left unset from the checkpoint's recorded config (or the defaults:
    args.model_defaults where a script sets them, else model_config.CONFIG_DEFAULTS), in place, and
    return the list of (flag, value) taken from the checkpoint.

    pretrained: without a checkpoint, the converted --pretrained-path file when it is a trained
    re-ID file of another project (weights.trained_file_checkpoint): fine-tuning starts from its
    model and preprocessing, which the flags may still change (its weights must fit the model).

    Raises ValueError when a flag given explicitly contradicts an option that shapes the model
    or its ranking (model_config.SHAPING_OPTIONS) as the checkpoint records it.
    """
    source = checkpoint if checkpoint is not None else pretrained
    recorded = model_config.checkpoint_config(source) if source is not None else {}
    recorded.pop('num_classes', None)
    authoritative = checkpoint is not None and 'model' in checkpoint
    defaults = {**model_config.CONFIG_DEFAULTS, **getattr(args, 'model_defaults', {})}  # a script's own model
    taken = []
    values = _flag_values(args)
    for key, value in values.items():
        if key in ('pixel_mean', 'pixel_std'):
            continue
        if value is None:
            values[key] = recorded.get(key, defaults[key])
            if key in recorded:
                taken.append((key, values[key]))
        elif authoritative and key in model_config.SHAPING_OPTIONS and value != recorded[key]:
            flag = flag_name({'neck': 'bnneck', 'camera_weight': 'camera_embedding_weight'}.get(key, key))
            raise ValueError(f'{flag} {value} contradicts the checkpoint {args.resume}, whose model has '
                             f'{key} = {recorded[key]}; leave the flag out to use the checkpoint\'s')
    cameras = recorded.get('num_cameras', 0)
    if authoritative and args.camera_embedding is not None and args.camera_embedding != bool(cameras):
        raise ValueError(f'--{"" if args.camera_embedding else "no-"}camera-embedding contradicts the checkpoint '
                         f'{args.resume}, whose model has {cameras or "no"} camera embeddings; leave the flag out')
    if args.camera_embedding is None and cameras:
        args.camera_embedding = True
        taken.append(('camera_embedding', f'{cameras} cameras'))
    args.num_cameras = cameras  # a fresh model takes the training set's count (engine.run)
    # no flag: the file's, for its own architecture
    same_arch = values['arch'] == recorded.get('arch')
    args.arch_options = recorded['arch_options'] if same_arch else defaults['arch_options']
    args.arch, args.last_stride, args.neck_feat = values['arch'], values['last_stride'], values['neck_feat']
    args.global_pool, args.patch_stride = values['global_pool'], values['patch_stride']
    args.camera_embedding_weight = values['camera_weight']
    # The preprocessing: given, else the checkpoint's; else the pretrained weights' (engine.run).
    args.pixel_mean = args.pixel_mean or recorded.get('pixel_mean')
    args.pixel_std = args.pixel_std or recorded.get('pixel_std')
    values.pop('pixel_mean'), values.pop('pixel_std')
    args.bnneck, args.dist_metric, args.flip_test = values['neck'] == 'bnneck', values['dist_metric'], values['flip_test']
    args.height, args.width, args.resize_mode = values['height'], values['width'], values['resize_mode']
    if hasattr(args, 'pool'):
        args.pool = values['pool']
    return taken
