"""OSNet and OSNet-AIN: the backbones' names and shapes are those of torchreid's model zoo (so its
files load strictly once `classifier.*` is dropped), the sizes and MACs are torchreid's, and the
forward matches an independent functional reference computed from the raw state dict.

The numbers below were checked against torchreid itself (KaiyangZhou/deep-person-reid at
f8cd150f, torchreid/models/osnet.py and osnet_ain.py, built with pretrained=False, num_classes=751)
in a scratch script outside this repository; users need not have torchreid:
  - state-dict tensors with the classifier and the BN buffers: 567 for every osnet_x*, 568 for
    osnet_ibn_x1_0, 552 for every osnet_ain_x* (565 / 566 / 550 without the classifier), with our
    backbone's keys, in the same order and with the same shapes, as torchreid's less classifier.*;
  - backbone parameters (no classifier) and MACs at 256x128 (FlopCounterMode conv + linear / 2,
    batch 1, eval) as in the tables below, equal for both;
  - torchreid's state dict (BN statistics and affines randomised) copied into ours gives the
    same eval features: max |difference| 0.0 for all nine variants (4 x 3 x 256 x 128 input).
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import checkpoints
import export_onnx
from feature_extractor import FeatureExtractor
from model_config import CONFIG_DEFAULTS, from_checkpoint
from models import PretrainedWeightsError, init_model
from models.osnet import AIN_BLOCK_INSTANCE_NORM, FEATURE_DIM, OSNET_ARCHS, OSNET_WIDTHS, OSNet, OSNetAIN

WIDTHS = ('x1_0', 'x0_75', 'x0_5', 'x0_25')
ARCHS = (*(f'osnet_{w}' for w in WIDTHS), 'osnet_ibn_x1_0', *(f'osnet_ain_{w}' for w in WIDTHS))
BUFFER_SUFFIXES = ('running_mean', 'running_var', 'num_batches_tracked')
NUM_IDS = 751  # a Market-1501 file's classifier

# torchreid's file: all tensors including classifier.{weight,bias} and the BatchNorm buffers
FILE_TENSORS = {**{f'osnet_{w}': 567 for w in WIDTHS}, 'osnet_ibn_x1_0': 568,
                **{f'osnet_ain_{w}': 552 for w in WIDTHS}}
# of which parameters (not buffers), classifier excluded
BACKBONE_PARAMETER_TENSORS = {**{f'osnet_{w}': 325 for w in WIDTHS}, 'osnet_ibn_x1_0': 329,
                              **{f'osnet_ain_{w}': 325 for w in WIDTHS}}
# Parameters without the classifier. AIN's IN-in blocks trade conv3's BN affine for the IN affine
# of the same width, so each AIN width has exactly its OSNet width's count; IBN adds the affine of
# two 256-channel INs (its IN stem replaces a BN of the same size): 2,169,508 + 1,024.
_WIDTH_PARAMETERS = {'x1_0': 2_169_508, 'x0_75': 1_285_754, 'x0_5': 630_034, 'x0_25': 201_864}
BACKBONE_PARAMETERS = {**{f'osnet_{w}': n for w, n in _WIDTH_PARAMETERS.items()}, 'osnet_ibn_x1_0': 2_170_532,
                       **{f'osnet_ain_{w}': n for w, n in _WIDTH_PARAMETERS.items()}}
# MACs at 256x128 (conv + linear); the norms, gates' products, pools and additions are not counted.
# IN and the AIN tree do not change the convolutions, so the same per width.
_WIDTH_MACS = {'x1_0': 978_875_392, 'x0_75': 571_752_192, 'x0_5': 272_899_328, 'x0_25': 82_314_880}
MACS_256x128 = {**{f'osnet_{w}': n for w, n in _WIDTH_MACS.items()}, 'osnet_ibn_x1_0': _WIDTH_MACS['x1_0'],
                **{f'osnet_ain_{w}': n for w, n in _WIDTH_MACS.items()}}

# Representative keys of torchreid's trees with shapes in width symbols: c1..c4 the stem, conv2,
# conv3, conv4 widths; m2..m4 = c / 4, the stream width of that stage's blocks; g2..g4 = m / 16,
# the channel gate's hidden width; F = 512; () a scalar (num_batches_tracked).
_BN = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')
_COMMON_KEYS = {  # both trees
    'conv1.conv.weight': ('c1', 3, 7, 7),
    'conv2.0.conv1.conv.weight': ('m2', 'c1', 1, 1),
    'conv2.0.conv1.bn.running_var': ('m2',),
    'conv2.0.gate.fc1.weight': ('g2', 'm2', 1, 1),
    'conv2.0.gate.fc1.bias': ('g2',),
    'conv2.0.gate.fc2.weight': ('m2', 'g2', 1, 1),
    'conv2.0.gate.fc2.bias': ('m2',),
    'conv2.0.conv3.conv.weight': ('c2', 'm2', 1, 1),
    'conv2.0.downsample.conv.weight': ('c2', 'c1', 1, 1),
    'conv2.0.downsample.bn.num_batches_tracked': (),
    'conv2.1.conv1.conv.weight': ('m2', 'c2', 1, 1),
    'conv3.0.conv1.conv.weight': ('m3', 'c2', 1, 1),
    'conv3.0.downsample.conv.weight': ('c3', 'c2', 1, 1),
    'conv3.0.downsample.bn.running_mean': ('c3',),
    'conv3.1.gate.fc1.weight': ('g3', 'm3', 1, 1),
    'conv4.0.conv1.conv.weight': ('m4', 'c3', 1, 1),
    'conv4.0.downsample.conv.weight': ('c4', 'c3', 1, 1),
    'conv4.1.gate.fc2.weight': ('m4', 'g4', 1, 1),
    'conv4.1.conv3.conv.weight': ('c4', 'm4', 1, 1),
    'conv4.1.conv3.bn.running_var': ('c4',),
    'conv5.conv.weight': ('c4', 'c4', 1, 1),
    'conv5.bn.weight': ('c4',),
    'conv5.bn.num_batches_tracked': (),
    'fc.0.weight': ('F', 'c4'),
    'fc.0.bias': ('F',),
    'fc.1.weight': ('F',),
    'fc.1.bias': ('F',),
    'fc.1.running_mean': ('F',),
    'fc.1.running_var': ('F',),
    'fc.1.num_batches_tracked': (),
}
_OSNET_KEYS = {  # osnet.py: streams conv2a..conv2d, transitions as item 2 of conv2 / conv3
    'conv2.0.conv2a.conv1.weight': ('m2', 'm2', 1, 1),
    'conv2.0.conv2a.conv2.weight': ('m2', 1, 3, 3),  # depthwise
    'conv2.0.conv2a.bn.weight': ('m2',),
    'conv2.0.conv2b.1.conv2.weight': ('m2', 1, 3, 3),
    'conv2.0.conv2c.2.bn.running_mean': ('m2',),
    'conv2.0.conv2d.3.conv1.weight': ('m2', 'm2', 1, 1),
    'conv2.0.conv3.bn.bias': ('c2',),
    'conv2.2.0.conv.weight': ('c2', 'c2', 1, 1),
    'conv2.2.0.bn.running_var': ('c2',),
    'conv3.1.conv2d.3.bn.weight': ('m3',),
    'conv3.2.0.conv.weight': ('c3', 'c3', 1, 1),
    'conv3.2.0.bn.num_batches_tracked': (),
    'conv4.0.conv2b.0.conv1.weight': ('m4', 'm4', 1, 1),
}
_OSNET_BN_STEM_KEYS = {f'conv1.bn.{field}': () if field == 'num_batches_tracked' else ('c1',) for field in _BN}
_IN_STEM_KEYS = {'conv1.bn.weight': ('c1',), 'conv1.bn.bias': ('c1',)}  # InstanceNorm: no running stats
_IBN_KEYS = {'conv2.0.IN.weight': ('c2',), 'conv2.0.IN.bias': ('c2',), 'conv2.1.IN.weight': ('c2',),
             'conv2.1.IN.bias': ('c2',)}
_AIN_KEYS = {  # osnet_ain.py: streams conv2.{t}.layers.{m}, transitions pool2 / pool3
    'conv2.0.conv2.0.layers.0.conv1.weight': ('m2', 'm2', 1, 1),
    'conv2.0.conv2.1.layers.1.conv2.weight': ('m2', 1, 3, 3),
    'conv2.0.conv2.3.layers.3.bn.running_var': ('m2',),
    'conv2.0.IN.weight': ('c2',),  # IN-in block: IN, no conv3.bn
    'conv2.1.IN.bias': ('c2',),
    'pool2.0.conv.weight': ('c2', 'c2', 1, 1),
    'pool2.0.bn.num_batches_tracked': (),
    'conv3.0.conv3.bn.weight': ('c3',),  # plain OSBlock
    'conv3.0.conv2.2.layers.2.conv1.weight': ('m3', 'm3', 1, 1),
    'conv3.1.IN.weight': ('c3',),
    'pool3.0.conv.weight': ('c3', 'c3', 1, 1),
    'pool3.0.bn.running_mean': ('c3',),
    'conv4.0.IN.bias': ('c4',),
    'conv4.1.conv3.bn.weight': ('c4',),
    'conv4.1.conv2.3.layers.0.conv2.weight': ('m4', 1, 3, 3),
}
_ABSENT_EVERYWHERE = ('classifier.weight', 'classifier.bias', 'conv2.1.downsample.conv.weight',
                      'conv4.1.downsample.conv.weight', 'global_avgpool', 'maxpool')
_ABSENT = {
    'osnet': ('conv2.0.IN.weight', 'conv2.3.0.conv.weight', 'pool2.0.conv.weight',
              'conv2.0.conv2.0.layers.0.conv1.weight'),
    'osnet_ibn': ('conv1.bn.running_mean', 'conv1.bn.num_batches_tracked', 'conv3.0.IN.weight', 'conv2.2.IN.weight'),
    'osnet_ain': ('conv1.bn.running_mean', 'conv2.0.conv3.bn.weight', 'conv2.0.conv3.bn.running_mean',
                  'conv3.0.IN.weight', 'conv3.1.conv3.bn.weight', 'conv4.0.conv3.bn.weight', 'conv4.1.IN.weight',
                  'conv2.2.0.conv.weight', 'conv2.0.conv2a.conv1.weight'),
}


def _family(arch):
    return 'osnet_ain' if arch.startswith('osnet_ain') else 'osnet_ibn' if arch.startswith('osnet_ibn') else 'osnet'


def _expected_keys(arch):
    """{key: shape} of the representative keys of `arch`'s torchreid file, symbols resolved."""
    family = _family(arch)
    c1, c2, c3, c4 = OSNET_WIDTHS['x' + arch.split('_x', 1)[1]]
    symbols = {'c1': c1, 'c2': c2, 'c3': c3, 'c4': c4, 'm2': c2 // 4, 'm3': c3 // 4, 'm4': c4 // 4,
               'g2': c2 // 64, 'g3': c3 // 64, 'g4': c4 // 64, 'F': 512}
    table = dict(_COMMON_KEYS)
    if family == 'osnet':
        table |= _OSNET_KEYS | _OSNET_BN_STEM_KEYS
    elif family == 'osnet_ibn':
        table |= _OSNET_KEYS | _IN_STEM_KEYS | _IBN_KEYS
    else:
        table |= _AIN_KEYS | _IN_STEM_KEYS
    return {key: tuple(symbols.get(dim, dim) for dim in shape) for key, shape in table.items()}


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """These networks are small: on a busy 2-core machine OpenMP's spinning threads make a forward
    up to 100x slower than one thread does (seconds instead of tens of milliseconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _build(arch, seed=0, **kwargs):
    torch.manual_seed(seed)
    cls, arch_kwargs = OSNET_ARCHS[arch]
    return cls(NUM_IDS, **arch_kwargs, **kwargs)


@pytest.fixture(scope='module')
def models():
    """One randomly initialised model per variant, eval mode, shared (each builds in well under a second)."""
    return {arch: _build(arch).eval() for arch in ARCHS}


def _fabricate_torchreid_file(model, seed=1):
    """A torchreid-layout file for `model`'s variant: the backbone's keys with random values scaled
    like a trained network (norm statistics and affines away from their initial 1 / 0, so that a
    misplaced norm changes the output), plus the classifier torchreid saves."""
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for key, value in model.backbone.state_dict().items():
        shape = value.shape
        if key.endswith('num_batches_tracked'):
            value = torch.tensor(1000, dtype=torch.long)
        elif key.endswith('running_var'):
            value = 0.5 + torch.rand(shape, generator=generator)
        elif key.endswith(('running_mean', '.bias')):
            value = 0.1 * torch.randn(shape, generator=generator)
        elif len(shape) == 4:  # conv: Kaiming fan-in scale
            value = torch.randn(shape, generator=generator) * (2.0 / shape[1:].numel()) ** 0.5
        elif len(shape) == 2:  # fc.0
            value = 0.05 * torch.randn(shape, generator=generator)
        elif key.endswith(('conv3.bn.weight', 'IN.weight')) and not key.startswith('conv2.'):
            # small residual branches, as in trained networks, so 6 blocks keep the scale
            value = 0.2 + 0.05 * torch.randn(shape, generator=generator)
        else:  # BN / IN scale
            value = 1.0 + 0.2 * torch.randn(shape, generator=generator)
        state_dict[key] = value
    state_dict['classifier.weight'] = 0.01 * torch.randn(NUM_IDS, FEATURE_DIM, generator=generator)
    state_dict['classifier.bias'] = torch.zeros(NUM_IDS)
    return state_dict


def _backbone_state_dict(checkpoint):
    """A torchreid file's tensors for `model.backbone`: unwrap {'state_dict': ...}, strip
    DataParallel's 'module.', drop the re-ID classifier."""
    state_dict = checkpoint.get('state_dict', checkpoint)
    state_dict = {k.removeprefix('module.'): v for k, v in state_dict.items()}
    return {k: v for k, v in state_dict.items() if not k.startswith('classifier.')}


def _reference_features(sd, images):
    """OSNet / OSNet-AIN written functionally from a raw state dict of either tree: (N, 3, H, W) ->
    (N, 512) eval features, following torchreid's forward. A norm without running statistics is an
    InstanceNorm; the tree is read from the key names."""

    def norm(x, name):
        if f'{name}.running_mean' in sd:
            return F.batch_norm(x, sd[f'{name}.running_mean'], sd[f'{name}.running_var'], sd[f'{name}.weight'],
                                sd[f'{name}.bias'], training=False, eps=1e-5)
        return F.instance_norm(x, weight=sd[f'{name}.weight'], bias=sd[f'{name}.bias'], eps=1e-5)

    def unit(x, name, relu=True, stride=1, padding=0):
        x = F.conv2d(x, sd[f'{name}.conv.weight'], stride=stride, padding=padding)
        if f'{name}.bn.weight' in sd:
            x = norm(x, f'{name}.bn')
        return F.relu(x) if relu else x

    def light(x, name):
        depthwise = sd[f'{name}.conv2.weight']
        x = F.conv2d(F.conv2d(x, sd[f'{name}.conv1.weight']), depthwise, padding=1, groups=depthwise.shape[0])
        return F.relu(norm(x, f'{name}.bn'))

    def gate(x, name):
        g = F.conv2d(x.mean(dim=(2, 3), keepdim=True), sd[f'{name}.fc1.weight'], sd[f'{name}.fc1.bias'])
        return x * torch.sigmoid(F.conv2d(F.relu(g), sd[f'{name}.fc2.weight'], sd[f'{name}.fc2.bias']))

    def block(x, name):
        ain = f'{name}.conv2.0.layers.0.conv1.weight' in sd
        if ain:
            streams = [[f'{name}.conv2.{t}.layers.{i}' for i in range(t + 1)] for t in range(4)]
        else:
            streams = [[f'{name}.conv2a']] + [[f'{name}.conv2{s}.{i}' for i in range(depth)]
                                              for s, depth in (('b', 2), ('c', 3), ('d', 4))]
        x1 = unit(x, f'{name}.conv1')
        total = 0
        for stream in streams:
            y = x1
            for layer in stream:
                y = light(y, layer)
            total = total + gate(y, f'{name}.gate')
        out = unit(total, f'{name}.conv3', relu=False)
        identity = unit(x, f'{name}.downsample', relu=False) if f'{name}.downsample.conv.weight' in sd else x
        has_in = f'{name}.IN.weight' in sd
        if ain:  # IN-in: inside the residual branch
            out = (norm(out, f'{name}.IN') if has_in else out) + identity
        else:  # IBN: after the sum
            out = out + identity
            out = norm(out, f'{name}.IN') if has_in else out
        return F.relu(out)

    def transition(x, name):
        return F.avg_pool2d(unit(x, name), 2, stride=2)

    x = F.max_pool2d(unit(images, 'conv1', stride=2, padding=3), 3, stride=2, padding=1)
    ain = 'pool2.0.conv.weight' in sd
    for stage in ('conv2', 'conv3', 'conv4'):
        x = block(block(x, f'{stage}.0'), f'{stage}.1')
        if stage != 'conv4':
            x = transition(x, f'pool{stage[-1]}.0' if ain else f'{stage}.2.0')
    x = unit(x, 'conv5').mean(dim=(2, 3))
    x = F.batch_norm(F.linear(x, sd['fc.0.weight'], sd['fc.0.bias']), sd['fc.1.running_mean'],
                     sd['fc.1.running_var'], sd['fc.1.weight'], sd['fc.1.bias'], training=False, eps=1e-5)
    return F.relu(x)


def test_arch_table_covers_torchreid_names():
    assert tuple(OSNET_ARCHS) == ARCHS
    assert all(OSNET_ARCHS[a][0] is OSNet for a in ARCHS[:5])
    assert all(OSNET_ARCHS[a][0] is OSNetAIN for a in ARCHS[5:])
    assert OSNET_ARCHS['osnet_ibn_x1_0'][1]['instance_norm'] and not OSNET_ARCHS['osnet_x1_0'][1]['instance_norm']
    assert OSNET_ARCHS['osnet_ain_x0_25'][1]['block_instance_norm'] == AIN_BLOCK_INSTANCE_NORM
    assert AIN_BLOCK_INSTANCE_NORM == ((True, True), (False, True), (True, False))


@pytest.mark.parametrize('arch', ARCHS)
def test_backbone_names_and_shapes_are_torchreid(models, arch):
    model = models[arch]
    own = {k: tuple(v.shape) for k, v in model.backbone.state_dict().items()}
    assert len(own) + 2 == FILE_TENSORS[arch]  # + classifier.weight, classifier.bias
    for key, shape in _expected_keys(arch).items():
        assert key in own, key
        assert own[key] == shape, (key, own[key], shape)
    for key in (*_ABSENT_EVERYWHERE, *_ABSENT[_family(arch)]):
        assert not any(k == key or k.startswith(key + '.') for k in own), key
    parameter_tensors = [k for k in own if not k.endswith(BUFFER_SUFFIXES)]
    assert len(parameter_tensors) == BACKBONE_PARAMETER_TENSORS[arch]
    assert len(list(model.backbone.parameters())) == BACKBONE_PARAMETER_TENSORS[arch]
    assert not any('.IN.running' in k for k in own)  # InstanceNorms keep no statistics
    # the gate is shared by the four streams: one gate per block
    assert sum(k.endswith('gate.fc1.weight') for k in own) == 6


@pytest.mark.parametrize('arch', ARCHS)
def test_parameter_count_is_torchreid(models, arch):
    model = models[arch]
    backbone_parameters = sum(p.numel() for p in model.backbone.parameters())
    assert backbone_parameters == BACKBONE_PARAMETERS[arch]
    # the repo's head: the classifier on the 512-d feature and nothing else
    assert sum(p.numel() for p in model.parameters()) == backbone_parameters + NUM_IDS * (FEATURE_DIM + 1)


@pytest.mark.parametrize('arch', ARCHS)
def test_macs_at_256x128_are_torchreid(models, arch):
    model = models[arch]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        features = model(torch.randn(1, 3, 256, 128))
    assert features.shape == (1, FEATURE_DIM)
    assert counter.get_total_flops() // 2 == MACS_256x128[arch]


@pytest.mark.parametrize('wrapped', [False, True], ids=['plain', 'state_dict_module'])
@pytest.mark.parametrize('arch', ['osnet_x0_25', 'osnet_ibn_x1_0', 'osnet_ain_x0_25'])
def test_fabricated_torchreid_file_loads_strictly(arch, wrapped):
    model = _build(arch, seed=2)
    file = _fabricate_torchreid_file(_build(arch, seed=3))
    assert len(file) == FILE_TENSORS[arch]
    checkpoint = {'state_dict': {'module.' + k: v for k, v in file.items()}} if wrapped else file
    result = model.backbone.load_state_dict(_backbone_state_dict(checkpoint), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    loaded = model.backbone.state_dict()
    for key, value in _backbone_state_dict(checkpoint).items():
        assert torch.equal(loaded[key], value), key
    with pytest.raises(RuntimeError, match='classifier.weight'):  # the classifier must be dropped first
        model.backbone.load_state_dict(file, strict=True)


def test_wrong_variant_files_are_refused(models):
    x1_0 = _build('osnet_x1_0', seed=4)
    with pytest.raises(RuntimeError, match='size mismatch'):  # x0_5 tensors into x1_0
        x1_0.backbone.load_state_dict(_backbone_state_dict(_fabricate_torchreid_file(models['osnet_x0_5'])))
    with pytest.raises(RuntimeError, match='pool2'):  # an OSNet file into the AIN tree
        _build('osnet_ain_x1_0', seed=4).backbone.load_state_dict(models['osnet_x1_0'].backbone.state_dict())
    with pytest.raises(RuntimeError, match=r'conv2\.0\.IN'):  # plain OSNet into osnet_ibn_x1_0
        _build('osnet_ibn_x1_0', seed=4).backbone.load_state_dict(models['osnet_x1_0'].backbone.state_dict())


@pytest.mark.parametrize('arch', ARCHS)
def test_features_match_functional_reference(arch):
    model = _build(arch, seed=5)
    file = _fabricate_torchreid_file(model, seed=6)
    model.backbone.load_state_dict(_backbone_state_dict(file), strict=True)
    model.eval()
    images = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        features = model.features(images)
        eval_output = model(images)
    expected = _reference_features(_backbone_state_dict(file), images)
    assert features.shape == (2, FEATURE_DIM)
    assert torch.isfinite(expected).all() and expected.abs().max() > 1e-2
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert torch.equal(eval_output, features)  # no neck: the eval output is the 512-d feature


def test_features_are_512d_and_non_negative(models):
    images = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        for arch, model in models.items():
            feature_map = model.backbone(images)
            features = model(images)
            assert feature_map.shape == (2, OSNET_ARCHS[arch][1]['channels'][3], 4, 2), arch  # stride 16
            assert features.shape == (2, FEATURE_DIM), arch
            assert (features >= 0).all() and (features > 0).any(), arch  # ReLU after fc


def test_global_pool_gem_and_neck_and_training_outputs():
    model = _build('osnet_ain_x0_25', global_pool='gem', neck='bnneck', loss=('xent', 'htri'))
    assert 'global_pool.p' in model.state_dict() and 'global_pool.p' not in model.backbone.state_dict()
    images = torch.randn(2, 3, 64, 32)
    logits, features = model.train()(images)
    assert logits.shape == (2, NUM_IDS) and features.shape == (2, FEATURE_DIM)
    (logits.sum() + features.sum()).backward()
    assert model.global_pool.p.grad is not None and model.backbone.conv1.conv.weight.grad is not None
    with torch.no_grad():
        assert model.eval()(images).shape == (2, FEATURE_DIM)
        gem = model.features(images)
    assert (gem >= 0).all()
    # with p = 1 GeM is average pooling: the same feature as the default model with these weights
    average = _build('osnet_ain_x0_25', global_pool='avg').eval()
    average.backbone.load_state_dict(model.backbone.state_dict())
    with torch.no_grad():
        model.global_pool.p.fill_(1.0)
        torch.testing.assert_close(model.features(images), average.features(images), rtol=1e-4, atol=1e-5)


def test_initialisation_is_torchreids(models):
    backbone = models['osnet_ibn_x1_0'].backbone
    for module in backbone.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d)):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
    assert isinstance(backbone.conv1.bn, torch.nn.InstanceNorm2d) and isinstance(backbone.conv2[0].IN,
                                                                                 torch.nn.InstanceNorm2d)
    assert torch.all(backbone.conv2[0].gate.fc1.bias == 0) and torch.all(backbone.fc[0].bias == 0)
    fc_std = backbone.fc[0].weight.std().item()
    assert 0.0095 < fc_std < 0.0105, fc_std  # N(0, 0.01)
    conv5_std = backbone.conv5.conv.weight.std().item()
    assert abs(conv5_std / (2 / 512) ** 0.5 - 1) < 0.02, conv5_std  # Kaiming fan_out: 512 x 1 x 1


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match='channels'):
        OSNet(3, channels=(64, 256, 384))
    with pytest.raises(ValueError, match='multiple of 4'):
        OSNet(3, channels=(64, 256, 384, 510))
    with pytest.raises(ValueError, match='block_instance_norm'):
        OSNetAIN(3, block_instance_norm=((True,), (False, True), (True, False)))


def test_torchreid_zoo_file_evaluates_as_a_checkpoint(tmp_path, capsys):
    """A torchreid re-ID zoo file ({'state_dict': module.<torchreid names>} with its classifier
    and training state) is a checkpoint here: arch and width read off its tensors, backbone
    under `backbone.`, features as the model's own."""
    torch.manual_seed(0)
    model = init_model('osnet_x0_25', 751, pretrained=False)
    zoo = {k.removeprefix('backbone.'): v for k, v in model.state_dict().items()}
    path = tmp_path / 'osnet_x0_25_msmt17.pth'
    torch.save({'state_dict': {'module.' + k: v for k, v in zoo.items()}, 'epoch': 150,
                'optimizer': {'state': {}, 'param_groups': []}}, path)
    checkpoint = checkpoints.load_checkpoint(str(path), report=True)
    assert checkpoint['arch'] == 'osnet_x0_25' and 'optimizer' not in checkpoint
    assert f'Trained file {path}: torchreid osnet_x0_25 file' in capsys.readouterr().out
    rebuilt, config = from_checkpoint(checkpoint)
    assert config['num_classes'] == 751 and config['arch'] == 'osnet_x0_25'
    ours = FeatureExtractor({'state_dict': model.state_dict(), 'model': dict(CONFIG_DEFAULTS, arch='osnet_x0_25')})
    images = [np.random.default_rng(i).integers(0, 256, (128, 64, 3), dtype=np.uint8) for i in range(3)]
    np.testing.assert_allclose(FeatureExtractor(str(path))(images), ours(images), atol=1e-6)


def test_torchreid_imagenet_file_as_pretrained_weights(tmp_path):
    model = init_model('osnet_ain_x0_5', 10, pretrained=False)
    state = {k.removeprefix('backbone.'): v for k, v in model.state_dict().items() if k.startswith('backbone.')}
    state.update({'classifier.weight': torch.randn(1000, 512), 'classifier.bias': torch.randn(1000)})
    path = tmp_path / 'osnet_ain_x0_5_imagenet.pth'
    torch.save(state, path)
    loaded = init_model('osnet_ain_x0_5', 10, pretrained_path=str(path))
    report = loaded.pretrained_report
    assert report.dropped == {'classifier': ['classifier.bias', 'classifier.weight']}
    assert report.source == 'torchreid osnet_ain_x0_5 file' and report.pixel_mean == [0.485, 0.456, 0.406]
    with pytest.raises(PretrainedWeightsError, match='does not fit the model'):
        init_model('osnet_x0_5', 10, pretrained_path=str(path))
    with pytest.raises(PretrainedWeightsError, match='no weights are downloaded'):
        init_model('osnet_x0_25', 10)


def test_boxmot_pt_route_is_torchreids_layout(tmp_path):
    """export_onnx --boxmot-pt: torchreid's names (what BoxMOT's OSNet loads strictly), read back here
    as a torchreid zoo file with the same features."""
    torch.manual_seed(1)
    model = init_model('osnet_x0_25', 9, pretrained=False)
    checkpoint = {'state_dict': model.state_dict(), 'model': dict(CONFIG_DEFAULTS, arch='osnet_x0_25')}
    path = str(tmp_path / 'osnet_x0_25_mydata.pt')
    export_onnx.write_boxmot_pt(checkpoint, path)
    written = torch.load(path, weights_only=True)
    # What BoxMOT reads besides the weights: the architecture it builds and the crop size.
    assert {k: v for k, v in written.items() if k != 'state_dict'} == {
        'model_name': 'osnet_x0_25', 'model_kwargs': {'img_size': [256, 128]}, 'model_kwargs_schema_version': 1,
        'preprocess': 'resize'}
    weights = written['state_dict']
    assert set(weights) == {k.removeprefix('backbone.') for k in model.state_dict()}
    model.backbone.load_state_dict({k: v for k, v in weights.items() if not k.startswith('classifier.')}, strict=True)
    images = [np.random.default_rng(i).integers(0, 256, (128, 64, 3), dtype=np.uint8) for i in range(2)]
    np.testing.assert_allclose(FeatureExtractor(path)(images), FeatureExtractor(checkpoint)(images), atol=1e-6)
    with pytest.raises(ValueError, match=r'name it <name>\.pt'):
        export_onnx.write_boxmot_pt(checkpoint, str(tmp_path / 'reid.pth'))
    resnet = {'state_dict': {}, 'model': dict(CONFIG_DEFAULTS, arch='resnet50')}
    with pytest.raises(ValueError, match='not OSNet'):
        export_onnx.write_boxmot_pt(resnet, str(tmp_path / 'resnet50_x.pt'))


@pytest.mark.parametrize('arch', ['osnet_x0_25', 'osnet_ain_x0_25'])
def test_onnx_export_matches_pytorch(tmp_path, arch):
    import onnxruntime
    torch.manual_seed(2)
    model = init_model(arch, 9, pretrained=False)
    checkpoint = {'state_dict': model.state_dict(), 'model': dict(CONFIG_DEFAULTS, arch=arch, height=128, width=64)}
    path = str(tmp_path / f'{arch}.onnx')
    graph, _, _ = export_onnx.export(checkpoint, path)
    assert graph.renormalize is None  # ImageNet weights: the graph takes the trackers' input as it is
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    for batch in (1, 5):
        images = torch.randn(batch, 3, 128, 64)
        with torch.no_grad():
            expected = graph(images).numpy()
        assert np.abs(session.run(None, {'images': images.numpy()})[0] - expected).max() <= 1e-5
