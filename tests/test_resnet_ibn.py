"""ResNet50-IBN-a: the backbone's names and shapes are those of the IBN-Net release
(resnet50_ibn_a-d9d0bb7b.pth), a file in that layout loads strictly, and the forward matches an
independent functional reference computed from the raw state dict."""
import re

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import resnet50

from models.resnet_ibn import IBN, ResNet50IBNa

# torchvision ResNet50 (25,557,032) less fc (2048 * 1000 + 1000); the IN/BN split of bn1 keeps
# the number of affine parameters, so IBN-a has exactly as many as ResNet50.
BACKBONE_PARAMETERS = 23_508_032
BUFFER_SUFFIXES = ('running_mean', 'running_var', 'num_batches_tracked')
STAGE_BLOCKS = {'layer1': 3, 'layer2': 4, 'layer3': 6, 'layer4': 3}


def _ibn_net_layout():
    """{name: shape} of resnet50_ibn_a-d9d0bb7b.pth, derived from torchvision's ResNet50 as the
    IBN-Net paper and code describe it: in layer1-layer3 every `bn1` of P channels becomes
    `bn1.IN` (affine InstanceNorm of the first P // 2 channels, no running statistics) and
    `bn1.BN` (BatchNorm of the other P - P // 2). fc.* is kept, as in the released file."""
    with torch.device('meta'):  # shapes only: no 25M-parameter initialisation
        reference = resnet50().state_dict()
    layout = {}
    for key, tensor in reference.items():
        match = re.fullmatch(r'(layer[123]\.\d+\.bn1)\.(\w+)', key)
        if not match:
            layout[key] = tuple(tensor.shape)
            continue
        prefix, field = match.groups()
        planes = reference[f'{prefix}.weight'].shape[0]
        half = planes // 2
        if field in ('weight', 'bias'):
            layout[f'{prefix}.IN.{field}'] = (half,)
        scalar = field == 'num_batches_tracked'
        layout[f'{prefix}.BN.{field}'] = tuple(tensor.shape) if scalar else (planes - half,)
    return layout


def _backbone_layout():
    return {k: v for k, v in _ibn_net_layout().items() if not k.startswith('fc.')}


def _fabricate_ibn_net_file(seed=0):
    """Random tensors in the released file's layout, scaled like a trained network so that 16
    bottlenecks with eval-mode BatchNorm neither overflow nor vanish."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    state_dict = {}
    for key, shape in _ibn_net_layout().items():
        if key.endswith('num_batches_tracked'):
            value = torch.tensor(1000, dtype=torch.long)
        elif key.endswith('running_var'):
            value = 0.5 + torch.rand(shape, generator=generator)
        elif key.endswith(('running_mean', '.bias')):
            value = 0.1 * randn(*shape)
        elif len(shape) == 4:  # conv: Kaiming fan-in scale
            value = randn(*shape) * (2.0 / (shape[1] * shape[2] * shape[3])) ** 0.5
        elif key == 'fc.weight':
            value = 0.01 * randn(*shape)
        else:  # BN / IN scale; bn3 small, as trained residual branches are
            value = (0.2 if key.endswith('bn3.weight') else 1.0) + 0.1 * randn(*shape)
        state_dict[key] = value
    return state_dict


def _backbone_state_dict(checkpoint):
    """The file's tensors for `model.backbone`: unwrap {'state_dict': ...}, strip DataParallel's
    'module.', drop the ImageNet classifier fc.*."""
    state_dict = checkpoint.get('state_dict', checkpoint)
    state_dict = {k.removeprefix('module.'): v for k, v in state_dict.items()}
    return {k: v for k, v in state_dict.items() if not k.startswith('fc.')}


def _reference_features(sd, images, last_stride):
    """ResNet50-IBN-a written functionally from the raw state dict: (N, 3, H, W) -> (N, 2048)
    average-pooled features, eval-mode BatchNorm, per-image InstanceNorm."""

    def bn(x, name):
        return F.batch_norm(x, sd[f'{name}.running_mean'], sd[f'{name}.running_var'], sd[f'{name}.weight'],
                            sd[f'{name}.bias'], training=False, eps=1e-5)

    def ibn_or_bn(x, name):
        if f'{name}.IN.weight' not in sd:
            return bn(x, name)
        half = sd[f'{name}.IN.weight'].shape[0]
        first = F.instance_norm(x[:, :half], weight=sd[f'{name}.IN.weight'], bias=sd[f'{name}.IN.bias'],
                                eps=1e-5)
        return torch.cat([first, bn(x[:, half:], f'{name}.BN')], dim=1)

    def bottleneck(x, name, stride):
        out = F.relu(ibn_or_bn(F.conv2d(x, sd[f'{name}.conv1.weight']), f'{name}.bn1'))
        out = F.relu(bn(F.conv2d(out, sd[f'{name}.conv2.weight'], stride=stride, padding=1), f'{name}.bn2'))
        out = bn(F.conv2d(out, sd[f'{name}.conv3.weight']), f'{name}.bn3')
        if f'{name}.downsample.0.weight' in sd:
            x = bn(F.conv2d(x, sd[f'{name}.downsample.0.weight'], stride=stride), f'{name}.downsample.1')
        return F.relu(out + x)

    x = F.relu(bn(F.conv2d(images, sd['conv1.weight'], stride=2, padding=3), 'bn1'))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    strides = {'layer1': 1, 'layer2': 2, 'layer3': 2, 'layer4': last_stride}
    for stage, blocks in STAGE_BLOCKS.items():
        for index in range(blocks):
            x = bottleneck(x, f'{stage}.{index}', strides[stage] if index == 0 else 1)
    return x.mean(dim=(2, 3))


@pytest.fixture(scope='module')
def ibn_net_file():
    return _fabricate_ibn_net_file()


@pytest.fixture(scope='module')
def models_by_stride():
    """One randomly initialised model per last stride, shared: a ResNet50 takes a while to build."""
    torch.manual_seed(0)
    return {stride: ResNet50IBNa(7, last_stride=stride) for stride in (1, 2)}


@pytest.fixture(scope='module', params=[1, 2], ids=['last_stride1', 'last_stride2'])
def loaded_model(request, models_by_stride, ibn_net_file):
    model = models_by_stride[request.param]
    model.backbone.load_state_dict(_backbone_state_dict(ibn_net_file), strict=True)
    return model.eval(), request.param


def test_backbone_names_and_shapes_are_ibn_net_release(models_by_stride):
    model = models_by_stride[2]
    own = {k: tuple(v.shape) for k, v in model.backbone.state_dict().items()}
    expected = _backbone_layout()
    assert set(own) == set(expected), (sorted(set(own) - set(expected)), sorted(set(expected) - set(own)))
    assert own == expected
    # IBN in every block of layer1-layer3 and nowhere in layer4; its IN keeps no running stats
    assert sum(isinstance(m, IBN) for m in model.modules()) == 13
    assert not any(k.startswith('layer4') and '.IN.' in k for k in own)
    assert not any('.IN.running' in k for k in own)
    assert own['layer3.5.bn1.IN.weight'] == (128,) and own['layer3.5.bn1.BN.running_var'] == (128,)


@pytest.mark.parametrize('wrapped', [False, True], ids=['plain', 'state_dict_module'])
def test_fabricated_release_file_loads_strictly(models_by_stride, ibn_net_file, wrapped):
    checkpoint = ibn_net_file
    if wrapped:  # as a DataParallel training script saves it
        checkpoint = {'state_dict': {'module.' + k: v for k, v in ibn_net_file.items()}}
    assert ibn_net_file['fc.weight'].shape == (1000, 2048) and ibn_net_file['fc.bias'].shape == (1000,)
    model = models_by_stride[1]
    result = model.backbone.load_state_dict(_backbone_state_dict(checkpoint), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    loaded = model.backbone.state_dict()
    for key, value in _backbone_state_dict(checkpoint).items():
        assert torch.equal(loaded[key], value), key
    with pytest.raises(RuntimeError, match='fc.weight'):  # the classifier must be dropped first
        model.backbone.load_state_dict(ibn_net_file, strict=True)


def test_features_match_functional_reference(loaded_model, ibn_net_file):
    model, last_stride = loaded_model
    images = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features = model.features(images)
        eval_output = model(images)
    expected = _reference_features(_backbone_state_dict(ibn_net_file), images, last_stride)
    assert features.shape == (2, 2048)
    assert torch.isfinite(expected).all() and expected.abs().max() > 1e-3
    relative = (features - expected).norm() / expected.norm()
    assert relative < 1e-4, relative
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert torch.equal(eval_output, features)  # no neck: the eval output is the pooled feature


def test_last_stride_sets_final_map_size(loaded_model):
    model, last_stride = loaded_model
    # the re-ID input size for last stride 1 (the BoT setting); a small input suffices for 2
    height, width = (256, 128) if last_stride == 1 else (64, 32)
    with torch.no_grad():
        feature_map = model.backbone(torch.randn(1, 3, height, width))
    assert feature_map.shape == ((1, 2048, 16, 8) if last_stride == 1 else (1, 2048, 2, 1))
    block = model.backbone.layer4[0]
    assert block.conv2.stride == block.downsample[0].stride == (last_stride, last_stride)
    assert model.backbone.layer3[0].conv2.stride == (2, 2) and model.backbone.layer3[0].conv1.stride == (1, 1)


def test_bad_last_stride_is_refused():
    with pytest.raises(ValueError, match='last stride'):
        ResNet50IBNa(7, last_stride=3)


def test_parameter_count_matches_release_file(models_by_stride, ibn_net_file):
    file_parameters = sum(v.numel() for k, v in _backbone_state_dict(ibn_net_file).items()
                          if not k.endswith(BUFFER_SUFFIXES))
    model = models_by_stride[2]
    backbone_parameters = sum(p.numel() for p in model.backbone.parameters())
    print(f'ResNet50-IBN-a backbone parameters: {backbone_parameters:,}')
    assert backbone_parameters == file_parameters == BACKBONE_PARAMETERS
    assert sum(p.numel() for p in model.parameters()) == BACKBONE_PARAMETERS + 2048 * 7 + 7


@pytest.fixture(scope='module')
def gem_model():
    torch.manual_seed(0)
    return ResNet50IBNa(5, loss=('xent', 'htri'), neck='bnneck', neck_feat='before', global_pool='gem')


def test_gem_pooling_is_a_parameter_and_changes_features(models_by_stride, gem_model):
    avg = models_by_stride[2].eval()
    gem = gem_model.eval()
    assert 'global_pool.p' in dict(gem.named_parameters()) and 'global_pool.p' not in avg.state_dict()
    gem.backbone.load_state_dict(avg.backbone.state_dict())
    images = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        avg_features, gem_features = avg.features(images), gem.features(images)
    assert gem_features.shape == avg_features.shape == (2, 2048)
    assert not torch.allclose(avg_features, gem_features, rtol=1e-3, atol=1e-5)
    with pytest.raises(ValueError, match='global pooling'):
        ResNet50IBNa(7, global_pool='sum')


def test_train_mode_contract(gem_model):
    gem_model.train()
    logits, features = gem_model(torch.randn(2, 3, 32, 16))
    assert logits.shape == (2, 5) and features.shape == (2, 2048)
    # gradients reach the first IN and GeM's p (only these: a full backward is slow on a CPU)
    in_grad, p_grad = torch.autograd.grad(logits.sum(), [gem_model.backbone.layer1[0].bn1.IN.weight,
                                                         gem_model.global_pool.p])
    assert in_grad.abs().sum() > 0 and p_grad.abs() > 0


def test_ibn_splits_instance_and_batch_norm():
    torch.manual_seed(0)
    ibn = IBN(6)
    assert ibn.half == 3 and ibn.IN.num_features == 3 and ibn.BN.num_features == 3
    assert not ibn.IN.track_running_stats and set(ibn.IN.state_dict()) == {'weight', 'bias'}
    x = torch.randn(4, 6, 5, 3) * 3 + 2
    for train in (True, False):
        ibn.train(train)
        out = ibn(x)
        # the IN half is normalised per image and channel, in training and evaluation alike
        per_image = out[:, :3].flatten(2)
        assert torch.allclose(per_image.mean(-1), torch.zeros(4, 3), atol=1e-5)
    # the BN half in eval mode uses its running statistics, not the batch's
    ibn.eval()
    expected_bn = F.batch_norm(x[:, 3:], ibn.BN.running_mean, ibn.BN.running_var, ibn.BN.weight, ibn.BN.bias)
    assert torch.allclose(ibn(x)[:, 3:], expected_bn, atol=1e-6)
