"""Supervised contrastive learning as an auxiliary loss (`train.py --contrast supcon | balanced`).

    loss = the run's loss (and distillation) + weight * contrastive term on the batch

The features are the classifier's input (pooled backbone features), L2-normalised: no projection head, so the
run has no parameters beyond its model and checkpoints, export and predict are unchanged. One view per image:
the positives of anchor i are the other images of its class in the batch, P(i).

supcon (Khosla et al. 2020, their L_out):
    l_i = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / t) / sum_{a != i} exp(z_i.z_a / t) )
balanced (Zhu et al. 2022, balanced contrastive learning's class-averaging): the denominator averages within
each class present in the batch, so a head class with many images in the batch weighs as much as a tail class:
    sum_{a != i} exp(z_i.z_a / t)  ->  sum_{classes c in the batch} 1/|B_c| * sum_{a in B_c, a != i} exp(z_i.z_a / t)
with |B_c| counted without the anchor. (BCL also adds learnable class prototypes to every batch; they are left
out here with the projection head.) Anchors with no positive in the batch are left out of the mean; a batch
without any positive contributes 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import Registry

CONTRAST = Registry("--contrast")


def contrastive_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float,
                     balanced: bool = False) -> torch.Tensor:
    """The mean over anchors with >= 1 positive of l_i above; float32 throughout."""
    z = F.normalize(features.float().flatten(1), dim=1)
    n = len(z)
    others = ~torch.eye(n, dtype=torch.bool, device=z.device)
    same_class = labels[:, None] == labels[None, :]
    same = same_class & others
    sim = z @ z.T / temperature
    sim = sim - sim.detach().max(dim=1, keepdim=True).values  # exp stays finite; cancels in the ratio
    weights = others.float()
    if balanced:  # [i, a] = 1 / |B_c|, c the class of a, the anchor i not counted in its own class
        size = same_class.sum(dim=0)[None, :] - same_class.long()
        weights = weights / size.clamp(min=1)
    log_denominator = torch.log((weights * torch.exp(sim)).sum(dim=1))
    positives = same.sum(dim=1)
    anchors = positives > 0
    if not anchors.any():
        return features.sum() * 0.0  # keeps the graph (and DDP's gradient bookkeeping) whole
    log_ratio = sim - log_denominator[:, None]
    per_anchor = -(log_ratio * same).sum(dim=1)[anchors] / positives[anchors]
    return per_anchor.mean()


class FeatureTap:
    """Keeps the input of the model's final Linear layer from the last training forward pass (a forward
    pre-hook, so it works through DDP and the model's own forward is untouched)."""

    def __init__(self, model: nn.Module):
        self.features = None
        self.handle = model.get_classifier().register_forward_pre_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: tuple) -> None:
        if module.training:
            self.features = inputs[0]


class Contrast(nn.Module):
    """weight * contrastive_loss on the features the tap kept for this batch, added to the batch's loss."""

    def __init__(self, tap: FeatureTap, weight: float, temperature: float, balanced: bool):
        super().__init__()
        self.tap, self.weight, self.temperature, self.balanced = tap, float(weight), float(temperature), balanced

    def forward(self, loss: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        term = contrastive_loss(self.tap.features, labels, self.temperature, self.balanced)
        self.tap.features = None  # one batch's features are used once
        return loss + self.weight * term


@CONTRAST.register("supcon")
def supcon(tap: FeatureTap, *, contrast_weight: float = 0.1, contrast_temperature: float = 0.1) -> Contrast:
    return Contrast(tap, contrast_weight, contrast_temperature, balanced=False)


@CONTRAST.register("balanced")
def balanced(tap: FeatureTap, *, contrast_weight: float = 0.1, contrast_temperature: float = 0.1) -> Contrast:
    return Contrast(tap, contrast_weight, contrast_temperature, balanced=True)
