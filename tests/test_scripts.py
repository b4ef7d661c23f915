"""End to end: the four scripts train on generated data, learn, checkpoint, resume and evaluate."""
import json
import re

import numpy as np
import pytest
import torch

import engine
import models
from conftest import FAST, parse_epoch_losses, parse_results, run_script, shared_path

SCRIPTS = {
    'img_xent': ('train_img_model_xent.py', ['-d', 'market1501', '--max-epoch', '20', '--eval-step', '10']),
    'img_htri': ('train_img_model_xent_htri.py', ['-d', 'market1501', '--max-epoch', '12', '--eval-step', '6']),
    'vid_xent': ('train_vid_model_xent.py', ['-d', 'mars', '--seq-len', '4', '--max-epoch', '4', '--eval-step', '2']),
    'vid_htri': ('train_vid_model_xent_htri.py', ['-d', 'mars', '--seq-len', '4', '--max-epoch', '6', '--eval-step', '3']),
}


@pytest.fixture(scope='module')
def trained(synthetic_root, tmp_path_factory):
    """Run each script once; tests below read their outputs."""
    runs = {}
    for name, (script, args) in SCRIPTS.items():
        save_dir = tmp_path_factory.mktemp(name)
        result = run_script(script, *FAST, '--root', synthetic_root, *args, '--save-dir', save_dir,
                            '--gpu-devices', '0')
        runs[name] = (result.stdout, save_dir)
    return runs


@pytest.mark.parametrize('name', list(SCRIPTS))
def test_training_learns(name, trained, untrained_mAP):
    stdout, _ = trained[name]
    losses = parse_epoch_losses(stdout)
    results = parse_results(stdout)
    dataset = SCRIPTS[name][1][1]
    assert losses[-1] < 0.75 * losses[0], f'loss did not fall: {losses}'
    assert results[-1][0] >= untrained_mAP[dataset] + 8, \
        f'mAP {results[-1][0]} not well above the untrained model\'s {untrained_mAP[dataset]}'


@pytest.mark.parametrize('name', list(SCRIPTS))
def test_output_checkpoints_and_log(name, trained):
    stdout, save_dir = trained[name]
    assert 'Currently using CPU (CUDA is not available' in stdout
    assert re.search(r'^Model size: \d+\.\d{5}M$', stdout, re.M)
    for line in ('Initializing model: resnet50', '==> Epoch 1/', '==> Test', 'Computing CMC and mAP',
                 'Results ----------', 'CMC curve', 'Rank-5  :', 'Rank-20 :', 'Finished. Total elapsed time (h:m:s): '):
        assert line in stdout
    max_epoch, eval_step = int(SCRIPTS[name][1][-3]), int(SCRIPTS[name][1][-1])
    for epoch in range(eval_step, max_epoch + 1, eval_step):
        checkpoint = torch.load(save_dir / f'checkpoint_ep{epoch}.pth.tar', weights_only=True)
        assert checkpoint['epoch'] == epoch and 0 <= checkpoint['rank1'] <= 1 and 0 <= checkpoint['mAP'] <= 1
        assert not any(k.startswith('module.') for k in checkpoint['state_dict'])
        assert {'optimizer', 'rng', 'args', 'model'} <= set(checkpoint)
    assert (save_dir / 'best_model.pth.tar').exists()
    assert (save_dir / 'log_train.txt').read_text().strip().endswith(stdout.strip().splitlines()[-1])


def test_evaluate_checkpoint_of_another_run(trained, synthetic_root, tmp_path):
    stdout, save_dir = trained['img_htri']
    result = run_script('train_img_model_xent.py', *FAST, '--root', synthetic_root, '--evaluate',
                        '--resume', save_dir / 'checkpoint_ep12.pth.tar', '--save-dir', tmp_path)
    assert parse_results(result.stdout) == [parse_results(stdout)[-1]]
    assert 'Results' in (tmp_path / 'log_test.txt').read_text()


def test_resume_continues_and_is_exact(synthetic_root, tmp_path):
    """Interrupted after epoch 2 and resumed == uninterrupted: same losses, same weights, bit for bit.
    (A small timm ResNet-18: the point is the wiring, and its checkpoints are a fifth of ResNet-50's.)"""
    common = [*FAST, '--root', synthetic_root, '--workers', '2', '--stepsize', '2', '--train-batch', '16',
              '--eval-step', '2', '-a', 'timm:resnet18']
    full = run_script('train_img_model_xent_htri.py', *common, '--max-epoch', '4', '--save-dir', tmp_path / 'a')
    first = run_script('train_img_model_xent_htri.py', *common, '--max-epoch', '2', '--save-dir', tmp_path / 'b')
    second = run_script('train_img_model_xent_htri.py', *common, '--max-epoch', '4', '--save-dir', tmp_path / 'b',
                        '--resume', tmp_path / 'b' / 'checkpoint_ep2.pth.tar')
    assert 'Resuming training from epoch 3' in second.stdout and '==> Epoch 1/' not in second.stdout

    def lines(stdout):
        # Batch lines without their timing (images/s, ETA): what was computed, not how fast.
        return [line.split('\t')[:2] for line in stdout.splitlines() if line.startswith(('Batch', 'mAP', 'Rank-'))]
    assert lines(full.stdout) == lines(first.stdout) + lines(second.stdout)
    a = torch.load(tmp_path / 'a' / 'checkpoint_ep4.pth.tar', weights_only=True)
    b = torch.load(tmp_path / 'b' / 'checkpoint_ep4.pth.tar', weights_only=True)
    assert all(torch.equal(a['state_dict'][k], b['state_dict'][k]) for k in a['state_dict'])
    assert a['optimizer']['state'][0]['step'] == b['optimizer']['state'][0]['step']


def test_evaluate_2018_released_checkpoint(synthetic_root, tmp_path):
    """A checkpoint in the 2018 layout: 'module.' keys, no num_batches_tracked, 751 ids,
    rank-1 as a numpy scalar, saved in the legacy (pre-zip) format."""
    layout = json.loads(shared_path('data', 'seed-checkpoints', 'state_dict_keys.json').read_text())
    torch.manual_seed(0)
    reference = models.init_model('resnet50', 751, pretrained=False)
    own = reference.state_dict()
    state_dict = {'module.' + key: own[key].clone() for key, _ in layout['resnet50']}
    path = tmp_path / 'checkpoint_ep60.pth.tar'
    torch.save({'state_dict': state_dict, 'epoch': 60, 'rank1': np.float64(0.854)}, path,
               _use_new_zipfile_serialization=False)
    result = run_script('train_img_model_xent.py', *FAST, '--root', synthetic_root, '--evaluate',
                        '--resume', path, '--save-dir', tmp_path)
    assert "skipped the checkpoint's classifier" in result.stdout
    assert len(parse_results(result.stdout)) == 1


def test_rerank_flag_prints_results_before_and_after(trained, synthetic_root, tmp_path):
    _, save_dir = trained['img_xent']
    result = run_script('train_img_model_xent.py', *FAST, '--root', synthetic_root, '--evaluate', '--rerank',
                        '--k1', '10', '--k2', '3', '--resume', save_dir / 'checkpoint_ep20.pth.tar',
                        '--save-dir', tmp_path)
    assert 'Results with re-ranking ----------' in result.stdout
    assert len(parse_results(result.stdout)) == 2


def test_video_clip_training_and_all_frame_testing(synthetic_root, tmp_path):
    result = run_script('train_vid_model_xent_htri.py', *FAST, '--root', synthetic_root, '--seq-len', '3',
                        '--clip-train', '--train-batch', '8', '--num-instances', '2', '--max-epoch', '1',
                        '--test-sample', 'all', '--test-chunk', '4', '--pool', 'max', '--rerank',
                        '--save-dir', tmp_path)
    assert 'Extracted features for query set, obtained 24-by-2048 matrix' in result.stdout
    assert len(parse_results(result.stdout)) == 2


def test_progress_lines(trained, capsys):
    stdout, _ = trained['img_xent']
    assert re.search(r'^Batch 1/\d+\t Loss [\d.]+ \([\d.]+\)\t [\d.]+ img/s, ETA epoch \d+:\d\d:\d\d, run \d+:\d\d:\d\d$',
                     stdout, re.M)
    model = models.init_model('resnet50', 3, pretrained=False)
    loader = torch.utils.data.DataLoader([(torch.randn(3, 64, 32), 0, 0)] * 6, batch_size=2)
    engine.extract_features(model, loader, torch.device('cpu'), split='gallery', every=0)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(',')[0] for line in lines] == ['  gallery features: 2/6', '  gallery features: 4/6']
    assert all(re.search(r'[\d.]+/s, ETA \d+:\d\d:\d\d$', line) for line in lines)
