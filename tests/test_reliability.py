"""Bad input, safe checkpoints, clean stops: each case of the reliability issue, end to end."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import checkpoints
import engine
import train_img_model_xent
import train_vid_model_xent_htri
from conftest import FAST, REPO, run_script
from losses import CrossEntropyLabelSmooth


@pytest.fixture
def market_copy(synthetic_root, tmp_path):
    shutil.copytree(synthetic_root / 'market1501', tmp_path / 'market1501')
    return tmp_path


def first_image(root, split):
    """The first image of a real identity (junk and distractor files are not all read)."""
    folder = root / 'market1501' / split
    return folder / next(n for n in sorted(os.listdir(folder)) if not n.startswith(('-1', '0000')))


@pytest.mark.parametrize('split, folder, damage', [
    ('gallery', 'bounding_box_test', 'truncate'),
    ('query', 'query', 'empty'),
    ('train', 'bounding_box_train', 'empty'),
])
def test_bad_image_stops_the_run_naming_file_and_split(market_copy, split, folder, damage):
    path = first_image(market_copy, folder)
    if damage == 'truncate':
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif damage == 'empty':
        path.write_bytes(b'')
    # One training batch holding the whole split, so every training image is read.
    num_train = len(os.listdir(market_copy / 'market1501' / 'bounding_box_train'))
    args = ['--evaluate'] if split != 'train' else ['--max-epoch', '1', '--train-batch', num_train]
    # Two workers: the error must cross the process boundary, not hang the loader.
    result = run_script('train_img_model_xent.py', *FAST, '--workers', '2', '--root', market_copy,
                        *args, '--save-dir', market_copy / 'log', check=False, timeout=300)
    assert result.returncode == 1
    assert path.name in result.stderr and f'in the {split} split' in result.stderr


def test_missing_mars_frame_names_file_and_split(synthetic_root, tmp_path):
    shutil.copytree(synthetic_root / 'mars', tmp_path / 'mars')
    folder = tmp_path / 'mars' / 'bbox_test'
    pid_folder = next(d for d in sorted(os.listdir(folder)) if d not in ('00-1', '0000'))
    frame = sorted(os.listdir(folder / pid_folder))[0]
    (folder / pid_folder / frame).unlink()
    result = run_script('train_vid_model_xent.py', *FAST, '--root', tmp_path, '--seq-len', '4', '--evaluate',
                        '--test-sample', 'all', '--save-dir', tmp_path / 'log', check=False)
    assert result.returncode == 1
    assert frame in result.stderr and ('in the query split' in result.stderr or 'in the gallery split' in result.stderr)


def test_missing_dataset_fails_before_the_model(tmp_path):
    result = run_script('train_vid_model_xent.py', *FAST, '--root', tmp_path, '--save-dir', tmp_path / 'log',
                        check=False)
    assert result.returncode == 1
    assert str(tmp_path / 'mars') in result.stderr and 'bbox_train' in result.stderr
    assert 'Initializing model' not in result.stdout


@pytest.mark.parametrize('parser, argv, message', [
    (train_vid_model_xent_htri, ['--train-batch', '30', '--num-instances', '4'], 'must be divisible by --num-instances'),
    (train_vid_model_xent_htri, ['--seq-len', '0'], '--seq-len must be at least 1'),
    (train_img_model_xent, ['--height', '0'], '--height must be positive'),
    (train_img_model_xent, ['--width', '-5'], '--width must be positive'),
    (train_img_model_xent, ['--eval-step', '0'], '--eval-step must be a positive number'),
    (train_img_model_xent, ['-a', 'vgg16'], "unknown model 'vgg16'; known models: resnet50, resnet50m, densenet121"),
    (train_img_model_xent, ['-d', 'dukemtmc'], "invalid choice: 'dukemtmc' (choose from 'market1501', 'dukemtmcreid'"),
    (train_img_model_xent, ['--resume', '/no/such/checkpoint.pth.tar'], '--resume /no/such/checkpoint.pth.tar: no such file'),
    (train_img_model_xent, ['--rerank', '--k2', '30'], 're-ranking needs --k1 >= 1, 1 <= --k2 <= k1 + 1'),
])
def test_invalid_flags_are_rejected_up_front(parser, argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        parser.get_args_parser().parse_args(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_too_few_identities_for_one_batch(synthetic_root, tmp_path):
    result = run_script('train_img_model_xent_htri.py', *FAST, '--root', synthetic_root, '--train-batch', '160',
                        '--num-instances', '4', '--save-dir', tmp_path, check=False)
    assert result.returncode == 1
    assert 'has 32 identities, fewer than the 40 a batch needs' in result.stderr
    assert 'Initializing model' not in result.stdout


def test_no_valid_query_explains_camera_ids(market_copy):
    for folder in ('query', 'bounding_box_test'):
        path = market_copy / 'market1501' / folder
        for name in os.listdir(path):
            pid, rest = name.split('_c', 1)
            os.rename(path / name, path / f'{pid}_c1{rest[1:]}')
    result = run_script('train_img_model_xent.py', *FAST, '--root', market_copy, '--evaluate',
                        '--save-dir', market_copy / 'log', check=False)
    assert result.returncode == 1
    assert 'same camera id' in result.stderr and 'camera ids are parsed correctly' in result.stderr


SAVE_IN_A_LOOP = '''
import sys, torch
sys.path.insert(0, {repo!r})
import checkpoints
big = {{'state_dict': {{'w': torch.ones(150_000_000)}}, 'epoch': 2}}
print('saving', flush=True)
while True:
    checkpoints.save_checkpoint(big, {path!r})
'''


def test_checkpoint_survives_sigkill_during_save(tmp_path):
    path = tmp_path / 'checkpoint.pth.tar'
    good = {'state_dict': {'w': torch.arange(10.0)}, 'epoch': 1}
    checkpoints.save_checkpoint(good, path)
    code = SAVE_IN_A_LOOP.format(repo=str(REPO), path=str(path))
    process = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == 'saving'
    # Kill once the 600 MB temporary file is being written.
    deadline = time.time() + 60
    while not any(name.endswith('.tmp') for name in os.listdir(tmp_path)) and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert any(name.endswith('.tmp') for name in os.listdir(tmp_path)), 'the kill did not land mid-save'
    loaded = checkpoints.load_checkpoint(str(path))
    assert loaded['epoch'] == 1 and torch.equal(loaded['state_dict']['w'], good['state_dict']['w'])


class RunsCode:
    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, synthetic_root):
    marker = tmp_path / 'pwned'
    payload = RunsCode()
    payload.marker = marker
    path = tmp_path / 'evil.pth.tar'
    torch.save({'state_dict': {}, 'epoch': 1, 'payload': payload}, path)
    with pytest.raises(checkpoints.CheckpointError, match='Nothing was executed'):
        checkpoints.load_checkpoint(str(path))
    result = run_script('train_img_model_xent.py', *FAST, '--root', synthetic_root, '--evaluate', '--resume', path,
                        '--save-dir', tmp_path / 'log', check=False)
    assert result.returncode == 1 and 'refused to load' in result.stderr
    assert not marker.exists()


def test_truncated_or_foreign_files_are_refused(tmp_path):
    checkpoint = tmp_path / 'ok.pth.tar'
    checkpoints.save_checkpoint({'state_dict': {'w': torch.ones(1000)}, 'epoch': 3}, checkpoint)
    data = checkpoint.read_bytes()
    (tmp_path / 'truncated.pth.tar').write_bytes(data[:len(data) // 2])
    (tmp_path / 'notes.txt').write_text('not a checkpoint')
    torch.save([1, 2, 3], tmp_path / 'list.pth.tar')
    for name, message in (('truncated.pth.tar', 'truncated, corrupt'), ('notes.txt', 'truncated, corrupt'),
                          ('list.pth.tar', 'not a re-ID checkpoint')):
        with pytest.raises(checkpoints.CheckpointError, match=message):
            checkpoints.load_checkpoint(str(tmp_path / name))
    assert checkpoints.load_checkpoint(str(checkpoint))['epoch'] == 3


class NaNAtCall(CrossEntropyLabelSmooth):
    """The scripts' loss, turning NaN at its nan_at-th call."""
    center = None

    def __init__(self, num_classes, nan_at):
        super().__init__(num_classes)
        self.calls, self.nan_at = 0, nan_at

    def forward(self, inputs, targets):
        self.calls += 1
        loss = super().forward(inputs, targets)
        return loss * float('nan') if self.calls == self.nan_at else loss


def test_nan_loss_stops_with_epoch_batch_and_keeps_checkpoint(synthetic_root, tmp_path, capsys):
    args = train_img_model_xent.get_args_parser().parse_args(
        [*map(str, FAST), '--root', str(synthetic_root), '--max-epoch', '3', '--eval-step', '1',
         '--save-dir', str(tmp_path)])
    # 121 training images, batches of 32: 3 batches an epoch, so call 5 is epoch 2, batch 2.
    with pytest.raises(SystemExit) as info:
        engine.main(args, video=False, loss={'xent'}, build_criterion=lambda a, n, d: NaNAtCall(n, nan_at=5))
    assert info.value.code == 1
    stderr = capsys.readouterr().err
    assert 'the loss became nan at epoch 2, batch 2/3' in stderr and '--lr' in stderr and '--amp' in stderr
    assert checkpoints.load_checkpoint(str(tmp_path / 'checkpoint_ep1.pth.tar'))['epoch'] == 1
    assert not (tmp_path / 'checkpoint_ep2.pth.tar').exists()


def test_ctrl_c_exits_cleanly_naming_the_last_checkpoint(synthetic_root, tmp_path):
    command = [sys.executable, str(REPO / 'train_img_model_xent.py'), *map(str, FAST), '--root', str(synthetic_root),
               '--max-epoch', '50', '--eval-step', '1', '--save-dir', str(tmp_path)]
    # A shell that starts a job in the background (`cmd &` without job control) makes it ignore SIGINT, and the
    # children inherit that: Python then installs no KeyboardInterrupt handler and a Ctrl-C is silently dropped.
    # The child gets the default disposition back, as if it had been started from a terminal.
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in process.stdout:
        if line.startswith('==> Epoch 2/'):
            break
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130
    assert f'Interrupted. Last checkpoint: {tmp_path / "checkpoint_last.pth.tar"}' in stdout
    assert 'Traceback' not in stderr
    assert checkpoints.load_checkpoint(str(tmp_path / 'checkpoint_last.pth.tar'))['epoch'] == 1
    assert checkpoints.load_checkpoint(str(tmp_path / 'checkpoint_ep1.pth.tar'))['epoch'] == 1


def test_checkpoint_copies_are_hard_links_that_later_writes_leave_alone(tmp_path, monkeypatch):
    """best_model / checkpoint_last take no second copy on disk, and rewriting one name (an
    atomic rename of a new file) never changes the other."""
    epoch = tmp_path / 'checkpoint_ep2.pth.tar'
    checkpoints.save_checkpoint({'state_dict': {'w': torch.ones(3)}, 'epoch': 2}, epoch)
    last = tmp_path / 'checkpoint_last.pth.tar'
    checkpoints.copy_file_atomic(epoch, last)
    assert os.stat(last).st_ino == os.stat(epoch).st_ino
    checkpoints.save_checkpoint({'state_dict': {'w': torch.zeros(3)}, 'epoch': 3}, last)
    assert checkpoints.load_checkpoint(str(epoch))['epoch'] == 2 and checkpoints.load_checkpoint(str(last))['epoch'] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ['checkpoint_ep2.pth.tar', 'checkpoint_last.pth.tar']

    def no_links(src, dst):
        raise OSError('hard links not supported')
    monkeypatch.setattr(os, 'link', no_links)
    best = tmp_path / 'best_model.pth.tar'
    checkpoints.copy_file_atomic(epoch, best)
    assert os.stat(best).st_ino != os.stat(epoch).st_ino and best.read_bytes() == epoch.read_bytes()
