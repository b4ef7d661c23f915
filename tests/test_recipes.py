"""The strong-baseline (BoT) options: model neck and stride, schedules, augmentation, center loss,
flip test, the --recipe preset, and checkpoints that remember the model."""
import math
import types

import pytest
import torch
from PIL import Image

import engine
import models
import options
import solver
import train_img_model_xent
import train_img_model_xent_htri
import train_vid_model_xent_htri
from conftest import FAST, parse_results, run_script
from losses import CenterLoss, ReIDLoss
from transforms import MEAN_PIXEL, build_transforms


@pytest.mark.parametrize('arch', ['resnet50', 'resnet50m'])
def test_last_stride_1_gives_a_16x8_map(arch):
    images = torch.randn(1, 3, 256, 128)
    for stride, size in ((2, (8, 4)), (1, (16, 8))):
        model = models.init_model(arch, 5, pretrained=False, last_stride=stride).eval()
        with torch.no_grad():
            assert model.base(images).shape[2:] == size
            assert model(images).shape == (1, model.feat_dim)


def test_last_stride_does_not_apply_to_densenet():
    with pytest.raises(ValueError, match='does not apply to densenet121'):
        models.init_model('densenet121', 5, pretrained=False, last_stride=1)


def test_bnneck_contract_and_which_feature_each_loss_sees():
    torch.manual_seed(0)
    model = models.init_model('resnet50', 7, loss={'xent', 'htri'}, pretrained=False, neck='bnneck')
    assert model.classifier.bias is None and not model.bottleneck.bias.requires_grad
    assert torch.equal(model.bottleneck.bias, torch.zeros(2048))
    images = torch.randn(6, 3, 64, 32)
    model.train()
    logits, features = model(images)
    pooled = model.features(images)
    assert torch.allclose(features, pooled, atol=1e-5), 'the metric losses see the feature before the BN'
    batch_mean, batch_var = pooled.mean(0), pooled.var(0, unbiased=False)
    bn = (pooled - batch_mean) / torch.sqrt(batch_var + model.bottleneck.eps) * model.bottleneck.weight
    assert torch.allclose(logits, model.classifier(bn), atol=1e-4), 'the classifier reads the BN feature'
    model.eval()
    with torch.no_grad():
        after = model(images)
        expected = model.bottleneck(model.features(images))
        assert torch.allclose(after, expected, atol=1e-5)
        model.neck_feat = 'before'
        assert torch.allclose(model(images), model.features(images), atol=1e-5)


def _args(**kwargs):
    defaults = dict(lr_scheduler='step', max_epoch=60, stepsize=20, gamma=0.1, milestones=[],
                    warmup_epochs=0, warmup_factor=0.01)
    return types.SimpleNamespace(**{**defaults, **kwargs})


def _lrs(args, base=0.1):
    optimizer = solver.build_optimizer([torch.zeros(1, requires_grad=True)], 'sgd', base, 0)
    scheduler = solver.build_scheduler(optimizer, args)
    lrs = []
    for _ in range(args.max_epoch):
        lrs.append(optimizer.param_groups[0]['lr'])
        optimizer.step()
        scheduler.step()
    return lrs


def test_learning_rates_per_epoch_follow_the_formulas():
    # Warmup over 10 epochs from 0.01 x lr, then x0.1 at 40 and 70 (the BoT schedule).
    lrs = _lrs(_args(lr_scheduler='multistep', max_epoch=120, milestones=[40, 70], warmup_epochs=10))
    for epoch in range(120):
        warm = 0.01 + 0.99 * epoch / 10 if epoch < 10 else 1
        assert lrs[epoch] == pytest.approx(0.1 * warm * 0.1 ** ((epoch >= 40) + (epoch >= 70)), rel=1e-12)
    assert lrs[0] == pytest.approx(0.001) and lrs[10] == pytest.approx(0.1) and lrs[70] == pytest.approx(0.001)
    # Cosine after a 5-epoch warmup.
    lrs = _lrs(_args(lr_scheduler='cosine', max_epoch=50, warmup_epochs=5))
    for epoch in range(5, 50):
        assert lrs[epoch] == pytest.approx(0.1 * (1 + math.cos(math.pi * (epoch - 5) / 45)) / 2, rel=1e-12)
    # The classic step schedule, and --stepsize 0: no decay.
    assert _lrs(_args(max_epoch=45, stepsize=20)) == pytest.approx([0.1] * 20 + [0.01] * 20 + [0.001] * 5)
    assert _lrs(_args(max_epoch=5, stepsize=0)) == [0.1] * 5


def test_resumed_schedule_is_on_the_same_epoch():
    args = _args(lr_scheduler='multistep', max_epoch=30, milestones=[8, 20], warmup_epochs=4)
    full = _lrs(args)
    optimizer = solver.build_optimizer([torch.zeros(1, requires_grad=True)], 'sgd', 0.1, 0)
    scheduler = solver.build_scheduler(optimizer, args, start_epoch=6)
    assert scheduler.get_last_lr()[0] == pytest.approx(full[6])


def test_random_erasing_area_and_aspect_limits():
    torch.manual_seed(0)
    train, _ = build_transforms(128, 64, 'translate', random_erasing=1.0)
    white = Image.new('RGB', (64, 128), (255, 255, 255))
    for _ in range(200):
        erased = (train(white) == torch.tensor(MEAN_PIXEL)[:, None, None]).all(dim=0)
        rows, cols = erased.any(dim=1).nonzero(), erased.any(dim=0).nonzero()
        height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert erased.sum() == height * width, 'one solid rectangle'
        # Rounding of the rectangle's sides moves the ratios a little beyond the sampled limits.
        assert 0.02 * 0.8 <= height * width / (128 * 64) <= 0.4 * 1.1
        assert 0.3 * 0.8 <= height / width <= 3.3 * 1.2
    never, _ = build_transforms(128, 64, 'translate', random_erasing=0.0)
    assert never(white).eq(255).all()


def test_center_loss_value_gradients_and_center_update():
    loss_fn = CenterLoss(num_classes=2, feat_dim=2)
    with torch.no_grad():
        loss_fn.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    features = torch.tensor([[1.0, 2.0], [3.0, 1.0], [0.0, 0.0]], requires_grad=True)
    targets = torch.tensor([0, 1, 1])
    loss = loss_fn(features, targets)
    # ||(1,2)-(0,0)||^2 = 5, ||(3,1)-(1,1)||^2 = 4, ||(0,0)-(1,1)||^2 = 2; mean 11/3.
    assert loss.item() == pytest.approx(11 / 3)
    loss.backward()
    assert torch.allclose(features.grad, torch.tensor([[2.0, 4.0], [4.0, 0.0], [-2.0, -2.0]]) / 3)
    assert torch.allclose(loss_fn.centers.grad, torch.tensor([[-2.0, -4.0], [-2.0, 2.0]]) / 3)

    # Through a training step: the network sees W x center loss, the centers step at
    # --center-lr on the unweighted gradient (rescaled by 1 / W).
    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Parameter(features.detach().clone())

        def forward(self, imgs, camids=None):
            return torch.zeros(3, 2, requires_grad=True) + 0 * self.features.sum(), self.features

    weight, center_lr = 0.25, 0.5
    criterion = ReIDLoss(2, center_weight=weight, feat_dim=2)
    with torch.no_grad():
        criterion.center.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    model = Fixed()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    center_optimizer = torch.optim.SGD(criterion.center.parameters(), lr=center_lr)
    scaler = torch.amp.GradScaler('cpu', enabled=False)
    engine.train_step(model, criterion, optimizer, center_optimizer, scaler, torch.zeros(3), targets, None)
    expected = torch.tensor([[0.0, 0.0], [1.0, 1.0]]) - center_lr * torch.tensor([[-2.0, -4.0], [-2.0, 2.0]]) / 3
    assert torch.allclose(criterion.center.centers, expected, atol=1e-6)


def test_flip_test_feature_is_the_mean_of_both_passes():
    torch.manual_seed(0)
    model = models.init_model('resnet50', 5, pretrained=False, neck='bnneck').eval()
    images = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        expected = (model(images) + model(torch.flip(images, dims=[3]))) / 2
        assert torch.allclose(models.TestFeatureNet(model, flip=True)(images), expected, atol=1e-6)
        normalised = models.TestFeatureNet(model, flip=True, normalize=True)(images)
        assert torch.allclose(normalised.norm(dim=1), torch.ones(3), atol=1e-6)


@pytest.mark.parametrize('script, video, triplet', [
    (train_img_model_xent_htri, False, True), (train_img_model_xent, False, False),
    (train_vid_model_xent_htri, True, True)])
def test_bot_preset_sets_what_it_says_and_explicit_flags_win(script, video, triplet):
    args = script.get_args_parser().parse_args(['--recipe', 'bot'])
    expected = options.recipe_settings('bot', video, triplet)
    assert {k: getattr(args, k) for k in expected} == expected
    assert (args.lr, args.optim, args.last_stride, args.bnneck, args.dist_metric) == (3.5e-4, 'adam', 1, True, 'cosine')
    assert args.milestones == ([160, 280] if video else [40, 70]) and args.max_epoch == (480 if video else 120)
    assert hasattr(args, 'num_instances') == triplet
    mine = script.get_args_parser().parse_args(['--recipe', 'bot', '--lr', '1e-3', '--no-bnneck'])
    assert (mine.lr, mine.bnneck, mine.center_loss) == (1e-3, False, 5e-4)
    assert mine.recipe_overridden == ['bnneck', 'lr']
    classic = script.get_args_parser().parse_args([])
    assert (classic.lr_scheduler, classic.warmup_epochs, classic.random_erasing, classic.center_loss,
            classic.augment) == ('step', 0, 0.0, 0.0, 'translate')


def test_bot_run_learns_and_checkpoint_remembers_the_model(synthetic_root, tmp_path, untrained_mAP):
    # A short run at a learning rate for random initialisation, with the decay past its end.
    bot = [*FAST, '--root', synthetic_root, '--recipe', 'bot', '--train-batch', '32', '--max-epoch', '16',
           '--warmup-epochs', '1', '--milestones', '100', '--flip-test']
    result = run_script('train_img_model_xent_htri.py', *bot, '--save-dir', tmp_path)
    assert '--recipe bot sets: --optim adam, --lr 0.00035' in result.stdout
    assert 'Computing distance matrix (cosine)' in result.stdout
    final = parse_results(result.stdout)[-1]
    assert final[0] >= untrained_mAP['market1501'] + 8, (final, untrained_mAP)
    checkpoint = torch.load(tmp_path / 'checkpoint_ep16.pth.tar', weights_only=True)
    assert checkpoint['model'] | {} == {**checkpoint['model'], 'arch': 'resnet50', 'last_stride': 1, 'neck': 'bnneck',
                                        'neck_feat': 'after', 'dist_metric': 'cosine', 'flip_test': True,
                                        'height': 64, 'width': 32}
    assert 'center_optimizer' in checkpoint and 'criterion' in checkpoint
    # --evaluate --resume with no model flag rebuilds that model (stride 1, BNNeck, cosine, flip,
    # 64x32), from another script, and gives the same numbers.
    evaluated = run_script('train_img_model_xent.py', '--no-pretrained', '--workers', '0', '--root', synthetic_root,
                           '--evaluate', '--resume', tmp_path / 'checkpoint_ep16.pth.tar', '--save-dir', tmp_path)
    assert parse_results(evaluated.stdout) == [final]
    assert 'From the checkpoint: arch resnet50, last_stride 1, neck bnneck' in evaluated.stdout
    contradiction = run_script('train_img_model_xent.py', *FAST, '--root', synthetic_root, '--evaluate',
                               '--last-stride', '2', '--resume', tmp_path / 'checkpoint_ep16.pth.tar',
                               '--save-dir', tmp_path, check=False)
    assert contradiction.returncode == 1
    assert '--last-stride 2 contradicts the checkpoint' in contradiction.stderr and 'last_stride = 1' in contradiction.stderr


def test_resume_is_exact_with_every_bot_option_on(synthetic_root, tmp_path):
    common = [*FAST, '--root', synthetic_root, '--recipe', 'bot', '--lr', '1e-3', '--train-batch', '16',
              '--warmup-epochs', '2', '--milestones', '3', '--eval-step', '2']
    full = run_script('train_img_model_xent_htri.py', *common, '--max-epoch', '4', '--save-dir', tmp_path / 'a')
    run_script('train_img_model_xent_htri.py', *common, '--max-epoch', '2', '--save-dir', tmp_path / 'b')
    second = run_script('train_img_model_xent_htri.py', *common, '--max-epoch', '4', '--save-dir', tmp_path / 'b',
                        '--resume', tmp_path / 'b' / 'checkpoint_ep2.pth.tar')
    assert 'Resuming training from epoch 3' in second.stdout
    a = torch.load(tmp_path / 'a' / 'checkpoint_ep4.pth.tar', weights_only=True)
    b = torch.load(tmp_path / 'b' / 'checkpoint_ep4.pth.tar', weights_only=True)
    for key in a['state_dict']:
        assert torch.equal(a['state_dict'][key], b['state_dict'][key]), key
    assert torch.equal(a['criterion']['center.centers'], b['criterion']['center.centers'])
    assert parse_results(full.stdout)[-1] == parse_results(second.stdout)[-1]


def test_recipe_osnet_is_torchreids(capsys):
    args = train_img_model_xent.get_args_parser().parse_args(['--recipe', 'osnet', '-a', 'osnet_x1_0'])
    assert (args.optim, args.lr, args.train_batch, args.max_epoch) == ('amsgrad', 0.0015, 64, 150)
    assert (args.lr_scheduler, args.stepsize, args.gamma, args.label_smooth) == ('step', 60, 0.1, 0.1)
    assert (args.augment, args.random_erasing, args.fixbase_epochs) == ('flip', 0.0, 10)
    options.print_recipe(args)
    assert '--recipe osnet sets: --optim amsgrad, --lr 0.0015' in capsys.readouterr().out


def test_fixbase_epochs_train_the_new_layers_only():
    """torchreid's fixbase: the backbone (weights and BatchNorm statistics) stays, the classifier learns."""
    torch.manual_seed(0)
    model = models.init_model('osnet_x0_25', 4, loss={'xent'}, pretrained=False)
    args = types.SimpleNamespace(fixbase_epochs=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    frozen = engine.frozen_backbone(model, 0, args)
    assert not model.backbone.training and model.classifier.training
    assert len(frozen) == len(list(model.backbone.parameters()))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1, weight_decay=5e-4, amsgrad=True)
    imgs, pids = torch.randn(4, 3, 64, 32), torch.tensor([0, 1, 2, 3])
    engine.train_step(model, ReIDLoss(4, 0.1), optimizer, None, torch.amp.GradScaler('cpu', enabled=False), imgs,
                      pids, None, frozen=frozen)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in after if k.startswith('backbone.'))
    assert not torch.equal(before['classifier.weight'], after['classifier.weight'])
    model.train()
    assert engine.frozen_backbone(model, 1, args) == [] and model.backbone.training
