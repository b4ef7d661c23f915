"""fast-reid Baseline files: the layouts of its three eras load strictly, misfits raise naming the
tensor, and the rebuilt networks match reference forwards written here from fast-reid's code
(JDAI-CV/fast-reid: v0.1.1 and master's modeling/backbones/{resnet,resnest}.py, layers/{non_local,
splat,pooling}.py, heads/embedding_head.py), at 256x128 and at the odd size 250x118 where the
stem pooling and the dilation of each era show."""
import json
import re
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import checkpoints
import export_onnx
import extract_features
import search_gallery
from conftest import parse_results, run_script
from feature_extractor import FeatureExtractor
from model_config import from_checkpoint
from transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms
from weights import PretrainedWeightsError
from weights import fastreid as fastreid_weights

PIXEL_MEAN_255 = [123.675, 116.28, 103.53]
PIXEL_STD_255 = [58.395, 57.12, 57.375]


# ----------------------------------------------------------------------------------------------
# The published layouts: name -> shape, from fast-reid's module definitions

def _bn(prefix, channels):
    return {f'{prefix}weight': (channels,), f'{prefix}bias': (channels,), f'{prefix}running_mean': (channels,),
            f'{prefix}running_var': (channels,), f'{prefix}num_batches_tracked': ()}


def _norm1(prefix, channels, ibn):
    """fast-reid's IBN(planes): IN over int(planes / 2) channels (affine, no running stats), BN on the rest."""
    if not ibn:
        return _bn(prefix, channels)
    half = channels // 2
    return {f'{prefix}IN.weight': (half,), f'{prefix}IN.bias': (half,), **_bn(f'{prefix}BN.', channels - half)}


def _non_local(prefix, channels, inter):
    layout = {}
    for conv in ('g', 'theta', 'phi'):
        layout.update({f'{prefix}{conv}.weight': (inter, channels, 1, 1), f'{prefix}{conv}.bias': (inter,)})
    layout.update({f'{prefix}W.0.weight': (channels, inter, 1, 1), f'{prefix}W.0.bias': (channels,)})
    layout.update(_bn(f'{prefix}W.1.', channels))
    return layout


RESNET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
NL_COUNTS = {50: (0, 2, 3, 0), 101: (0, 2, 9, 0)}


def resnet_layout(depth, ibn=False, nl_inter=None):
    """fast-reid ResNet(last_stride 1, with_ibn, with_se False, with_nl, block, layers, non_layers)."""
    basic = depth < 50
    expansion = 1 if basic else 4
    layout = {'backbone.conv1.weight': (64, 3, 7, 7), **_bn('backbone.bn1.', 64)}
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), RESNET_BLOCKS[depth])):
        stride = 2 if stage in (1, 2) else 1
        for index in range(blocks):
            p = f'backbone.layer{stage + 1}.{index}.'
            if basic:
                layout[p + 'conv1.weight'] = (planes, inplanes, 3, 3)
                layout.update(_norm1(p + 'bn1.', planes, ibn and stage < 3))
                layout[p + 'conv2.weight'] = (planes, planes, 3, 3)
                layout.update(_bn(p + 'bn2.', planes))
            else:
                layout[p + 'conv1.weight'] = (planes, inplanes, 1, 1)
                layout.update(_norm1(p + 'bn1.', planes, ibn and stage < 3))
                layout[p + 'conv2.weight'] = (planes, planes, 3, 3)
                layout.update(_bn(p + 'bn2.', planes))
                layout[p + 'conv3.weight'] = (planes * 4, planes, 1, 1)
                layout.update(_bn(p + 'bn3.', planes * 4))
            if index == 0 and (stride != 1 or inplanes != planes * expansion):
                layout[p + 'downsample.0.weight'] = (planes * expansion, inplanes, 1, 1)
                layout.update(_bn(p + 'downsample.1.', planes * expansion))
            inplanes = planes * expansion
    if nl_inter is not None:
        for stage, count in enumerate(NL_COUNTS[depth]):
            channels = (256, 512, 1024, 2048)[stage]
            inter = 1 if nl_inter == 'one' else channels // 2
            for index in range(count):
                layout.update(_non_local(f'backbone.NL_{stage + 1}.{index}.', channels, inter))
    return layout


def resnest50_layout(nl_inter=None):
    """fast-reid ResNeSt(radix 2, groups 1, bottleneck_width 64, deep_stem, stem_width 32, avg_down,
    avd); non-local blocks as R50 (v0.1.x only)."""
    layout = {'backbone.conv1.0.weight': (32, 3, 3, 3), **_bn('backbone.conv1.1.', 32),
              'backbone.conv1.3.weight': (32, 32, 3, 3), **_bn('backbone.conv1.4.', 32),
              'backbone.conv1.6.weight': (64, 32, 3, 3), **_bn('backbone.bn1.', 64)}
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
        inter = max(planes * 2 // 4, 32)
        for index in range(blocks):
            p = f'backbone.layer{stage + 1}.{index}.'
            layout[p + 'conv1.weight'] = (planes, inplanes, 1, 1)
            layout.update(_bn(p + 'bn1.', planes))
            layout[p + 'conv2.conv.weight'] = (planes * 2, planes // 2, 3, 3)
            layout.update(_bn(p + 'conv2.bn0.', planes * 2))
            layout.update({p + 'conv2.fc1.weight': (inter, planes, 1, 1), p + 'conv2.fc1.bias': (inter,)})
            layout.update(_bn(p + 'conv2.bn1.', inter))
            layout.update({p + 'conv2.fc2.weight': (planes * 2, inter, 1, 1), p + 'conv2.fc2.bias': (planes * 2,)})
            layout[p + 'conv3.weight'] = (planes * 4, planes, 1, 1)
            layout.update(_bn(p + 'bn3.', planes * 4))
            if index == 0:
                layout[p + 'downsample.1.weight'] = (planes * 4, inplanes, 1, 1)
                layout.update(_bn(p + 'downsample.2.', planes * 4))
            inplanes = planes * 4
    if nl_inter is not None:
        for stage, count in enumerate(NL_COUNTS[50]):
            for index in range(count):
                layout.update(_non_local(f'backbone.NL_{stage + 1}.{index}.', (256, 512, 1024, 2048)[stage], 1))
    return layout


def head_layout(era, feat_dim, num_classes, gem_p):
    """Era A BNneckHead, era B/C EmbeddingHead (BN-neck only), and the Baseline's buffers."""
    neck = 'heads.bnneck.' if era == 'A' else 'heads.bottleneck.0.'
    layout = {**_bn(neck, feat_dim), ('heads.weight' if era == 'C' else 'heads.classifier.weight'):
              (num_classes, feat_dim)}
    if gem_p:
        layout['heads.pool_layer.p'] = (1,)
    if era != 'C':
        layout.update({'pixel_mean': (1, 3, 1, 1), 'pixel_std': (1, 3, 1, 1)})
    return layout


def fabricate(layout, seed=0):
    """Random tensors in a layout, with the statistics a trained network has (non-degenerate BN,
    non-local W.1 small but not at its zero init, GeM p away from 3)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in layout.items():
        if name.endswith('num_batches_tracked'):
            state[name] = torch.tensor(1000)
        elif name == 'pixel_mean':
            state[name] = torch.tensor(PIXEL_MEAN_255).view(1, 3, 1, 1)
        elif name == 'pixel_std':
            state[name] = torch.tensor(PIXEL_STD_255).view(1, 3, 1, 1)
        elif name.endswith('pool_layer.p'):
            state[name] = torch.tensor([3.7])
        elif name.endswith('.W.1.weight'):  # a non-local block is cubic in its input: trained ones stay small
            state[name] = 0.05 + 0.1 * torch.rand(shape, generator=generator)
        elif name.endswith('running_var') or (len(shape) == 1 and name.endswith('.weight')):
            state[name] = 0.5 + torch.rand(shape, generator=generator)
        elif len(shape) == 1:  # biases and running means
            state[name] = 0.1 * torch.randn(shape, generator=generator)
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod()))
            state[name] = torch.randn(shape, generator=generator) * (1.0 / fan_in) ** 0.5
    return state


# ----------------------------------------------------------------------------------------------
# Reference forwards, fast-reid's semantics on its own state dict

_CALIBRATION = []  # holds a torch.Generator while calibrate() runs


def _ref_bn(x, sd, p):
    if _CALIBRATION:  # running statistics near the batch's: activations keep their scale through depth
        generator = _CALIBRATION[0]
        var = x.var(dim=(0, 2, 3))
        var = var + 0.1 * var.mean() + 1e-3  # no channel near zero variance (a pooled BN sees 8 values)
        noise = torch.randn(var.shape, generator=generator)
        sd[p + 'running_mean'] = x.mean(dim=(0, 2, 3)) + 0.2 * var.sqrt() * noise
        sd[p + 'running_var'] = var * (0.7 + 0.6 * torch.rand(var.shape, generator=generator))
    return F.batch_norm(x, sd[p + 'running_mean'], sd[p + 'running_var'], sd[p + 'weight'], sd[p + 'bias'],
                        False, 0.0, 1e-5)


def _ref_norm1(x, sd, p):
    if p + 'IN.weight' in sd:
        half = int(x.shape[1] / 2)
        first, second = torch.split(x, half, 1)
        return torch.cat([F.instance_norm(first, weight=sd[p + 'IN.weight'], bias=sd[p + 'IN.bias'], eps=1e-5),
                          _ref_bn(second, sd, p + 'BN.')], 1)
    return _ref_bn(x, sd, p)


def ref_non_local(x, sd, p):
    """fast-reid Non_local.forward, with its (N, N) affinity matrix."""
    b = x.shape[0]
    inter = sd[p + 'g.weight'].shape[0]
    g_x = F.conv2d(x, sd[p + 'g.weight'], sd[p + 'g.bias']).view(b, inter, -1).permute(0, 2, 1)
    theta_x = F.conv2d(x, sd[p + 'theta.weight'], sd[p + 'theta.bias']).view(b, inter, -1).permute(0, 2, 1)
    phi_x = F.conv2d(x, sd[p + 'phi.weight'], sd[p + 'phi.bias']).view(b, inter, -1)
    f = torch.matmul(theta_x, phi_x)
    y = torch.matmul(f / f.size(-1), g_x).permute(0, 2, 1).contiguous().view(b, inter, *x.shape[2:])
    return _ref_bn(F.conv2d(y, sd[p + 'W.0.weight'], sd[p + 'W.0.bias']), sd, p + 'W.1.') + x


def ref_split_attention(x, sd, p, stride, dilation):
    """fast-reid SplAtConv2d.forward (radix 2, cardinality 1) with rSoftMax's view/transpose."""
    x = F.conv2d(x, sd[p + 'conv.weight'], None, stride, dilation, dilation, groups=2)
    x = F.relu(_ref_bn(x, sd, p + 'bn0.'))
    batch, rchannel = x.shape[:2]
    splited = torch.split(x, rchannel // 2, dim=1)
    gap = F.adaptive_avg_pool2d(sum(splited), 1)
    gap = F.relu(_ref_bn(F.conv2d(gap, sd[p + 'fc1.weight'], sd[p + 'fc1.bias']), sd, p + 'bn1.'))
    atten = F.conv2d(gap, sd[p + 'fc2.weight'], sd[p + 'fc2.bias'])
    atten = F.softmax(atten.view(batch, 1, 2, -1).transpose(1, 2), dim=1).reshape(batch, -1).view(batch, -1, 1, 1)
    attens = torch.split(atten, rchannel // 2, dim=1)
    return sum(a * s for a, s in zip(attens, splited)).contiguous()


def _nl_after(sd, stage):
    count = len({k.split('.')[2] for k in sd if k.startswith(f'backbone.NL_{stage}.')})
    blocks = len({k.split('.')[2] for k in sd if k.startswith(f'backbone.layer{stage}.')})
    return list(range(blocks - count, blocks))


def _ref_stages(x, sd, block_forward):
    for stage in range(1, 5):
        blocks = sorted({int(k.split('.')[2]) for k in sd if k.startswith(f'backbone.layer{stage}.')})
        after = _nl_after(sd, stage)
        for index in blocks:
            x = block_forward(x, stage, index)
            if index in after:
                x = ref_non_local(x, sd, f'backbone.NL_{stage}.{after.index(index)}.')
    return x


def ref_resnet(x, sd, era):
    """fast-reid ResNet.forward: era A max-pool k3 s2 p1, later ceil_mode without padding."""
    x = F.relu(_ref_bn(F.conv2d(x, sd['backbone.conv1.weight'], None, 2, 3), sd, 'backbone.bn1.'))
    x = F.max_pool2d(x, 3, 2, 1) if era == 'A' else F.max_pool2d(x, 3, 2, 0, ceil_mode=True)
    basic = 'backbone.layer1.0.conv3.weight' not in sd

    def block(x, stage, index):
        p = f'backbone.layer{stage}.{index}.'
        stride = 2 if stage in (2, 3) and index == 0 else 1
        if basic:
            out = F.relu(_ref_norm1(F.conv2d(x, sd[p + 'conv1.weight'], None, stride, 1), sd, p + 'bn1.'))
            out = _ref_bn(F.conv2d(out, sd[p + 'conv2.weight'], None, 1, 1), sd, p + 'bn2.')
        else:
            out = F.relu(_ref_norm1(F.conv2d(x, sd[p + 'conv1.weight']), sd, p + 'bn1.'))
            out = F.relu(_ref_bn(F.conv2d(out, sd[p + 'conv2.weight'], None, stride, 1), sd, p + 'bn2.'))
            out = _ref_bn(F.conv2d(out, sd[p + 'conv3.weight']), sd, p + 'bn3.')
        if p + 'downsample.0.weight' in sd:
            x = _ref_bn(F.conv2d(x, sd[p + 'downsample.0.weight'], None, stride), sd, p + 'downsample.1.')
        return F.relu(out + x)

    return _ref_stages(x, sd, block)


def ref_resnest(x, sd, era):
    """fast-reid ResNeSt / ResNest.forward: v0.1.1 (era A) builds layer4 at last stride 1 without
    dilation; master (era C) sets dilation 2, so layer4's blocks 1-2 get dilation and padding 2."""
    for conv, bn in (('0', '1'), ('3', '4')):
        x = F.relu(_ref_bn(F.conv2d(x, sd[f'backbone.conv1.{conv}.weight'], None, 2 if conv == '0' else 1, 1),
                           sd, f'backbone.conv1.{bn}.'))
    x = F.conv2d(x, sd['backbone.conv1.6.weight'], None, 1, 1)
    x = F.max_pool2d(F.relu(_ref_bn(x, sd, 'backbone.bn1.')), 3, 2, 1)

    def block(x, stage, index):
        p = f'backbone.layer{stage}.{index}.'
        stride = 2 if stage in (2, 3) and index == 0 else 1
        is_first = stage > 1 and index == 0  # _make_layer(is_first=True) but for layer1, first block only
        avd = stride > 1 or is_first
        dilation = 2 if era == 'C' and stage == 4 and index > 0 else 1
        out = F.relu(_ref_bn(F.conv2d(x, sd[p + 'conv1.weight']), sd, p + 'bn1.'))
        out = ref_split_attention(out, sd, p + 'conv2.', 1 if avd else stride, dilation)
        if avd:
            out = F.avg_pool2d(out, 3, stride, 1)
        out = _ref_bn(F.conv2d(out, sd[p + 'conv3.weight']), sd, p + 'bn3.')
        if p + 'downsample.1.weight' in sd:
            x = F.avg_pool2d(x, stride, stride, ceil_mode=True, count_include_pad=False)
            x = _ref_bn(F.conv2d(x, sd[p + 'downsample.1.weight']), sd, p + 'downsample.2.')
        return F.relu(out + x)

    return _ref_stages(x, sd, block)


def ref_baseline(images01, sd, era, pool):
    """fast-reid Baseline eval on the same images as 0-255 input (normalised inside, on a copy):
    backbone, pool ('gem': GeneralizedMeanPoolingP with the file's p; 'gem_fixed':
    GeneralizedMeanPooling, p 3; 'avg'), BN-neck output."""
    x = (images01 * 255 - torch.tensor(PIXEL_MEAN_255).view(1, 3, 1, 1)) / torch.tensor(PIXEL_STD_255).view(1, 3, 1, 1)
    features = (ref_resnest if 'backbone.conv1.0.weight' in sd else ref_resnet)(x, sd, era)
    if pool == 'avg':
        pooled = F.adaptive_avg_pool2d(features, 1)
    else:
        p = sd['heads.pool_layer.p'] if pool == 'gem' else 3.0
        pooled = F.adaptive_avg_pool2d(features.clamp(min=1e-6).pow(p), 1).pow(1.0 / p)
    neck = 'heads.bnneck.' if era == 'A' else 'heads.bottleneck.0.'
    return _ref_bn(pooled, sd, neck)[..., 0, 0]


def recipe_pool(era, nl, gem_p):
    """The pool of fast-reid's recipe configs: SBS (and era-A AGW) trained GeM p; AGW from era B on
    fixed GeM; BoT average."""
    return 'gem' if gem_p else ('gem_fixed' if nl and era != 'A' else 'avg')


def calibrate(state, era, pool, seed=0):
    """Sets every BatchNorm's running statistics of a fabricated state dict from one reference
    pass over random images (perturbed, so that they are not exactly a batch's): random weights
    with random statistics blow activations up through 50 layers."""
    _CALIBRATION.append(torch.Generator().manual_seed(seed))
    try:
        with torch.no_grad():
            ref_baseline(torch.rand(8, 3, 96, 48, generator=_CALIBRATION[0]), state, era, pool)
    finally:
        _CALIBRATION.clear()
    return state


# ----------------------------------------------------------------------------------------------
# Helpers

def fastreid_file(backbone, era, ibn=False, nl=None, gem_p=False, num_classes=11, seed=0):
    layout = resnest50_layout(nl) if backbone == 'resnest50' else resnet_layout(int(backbone[6:]), ibn, nl)
    feat_dim = 512 if backbone in ('resnet18', 'resnet34') else 2048
    layout.update(head_layout(era, feat_dim, num_classes, gem_p))
    return fabricate(layout, seed)


def convert(state, path='test.pth'):
    info = fastreid_weights.recognise(state)
    assert info is not None
    return fastreid_weights.to_checkpoint(state, info, path)


def build(checkpoint):
    """The model of a converted checkpoint as every consumer rebuilds it (strict but for the classifier)."""
    return from_checkpoint(checkpoint)[0]


def normalised(images01):
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images01 - mean) / std


# ----------------------------------------------------------------------------------------------
# Layouts and strictness

# (backbone, era, ibn, non-local width, trained GeM p) of the published recipes and the trackers'
LAYOUTS = [
    ('resnet50', 'A', False, None, False),       # v0.1.1 zoo BoT-R50
    ('resnet50', 'A', True, 'one', True),        # v0.1.1 zoo AGW / SBS R50-ibn
    ('resnet101', 'A', True, 'one', True),       # v0.1.1 zoo SBS R101-ibn (9 non-local blocks in layer3)
    ('resnest50', 'A', False, 'one', True),      # v0.1.1 zoo SBS-S50 (non-local, no dilation)
    ('resnet50', 'B', True, 'half', True),       # Sep-Dec 2020: non-local width C/2
    ('resnet50', 'B', True, None, False),        # veriwild_bot_R50-ibn re-upload (Jan 2021)
    ('resnest50', 'C', False, None, True),       # BoT-SORT mot17_sbs_S50, Deep OC-SORT dance_sbs_S50
    ('resnest50', 'C', False, None, False),      # StrongSORT DukeMTMC_BoT-S50
    ('resnet50', 'C', True, 'one', False),       # AGW R50-ibn (fixed GeM, no p)
    ('resnet101', 'C', True, 'one', True),       # SBS R101-ibn
    ('resnet34', 'C', False, None, False),       # kd-r34-r101_ibn distillation student
    ('resnet18', 'A', True, None, False),
]


@pytest.mark.parametrize('backbone,era,ibn,nl,gem_p', LAYOUTS)
def test_published_layouts_load_strictly(backbone, era, ibn, nl, gem_p):
    state = fastreid_file(backbone, era, ibn, nl, gem_p)
    checkpoint = convert(state)
    model = build(checkpoint)  # load_state_dict(strict=True) inside
    config = checkpoint['model']
    assert config['arch_options']['backbone'] == backbone
    assert config['arch_options']['ibn'] == ibn and config['arch_options']['non_local'] == nl
    assert config['dist_metric'] == 'cosine' and config['neck'] == 'bnneck' and config['neck_feat'] == 'after'
    assert config['resize_mode'] == 'pil-bicubic'
    assert config['pixel_mean'] == pytest.approx(IMAGENET_MEAN) and config['pixel_std'] == pytest.approx(IMAGENET_STD)
    pool = recipe_pool(era, nl, gem_p)
    recipe = {'gem': 'SBS', 'gem_fixed': 'AGW', 'avg': 'BoT'}[pool]
    assert (config['height'], config['width']) == ((384, 128) if recipe == 'SBS' else (256, 128))
    assert config['global_pool'] == pool
    assert f'era {era}' in checkpoint['source'] and recipe in checkpoint['source']
    if backbone == 'resnest50':
        assert config['arch_options']['layer4_dilation'] == (era == 'C')
    else:
        assert config['arch_options']['stem_pool'] == ('pad' if era == 'A' or nl == 'half' else 'ceil')
    if gem_p:
        assert model.global_pool.p.item() == pytest.approx(3.7)
    assert torch.equal(model.bottleneck.running_var, state[('heads.bnneck.' if era == 'A' else 'heads.bottleneck.0.')
                                                          + 'running_var'])


def test_layout_sizes_match_fastreid():
    """Entry and parameter counts of fast-reid's own modules (1.4.0, enumerated): R50-ibn + NL backbone
    409 entries / 23.54 M parameters; era-C SBS-S50 Baseline 481 entries."""
    r50 = resnet_layout(50, ibn=True, nl_inter='one')
    assert len(r50) == 409
    assert sum(int(torch.tensor(s).prod()) for k, s in r50.items()
               if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked'))) == pytest.approx(23.54e6, rel=1e-3)
    assert len(resnest50_layout()) + len(head_layout('C', 2048, 5, True)) == 481


@pytest.mark.parametrize('era', ['A', 'C'])
def test_module_prefix_and_wrapper_do_not_matter(era):
    state = fastreid_file('resnet18', era)
    plain = convert(state)
    prefixed = {k.removeprefix('module.'): v for k, v in {'module.' + k: v for k, v in state.items()}.items()}
    assert plain['state_dict'].keys() == convert(prefixed)['state_dict'].keys()


def test_stray_tensor_is_named():
    state = fastreid_file('resnet18', 'C')
    state['heads.extra.weight'] = torch.zeros(3)
    with pytest.raises(PretrainedWeightsError, match=r"heads\.extra\.weight"):
        convert(state)
    state = fastreid_file('resnet50', 'C', nl='one')
    state['backbone.NL_3.3.g.weight'] = torch.zeros(1, 1024, 1, 1)  # a 4th layer3 block: no such module
    checkpoint = convert(state)
    with pytest.raises(RuntimeError, match=r'NL_3\.3\.g\.weight'):
        build(checkpoint)


def test_era_a_pixel_buffers_in_era_c_are_stray():
    state = fastreid_file('resnet18', 'C')
    state['pixel_mean'] = torch.tensor(PIXEL_MEAN_255).view(1, 3, 1, 1)
    with pytest.raises(PretrainedWeightsError, match='pixel_mean'):
        convert(state)


def test_wrong_width_is_named():
    state = fastreid_file('resnet50', 'C', nl='one')
    state['backbone.NL_2.1.g.weight'] = torch.zeros(7, 512, 1, 1)
    with pytest.raises(PretrainedWeightsError, match=r'NL_2\.1\.g\.weight.*width of 7'):
        convert(state)
    state = fastreid_file('resnet50', 'C')
    state['heads.bottleneck.0.running_var'] = torch.ones(512)
    with pytest.raises(PretrainedWeightsError, match=r'heads\.bottleneck\.0\.running_var'):
        convert(state)
    state = fastreid_file('resnet50', 'C')
    state['backbone.layer2.1.conv2.weight'] = torch.zeros(128, 128, 1, 1)
    with pytest.raises(RuntimeError, match=r'layer2\.1\.conv2\.weight'):
        build(convert(state))


@pytest.mark.parametrize('era', ['A', 'B', 'C'])
def test_missing_bn_neck_raises(era):
    state = fastreid_file('resnet18', era)
    neck = 'heads.bnneck.' if era == 'A' else 'heads.bottleneck.0.'
    for key in [k for k in state if k.startswith(neck)]:
        del state[key]
    with pytest.raises(PretrainedWeightsError, match='without a BN-neck'):
        convert(state)
    state = fastreid_file('resnet18', era)
    del state[neck + 'running_var']
    with pytest.raises(PretrainedWeightsError, match=re.escape(neck + 'running_var')):
        convert(state)


@pytest.mark.parametrize('backbone,key,shape,message', [
    ('resnet50', 'heads.bottleneck.1.weight', (256,), 'EMBEDDING_DIM'),         # a reduction head
    ('resnet50', 'backbone.layer1.0.conv2.weight', (64, 2, 3, 3), 'ResNeXt'),   # grouped 3x3 convs
    ('resnest50', 'backbone.conv1.0.weight', (64, 3, 3, 3), 'ResNeSt-50'),      # ResNeSt-101's stem
    ('resnet50', 'backbone.layer1.0.se.fc.0.weight', (16, 256), 'squeeze-excitation'),
])
def test_unsupported_variants_say_what(backbone, key, shape, message):
    state = fastreid_file(backbone, 'C')
    state[key] = torch.zeros(shape)
    with pytest.raises(PretrainedWeightsError, match=message):
        convert(state)


def test_other_backbones_are_refused():
    state = {'backbone.conv1.conv.weight': torch.zeros(64, 3, 7, 7), **head_layout_tensors('C', 512)}  # OSNet
    with pytest.raises(PretrainedWeightsError, match='other than ResNet'):
        convert(state)


def head_layout_tensors(era, feat_dim):
    return fabricate(head_layout(era, feat_dim, 5, False))


def test_not_a_fastreid_file():
    assert fastreid_weights.recognise({'conv1.weight': torch.zeros(1)}) is None
    assert fastreid_weights.recognise({'backbone.0.weight': torch.zeros(1), 'b1_head.bottleneck.0.weight':
                                       torch.zeros(1)}) is None  # MGN


# ----------------------------------------------------------------------------------------------
# Numerical parity with the reference forwards

PARITY = [
    ('resnet50', 'A', True, 'one', True),    # era-A stem, IBN, non-local, trained GeM
    ('resnet50', 'C', True, 'one', False),   # era-C stem (ceil_mode), fixed GeM
    ('resnet18', 'C', False, None, False),   # basic blocks
    ('resnest50', 'A', False, 'one', True),  # ResNeSt without dilation, with non-local blocks
    ('resnest50', 'C', False, None, True),   # ResNeSt with layer4 dilation (BoT-SORT)
]


@pytest.mark.parametrize('backbone,era,ibn,nl,gem_p', PARITY)
@pytest.mark.parametrize('size', [(256, 128), (250, 118)])
def test_parity_with_reference_forward(backbone, era, ibn, nl, gem_p, size):
    torch.manual_seed(0)
    pool = recipe_pool(era, nl, gem_p)
    state = calibrate(fastreid_file(backbone, era, ibn, nl, gem_p), era, pool)
    model = build(convert(state))
    images = torch.rand(2, 3, *size)
    with torch.no_grad():
        ours = model(normalised(images))
        reference = ref_baseline(images.clone(), state, era, pool)
    scale = reference.abs().max()
    assert (ours - reference).abs().max() <= 1e-4 * scale
    assert F.cosine_similarity(ours, reference).min() > 0.99999


@pytest.mark.parametrize('backbone,wrong', [('resnet50', {'stem_pool': 'ceil'}),
                                            ('resnest50', {'layer4_dilation': True})])
def test_the_other_era_is_measurably_different(backbone, wrong):
    """The parity test can fail: the era-A file run with today's stem or dilation (what fast-reid's
    current code does with it) is far from the reference at the odd size."""
    state = calibrate(fastreid_file(backbone, 'A', False, None, False), 'A', 'avg')
    checkpoint = convert(state)
    checkpoint['model']['arch_options'].update(wrong)
    model = build(checkpoint)
    images = torch.rand(1, 3, 250, 118)
    with torch.no_grad():
        ours = model(normalised(images))
        reference = ref_baseline(images, state, 'A', 'avg')
    assert F.cosine_similarity(ours, reference).min() < 0.9999


def test_pil_bicubic_resize_is_pils():
    """fast-reid's test resize: torchvision Resize(interpolation=3) on a PIL image, PIL's bicubic."""
    image = Image.fromarray((np.random.default_rng(0).random((300, 170, 3)) * 255).astype(np.uint8))
    resized = build_transforms(256, 128, resize='pil-bicubic')[1](image)
    expected = torch.from_numpy(np.array(image.resize((128, 256), Image.BICUBIC))).permute(2, 0, 1)
    assert torch.equal(resized, expected)


# ----------------------------------------------------------------------------------------------
# A fast-reid file wherever a checkpoint is taken

def test_files_are_recognised_through_the_registry(tmp_path):
    """checkpoints.load_checkpoint reads {'model': module.<names>, optimizer, ...} as fast-reid's
    Checkpointer writes it, and says what it dropped."""
    state = fastreid_file('resnet18', 'A', gem_p=True)
    path = tmp_path / 'market_sbs_R18.pth'
    torch.save({'model': {'module.' + k: v for k, v in state.items()}, 'optimizer': {'state': {}, 'param_groups': []},
                'scheduler': {'last_epoch': 3}, 'iteration': 9}, path)
    checkpoint = checkpoints.load_checkpoint(str(path))
    assert checkpoint['source'].startswith('fast-reid era A Baseline, resnet18')
    assert checkpoint['dropped'] == {'normalisation (the model input is normalised outside)': ['pixel_mean', 'pixel_std'],
                                     'training state': ['iteration', 'optimizer', 'scheduler']}
    assert any('AGW' in note for note in checkpoint['notes'])  # era A: AGW and SBS files look alike
    state['heads.stray'] = torch.zeros(2)
    torch.save({'model': state}, path)
    with pytest.raises(checkpoints.CheckpointError, match=r"heads\.stray"):
        checkpoints.load_checkpoint(str(path))


def test_resnest50_onnx_export_matches_pytorch(tmp_path):
    """export_onnx's path for BoT-SORT's architecture (ResNeSt-50, dilated layer4, GeM p, BN-neck),
    onnxruntime against PyTorch at batch 1 and 5 (L2-normalised features). About 30 s: the export
    traces the network."""
    import onnxruntime
    state = calibrate(fastreid_file('resnest50', 'C', gem_p=True), 'C', 'gem')
    path = str(tmp_path / 'sbs_S50.onnx')
    graph, config, _ = export_onnx.export(convert(state), path, height=256, width=128)
    assert config['arch_options'] == {'backbone': 'resnest50', 'ibn': False, 'non_local': None,
                                      'layer4_dilation': True}
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    for batch in (1, 5):
        images = normalised(torch.rand(batch, 3, 256, 128))  # the images the statistics were set on
        with torch.no_grad():
            expected = graph(images).numpy()
        features = session.run(None, {'images': images.numpy()})[0]
        # random weights through 50 layers: float32 itself (against float64) moves them by some 1e-5
        assert np.abs(features - expected).max() <= 1e-4
        assert (features * expected).sum(axis=1).min() >= 0.99999


@pytest.fixture(scope='module')
def tracker_file(tmp_path_factory):
    """A fast-reid era-C file in the trackers' layout ({'model': module.<names>} and training state)
    with a small backbone: ResNet18 basic blocks, GeM p (SBS: 384x128 recorded)."""
    state = calibrate(fastreid_file('resnet18', 'C', gem_p=True, num_classes=13), 'C', 'gem')
    path = tmp_path_factory.mktemp('fastreid') / 'mot17_sbs_R18.pth'
    torch.save({'model': {'module.' + k: v for k, v in state.items()}, 'optimizer': {'state': {}, 'param_groups': []},
                'iteration': 100}, path)
    return path


SMALL = ['--height', '64', '--width', '32', '--workers', '0']


def _run_main(monkeypatch, module, *args):
    """A tool's main() in this process, as its command line would run it."""
    monkeypatch.setattr(sys, 'argv', [f'{module.__name__}.py', *map(str, args)])
    module.main()


def test_fastreid_file_evaluates_extracts_searches_and_exports(synthetic_root, tracker_file, tmp_path, monkeypatch,
                                                                capsys):
    evaluated = run_script('train_img_model_xent.py', '--root', synthetic_root, *SMALL, '--evaluate',
                           '--resume', tracker_file, '--save-dir', tmp_path / 'eval')
    assert 'Trained file' in evaluated.stdout and 'fast-reid era C Baseline, resnet18' in evaluated.stdout
    assert len(parse_results(evaluated.stdout)) == 1

    market = synthetic_root / 'market1501'
    for split, name in (('query', 'q.npz'), ('bounding_box_test', 'g.npz')):
        _run_main(monkeypatch, extract_features, '--resume', tracker_file, '--input', market / split,
                  '--output', tmp_path / name, '--height', '64', '--width', '32', '--device', 'cpu')
    gallery = np.load(tmp_path / 'g.npz')
    assert gallery['features'].shape[1] == 512 and str(gallery['metric']) == 'cosine'
    _run_main(monkeypatch, search_gallery, '--gallery', tmp_path / 'g.npz', '--query', tmp_path / 'q.npz',
              '--topk', '5', '--output', tmp_path / 'r.npz', '--device', 'cpu')
    assert str(np.load(tmp_path / 'r.npz')['metric']) == 'cosine'

    # FeatureExtractor(FILE): the recorded 384x128, PIL bicubic, ImageNet normalisation, BN-neck, L2.
    images = [np.random.default_rng(i).integers(0, 256, (150, 61, 3), dtype=np.uint8) for i in range(2)]
    model = from_checkpoint(checkpoints.load_checkpoint(str(tracker_file)))[0]
    batch = torch.stack([torch.from_numpy(np.array(Image.fromarray(image).resize((128, 384), Image.BICUBIC)))
                         .permute(2, 0, 1).float() / 255 for image in images])
    with torch.no_grad():
        expected = F.normalize(model(normalised(batch)), dim=1).numpy()
    np.testing.assert_allclose(FeatureExtractor(str(tracker_file))(images), expected, atol=1e-5)

    capsys.readouterr()
    _run_main(monkeypatch, export_onnx, '--resume', tracker_file, '--output', tmp_path / 'reid.onnx',
              '--height', '64', '--width', '32')
    assert 'fast-reid era C' in capsys.readouterr().out
    side = json.loads((tmp_path / 'reid.onnx.metadata.json').read_text())
    assert side['img_size'] == [64, 32] and side['trained_resize'] == 'pil-bicubic' and side['metric'] == 'cosine'
    assert side['input_mean'] == IMAGENET_MEAN and side['feature_dim'] == 512


def test_fastreid_file_teaches_and_starts_fine_tuning(synthetic_root, tracker_file, tmp_path):
    common = [*SMALL, '--root', synthetic_root, '--lr', '1e-3', '--stepsize', '0', '--train-batch', '16',
              '--max-epoch', '1', '--print-freq', '1']
    distilled = run_script('train_img_model_xent_htri.py', *common, '--no-pretrained', '-a', 'osnet_x0_25',
                           '--teacher', tracker_file, '--kd-logit', '0', '--save-dir', tmp_path / 'kd')
    assert 'fastreid_baseline, 512-d test feature' in distilled.stdout
    assert "its input is resized from the student's 64x32 to 384x128" in distilled.stdout

    tuned = run_script('train_img_model_xent_htri.py', *common, '--pretrained-path', tracker_file,
                       '--save-dir', tmp_path / 'tune')
    assert 'dropped 1 (classifier): classifier.weight' in tuned.stdout
    checkpoint = torch.load(tmp_path / 'tune' / 'checkpoint_last.pth.tar', weights_only=True)
    assert checkpoint['model']['arch'] == 'fastreid_baseline'
    assert checkpoint['model']['arch_options']['backbone'] == 'resnet18'
    assert checkpoint['model']['global_pool'] == 'gem' and checkpoint['model']['dist_metric'] == 'cosine'
