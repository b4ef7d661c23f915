"""Vision Transformers for re-ID, built by timm: ViT-S/16 and ViT-B/16 (the backbones of DeiT, DINO,
TransReID, TransReID-SSL and PersonViT), their convolutional-stem variants (TransReID-SSL's ICS),
and the CLIP ViT-B/16 image tower (with CLIP-ReID's projection: clipreid_vit_base); with TransReID's
overlapping patches and camera embedding.

The network is built at the training size (e.g. 256x128: a 16x8 grid of patches, a position
table of 1 + 128 rows), and the test feature is the class token after the final norm.
"""
import timm
import torch
from torch import nn

from .base import ReIDModel
from .resnet_ibn import IBN

__all__ = ['VisionTransformer', 'ConvStemPatchEmbed', 'VIT_ARCHS', 'patch_grid']

# arch -> (timm model, options). `vit_small` is the ViT-S/16 of DeiT, DINO and TransReID-SSL
# (384-d, 12 blocks, 6 heads, qkv bias), not TransReID's older 768-d 8-block model of that name.
# CLIP's tower needs timm's QuickGELU variant: the GELU one is silently wrong on CLIP weights.
VIT_ARCHS = {
    'vit_small': ('vit_small_patch16_224', {}),
    'vit_base': ('vit_base_patch16_224', {}),
    'vit_small_ics': ('vit_small_patch16_224', {'conv_stem': True}),
    'vit_base_ics': ('vit_base_patch16_224', {'conv_stem': True}),
    'clip_vit_base': ('vit_base_patch16_clip_quickgelu_224', {'camera_tokens': 'cls'}),
    # CLIP-ReID's model whole: the CLIP tower, its 768 -> 512 image-text projection, and a BN-neck
    # over both features (weights/clipreid.py loads its trained files).
    'clipreid_vit_base': ('vit_base_patch16_clip_quickgelu_224', {'camera_tokens': 'cls', 'projection': 512}),
}
PATCH = 16


def patch_grid(height, width, stride=PATCH):
    """(rows, columns) of 16x16 patches taken every `stride` pixels: TransReID's
    ((H - 16) // s + 1, (W - 16) // s + 1); 16x8 at 256x128 with stride 16, 21x10 with 12."""
    if height < PATCH or width < PATCH:
        raise ValueError(f'a ViT needs images of at least {PATCH}x{PATCH} pixels, got {height}x{width}')
    return (height - PATCH) // stride + 1, (width - PATCH) // stride + 1


class ConvStemPatchEmbed(nn.Module):
    """TransReID-SSL's ICS patch embedding: a convolutional stem (7x7/2 conv, IBN, ReLU, 3x3 conv,
    IBN, ReLU, 3x3 conv, BN, ReLU; 64 channels) then an 8x8/8 projection, so one token per
    16x16 pixels as the plain patch embedding gives. (N, 3, H, W) -> (N, H/16 * W/16, dim);
    tensor names `conv.{0,1,3,4,6,7}.*` and `proj.*` as in its checkpoints."""

    def __init__(self, height, width, embed_dim, hidden=64):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(3, hidden, 7, stride=2, padding=3, bias=False), IBN(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), IBN(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True))
        self.proj = nn.Conv2d(hidden, embed_dim, PATCH // 2, stride=PATCH // 2)
        self.grid_size = patch_grid(height, width)
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def forward(self, images):
        return self.proj(self.conv(images)).flatten(2).transpose(1, 2)


class VisionTransformer(ReIDModel):
    """timm ViT as a re-ID backbone; `backbone` holds timm's module (its tensor names).

    patch_stride: 16, or less for TransReID's overlapping patches (12: a 21x10 grid at 256x128);
    the patch weights are the same, only the grid and so the position table grow.
    num_cameras > 0: TransReID's side-information embedding, a learned vector per training camera
    added, times camera_weight, to every token (TransReID, weight 3.0) or to the class token only
    (CLIP-ReID, `camera_tokens='cls'`). A sample without a known camera (camids None, a camid < 0 or
    >= num_cameras: a new camera, a tracker's crop, a folder without cameras) gets the mean of the
    camera vectors instead: the camera-agnostic feature, as close to what training saw as a
    camera-free input can be.
    Test feature: the class token after the final norm, (N, embed_dim). timm_options: more
    arguments of timm.create_model (the tests build 2-block ViTs with {'depth': 2}).
    projection > 0: CLIP-ReID's feature, the class token c and its image-text projection c @ proj
    (`proj`, (embed_dim, projection)) side by side, (N, embed_dim + projection); the BN-neck
    normalises both parts channel by channel, as CLIP-ReID's two BatchNorms (bottleneck,
    bottleneck_proj) do.
    """

    def __init__(self, num_classes, timm_name, loss=('xent',), pool='avg', neck='none', neck_feat='after',
                 height=256, width=128, patch_stride=PATCH, num_cameras=0, camera_weight=3.0, drop_path=0.0,
                 conv_stem=False, camera_tokens='all', timm_options=None, projection=0):
        super().__init__(loss, pool, neck, neck_feat)
        if not 1 <= patch_stride <= PATCH:
            raise ValueError(f'--patch-stride must be between 1 and {PATCH}, got {patch_stride}')
        if conv_stem and patch_stride != PATCH:
            raise ValueError('the convolutional-stem ViTs have no overlapping-patch option; leave --patch-stride at 16')
        grid = patch_grid(height, width, patch_stride)
        self.backbone = timm.create_model(timm_name, pretrained=False, num_classes=0, img_size=(height, width),
                                          drop_path_rate=drop_path, **(timm_options or {}))
        embed_dim = self.backbone.embed_dim
        if conv_stem:
            self.backbone.patch_embed = ConvStemPatchEmbed(height, width, embed_dim)
        elif patch_stride != PATCH:
            patch_embed = self.backbone.patch_embed
            patch_embed.proj.stride = (patch_stride, patch_stride)
            patch_embed.grid_size, patch_embed.num_patches = grid, grid[0] * grid[1]
            patch_embed.strict_img_size = True  # the grid (and position table) hold for this size only
            self.backbone.pos_embed = nn.Parameter(torch.empty(1, 1 + grid[0] * grid[1], embed_dim))
            nn.init.trunc_normal_(self.backbone.pos_embed, std=0.02)
        if camera_tokens not in ('all', 'cls'):
            raise ValueError(f"camera_tokens must be 'all' or 'cls', got {camera_tokens!r}")
        self.num_cameras, self.camera_weight, self.camera_tokens = num_cameras, camera_weight, camera_tokens
        self.grid_size = grid
        self.has_conv_stem = conv_stem
        if num_cameras:
            self.camera_embed = nn.Parameter(torch.empty(num_cameras, embed_dim))
            nn.init.trunc_normal_(self.camera_embed, std=0.02)
        else:
            self.camera_embed = None
        if projection:
            self.proj = nn.Parameter(torch.empty(embed_dim, projection))
            nn.init.normal_(self.proj, std=embed_dim ** -0.5)  # as CLIP initialises it
        else:
            self.proj = None
        self.build_head(embed_dim + projection, num_classes)

    def camera_vectors(self, camids, batch):
        """(batch,) camera ids or None -> (batch, embed_dim): the embedding of each known camera,
        the mean embedding for an unknown one."""
        mean = self.camera_embed.mean(dim=0)
        if camids is None:
            return mean.expand(batch, -1)
        known = (camids >= 0) & (camids < self.num_cameras)
        return torch.where(known[:, None], self.camera_embed[camids.clamp(0, self.num_cameras - 1)], mean)

    def features(self, images, camids=None):
        net = self.backbone
        tokens = net._pos_embed(net.patch_embed(images))  # class token + patches, position added
        if self.camera_embed is not None:
            side = self.camera_weight * self.camera_vectors(camids, images.shape[0]).to(tokens.dtype)[:, None]
            if self.camera_tokens == 'all':
                tokens = tokens + side
            else:
                tokens = torch.cat([tokens[:, :1] + side, tokens[:, 1:]], dim=1)
        token = net.norm(net.blocks(net.norm_pre(net.patch_drop(tokens))))[:, 0]
        return token if self.proj is None else torch.cat([token, token @ self.proj], dim=1)
