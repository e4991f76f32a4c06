"""Learning-rate schedules as plain ``torch.optim.lr_scheduler`` objects.

``build_scheduler`` returns the scheduler and when the engine must call ``.step()``:

- "step":   once per optimizer update (cosine, onecycle, constant),
- "epoch":  once per epoch (none of the built-in names, kept for the engine's dispatch),
- "metric": once per epoch with the validation metric, ``scheduler.step(metric)`` (plateau).

Per-update schedules are defined over ``total = epochs * steps_per_epoch`` updates; the engine must pass
the real number of updates per epoch (for a sampler with a fixed epoch length of N that is
ceil(N / batch) or floor with drop_last). Resuming: either load the saved ``state_dict()`` into a freshly
built scheduler, or build with ``start_step`` = updates already done; both continue the same curve.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR, ReduceLROnPlateau

from imgcls.errors import UserError

SCHEDULE_NAMES = ("plateau", "cosine", "onecycle", "constant")


def _warmup_steps(warmup_epochs: float, steps_per_epoch: int) -> int:
    if warmup_epochs < 0:
        raise UserError(f"--warmup-epochs {warmup_epochs}: must be >= 0")
    return int(round(warmup_epochs * steps_per_epoch))


def warmup_cosine_factor(step: int, warmup: int, total: int, min_factor: float) -> float:
    """LR multiplier at update ``step`` (0-based) of a linear-warmup + cosine schedule.

    Warmup rises linearly as (step + 1) / (warmup + 1), so the first update already moves and update
    ``warmup`` is the first at the full rate; cosine then falls from 1 at update ``warmup`` to
    ``min_factor`` at the last update ``total - 1`` and stays there if stepped further.
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - 1 - warmup))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _warmup_constant_factor(step: int, warmup: int) -> float:
    return (step + 1) / (warmup + 1) if step < warmup else 1.0


def _per_group(optimizer: Optimizer, make: Callable[[float], Callable[[int], float]]) -> list:
    """One lambda per parameter group: min_lr is absolute, so the factor depends on each group's base lr."""
    return [make(group["lr"]) for group in optimizer.param_groups]


def _cycles_momentum(optimizer: Optimizer) -> bool:
    """OneCycleLR cycles Adam's beta1 or SGD's momentum, but must not switch momentum on for plain SGD."""
    defaults = optimizer.defaults
    return "betas" in defaults or float(defaults.get("momentum", 0.0)) > 0.0


def build_scheduler(
    name: str,
    optimizer: Optimizer,
    *,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    min_lr: float = 0.0,
    max_lr: float | None = None,
    pct_start: float = 0.1,
    div_factor: float = 25.0,
    final_div_factor: float = 1000.0,
    plateau_factor: float = 0.1,
    plateau_patience: int = 3,
    plateau_mode: str = "max",
    start_step: int = 0,
) -> tuple[LRScheduler | ReduceLROnPlateau, str]:
    """Build the schedule ``name`` (one of SCHEDULE_NAMES) on ``optimizer``; returns (scheduler, interval).

    plateau:  ReduceLROnPlateau(mode, factor, patience, min_lr) stepped with the validation metric.
    cosine:   linear warmup over ``warmup_epochs`` then cosine from the optimizer's lr to ``min_lr``.
    onecycle: OneCycleLR over exactly ``epochs * steps_per_epoch`` updates; ``max_lr`` defaults to the
              optimizer's lr; starts at max_lr / div_factor, ends at max_lr / (div_factor * final_div_factor);
              like torch's default it cycles Adam's beta1 (or SGD momentum, if set) 0.95 -> 0.85 -> 0.95.
    constant: the optimizer's lr (after an optional linear warmup).
    ``start_step``: updates already done (resume without a saved scheduler state); ignored by plateau.
    """
    if name not in SCHEDULE_NAMES:
        raise UserError(f"--scheduler {name!r}: unknown; choose one of {', '.join(SCHEDULE_NAMES)}")
    if epochs < 1 or steps_per_epoch < 1:
        raise UserError(f"--epochs {epochs} / steps per epoch {steps_per_epoch}: both must be >= 1")
    total = epochs * steps_per_epoch
    warmup = _warmup_steps(warmup_epochs, steps_per_epoch)

    if name == "plateau":
        if warmup:
            raise UserError("--warmup-epochs: not supported with --scheduler plateau; set it to 0")
        if plateau_mode not in ("min", "max"):
            raise UserError(f"--plateau-mode {plateau_mode!r}: choose min or max")
        scheduler = ReduceLROnPlateau(
            optimizer, mode=plateau_mode, factor=plateau_factor, patience=plateau_patience, min_lr=min_lr
        )
        return scheduler, "metric"

    if name == "cosine":
        if warmup >= total:
            raise UserError(f"--warmup-epochs {warmup_epochs}: must be shorter than --epochs {epochs}")

        def make(base_lr: float) -> Callable[[int], float]:
            min_factor = min_lr / base_lr if base_lr > 0 else 0.0
            return lambda step: warmup_cosine_factor(step, warmup, total, min_factor)

        scheduler = LambdaLR(optimizer, _per_group(optimizer, make))
    elif name == "constant":
        scheduler = LambdaLR(optimizer, lambda step: _warmup_constant_factor(step, warmup))
    else:  # onecycle
        if warmup:
            raise UserError("--warmup-epochs: onecycle has its own warmup (--pct-start); set it to 0")
        if not 0.0 < pct_start < 1.0:
            raise UserError(f"--pct-start {pct_start}: must be in (0, 1)")
        scheduler = OneCycleLR(
            optimizer,
            max_lr=optimizer.param_groups[0]["lr"] if max_lr is None else max_lr,
            total_steps=total,
            pct_start=pct_start,
            div_factor=div_factor,
            final_div_factor=final_div_factor,
            cycle_momentum=_cycles_momentum(optimizer),
        )

    if start_step:
        if not 0 <= start_step <= total:
            raise UserError(f"start_step {start_step}: must be between 0 and the {total} planned updates")
        # Replaying the closed-form steps is cheap (thousands of scalar updates) and uses only public API.
        # The warning about stepping before optimizer.step() is expected here: no update happened yet.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(start_step):
                scheduler.step()
    return scheduler, "step"


def current_lr(optimizer: Optimizer) -> float:
    """The first parameter group's learning rate (what the engine logs and plot_lr draws)."""
    return float(optimizer.param_groups[0]["lr"])
