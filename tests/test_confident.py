"""imgcls.confident against cleanlab (the reference implementation of confident learning, a dev requirement
only): thresholds, confident joint, flagged and ranked issues, on constructed cases and random ones."""

from __future__ import annotations

import numpy as np
import pytest

from imgcls import confident

cleanlab = pytest.importorskip("cleanlab")
from cleanlab.count import compute_confident_joint, get_confident_thresholds  # noqa: E402
from cleanlab.filter import find_label_issues  # noqa: E402
from cleanlab.rank import get_label_quality_scores  # noqa: E402


def noisy_probs(n: int, k: int, noise: float, seed: int, sharp: float = 4.0):
    """Labels with a fraction `noise` flipped, and probabilities from a model that mostly knows the truth."""
    rng = np.random.default_rng(seed)
    prior = rng.dirichlet(np.ones(k) * 0.7)  # imbalanced classes
    true = rng.choice(k, size=n, p=prior)
    labels = true.copy()
    flip = rng.random(n) < noise
    labels[flip] = rng.integers(0, k, size=flip.sum())
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), true] += sharp * rng.random(n)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return labels, probs, true


CASES = [(n, k, noise, seed) for seed in range(4) for (n, k, noise) in
         [(200, 3, 0.1), (500, 7, 0.2), (1000, 12, 0.05), (80, 5, 0.3)]]


@pytest.mark.parametrize("n,k,noise,seed", CASES)
def test_thresholds_joint_and_issues_equal_cleanlabs(n, k, noise, seed):
    labels, probs, _ = noisy_probs(n, k, noise, seed)
    np.testing.assert_allclose(confident.thresholds(labels, probs), get_confident_thresholds(labels, probs))
    for calibrate in (False, True):
        np.testing.assert_array_equal(confident.confident_joint(labels, probs, calibrate=calibrate),
                                      compute_confident_joint(labels, probs, calibrate=calibrate))
    np.testing.assert_array_equal(confident.label_issues(labels, probs), find_label_issues(labels, probs))
    both = confident.label_issues(labels, probs, filter_by="both")
    np.testing.assert_array_equal(both, find_label_issues(labels, probs, filter_by="both"))
    assert not (both & ~confident.label_issues(labels, probs)).any()  # a subset of the default's flags
    for rank_by in ("self_confidence", "normalized_margin"):
        np.testing.assert_allclose(confident.SCORES[rank_by](labels, probs),
                                   get_label_quality_scores(labels, probs, method=rank_by))
        np.testing.assert_array_equal(confident.ranked_issues(labels, probs, rank_by),
                                      find_label_issues(labels, probs, return_indices_ranked_by=rank_by))


def test_a_class_no_image_is_labelled_with_and_a_class_of_one_image():
    labels, probs, _ = noisy_probs(300, 6, 0.2, seed=9)
    labels[labels == 5] = 4      # class 5 is never given
    labels[np.flatnonzero(labels == 3)[1:]] = 2  # class 3 has one image
    assert confident.thresholds(labels, probs)[5] == 2.0
    np.testing.assert_array_equal(confident.confident_joint(labels, probs), compute_confident_joint(labels, probs))
    for filter_by in confident.FILTERS:
        np.testing.assert_array_equal(confident.label_issues(labels, probs, filter_by=filter_by),
                                      find_label_issues(labels, probs, filter_by=filter_by))


def test_a_hand_computed_case():
    # three images of class 0, two of class 1; the model is sure that image 2 shows a 1
    labels = np.array([0, 0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.8], [0.3, 0.7]])
    # t_0 = (0.9 + 0.8 + 0.1) / 3 = 0.6, t_1 = (0.8 + 0.7) / 2 = 0.75
    np.testing.assert_allclose(confident.thresholds(labels, probs), [0.6, 0.75])
    # image 2 (given 0) reaches t_1 only: C[0][1] = 1; images 0, 1 -> C[0][0] = 2; images 3, 4 -> C[1][1] = 1
    # (image 4: 0.7 < 0.75 and 0.3 < 0.6, not confident about anything)
    np.testing.assert_array_equal(confident.confident_joint(labels, probs, calibrate=False), [[2, 1], [0, 1]])
    np.testing.assert_array_equal(confident.confident_joint(labels, probs), [[2, 1], [0, 2]])
    assert confident.ranked_issues(labels, probs).tolist() == [2]
    np.testing.assert_array_equal(confident.argmax_disagrees(labels, probs), [False, False, True, False, False])


def test_the_flagged_set_is_more_precise_than_the_argmax_baseline():
    labels, probs, true = noisy_probs(2000, 10, 0.15, seed=3, sharp=6.0)
    flipped = labels != true  # 15% of the labels (a flip may land on the true class)
    for flagged, least in [(confident.label_issues(labels, probs), 0.5), (confident.argmax_disagrees(labels, probs), 0)]:
        precision = (flagged & flipped).sum() / flagged.sum()
        assert precision > max(least, 2 * flipped.mean())
    cl, arg = confident.label_issues(labels, probs), confident.argmax_disagrees(labels, probs)
    assert (cl & flipped).sum() / cl.sum() > (arg & flipped).sum() / arg.sum() + 0.05


@pytest.mark.parametrize("n,k,noise,seed", CASES)
def test_pair_noise_is_cleanlabs_noise_matrix(n, k, noise, seed):
    # exclude.csv's gate: p(given | true) from the calibrated confident joint; cleanlab's estimate_latent clips
    # the rates to [0, 0.9999) and renormalises each column, which leaves a joint's shares as they are
    from cleanlab.count import estimate_latent
    from imgcls.audit import pair_noise
    labels, probs, _ = noisy_probs(n, k, noise, seed)
    _, reference, _ = estimate_latent(compute_confident_joint(labels, probs), labels)
    np.testing.assert_allclose(pair_noise(labels, probs), reference, atol=1e-12)
