"""Any timm model as a re-ID backbone: `-a timm:<model name>` (e.g. timm:resnet18,
timm:mobilenetv4_conv_small, timm:convnext_tiny, timm:vit_tiny_patch16_224)."""
import timm

from .base import ReIDModel, make_global_pool

__all__ = ['TimmNet', 'TIMM_PREFIX', 'timm_model_name', 'is_timm_arch']

TIMM_PREFIX = 'timm:'


def is_timm_arch(arch):
    return isinstance(arch, str) and arch.startswith(TIMM_PREFIX)


def timm_model_name(arch):
    """'timm:resnet18' -> 'resnet18', checked against timm's registry (no download involved)."""
    name = arch.removeprefix(TIMM_PREFIX)
    if not timm.is_model(name):
        close = timm.list_models(f'*{name.split(".")[0][:8]}*')[:8]
        raise ValueError(f'-a {arch}: timm {timm.__version__} has no model {name!r}'
                         + (f'; similar names: {", ".join(close)}' if close else ''))
    return name


class TimmNet(ReIDModel):
    """A timm network without its classifier (`backbone`: timm's module and tensor names).

    Convolutional networks and other models whose forward_features gives a map (N, C, H, W),
    or channels-last (N, H, W, C) as timm's Swin-like models do, are pooled by `global_pool`
    (avg, max or gem); a model whose forward_features gives tokens (N, L, C) is pooled by its own
    head (a ViT's class token). Models that take an image size are built at the training size.
    Test feature: (N, backbone.num_features).
    """

    def __init__(self, num_classes, arch, loss=('xent',), pool='avg', neck='none', neck_feat='after',
                 height=256, width=128, global_pool='avg', drop_path=0.0):
        super().__init__(loss, pool, neck, neck_feat)
        name = timm_model_name(arch)
        options = {'num_classes': 0}
        if drop_path:
            options['drop_path_rate'] = drop_path
        try:
            self.backbone = timm.create_model(name, pretrained=False, img_size=(height, width), **options)
        except TypeError:  # a network that is not built for an image size (most CNNs)
            self.backbone = timm.create_model(name, pretrained=False, **options)
        self.channels_last_map = getattr(self.backbone, 'output_fmt', 'NCHW') == 'NHWC'
        self.global_pool = make_global_pool(global_pool)
        self.build_head(self.backbone.num_features, num_classes)

    def features(self, images):
        x = self.backbone.forward_features(images)
        if x.dim() == 3:
            return self.backbone.forward_head(x, pre_logits=True)
        return self.global_pool(x.permute(0, 3, 1, 2) if self.channels_last_map else x)
