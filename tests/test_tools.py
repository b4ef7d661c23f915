"""Using a trained model: the FeatureExtractor API, extract_features.py and export_onnx.py agree
with the evaluation of the training scripts."""
import re
import sys

import h5py
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import data_manager
import engine
import export_onnx
import extract_features
import model_config
import models
import synthetic_data
import train_img_model_xent
from conftest import FAST, run_main, run_script
from dataset_loader import ImageDataset, VideoDataset
from eval_metrics import evaluate_features, squared_euclidean
from feature_extractor import FeatureExtractor, feature_net
from transforms import build_transforms, normalize

# The BoT test feature: BNNeck, feature after it, flip averaging, cosine metric.
CONFIG = dict(model_config.CONFIG_DEFAULTS, neck='bnneck', dist_metric='cosine', flip_test=True, height=64, width=32)


def save_checkpoint(path, config, images):
    """A randomly initialised ResNet50, saved as the training scripts save it, whose BatchNorm
    statistics are those of `images` (N, 3, H, W), as training leaves them: the features are
    then centred by the BNNeck and spread out like a trained model's, not all near-parallel."""
    torch.manual_seed(0)
    model = models.init_model('resnet50', 4, pretrained=False, neck=config['neck'], pool=config['pool'])
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a cumulative average: after one batch, that batch's statistics
    with torch.no_grad():
        model.train()(images)
    torch.save({'state_dict': model.state_dict(), 'model': config}, path)
    return path


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp('tools_data')
    synthetic_data.make_market1501(root / 'market1501', num_train_ids=4, num_test_ids=10, images_per_camera=(1, 2),
                                   cameras_per_id=3, num_distractors=4, num_junk=2, seed=5)
    return root


@pytest.fixture(scope='module')
def dataset(root):
    return data_manager.Market1501(root=str(root), verbose=False)


@pytest.fixture(scope='module')
def checkpoint(dataset, tmp_path_factory):
    transform = build_transforms(64, 32)[1]
    images = normalize(torch.stack([image for image, _, _ in ImageDataset(dataset.train[:16], transform)]))
    return save_checkpoint(tmp_path_factory.mktemp('ckpt') / 'model.pth.tar', CONFIG, images)


@pytest.fixture(scope='module')
def command_features(root, checkpoint, tmp_path_factory):
    """extract_features.py run on the query and gallery folders: {split: (features, paths)}."""
    out = tmp_path_factory.mktemp('features')
    features = {}
    for split, folder in (('query', 'query'), ('gallery', 'bounding_box_test')):
        result = run_script('extract_features.py', '--resume', checkpoint, '--input', root / 'market1501' / folder,
                            '--output', out / f'{split}.npz', '--batch-size', '16')
        assert re.search(r'^Extracted (\d+)/\1 images  [\d.]+ images/s  ETA 0:00:00$', result.stdout, re.M)
        with np.load(out / f'{split}.npz') as data:
            features[split] = data['features'], list(data['paths'])
    return features


def by_path(features, paths, items):
    """The rows of `features` for dataset items, with their pids and camids (junk images, which
    the dataset drops, are left out)."""
    row = {path: i for i, path in enumerate(paths)}
    return (torch.from_numpy(features[[row[path] for path, _, _ in items]]),
            torch.tensor([pid for _, pid, _ in items]), torch.tensor([camid for _, _, camid in items]))


def test_command_ranks_as_evaluate(root, checkpoint, command_features, tmp_path, monkeypatch):
    """Features of the command give the CMC/mAP of --evaluate on the same checkpoint."""
    results = []
    monkeypatch.setattr(engine, 'print_results', lambda result, title='Results': results.append(result))
    args = train_img_model_xent.get_args_parser().parse_args([
        *FAST, '--root', str(root), '--evaluate', '--resume', str(checkpoint), '--save-dir', str(tmp_path),
        '--use-cpu', '--train-batch', '4', '--test-batch', '16'])
    engine.main(args, video=False, loss={'xent'}, build_criterion=train_img_model_xent.build_criterion)
    assert args.flip_test and args.dist_metric == 'cosine' and args.bnneck  # taken from the checkpoint

    dataset = data_manager.Market1501(root=str(root), verbose=False)
    qf, q_pids, q_camids = by_path(*command_features['query'], dataset.query)
    gf, g_pids, g_camids = by_path(*command_features['gallery'], dataset.gallery)
    ours = evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids)
    expected, = results
    np.testing.assert_allclose(ours.cmc, expected.cmc, atol=1e-6)
    assert ours.mAP == pytest.approx(expected.mAP, abs=1e-6) and ours.mINP == pytest.approx(expected.mINP, abs=1e-6)
    assert 0 < expected.mAP < 1


@pytest.fixture(scope='module')
def extractor(checkpoint):
    return FeatureExtractor(str(checkpoint), batch_size=2)


def test_api_paths_pil_and_arrays(dataset, checkpoint, extractor):
    """Same features from paths, PIL images, RGB arrays and BGR arrays; and they are the test
    feature computed by hand: BNNeck feature, flip-averaged, L2-normalised."""
    paths = [path for path, _, _ in dataset.query[:3]]
    from_paths = extractor(paths)
    pil = [Image.open(path).convert('RGB') for path in paths]
    rgb = [np.asarray(image) for image in pil]
    assert from_paths.shape == (3, 2048) and from_paths.dtype == np.float32
    np.testing.assert_array_equal(extractor(pil), from_paths)
    np.testing.assert_array_equal(extractor(rgb), from_paths)
    np.testing.assert_array_equal(extractor([image[:, :, ::-1] for image in rgb], bgr=True), from_paths)
    assert not np.allclose(extractor([rgb[0][:, :, ::-1]]), from_paths[:1], atol=1e-3)  # the channel order matters

    model, _ = model_config.from_checkpoint(torch.load(checkpoint, weights_only=True))
    images = normalize(torch.stack([build_transforms(64, 32)[1](image) for image in pil]))
    with torch.no_grad():
        f = model.bottleneck(model.features(images)) + model.bottleneck(model.features(images.flip(3)))
    np.testing.assert_allclose(from_paths, F.normalize(f, dim=1).numpy(), atol=1e-5)
    assert extractor([]).shape == (0, 2048)


def test_api_rejects_wrong_input(extractor):
    with pytest.raises(ValueError, match=r'\(H, W, 3\) uint8'):
        extractor([np.zeros((64, 32, 3), dtype=np.float32)])
    with pytest.raises(TypeError, match='image path, a PIL image or a uint8 array'):
        extractor([torch.zeros(3, 64, 32)])


@pytest.mark.parametrize('test_sample', ['evenly', 'all'])
def test_api_video_pools_as_testing(tmp_path, test_sample):
    """Tracklets of 2 and 5 frames: the extractor's features are the evaluation's
    (engine.extract_features over a VideoDataset, then normalised for cosine)."""
    config = dict(CONFIG, video=True, seq_len=3, pool='max', flip_test=False, test_sample=test_sample)
    checkpoint = save_checkpoint(tmp_path / 'video.pth.tar', config, torch.randn(4, 3, 64, 32))
    rng = np.random.default_rng(0)
    tracklets = []
    for length in (2, 5):
        frames = [str(tmp_path / f'{length}_{i}.png') for i in range(length)]
        for frame in frames:
            Image.fromarray(rng.integers(0, 256, (60, 30, 3), dtype=np.uint8)).save(frame)
        tracklets.append(frames)
    extractor = FeatureExtractor(checkpoint, batch_size=4)
    ours = extractor(tracklets)

    model, _ = model_config.from_checkpoint(torch.load(checkpoint, weights_only=True))
    video_set = VideoDataset([(tuple(t), 0, 0) for t in tracklets], 3, test_sample, build_transforms(64, 32)[1])
    loader = torch.utils.data.DataLoader(video_set, batch_size=1)
    expected = F.normalize(engine.extract_features(model, loader, torch.device('cpu'), pool='max')[0], dim=1)
    np.testing.assert_allclose(ours, expected.numpy(), atol=1e-5)
    with pytest.raises(TypeError, match='list of tracklets'):
        extractor(tracklets[0])


def run_command(monkeypatch, capsys, *args):
    """extract_features.py in-process: (exit status, stdout, stderr)."""
    return run_main(extract_features, monkeypatch, capsys, *args)


def test_command_formats_list_and_bad_images(root, checkpoint, command_features, tmp_path, monkeypatch, capsys):
    features, paths = command_features['query']
    bad = tmp_path / 'truncated.jpg'
    bad.write_bytes(open(paths[1], 'rb').read()[:200])
    listing = tmp_path / 'list.txt'
    listing.write_text(f'{paths[0]}\n{bad}\n\n{paths[2]}\n')

    status, _, err = run_command(monkeypatch, capsys, '--resume', checkpoint, '--input', listing,
                                 '--output', tmp_path / 'f.h5')
    assert status == 1 and err.startswith(f'error: cannot read image {bad}') and '--skip-bad-images' in err
    assert not (tmp_path / 'f.h5').exists()

    status, out, _ = run_command(monkeypatch, capsys, '--resume', checkpoint, '--input', listing,
                                 '--output', tmp_path / 'f.h5', '--skip-bad-images', '--batch-size', '2')
    assert status == 0 and f'Skipped 1 unreadable images:\n  cannot read image {bad}' in out
    with h5py.File(tmp_path / 'f.h5') as f:
        assert [p.decode() for p in f['paths'][:]] == [paths[0], paths[2]]
        np.testing.assert_allclose(f['features'][:], features[[0, 2]], atol=1e-5)

    status, _, _ = run_command(monkeypatch, capsys, '--resume', checkpoint, '--input', root / 'market1501' / 'query',
                               '--output', tmp_path / 'out' / 'q.npy', '--workers', '1')
    assert status == 0
    np.testing.assert_allclose(np.load(tmp_path / 'out' / 'q.npy'), features, atol=1e-5)
    assert (tmp_path / 'out' / 'q.txt').read_text().splitlines() == paths


def test_command_video_tracklets(tmp_path, monkeypatch, capsys):
    """A video checkpoint: one tracklet per folder, or per line of a list file, pooled as the API pools."""
    config = dict(CONFIG, video=True, seq_len=3, flip_test=False)
    checkpoint = save_checkpoint(tmp_path / 'video.pth.tar', config, torch.randn(4, 3, 64, 32))
    rng = np.random.default_rng(1)
    tracklets = []
    for name, length in (('a', 4), ('b', 2)):
        (tmp_path / 'tracks' / name).mkdir(parents=True)
        tracklets.append([str(tmp_path / 'tracks' / name / f'{i}.jpg') for i in range(length)])
        for frame in tracklets[-1]:
            Image.fromarray(rng.integers(0, 256, (60, 30, 3), dtype=np.uint8)).save(frame)
    expected = FeatureExtractor(checkpoint)(tracklets)

    status, out, _ = run_command(monkeypatch, capsys, '--resume', checkpoint, '--input', tmp_path / 'tracks',
                                 '--output', tmp_path / 'f.npz')
    assert status == 0 and 'Extracted 2/2 tracklets' in out
    with np.load(tmp_path / 'f.npz') as data:
        assert list(data['paths']) == [str(tmp_path / 'tracks' / name) for name in 'ab']
        np.testing.assert_allclose(data['features'], expected, atol=1e-5)
    (tmp_path / 'list.txt').write_text(''.join(' '.join(frames) + '\n' for frames in tracklets[::-1]))
    status, _, _ = run_command(monkeypatch, capsys, '--resume', checkpoint, '--input', tmp_path / 'list.txt',
                               '--output', tmp_path / 'f.npy')
    assert status == 0
    np.testing.assert_allclose(np.load(tmp_path / 'f.npy'), expected[::-1], atol=1e-5)


@pytest.mark.parametrize('args, message', [
    (['--input', 'nowhere'], 'error: --input nowhere: no such folder or file'),
    (['--output', 'f.csv'], 'error: --output f.csv: use a .npz, .h5 or .npy file name'),
    (['--resume', 'missing.pth.tar'], 'error: checkpoint missing.pth.tar does not exist'),
])
def test_command_errors(checkpoint, root, tmp_path, monkeypatch, capsys, args, message):
    given = {'--resume': checkpoint, '--input': root / 'market1501' / 'query', '--output': tmp_path / 'f.npz'}
    given.update(zip(args[::2], args[1::2]))
    status, _, err = run_command(monkeypatch, capsys, *[x for pair in given.items() for x in pair])
    assert status == 1 and err.strip() == message


@pytest.fixture(scope='module')
def onnx_path(checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp('onnx') / 'reid.onnx'
    result = run_script('export_onnx.py', '--resume', checkpoint, '--output', path)
    assert re.search(r"images \('batch', 3, 64, 32\) -> features \(batch, 2048\)", result.stdout)
    assert 'onnxruntime check on a random batch' in result.stdout
    return path


def test_onnx_matches_pytorch(onnx_path, checkpoint, dataset, command_features):
    session = onnxruntime.InferenceSession(str(onnx_path), providers=['CPUExecutionProvider'])
    metadata = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    assert '"dist_metric": "cosine"' in metadata['reid_config']
    net, _ = feature_net(torch.load(checkpoint, weights_only=True))
    for batch in (1, 5):  # the batch axis is dynamic
        images = torch.randn(batch, 3, 64, 32)
        with torch.no_grad():
            expected = net(images).numpy()
        assert np.abs(session.run(None, {'images': images.numpy()})[0] - expected).max() <= 1e-4

    # Real images, preprocessed as the evaluation does, against the command's features.
    transform = build_transforms(64, 32)[1]

    def onnx_features(split, items):
        images = normalize(torch.stack([image for image, _, _ in ImageDataset(items, transform)]))
        got = session.run(None, {'images': images.numpy()})[0]
        expected, pids, camids = by_path(*command_features[split], items)
        assert np.abs(got - expected.numpy()).max() <= 1e-4
        return torch.from_numpy(got), expected, pids, camids

    q_onnx, qf, q_pids, q_camids = onnx_features('query', dataset.query)
    g_onnx, gf, g_pids, g_camids = onnx_features('gallery', dataset.gallery)
    # The ONNX ranking is PyTorch's up to near-ties (features differ by ~1e-7, so two entries at
    # equal distance may swap): along it, PyTorch's distances never fall by more than rounding.
    order = squared_euclidean(q_onnx, g_onnx).argsort(dim=1, stable=True)
    assert (squared_euclidean(qf, gf).gather(1, order).diff(dim=1) >= -1e-5).all()
    ours, theirs = (evaluate_features(q, g, q_pids, g_pids, q_camids, g_camids) for q, g in ((q_onnx, g_onnx), (qf, gf)))
    np.testing.assert_array_equal(ours.cmc, theirs.cmc)
    assert ours.mAP == theirs.mAP


@pytest.mark.parametrize('args, message', [
    (['--batch', '0'], "error: --batch 0: give 'dynamic' or a positive batch size"),
    (['--height', '0'], 'error: --height 0: give a positive number of pixels'),
    (['--resume', 'missing.pth.tar'], 'error: checkpoint missing.pth.tar does not exist'),
])
def test_export_errors(checkpoint, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.setattr(sys, 'argv', ['export_onnx.py', '--resume', str(checkpoint), '--output', str(tmp_path / 'm.onnx'), *args])
    with pytest.raises(SystemExit) as exit_info:
        export_onnx.main()
    assert exit_info.value.code == 1 and capsys.readouterr().err.strip() == message


def test_onnx_video_graph_is_per_frame(tmp_path):
    """A video checkpoint exports the per-frame network: normalisation comes after pooling."""
    model = models.init_model('resnet50', 4, pretrained=False, neck='bnneck')
    net, _ = feature_net({'state_dict': model.state_dict(), 'model': dict(CONFIG, video=True)})
    assert net.flip and not net.normalize
