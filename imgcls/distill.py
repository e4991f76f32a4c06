"""Knowledge distillation from a trained run (`train.py --teacher RUN`).

    loss = (1 - alpha) * hard-label loss + alpha * T^2 * KL(q || softmax(z_student / T))

Hinton et al. 2015 ("kd"): q = softmax(z_teacher / T); the T^2 keeps the soft term's gradient at the
scale of the hard one's when T changes. Balanced Knowledge Distillation, Zhang et al. 2021 ("bkd"): q is the
teacher's tempered distribution re-weighted by class-balanced weights w_c (effective number, --cb-beta) and
renormalised, so the KL term pulls the student towards the tail classes while the hard-label loss stays
instance-balanced (its paper writes CE + lambda * T^2 * KL; alpha = lambda / (1 + lambda) is the same loss
divided by 1 + lambda). The hard-label loss is the run's own --loss.

The teacher is any run folder (its fold ensemble, TTA views and decision tau, as predict.py uses them), a
fold folder or a checkpoint (teacher.py reads it). Its probabilities are computed once per training image, before the first
epoch, from the stored (unaugmented) pixels, and kept on the device as log-probabilities: an ensemble with
TTA costs 3 x 4 forward passes per image, which on the fly would be 12x a student's forward pass on every
step. The student's augmented view of an image is scored against that one distribution (a flip does not
change what the image shows; v5 trains with flips only). Mixing (mixup / CutMix) would need the teacher on
the mixed images, so it is refused with a teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .labels import class_balanced_weights
from .registry import Registry

DISTILL = Registry("--distill")


def soft_term(student_logits: torch.Tensor, teacher_logp: torch.Tensor, temperature: float,
              class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * mean over the batch of KL(q || softmax(student / T)), q the teacher's tempered distribution
    (re-weighted per class and renormalised when class_weights is given). float32 throughout."""
    q = torch.softmax(teacher_logp.float() / temperature, dim=1)
    if class_weights is not None:
        q = q * class_weights
        q = q / q.sum(dim=1, keepdim=True)
    log_p = F.log_softmax(student_logits.float() / temperature, dim=1)
    return temperature ** 2 * F.kl_div(log_p, q, reduction="batchmean")


class Distillation(nn.Module):
    """Mixes a hard-label loss value with the soft term for the batch's images (rows of the teacher table)."""

    def __init__(self, teacher_logp: torch.Tensor, temperature: float, alpha: float,
                 class_weights: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("teacher_logp", teacher_logp)  # N x C, indexed by the data set's image index
        self.register_buffer("class_weights", class_weights)
        self.temperature, self.alpha = float(temperature), float(alpha)

    def forward(self, logits: torch.Tensor, hard_loss: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        soft = soft_term(logits, self.teacher_logp[index.to(self.teacher_logp.device)], self.temperature,
                         self.class_weights)
        return (1 - self.alpha) * hard_loss + self.alpha * soft


@DISTILL.register("kd")
def kd(teacher_logp, train_counts, *, kd_temperature: float = 2.0, kd_alpha: float = 0.5) -> Distillation:
    return Distillation(teacher_logp, kd_temperature, kd_alpha)


@DISTILL.register("bkd")
def bkd(teacher_logp, train_counts, *, kd_temperature: float = 2.0, kd_alpha: float = 0.5,
        cb_beta: float = 0.9999) -> Distillation:
    weights = class_balanced_weights(train_counts, cb_beta).to(torch.float32)
    return Distillation(teacher_logp, kd_temperature, kd_alpha, weights)
