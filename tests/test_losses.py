import math

import pytest
import torch
import torch.nn.functional as F

from imgcls.errors import UserError
from imgcls.losses import (LOSSES, ImbalancedLoss, build_loss, class_balanced_weights,
                           inverse_frequency_weights)

LOSS_NAMES = tuple(LOSSES)

COUNTS = [50, 10, 3, 1]


def _batch(b=6, c=4, scale=3.0):
    logits = torch.randn(b, c) * scale
    labels = torch.tensor([0, 1, 2, 3, 0, 2])[:b]
    return logits, labels


def test_inverse_frequency_weights_formula():
    w = inverse_frequency_weights([4, 2, 1])
    # 1/n = [.25, .5, 1] sums to 1.75; scaled to sum 3.
    expected = torch.tensor([0.25, 0.5, 1.0]) * 3 / 1.75
    torch.testing.assert_close(w, expected)
    assert w.dtype == torch.float32


def test_class_balanced_weights_formula_and_limits():
    beta = 0.9999
    counts = [12341, 166, 5]
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    expected = torch.tensor([r * 3 / sum(raw) for r in raw], dtype=torch.float32)
    torch.testing.assert_close(class_balanced_weights(counts, beta), expected)
    torch.testing.assert_close(class_balanced_weights(counts, 0.0), torch.ones(3))
    # beta close to 1 approaches inverse frequency.
    torch.testing.assert_close(
        class_balanced_weights(counts, 1 - 1e-12), inverse_frequency_weights(counts), rtol=1e-4, atol=1e-6
    )


@pytest.mark.parametrize("bad", [[3, 0, 2], []])
def test_weights_reject_empty_classes(bad):
    with pytest.raises(UserError, match="class_counts"):
        inverse_frequency_weights(bad)


def test_class_balanced_rejects_beta_one():
    with pytest.raises(UserError, match="cb-beta"):
        class_balanced_weights([3, 2], 1.0)


def test_ce_equals_torch_cross_entropy_and_exposes_no_weights():
    logits, labels = _batch()
    loss = build_loss("ce", COUNTS)
    assert loss.class_weights is None
    torch.testing.assert_close(loss(logits, labels), F.cross_entropy(logits, labels))


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_label_smoothing_equals_torch(eps):
    logits, labels = _batch()
    loss = build_loss("ce", COUNTS, label_smoothing=eps)
    torch.testing.assert_close(loss(logits, labels), F.cross_entropy(logits, labels, label_smoothing=eps))


def test_ce_soft_targets_equal_torch_mean():
    logits, _ = _batch()
    soft = torch.softmax(torch.randn(6, 4), dim=1)
    torch.testing.assert_close(build_loss("ce", COUNTS)(logits, soft), F.cross_entropy(logits, soft))


def test_weighted_ce_hard_equals_torch_weighted_mean():
    logits, labels = _batch()
    loss = build_loss("weighted_ce", COUNTS)
    w = inverse_frequency_weights(COUNTS)
    torch.testing.assert_close(loss.class_weights, w)
    torch.testing.assert_close(loss(logits, labels), F.cross_entropy(logits, labels, weight=w))


def test_weighted_ce_soft_divides_by_sum_of_sample_weights():
    # Hand-written: sum_i sum_c w_c t_ic (-log p_ic) / sum_i sum_c w_c t_ic (torch would divide by B).
    logits, _ = _batch()
    soft = torch.softmax(torch.randn(6, 4) * 2, dim=1)
    w = inverse_frequency_weights(COUNTS)
    logp = torch.log_softmax(logits.double(), dim=1)
    expected = -(soft.double() * w.double() * logp).sum() / (soft.double() * w.double()).sum()
    got = build_loss("weighted_ce", COUNTS)(logits, soft)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


def _focal_by_hand(logits, labels, gamma, alpha):
    total, norm = 0.0, 0.0
    for z, y in zip(logits.double().tolist(), labels.tolist()):
        denom = sum(math.exp(v) for v in z)
        p = math.exp(z[y]) / denom
        total += -alpha[y] * (1 - p) ** gamma * math.log(p)
        norm += alpha[y]
    return total / norm


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_equals_formula_with_alpha(gamma):
    logits, labels = _batch()
    alpha = [0.25, 1.0, 2.0, 0.75]
    got = ImbalancedLoss(torch.tensor(alpha), focal_gamma=gamma)(logits, labels)
    assert got.item() == pytest.approx(_focal_by_hand(logits, labels, gamma, alpha), rel=1e-5)


def test_focal_without_alpha_is_a_plain_mean():
    logits, labels = _batch()
    loss = build_loss("focal", COUNTS, focal_gamma=2.0)
    assert loss.class_weights is None
    assert loss(logits, labels).item() == pytest.approx(_focal_by_hand(logits, labels, 2.0, [1.0] * 4), rel=1e-5)


def test_cb_focal_equals_formula_with_class_balanced_alpha():
    logits, labels = _batch()
    loss = build_loss("cb_focal", COUNTS, focal_gamma=2.0, cb_beta=0.99)
    alpha = class_balanced_weights(COUNTS, 0.99)
    torch.testing.assert_close(loss.class_weights, alpha)
    expected = _focal_by_hand(logits, labels, 2.0, alpha.tolist())
    assert loss(logits, labels).item() == pytest.approx(expected, rel=1e-5)


def test_focal_gradient_matches_formula_autograd():
    # The focal factor must be differentiated too (it is not a constant re-weighting).
    logits, labels = _batch()
    a = logits.double().clone().requires_grad_(True)
    p = torch.softmax(a, dim=1).gather(1, labels[:, None]).squeeze(1)
    (-(1 - p) ** 2 * torch.log(p)).mean().backward()
    b = logits.clone().requires_grad_(True)
    build_loss("focal", COUNTS, focal_gamma=2.0)(b, labels).backward()
    torch.testing.assert_close(b.grad.double(), a.grad, rtol=1e-4, atol=1e-6)


def test_focal_finite_with_large_fp16_logits():
    logits = torch.tensor([[60.0, -60.0, 0.0], [-60.0, 60.0, -60.0], [0.0, 0.0, 60.0]], dtype=torch.float16)
    labels = torch.tensor([1, 0, 2])  # two confidently wrong, one confidently right
    for gamma in (0.5, 2.0):
        z = logits.clone().requires_grad_(True)
        out = build_loss("focal", None, focal_gamma=gamma)(z, labels)
        out.backward()
        assert out.dtype == torch.float32
        assert torch.isfinite(out) and torch.isfinite(z.grad).all()
        # Wrong at a margin of 120 costs about 120 (each of two), right costs ~0: mean ~ 80.
        assert out.item() == pytest.approx(240 / 3, rel=1e-3)


def test_focal_finite_under_bf16_autocast():
    model = torch.nn.Linear(8, 5)
    x = torch.randn(4, 8) * 50
    labels = torch.tensor([0, 1, 2, 3])
    loss = build_loss("cb_focal", [100, 50, 10, 2, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        assert logits.dtype == torch.bfloat16
        out = loss(logits, labels)
    out.backward()
    assert out.dtype == torch.float32 and torch.isfinite(out)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_logit_adjusted_equals_ce_on_shifted_logits():
    logits, labels = _batch()
    prior = torch.tensor(COUNTS, dtype=torch.float32) / sum(COUNTS)
    for tau in (0.5, 1.0, 2.0):
        got = build_loss("logit_adjusted", COUNTS, loss_tau=tau)(logits, labels)
        torch.testing.assert_close(got, F.cross_entropy(logits + tau * torch.log(prior), labels))


def test_balanced_softmax_is_logit_adjustment_with_tau_one():
    # Ren et al. write it with log(n_j) instead of log(prior): softmax is shift invariant, so the same.
    logits, labels = _batch()
    got = build_loss("balanced_softmax", COUNTS)(logits, labels)
    expected = F.cross_entropy(logits + torch.log(torch.tensor(COUNTS, dtype=torch.float32)), labels)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got, build_loss("logit_adjusted", COUNTS, loss_tau=1.0)(logits, labels))


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_hard_labels_equal_their_one_hot_targets(name, eps):
    logits, labels = _batch()
    loss = build_loss(name, COUNTS, label_smoothing=eps)
    onehot = F.one_hot(labels, 4).float()
    smoothed = onehot * (1 - eps) + eps / 4
    torch.testing.assert_close(loss(logits, labels), loss(logits, smoothed))
    if eps:
        # Smoothing is for hard labels; soft targets are used as given.
        assert not torch.allclose(loss(logits, labels), loss(logits, onehot))


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_class_weights_and_buffers_are_exposed(name):
    loss = build_loss(name, COUNTS)
    weighted = name in ("weighted_ce", "cb_focal")
    assert (loss.class_weights is not None) == weighted
    assert set(loss.state_dict()) == ({"class_weights"} if weighted else set()) | (
        {"logit_shift"} if name in ("logit_adjusted", "balanced_softmax") else set()
    )


def test_user_errors():
    with pytest.raises(UserError, match="--loss"):
        build_loss("nope", COUNTS)
    with pytest.raises(UserError, match="class_counts"):
        build_loss("weighted_ce", None)
    with pytest.raises(UserError, match="class_counts"):
        build_loss("logit_adjusted", [5, 0, 1])
    logits, labels = _batch()
    with pytest.raises(UserError, match="model outputs 4"):
        build_loss("weighted_ce", [1, 2, 3])(logits, labels)
    with pytest.raises(UserError, match="soft targets"):
        build_loss("ce", COUNTS)(logits, torch.rand(6, 3))
