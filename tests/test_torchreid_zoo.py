"""torchreid's zoo models beyond OSNet (resnet50, resnet50_fc512, mlfn, hacnn, mobilenetv2_x1_0 /
x1_4): the backbones' names and shapes are those of torchreid 0.2.5's trees (so its files load
strictly once the classifier is dropped), and their features are torchreid's.

The counts below were checked against torchreid 0.2.5 itself (the sdist's
torchreid/reid/models/{resnet,mlfn,hacnn,mobilenetv2}.py imported by file path, built with
pretrained=False, num_classes=751) in a one-off script: state-dict tensors with the classifier and
the BN buffers, and parameters less the classifier, equal ours. With torchreid's files present
(TORCHREID_MODELS, a folder holding those four files), test_features_match_torchreid repeats the
feature comparison; the rest of this module needs no torchreid.
"""
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import checkpoints
import weights
from feature_extractor import FeatureExtractor
from model_config import CONFIG_DEFAULTS, CheckpointError, from_checkpoint
from models import init_model
from models.hacnn import HACNN_SIZE, _sample_region
from models.mlfn import GROUPS, _FactorModule
from test_osnet import onnx_max_difference

ARCHS = ('torchreid_resnet50', 'torchreid_resnet50_fc512', 'mlfn', 'hacnn', 'mobilenetv2_x1_0', 'mobilenetv2_x1_4')
NUM_IDS = 751
TORCHREID_MODELS = Path(os.environ.get('TORCHREID_MODELS', '/work/ref-zoo/torchreid-0.2.5/torchreid/reid/models'))
# torchreid's file: every tensor, classifier and BatchNorm buffers included
FILE_TENSORS = {'torchreid_resnet50': 320, 'torchreid_resnet50_fc512': 327, 'mlfn': 669, 'hacnn': 535,
                'mobilenetv2_x1_0': 320, 'mobilenetv2_x1_4': 320}
# parameters without the classifier(s)
BACKBONE_PARAMETERS = {'torchreid_resnet50': 23_508_032, 'torchreid_resnet50_fc512': 24_558_144,
                       'mlfn': 32_473_024, 'hacnn': 2_929_112, 'mobilenetv2_x1_0': 2_224_960,
                       'mobilenetv2_x1_4': 4_291_604}
FEATURE_DIMS = {'torchreid_resnet50': 2048, 'torchreid_resnet50_fc512': 512, 'mlfn': 1024, 'hacnn': 1024,
                'mobilenetv2_x1_0': 1280, 'mobilenetv2_x1_4': 1792}
# torchreid's classifier tensors: (name, shape) with n = NUM_IDS
CLASSIFIERS = {arch: {'classifier.weight': (NUM_IDS, FEATURE_DIMS[arch]), 'classifier.bias': (NUM_IDS,)}
               for arch in ARCHS if arch != 'hacnn'}
CLASSIFIERS['hacnn'] = {'classifier_global.weight': (NUM_IDS, 512), 'classifier_global.bias': (NUM_IDS,),
                        'classifier_local.weight': (NUM_IDS, 512), 'classifier_local.bias': (NUM_IDS,)}
# Representative tensors of torchreid's trees, read off its code (names and shapes).
KEYS = {
    'torchreid_resnet50': {
        'conv1.weight': (64, 3, 7, 7), 'bn1.running_var': (64,), 'layer1.0.downsample.0.weight': (256, 64, 1, 1),
        'layer3.5.conv2.weight': (256, 256, 3, 3), 'layer4.2.conv3.weight': (2048, 512, 1, 1),
        'layer4.2.bn3.num_batches_tracked': ()},
    'torchreid_resnet50_fc512': {
        'layer4.0.downsample.1.running_mean': (2048,), 'fc.0.weight': (512, 2048), 'fc.0.bias': (512,),
        'fc.1.running_var': (512,)},
    'mlfn': {
        'conv1.weight': (64, 3, 7, 7), 'conv1.bias': (64,), 'feature.0.fm_conv1.weight': (128, 64, 1, 1),
        'feature.0.fm_conv2.weight': (128, 4, 3, 3), 'feature.0.fsm.1.weight': (128, 64, 1, 1),
        'feature.0.fsm.1.bias': (128,), 'feature.0.fsm.7.weight': (32, 64, 1, 1), 'feature.0.fsm.8.running_var': (32,),
        'feature.0.downsample.0.weight': (256, 64, 1, 1), 'feature.3.fm_conv2.weight': (256, 8, 3, 3),
        'feature.13.fsm.4.weight': (128, 512, 1, 1), 'feature.15.fm_conv3.weight': (2048, 1024, 1, 1),
        'fc_x.0.weight': (1024, 2048, 1, 1), 'fc_s.0.weight': (1024, 512, 1, 1), 'fc_s.1.running_mean': (1024,)},
    'hacnn': {
        'conv.conv.weight': (32, 3, 3, 3),
        'conv.conv.bias': (32,), 'inception1.0.stream1.0.conv.weight': (32, 32, 1, 1),
        'inception1.0.stream4.1.conv.weight': (32, 32, 1, 1), 'inception1.1.stream2.2.conv.weight': (32, 32, 3, 3),
        'inception1.1.stream3.1.conv.weight': (64, 128, 1, 1),
        'ha1.soft_attn.spatial_attn.conv1.conv.weight': (1, 1, 3, 3),
        'ha1.soft_attn.channel_attn.conv1.conv.weight': (8, 128, 1, 1),
        'ha3.soft_attn.conv.conv.weight': (384, 384, 1, 1),
        'ha2.hard_attn.fc.weight': (8, 256), 'local_conv1.stream1.0.conv.weight': (32, 32, 1, 1),
        'local_conv3.stream3.1.bn.running_var': (192,), 'fc_global.0.weight': (512, 384),
        'fc_local.0.weight': (512, 1536), 'fc_local.1.running_mean': (512,)},
    'mobilenetv2_x1_0': {
        'conv1.conv.weight': (32, 3, 3, 3), 'conv2.0.conv1.conv.weight': (32, 32, 1, 1),
        'conv2.0.dwconv2.conv.weight': (32, 1, 3, 3), 'conv2.0.conv3.0.weight': (16, 32, 1, 1),
        'conv3.1.conv1.conv.weight': (144, 24, 1, 1), 'conv8.0.conv3.1.running_var': (320,),
        'conv9.conv.weight': (1280, 320, 1, 1)},
    'mobilenetv2_x1_4': {
        'conv1.conv.weight': (44, 3, 3, 3), 'conv2.0.conv3.0.weight': (22, 44, 1, 1),
        'conv7.2.dwconv2.conv.weight': (1344, 1, 3, 3), 'conv9.conv.weight': (1792, 448, 1, 1)},
}


def torchreid_file(model, arch, generator_seed=7):
    """A torchreid zoo file as torchreid saves it ({'state_dict': DataParallel names, 'epoch',
    'optimizer'}): our backbone under torchreid's names, with torchreid's classifier(s)."""
    generator = torch.Generator().manual_seed(generator_seed)
    state = {k.removeprefix('backbone.'): v.clone() for k, v in model.state_dict().items() if k.startswith('backbone.')}
    state.update({name: torch.randn(shape, generator=generator) * 0.01 for name, shape in CLASSIFIERS[arch].items()})
    return {'state_dict': {'module.' + k: v for k, v in state.items()}, 'epoch': 60,
            'optimizer': {'state': {}, 'param_groups': []}}


def _size(arch):
    return HACNN_SIZE if arch == 'hacnn' else (256, 128)


@pytest.fixture(scope='module')
def models():
    torch.manual_seed(0)
    return {arch: init_model(arch, NUM_IDS, pretrained=False).eval() for arch in ARCHS}


@pytest.mark.parametrize('arch', ARCHS)
def test_backbone_names_and_shapes_are_torchreid(models, arch):
    backbone = models[arch].backbone.state_dict()
    assert len(backbone) + len(CLASSIFIERS[arch]) == FILE_TENSORS[arch]
    for name, shape in KEYS[arch].items():
        assert tuple(backbone[name].shape) == shape, name
    parameters = sum(p.numel() for p in models[arch].backbone.parameters())
    assert parameters == BACKBONE_PARAMETERS[arch]


@pytest.mark.parametrize('arch', ARCHS)
def test_feature_sizes(models, arch):
    with torch.no_grad():
        features = models[arch](torch.randn(2, 3, *_size(arch)))
    assert features.shape == (2, FEATURE_DIMS[arch])
    if arch == 'hacnn':  # two L2-normalised halves
        torch.testing.assert_close(features.view(2, 2, 512).norm(dim=2), torch.ones(2, 2))
    if arch in ('torchreid_resnet50_fc512', 'mlfn'):  # ReLU'd embeddings
        assert features.min() >= 0


def test_hacnn_sizes(models):
    """Sizes divisible by 16 run (the regions keep their fixed sizes); others are refused."""
    with torch.no_grad():
        assert models['hacnn'](torch.randn(1, 3, 256, 128)).shape == (1, 1024)
    with pytest.raises(ValueError, match='--height 160 --width 64'):
        models['hacnn'](torch.randn(1, 3, 250, 118))


def test_mlfn_factor_selection_matches_torchreids_formulation():
    """A factor module's gating, written as torchreid writes it (repeat, view, permute) from the
    block's own tensors, against the module."""
    torch.manual_seed(3)
    block = _FactorModule(64, 256, 2, (128, 64)).eval()
    _randomise_norms(block)
    x = torch.randn(2, 64, 16, 8)
    with torch.no_grad():
        out, selection = block(x)
        s = block.fsm(x)
        y = torch.relu(block.fm_bn2(block.fm_conv2(torch.relu(block.fm_bn1(block.fm_conv1(x))))))
        b, c = y.shape[:2]
        n = c // GROUPS
        gates = s.repeat(1, n, 1, 1).view(b, n, GROUPS, 1, 1).permute(0, 2, 1, 3, 4).contiguous().view(b, c, 1, 1)
        y = torch.relu(block.fm_bn3(block.fm_conv3(gates * y)))
        expected = torch.relu(block.downsample(x) + y)
    torch.testing.assert_close(selection, s)
    torch.testing.assert_close(out, expected)


def test_hacnn_region_sampling_matches_a_hand_built_transform():
    """theta = [[1, 0, tx], [0, 0.25, ty]] for each region, as torchreid's transform_theta builds it,
    through affine_grid / grid_sample (align_corners False) and an align_corners resize."""
    torch.manual_seed(4)
    feature_map = torch.randn(3, 5, 40, 16)
    translation = torch.tanh(torch.randn(3, 2))
    theta = torch.zeros(3, 2, 3)
    theta[:, :, :2] = torch.tensor([[1, 0], [0, 0.25]])
    theta[:, :, -1] = translation
    grid = F.affine_grid(theta, feature_map.size(), align_corners=False)
    expected = F.interpolate(F.grid_sample(feature_map, grid, align_corners=False), (12, 14), mode='bilinear',
                             align_corners=True)
    torch.testing.assert_close(_sample_region(feature_map, translation, (12, 14)), expected)
    # the initial translations (0, -0.75) ... (0, 0.75) are the four horizontal stripes: the first
    # region's centre row is at an eighth of the height
    rows = torch.arange(40.).view(1, 1, 40, 1).expand(1, 1, 40, 16)
    stripe = _sample_region(rows, torch.tensor([[0., -0.75]]), (10, 16))
    assert abs(stripe.mean().item() - 4.5) < 0.05


def _randomise_norms(module, seed=1):
    """BatchNorm statistics and affines (and zero-initialised Linear weights) away from their
    degenerate initial values, so that a comparison exercises them."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.dtype.is_floating_point:
                continue
            if name.endswith('running_var') or (tensor.dim() == 1 and name.endswith('weight')):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith(('running_mean', 'bias')):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif name.endswith('hard_attn.fc.weight'):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.01)


def _torchreid_module(name):
    spec = importlib.util.spec_from_file_location(f'torchreid_reference_{name}', TORCHREID_MODELS / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _torchreid_model(arch):
    if arch.startswith('torchreid_resnet50'):
        builder = getattr(_torchreid_module('resnet'), arch.removeprefix('torchreid_'))
        return builder(NUM_IDS, 'softmax', pretrained=False)
    if arch == 'mlfn':
        return _torchreid_module('mlfn').mlfn(NUM_IDS, pretrained=False)
    if arch == 'hacnn':
        return _torchreid_module('hacnn').HACNN(NUM_IDS, use_gpu=False)
    return getattr(_torchreid_module('mobilenetv2'), arch)(NUM_IDS, 'softmax', pretrained=False)


@pytest.mark.skipif(not (TORCHREID_MODELS / 'hacnn.py').is_file(),
                    reason='torchreid 0.2.5 model files not present (set TORCHREID_MODELS)')
@pytest.mark.parametrize('arch', ARCHS)
def test_features_match_torchreid(models, arch):
    """torchreid's own model, its norms randomised, saved and loaded into ours (classifier dropped):
    same eval features at 256x128 and at the odd 250x118 (HACNN: 160x64 only)."""
    reference = _torchreid_model(arch).eval()
    _randomise_norms(reference)
    state = {k: v for k, v in reference.state_dict().items() if k not in CLASSIFIERS[arch]}
    models[arch].backbone.load_state_dict(state, strict=True)
    for size in ([HACNN_SIZE] if arch == 'hacnn' else [(256, 128), (250, 118)]):
        images = torch.randn(1, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(models[arch](images), reference(images), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('arch', ARCHS)
def test_zoo_file_is_recognised_and_evaluates_as_a_checkpoint(models, arch, tmp_path):
    path = tmp_path / f'{arch}_market1501.pt'
    torch.save(torchreid_file(models[arch], arch), path)
    checkpoint = checkpoints.load_checkpoint(str(path))
    assert checkpoint['source'] == f'torchreid {arch} file' and 'optimizer' not in checkpoint
    rebuilt, config = from_checkpoint(checkpoint)
    assert (config['height'], config['width']) == _size(arch) and config['arch'] == arch
    assert config['num_classes'] == (0 if arch == 'hacnn' else NUM_IDS)  # HACNN's two classifiers are dropped
    # torchreid's training state is reported as dropped; HACNN's two classifiers too.
    assert checkpoint['dropped']['training state'] == ['epoch', 'optimizer']
    if arch == 'hacnn':
        assert checkpoint['dropped']['classifier'] == sorted(CLASSIFIERS['hacnn'])
    images = torch.randn(1, 3, *_size(arch))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(images), models[arch](images))


def test_recognition_reads_tree_and_shapes_not_names(models):
    """MobileNetV2's tree also starts with conv1.conv and conv2.0.conv1.conv, its x1.0 stem has
    OSNet x0.5's 32 channels: only OSNet's channel gates make an OSNet."""
    mobilenet = {k.removeprefix('backbone.'): v for k, v in models['mobilenetv2_x1_0'].state_dict().items()}
    assert weights.torchreid_osnet_arch(mobilenet) is None
    assert weights.torchreid_arch(mobilenet) == 'mobilenetv2_x1_0'
    wide = dict(mobilenet, **{'conv1.conv.weight': torch.zeros(44, 3, 3, 3)})
    assert weights.torchreid_arch(wide) == 'mobilenetv2_x1_4'
    torchvision_file = {k.removeprefix('backbone.'): v for k, v in models['torchreid_resnet50'].state_dict().items()}
    torchvision_file.update({'fc.weight': torch.zeros(1000, 2048), 'fc.bias': torch.zeros(1000)})
    assert weights.torchreid_arch(torchvision_file) is None  # an ImageNet file, not a torchreid one


def test_recorded_distance_is_torchreids(tmp_path):
    """torchreid's MODEL_ZOO evaluates its OSNet-AIN files with the cosine distance, the others
    with the Euclidean one."""
    for arch, metric in (('osnet_ain_x0_25', 'cosine'), ('osnet_x0_25', 'euclidean')):
        model = init_model(arch, 0, pretrained=False)
        torch.save({k.removeprefix('backbone.'): v for k, v in model.state_dict().items()}, tmp_path / 'file.pth')
        assert checkpoints.load_checkpoint(str(tmp_path / 'file.pth'))['model']['dist_metric'] == metric


def test_stray_tensor_and_wrong_width_are_named(models, tmp_path):
    zoo = torchreid_file(models['torchreid_resnet50_fc512'], 'torchreid_resnet50_fc512')
    zoo['state_dict']['module.layer4.2.se.fc.weight'] = torch.zeros(8, 2048)
    torch.save(zoo, tmp_path / 'stray.pt')
    with pytest.raises(CheckpointError, match=r'backbone\.layer4\.2\.se\.fc\.weight'):
        from_checkpoint(checkpoints.load_checkpoint(str(tmp_path / 'stray.pt')))
    zoo = torchreid_file(models['mlfn'], 'mlfn')
    zoo['state_dict']['module.fc_s.0.weight'] = torch.zeros(512, 512, 1, 1)  # another embedding width
    torch.save(zoo, tmp_path / 'narrow.pt')
    with pytest.raises(CheckpointError, match=r'backbone\.fc_s\.0\.weight'):
        from_checkpoint(checkpoints.load_checkpoint(str(tmp_path / 'narrow.pt')))
    zoo = torchreid_file(models['hacnn'], 'hacnn')
    del zoo['state_dict']['module.fc_local.1.running_var']
    torch.save(zoo, tmp_path / 'missing.pt')
    with pytest.raises(CheckpointError, match=r'backbone\.fc_local\.1\.running_var'):
        from_checkpoint(checkpoints.load_checkpoint(str(tmp_path / 'missing.pt')))


def test_zoo_file_starts_fine_tuning_and_extracts_at_its_size(models, tmp_path):
    path = tmp_path / 'hacnn_market1501.pt'
    torch.save(torchreid_file(models['hacnn'], 'hacnn'), path)
    tuned = init_model('hacnn', 10, pretrained_path=str(path))
    assert sorted(tuned.pretrained_report.dropped['classifier']) == sorted(CLASSIFIERS['hacnn'])
    images = [np.random.default_rng(i).integers(0, 256, (300, 120, 3), dtype=np.uint8) for i in range(2)]
    features = FeatureExtractor(str(path))(images)  # resized to the recorded 160x64
    assert features.shape == (2, 1024)


def test_hacnn_onnx_export_matches_pytorch(models, tmp_path):
    """The model whose export can go wrong (the affine grid, grid sampling and fixed-size resizes
    of its four regions; a batch size baked in) exports with a dynamic batch that ONNX Runtime
    follows: batch 1 and 5. 25-45 s on the shared 2-core CPU (torch.onnx's dynamo capture)."""
    checkpoint = {'state_dict': models['hacnn'].state_dict(),
                  'model': dict(CONFIG_DEFAULTS, arch='hacnn', height=HACNN_SIZE[0], width=HACNN_SIZE[1])}
    assert onnx_max_difference(checkpoint, str(tmp_path / 'hacnn.onnx'))[1] <= 1e-5
