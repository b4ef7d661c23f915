"""fast-reid's MGN as its files lay it out, and a minimal reference forward written from the raw tensors.

Read from JDAI-CV/fast-reid `fastreid/modeling/meta_arch/mgn.py` (tag v0.1.1 and master), its heads
(`heads/bnneck_head.py` at v0.1.1, `heads/reduction_head.py` and `heads/embedding_head.py` after the
2020-09-01 refactor `d00ce8f`), `backbones/resnet.py` and `layers/{batch_norm,pooling}.py`. The tests
fabricate state dicts from `published_layout` and compare this repo's MGN with `reference_features`; nothing
here imports the repo's model code.

Key / shape table (R50; R101 has 23 layer3 blocks, so `b{k}.0.{0..21}`):

    shared trunk, conv1 .. layer3[0]   backbone.0.weight (64, 3, 7, 7)            stem conv, 7x7 stride 2
                                       backbone.1.*      (64,)                    stem BN
                                       backbone.4.{0-2}.* layer1, backbone.5.{0-3}.* layer2,
                                       backbone.6.*      the first layer3 block (stride 2, downsample)
    three branches k = 1, 2, 3         b{k}.0.{0-4}.*    layer3[1:]  (deep copies, IBN in bn1 when R50-ibn)
                                       b{k}.1.{0-2}.*    layer4 (b1) or res_p_conv5 (b2, b3): stride 1, no
                                                         IBN, b{k}.1.0.downsample.{0,1} (2048, 1024, 1, 1) + BN
    era A heads (v0.1.x, the zoo)      {h}_pool.0.p      (1,)  GeM-p, ONE module shared by all eight pools
                                       {h}_pool.1.weight (256, 2048, 1, 1)  1x1 conv, no bias
                                       {h}_pool.2.*      (256,)  BN, then ReLU
                                       {h}_head.bnneck.* (256,)  BN-neck (bias frozen, stored)
                                       {h}_head.classifier.weight (ids, 256), pixel_mean / pixel_std (1, 3, 1, 1)
    era B heads (2020-09-01 .. v1.1)   {h}_head.pool_layer.p (1,) (GeM-p configs; max pooling had no key)
                                       {h}_head.bottleneck.0.weight (256, 2048, 1, 1)  1x1 conv, no ReLU
                                       {h}_head.bottleneck.1.* (256,)  BN-neck
                                       {h}_head.classifier.weight (ids, 256), pixel_mean / pixel_std
    era C heads (v1.2+, PyPI 1.4.0)    as era B, the classifier named {h}_head.weight, no pixel_* entries
    h in b1, b2, b21, b22, b3, b31, b32, b33; every BN has weight, bias, running_mean, running_var,
    num_batches_tracked; IBN-a bn1 = bn1.IN.{weight,bias} (half) + bn1.BN.* (other half).

Forward: images normalised with (x - 255 * ImageNet mean) / (255 * ImageNet std) on 0-255 RGB; stem max pool
3/2 with padding 1 (era A, and era B before 2020-11-06) or ceil_mode without padding (later); b2 and b3 maps
cut into `torch.chunk(x, 2 | 3, dim=2)` stripes (unequal when the rows do not divide: 16 rows -> 6, 6, 4);
test feature = cat of the heads' BN-neck outputs in the order b1, b2, b3, b21, b22, b31, b32, b33.
"""
import torch
import torch.nn.functional as F

HEADS = ('b1', 'b2', 'b21', 'b22', 'b3', 'b31', 'b32', 'b33')  # the order fast-reid builds them
FEATURE_ORDER = ('b1', 'b2', 'b3', 'b21', 'b22', 'b31', 'b32', 'b33')  # the order it concatenates them
STAGES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
IMAGENET_MEAN_255 = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
IMAGENET_STD_255 = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255


def _bn(prefix, width):
    return {f'{prefix}.{name}': (width,) for name in ('weight', 'bias', 'running_mean', 'running_var')} | \
        {f'{prefix}.num_batches_tracked': ()}


def _bottleneck(prefix, inplanes, planes, ibn, downsample):
    shapes = {f'{prefix}.conv1.weight': (planes, inplanes, 1, 1)}
    if ibn:
        shapes |= {f'{prefix}.bn1.IN.weight': (planes // 2,), f'{prefix}.bn1.IN.bias': (planes // 2,)}
        shapes |= _bn(f'{prefix}.bn1.BN', planes - planes // 2)
    else:
        shapes |= _bn(f'{prefix}.bn1', planes)
    shapes |= {f'{prefix}.conv2.weight': (planes, planes, 3, 3)} | _bn(f'{prefix}.bn2', planes)
    shapes |= {f'{prefix}.conv3.weight': (4 * planes, planes, 1, 1)} | _bn(f'{prefix}.bn3', 4 * planes)
    if downsample:
        shapes |= {f'{prefix}.downsample.0.weight': (4 * planes, inplanes, 1, 1)} | _bn(f'{prefix}.downsample.1', 4 * planes)
    return shapes


def published_layout(era, depth=50, ibn=True, num_ids=751, gem=True):
    """{name: shape} of a fast-reid MGN state dict of `era` ('A', 'B' or 'C'); gem: the heads pool with
    trainable GeM (every published MGN config; False: a max- or average-pooling config, no `p`)."""
    blocks = STAGES[depth]
    shapes = {'backbone.0.weight': (64, 3, 7, 7)} | _bn('backbone.1', 64)
    inplanes = 64
    for stage, (planes, count) in enumerate(zip((64, 128, 256), blocks[:3])):
        for i in range(count if stage < 2 else 1):
            shapes |= _bottleneck(f'backbone.{4 + stage}' + (f'.{i}' if stage < 2 else ''), inplanes, planes, ibn,
                                  downsample=i == 0)
            inplanes = 4 * planes
    for k in (1, 2, 3):
        for i in range(blocks[2] - 1):
            shapes |= _bottleneck(f'b{k}.0.{i}', 1024, 256, ibn, downsample=False)
        for i in range(3):
            shapes |= _bottleneck(f'b{k}.1.{i}', 1024 if i == 0 else 2048, 512, False, downsample=i == 0)
    for h in HEADS:
        if era == 'A':
            shapes |= {f'{h}_pool.0.p': (1,)} if gem else {}
            shapes |= {f'{h}_pool.1.weight': (256, 2048, 1, 1)} | _bn(f'{h}_pool.2', 256) | _bn(f'{h}_head.bnneck', 256)
            shapes[f'{h}_head.classifier.weight'] = (num_ids, 256)
        else:
            shapes |= {f'{h}_head.pool_layer.p': (1,)} if gem else {}
            shapes |= {f'{h}_head.bottleneck.0.weight': (256, 2048, 1, 1)} | _bn(f'{h}_head.bottleneck.1', 256)
            shapes[f'{h}_head.classifier.weight' if era == 'B' else f'{h}_head.weight'] = (num_ids, 256)
    if era in 'AB':
        shapes |= {'pixel_mean': (1, 3, 1, 1), 'pixel_std': (1, 3, 1, 1)}
    return shapes


def fabricate(era, depth=50, ibn=True, num_ids=751, gem=True, seed=0):
    """A random state dict in the published layout whose forward stays finite and informative: He-scaled
    convs, BN statistics and affines spread around 1, GeM p around 3 (one shared value in era A, where
    fast-reid shares the module)."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(shape, low, high):
        return low + (high - low) * torch.rand(shape, generator=generator)

    state = {}
    shared_p = uniform((1,), 2.0, 4.0)
    for name, shape in published_layout(era, depth, ibn, num_ids, gem).items():
        leaf = name.rsplit('.', 1)[-1]
        if name in ('pixel_mean', 'pixel_std'):
            value = (IMAGENET_MEAN_255 if name == 'pixel_mean' else IMAGENET_STD_255).clone()
        elif leaf == 'num_batches_tracked':
            value = torch.tensor(1000)
        elif leaf == 'p':
            value = shared_p.clone() if era == 'A' else uniform(shape, 2.0, 4.0)
        elif leaf == 'running_var':
            value = uniform(shape, 0.5, 2.0)
        elif leaf == 'running_mean':
            value = uniform(shape, -0.2, 0.2)
        elif len(shape) == 4:
            value = torch.randn(shape, generator=generator) * (2.0 / (shape[1] * shape[2] * shape[3])) ** 0.5
        elif len(shape) == 2:
            value = torch.randn(shape, generator=generator) * 0.01
        elif leaf == 'weight':
            value = uniform(shape, 0.5, 1.5)
        else:
            value = uniform(shape, -0.2, 0.2)
        state[name] = value
    return state


# ----------------------------------------------------------------------------------------------------------------
# Reference forward from the tensors


def _batch_norm(x, sd, prefix):
    return F.batch_norm(x, sd[f'{prefix}.running_mean'], sd[f'{prefix}.running_var'], sd[f'{prefix}.weight'],
                        sd[f'{prefix}.bias'], training=False, eps=1e-5)


def _first_norm(x, sd, prefix):
    """bn1 of a bottleneck: IBN-a (instance norm with affine on the first half of the channels) or BN."""
    if f'{prefix}.IN.weight' not in sd:
        return _batch_norm(x, sd, prefix)
    half = sd[f'{prefix}.IN.weight'].shape[0]
    instance = F.instance_norm(x[:, :half], weight=sd[f'{prefix}.IN.weight'], bias=sd[f'{prefix}.IN.bias'], eps=1e-5)
    return torch.cat([instance, _batch_norm(x[:, half:], sd, f'{prefix}.BN')], dim=1)


def _bottleneck_forward(x, sd, prefix, stride=1):
    out = F.relu(_first_norm(F.conv2d(x, sd[f'{prefix}.conv1.weight']), sd, f'{prefix}.bn1'))
    out = F.relu(_batch_norm(F.conv2d(out, sd[f'{prefix}.conv2.weight'], stride=stride, padding=1), sd, f'{prefix}.bn2'))
    out = _batch_norm(F.conv2d(out, sd[f'{prefix}.conv3.weight']), sd, f'{prefix}.bn3')
    shortcut = x
    if f'{prefix}.downsample.0.weight' in sd:
        shortcut = _batch_norm(F.conv2d(x, sd[f'{prefix}.downsample.0.weight'], stride=stride), sd, f'{prefix}.downsample.1')
    return F.relu(out + shortcut)


def _blocks(prefix, sd):
    """Indices of the blocks under `prefix` (e.g. 'backbone.4' -> [0, 1, 2])."""
    return sorted({int(k[len(prefix) + 1:].split('.')[0]) for k in sd if k.startswith(prefix + '.')})


def _gem(x, p):
    return x.clamp(min=1e-6).pow(p).mean(dim=(2, 3), keepdim=True).pow(1.0 / p)


def _head(x, sd, h, era, pool):
    """One head's test feature (B, 256): its BN-neck output."""
    if era == 'A':
        pooled = _gem(x, sd[f'{h}_pool.0.p']) if pool == 'gem' else _pool(x, pool)
        reduced = F.relu(_batch_norm(F.conv2d(pooled, sd[f'{h}_pool.1.weight']), sd, f'{h}_pool.2'))
        return _batch_norm(reduced, sd, f'{h}_head.bnneck')[..., 0, 0]
    pooled = _gem(x, sd[f'{h}_head.pool_layer.p']) if pool == 'gem' else _pool(x, pool)
    return _batch_norm(F.conv2d(pooled, sd[f'{h}_head.bottleneck.0.weight']), sd, f'{h}_head.bottleneck.1')[..., 0, 0]


def _pool(x, pool):
    return x.amax(dim=(2, 3), keepdim=True) if pool == 'max' else x.mean(dim=(2, 3), keepdim=True)


def reference_features(sd, images_255, era, ceil_stem, pool='gem'):
    """fast-reid MGN's eval output (B, 2048) for 0-255 RGB images (B, 3, H, W), from the tensors of a
    published-layout state dict `sd`. ceil_stem: the stem max pool of fast-reid after 2020-11-06."""
    x = (images_255 - IMAGENET_MEAN_255) / IMAGENET_STD_255
    x = F.relu(_batch_norm(F.conv2d(x, sd['backbone.0.weight'], stride=2, padding=3), sd, 'backbone.1'))
    x = F.max_pool2d(x, 3, 2, ceil_mode=True) if ceil_stem else F.max_pool2d(x, 3, 2, padding=1)
    for stage in ('backbone.4', 'backbone.5'):
        for i in _blocks(stage, sd):
            x = _bottleneck_forward(x, sd, f'{stage}.{i}', stride=2 if stage == 'backbone.5' and i == 0 else 1)
    x = _bottleneck_forward(x, sd, 'backbone.6', stride=2)
    maps = {}
    for k in (1, 2, 3):
        y = x
        for part in ('0', '1'):
            for i in _blocks(f'b{k}.{part}', sd):
                y = _bottleneck_forward(y, sd, f'b{k}.{part}.{i}')
        maps[f'b{k}'] = y
    maps['b21'], maps['b22'] = torch.chunk(maps['b2'], 2, dim=2)
    maps['b31'], maps['b32'], maps['b33'] = torch.chunk(maps['b3'], 3, dim=2)
    return torch.cat([_head(maps[h], sd, h, era, pool) for h in FEATURE_ORDER], dim=1)
