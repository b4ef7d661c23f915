"""Swin Transformers (Liu et al., ICCV 2021) for re-ID, built by timm: Swin-T, Swin-S, Swin-B with
4x4 patches and 7x7 windows, the backbones of SOLIDER (Chen et al., CVPR 2023)."""
import timm
import torch

from .base import ReIDModel, make_global_pool

__all__ = ['SwinTransformer', 'SWIN_ARCHS']

SWIN_ARCHS = {
    'swin_tiny': 'swin_tiny_patch4_window7_224',
    'swin_small': 'swin_small_patch4_window7_224',
    'swin_base': 'swin_base_patch4_window7_224',
}


class SwinTransformer(ReIDModel):
    """timm Swin as a re-ID backbone (`backbone`: timm's module and tensor names), built at the
    training size; the test feature is the final map after the last norm, pooled
    (`global_pool`: avg, max or gem), (N, C) with C = 768 (tiny, small) or 1024 (base).

    Every stage keeps 7x7 windows (timm's always_partition: at 256x128 the last stage's 8x4
    map is padded rather than given a clipped 7x4 window), so the relative-position tables of
    ImageNet and SOLIDER weights (169 rows) load without resampling.

    `semantic_scale` / `semantic_shift` (buffers, (3, C_k) per stage k = 1..3, identity unless
    SOLIDER weights set them): SOLIDER's semantic controller, a fixed per-channel affine on the
    tokens right after the patch merging that opens stages 1, 2 and 3 (weights/swin.py computes it
    from the file's `semantic_embed_*` tensors at lambda 0.2).
    """

    def __init__(self, num_classes, timm_name, loss=('xent',), pool='avg', neck='none', neck_feat='after',
                 height=256, width=128, global_pool='avg', drop_path=0.0):
        super().__init__(loss, pool, neck, neck_feat)
        self.backbone = timm.create_model(timm_name, pretrained=False, num_classes=0, img_size=(height, width),
                                          always_partition=True, drop_path_rate=drop_path)
        widths = [layer.blocks[0].dim for layer in self.backbone.layers]
        for k in (1, 2, 3):
            self.register_buffer(f'semantic_scale_{k}', torch.ones(widths[k]))
            self.register_buffer(f'semantic_shift_{k}', torch.zeros(widths[k]))
        self.global_pool = make_global_pool(global_pool)
        self.build_head(self.backbone.num_features, num_classes)

    def features(self, images):
        net = self.backbone
        x = net.patch_embed(images)  # (N, H/4, W/4, C), channels last as timm's Swin keeps them
        for k, stage in enumerate(net.layers):
            x = stage.downsample(x)
            if k:
                x = x * getattr(self, f'semantic_scale_{k}') + getattr(self, f'semantic_shift_{k}')
            x = stage.blocks(x)
        x = net.norm(x)
        return self.global_pool(x.permute(0, 3, 1, 2))
