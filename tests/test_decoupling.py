"""Classifier re-training (cRT) and the validation-chosen decision rule, against independent references."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, f1_score

from imgcls.decision import TAU_GRID, adjust, choose_tau
from imgcls.decoupling import extract_features, final_linear, replace_classifier, retrain_classifier, sample_probs
from imgcls.models import create_model


def _blobs(counts, dim=8, spread=1.6, seed=0):
    """Gaussian blobs, one per class, with the given (imbalanced) class counts; overlapping on purpose."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, size=(len(counts), dim))
    x = np.concatenate([c + spread * rng.normal(size=(n, dim)) * 0.5 for c, n in zip(centres, counts)])
    y = np.concatenate([np.full(n, k) for k, n in enumerate(counts)])
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


@pytest.mark.parametrize("sampler, power", [("weighted", 0.0), ("sqrt", 0.5), ("natural", 1.0)])
def test_retraining_draws_each_class_with_mass_proportional_to_count_to_the_power(sampler, power):
    labels = torch.tensor([0] * 9 + [1] * 4 + [2] * 1 + [3] * 0 + [4] * 2)
    probs = sample_probs(labels, sampler)
    counts = np.array([9, 4, 1, 0, 2], dtype=float)
    expected = np.where(counts > 0, counts ** power, 0) / (counts[counts > 0] ** power).sum()
    mass = np.bincount(labels.numpy(), weights=probs.double().numpy(), minlength=5)
    np.testing.assert_allclose(mass, expected, rtol=1e-6)
    assert torch.isclose(probs.sum(), torch.tensor(1.0))


def test_balanced_crt_agrees_with_class_weighted_logistic_regression():
    """Balanced sampling minimises the class-balanced cross-entropy; scikit-learn's class_weight='balanced'
    logistic regression minimises the same objective exactly, so their decisions must nearly coincide."""
    x, y = _blobs([400, 120, 30, 8], spread=3.0)
    head = retrain_classifier(x, y, 4, sampler="weighted", steps=1500, batch_size=256, lr=0.2, weight_decay=0.0)
    ours = head(x).argmax(1).numpy()
    ref = LogisticRegression(class_weight="balanced", C=100.0, max_iter=5000).fit(x.numpy(), y.numpy()).predict(x.numpy())
    assert (ours == ref).mean() >= 0.95
    # and rebalancing does what it is for: higher balanced accuracy than a natural-sampling re-fit
    natural = retrain_classifier(x, y, 4, sampler="natural", steps=1500, batch_size=256, lr=0.2, weight_decay=0.0)
    assert balanced_accuracy_score(y, ours) > balanced_accuracy_score(y, natural(x).argmax(1).numpy()) + 0.02


def test_retrain_is_reproducible_from_its_seed():
    x, y = _blobs([50, 10, 3])
    a = retrain_classifier(x, y, 3, steps=50, seed=7)
    b = retrain_classifier(x, y, 3, steps=50, seed=7)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_extracted_features_are_the_pooled_backbone_output_and_the_head_replacement_is_exact():
    torch.manual_seed(0)
    model = create_model("tiny_efficientnet", num_classes=3, pretrained=None).eval()
    images = torch.randint(0, 256, (5, 3, 24, 20), dtype=torch.uint8)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    feats = extract_features(model, images, np.arange(5), img_size=(32, 32), mean=mean, std=std,
                             device=torch.device("cpu"), batch_size=2)
    from imgcls.data.augment import eval_transform
    with torch.no_grad():
        x = eval_transform(images, (32, 32), mean, std)
        reference = torch.flatten(model.avgpool(model.forward_features(x)), 1)
        logits = model(x)
    torch.testing.assert_close(feats, reference, rtol=1e-5, atol=1e-5)
    new = torch.nn.Linear(feats.shape[1], 3)
    replace_classifier(model, new)
    with torch.no_grad():
        torch.testing.assert_close(model(x), new(reference), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(model(x), logits)
    assert final_linear(model) is model.classifier[-1]


def test_adjust_is_menon_formula_and_zero_tau_is_identity():
    probs = np.array([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]], dtype=np.float32)
    counts = [80, 15, 5]
    prior = np.array(counts) / 100
    expected = probs / prior ** 0.5
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(adjust(probs, counts, 0.5), expected, rtol=1e-5)
    np.testing.assert_array_equal(adjust(probs, counts, 0.0), probs)
    back = adjust(adjust(probs, counts, 0.7), counts, -0.7)  # adding the prior back undoes removing it
    np.testing.assert_allclose(back, probs, rtol=1e-5)


def test_choose_tau_finds_the_macro_f1_maximiser_on_a_constructed_case():
    """A model whose probabilities carry the training prior twice over (likelihood x prior^2): removing the
    prior with tau near 1 recovers the likelihood. The choice must be the grid's macro-F1 maximiser (checked
    by brute force with scikit-learn) and strictly better than leaving the rule alone."""
    rng = np.random.default_rng(0)
    counts = np.array([1000, 100, 10])
    prior = counts / counts.sum()
    labels = np.repeat([0, 1, 2], [300, 60, 20])
    likelihood = np.full((len(labels), 3), 0.15)
    likelihood[np.arange(len(labels)), labels] = 0.7
    likelihood *= rng.uniform(0.6, 1.4, size=likelihood.shape)
    probs = likelihood * prior ** 1.0
    probs /= probs.sum(1, keepdims=True)
    tau, scores = choose_tau(probs, labels, counts)
    brute = {t: f1_score(labels, adjust(probs, counts, t).argmax(1), average="macro") for t in TAU_GRID}
    best = max(brute.values())
    assert scores[tau] == pytest.approx(best)
    assert tau == min((t for t in brute if brute[t] == pytest.approx(best)), key=abs)
    assert 0.5 <= tau <= 1.0 and best > brute[0.0] + 0.1
    # an already calibrated-to-macro-F1 model keeps its own rule
    tau_clean, _ = choose_tau(likelihood / likelihood.sum(1, keepdims=True), labels, np.ones(3))
    assert tau_clean == 0.0
