"""Knowledge distillation (--teacher): the two terms by hand, a teacher that never learns (no
gradient, BatchNorm statistics untouched, eval mode kept), its own preprocessing, the identity
check, a 2-process step equal to the single-process one, and the scripts end to end (the teacher
recorded by its SHA-256, exact resume, --evaluate --resume)."""
import hashlib
import math
import os
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import distributed
import checkpoints
import engine
import model_config
import models
from conftest import FAST, parse_results, run_script
from losses import DistillationLoss, ReIDLoss, logit_distillation, relation_distillation
from options import UsageError
from transforms import IMAGENET_MEAN, IMAGENET_STD, normalize

HALF = [0.5, 0.5, 0.5]


def test_relation_term_is_zero_for_the_same_cosines_and_positive_otherwise():
    torch.manual_seed(0)
    student = torch.randn(6, 8, dtype=torch.float64)
    assert relation_distillation(student, 3 * student).item() == pytest.approx(0, abs=1e-12)
    # Another feature size with the same cosines: rows of an orthonormal 8 x 12 embedding.
    embedding = torch.linalg.qr(torch.randn(12, 8, dtype=torch.float64))[0].t()
    assert relation_distillation(student, student @ embedding).item() == pytest.approx(0, abs=1e-12)
    assert relation_distillation(student, torch.randn(6, 5, dtype=torch.float64)).item() > 0.01
    # By hand: C_s = I, C_t = all ones; (0^2 + 1^2 + 1^2 + 0^2) / 2^2.
    assert relation_distillation(torch.eye(2), torch.tensor([[1.0, 0.0], [2.0, 0.0]])).item() == pytest.approx(0.5)


def test_logit_term_equals_the_hand_computation():
    student = [[1.0, -0.5, 2.0], [0.0, 0.3, -1.2]]
    teacher = [[0.2, 1.5, -0.4], [2.2, -1.0, 0.7]]
    temperature = 2.0

    def softmax(row):
        exps = [math.exp(v / temperature) for v in row]
        return [e / sum(exps) for e in exps]

    kl = [sum(t * math.log(t / s) for t, s in zip(softmax(zt), softmax(zs))) for zs, zt in zip(student, teacher)]
    expected = temperature ** 2 * sum(kl) / len(kl)
    value = logit_distillation(torch.tensor(student), torch.tensor(teacher), temperature)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    same = logit_distillation(torch.tensor(teacher), torch.tensor(teacher), temperature)
    assert same.item() == pytest.approx(0, abs=1e-7)


@pytest.mark.parametrize('neck', ['none', 'bnneck'])
@pytest.mark.parametrize('neck_feat', ['after', 'before'])
def test_logits_and_test_feature_in_eval_mode(neck, neck_feat):
    torch.manual_seed(0)
    model = models.init_model('osnet_x0_25', 5, pretrained=False, neck=neck, neck_feat=neck_feat)
    images = torch.randn(4, 3, 64, 32)
    model.train()
    model(images)  # BatchNorm running statistics away from their initial values
    model.eval()
    with torch.no_grad():
        logits, feature = model.logits_and_test_feature(images)
        f = model.features(images)
        assert torch.allclose(feature, model(images), atol=1e-6), 'the test feature of forward()'
        expected = model.classifier(model.bottleneck(f) if neck == 'bnneck' else f)
        assert torch.allclose(logits, expected, atol=1e-6), 'the classifier reads the neck feature'


def teacher_file(tmp_path, arch='timm:resnet18', num_classes=4, neck='bnneck', height=64, width=32, mean=None,
                 std=None, **extra):
    """A checkpoint of a randomly initialised teacher whose BatchNorm statistics were moved by a
    few training-mode passes; returns its path."""
    torch.manual_seed(5)
    model = models.init_model(arch, num_classes, pretrained=False, neck=neck, height=height, width=width)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, height, width))
    config = dict(model_config.CONFIG_DEFAULTS, arch=arch, neck=neck, height=height, width=width,
                  pixel_mean=mean or IMAGENET_MEAN, pixel_std=std or IMAGENET_STD)
    path = tmp_path / f'teacher-{num_classes}.pth.tar'
    torch.save({'state_dict': model.state_dict(), 'model': config, **extra}, path)
    return path


def student_and_batch(num_classes=4):
    torch.manual_seed(0)
    student = models.init_model('osnet_x0_25', num_classes, loss={'xent', 'htri', 'kd'}, pretrained=False)
    pixels = torch.randint(0, 256, (8, 3, 64, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return student, pixels, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def test_the_teacher_never_learns_and_gradients_reach_the_student_only(tmp_path):
    # A teacher of another size and normalisation: the batch is resized and re-normalised for it.
    teacher = checkpoints.load_teacher(teacher_file(tmp_path, height=96, width=48, mean=HALF, std=HALF),
                                  IMAGENET_MEAN, IMAGENET_STD, ['market1501'])
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    assert any(k.endswith('running_mean') for k in before) and not teacher.training
    student, pixels, pids = student_and_batch()
    distillation = DistillationLoss(teacher, 1.0, 4.0, 30.0)
    distillation.train()  # as model.train() would: the teacher stays in eval mode
    assert not any(m.training for m in teacher.modules())
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    student.train()
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    engine.train_step(student, ReIDLoss(4, margin=0.3), optimizer, None, torch.amp.GradScaler('cpu', enabled=False),
                      normalize(pixels), pids, None, distillation=distillation)
    assert not any(m.training for m in teacher.modules())
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    after = student.state_dict()
    assert max((after[k] - v).abs().max() for k, v in student_before.items() if v.is_floating_point()) > 1e-3
    # Each term alone sends a gradient into the student's backbone.
    for weights in ((1.0, 0.0), (0.0, 30.0)):
        student.zero_grad()
        outputs = student(normalize(pixels))
        DistillationLoss(teacher, weights[0], 4.0, weights[1])(outputs, normalize(pixels)).backward()
        assert student.backbone.conv1.conv.weight.grad.abs().max() > 0, weights


def test_the_teacher_sees_the_batch_in_its_own_preprocessing(tmp_path):
    pixels = student_and_batch()[1]
    path = teacher_file(tmp_path, mean=HALF, std=HALF)
    teacher = checkpoints.load_teacher(path, IMAGENET_MEAN, IMAGENET_STD, ['market1501'])
    own, _ = model_config.from_checkpoint(torch.load(path, weights_only=True))
    with torch.no_grad():
        expected = own.logits_and_test_feature(normalize(pixels, HALF, HALF))
    for got, want in zip(teacher(normalize(pixels)), expected):
        assert torch.allclose(got, want, atol=1e-4)
    assert 're-normalised to its own mean [0.5, 0.5, 0.5]' in teacher.describe(64, 32)
    # Clips (B, S, C, H, W) at another size: each frame resized; an average-pooled clip's test
    # feature (linear BNNeck in eval mode) is the mean of its frames'.
    large = checkpoints.load_teacher(teacher_file(tmp_path, height=96, width=48), IMAGENET_MEAN, IMAGENET_STD, [])
    clips = normalize(pixels).view(2, 4, 3, 64, 32)
    logits, features = large(clips)
    assert logits.shape == (2, 4) and features.shape == (2, 512)
    frame_features = large(clips.flatten(0, 1))[1].view(2, 4, -1).mean(dim=1)
    assert torch.allclose(features, frame_features, atol=1e-4)
    assert 'resized from the student\'s 64x32 to 96x48' in large.describe(64, 32)


def test_the_terms_run_in_float32_under_autocast(tmp_path):
    teacher = checkpoints.load_teacher(teacher_file(tmp_path), IMAGENET_MEAN, IMAGENET_STD, [])
    student, pixels, _ = student_and_batch()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        outputs = student.train()(normalize(pixels))
        loss = DistillationLoss(teacher)(outputs, normalize(pixels))
    assert outputs[0].dtype == torch.bfloat16 and loss.dtype == torch.float32 and torch.isfinite(loss)


def test_a_teacher_with_a_camera_embedding_reads_camids_of_its_own_datasets():
    torch.manual_seed(0)
    vit = models.vit.VisionTransformer(4, 'vit_small_patch16_224', height=64, width=32, num_cameras=2,
                                       timm_options={'depth': 2})
    config = dict(model_config.CONFIG_DEFAULTS, height=64, width=32, num_classes=4)
    images, camids = torch.randn(2, 3, 64, 32), torch.tensor([0, 1])
    own = models.FrozenTeacher(vit, config, IMAGENET_MEAN, IMAGENET_STD, cameras=True)
    other = models.FrozenTeacher(vit, config, IMAGENET_MEAN, IMAGENET_STD, cameras=False)
    assert not torch.allclose(own(images, camids)[1], own(images)[1])
    assert torch.equal(other(images, camids)[1], own(images)[1])


def test_kd_logit_needs_the_students_identities(tmp_path):
    args = SimpleNamespace(teacher=str(teacher_file(tmp_path, num_classes=4)), pixel_mean=IMAGENET_MEAN,
                           pixel_std=IMAGENET_STD, dataset=['market1501'], height=64, width=32, kd_logit=1.0,
                           kd_temp=4.0, kd_relation=30.0)
    with pytest.raises(UsageError, match=r'classifies 4 identities, the training data has 5\. .*--kd-logit 0'):
        engine.build_distillation(args, 5, torch.device('cpu'))
    args.kd_logit = 0.0
    assert engine.build_distillation(args, 5, torch.device('cpu')).logit_weight == 0.0
    assert engine.build_distillation(args, 4, torch.device('cpu')).teacher.num_classes == 4


# --- a 2-process step (gloo) equals the single-process step --------------------------------------

WORLD_SIZE = 2


def ddp_setup(tmp_dir):
    """A float64 student (OSNet x0.25) and the distillation of a float64 teacher of another size
    and normalisation, identically initialised in every process. float64: see test_distributed."""
    student = student_and_batch()[0].double()
    model, config = model_config.from_checkpoint(torch.load(os.path.join(tmp_dir, 'teacher-4.pth.tar'), weights_only=True))
    teacher = models.FrozenTeacher(model.double(), config, IMAGENET_MEAN, IMAGENET_STD)
    return student, DistillationLoss(teacher, 1.0, 4.0, 30.0)


def ddp_step(student, distillation, imgs, pids):
    """One engine.train_step (SGD: equal weights mean equal gradients); the student's weights after it."""
    plain = student.module if isinstance(student, DistributedDataParallel) else student
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    student.train()
    engine.train_step(student, ReIDLoss(4, margin=0.3), optimizer, None, torch.amp.GradScaler('cpu', enabled=False),
                      imgs, pids, None, distillation=distillation)
    return plain.state_dict()


def ddp_worker(rank, tmp_dir):
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{tmp_dir}/init', rank=rank, world_size=WORLD_SIZE)
    student, distillation = ddp_setup(tmp_dir)
    student = distributed.convert_sync_batchnorm(student, torch.device('cpu'))
    _, pixels, pids = student_and_batch()
    share = slice(rank * 4, rank * 4 + 4)
    state = ddp_step(DistributedDataParallel(student), distillation, normalize(pixels).double()[share], pids[share])
    if rank == 0:
        torch.save(state, os.path.join(tmp_dir, 'ddp.pt'))
    dist.destroy_process_group()


def test_ddp_step_with_a_teacher_equals_the_single_process_step(tmp_path):
    teacher_file(tmp_path, height=96, width=48, mean=HALF, std=HALF)
    mp.spawn(ddp_worker, args=(str(tmp_path),), nprocs=WORLD_SIZE)
    _, pixels, pids = student_and_batch()
    student, distillation = ddp_setup(tmp_path)
    initial = {k: v.clone() for k, v in student.state_dict().items()}
    single = ddp_step(student, distillation, normalize(pixels).double(), pids)
    ddp = torch.load(tmp_path / 'ddp.pt', weights_only=True)
    for key in single:
        assert torch.allclose(ddp[key], single[key], rtol=0, atol=1e-5), key
    # The distillation moves the step far beyond the tolerance, so the comparison has teeth (a
    # relation term over each rank's half batch would give another step).
    plain = ddp_step(student_and_batch()[0].double(), None, normalize(pixels).double(), pids)
    assert max((plain[k] - single[k]).abs().max().item() for k in single if initial[k].is_floating_point()) > 1e-3


# --- the scripts ---------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def trained_teacher(synthetic_root, tmp_path_factory):
    """A timm ResNet-18 trained 2 epochs on the generated Market-1501 (32 identities)."""
    save_dir = tmp_path_factory.mktemp('teacher')
    run_script('train_img_model_xent_htri.py', *FAST, '--root', synthetic_root, '-a', 'timm:resnet18', '--bnneck',
               '--train-batch', '16', '--max-epoch', '2', '--save-dir', save_dir)
    return save_dir / 'best_model.pth.tar'


def test_a_distilled_student_records_its_teacher_and_resumes_exactly(synthetic_root, trained_teacher, tmp_path):
    # The student normalises with other means and stds than the teacher: re-normalised for it.
    student = [*FAST, '--root', synthetic_root, '-a', 'osnet_x0_25', '--train-batch', '16', '--teacher',
               trained_teacher, '--pixel-mean', *HALF, '--pixel-std', *HALF]
    full = run_script('train_img_model_xent_htri.py', *student, '--max-epoch', '2', '--save-dir', tmp_path / 'a')
    sha256 = hashlib.sha256(trained_teacher.read_bytes()).hexdigest()
    assert f'Teacher {trained_teacher} (sha256 {sha256}): timm:resnet18, 512-d' in full.stdout
    assert 'its input is re-normalised to its own mean' in full.stdout
    assert 'Distillation: --kd-logit 1.0 (T^2 KL at --kd-temp 4.0), --kd-relation 30.0' in full.stdout
    checkpoint = torch.load(tmp_path / 'a' / 'checkpoint_last.pth.tar', weights_only=True)
    assert checkpoint['distillation'] == {'teacher': str(trained_teacher), 'teacher_sha256': sha256,
                                          'kd_logit': 1.0, 'kd_temp': 4.0, 'kd_relation': 30.0}
    assert checkpoint['model']['arch'] == 'osnet_x0_25' and 'teacher' not in checkpoint['model']

    # Interrupted after epoch 1 and resumed with the same command: the weights of the full run.
    run_script('train_img_model_xent_htri.py', *student, '--max-epoch', '1', '--save-dir', tmp_path / 'b')
    resumed = run_script('train_img_model_xent_htri.py', *student, '--max-epoch', '2', '--save-dir', tmp_path / 'b',
                         '--resume', 'auto')
    assert 'Resuming training from epoch 2' in resumed.stdout
    b = torch.load(tmp_path / 'b' / 'checkpoint_last.pth.tar', weights_only=True)
    for key, value in checkpoint['state_dict'].items():
        assert torch.equal(value, b['state_dict'][key]), key
    assert parse_results(resumed.stdout) == parse_results(full.stdout)

    # Without its teacher, or with another file, a distilled run does not continue.
    last = tmp_path / 'a' / 'checkpoint_last.pth.tar'
    common = [*FAST, '--root', synthetic_root, '--train-batch', '16', '--max-epoch', '3', '--resume', last,
              '--save-dir', tmp_path / 'c']
    missing = run_script('train_img_model_xent_htri.py', *common, check=False)
    assert missing.returncode == 1 and f'resume it with --teacher {trained_teacher}' in missing.stderr
    other = tmp_path / 'other.pth.tar'
    torch.save({**torch.load(trained_teacher, weights_only=True), 'note': 'retrained'}, other)
    wrong = run_script('train_img_model_xent_htri.py', *common, '--teacher', other, check=False)
    assert wrong.returncode == 1 and f'is not the teacher {last} was distilled from' in wrong.stderr

    # Evaluation needs no teacher, and gives the run's figures.
    evaluated = run_script('train_img_model_xent_htri.py', *FAST, '--root', synthetic_root, '--evaluate',
                           '--resume', last, '--save-dir', tmp_path / 'eval')
    assert parse_results(evaluated.stdout) == parse_results(full.stdout)[-1:]


def test_video_clips_distil_from_an_image_teacher_of_other_identities(synthetic_root, trained_teacher, tmp_path):
    video = [*FAST, '--root', synthetic_root, '-a', 'osnet_x0_25', '--seq-len', '4', '--clip-train',
             '--train-batch', '8', '--max-epoch', '1', '--teacher', trained_teacher, '--save-dir', tmp_path]
    refused = run_script('train_vid_model_xent.py', *video, check=False)
    assert refused.returncode == 1
    assert 'classifies 32 identities, the training data has 24' in refused.stderr and '--kd-logit 0' in refused.stderr
    result = run_script('train_vid_model_xent.py', *video, '--kd-logit', '0')
    assert 'Distillation: --kd-logit 0.0' in result.stdout and len(parse_results(result.stdout)) == 1
