"""What every re-ID model shares: the neck, the train/eval output contract, video input and the
test-time network."""
import pickle
import socket
import urllib.error

import torch
import torch.nn.functional as F
from torch import nn

from weights import PretrainedWeightsError

__all__ = ['ReIDModel', 'TrunkFeatureModel', 'TestFeatureNet', 'BatchNormGroups', 'PretrainedWeightsError',
           'temporal_pool', 'imagenet_backbone', 'GeneralizedMeanPooling', 'make_global_pool', 'GLOBAL_POOLS']

NECKS = ('none', 'bnneck')
NECK_FEATS = ('after', 'before')
GLOBAL_POOLS = ('avg', 'max', 'gem', 'gem_fixed')


def temporal_pool(frame_features, pool):
    """(B, S, D) frame features -> (B, D) tracklet features by 'avg' or 'max' over S."""
    if pool == 'avg':
        return frame_features.mean(dim=1)
    if pool == 'max':
        return frame_features.amax(dim=1)
    raise ValueError(f"unknown temporal pooling {pool!r}; choose 'avg' or 'max'")


class GeneralizedMeanPooling(nn.Module):
    """Generalised-mean (GeM) pooling (Radenovic et al., TPAMI 2018): (N, C, H, W) -> (N, C),
    mean(x.clamp(min=eps) ** p) ** (1 / p) over H and W. p = 1 is average pooling and p -> infinity
    max pooling. trainable: p is a parameter (`p` in the state dict) starting at 3, as in
    fast-reid's GeM-p; otherwise p stays 3 and is no tensor of the state dict, as in fast-reid's
    fixed GeM (its AGW recipe)."""

    def __init__(self, p=3.0, eps=1e-6, trainable=True):
        super().__init__()
        if trainable:
            self.p = nn.Parameter(torch.tensor(float(p)))
        else:
            self.register_buffer('p', torch.tensor(float(p)), persistent=False)
        self.eps = eps

    def forward(self, feature_map):
        p = self.p.float()  # the power is unstable in float16 under autocast
        pooled = feature_map.float().clamp(min=self.eps).pow(p).mean(dim=(2, 3))
        return pooled.pow(1 / p).to(feature_map.dtype)

    def extra_repr(self):
        return f'p={self.p.item():.3f}, eps={self.eps}'


class _GlobalPool(nn.Module):
    """(N, C, H, W) -> (N, C) by 'avg' or 'max' over H and W."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def forward(self, feature_map):
        return feature_map.mean(dim=(2, 3)) if self.kind == 'avg' else feature_map.amax(dim=(2, 3))

    def extra_repr(self):
        return self.kind


def make_global_pool(kind):
    """The spatial pooling of a CNN or Swin feature map (--global-pool): 'avg', 'max', 'gem'
    (GeneralizedMeanPooling, whose p is a parameter: `global_pool.p` in the state dict) or
    'gem_fixed' (p fixed at 3)."""
    if kind not in GLOBAL_POOLS:
        raise ValueError(f'unknown global pooling {kind!r}; choose from {GLOBAL_POOLS}')
    if kind.startswith('gem'):
        return GeneralizedMeanPooling(trainable=kind == 'gem')
    return _GlobalPool(kind)


class ReIDModel(nn.Module):
    """Base class: subclasses implement `features` and call `build_head(feat_dim, num_classes)`.

    forward(x) takes images (B, C, H, W) or clips (B, S, C, H, W); a clip's S frame features
    are pooled over time (`pool`, 'avg' or 'max') into one feature per tracklet.

    neck='bnneck' (Luo et al., CVPR-W 2019): the pooled feature f goes through a BatchNorm1d
    whose shift is frozen at 0, and a bias-free classifier reads the normalised feature; the
    metric losses (triplet, center) see f, the feature before the BatchNorm. neck_feat picks
    the test feature: 'after' the BatchNorm or 'before' it. Without a neck both are f.
      eval mode:                    the test feature, (B, feat_dim)
      train mode, loss {'xent'}:    logits, (B, num_classes)
      train mode, any other loss:   (logits, f), for the metric losses ('htri', 'cent') and
                                    distillation ('kd': losses.DistillationLoss)
      train mode, loss {'feature'}: the test feature, (B, feat_dim) (unsupervised training,
                                    with num_classes 0: no classifier at all)
    logits_and_test_feature gives a model's logits in eval mode too: a frozen teacher's targets.
    """

    def __init__(self, loss, pool='avg', neck='none', neck_feat='after'):
        super().__init__()
        loss = set(loss)
        if loss != {'feature'} and ('xent' not in loss or not loss <= {'xent', 'htri', 'cent', 'kd'}):
            raise ValueError(f"unsupported loss {sorted(loss)}; use 'xent' with optional 'htri', 'cent' and 'kd', "
                             f"or 'feature' alone")
        if neck not in NECKS:
            raise ValueError(f'unknown neck {neck!r}; choose from {NECKS}')
        if neck_feat not in NECK_FEATS:
            raise ValueError(f'unknown neck feature {neck_feat!r}; choose from {NECK_FEATS}')
        temporal_pool(torch.zeros(1, 1, 1), pool)  # reject an unknown pool now, not mid-training
        self.loss = loss
        self.pool = pool
        self.neck = neck
        self.neck_feat = neck_feat

    def build_head(self, feat_dim, num_classes):
        """The neck and a classifier over num_classes (none when num_classes is 0)."""
        self.feat_dim = feat_dim
        if self.neck == 'bnneck':
            self.bottleneck = nn.BatchNorm1d(feat_dim)
            self.bottleneck.bias.requires_grad_(False)  # no shift: the BN only scales the feature
        if not num_classes:
            self.classifier = None
        elif self.neck == 'bnneck':
            self.classifier = nn.Linear(feat_dim, num_classes, bias=False)
            nn.init.normal_(self.classifier.weight, std=0.001)  # as the BoT reference initialises it
        else:
            self.classifier = nn.Linear(feat_dim, num_classes)

    num_cameras = 0  # models with a camera embedding (models.vit) set it and take camids

    def features(self, images, camids=None):
        """(N, C, H, W) images -> (N, feat_dim) pooled backbone features. camids (N,) are read by
        models with a camera embedding only."""
        raise NotImplementedError

    def forward(self, x, camids=None):
        """x: images (B, C, H, W) or clips (B, S, C, H, W); camids: (B,) camera ids, or None when
        unknown (only models with num_cameras > 0 use them)."""
        f = self.pooled_features(x, camids)
        f_neck = self.bottleneck(f) if self.neck == 'bnneck' else f
        if not self.training or self.loss == {'feature'}:
            return f_neck if self.neck_feat == 'after' else f
        logits = self.classifier(f_neck)
        if self.loss == {'xent'}:
            return logits
        return logits, f

    def pooled_features(self, x, camids=None):
        """f, the feature before the neck, (B, feat_dim): of images (B, C, H, W), or of clips
        (B, S, C, H, W) with the S frame features pooled over time."""
        if x.dim() == 5:
            batch, seq_len = x.shape[:2]
            frame_camids = None if camids is None else camids.repeat_interleave(seq_len)
            f = self._features(x.flatten(0, 1), frame_camids).view(batch, seq_len, -1)
            return temporal_pool(f, self.pool)
        return self._features(x, camids)

    def logits_and_test_feature(self, x, camids=None):
        """(logits (B, num_classes), test feature (B, feat_dim)) in either mode; in eval mode the
        BNNeck normalises with its running statistics and the test feature is forward()'s. What
        a frozen teacher gives for distillation (models.teacher), where forward() in eval mode
        would return the feature alone. A model without a classifier (unsupervised, or a trained
        file whose classifiers were dropped) gives None for the logits: a teacher of features only."""
        f = self.pooled_features(x, camids)
        f_neck = self.bottleneck(f) if self.neck == 'bnneck' else f
        logits = self.classifier(f_neck) if self.classifier is not None else None
        return logits, (f_neck if self.neck_feat == 'after' else f)

    def _features(self, images, camids):
        return self.features(images, camids) if self.num_cameras else self.features(images)


class TrunkFeatureModel(ReIDModel):
    """A model whose `backbone` computes the pooled feature itself: (N, 3, H, W) -> (N,
    backbone.feature_dim), then the repo's (neck and) classifier. The backbones of torchreid's
    zoo families (models.torchreid_resnet, mlfn, hacnn, mobilenetv2) are torchreid's module trees
    less the classifier, so torchreid's files load into `backbone` strictly."""

    def __init__(self, num_classes, backbone, loss=('xent',), pool='avg', neck='none', neck_feat='after'):
        super().__init__(loss, pool, neck, neck_feat)
        self.backbone = backbone
        self.build_head(backbone.feature_dim, num_classes)

    def features(self, images):
        return self.backbone(images)


class TestFeatureNet(nn.Module):
    """The test-time network: normalised images (B, 3, H, W) -> (B, feat_dim) test features.

    The model's eval-mode feature (its neck_feat); with flip, the mean of the features of the
    image and of its mirror image; with normalize, L2-normalised (for the cosine metric, where
    Euclidean distances between normalised features rank as cosine distances do). Video models
    run it per frame and pool the frame features (temporal_pool) afterwards.
    """

    def __init__(self, model, flip=False, normalize=False):
        super().__init__()
        self.model = model
        self.flip = flip
        self.normalize = normalize

    def forward(self, images, camids=None):
        """images (B, 3, H, W), camids (B,) or None (unknown cameras) -> (B, feat_dim)."""
        features = self.model(images, camids)
        if self.flip:
            features = (features + self.model(images.flip(dims=[3]), camids)) / 2
        return F.normalize(features, dim=1) if self.normalize else features


class BatchNormGroups(nn.Module):
    """Training wrapper: the batch goes through `module` in consecutive groups of `group`
    samples, so every BatchNorm normalises each group by its own statistics, as under
    DataParallel on batch / group GPUs (the Cluster Contrast reference: 256 on 4 GPUs, groups of
    64); and, as there, only the first group updates the running statistics (DataParallel's
    other replicas' updates are lost). Outputs are concatenated in batch order (tuples element
    by element); in eval mode, or for a batch of at most `group`, it is `module` itself."""

    def __init__(self, module, group):
        super().__init__()
        self.module, self.group = module, group

    def forward(self, images, camids=None):
        if not self.training or len(images) <= self.group:
            return self.module(images, camids)
        norms = [m for m in self.module.modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        image_groups = images.split(self.group)
        camid_groups = camids.split(self.group) if camids is not None else [None] * len(image_groups)
        outputs = [self.module(image_groups[0], camid_groups[0])]
        # The later groups update throwaway copies of the statistics (fresh ones per group: the
        # graph of each group keeps the tensors its BatchNorms read, which must not change).
        kept = [(m.running_mean, m.running_var, m.num_batches_tracked) for m in norms]
        for x, c in zip(image_groups[1:], camid_groups[1:]):
            for m, stats in zip(norms, kept):
                m.running_mean, m.running_var, m.num_batches_tracked = (t.clone() for t in stats)
            outputs.append(self.module(x, c))
        for m, stats in zip(norms, kept):
            m.running_mean, m.running_var, m.num_batches_tracked = stats
        if isinstance(outputs[0], tuple):
            return tuple(torch.cat(parts) for parts in zip(*outputs))
        return torch.cat(outputs)


def imagenet_backbone(builder, weights, pretrained=True, pretrained_path=None, download_timeout=30):
    """Build a torchvision network, ImageNet-initialised.

    pretrained_path: a local torchvision ImageNet state dict (e.g. resnet50-0676ba61.pth);
    otherwise, when pretrained, torchvision's weights API (`weights`), which downloads into the
    torch hub cache once and reads it from there afterwards. A failed download stops at once
    with what to do instead; pretrained=False gives random initialisation.
    """
    if pretrained_path:
        net = builder(weights=None)
        try:
            state_dict = torch.load(pretrained_path, map_location='cpu', weights_only=True)
            net.load_state_dict(state_dict)
        except (OSError, RuntimeError, KeyError, pickle.UnpicklingError) as error:
            raise PretrainedWeightsError(
                f'cannot load ImageNet weights from --pretrained-path {pretrained_path}: {error}. '
                f'It must be a torchvision state dict such as {weights.url.rsplit("/", 1)[-1]}.') from error
        return net
    if not pretrained:
        return builder(weights=None)
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(download_timeout)  # an offline machine should fail fast, not hang
    try:
        return builder(weights=weights)
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        raise PretrainedWeightsError(
            f'cannot fetch ImageNet weights {weights.url} ({error}).\n'
            f'Offline? Either download that file elsewhere and pass --pretrained-path FILE (or copy '
            f'it into {torch.hub.get_dir()}/checkpoints/), or train from random initialisation '
            f'with --no-pretrained. --resume does not need ImageNet weights.') from error
    finally:
        socket.setdefaulttimeout(previous_timeout)
