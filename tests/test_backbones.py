"""Modern backbones and third-party weights: every source's published layout converts and loads
strictly (a stray tensor or a wrong width is an error naming it), features equal independent
implementations (timm's ViT, torchvision's ResNet50, hand-written TransReID and CLIP forwards),
position tables resample as a hand-written bilinear interpolation, and nothing touches the
network (sockets fail in every test here)."""
import math
import socket

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision

import models
import solver
import weights
from models.base import PretrainedWeightsError
from test_weights import HEADS as CLIP_TEST_HEADS
from test_weights import _clip_reference, _clip_visual, _solider_extras, _timm_to_solider


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No file is downloaded anywhere: any socket is an error."""
    def refuse(*args, **kwargs):
        raise OSError('a test tried to open a network connection')
    monkeypatch.setattr(socket, 'socket', refuse)
    monkeypatch.setattr(socket, 'create_connection', refuse)


def save(tmp_path, name, obj):
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


def random_like(state_dict, seed=0):
    """The same names and shapes, new random values (BatchNorm variances kept positive)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state_dict.items():
        if not v.is_floating_point():
            out[k] = v.clone()
        elif k.endswith('running_var'):
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        else:
            out[k] = torch.randn(v.shape, generator=g) * 0.05
    return out


# ---------------------------------------------------------------------------------------------
# Position tables


def bilinear_by_hand(grid, out_h, out_w):
    """(h, w, D) -> (out_h, out_w, D): bilinear interpolation with half-pixel centres, clamped
    at the borders (what F.interpolate(mode='bilinear', align_corners=False) defines), looped."""
    h, w, _ = grid.shape
    out = torch.empty(out_h, out_w, grid.shape[2], dtype=torch.float64)
    for i in range(out_h):
        y = min(max((i + 0.5) * h / out_h - 0.5, 0.0), h - 1)
        y0 = int(math.floor(y))
        y1, fy = min(y0 + 1, h - 1), y - y0
        for j in range(out_w):
            x = min(max((j + 0.5) * w / out_w - 0.5, 0.0), w - 1)
            x0 = int(math.floor(x))
            x1, fx = min(x0 + 1, w - 1), x - x0
            out[i, j] = ((1 - fy) * (1 - fx) * grid[y0, x0] + (1 - fy) * fx * grid[y0, x1]
                         + fy * (1 - fx) * grid[y1, x0] + fy * fx * grid[y1, x1])
    return out


@pytest.mark.parametrize('old, new', [((14, 14), (16, 8)), ((14, 14), (21, 10)), ((16, 8), (24, 8))])
def test_position_table_resampling_is_bilinear(old, new):
    torch.manual_seed(0)
    table = torch.randn(1, 1 + old[0] * old[1], 6, dtype=torch.float64)
    resampled = weights.resample_position_table(table, old, new)
    assert resampled.shape == (1, 1 + new[0] * new[1], 6)
    assert torch.equal(resampled[:, 0], table[:, 0])  # the class token's position is kept
    expected = bilinear_by_hand(table[0, 1:].view(*old, 6), *new).view(1, -1, 6)
    torch.testing.assert_close(resampled[:, 1:], expected, atol=1e-5, rtol=0)  # timm resamples in float32


def test_source_grid_unknown_is_an_error_asking_for_it():
    assert weights.source_grid(196, (16, 8), 'f') == (14, 14)
    assert weights.source_grid(128, (24, 8), 'f') == (16, 8)
    assert weights.source_grid(210, (16, 8), 'f') == (21, 10)
    with pytest.raises(PretrainedWeightsError, match='--pretrained-grid'):
        weights.source_grid(150, (16, 8), 'f')
    assert weights.source_grid(150, (16, 8), 'f', given=(15, 10)) == (15, 10)
    with pytest.raises(PretrainedWeightsError, match='150'):
        weights.source_grid(150, (16, 8), 'f', given=(16, 8))


# ---------------------------------------------------------------------------------------------
# ViT: DINO teacher (TransReID-SSL / PersonViT), other wrappers, ICS, TransReID


@pytest.fixture(scope='module')
def vit_small_tensors():
    """A ViT-S/16 backbone pretrained on a 16x8 grid (LUPerson), in timm's names: the published
    key layout of TransReID-SSL and PersonViT files (DINO ViT-S: 384-d, 12 blocks, qkv bias)."""
    torch.manual_seed(1)
    net = timm.create_model('vit_small_patch16_224', num_classes=0, img_size=(256, 128))
    return random_like(net.state_dict(), seed=1)


def dino_teacher(backbone, head_dim=64):
    """DINO's checkpoint: {'teacher': {'backbone.*', 'head.mlp.*', 'head.last_layer.*'}, ...}."""
    teacher = {'backbone.' + k: v for k, v in backbone.items()}
    teacher.update({'head.mlp.0.weight': torch.randn(32, 384), 'head.mlp.0.bias': torch.randn(32),
                    'head.mlp.2.weight': torch.randn(head_dim, 32), 'head.last_layer.weight_g': torch.randn(1, 64),
                    'head.last_layer.weight_v': torch.randn(64, head_dim)})
    return {'teacher': teacher, 'epoch': 100}


def test_dino_teacher_vit_small_matches_timm(vit_small_tensors, tmp_path):
    path = save(tmp_path, 'vit_small_cfs_lup.pth', dino_teacher(vit_small_tensors))
    model = models.init_model('vit_small', 10, pretrained_path=path, height=256, width=128).eval()
    report = model.pretrained_report
    assert report.loaded == len(vit_small_tensors) and not report.resampled
    assert report.dropped == {'DINO projection head': sorted(k for k in dino_teacher({})['teacher'])}
    assert report.pixel_mean == [0.5] * 3 and report.person_pretrained
    reference = timm.create_model('vit_small_patch16_224', num_classes=0, img_size=(256, 128)).eval()
    reference.load_state_dict(vit_small_tensors)
    images = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(images), atol=1e-5, rtol=0)
    assert 'DINO projection head' in str(report) and 'pixel mean (0.5, 0.5, 0.5)' in str(report)


@pytest.mark.parametrize('wrap', ['model', 'state_dict', 'module', 'target_encoder', 'module_prefix'])
def test_person_vit_wrappers_load_the_same_tensors(vit_small_tensors, tmp_path, wrap):
    state = vit_small_tensors
    obj = {'module.' + k: v for k, v in state.items()} if wrap == 'module_prefix' else {wrap: dict(state)}
    model = models.init_model('vit_small', 10, pretrained_path=save(tmp_path, 'w.pth', obj), height=256, width=128)
    for key, value in state.items():
        assert torch.equal(model.backbone.state_dict()[key], value), key


def test_person_vit_at_384_resamples_16x8_to_24x8(vit_small_tensors, tmp_path):
    path = save(tmp_path, 'p.pth', {'model': vit_small_tensors})
    model = models.init_model('vit_small', 10, pretrained_path=path, height=384, width=128)
    assert model.pretrained_report.resampled == ['pos_embed from a 16x8 grid to 24x8']
    expected = weights.resample_position_table(vit_small_tensors['pos_embed'], (16, 8), (24, 8))
    assert torch.equal(model.backbone.pos_embed.detach(), expected)


def test_vit_stray_tensor_and_wrong_width_are_errors(vit_small_tensors, tmp_path):
    stray = dict(vit_small_tensors, **{'blocks.3.attn.extra_scale': torch.ones(3)})
    with pytest.raises(PretrainedWeightsError, match=r'unexpected \(e\.g\. blocks\.3\.attn\.extra_scale'):
        models.init_model('vit_small', 10, pretrained_path=save(tmp_path, 's.pth', stray), height=256, width=128)
    base = timm.create_model('vit_base_patch16_224', num_classes=0, img_size=(256, 128), depth=2).state_dict()
    with pytest.raises(PretrainedWeightsError, match=r'another shape \(e\.g\. cls_token \(1, 1, 768\) in the file, \(1, 1, 384\) in the model'):
        models.init_model('vit_small', 10, pretrained_path=save(tmp_path, 'b.pth', {'teacher': {
            'backbone.' + k: v for k, v in base.items()}}), height=256, width=128)


def test_imagenet_vit_resamples_14x14_and_drops_its_classifier(tmp_path):
    net = timm.create_model('vit_small_patch16_224', num_classes=1000)
    state = random_like(net.state_dict(), seed=2)
    model = models.init_model('vit_small', 10, pretrained_path=save(tmp_path, 'in.pth', state), height=256, width=128)
    report = model.pretrained_report
    assert report.source == 'timm / DeiT ViT (ImageNet)' and report.pixel_mean == [0.485, 0.456, 0.406]
    assert report.dropped == {'ImageNet / DINO classifier head': ['head.bias', 'head.weight']}
    assert report.resampled == ['pos_embed from a 14x14 grid to 16x8'] and not report.person_pretrained


def test_ics_conv_stem_layout(tmp_path):
    """TransReID-SSL's ICS file: patch_embed.conv.{0,1.IN,1.BN,3,4.IN,4.BN,6,7} and an 8x8 proj."""
    model = models.init_model('vit_small_ics', 10, pretrained=False, height=256, width=128,)
    stem = {k: tuple(v.shape) for k, v in model.backbone.state_dict().items() if k.startswith('patch_embed.')}
    expected = {'patch_embed.conv.0.weight': (64, 3, 7, 7), 'patch_embed.conv.3.weight': (64, 64, 3, 3),
                'patch_embed.conv.6.weight': (64, 64, 3, 3), 'patch_embed.proj.weight': (384, 64, 8, 8),
                'patch_embed.proj.bias': (384,)}
    for i in (1, 4):
        expected.update({f'patch_embed.conv.{i}.IN.weight': (32,), f'patch_embed.conv.{i}.IN.bias': (32,)})
        expected.update({f'patch_embed.conv.{i}.BN.{n}': (32,) for n in ('weight', 'bias', 'running_mean', 'running_var')})
        expected[f'patch_embed.conv.{i}.BN.num_batches_tracked'] = ()
    expected.update({f'patch_embed.conv.7.{n}': (64,) for n in ('weight', 'bias', 'running_mean', 'running_var')})
    expected['patch_embed.conv.7.num_batches_tracked'] = ()
    assert stem == expected
    state = random_like(model.backbone.state_dict(), seed=3)
    path = save(tmp_path, 'vit_small_ics_cfs_lup.pth', dino_teacher(state))
    loaded = models.init_model('vit_small_ics', 10, pretrained_path=path, height=256, width=128)
    assert torch.equal(loaded.backbone.patch_embed.proj.weight, state['patch_embed.proj.weight'])
    with pytest.raises(PretrainedWeightsError, match='vit_small_ics'):
        models.init_model('vit_small', 10, pretrained_path=path, height=256, width=128)


def transreid_checkpoint(cameras=6, stride=12, seed=4):
    """A trained TransReID ViT-S checkpoint (build_transformer layout): base.* backbone with
    sie_embed (cameras, 1, D) and its unused base.fc, BNNeck, classifier, and JPM branches."""
    grid = ((256 - 16) // stride + 1, (128 - 16) // stride + 1)
    net = timm.create_model('vit_small_patch16_224', num_classes=0, img_size=(256, 128))
    backbone = random_like(net.state_dict(), seed=seed)
    backbone['pos_embed'] = torch.randn(1, 1 + grid[0] * grid[1], 384) * 0.05
    state = {'base.' + k: v for k, v in backbone.items()}
    state.update({'base.sie_embed': torch.randn(cameras, 1, 384) * 0.05, 'base.fc.weight': torch.randn(1000, 384),
                  'base.fc.bias': torch.randn(1000), 'bottleneck.weight': torch.ones(384),
                  'bottleneck.bias': torch.zeros(384), 'bottleneck.running_mean': torch.zeros(384),
                  'bottleneck.running_var': torch.ones(384), 'bottleneck.num_batches_tracked': torch.tensor(5),
                  'classifier.weight': torch.randn(751, 384), 'b1.0.norm1.weight': torch.ones(384),
                  'b1.1.weight': torch.ones(384), 'b2.1.bias': torch.zeros(384),
                  'classifier_1.weight': torch.randn(751, 384), 'bottleneck_1.weight': torch.ones(384)})
    return state


def reference_transreid(state, images, camids, stride, heads=6, sie_weight=3.0):
    """TransReID's ViT forward written from its definition: overlapping patch conv, class token,
    + position + sie_weight x camera embedding on every token, pre-norm blocks (LayerNorm eps
    1e-6, softmax attention, GELU MLP), final norm; the class token."""
    def p(name):
        return state['base.' + name]
    x = F.conv2d(images, p('patch_embed.proj.weight'), p('patch_embed.proj.bias'), stride=stride)
    x = x.flatten(2).transpose(1, 2)
    batch, dim = len(images), x.shape[2]
    x = torch.cat([p('cls_token').expand(batch, -1, -1), x], dim=1) + p('pos_embed')
    x = x + sie_weight * p('sie_embed')[camids]
    depth = len({k.split('.')[2] for k in state if k.startswith('base.blocks.')})
    for i in range(depth):
        def b(name):
            return p(f'blocks.{i}.{name}')
        h = F.layer_norm(x, (dim,), b('norm1.weight'), b('norm1.bias'), eps=1e-6)
        q, k, v = F.linear(h, b('attn.qkv.weight'), b('attn.qkv.bias')).view(
            batch, -1, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) / math.sqrt(dim // heads)).softmax(dim=-1)
        x = x + F.linear((attention @ v).transpose(1, 2).reshape(batch, -1, dim), b('attn.proj.weight'),
                         b('attn.proj.bias'))
        h = F.layer_norm(x, (dim,), b('norm2.weight'), b('norm2.bias'), eps=1e-6)
        x = x + F.linear(F.gelu(F.linear(h, b('mlp.fc1.weight'), b('mlp.fc1.bias'))), b('mlp.fc2.weight'),
                         b('mlp.fc2.bias'))
    return F.layer_norm(x, (dim,), p('norm.weight'), p('norm.bias'), eps=1e-6)[:, 0]


def test_transreid_stride12_camera_embedding_matches_reference(tmp_path):
    state = transreid_checkpoint()
    path = save(tmp_path, 'transformer_120.pth', state)
    model = models.init_model('vit_small', 751, pretrained_path=path, height=256, width=128, patch_stride=12,
                              num_cameras=6).eval()
    report = model.pretrained_report
    assert report.source == 'TransReID trained checkpoint' and report.pixel_mean == [0.5] * 3
    assert set(report.dropped) == {"TransReID's unused fc of the backbone", 're-ID head (BNNeck, classifiers)',
                                   'JPM branches'}
    assert not report.resampled and model.grid_size == (21, 10)
    images, camids = torch.randn(2, 3, 256, 128), torch.tensor([4, 1])
    with torch.no_grad():
        torch.testing.assert_close(model(images, camids), reference_transreid(state, images, camids, 12),
                                   atol=1e-5, rtol=0)
        # The camera-agnostic path: the mean camera vector, for None, -1 or a camera never seen.
        mean_camera = dict(state, **{'base.sie_embed': state['base.sie_embed'].mean(0, keepdim=True)})
        agnostic = reference_transreid(mean_camera, images, torch.tensor([0, 0]), 12)
        torch.testing.assert_close(model(images), agnostic, atol=1e-5, rtol=0)
        torch.testing.assert_close(model(images, torch.tensor([-1, 9])), agnostic, atol=1e-5, rtol=0)


def test_transreid_camera_table_of_another_camera_set_is_reported(tmp_path):
    path = save(tmp_path, 't.pth', transreid_checkpoint(cameras=15))
    model = models.init_model('vit_small', 10, pretrained_path=path, height=256, width=128, patch_stride=12,
                              num_cameras=6)
    assert any('15 cameras in the file, 6 in this training set' in kind for kind in model.pretrained_report.dropped)
    plain = models.init_model('vit_small', 10, pretrained_path=path, height=256, width=128, patch_stride=12)
    assert any('no camera embedding' in kind for kind in plain.pretrained_report.dropped)
    # The same stride-12 file at stride 16 must be resampled from its 21x10 grid.
    strided = models.init_model('vit_small', 10, pretrained_path=path, height=256, width=128)
    assert strided.pretrained_report.resampled == ['pos_embed from a 21x10 grid to 16x8']


# ---------------------------------------------------------------------------------------------
# ResNets: LUPerson MoCo, IBN-Net, torchvision


def test_lup_moco_checkpoint_matches_torchvision_resnet50(tmp_path):
    torch.manual_seed(5)
    reference = torchvision.models.resnet50()
    state = random_like({k: v for k, v in reference.state_dict().items() if not k.startswith('fc.')}, seed=5)
    reference.load_state_dict(state, strict=False)
    moco = {f'module.encoder_q.{k}': v for k, v in state.items()}
    moco.update({f'module.encoder_k.{k}': v for k, v in state.items()})
    moco.update({'module.encoder_q.fc.0.weight': torch.randn(2048, 2048), 'module.encoder_q.fc.0.bias': torch.randn(2048),
                 'module.encoder_q.fc.2.weight': torch.randn(128, 2048), 'module.encoder_q.fc.2.bias': torch.randn(128),
                 'module.queue': torch.randn(128, 64), 'module.queue_ptr': torch.zeros(1, dtype=torch.long)})
    path = save(tmp_path, 'checkpoint_0199.pth.tar', {'epoch': 200, 'arch': 'resnet50', 'state_dict': moco,
                                                      'optimizer': {'state': {}, 'param_groups': []}})
    model = models.init_model('resnet50', 10, pretrained_path=path).eval()
    report = model.pretrained_report
    assert report.pixel_mean == weights.LUPERSON_MEAN and report.pixel_std == weights.LUPERSON_STD
    assert set(report.dropped) == {'MoCo key encoder', 'MoCo queue', 'MoCo projection head'}
    reference.eval()
    images = torch.randn(2, 3, 64, 32)
    trunk = torch.nn.Sequential(*list(reference.children())[:-1])
    with torch.no_grad():
        torch.testing.assert_close(model(images), trunk(images).flatten(1), atol=1e-5, rtol=1e-5)
    flat = models.init_model('resnet50', 10, pretrained_path=save(tmp_path, 'lup_moco_r50.pth', state))
    assert flat.pretrained_report.pixel_mean == weights.LUPERSON_MEAN and 'file name' in flat.pretrained_report.notes[0]
    with pytest.raises(PretrainedWeightsError, match="unexpected tensor 'extra' for a ResNet50"):
        models.init_model('resnet50', 10, pretrained_path=save(tmp_path, 'x.pth', dict(state, **{
            'module.extra': torch.ones(1)})))


def test_ibn_net_file_loads_into_resnet50_ibn_a_only(tmp_path):
    model = models.init_model('resnet50_ibn_a', 10, pretrained=False)
    state = random_like(model.backbone.state_dict(), seed=6)
    path = save(tmp_path, 'resnet50_ibn_a-d9d0bb7b.pth', {'state_dict': {
        'module.' + k: v for k, v in dict(state, **{'fc.weight': torch.randn(1000, 2048), 'fc.bias': torch.randn(1000)}).items()}})
    loaded = models.init_model('resnet50_ibn_a', 10, pretrained_path=path)
    assert loaded.pretrained_report.dropped == {'ImageNet classifier': ['fc.bias', 'fc.weight']}
    assert loaded.pretrained_report.source.startswith('IBN-Net')
    for key, value in state.items():
        assert torch.equal(loaded.backbone.state_dict()[key], value), key
    with pytest.raises(PretrainedWeightsError, match='use -a resnet50_ibn_a'):
        models.init_model('resnet50', 10, pretrained_path=path)
    plain = save(tmp_path, 'resnet50.pth', torchvision.models.resnet50().state_dict())
    with pytest.raises(PretrainedWeightsError, match='plain ResNet50'):
        models.init_model('resnet50_ibn_a', 10, pretrained_path=plain)
    small = save(tmp_path, 'resnet18.pth', torchvision.models.resnet18().state_dict())
    with pytest.raises(PretrainedWeightsError, match=r'another shape \(e\.g\. 0\.weight|another shape'):
        models.init_model('resnet50', 10, pretrained_path=small)


# ---------------------------------------------------------------------------------------------
# Swin: SOLIDER and ImageNet


def test_solider_teacher_loads_into_swin_tiny(tmp_path):
    net = timm.create_model('swin_tiny_patch4_window7_224', num_classes=0)
    state = random_like(net.state_dict(), seed=7)
    solider = {'backbone.' + k: v for k, v in _timm_to_solider(state).items()}
    dims = [96, 192, 384, 768]
    solider.update({'backbone.' + k: v for k, v in _solider_extras(state, dims).items() if not k.startswith('head')})
    solider.update({'head.mlp.0.weight': torch.randn(8, 768), 'head.last_layer.weight_g': torch.randn(1, 8)})
    path = save(tmp_path, 'swin_tiny_tea.pth', {'teacher': solider})
    model = models.init_model('swin_tiny', 10, pretrained_path=path, height=64, width=32)
    report = model.pretrained_report
    assert report.source.startswith('SOLIDER') and report.person_pretrained and report.pixel_mean == [0.5] * 3
    own = model.backbone.state_dict()
    for key, value in state.items():
        assert torch.equal(own[key], value), key
    _, affine, _ = weights.convert_solider_swin({k.removeprefix('backbone.'): v for k, v in solider.items()
                                                 if k.startswith('backbone.')})
    for k, (scale, shift) in affine.items():
        assert torch.equal(getattr(model, f'semantic_scale_{k}'), scale)
        assert torch.equal(getattr(model, f'semantic_shift_{k}'), shift)
    assert not torch.equal(model.semantic_scale_1, torch.ones_like(model.semantic_scale_1))


def test_imagenet_swin_file_loads_with_identity_semantic_affine(tmp_path):
    net = timm.create_model('swin_tiny_patch4_window7_224', num_classes=1000)
    state = random_like(net.state_dict(), seed=8)
    model = models.init_model('swin_tiny', 10, pretrained_path=save(tmp_path, 'swin.pth', {'model': state}),
                              height=64, width=32)
    assert model.pretrained_report.dropped == {'ImageNet classifier': ['head.fc.bias', 'head.fc.weight']}
    assert torch.equal(model.semantic_scale_2, torch.ones(384)) and not model.pretrained_report.person_pretrained


# ---------------------------------------------------------------------------------------------
# CLIP


def openai_vit_b16():
    """OpenAI's ViT-B/16 state dict layout (224: a 14x14 grid), with a few text-tower tensors."""
    state = _clip_visual('visual.', width=768, layers=12, grid=(14, 14), out_dim=512, seed=9)
    state.update({'transformer.resblocks.0.ln_1.weight': torch.ones(512), 'token_embedding.weight': torch.randn(10, 512),
                  'positional_embedding': torch.randn(77, 512), 'ln_final.weight': torch.ones(512),
                  'text_projection': torch.randn(512, 512), 'logit_scale': torch.tensor(4.6)})
    return state


def test_openai_clip_matches_reference_forward(tmp_path):
    state = openai_vit_b16()
    model = models.init_model('clip_vit_base', 10, pretrained_path=save(tmp_path, 'ViT-B-16.pt', state),
                              height=64, width=32).eval()
    report = model.pretrained_report
    assert report.source == 'OpenAI CLIP (image tower)' and report.pixel_mean == weights.OPENAI_CLIP_MEAN
    assert report.resampled == ['pos_embed from a 14x14 grid to 4x2']
    assert {'text encoder', 'projection'} <= set(report.dropped)
    # The reference forward reads the position table that the resampling test checks by hand.
    table = model.backbone.pos_embed.detach()[0].double()
    torch.testing.assert_close(table, weights.resample_position_table(
        state['visual.positional_embedding'][None].double(), (14, 14), (4, 2))[0])
    images = torch.randn(2, 3, 64, 32, dtype=torch.float64)
    model.double()  # float64: 12 random blocks amplify float32 rounding past 1e-5
    with torch.no_grad():
        state = {k: v.double() for k, v in state.items()}
        expected = _clip_reference(dict(state, **{'visual.positional_embedding': table}), images, 'visual.', heads=12)
        torch.testing.assert_close(model(images), expected, atol=1e-5, rtol=0)
    assert CLIP_TEST_HEADS  # the helpers above come from test_weights


class Holder(torch.nn.Module):
    """A TorchScript-able module that only holds tensors (submodules are Holders too)."""

    def forward(self, x):
        return x


def test_openai_clip_torchscript_archive(tmp_path):
    """OpenAI distributes CLIP as a TorchScript archive: its tensors are read without unpickling code."""
    state = _clip_visual('visual.', width=64, layers=1, grid=(14, 14), out_dim=8, seed=10)
    root = Holder()
    for key, value in state.items():
        *parents, leaf = key.split('.')
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, Holder())
            module = getattr(module, name)
        module.register_parameter(leaf, torch.nn.Parameter(value))
    path = str(tmp_path / 'ViT-tiny.pt')
    torch.jit.save(torch.jit.script(root), path)
    read = weights.read_weights(path)
    assert set(read) == set(state) and all(torch.equal(read[k], v) for k, v in state.items())


def test_clip_reid_image_encoder_with_camera_embedding(tmp_path):
    state = {k.replace('visual.', 'image_encoder.'): v for k, v in openai_vit_b16().items() if k.startswith('visual.')}
    state.update({'cv_embed': torch.randn(6, 768), 'prompt_learner.cls_ctx': torch.randn(751, 4, 512),
                  'text_encoder.ln_final.weight': torch.ones(512), 'classifier.weight': torch.randn(751, 768),
                  'classifier_proj.weight': torch.randn(751, 512), 'bottleneck.weight': torch.ones(768),
                  'bottleneck_proj.weight': torch.ones(512)})
    model = models.init_model('clip_vit_base', 10, pretrained_path=save(tmp_path, 'clipreid.pth', state),
                              height=64, width=32, num_cameras=6, camera_weight=1.0)
    report = model.pretrained_report
    assert report.source.startswith('CLIP-ReID') and report.pixel_mean == [0.5] * 3 and report.person_pretrained
    assert torch.equal(model.camera_embed.detach(), state['cv_embed'])
    images = torch.randn(2, 3, 64, 32, dtype=torch.float64)
    model.double().eval()  # float64: 12 random blocks amplify float32 rounding past 1e-5
    with torch.no_grad():  # CLIP-ReID adds the camera vector to the class token only
        plain = models.init_model('clip_vit_base', 10, pretrained_path=save(tmp_path, 'c.pth', state),
                                  height=64, width=32).double().eval()
        plain.backbone.cls_token += state['cv_embed'][3]
        torch.testing.assert_close(model(images, torch.tensor([3, 3])), plain(images), atol=1e-9, rtol=0)


# ---------------------------------------------------------------------------------------------
# timm: any model


def test_timm_model_file_and_its_preprocessing(tmp_path):
    state = random_like(timm.create_model('resnet18').state_dict(), seed=11)
    model = models.init_model('timm:resnet18', 10, pretrained_path=save(tmp_path, 'r18.pth', state),
                              global_pool='gem')
    assert model.pretrained_report.dropped == {'ImageNet classifier': ['fc.bias', 'fc.weight']}
    assert model.feat_dim == 512 and torch.equal(model.backbone.conv1.weight, state['conv1.weight'])
    with pytest.raises(PretrainedWeightsError, match='no weights are downloaded'):
        models.init_model('timm:resnet18', 10, pretrained=True)


def test_unreadable_and_unknown_files_are_errors(tmp_path):
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(b'not a checkpoint')
    with pytest.raises(PretrainedWeightsError, match='cannot read'):
        models.init_model('vit_small', 10, pretrained_path=str(bad), height=64, width=32)
    with pytest.raises(PretrainedWeightsError, match='not a ViT file'):
        models.init_model('vit_small', 10, pretrained_path=save(tmp_path, 'r.pth', torchvision.models.resnet18().state_dict()),
                          height=64, width=32)
    odd = {'pos_embed': torch.randn(1, 151, 384), 'cls_token': torch.randn(1, 1, 384)}
    with pytest.raises(PretrainedWeightsError, match='--pretrained-grid'):
        models.init_model('vit_small', 10, pretrained_path=save(tmp_path, 'o.pth', odd), height=64, width=32)


def test_camera_ids_reach_the_model_through_the_test_network():
    torch.manual_seed(0)
    model = models.vit.VisionTransformer(5, 'vit_small_patch16_224', height=64, width=32, num_cameras=3,
                                         timm_options={'depth': 2}).eval()
    net = models.TestFeatureNet(model, flip=True, normalize=True)
    images = torch.randn(4, 3, 64, 32)
    with torch.no_grad():
        by_camera = net(images, torch.tensor([0, 1, 2, -1]))
        assert not torch.allclose(by_camera[0], net(images[:1], torch.tensor([1]))[0])
        torch.testing.assert_close(by_camera[3], net(images[3:], None)[0])
        clips = images.view(2, 2, 3, 64, 32)
        pooled = model(clips, torch.tensor([1, 2]))
        frames = model(images, torch.tensor([1, 1, 2, 2])).view(2, 2, -1).mean(1)
        torch.testing.assert_close(pooled, frames)
    with pytest.raises(ValueError, match='--patch-stride and --camera-embedding apply to the ViTs'):
        models.init_model('resnet50', 5, pretrained=False, num_cameras=3)
    assert np.isfinite(by_camera.numpy()).all()


def test_gem_pooling_by_hand():
    pool = models.base.make_global_pool('gem')
    feature_map = torch.rand(2, 3, 4, 2) + 0.1
    expected = feature_map.pow(3).mean(dim=(2, 3)).pow(1 / 3)
    torch.testing.assert_close(pool(feature_map), expected)
    assert pool.p.requires_grad and float(pool.p) == 3.0
    torch.testing.assert_close(models.base.make_global_pool('max')(feature_map), feature_map.amax(dim=(2, 3)))


def test_bias_learning_rate_factor():
    model = models.init_model('resnet50', 4, pretrained=False, height=64, width=32)
    optimizer = solver.build_optimizer(solver.param_groups(model, 2.0), 'sgd', 0.01, 1e-4)
    weights_group, bias_group = optimizer.param_groups
    assert weights_group['lr'] == 0.01 and bias_group['lr'] == 0.02 and bias_group['weight_decay'] == 1e-4
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith('bias') for p in bias_group['params'])
    assert len(weights_group['params']) + len(bias_group['params']) == len(list(model.parameters()))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.5)
    assert scheduler.get_last_lr() == [0.005, 0.01]


def test_stray_tensors_and_wrong_widths_of_the_other_sources(tmp_path):
    """Every source stops on a tensor it does not expect and on a file of another width."""
    ibn = random_like(models.init_model('resnet50_ibn_a', 4, pretrained=False).backbone.state_dict())
    with pytest.raises(PretrainedWeightsError, match=r'unexpected \(e\.g\. layer2\.0\.bn1\.IN\.extra'):
        models.init_model('resnet50_ibn_a', 4, pretrained_path=save(tmp_path, 'ibn.pth', dict(
            ibn, **{'layer2.0.bn1.IN.extra': torch.ones(2)})))
    transreid = transreid_checkpoint()
    with pytest.raises(PretrainedWeightsError, match=r'unexpected \(e\.g\. blocks\.0\.attn\.gamma'):
        models.init_model('vit_small', 4, pretrained_path=save(tmp_path, 't.pth', dict(
            transreid, **{'base.blocks.0.attn.gamma': torch.ones(384)})), height=256, width=128, patch_stride=12)
    with pytest.raises(PretrainedWeightsError, match="unexpected tensor 'jpm.extra' in a TransReID"):
        models.init_model('vit_small', 4, pretrained_path=save(tmp_path, 't2.pth', dict(
            transreid, **{'jpm.extra': torch.ones(1)})), height=256, width=128, patch_stride=12)
    tiny_swin = random_like(timm.create_model('swin_tiny_patch4_window7_224', num_classes=0).state_dict())
    solider = {'backbone.' + k: v for k, v in _timm_to_solider(tiny_swin).items()}
    with pytest.raises(PretrainedWeightsError, match='missing'):  # Swin-T's 6 third-stage blocks for Swin-S's 18
        models.init_model('swin_small', 4, pretrained_path=save(tmp_path, 's.pth', {'teacher': solider}),
                          height=64, width=32)
    narrow = _clip_visual('visual.', width=64, layers=12, grid=(14, 14), out_dim=8)
    with pytest.raises(PretrainedWeightsError, match=r'another shape \(e\.g\. patch_embed\.proj\.weight \(64, 3, 16, 16\) in the file'):
        models.init_model('clip_vit_base', 4, pretrained_path=save(tmp_path, 'c.pth', narrow), height=64, width=32)
