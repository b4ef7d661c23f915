"""DistributedDataParallel on the CPU (gloo): one step equals the single-process step, evaluation
equals the single-process evaluation, and a run whose worker is SIGKILLed under torchrun resumes
from its last checkpoint to the same final weights as an uninterrupted run."""
import os
import signal
import subprocess
import sys
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import distributed
import engine
import models
import train_img_model_xent_htri
from conftest import FAST, REPO, parse_results, run_script
from losses import ReIDLoss
from samplers import RandomIdentitySampler

WORLD_SIZE = 2
# (name, loss set, center-loss weight, BNNeck): the scripts' objectives; the last case is a
# 2-block ViT with a camera embedding (camera ids travel through the step).
CASES = [('xent', {'xent'}, 0.0, False), ('xent+htri', {'xent', 'htri'}, 0.0, False),
         ('xent+htri+center+bnneck', {'xent', 'htri'}, 5e-4, True),
         ('vit+camera+xent+htri+bnneck', {'xent', 'htri'}, 0.0, True)]
CAMIDS = torch.tensor([0, 1, 1, 0, 0, 1, 1, 0])


def fixed_batch():
    """8 images of 4 identities x 2: each rank's half holds 2 whole identities."""
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(8, 3, 64, 32, generator=generator, dtype=torch.float64),
            torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))


def setup(case):
    """The model of a case, identically initialised in every process.

    In float64: a randomly initialised ResNet-50 amplifies float32 rounding on its way back to
    the first layers (gradients up to about 60 there), so two float32 computations of the same
    step, summed in a different order, differ there by about 2%; in float64 DDP and the single
    process agree to about 1e-11, which leaves the 1e-5 tolerance to real mistakes only.
    """
    name, loss, center, bnneck = case
    torch.manual_seed(0)
    loss, neck = loss | ({'cent'} if center else set()), 'bnneck' if bnneck else 'none'
    if name.startswith('vit'):
        return models.vit.VisionTransformer(4, 'vit_small_patch16_224', loss=loss, neck=neck, height=64, width=32,
                                            num_cameras=2, timm_options={'depth': 2}).double()
    return models.init_model('resnet50', num_classes=4, loss=loss, pretrained=False, neck=neck).double()


def one_step(model, case, imgs, pids, camids):
    """One engine.train_step with the case's objective (the scripts' criterion); returns the
    weights, running statistics and centers after it."""
    _, loss, center, _ = case
    plain = model.module if isinstance(model, DistributedDataParallel) else model
    torch.manual_seed(1)  # the centers
    args = SimpleNamespace(label_smooth=0.1, margin=0.3, htri_only=False, center_loss=center, soft_margin=False)
    criterion = (train_img_model_xent_htri.build_criterion(args, 4, plain.feat_dim) if 'htri' in loss
                 else ReIDLoss(4, 0.1))
    # SGD: its step is linear in the gradient, so equal weights mean equal gradients (Adam's
    # first step is lr * sign(gradient), blind to the gradient's size).
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    center_optimizer = torch.optim.SGD(criterion.center.parameters(), lr=0.5) if center else None
    model.train()
    engine.train_step(model, criterion, optimizer, center_optimizer, torch.amp.GradScaler('cpu', enabled=False),
                      imgs, pids, None, camids)
    return {**plain.state_dict(), **{'criterion.' + k: v for k, v in criterion.state_dict().items()}}


def ddp_worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=WORLD_SIZE)
    imgs, pids = fixed_batch()
    share = slice(rank * 4, rank * 4 + 4)
    for case in CASES:
        for sync_bn in (True, False):
            model = setup(case)
            if sync_bn:
                model = distributed.convert_sync_batchnorm(model, torch.device('cpu'))
            state = one_step(DistributedDataParallel(model), case, imgs[share], pids[share], CAMIDS[share])
            if rank == 0:
                torch.save(state, os.path.join(out_dir, f'{case[0]}-{sync_bn}.pt'))
    # Evaluation gathers shards of unequal length back in order.
    rows = torch.arange(7 * 3, dtype=torch.float32).view(7, 3)
    bounds = [0, 3, 7]
    gathered = distributed.gather_in_order(rows[bounds[rank]:bounds[rank + 1]])
    if rank == 0:
        torch.save(gathered, os.path.join(out_dir, 'gathered.pt'))
    dist.destroy_process_group()


@pytest.fixture(scope='module')
def ddp_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp('ddp')
    mp.spawn(ddp_worker, args=(str(out_dir / 'init'), str(out_dir)), nprocs=WORLD_SIZE)
    return out_dir


@pytest.mark.parametrize('case', CASES, ids=[c[0] for c in CASES])
def test_ddp_step_equals_single_process_step(case, ddp_results):
    imgs, pids = fixed_batch()
    initial = setup(case).state_dict()
    single = one_step(setup(case), case, imgs, pids, CAMIDS)
    ddp = torch.load(ddp_results / f'{case[0]}-True.pt', weights_only=True)
    assert ddp.keys() == single.keys()
    for key in single:
        assert torch.allclose(ddp[key].float(), single[key].float(), rtol=0, atol=1e-5), key
    # The step moved the weights far beyond the tolerance, so the comparison has teeth:
    moved = max((single[k] - initial[k]).abs().max().item() for k in initial if initial[k].is_floating_point())
    assert moved > 1e-2
    # and without SyncBatchNorm each rank normalises by its own half: the step differs.
    unsynced = torch.load(ddp_results / f'{case[0]}-False.pt', weights_only=True)
    assert max((unsynced[k] - single[k]).abs().max().item() for k in initial if initial[k].is_floating_point()) > 1e-4


def test_gather_in_order_restores_dataset_order(ddp_results):
    assert torch.equal(torch.load(ddp_results / 'gathered.pt'), torch.arange(21, dtype=torch.float32).view(7, 3))


def test_sampler_shards_are_the_single_process_batches():
    data = [(f'{pid}-{i}', pid, 0) for pid in range(10) for i in range(3 + pid % 4)]
    single = RandomIdentitySampler(data, num_instances=2, batch_size=8, seed=5)
    shards = [RandomIdentitySampler(data, num_instances=2, batch_size=8, num_replicas=2, rank=r, seed=5)
              for r in range(2)]
    for sampler in (single, *shards):
        sampler.set_epoch(3)
    whole = list(single)  # 10 identities x 2 = 2 complete batches of 8, the tail dropped
    assert len(whole) == len(single) == 16 and all(len(s) == 8 == len(list(s)) for s in shards)
    parts = [list(s) for s in shards]
    for b in range(2):  # each global batch: rank 0 its first half, rank 1 the second
        assert parts[0][4 * b:4 * b + 4] + parts[1][4 * b:4 * b + 4] == whole[8 * b:8 * b + 8]
        assert not {data[i][1] for i in parts[0][4 * b:4 * b + 4]} & {data[i][1] for i in parts[1][4 * b:4 * b + 4]}
    assert sorted(Counter(data[i][1] for i in whole).values()) == [2] * 8
    single.set_epoch(4)
    assert list(single) != whole


def worker_pid(torchrun, rank):
    """The pid of the training process of `rank` among torchrun's children."""
    children = []
    for task in os.listdir(f'/proc/{torchrun.pid}/task'):
        with open(f'/proc/{torchrun.pid}/task/{task}/children') as f:
            children += f.read().split()
    for pid in children:
        with open(f'/proc/{pid}/environ', 'rb') as f:
            if f'RANK={rank}'.encode() in f.read().split(b'\0'):
                return int(pid)
    raise AssertionError(f'no process of rank {rank} among {children}')


def torchrun(save_dir, root, kill_rank1_at=None):
    """Train 2 epochs of the triplet script (a timm ResNet-18: small checkpoints) on 2 CPU processes
    with --resume auto; with
    kill_rank1_at = (epoch, batch), SIGKILL rank 1 when rank 0 prints that batch."""
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '2',
               '--max-restarts', '1', str(REPO / 'train_img_model_xent_htri.py'), *map(str, FAST),
               '--root', str(root), '--train-batch', '16', '--num-instances', '4', '--max-epoch', '2',
               '--sync-bn', '--resume', 'auto', '--save-dir', str(save_dir), '-a', 'timm:resnet18']
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, epoch, killed = [], 0, False
    for line in process.stdout:
        lines.append(line)
        if line.startswith('==> Epoch '):
            epoch = int(line.split()[2].split('/')[0])
        if kill_rank1_at and not killed and (epoch, line.split('\t')[0]) == (kill_rank1_at[0], f'Batch {kill_rank1_at[1]}/8'):
            os.kill(worker_pid(process, 1), signal.SIGKILL)
            killed = True
    assert process.wait(timeout=600) == 0, ''.join(lines[-60:])
    return ''.join(lines)


def test_torchrun_sigkill_of_a_worker_resumes_to_the_same_weights(synthetic_root, tmp_path):
    uninterrupted = torchrun(tmp_path / 'a', synthetic_root)
    interrupted = torchrun(tmp_path / 'b', synthetic_root, kill_rank1_at=(2, 3))
    assert 'no checkpoint in' in uninterrupted and 'Distributed: 2 processes on the CPU (gloo)' in uninterrupted
    assert f'--resume auto: continuing from {tmp_path / "b" / "checkpoint_last.pth.tar"} (epoch 1)' in interrupted
    a = torch.load(tmp_path / 'a' / 'checkpoint_last.pth.tar', weights_only=True)
    b = torch.load(tmp_path / 'b' / 'checkpoint_last.pth.tar', weights_only=True)
    assert a['epoch'] == b['epoch'] == 2
    assert all(torch.equal(a['state_dict'][k], b['state_dict'][k]) for k in a['state_dict'])
    # The printed results come once, and equal the single-process evaluation of those weights.
    assert len(parse_results(uninterrupted)) == 1 and parse_results(uninterrupted) == parse_results(interrupted)
    single = run_script('train_img_model_xent_htri.py', *FAST, '--root', synthetic_root, '--evaluate',
                        '--resume', tmp_path / 'a' / 'checkpoint_last.pth.tar', '--save-dir', tmp_path / 'eval')
    assert parse_results(single.stdout) == parse_results(uninterrupted)
    assert 'obtained 73-by-512 matrix' in uninterrupted


@pytest.mark.parametrize('arch', ['resnet50', 'vit_small'])
def test_compiled_model_trains_the_plain_module_that_checkpoints_save(arch):
    model = models.init_model(arch, num_classes=4, pretrained=False, height=64, width=32)
    args = SimpleNamespace(sync_bn=False, distributed=False, compile=True)
    wrapped = engine.wrap_for_training(model, torch.device('cpu'), args)  # compiles lazily: nothing runs
    assert wrapped is not model and wrapped._orig_mod is model
    fresh = models.init_model(arch, num_classes=4, pretrained=False, height=64, width=32)
    assert set(model.state_dict()) == set(fresh.state_dict())
