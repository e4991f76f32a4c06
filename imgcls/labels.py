"""Per-class weights, priors and targets computed from labels and class counts: pure functions, one copy each,
shared by the losses (losses.py), the samplers (data/samplers.py) and batch mixing (data/augment.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from imgcls.errors import UserError


def counts_tensor(class_counts: Sequence[int] | torch.Tensor | None, what: str) -> torch.Tensor:
    """Class counts as float64 (beta**n at beta 0.9999 needs the precision); every class needs >= 1 image."""
    if class_counts is None:
        raise UserError(f"class_counts: none given; {what} needs the number of training images per class")
    counts = torch.as_tensor(class_counts, dtype=torch.float64).flatten()
    if counts.numel() == 0:
        raise UserError(f"class_counts: empty; {what} needs the number of training images per class")
    if bool((counts < 1).any()):
        empty = [i for i, n in enumerate(counts.tolist()) if n < 1]
        raise UserError(
            f"class_counts: class index(es) {empty} have no training images; {what} needs every class "
            "present in the training split (drop the class or add images)"
        )
    return counts


def _normalise_to_num_classes(weights: torch.Tensor) -> torch.Tensor:
    """Scale so the weights sum to the number of classes (mean 1): the loss scale stays comparable to CE."""
    return (weights * (weights.numel() / weights.sum())).to(torch.float32)


def inverse_frequency_weights(class_counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Per-class weights 1 / count, normalised to sum to the number of classes (float32, shape [C])."""
    counts = counts_tensor(class_counts, "inverse-frequency weights")
    return _normalise_to_num_classes(1.0 / counts)


def effective_number(class_counts: Sequence[int] | torch.Tensor, beta: float) -> torch.Tensor:
    """Cui et al. 2019's effective number of samples (1 - beta^n) / (1 - beta) per class (float64): 1 at
    beta = 0, approaching n as beta -> 1."""
    if not 0.0 <= beta < 1.0:
        raise UserError(f"--cb-beta {beta}: must be in [0, 1); 0.9999 is the paper's value for long tails")
    counts = counts_tensor(class_counts, "class-balanced weights")
    # 1 - beta^n computed as -expm1(n * log(beta)) keeps precision when beta is close to 1.
    return -torch.expm1(counts * math.log(beta)) / (1.0 - beta) if beta > 0 else torch.ones_like(counts)


def class_balanced_weights(class_counts: Sequence[int] | torch.Tensor, beta: float) -> torch.Tensor:
    """Class-balanced weights of Cui et al. 2019, "Class-Balanced Loss Based on Effective Number of Samples".

    weight_c = (1 - beta) / (1 - beta^n_c), i.e. one over the effective number of samples, normalised to sum
    to the number of classes. beta = 0 gives equal weights; beta -> 1 approaches inverse frequency.
    """
    return _normalise_to_num_classes(1.0 / effective_number(class_counts, beta))


def log_prior(class_counts: Sequence[int] | torch.Tensor, what: str, *, empty_ok: bool = False,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """log(n_c / N) per class: the shift of logit adjustment (in a loss or after training) and balanced softmax.

    A loss refuses a class without training images (its shift would be -inf); a decision rule at prediction
    time takes it (empty_ok: the prior is floored at 1e-12), since a fold's training split may lack a class
    that the ensemble's other members know."""
    if empty_ok:
        counts = torch.as_tensor(class_counts, dtype=torch.float64).flatten()
        return torch.log(torch.clamp(counts / counts.sum(), min=1e-12)).to(dtype)
    counts = counts_tensor(class_counts, what)
    return torch.log(counts / counts.sum()).to(dtype)


def smoothed_one_hot(labels: torch.Tensor, num_classes: int, label_smoothing: float = 0.0) -> torch.Tensor:
    """float32 [B, C]: 1 - s + s/C on the true class, s/C elsewhere (rows sum to 1). Each value is rounded
    once from its exact double, so every caller gets the same bits."""
    off = label_smoothing / num_classes
    targets = torch.full((len(labels), num_classes), off, device=labels.device)
    return targets.scatter_(1, labels.long().view(-1, 1), 1.0 - label_smoothing + off)
