"""Tests of the CLIP / CLIP-ReID and SOLIDER Swin key converters (weights/clip.py, weights/swin.py).

The source layouts are fabricated here from the original repositories' module definitions
(openai/CLIP clip/model.py, Syliz517/CLIP-ReID model/make_model_clipreid.py, tinyvision/SOLIDER(-REID)
swin_transformer.py); the CLIP check compares timm against a reference forward written from the raw tensors, the
SOLIDER check round-trips timm -> SOLIDER layout (forward mapping of SOLIDER's swin_converter) -> timm.
"""
import math
from functools import partial

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm
from timm.models.swin_transformer import PatchMerging, SwinTransformer
from timm.models.vision_transformer import VisionTransformer

from weights import convert_openai_clip_visual, convert_solider_swin, patch_merging_mmcv_to_timm

# --------------------------------------------------------------------------------------------------------------
# CLIP
# --------------------------------------------------------------------------------------------------------------

WIDTH, LAYERS, HEADS, PATCH, IMG = 64, 2, 4, 16, (64, 32)
GRID = (IMG[0] // PATCH, IMG[1] // PATCH)  # (4, 2)


def _clip_visual(prefix, width=WIDTH, layers=LAYERS, patch=PATCH, grid=GRID, out_dim=32, seed=0, device=None):
    """An OpenAI-layout visual tower (names and shapes of clip/model.py VisionTransformer)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, std=0.05, mean=0.0):
        if device == 'meta':
            return torch.empty(*shape, device='meta')
        return torch.randn(*shape, generator=g) * std + mean

    sd = {
        'conv1.weight': rand(width, 3, patch, patch),
        'class_embedding': rand(width, std=0.5),
        'positional_embedding': rand(grid[0] * grid[1] + 1, width, std=0.5),
        'ln_pre.weight': rand(width, std=0.1, mean=1.0),
        'ln_pre.bias': rand(width, std=0.1),
        'ln_post.weight': rand(width, std=0.1, mean=1.0),
        'ln_post.bias': rand(width, std=0.1),
        'proj': rand(width, out_dim),
    }
    for i in range(layers):
        b = f'transformer.resblocks.{i}.'
        sd.update({
            b + 'ln_1.weight': rand(width, std=0.1, mean=1.0),
            b + 'ln_1.bias': rand(width, std=0.1),
            b + 'attn.in_proj_weight': rand(3 * width, width, std=0.15),
            b + 'attn.in_proj_bias': rand(3 * width, std=0.1),
            b + 'attn.out_proj.weight': rand(width, width, std=0.1),
            b + 'attn.out_proj.bias': rand(width, std=0.1),
            b + 'ln_2.weight': rand(width, std=0.1, mean=1.0),
            b + 'ln_2.bias': rand(width, std=0.1),
            b + 'mlp.c_fc.weight': rand(4 * width, width, std=0.15),
            b + 'mlp.c_fc.bias': rand(4 * width, std=0.1),
            b + 'mlp.c_proj.weight': rand(width, 4 * width, std=0.05),
            b + 'mlp.c_proj.bias': rand(width, std=0.1),
        })
    return {prefix + k: v for k, v in sd.items()}


TEXT_KEYS = ['transformer.resblocks.0.ln_1.weight', 'transformer.resblocks.0.attn.in_proj_weight',
             'token_embedding.weight', 'positional_embedding', 'ln_final.weight', 'ln_final.bias',
             'text_projection', 'logit_scale']


def _openai_state_dict():
    sd = _clip_visual('visual.')
    sd.update({k: torch.randn(3, 5) for k in TEXT_KEYS})
    sd.update({'input_resolution': torch.tensor(224), 'context_length': torch.tensor(77),
               'vocab_size': torch.tensor(49408)})
    return sd


def _timm_clip(**kwargs):
    """Small timm ViT with vit_base_patch16_clip_quickgelu_224's kwargs (pre_norm, LayerNorm eps 1e-5, quick_gelu)."""
    args = dict(img_size=IMG, patch_size=PATCH, embed_dim=WIDTH, depth=LAYERS, num_heads=HEADS, pre_norm=True,
                class_token=True, no_embed_class=False, norm_layer=partial(LayerNorm, eps=1e-5),
                act_layer='quick_gelu', num_classes=0)
    args.update(kwargs)
    return VisionTransformer(**args).eval()


def _ln(x, sd, name):
    return F.layer_norm(x, x.shape[-1:], sd[name + '.weight'], sd[name + '.bias'], eps=1e-5)


def _clip_reference(sd, x, prefix, heads=HEADS, cv_emb=None, stride=None):
    """CLS feature after ln_post, written from the OpenAI tensors (clip/model.py + CLIP-ReID SIE;
    stride: CLIP-ReID's MODEL.STRIDE_SIZE, the patch size by default)."""
    p = lambda name: sd[prefix + name]  # noqa: E731
    vsd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    t = F.conv2d(x, p('conv1.weight'), stride=stride or p('conv1.weight').shape[-1])  # no bias
    t = t.reshape(t.shape[0], t.shape[1], -1).permute(0, 2, 1)
    cls = p('class_embedding').expand(t.shape[0], 1, -1)
    t = torch.cat([cls, t], dim=1)
    if cv_emb is not None:
        t = torch.cat([t[:, :1] + cv_emb[:, None], t[:, 1:]], dim=1)
    t = t + p('positional_embedding')
    t = _ln(t, vsd, 'ln_pre')
    batch, length, width = t.shape
    dh = width // heads
    i = 0
    while f'transformer.resblocks.{i}.ln_1.weight' in vsd:
        b = f'transformer.resblocks.{i}.'
        h = _ln(t, vsd, b + 'ln_1')
        qkv = h @ vsd[b + 'attn.in_proj_weight'].T + vsd[b + 'attn.in_proj_bias']
        q, k, v = (z.reshape(batch, length, heads, dh).transpose(1, 2) for z in qkv.split(width, dim=-1))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)
        o = (att @ v).transpose(1, 2).reshape(batch, length, width)
        t = t + o @ vsd[b + 'attn.out_proj.weight'].T + vsd[b + 'attn.out_proj.bias']
        h = _ln(t, vsd, b + 'ln_2')
        h = h @ vsd[b + 'mlp.c_fc.weight'].T + vsd[b + 'mlp.c_fc.bias']
        h = h * torch.sigmoid(1.702 * h)
        t = t + h @ vsd[b + 'mlp.c_proj.weight'].T + vsd[b + 'mlp.c_proj.bias']
        i += 1
    assert i > 0
    return _ln(t[:, 0], vsd, 'ln_post')


def test_clip_openai_layout_matches_reference_forward():
    sd = _openai_state_dict()
    before = {k: v.clone() for k, v in sd.items()}
    out, dropped = convert_openai_clip_visual(sd)
    assert sd.keys() == before.keys() and all(torch.equal(sd[k], before[k]) for k in sd)  # input untouched

    assert out['cls_token'].shape == (1, 1, WIDTH)
    assert out['pos_embed'].shape == (1, 1 + GRID[0] * GRID[1], WIDTH)
    assert dropped == {
        'text encoder': sorted(TEXT_KEYS),
        'projection': ['visual.proj'],
        'metadata': ['context_length', 'input_resolution', 'vocab_size'],
    }
    model = _timm_clip()
    model.load_state_dict(out, strict=True)

    x = torch.randn(3, 3, *IMG, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model.forward_features(x)[:, 0]
        want = _clip_reference(sd, x, 'visual.')
    assert got.shape == (3, WIDTH)
    assert (got - want).abs().max().item() < 1e-5

    # the check is sensitive: timm's exact-GELU CLIP variant with the same weights does not pass it
    gelu = _timm_clip(act_layer='gelu')
    gelu.load_state_dict(out, strict=True)
    with torch.no_grad():
        assert (gelu.forward_features(x)[:, 0] - want).abs().max().item() > 1e-3


def clipreid_extras(width=WIDTH, out_dim=32, identities=10, cameras=0, text_width=16, seed=0):
    """What a CLIP-ReID trained file holds beside its image encoder (model/make_model_clipreid.py,
    build_transformer: cv_embed with SIE, the prompt learner, the text encoder, the two classifiers
    and the two BN-necks), text tensors at `text_width`, BN-necks with random statistics."""
    g = torch.Generator().manual_seed(seed)
    extra = {
        'prompt_learner.cls_ctx': torch.randn(identities, 4, text_width, generator=g),
        'prompt_learner.token_prefix': torch.randn(1, 5, text_width, generator=g),
        'prompt_learner.token_suffix': torch.randn(1, 68, text_width, generator=g),
        'text_encoder.transformer.resblocks.0.attn.in_proj_weight': torch.randn(3 * text_width, text_width, generator=g),
        'text_encoder.positional_embedding': torch.randn(77, text_width, generator=g),
        'text_encoder.ln_final.weight': torch.randn(text_width, generator=g),
        'text_encoder.text_projection': torch.randn(text_width, out_dim, generator=g),
        'classifier.weight': torch.randn(identities, width, generator=g),
        'classifier_proj.weight': torch.randn(identities, out_dim, generator=g),
    }
    if cameras:
        extra['cv_embed'] = torch.randn(cameras, width, generator=g) * 0.5
    for name, dim in (('bottleneck', width), ('bottleneck_proj', out_dim)):
        extra.update({f'{name}.weight': 1 + 0.2 * torch.randn(dim, generator=g), f'{name}.bias': torch.zeros(dim),
                      f'{name}.running_mean': 0.2 * torch.randn(dim, generator=g),
                      f'{name}.running_var': 0.5 + torch.rand(dim, generator=g), f'{name}.num_batches_tracked': torch.tensor(7)})
    return extra


def test_clipreid_layout_with_sie_and_extra_kinds():
    cams, views = 3, 2
    sd = _clip_visual('image_encoder.', seed=5)
    extra = clipreid_extras(cameras=cams * views, seed=5)
    cv = extra['cv_embed']
    sd.update(extra)
    out, dropped = convert_openai_clip_visual(sd)

    assert torch.equal(out.pop('camera_embed'), cv)
    assert dropped == {
        'projection': ['image_encoder.proj'],
        'prompt learner': sorted(k for k in extra if k.startswith('prompt_learner.')),
        'text encoder': sorted(k for k in extra if k.startswith('text_encoder.')),
        'classifier': ['classifier.weight', 'classifier_proj.weight'],
        'BNNeck': sorted(k for k in extra if k.startswith('bottleneck')),
    }
    model = _timm_clip()
    model.load_state_dict(out, strict=True)

    # CLIP-ReID adds SIE_COE * cv_embed[cam * V + view] to the class token before pos_embed / ln_pre,
    # which is the same as a class token of cls_token + that row
    cam, view, coe = 2, 1, 1.0
    row = coe * cv[cam * views + view]
    x = torch.randn(2, 3, *IMG, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = _clip_reference(sd, x, 'image_encoder.', cv_emb=row.expand(2, -1))
        plain = model.forward_features(x)[:, 0]
        model.cls_token.add_(row)
        got = model.forward_features(x)[:, 0]
    assert (got - want).abs().max().item() < 1e-5
    assert (plain - want).abs().max().item() > 1e-3


def test_clip_keys_and_shapes_of_vit_base_quickgelu():
    """Exact key set / shapes of vit_base_patch16_clip_quickgelu_224(num_classes=0), on the meta device."""
    with torch.device('meta'):
        model = timm.create_model('vit_base_patch16_clip_quickgelu_224', num_classes=0)
    target = {k: v.shape for k, v in model.state_dict().items()}
    sd = _clip_visual('visual.', width=768, layers=12, grid=(14, 14), out_dim=512, device='meta')
    out, dropped = convert_openai_clip_visual(sd)
    assert {k: v.shape for k, v in out.items()} == target
    assert dropped == {'projection': ['visual.proj']}


@pytest.mark.parametrize('bad', ['visual.foo', 'image_encoder.attnpool.c_proj.weight',
                                 'visual.transformer.resblocks.0.attn.foo', 'foo'])
def test_clip_stray_key_raises(bad):
    sd = _clip_visual('visual.')
    sd[bad] = torch.zeros(1)
    with pytest.raises(ValueError, match=bad.replace('.', r'\.')):
        convert_openai_clip_visual(sd)


# --------------------------------------------------------------------------------------------------------------
# SOLIDER Swin
# --------------------------------------------------------------------------------------------------------------

def _swin_converter_order(tensor):
    """Swin/timm 4C order -> mmcv nn.Unfold order, as correct_unfold_{reduction,norm}_order in SOLIDER's
    swin_converter: reshape to (4, C) groups, take groups [0, 2, 1, 3], transpose to channel-major."""
    if tensor.ndim == 2:
        out_ch, in_ch = tensor.shape
        return tensor.reshape(out_ch, 4, in_ch // 4)[:, [0, 2, 1, 3], :].transpose(1, 2).reshape(out_ch, in_ch)
    in_ch = tensor.shape[0]
    return tensor.reshape(4, in_ch // 4)[[0, 2, 1, 3], :].transpose(0, 1).reshape(in_ch)


def _timm_to_solider(timm_sd, num_stages=4):
    """timm Swin keys -> SOLIDER teacher backbone keys (mmcv layout), the forward mapping."""
    out = {}
    for k, v in timm_sd.items():
        if k.startswith('patch_embed.'):
            out[k.replace('patch_embed.proj.', 'patch_embed.projection.')] = v
        elif k.startswith('norm.'):
            out['norm%d.%s' % (num_stages - 1, k[5:])] = v
        elif '.downsample.' in k:
            stage = int(k.split('.')[1])
            out[f'stages.{stage - 1}.downsample.' + k.split('.downsample.')[1]] = _swin_converter_order(v)
        else:
            assert k.startswith('layers.'), k
            k = 'stages.' + k[len('layers.'):]
            k = k.replace('.attn.', '.attn.w_msa.').replace('.mlp.fc1.', '.ffn.layers.0.0.')
            out[k.replace('.mlp.fc2.', '.ffn.layers.1.')] = v
    return out


def _solider_extras(timm_sd, dims, window=7, seed=0, device=None):
    """What a SOLIDER teacher file adds: norm0..2, relative_position_index buffers, semantic embeddings, DINO head."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.empty(*shape, device='meta') if device == 'meta' else torch.randn(*shape, generator=g)

    extra = {}
    for i, c in enumerate(dims[:-1]):
        extra[f'norm{i}.weight'], extra[f'norm{i}.bias'] = rand(c), rand(c)
    for k in timm_sd:
        if k.endswith('.attn.relative_position_bias_table'):
            key = 'stages.' + k[len('layers.'):].replace('.attn.', '.attn.w_msa.')
            extra[key.replace('relative_position_bias_table', 'relative_position_index')] = torch.zeros(
                window * window, window * window, dtype=torch.long, device=device)
    for i in range(len(dims)):
        c = dims[min(i + 1, len(dims) - 1)]  # SOLIDER: Linear(2, num_features[i+1]), i clamped to len - 2
        for w in 'wb':
            extra[f'semantic_embed_{w}.{i}.weight'] = rand(c, 2) * 0.5
            extra[f'semantic_embed_{w}.{i}.bias'] = rand(c) * 0.5
    extra.update({'head.mlp.0.weight': rand(8, dims[-1]), 'head.mlp.0.bias': rand(8),
                  'head.mlp.2.weight': rand(8, 8), 'head.mlp.4.weight': rand(4, 8),
                  'head.last_layer.weight_g': rand(16, 1), 'head.last_layer.weight_v': rand(16, 4)})
    return extra


def _small_swin():
    return SwinTransformer(img_size=224, patch_size=4, window_size=7, embed_dim=16, depths=(2, 1, 2, 1),
                           num_heads=(1, 2, 2, 4), num_classes=0)


def _expected_dropped(extra, num_stages=4):
    return {
        'DINO head': sorted(k for k in extra if k.startswith('head.')),
        'unused stage norms': sorted(k for k in extra if k.startswith('norm')),
        'buffers rebuilt by the model': sorted(k for k in extra if k.endswith('relative_position_index')),
        'unused semantic embedding': sorted(k for k in extra if k.startswith('semantic_embed_')
                                            and k.split('.')[1] == str(num_stages - 1)),
    }


@pytest.mark.parametrize('factory', [_small_swin, lambda: timm.create_model('swin_tiny_patch4_window7_224',
                                                                             num_classes=0)],
                         ids=['small', 'swin_tiny'])
def test_solider_round_trip_exact(factory):
    torch.manual_seed(0)
    model = factory()
    timm_sd = {k: v.clone() for k, v in model.state_dict().items()}
    # random LayerNorm weights too, so any mix-up of the 4C order or of tensors shows
    for k, v in timm_sd.items():
        if v.ndim == 1:
            v.normal_()
    dims = [model.layers[i].blocks[0].norm1.normalized_shape[0] for i in range(4)]
    solider = _timm_to_solider(timm_sd)
    extra = _solider_extras(timm_sd, dims)
    solider.update(extra)

    out, affine, dropped = convert_solider_swin(solider)
    assert out.keys() == timm_sd.keys()
    for k in timm_sd:
        assert torch.equal(out[k], timm_sd[k]), k
    # the permutation is not a no-op on these tensors (else the check above would prove nothing about it)
    assert not torch.equal(solider['stages.0.downsample.reduction.weight'],
                           timm_sd['layers.1.downsample.reduction.weight'])
    fresh = factory()
    fresh.load_state_dict(out, strict=True)
    assert dropped == _expected_dropped(extra)
    assert sorted(affine) == [1, 2, 3]
    for k in (1, 2, 3):
        assert affine[k][0].shape == affine[k][1].shape == (dims[k],)


@pytest.mark.parametrize('name', ['swin_tiny_patch4_window7_224', 'swin_small_patch4_window7_224',
                                  'swin_base_patch4_window7_224'])
def test_solider_keys_and_shapes_of_timm_swin(name):
    with torch.device('meta'):
        model = timm.create_model(name, num_classes=0)
    timm_sd = model.state_dict()
    dims = [model.layers[i].blocks[0].norm1.normalized_shape[0] for i in range(4)]
    solider = _timm_to_solider(timm_sd)
    extra = _solider_extras(timm_sd, dims, device='meta')
    solider.update({k: v for k, v in extra.items() if not k.startswith('semantic_embed_')})
    out, affine, dropped = convert_solider_swin(solider)
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in timm_sd.items()}
    assert affine == {}
    assert 'unused semantic embedding' not in dropped


def test_patch_merging_unpermute_is_inverse_of_swin_converter():
    g = torch.Generator().manual_seed(3)
    for tensor in (torch.randn(12, 24, generator=g), torch.randn(24, generator=g)):
        assert torch.equal(patch_merging_mmcv_to_timm(_swin_converter_order(tensor)), tensor)
        assert torch.equal(_swin_converter_order(patch_merging_mmcv_to_timm(tensor)), tensor)
        assert not torch.equal(patch_merging_mmcv_to_timm(tensor), tensor)


def test_patch_merging_unfold_order_vs_timm_order():
    """Build the merged 4C vector with mmcv's nn.Unfold and with timm's PatchMerging, compare."""
    batch, height, width, c = 2, 4, 6, 3
    x = torch.arange(batch * height * width * c, dtype=torch.float32).reshape(batch, height, width, c)
    mmcv_vec = F.unfold(x.permute(0, 3, 1, 2), kernel_size=2, stride=2).transpose(1, 2)  # (B, L, 4C)
    merge = PatchMerging(dim=c)
    merge.norm, merge.reduction = torch.nn.Identity(), torch.nn.Identity()
    timm_vec = merge(x).reshape(batch, -1, 4 * c)  # (B, L, 4C), L row-major like Unfold
    # un-permuting an index vector gives, for each timm position, the mmcv position it takes its value from
    source = patch_merging_mmcv_to_timm(torch.arange(4 * c))
    assert torch.equal(mmcv_vec[..., source], timm_vec)
    assert not torch.equal(mmcv_vec, timm_vec)
    # hand example at the top-left 2x2 patch, channel 1: timm groups are (dy, dx) = (0,0), (1,0), (0,1), (1,1)
    assert [timm_vec[0, 0, g * c + 1].item() for g in range(4)] == [x[0, dy, dx, 1].item()
                                                                    for dy, dx in ((0, 0), (1, 0), (0, 1), (1, 1))]
    # and mmcv's Unfold order is channel-major, then (dy, dx) row by row
    assert [mmcv_vec[0, 0, 1 * 4 + o].item() for o in range(4)] == [x[0, dy, dx, 1].item()
                                                                    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1))]


def test_patch_merging_converted_weights_compute_the_same():
    """mmcv PatchMerging (Unfold -> LN -> Linear) with SOLIDER weights == timm PatchMerging with converted ones."""
    g = torch.Generator().manual_seed(4)
    c = 5
    x = torch.randn(2, 6, 4, c, generator=g)
    w, ln_w, ln_b = torch.randn(2 * c, 4 * c, generator=g), torch.randn(4 * c, generator=g), torch.randn(4 * c,
                                                                                                        generator=g)
    tokens = F.unfold(x.permute(0, 3, 1, 2), kernel_size=2, stride=2).transpose(1, 2)
    want = F.linear(F.layer_norm(tokens, (4 * c,), ln_w, ln_b), w).reshape(2, 3, 2, 2 * c)
    merge = PatchMerging(dim=c)
    merge.load_state_dict({'reduction.weight': patch_merging_mmcv_to_timm(w),
                           'norm.weight': patch_merging_mmcv_to_timm(ln_w),
                           'norm.bias': patch_merging_mmcv_to_timm(ln_b)})
    with torch.no_grad():
        assert torch.allclose(merge(x), want, atol=1e-5)
        merge.load_state_dict({'reduction.weight': w, 'norm.weight': ln_w, 'norm.bias': ln_b})
        assert not torch.allclose(merge(x), want, atol=1e-2)


@pytest.mark.parametrize('lam', [0.2, 0.7])
def test_solider_semantic_affine_by_hand(lam):
    model = _small_swin()
    timm_sd = model.state_dict()
    dims = [16, 32, 64, 128]
    solider = _timm_to_solider(timm_sd)
    extra = _solider_extras(timm_sd, dims, seed=9)
    solider.update(extra)
    _, affine, dropped = (convert_solider_swin(solider) if lam == 0.2
                          else convert_solider_swin(solider, semantic_weight=lam))
    assert sorted(affine) == [1, 2, 3]
    for k in (1, 2, 3):
        i = k - 1  # SOLIDER stage whose downsampled output feeds timm layer k
        ww, bw = extra[f'semantic_embed_w.{i}.weight'].double(), extra[f'semantic_embed_w.{i}.bias'].double()
        wb, bb = extra[f'semantic_embed_b.{i}.weight'].double(), extra[f'semantic_embed_b.{i}.bias'].double()
        scale = [math.log1p(math.exp(ww[ch, 0] * lam + ww[ch, 1] * (1 - lam) + bw[ch])) for ch in range(dims[k])]
        shift = [wb[ch, 0] * lam + wb[ch, 1] * (1 - lam) + bb[ch] for ch in range(dims[k])]
        assert torch.allclose(affine[k][0].double(), torch.tensor(scale, dtype=torch.float64), atol=1e-6)
        assert torch.allclose(affine[k][1].double(), torch.tensor(shift, dtype=torch.float64), atol=1e-6)
        assert (affine[k][0] > 0).all()
    # the last stage's affine never reaches SOLIDER's pooled output: dropped, not returned
    assert dropped['unused semantic embedding'] == sorted(
        f'semantic_embed_{w}.3.{p}' for w in 'wb' for p in ('weight', 'bias'))

    _, off, dropped_off = convert_solider_swin(solider, semantic_weight=-1)
    assert off == {}
    assert len(dropped_off['unused semantic embedding']) == 16


@pytest.mark.parametrize('bad', ['stages.0.blocks.0.attn.w_msa.foo', 'absolute_pos_embed', 'norm4.weight',
                                 'stages.3.downsample.reduction.weight', 'semantic_embed_w.4.weight', 'foo.bar'])
def test_solider_stray_key_raises(bad):
    model = _small_swin()
    solider = _timm_to_solider(model.state_dict())
    solider[bad] = torch.zeros(4)
    with pytest.raises(ValueError, match=bad.replace('.', r'\.')):
        convert_solider_swin(solider)


def test_solider_incomplete_semantic_embedding_raises():
    model = _small_swin()
    solider = _timm_to_solider(model.state_dict())
    solider['semantic_embed_w.0.weight'] = torch.zeros(32, 2)
    solider['semantic_embed_w.0.bias'] = torch.zeros(32)
    with pytest.raises(ValueError, match=r'semantic_embed_b\.0\.weight'):
        convert_solider_swin(solider)
