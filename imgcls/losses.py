"""Classification losses for imbalanced data, all built on one module.

Every loss here is a special case of

    loss = sum_i sum_c w_c * t_ic * m_ic * (-log softmax(z_i + shift)_c)  /  sum_i sum_c w_c * t_ic

with targets ``t`` (one-hot or soft, optionally label-smoothed), class weights ``w`` (1 when unweighted),
a focal modulating factor ``m = (1 - p)^gamma`` (1 when gamma is 0) and a per-class logit ``shift``
(0 unless logit adjusted). The denominator is the sum of per-sample weights ``sum_c w_c t_ic`` for hard
labels and soft targets alike, so a one-hot soft target gives exactly the hard-label value and weighted CE
with hard labels matches ``F.cross_entropy(weight=...)``.

The log-probabilities always come from ``F.cross_entropy`` on float32 logits (probability targets may be
any non-negative vector, so the weights and the focal factor ride along in the target): a hand-written
``log(softmax(z))`` underflows to ``log(0) = -inf`` under fp16.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from imgcls.errors import UserError
from imgcls.labels import class_balanced_weights, inverse_frequency_weights, log_prior, smoothed_one_hot
from imgcls.registry import Registry

LOSSES = Registry("--loss")


def soft_targets(target: torch.Tensor, num_classes: int, label_smoothing: float = 0.0) -> torch.Tensor:
    """Hard labels [B] or soft targets [B, C] -> float32 [B, C], smoothed as (1 - eps) * t + eps / C.

    Smoothing is applied to hard labels only: soft targets (mixup/cutmix) arrive already smoothed by the
    code that made them, and smoothing them twice would silently change the recipe.
    """
    if target.dim() == 1:
        if target.dtype.is_floating_point:
            raise UserError("loss target: 1-D targets must be int64 class indices; use [B, C] for soft targets")
        return smoothed_one_hot(target, num_classes, label_smoothing)
    if target.dim() == 2 and target.shape[1] == num_classes:
        return target.to(torch.float32)
    raise UserError(
        f"loss target: shape {tuple(target.shape)} does not fit {num_classes} classes; "
        "pass int64 labels [B] or soft targets [B, C]"
    )


class ImbalancedLoss(nn.Module):
    """Weighted / focal / logit-adjusted cross entropy with one normalisation for hard and soft targets.

    The number of classes C is taken from the logits.

    Args:
        class_weights: per-class weights w [C] (alpha for focal), or None for 1.
        focal_gamma: gamma of the focal factor (1 - p_c)^gamma; 0 turns focal off.
        logit_shift: per-class additive shift [C] applied to the logits during training (logit adjustment,
            balanced softmax), or None.
        label_smoothing: eps for hard labels.
    """

    def __init__(
        self,
        class_weights: torch.Tensor | None = None,
        focal_gamma: float = 0.0,
        logit_shift: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise UserError(f"--label-smoothing {label_smoothing}: must be in [0, 1)")
        if focal_gamma < 0:
            raise UserError(f"--focal-gamma {focal_gamma}: must be >= 0")
        self.focal_gamma = float(focal_gamma)
        self.label_smoothing = float(label_smoothing)
        # Buffers move with .to(device) and are saved in the state dict; None stays None.
        self.register_buffer("class_weights", None if class_weights is None else class_weights.float())
        self.register_buffer("logit_shift", None if logit_shift is None else logit_shift.float())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss (a float32 scalar) for logits [B, C] of any float dtype and labels [B] or targets [B, C]."""
        # float32 even under autocast: cross_entropy is autocast to fp32 anyway, and the focal factor and
        # the shift must not be computed in fp16.
        logits = logits.float()
        num_classes = logits.shape[1]
        for name, vec in (("class_weights", self.class_weights), ("logit_shift", self.logit_shift)):
            if vec is not None and vec.numel() != num_classes:
                raise UserError(
                    f"loss {name}: {vec.numel()} classes but the model outputs {num_classes}; "
                    "build the loss from the same class list as the model"
                )
        if self.logit_shift is not None:
            logits = logits + self.logit_shift
        t = soft_targets(target, num_classes, self.label_smoothing).to(logits.device)
        w = self.class_weights
        weighted_t = t if w is None else t * w
        sample_weight = weighted_t.sum()
        if self.focal_gamma > 0:
            # The focal factor is part of the loss (its gradient counts), not a constant re-weighting.
            # Clamping keeps the gradient of x^gamma finite at p == 1 for gamma < 1.
            p = torch.softmax(logits, dim=1)
            weighted_t = weighted_t * (1.0 - p).clamp_min(1e-12).pow(self.focal_gamma)
        per_sample = F.cross_entropy(logits, weighted_t, reduction="none")
        return per_sample.sum() / sample_weight

    def extra_repr(self) -> str:
        return (
            f"focal_gamma={self.focal_gamma}, "
            f"label_smoothing={self.label_smoothing}, weighted={self.class_weights is not None}, "
            f"logit_adjusted={self.logit_shift is not None}"
        )


def build_loss(name: str, class_counts: Sequence[int] | torch.Tensor | None,
               settings: Mapping[str, Any] | None = None, **hyper) -> ImbalancedLoss:
    """The loss ``name`` (a key of LOSSES) for a training split with ``class_counts`` images per class.

    Its hyperparameters come from ``settings`` (a Config's values) and ``hyper``; each loss takes the ones
    its builder declares. Label smoothing applies to every loss (hard labels only). ``class_counts`` may be
    None for the losses that do not use them (ce, focal). The result exposes ``.class_weights``.
    """
    return LOSSES.build(name, class_counts, settings=dict(settings or {}, **hyper))


@LOSSES.register("ce")
def ce(class_counts, *, label_smoothing: float = 0.0) -> ImbalancedLoss:
    """Cross entropy (label smoothing; soft targets)."""
    return ImbalancedLoss(label_smoothing=label_smoothing)


@LOSSES.register("weighted_ce")
def weighted_ce(class_counts, *, label_smoothing: float = 0.0) -> ImbalancedLoss:
    """Cross entropy weighted by inverse_frequency_weights."""
    return ImbalancedLoss(inverse_frequency_weights(class_counts), label_smoothing=label_smoothing)


@LOSSES.register("focal")
def focal(class_counts, *, focal_gamma: float = 2.0, label_smoothing: float = 0.0) -> ImbalancedLoss:
    """Focal loss (Lin et al. 2017) with ``focal_gamma``, no class weights."""
    return ImbalancedLoss(focal_gamma=focal_gamma, label_smoothing=label_smoothing)


@LOSSES.register("cb_focal")
def cb_focal(class_counts, *, focal_gamma: float = 2.0, cb_beta: float = 0.9999,
             label_smoothing: float = 0.0) -> ImbalancedLoss:
    """Focal loss weighted by class_balanced_weights(class_counts, cb_beta) (V3)."""
    return ImbalancedLoss(class_balanced_weights(class_counts, cb_beta), focal_gamma=focal_gamma,
                          label_smoothing=label_smoothing)


@LOSSES.register("logit_adjusted")
def logit_adjusted(class_counts, *, loss_tau: float = 1.0, label_smoothing: float = 0.0) -> ImbalancedLoss:
    """Cross entropy on logits + loss_tau * log(prior) (Menon et al. 2021): in training, unlike the decision tau."""
    return ImbalancedLoss(logit_shift=loss_tau * log_prior(class_counts, "logit adjustment"),
                          label_smoothing=label_smoothing)


@LOSSES.register("balanced_softmax")
def balanced_softmax(class_counts, *, label_smoothing: float = 0.0) -> ImbalancedLoss:
    """Ren et al. 2020: the same as logit_adjusted with tau = 1."""
    return ImbalancedLoss(logit_shift=log_prior(class_counts, "balanced softmax"),
                          label_smoothing=label_smoothing)
