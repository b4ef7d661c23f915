"""LightMBN LMBN_n: its files (`backone.` as published, `backbone.` as BoxMOT renamed it) load
strictly, the 7 part features are LightMBN's (a minimal reference of the pooling and the necks
written here), both test-feature conventions, ONNX export, and `--evaluate --resume` of a file.

One-off check, outside the suite (jixunbo/LightMBN 1f4ec0d, model/{lmbn_n,osnet,attention,
bnneck}.py imported as a package, ImageNet download stubbed, num_classes 751, norms randomised):
its state dict has 1249 tensors (FILE_TENSORS; with the 7 classifiers), loads into ours by the
converter's renaming with strict=True, and the features agree exactly (max |difference| 0.0 at
384x128, 256x128 and 250x118, batch 2) for LightMBN's evaluation (engine_v3.extract_feature: flip
sum, per-part L2, flatten) and for the flat output BoxMOT uses.
"""
import numpy as np
import pytest
import torch

import checkpoints
from conftest import FAST, parse_results, run_script
from feature_extractor import FeatureExtractor
from model_config import CONFIG_DEFAULTS, CheckpointError, from_checkpoint
from models import init_model
from models.lightmbn import PART_DIM, PARTS
from test_osnet import onnx_max_difference

NUM_IDS = 751
FILE_TENSORS = 1249  # LightMBN's LMBN_n state dict, classifiers and BN buffers included
CLASSIFIERS = [f'reduction_{i}.classifier.weight' for i in range(5)] + \
              [f'reduction_ch_{i}.classifier.weight' for i in range(2)]
# Representative tensors of LightMBN's tree (model/lmbn_n.py on its osnet_x1_0), trunk spelt `backone`
KEYS = {
    'backone.0.conv.weight': (64, 3, 7, 7), 'backone.0.bn.running_var': (64,),
    'backone.2.0.conv1.conv.weight': (64, 64, 1, 1), 'backone.2.0.conv2a.conv2.weight': (64, 1, 3, 3),
    'backone.2.0.gate.fc1.weight': (4, 64, 1, 1), 'backone.2.1.conv3.bn.running_mean': (256,),
    'backone.2.2.0.conv.weight': (256, 256, 1, 1), 'backone.3.conv1.conv.weight': (96, 256, 1, 1),
    'backone.3.downsample.conv.weight': (384, 256, 1, 1),
    # conv3[1:] keeps its indices: the branches' first stage is `.0.1` (block) and `.0.2` (transition)
    'global_branch.0.1.conv1.conv.weight': (96, 384, 1, 1), 'global_branch.0.2.0.conv.weight': (384, 384, 1, 1),
    'partial_branch.1.0.downsample.conv.weight': (512, 384, 1, 1),
    'channel_branch.1.1.conv2d.3.conv1.weight': (128, 128, 1, 1),
    'channel_branch.2.conv.weight': (512, 512, 1, 1), 'global_branch.2.bn.running_var': (512,),
    'batch_drop_block.drop_batch_bottleneck.conv1.conv.weight': (128, 512, 1, 1),
    'batch_drop_block.drop_batch_bottleneck.gate.fc2.bias': (128,),
    'reduction_0.reduction.weight': (512, 512, 1, 1), 'reduction_4.bn.running_mean': (512,),
    'reduction_2.classifier.weight': (NUM_IDS, 512), 'shared.0.weight': (512, 256, 1, 1),
    'shared.1.running_var': (512,), 'reduction_ch_1.bn.bias': (512,),
    'reduction_ch_0.classifier.weight': (NUM_IDS, 512),
}


def _randomise(model, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.dtype.is_floating_point and tensor.dim() == 1:
                if name.endswith(('running_var', 'weight')):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
                else:
                    tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
    return model


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return _randomise(init_model('lmbn_n', 0, pretrained=False)).eval()


def lightmbn_file(model, trunk='backone'):
    """A LightMBN state dict in the published layout: our tensors under LightMBN's names, with the
    seven classifiers."""
    state = {(trunk + k.removeprefix('backbone') if k.startswith('backbone.') else k): v.clone()
             for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(5)
    state.update({name: torch.randn(NUM_IDS, PART_DIM, generator=generator) * 0.001 for name in CLASSIFIERS})
    return state


def test_tree_is_lightmbns(model):
    published = lightmbn_file(model)
    assert len(published) == FILE_TENSORS
    for name, shape in KEYS.items():
        assert tuple(published[name].shape) == shape, name


def _bn(features, norm):
    """Eval-mode BatchNorm by hand: (N, C) -> (N, C)."""
    return (features - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps) * norm.weight + norm.bias


def _reference_parts(model, images):
    """LMBN_n's eval output (N, 512, 7) from the three branch maps, pooled and reduced by hand."""
    x = model.backbone(images)
    glo = model.batch_drop_block['drop_batch_bottleneck'](model.global_branch(x))
    par, cha = model.partial_branch(x), model.channel_branch(x)
    rows = par.shape[2] // 2  # even map heights here: the halves do not overlap
    pooled = {0: glo.mean(dim=(2, 3)), 4: glo.amax(dim=(2, 3)), 1: par.amax(dim=(2, 3)),
              2: par[:, :, :rows].mean(dim=(2, 3)), 3: par[:, :, rows:].mean(dim=(2, 3))}
    parts = {}
    for index, vector in pooled.items():
        neck = getattr(model, f'reduction_{index}')
        parts[index] = _bn(vector @ neck['reduction'].weight.flatten(1).T, neck['bn'])
    channel = cha.mean(dim=(2, 3))
    shared_conv, shared_bn = model.shared[0].weight.flatten(1), model.shared[1]
    chs = [torch.relu(_bn(half @ shared_conv.T, shared_bn)) for half in (channel[:, :256], channel[:, 256:])]
    chs = [_bn(c, getattr(model, f'reduction_ch_{i}')['bn']) for i, c in enumerate(chs)]
    # LightMBN's order: glo, glo_drop (reduction_4), g_par (reduction_1), p0, p1, c0, c1
    return torch.stack([parts[0], parts[4], parts[1], parts[2], parts[3], *chs], dim=2)


@pytest.mark.parametrize('size', [(384, 128), (256, 128)])
def test_part_features_and_both_conventions_match_reference(model, size):
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        parts = _reference_parts(model, images)
        flipped = _reference_parts(model, images.flip(dims=[3]))
        assert parts.shape == (2, PART_DIM, PARTS)
        torch.testing.assert_close(model.part_features(images), parts, atol=1e-5, rtol=1e-5)
        summed = parts + flipped  # LightMBN's evaluation: each part L2-normalised over its channels
        expected = torch.empty(2, PART_DIM * PARTS)
        for part in range(PARTS):  # flattened channel-major: part p of channel c at c * 7 + p
            vector = summed[:, :, part]
            expected[:, part::PARTS] = vector / vector.norm(dim=1, keepdim=True)
        features = model(images)
        torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(features.norm(dim=1), torch.full((2,), PARTS ** 0.5))
        model.test_feature = 'boxmot'
        try:
            torch.testing.assert_close(model(images), parts.reshape(2, -1), atol=1e-5, rtol=1e-5)
        finally:
            model.test_feature = 'lightmbn'


@pytest.mark.parametrize('trunk,wrapped', [('backone', False), ('backbone', True)])
def test_published_file_loads_strictly_as_a_checkpoint(model, tmp_path, trunk, wrapped):
    state = lightmbn_file(model, trunk)
    path = tmp_path / 'lmbn_n_market.pth'
    torch.save({'state_dict': {'module.' + k: v for k, v in state.items()}, 'epoch': 130} if wrapped else state, path)
    checkpoint = checkpoints.load_checkpoint(str(path))
    assert sorted(checkpoint['dropped']['classifier']) == sorted(CLASSIFIERS)
    assert 'LightMBN' in checkpoint['source']
    rebuilt, config = from_checkpoint(checkpoint)
    assert (config['arch'], config['height'], config['width'], config['dist_metric']) == ('lmbn_n', 384, 128, 'cosine')
    assert config['arch_options'] == {'test_feature': 'lightmbn'}
    images = torch.randn(1, 3, 256, 128)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(images), model(images))
    if wrapped:  # the start of fine-tuning on other identities: everything but the classifiers
        report = init_model('lmbn_n', 10, pretrained_path=str(path)).pretrained_report
        assert sorted(report.dropped['classifier']) == sorted(CLASSIFIERS)
        assert report.loaded == len(rebuilt.state_dict())


def test_stray_or_misshapen_tensor_is_named(model, tmp_path):
    state = lightmbn_file(model)
    state['reduction_5.bn.weight'] = torch.ones(512)
    torch.save(state, tmp_path / 'stray.pth')
    with pytest.raises(CheckpointError, match='reduction_5.bn.weight'):
        checkpoints.load_checkpoint(str(tmp_path / 'stray.pth'))
    state = lightmbn_file(model)
    state['reduction_0.reduction.weight'] = torch.zeros(256, 512, 1, 1)  # a narrower LMBN
    torch.save(state, tmp_path / 'narrow.pth')
    with pytest.raises(CheckpointError, match=r'reduction_0.reduction.weight is of shape \(256, 512, 1, 1\)'):
        checkpoints.load_checkpoint(str(tmp_path / 'narrow.pth'))
    state = lightmbn_file(model)
    state['global_branch.2.conv.weight'] = torch.zeros(512, 384, 1, 1)
    torch.save(state, tmp_path / 'wrong.pth')
    with pytest.raises(CheckpointError, match='global_branch.2.conv.weight'):
        from_checkpoint(checkpoints.load_checkpoint(str(tmp_path / 'wrong.pth')))
    state = lightmbn_file(model)
    del state['reduction_ch_1.bn.running_var']
    torch.save(state, tmp_path / 'missing.pth')
    with pytest.raises(CheckpointError, match='reduction_ch_1.bn.running_var'):
        from_checkpoint(checkpoints.load_checkpoint(str(tmp_path / 'missing.pth')))


def test_onnx_export_matches_pytorch(model, tmp_path):
    """LightMBN's test feature (both passes, per-part L2) in one graph, dynamic batch. About a
    minute on a 2-core CPU: torch.onnx's dynamo capture and optimiser of a graph of three OSNet
    branches, twice (the mirror pass); a smaller LightMBN does not exist."""
    checkpoint = {'state_dict': model.state_dict(),
                  'model': dict(CONFIG_DEFAULTS, arch='lmbn_n', arch_options={'test_feature': 'lightmbn'},
                                height=128, width=64, dist_metric='cosine')}
    assert onnx_max_difference(checkpoint, str(tmp_path / 'lmbn_n.onnx'))[1] <= 1e-5


def test_evaluate_resume_of_a_lightmbn_file(model, synthetic_root, tmp_path):
    path = tmp_path / 'lmbn_n_market.pth'
    torch.save(lightmbn_file(model), path)
    result = run_script('train_img_model_xent.py', *FAST, '--root', synthetic_root, '-a', 'lmbn_n', '--evaluate',
                        '--resume', path, '--save-dir', tmp_path)
    assert 'LightMBN lmbn_n file' in result.stdout and 'dropped 7 (classifier)' in result.stdout
    assert len(parse_results(result.stdout)) == 1
    images = [np.random.default_rng(i).integers(0, 256, (64, 32, 3), dtype=np.uint8) for i in range(2)]
    features = FeatureExtractor(str(path))(images)
    assert features.shape == (2, PART_DIM * PARTS)
