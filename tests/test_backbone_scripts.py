"""The modern backbones through the scripts and tools: ViT (with and without a camera embedding)
and ResNet50-IBN-a learn on generated data, their checkpoints rebuild the model with its
preprocessing, zero-shot evaluation and feature extraction of pretrained weights, --recipe vit,
and the ONNX export of a ViT with and without the camera input."""
import json
import re
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import engine
import export_onnx
import extract_features
import model_config
import models
import options
import synthetic_data
import train_img_model_xent_htri
from conftest import FAST, parse_results, run_script
from feature_extractor import FeatureExtractor, feature_net, pretrained_checkpoint
from test_backbones import dino_teacher, random_like, save

# (script, extra flags): ViTs from scratch learn slowly with the classic lr; Adam 3e-4 learns.
RUNS = {
    'vit': ('train_img_model_xent_htri.py', ['-a', 'vit_small', '--lr', '3e-4', '--max-epoch', '16']),
    'vit_camera': ('train_img_model_xent_htri.py', ['-a', 'vit_small', '--lr', '3e-4', '--max-epoch', '16',
                                                    '--camera-embedding']),
    'resnet50_ibn_a': ('train_img_model_xent.py', ['-a', 'resnet50_ibn_a', '--max-epoch', '12']),
}


@pytest.fixture(scope='module')
def untrained(synthetic_root, tmp_path_factory):
    """mAP of each randomly initialised architecture (the scripts' seed)."""
    save_dir = tmp_path_factory.mktemp('untrained_backbones')
    return {arch: parse_results(run_script('train_img_model_xent_htri.py', *FAST, '--root', synthetic_root, '-a', arch,
                                           '--evaluate', '--save-dir', save_dir).stdout)[0][0]
            for arch in ('vit_small', 'resnet50_ibn_a')}


@pytest.fixture(scope='module')
def trained(synthetic_root, tmp_path_factory):
    runs = {}
    for name, (script, args) in RUNS.items():
        save_dir = tmp_path_factory.mktemp(name)
        result = run_script(script, *FAST, '--root', synthetic_root, *args, '--save-dir', save_dir)
        runs[name] = (result.stdout, save_dir)
    return runs


@pytest.mark.parametrize('name', list(RUNS))
def test_backbone_learns(name, trained, untrained):
    stdout, save_dir = trained[name]
    arch = RUNS[name][1][1]
    mAP = parse_results(stdout)[-1][0]
    assert mAP >= untrained[arch] + 6, f'{name}: mAP {mAP} not above the untrained {untrained[arch]}'
    config = torch.load(save_dir / 'checkpoint_last.pth.tar', weights_only=True)['model']
    assert config['arch'] == arch and config['pixel_mean'] == [0.485, 0.456, 0.406]
    assert config['num_cameras'] == (6 if name == 'vit_camera' else 0)


def test_camera_checkpoint_evaluates_as_trained(trained, synthetic_root, tmp_path):
    """--evaluate --resume rebuilds the ViT with its camera embedding from the checkpoint alone."""
    stdout, save_dir = trained['vit_camera']
    result = run_script('train_img_model_xent.py', *FAST, '--root', synthetic_root, '--evaluate', '--resume',
                        save_dir / 'checkpoint_last.pth.tar', '--save-dir', tmp_path)
    assert 'camera_embedding 6 cameras' in result.stdout
    assert parse_results(result.stdout) == [parse_results(stdout)[-1]]
    extractor = FeatureExtractor(str(save_dir / 'checkpoint_last.pth.tar'))
    images = [np.full((64, 32, 3), v, np.uint8) for v in (10, 200)]
    assert extractor.num_cameras == 6
    agnostic = extractor(images)
    np.testing.assert_allclose(extractor(images, camids=[-1, -1]), agnostic, atol=1e-6)
    assert np.abs(extractor(images, camids=[0, 3]) - agnostic).max() > 1e-4
    failed = run_script('train_img_model_xent.py', *FAST, '--root', synthetic_root, '--evaluate', '--resume',
                        save_dir / 'checkpoint_last.pth.tar', '--no-camera-embedding', '--save-dir', tmp_path,
                        check=False)
    assert failed.returncode == 1 and 'contradicts the checkpoint' in failed.stderr


def test_camera_embedding_needs_several_cameras(synthetic_root, tmp_path):
    synthetic_data.make_image_folder(tmp_path / 'crops', with_cameras=None, train_only=True)
    result = run_script('train_img_model_xent.py', *FAST, '-d', 'image_folder', '--root', tmp_path / 'crops',
                        '-a', 'vit_small', '--camera-embedding', '--train-batch', '2', '--save-dir', tmp_path / 'log',
                        check=False)
    assert result.returncode == 1
    assert 'error: --camera-embedding needs training data from several cameras' in result.stderr
    result = run_script('train_img_model_xent.py', *FAST, '--root', synthetic_root, '--camera-embedding',
                        '--save-dir', tmp_path, check=False)
    assert result.returncode == 1 and 'apply to the ViTs' in result.stderr


@pytest.fixture(scope='module')
def person_vit_file(tmp_path_factory):
    """A LUPerson-style DINO teacher (16x8 grid) for vit_small."""
    net = models.init_model('vit_small', 1, pretrained=False, height=256, width=128)
    return save(tmp_path_factory.mktemp('weights'), 'vit_small_cfs_lup.pth',
                dino_teacher(random_like(net.backbone.state_dict(), seed=3)))


def test_zero_shot_evaluation_and_extraction(person_vit_file, synthetic_root, tmp_path, monkeypatch, capsys):
    result = run_script('train_img_model_xent.py', '--root', synthetic_root, '--height', '64', '--width', '32',
                        '--workers', '0', '-a', 'vit_small', '--pretrained-path', person_vit_file, '--evaluate',
                        '--dist-metric', 'cosine', '--save-dir', tmp_path / 'eval')
    assert 'person-pretrained ViT' in result.stdout and 'resampled pos_embed from a 16x8 grid to 4x2' in result.stdout
    assert len(parse_results(result.stdout)) == 1
    output = tmp_path / 'f.npz'
    query = synthetic_root / 'market1501' / 'query'
    monkeypatch.setattr(sys, 'argv', ['extract_features.py', '-a', 'vit_small', '--pretrained-path', person_vit_file,
                                      '--height', '64', '--width', '32', '--input', str(query), '--output', str(output),
                                      '--device', 'cpu', '--workers', '1'])
    extract_features.main()
    saved = np.load(output)
    extractor = FeatureExtractor(pretrained_checkpoint('vit_small', person_vit_file, 64, 32))
    assert extractor.config['pixel_mean'] == [0.5] * 3
    np.testing.assert_allclose(saved['features'][:5], extractor(list(saved['paths'][:5])), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(saved['features'], axis=1), 1, atol=1e-5)  # cosine: unit length


def test_recipe_vit_sets_the_published_fine_tune(person_vit_file, capsys):
    parser = train_img_model_xent_htri.get_args_parser()
    args = parser.parse_args(['--recipe', 'vit', '-a', 'vit_small', '--pretrained-path', person_vit_file])
    assert (args.optim, args.momentum, args.weight_decay, args.bias_lr_factor) == ('sgd', 0.9, 1e-4, 2.0)
    assert (args.train_batch, args.num_instances, args.max_epoch, args.lr_scheduler) == (64, 4, 120, 'cosine')
    assert (args.label_smooth, args.soft_margin, args.drop_path, args.bnneck, args.neck_feat, args.dist_metric) == \
        (0.0, True, 0.1, True, 'before', 'cosine')
    assert args.lr is None  # chosen once the weights are read
    models_args = parser.parse_args(['--recipe', 'vit', '-a', 'vit_small', '--pretrained-path', person_vit_file,
                                     '--height', '64', '--width', '32'])
    models_args.resume, models_args.num_cameras = '', 0
    options.resolve_model_config(models_args)
    engine.build_model(models_args, 5, {'xent', 'htri'})
    assert models_args.lr == 4e-4 and models_args.pixel_mean == [0.5] * 3
    imagenet = parser.parse_args(['--recipe', 'vit', '-a', 'vit_small', '--no-pretrained', '--height', '64',
                                  '--width', '32'])
    imagenet.resume, imagenet.num_cameras = '', 0
    options.resolve_model_config(imagenet)
    engine.build_model(imagenet, 5, {'xent', 'htri'})
    assert imagenet.lr == 8e-3
    options.print_recipe(parser.parse_args(['--recipe', 'vit', '--lr', '1e-3']))
    printed = capsys.readouterr().out
    assert '--recipe vit sets: --optim sgd' in printed and '--lr auto (0.008 from ImageNet weights' in printed
    assert 'given explicitly instead: --lr 0.001' in printed


@pytest.mark.parametrize('cameras, input_norm', [(0, 'imagenet'), (3, 'imagenet'), (3, 'model')])
def test_vit_onnx_export_matches_pytorch(tmp_path, cameras, input_norm):
    """A ViT with weights normalised 0.5 / 0.5: the graph takes ImageNet-normalised input by
    default (BoxMOT's convention) and converts it inside; with --input-norm model it takes the
    model's own. With a camera embedding, a second input takes the camera ids."""
    torch.manual_seed(0)
    model = models.init_model('vit_small', 7, pretrained=False, height=64, width=32, num_cameras=cameras).eval()
    config = dict(model_config.CONFIG_DEFAULTS, arch='vit_small', height=64, width=32, num_cameras=cameras,
                  dist_metric='cosine', flip_test=True, pixel_mean=[0.5] * 3, pixel_std=[0.5] * 3)
    checkpoint = {'state_dict': model.state_dict(), 'model': config}
    path = str(tmp_path / 'vit.onnx')
    export_onnx.export(checkpoint, path, input_norm=input_norm)
    onnx_model = onnx.load(path)
    assert [i.name for i in onnx_model.graph.input] == ['images'] + (['camids'] if cameras else [])
    metadata = {p.key: p.value for p in onnx_model.metadata_props}
    mean_in, std_in = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]) if input_norm == 'imagenet' else ([0.5] * 3,) * 2
    assert json.loads(metadata['input_mean']) == mean_in and json.loads(metadata['reid_config'])['num_cameras'] == cameras
    side = json.loads(open(path + '.metadata.json').read())
    assert side['model_name'] is None and side['img_size'] == [64, 32] and side['model_kwargs'] == {'img_size': [64, 32]}
    assert side['preprocess'] == 'resize' and side['feature_dim'] == 384 and side['input_mean'] == mean_in
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    net, _ = feature_net(checkpoint)
    for batch in (1, 5):
        pixels = torch.rand(batch, 3, 64, 32)
        graph_input = (pixels - torch.tensor(mean_in).view(3, 1, 1)) / torch.tensor(std_in).view(3, 1, 1)
        feeds = {'images': graph_input.numpy()}
        camids = None
        if cameras:
            camids = torch.tensor([2, -1, 0, 1, 7][:batch])  # -1 and 7: unknown cameras
            feeds['camids'] = camids.numpy()
        with torch.no_grad():
            expected = net((pixels - 0.5) / 0.5, camids).numpy()
        assert np.abs(session.run(None, feeds)[0] - expected).max() <= 1e-4


def test_vit_train_flags_reach_the_model(synthetic_root, tmp_path):
    """--patch-stride, --global-pool, --drop-path and the speed flags run through a short training."""
    result = run_script('train_img_model_xent_htri.py', *FAST, '--root', synthetic_root, '-a', 'vit_small',
                        '--patch-stride', '12', '--drop-path', '0.1', '--channels-last', '--amp', '--compile', '--max-epoch', '1',
                        '--train-batch', '16', '--soft-margin', '--bias-lr-factor', '2', '--save-dir', tmp_path)
    checkpoint = torch.load(tmp_path / 'checkpoint_last.pth.tar', weights_only=True)
    assert checkpoint['model']['patch_stride'] == 12
    assert checkpoint['state_dict']['backbone.pos_embed'].shape == (1, 1 + 5 * 2, 384)
    assert re.search(r'^Epoch 1 done', result.stdout, re.M)
    assert len(checkpoint['optimizer']['param_groups']) == 2  # the bias group of --bias-lr-factor


def test_tracker_thresholds_reach_the_checkpoint_and_the_sidecar(trained, tmp_path):
    """A Euclidean checkpoint's evaluation also gives cosine-distance thresholds (what trackers
    compare); the last ones travel in the checkpoint into BoxMOT's sidecar."""
    stdout, save_dir = trained['resnet50_ibn_a']
    assert 'Cosine-distance thresholds for trackers (same person if distance <= threshold): FPR 1e-04:' in stdout
    checkpoint = torch.load(save_dir / 'checkpoint_last.pth.tar', weights_only=True)
    thresholds = checkpoint['tracker_thresholds']
    assert list(thresholds) == ['0.0001', '0.001', '0.01'] and checkpoint['model']['dist_metric'] == 'euclidean'
    assert 0 <= thresholds['0.0001'] <= thresholds['0.001'] <= thresholds['0.01'] <= 2
    printed = re.search(r'FPR 1e-02: ([\d.]+)', stdout.split('Cosine-distance thresholds')[-1])[1]
    assert float(printed) == pytest.approx(thresholds['0.01'], abs=1e-4)
    export_onnx.export(checkpoint, str(tmp_path / 'ibn.onnx'))
    side = json.loads((tmp_path / 'ibn.onnx.metadata.json').read_text())
    assert side['appearance_thresholds'] == thresholds and side['metric'] == 'euclidean'
    assert side['trained_resize'] == 'pil' and side['model_name'] is None
