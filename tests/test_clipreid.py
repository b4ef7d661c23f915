"""CLIP-ReID trained checkpoints whole (weights/clipreid.py, clipreid_vit_base in models/vit.py).

Files are fabricated in CLIP-ReID's published layout (test_weights._clip_visual: the image encoder
of model/clip/model.py under `image_encoder.`; clipreid_extras: the rest of build_transformer's
state dict). The feature is checked against a reference forward written from the raw tensors
(test_weights._clip_reference plus the concatenation and BN-necks of build_transformer.forward in
eval mode). Most tests use a ViT of width 128 and 2 blocks (CLIP's 64-d heads, so 2 heads) at the
real 256x128 grid; the ViT-B-16 size is checked on the meta device, key by key.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import checkpoints
import models
from feature_extractor import FeatureExtractor
from model_config import from_checkpoint
from test_weights import _clip_reference, _clip_visual, clipreid_extras
from weights import HALF, adapt_checkpoint

WIDTH, LAYERS, PROJECTION = 128, 2, 64


def clipreid_file(path=None, cameras=0, grid=(16, 8), width=WIDTH, layers=LAYERS, projection=PROJECTION,
                  device=None, seed=0):
    """A CLIP-ReID trained state dict ({name: tensor}, as torch.save(model.state_dict()) writes it),
    saved to `path` under DataParallel's 'module.' when given."""
    state = _clip_visual('image_encoder.', width=width, layers=layers, grid=grid, out_dim=projection,
                         device=device, seed=seed)
    extras = clipreid_extras(width=width, out_dim=projection, cameras=cameras, seed=seed)
    state.update({k: v.to(device) if device else v for k, v in extras.items()})
    if path is not None:
        torch.save({'module.' + k: v for k, v in state.items()}, path)
    return state


def reference_feature(state, images, neck_feat, camids=None, stride=16):
    """build_transformer.forward in eval mode from the raw tensors: the class token after ln_post
    and its projection, concatenated before or after the two BN-necks (eps 1e-5)."""
    cv = None if camids is None else state['cv_embed'][camids] * 1.0  # SIE_COE 1.0
    token = _clip_reference(state, images, 'image_encoder.', heads=WIDTH // 64, cv_emb=cv, stride=stride)
    parts = [token, token @ state['image_encoder.proj']]
    if neck_feat == 'after':
        parts = [F.batch_norm(part, state[f'{neck}.running_mean'], state[f'{neck}.running_var'],
                              state[f'{neck}.weight'], state[f'{neck}.bias'], eps=1e-5)
                 for part, neck in zip(parts, ('bottleneck', 'bottleneck_proj'))]
    return torch.cat(parts, dim=1)


def test_vit_b16_file_fits_clipreid_vit_base_key_by_key():
    """The published size (width 768, 12 blocks, projection 512, 16x8 grid, SIE over 15 cameras)
    converts to exactly the tensors of clipreid_vit_base, with no arch_options."""
    state = clipreid_file(cameras=15, width=768, layers=12, projection=512, device='meta')
    checkpoint = adapt_checkpoint({'state_dict': state}, 'ViT-B-16_60.pth')
    config = checkpoint['model']
    assert config['arch'] == 'clipreid_vit_base' and config['arch_options'] == {}
    assert (config['height'], config['width'], config['patch_stride'], config['num_cameras']) == (256, 128, 16, 15)
    with torch.device('meta'):
        model = models.init_model('clipreid_vit_base', 0, pretrained=False, neck='bnneck', num_cameras=15)
    assert {k: v.shape for k, v in checkpoint['state_dict'].items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    assert model.feat_dim == 768 + 512


@pytest.mark.parametrize('grid, stride, cameras', [((16, 8), 16, 0), ((21, 10), 12, 3)])
def test_file_loads_strictly_and_gives_clipreids_feature(tmp_path, capsys, grid, stride, cameras):
    """256x128 at stride 16 (16x8) and CLIP-ReID's SIE+OLP stride 12 (21x10) with a camera
    embedding: the feature before (CLIP-ReID's default) and after the BN-necks equals the
    reference; what was recognised and dropped is reported."""
    path = tmp_path / 'ViT-B-16_60.pth'
    state = clipreid_file(path, cameras=cameras, grid=grid)
    checkpoint = checkpoints.load_checkpoint(str(path), report=True)
    report = capsys.readouterr().out
    assert 'CLIP-ReID trained checkpoint' in report and f'stride {stride}' in report
    assert checkpoint['dropped'].keys() == {'classifier', 'prompt learner', 'text encoder'}
    config = checkpoint['model']
    assert (config['height'], config['width'], config['patch_stride']) == (256, 128, stride)
    assert config['pixel_mean'] == HALF and config['pixel_std'] == HALF and config['dist_metric'] == 'cosine'
    images = torch.randn(2, 3, 256, 128, generator=torch.Generator().manual_seed(1))
    camids = torch.tensor([0, cameras - 1]) if cameras else None
    for neck_feat in ('before', 'after'):
        model, _ = from_checkpoint(dict(checkpoint, model=dict(config, neck_feat=neck_feat)))
        with torch.no_grad():
            got = model(images, camids)
            want = reference_feature(state, images, neck_feat, camids, stride)
        assert got.shape == (2, WIDTH + PROJECTION)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_feature_extractor_normalises_with_half(tmp_path):
    """FeatureExtractor on the file: mean and std 0.5, the cosine metric's unit-length feature."""
    path = tmp_path / 'clipreid.pth'
    state = clipreid_file(path, seed=3)
    crops = [np.random.default_rng(i).integers(0, 256, (256, 128, 3), dtype=np.uint8) for i in range(2)]
    got = FeatureExtractor(str(path))(crops)
    images = (torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        want = F.normalize(reference_feature(state, images, 'before'), dim=1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize('change, message', [
    (lambda s: s.update({'image_encoder.extra.weight': torch.zeros(3)}), "unexpected tensor 'image_encoder.extra.weight'"),
    (lambda s: s.update({'head.weight': torch.zeros(3)}), "unexpected tensor 'head.weight'"),
    (lambda s: s.update({'bottleneck_proj.weight': torch.ones(PROJECTION - 1)}),
     r'bottleneck_proj.weight has shape \(63,\), a CLIP-ReID file of width 128 \(projection 64\) has \(64,\)'),
    (lambda s: s.update({'image_encoder.transformer.resblocks.1.mlp.c_fc.weight': torch.zeros(4 * WIDTH, WIDTH - 8)}),
     r'image_encoder.transformer.resblocks.1.mlp.c_fc.weight has shape \(512, 120\)'),
    (lambda s: s.update({'classifier_proj.weight': torch.zeros(10, PROJECTION + 1)}), 'classifier_proj.weight has shape'),
    (lambda s: s.pop('bottleneck_proj.running_var'), 'bottleneck_proj.running_var .a BN-neck.* is missing'),
    (lambda s: s.pop('bottleneck.weight'), 'bottleneck.weight .a BN-neck.* is missing'),
    (lambda s: s.pop('image_encoder.transformer.resblocks.0.ln_2.bias'), 'resblocks.0.ln_2.bias is missing'),
    (lambda s: s.update({'image_encoder.attnpool.c_proj.weight': torch.zeros(3)}), 'RN50 file'),
])
def test_a_file_that_does_not_fit_is_an_error_naming_the_tensor(tmp_path, change, message):
    state = clipreid_file()
    change(state)
    path = tmp_path / 'bad.pth'
    torch.save(state, path)
    with pytest.raises(checkpoints.CheckpointError, match=message):
        checkpoints.load_checkpoint(str(path))


def test_image_encoder_alone_stays_pretrained_weights(tmp_path):
    """A file of the image encoder only (no BN-neck, prompt learner or classifier) is no trained
    CLIP-ReID model; as --pretrained-path of clipreid_vit_base its projection is loaded too."""
    state = {k: v for k, v in clipreid_file().items() if k.startswith('image_encoder.')}
    assert adapt_checkpoint({'state_dict': state}, 'encoder.pth') == {'state_dict': state}
    path = tmp_path / 'encoder.pth'
    torch.save(state, path)
    options = {'timm_options': {'embed_dim': WIDTH, 'depth': LAYERS, 'num_heads': 2}, 'projection': PROJECTION}
    model = models.init_model('clipreid_vit_base', 5, pretrained_path=str(path), neck='bnneck', arch_options=options)
    assert torch.equal(model.proj.detach(), state['image_encoder.proj'])
    assert 'projection' not in model.pretrained_report.dropped
