import math

import pytest
import torch

from losses import CrossEntropyLabelSmooth, ReIDLoss, TripletLoss


def reference_label_smooth(logits, targets, epsilon):
    num_classes = logits.shape[1]
    total = 0.0
    for row, target in zip(logits.tolist(), targets.tolist()):
        log_norm = math.log(sum(math.exp(v) for v in row))
        for k, v in enumerate(row):
            weight = (1 - epsilon) * (k == target) + epsilon / num_classes
            total -= weight * (v - log_norm)
    return total / len(targets)


def reference_triplet(features, pids, margin):
    """Literal batch-hard triplet: a loop over anchors, skipping anchors without a triplet."""
    losses = []
    for a in range(len(pids)):
        dists = [(features[a] - features[j]).norm().item() for j in range(len(pids))]
        pos = [dists[j] for j in range(len(pids)) if pids[j] == pids[a] and j != a]
        neg = [dists[j] for j in range(len(pids)) if pids[j] != pids[a]]
        if pos and neg:
            losses.append(max(0.0, max(pos) - min(neg) + margin))
    return sum(losses) / len(losses) if losses else 0.0


def test_label_smoothing_matches_reference():
    torch.manual_seed(0)
    for epsilon in (0.0, 0.1, 0.3):
        logits, targets = torch.randn(6, 5), torch.randint(0, 5, (6,))
        loss = CrossEntropyLabelSmooth(5, epsilon)(logits, targets)
        assert loss.item() == pytest.approx(reference_label_smooth(logits, targets, epsilon), abs=1e-5)


def test_label_smoothing_hand_case():
    # Uniform logits: log-probabilities are all -log K, whatever the targets.
    loss = CrossEntropyLabelSmooth(4, 0.1)(torch.zeros(2, 4), torch.tensor([0, 3]))
    assert loss.item() == pytest.approx(math.log(4), abs=1e-6)


def test_label_smoothing_checks_class_count():
    with pytest.raises(ValueError, match='5 classes'):
        CrossEntropyLabelSmooth(5)(torch.zeros(2, 4), torch.tensor([0, 1]))


def test_triplet_matches_reference():
    torch.manual_seed(0)
    for _ in range(10):
        features = torch.randn(12, 8)
        pids = torch.randint(0, 4, (12,))
        expected = reference_triplet(features, pids.tolist(), 0.3)
        assert TripletLoss(0.3)(features, pids).item() == pytest.approx(expected, abs=1e-5)


def test_triplet_hand_case():
    # Points on a line: anchors 0 and 1 (pid 0) at 0 and 1, anchors 2 and 3 (pid 1) at 1.5 and 4.
    features = torch.tensor([[0.0], [1.0], [1.5], [4.0]])
    pids = torch.tensor([0, 0, 1, 1])
    # d_ap, d_an per anchor: (1, 1.5), (1, 0.5), (2.5, 0.5), (2.5, 3) -> hinge with margin 0.3.
    expected = (max(0, 1 - 1.5 + 0.3) + max(0, 1 - 0.5 + 0.3) + max(0, 2.5 - 0.5 + 0.3) + max(0, 2.5 - 3 + 0.3)) / 4
    assert TripletLoss(0.3)(features, pids).item() == pytest.approx(expected, abs=1e-6)


def test_triplet_identical_features_have_finite_gradients():
    features = torch.ones(4, 3, requires_grad=True)
    loss = TripletLoss(0.3)(features, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert loss.item() == pytest.approx(0.3, abs=1e-5)
    assert torch.isfinite(features.grad).all()


def test_triplet_anchors_without_positive_or_negative():
    features = torch.randn(3, 4, requires_grad=True)
    # Only anchors 0 and 1 share a pid: anchor 2 has no positive and is left out.
    pids = torch.tensor([0, 0, 1])
    expected = reference_triplet(features.detach(), pids.tolist(), 0.3)
    assert TripletLoss(0.3)(features, pids).item() == pytest.approx(expected, abs=1e-5)
    # A single identity (no negative) or all distinct (no positive): no triplet, zero loss.
    for pids in (torch.tensor([0, 0, 0]), torch.tensor([0, 1, 2])):
        loss = TripletLoss(0.3)(features, pids)
        loss.backward()
        assert loss.item() == 0.0 and torch.isfinite(features.grad).all()


def test_gradients_flow():
    torch.manual_seed(0)
    logits = torch.randn(8, 4, requires_grad=True)
    features = torch.randn(8, 16, requires_grad=True)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    ReIDLoss(4, margin=0.3)((logits, features), pids).backward()
    assert logits.grad.abs().sum() > 0 and features.grad.abs().sum() > 0
    features.grad = None
    logits.grad = None
    ReIDLoss(4, margin=0.3, htri_only=True)((logits, features), pids).backward()
    assert logits.grad is None and features.grad.abs().sum() > 0


def test_soft_margin_triplet_by_hand():
    """TransReID's soft margin: mean over anchors of log(1 + exp(d_ap - d_an)), hardest pairs."""
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    pids = torch.tensor([0, 0, 1, 1])
    # anchors 0 and 1: d_ap 1, d_an 2; anchors 2 and 3: d_ap sqrt(13), d_an 2
    expected = (2 * math.log1p(math.exp(-1)) + 2 * math.log1p(math.exp(math.sqrt(13) - 2))) / 4
    assert TripletLoss(soft=True)(x, pids).item() == pytest.approx(expected, rel=1e-6)
    assert TripletLoss(margin=0.3)(x, pids).item() == pytest.approx((0 + 0 + 2 * (math.sqrt(13) - 2 + 0.3)) / 4, rel=1e-6)
