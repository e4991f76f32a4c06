"""Which weights a run ships: the candidates (an epoch, the final weights, their EMA, the SWA average) and the
rule that compares them.

Two rules, chosen by --select:
  best  the epoch with the best validation --metric (the write-up's rule, kept by v1-v4). With tail classes
        of 1-3 validation images, macro-F1 moves by a few thousandths when one of them flips, so this rule
        often keeps an earlier, un-annealed epoch on noise.
  last  the final weights, i.e. the annealed ones under OneCycle / cosine, or their EMA / SWA average when
        that has the lower validation loss. The loss (mean NLL over all validation images) is not dominated
        by a class with one image.

The EMA follows timm's ModelEmaV3 (decay warmup 1 - (1 + step)^(-2/3), floating-point parameters and buffers
averaged, integer buffers copied), built on torch.optim.swa_utils.AveragedModel so that it saves, loads and
resumes like the SWA average.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def ema_decay_at(decay: float, updates: int, warmup: bool = True) -> float:
    """The EMA decay applied at the update after `updates` earlier ones (timm's get_decay with warmup_gamma 1,
    warmup_power 2/3): 0.37 at the second update, 0.9 near 30, 0.99 near 1,000, never above `decay`."""
    if not warmup:
        return decay
    return min(decay, 1.0 - (1.0 + updates) ** (-2.0 / 3.0))


def ema_multi_avg_fn(decay: float, warmup: bool = True):
    """An AveragedModel multi_avg_fn: ema <- ema + (1 - d) * (current - ema) for floating-point tensors,
    integer buffers (BatchNorm's num_batches_tracked) copied, as timm does."""

    @torch.no_grad()
    def update(ema_list: list[torch.Tensor], current_list: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        if torch.is_floating_point(ema_list[0]):
            torch._foreach_lerp_(ema_list, current_list, 1.0 - ema_decay_at(decay, int(num_averaged), warmup))
        else:
            for ema, current in zip(ema_list, current_list):
                ema.copy_(current)

    return update


class EMA(AveragedModel):
    """AveragedModel(use_buffers=True, multi_avg_fn=ema_multi_avg_fn(...)) with the same arithmetic, saved and
    loaded the same way, but with its tensor pairs grouped once per model rather than at every update:
    AveragedModel walks both models' modules and detaches every tensor each call, ~10 ms of a ~170 ms step of
    Lite0 at batch 16 on 2 CPU cores (bench/loop.py). The pairs stay valid because training, load_state_dict
    and BatchNorm update the tensors in place; loading a state rebuilds them."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        super().__init__(model, multi_avg_fn=ema_multi_avg_fn(decay, warmup), use_buffers=True)
        self.__dict__.update(_decay=decay, _warmup=warmup, _source=None)  # plain attributes, not submodules

    def _group(self, model: nn.Module) -> None:
        groups: dict = {}
        mine = [*self.module.parameters(), *self.module.buffers()]
        theirs = [*model.parameters(), *model.buffers()]
        for a, b in zip(mine, theirs, strict=True):
            pair = groups.setdefault((a.device, a.dtype), ([], []))
            pair[0].append(a.detach())
            pair[1].append(b.detach())
        same_device = all(a.device == b.device for a, b in zip(mine, theirs))
        self.__dict__.update(_source=model, _groups=list(groups.values()) if same_device else None,
                             _count=int(self.n_averaged))

    def update_parameters(self, model: nn.Module) -> None:
        if self._source is not model:
            self._group(model)
        if self._groups is None:  # the model lives on another device: AveragedModel copies it over each time
            super().update_parameters(model)
            self._count += 1
            return
        for ema, current in self._groups:
            if self._count == 0 or not ema[0].is_floating_point():  # the first update copies; counters copy
                torch._foreach_copy_(ema, current)
            else:
                torch._foreach_lerp_(ema, current, 1.0 - ema_decay_at(self._decay, self._count, self._warmup))
        self.n_averaged += 1
        self._count += 1

    def load_state_dict(self, *args, **kwargs):
        self.__dict__["_source"] = None  # n_averaged (and maybe the tensors) changed: group again
        return super().load_state_dict(*args, **kwargs)


def make_ema(model: nn.Module, decay: float, warmup: bool = True) -> EMA | None:
    """The EMA of `model`'s weights and buffers (None when decay is 0). Its first update copies the model."""
    if decay <= 0:
        return None
    return EMA(model, decay, warmup)


def pick(candidates: dict[str, dict], by: str) -> str:
    """The name of the winning candidate. candidates: name -> validation metrics (with "loss", the mean NLL).
    by "loss": the lowest loss; else the highest value of that metric. Ties go to the first candidate given,
    so callers list their default first."""
    names = list(candidates)
    if by == "loss":
        return min(names, key=lambda n: (candidates[n]["loss"], names.index(n)))
    return max(names, key=lambda n: (candidates[n][by], -names.index(n)))
