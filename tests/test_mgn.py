"""fast-reid MGN files (models/mgn.py, weights/mgn.py): state dicts fabricated in the published layout of each
era (tests/mgn_reference.py's key/shape table, written from fast-reid's code) load strictly, and the whole
forward matches the reference written from the raw tensors there, at 256x128 and at 250x118 (an odd size,
where the stem max-pool of era A and of era C give maps of other sizes). Full-size R50-IBN-a models with
random weights: the parity of the real tree costs a few seconds per forward on one CPU thread; the ONNX
export of the graph (25-45 s on the shared 2-core machine) and the two script runs of a fabricated file are most
of this module's time.
"""
import numpy as np
import onnxruntime
import pytest
import torch

import export_onnx
import synthetic_data
import weights
from conftest import parse_results, run_script
from mgn_reference import FEATURE_ORDER, IMAGENET_MEAN_255, IMAGENET_STD_255, fabricate, reference_features
from model_config import CheckpointError, from_checkpoint
from models import FrozenTeacher
from models.mgn import MGN

SIZES = [(256, 128), (250, 118)]


@pytest.fixture(scope='module')
def files():
    """era -> a fabricated fast-reid MGN state dict (R50-IBN-a, 751 identities)."""
    return {era: fabricate(era, num_ids=751, seed=index) for index, era in enumerate('ABC')}


@pytest.fixture(scope='module')
def models_of(files):
    """era -> (this repo's checkpoint dict of the file, the model rebuilt from it)."""
    built = {}
    for era in 'AC':
        checkpoint = weights.adapt_checkpoint({'model': files[era], 'iteration': 1}, f'{era}.pth')
        built[era] = checkpoint, from_checkpoint(checkpoint)[0]
    return built


def _images(height, width, batch=2, seed=0):
    """(0-255 RGB images as fast-reid takes them, the same normalised as this repo's models take them)."""
    images = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 255
    return images, (images - IMAGENET_MEAN_255) / IMAGENET_STD_255


@pytest.mark.parametrize('era', 'AC')
@pytest.mark.parametrize('height, width', SIZES)
def test_forward_matches_reference(files, models_of, era, height, width):
    """The test feature is fast-reid's: the eight heads' BN-neck outputs in its order, with the era's stem and
    head (era A: BN and ReLU after the reduction, one shared GeM p; era C: the reduction into the BN-neck)."""
    checkpoint, model = models_of[era]
    assert checkpoint['model']['arch_options']['stem_pool'] == ('pad' if era == 'A' else 'ceil')
    raw, normalised = _images(height, width)
    with torch.no_grad():
        got = model(normalised)
    want = reference_features(files[era], raw, era, ceil_stem=era == 'C')
    assert got.shape == (2, 2048)
    tolerance = 1e-5 * want.abs().max().item()
    assert (got - want).abs().max().item() <= tolerance
    if (height, width) == (256, 128):
        # the check is sensitive: the other era's stem pool gives maps of the same size and other features
        other = reference_features(files[era], raw, era, ceil_stem=era != 'C')
        assert (other - want).abs().max().item() > 100 * tolerance


def test_era_b_is_era_c_under_other_names(files):
    """Era B (2020-09-01 to v1.1) has era C's heads and trunk; only the classifier's name and the stored
    normalisation differ, so the same tensors give the same checkpoint."""
    era_c = {k.replace('_head.classifier.weight', '_head.weight'): v for k, v in files['B'].items()
             if not k.startswith('pixel_')}
    b = weights.adapt_checkpoint({'model': files['B']}, 'b.pth')
    c = weights.adapt_checkpoint({'model': era_c}, 'c.pth')
    assert b['model'] == c['model'] and b['state_dict'].keys() == c['state_dict'].keys()
    assert all(torch.equal(b['state_dict'][k], c['state_dict'][k]) for k in b['state_dict'])
    assert 'fast-reid era B MGN' in b['source'] and 'era C' in c['source']
    assert b['dropped']['normalisation (the model input is normalised outside)'] == ['pixel_mean', 'pixel_std']


def test_checkpoint_records_what_the_file_does_not(models_of):
    checkpoint, model = models_of['A']
    config = checkpoint['model']
    assert (config['height'], config['width'], config['resize_mode']) == (384, 128, 'pil-bicubic')
    assert config['dist_metric'] == 'cosine' and config['neck'] == 'bnneck' and config['global_pool'] == 'gem'
    assert config['arch_options'] == {'backbone': 'resnet50', 'ibn': True, 'stem_pool': 'pad', 'head': 'bn_relu',
                                      'embedding_dim': 256, 'shared_pool': True}
    np.testing.assert_allclose(config['pixel_mean'], [0.485, 0.456, 0.406], atol=1e-6)
    assert len(checkpoint['dropped']["classifier (fast-reid's eight per-head classifiers)"]) == 8
    # era A shares one GeM module among the heads, as fast-reid built it: one parameter, not eight
    assert len({id(model.heads[h].pool) for h in FEATURE_ORDER}) == 1
    assert len({id(m.pool) for m in models_of['C'][1].heads.values()}) == 8


def _adapt(state):
    return weights.adapt_checkpoint({'model': state}, 'mgn.pth')


@pytest.mark.parametrize('era, change, message', [
    ('A', {'b22_head.foo': torch.zeros(3)}, "unexpected tensor 'b22_head.foo'"),
    ('C', {'b22_head.classifier.weight': torch.zeros(751, 256)}, "unexpected tensor 'b22_head.classifier.weight'"),
    ('C', {'b21_head.bottleneck.0.weight': torch.zeros(128, 2048, 1, 1)}, (r'b21_head\.bottleneck\.0\.weight has shape '
                                                                         r'\(128, 2048, 1, 1\)')),
    ('A', {'b31_pool.2.running_var': torch.ones(128)}, r'b31_pool\.2\.running_var has shape \(128,\)'),
    ('A', {'b33_head.bnneck.weight': None}, r'b33_head\.bnneck\.weight is missing \(the BN-neck of head b33'),
    ('C', {'b2_head.bottleneck.1.running_var': None}, r'b2_head\.bottleneck\.1\.running_var is missing'),
    ('C', {'b32_head.pool_layer.p': None}, r'b32_head\.pool_layer\.p is missing'),
    ('A', {'b2_pool.0.p': torch.tensor([7.0])}, r'b2_pool\.0\.p = 7 differs from b1_pool\.0\.p'),
])
def test_a_file_that_does_not_fit_raises_naming_the_tensor(files, era, change, message):
    state = dict(files[era])
    for key, value in change.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    with pytest.raises(weights.PretrainedWeightsError, match=message):
        _adapt(state)


def test_trunk_tensors_are_checked_when_the_model_loads(files):
    """The trunk keeps fast-reid's names, so a stray or misshapen trunk tensor is named by the strict load."""
    for key, value in (('b2.1.2.extra.weight', torch.zeros(1)), ('b3.1.0.conv2.weight', torch.zeros(512, 512, 1, 1))):
        checkpoint = _adapt(dict(files['C'], **{key: value}))
        with pytest.raises(CheckpointError, match=key.replace('.', r'\.')):
            from_checkpoint(checkpoint)


def test_bad_constructions_are_refused():
    with pytest.raises(ValueError, match='resnet34'):
        MGN(0, backbone='resnet34')
    model = MGN(0).eval()
    with pytest.raises(ValueError, match='4 rows cannot be cut into 3 stripes'):
        model(torch.zeros(1, 3, 64, 32))


def test_onnx_export_matches(models_of, tmp_path):
    """export_onnx.py's graph of a fast-reid era-A MGN file (shared GeM, BN-ReLU heads) gives the model's
    L2-normalised features at batch 1 and 5 (the batch axis is dynamic)."""
    checkpoint, model = models_of['A']
    checkpoint = dict(checkpoint, model=dict(checkpoint['model'], height=128, width=64))
    path = str(tmp_path / 'mgn.onnx')
    export_onnx.export(checkpoint, path)
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    for batch in (1, 5):
        _, images = _images(128, 64, batch, seed=batch)
        with torch.no_grad():
            expected = torch.nn.functional.normalize(model(images), dim=1).numpy()
        assert np.abs(session.run(None, {'images': images.numpy()})[0] - expected).max() <= 1e-5


def test_fabricated_file_evaluates(files, tmp_path):
    """`--evaluate --resume` of a fast-reid MGN file ({'model': module.<names>, optimizer state}) on a tiny
    generated Market-1501 at 96x32 (a 6-row map, so 3 stripes of 2 rows)."""
    root = tmp_path / 'data'
    synthetic_data.make_market1501(root / 'market1501', num_train_ids=4, num_test_ids=5, images_per_camera=(1, 1),
                                   cameras_per_id=2, num_distractors=2, num_junk=1, seed=1)
    path = tmp_path / 'market_mgn_R50-ibn.pth'
    torch.save({'model': {'module.' + k: v for k, v in files['A'].items()}, 'optimizer': {}, 'iteration': 1}, path)
    result = run_script('train_img_model_xent.py', '--root', root, '--evaluate', '--resume', path, '--height', '96',
                        '--width', '32', '--workers', '0', '--train-batch', '8', '--test-batch', '16',
                        '--save-dir', tmp_path / 'log')
    assert 'fast-reid era A MGN, resnet50-IBN-a' in result.stdout
    assert 'dropped 2 (training state): iteration, optimizer' in result.stdout
    assert len(parse_results(result.stdout)) == 1


def test_teacher_of_features(models_of):
    """--teacher with a fast-reid MGN file: its classifiers are dropped, so it teaches its features (what
    --kd-relation reads) and no logits; the feature is its test feature at its own input size."""
    checkpoint, model = models_of['C']
    config = from_checkpoint(checkpoint)[1]
    assert config['num_classes'] == 0
    teacher = FrozenTeacher(model, config, config['pixel_mean'], config['pixel_std'])
    _, images = _images(384, 128)
    logits, feature = teacher(images)
    with torch.no_grad():
        assert logits is None and torch.equal(feature, model(images))


def test_trains_as_a_reid_model(models_of):
    """Fine-tuning goes through ReIDModel's contract: (logits over the new identities, the 2048-d feature
    before the BN-necks) in train mode, gradients into every head, and into era A's one shared GeM p."""
    checkpoint, _ = models_of['A']
    options = checkpoint['model']['arch_options']
    model = MGN(5, loss={'xent', 'htri'}, global_pool='gem', **options).train()
    missing, unexpected = model.load_state_dict(checkpoint['state_dict'], strict=False)
    assert missing == ['classifier.weight'] and not unexpected  # a new classifier for the new identities
    logits, feature = model(torch.randn(4, 3, 96, 32))
    assert logits.shape == (4, 5) and feature.shape == (4, 2048)
    (logits.logsumexp(dim=1).mean() + feature.pow(2).mean()).backward()
    shared_p = model.heads['b1'].pool.p
    assert shared_p.grad is not None and [name for name, _ in model.named_parameters()].count('heads.b1.pool.p') == 1
    assert all(model.heads[h].conv.weight.grad.abs().sum() > 0 for h in FEATURE_ORDER)
