import json
import urllib.error

import pytest
import torch
from torchvision.models import resnet50

import checkpoints
import model_config
import models
from conftest import shared_path
from models.mgn import MGN


@pytest.fixture(scope='module', params=models.get_names() + ['timm:resnet18'])
def model(request):
    """Every -a name, built for the 64x32 input the tests feed (transformers are built for a size)."""
    torch.manual_seed(0)
    return models.init_model(request.param, num_classes=7, loss={'xent', 'htri'}, pretrained=False,
                             height=64, width=32)


def test_contract_image_and_video(model):
    height = 96 if isinstance(model, MGN) else 64  # MGN cuts its 1/16 map into 3 stripes: 6 rows, not 4
    images, clips = torch.randn(4, 3, height, 32), torch.randn(2, 3, 3, height, 32)
    model.eval()
    with torch.no_grad():
        assert model(images).shape == (4, model.feat_dim)
        video_feature = model(clips)
        assert video_feature.shape == (2, model.feat_dim)
        frame_features = model(clips.flatten(0, 1)).view(2, 3, -1)
        assert torch.allclose(video_feature, frame_features.mean(dim=1), atol=1e-5)
    model.train()
    logits, features = model(images)
    assert logits.shape == (4, 7) and features.shape == (4, model.feat_dim)
    logits, features = model(clips)
    assert logits.shape == (2, 7)


def test_xent_only_returns_logits_and_max_pool():
    model = models.init_model('resnet50', 5, loss={'xent'}, pretrained=False, pool='max')
    model.train()
    assert model(torch.randn(2, 3, 64, 32)).shape == (2, 5)
    model.eval()
    clips = torch.randn(2, 3, 3, 64, 32)
    with torch.no_grad():
        frames = model(clips.flatten(0, 1)).view(2, 3, -1)
        assert torch.allclose(model(clips), frames.amax(dim=1), atol=1e-5)


def test_feature_dims_and_parameter_count():
    counts = {}
    for name, dim in (('resnet50', 2048), ('resnet50m', 3072), ('densenet121', 1024)):
        model = models.init_model(name, 751, pretrained=False)
        assert model.feat_dim == dim
        counts[name] = sum(p.numel() for p in model.parameters()) / 1e6
    assert f"{counts['resnet50']:.5f}" == '25.04683'


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match='resnet50, resnet50m, densenet121, resnet50_ibn_a, osnet_x1_0, '):
        models.init_model('vgg16', 10)
    with pytest.raises(ValueError, match="timm .* has no model 'no_such_net'"):
        models.init_model('timm:no_such_net', 10)


def _seed_state_dict(name, prefix):
    """Random tensors in the layout of a 2018 checkpoint. Names that are one module under two
    names (ResNet50M's base.* and layers*) get one tensor, as in a real saved model."""
    layout = json.loads(shared_path('data', 'seed-checkpoints', 'state_dict_keys.json').read_text())
    own = models.init_model(name, 751, pretrained=False).state_dict()
    by_storage = {}
    state_dict = {}
    for key, shape in layout[name]:
        storage = own[key].data_ptr() if key in own else key
        state_dict[prefix + key] = by_storage.setdefault(storage, torch.randn(shape))
    return state_dict


@pytest.mark.parametrize('name', ['resnet50', 'resnet50m', 'densenet121'])
@pytest.mark.parametrize('prefix', ['', 'module.'])
def test_loads_2018_checkpoint_layout(name, prefix):
    state_dict = _seed_state_dict(name, prefix)
    model = models.init_model(name, 751, pretrained=False)
    own = model.state_dict()
    stripped = {k.removeprefix('module.'): v for k, v in state_dict.items()}
    missing = set(own) - set(stripped)
    assert missing and all(k.endswith('num_batches_tracked') for k in missing)
    assert set(stripped) <= set(own)
    assert model_config.load_model_weights(model, state_dict) == []
    for key, value in stripped.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_2018_checkpoint_with_other_classifier_loads_backbone():
    state_dict = _seed_state_dict('resnet50', 'module.')
    model = models.init_model('resnet50', 10, pretrained=False)
    assert model_config.load_model_weights(model, state_dict) == ['classifier.weight', 'classifier.bias']
    assert torch.equal(model.base[0].weight, state_dict['module.base.0.weight'])


def test_wrong_architecture_is_refused():
    state_dict = models.init_model('densenet121', 10, pretrained=False).state_dict()
    with pytest.raises(checkpoints.CheckpointError, match='wrong --arch'):
        model_config.load_model_weights(models.init_model('resnet50', 10, pretrained=False), state_dict)


def test_pretrained_path_loads_local_imagenet_weights(tmp_path):
    torch.manual_seed(0)
    reference = resnet50()
    path = tmp_path / 'resnet50-imagenet.pth'
    torch.save(reference.state_dict(), path)
    model = models.init_model('resnet50', 10, pretrained_path=str(path))
    assert torch.equal(model.base[0].weight, reference.conv1.weight)
    assert torch.equal(model.base[7][2].bn3.running_var, reference.layer4[2].bn3.running_var)


def test_offline_download_fails_fast_with_a_way_out(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError('Name or service not known')
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', offline)
    with pytest.raises(models.PretrainedWeightsError) as info:
        models.init_model('resnet50', 10, pretrained=True)
    message = str(info.value)
    assert '--no-pretrained' in message and '--pretrained-path' in message and 'resnet50-0676ba61.pth' in message


def test_bad_pretrained_path(tmp_path):
    path = tmp_path / 'bad.pth'
    path.write_bytes(b'nonsense')
    with pytest.raises(models.PretrainedWeightsError, match='bad.pth'):
        models.init_model('resnet50', 10, pretrained_path=str(path))


def test_arch_options_travel_from_the_config_to_the_constructor(tmp_path):
    """arch_options recorded in a checkpoint rebuild the same model (a 1-block ViT here, through
    VisionTransformer's timm_options); an option the constructor lacks, or one that a config key
    of its own sets, is an error naming it."""
    options = {'timm_options': {'depth': 1}}
    model = models.init_model('vit_small', 3, pretrained=False, height=32, width=16, arch_options=options)
    assert len(model.backbone.blocks) == 1
    config = dict(model_config.CONFIG_DEFAULTS, arch='vit_small', arch_options=options, height=32, width=16)
    path = tmp_path / 'vit1.pth.tar'
    torch.save({'state_dict': model.state_dict(), 'model': config}, path)
    rebuilt, recorded = model_config.from_checkpoint(checkpoints.load_checkpoint(str(path)))
    assert recorded['arch_options'] == options and len(rebuilt.backbone.blocks) == 1
    assert model_config.checkpoint_config({'state_dict': {}})['arch_options'] == {}  # older files: none
    with pytest.raises(ValueError, match="arch_options 'depth' of -a vit_small: VisionTransformer takes no such"):
        models.init_model('vit_small', 3, pretrained=False, arch_options={'depth': 1})
    with pytest.raises(ValueError, match="arch_options 'height' of -a vit_small: set by its own config key"):
        models.init_model('vit_small', 3, pretrained=False, arch_options={'height': 64})
