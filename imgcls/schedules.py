"""Learning-rate schedules behind one contract, after timm's scheduler: the training loop always calls

    schedule.step_update(num_updates)   after every optimizer update that was applied
    schedule.step(epoch, metric)        after every epoch's evaluation (epoch = epochs finished, 1-based)

and each schedule acts on the call it needs and ignores the other: the per-update curves (cosine, onecycle,
constant) follow ``num_updates``, ReduceLROnPlateau follows the metric, and SWA's SWALR is a late phase
(``Switch``) that takes over from the main schedule at an epoch. An update that fp16's GradScaler skipped
(overflowing gradients) does not count in ``num_updates``, so the curve follows the updates that happened.

Per-update schedules are defined over ``total = epochs * steps_per_epoch`` updates: the engine passes the
real number of updates per epoch. Resuming loads the saved ``state_dict()`` into a freshly built schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR, ReduceLROnPlateau

from imgcls.errors import UserError
from imgcls.registry import Registry

SCHEDULES = Registry("--scheduler")


class Schedule:
    """The contract. The base class ignores both calls; a schedule overrides the one it needs."""

    def step_update(self, num_updates: int) -> None:
        pass

    def step(self, epoch: int, metric: float | None = None) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class PerUpdate(Schedule):
    """A torch scheduler whose lr is a function of the number of applied updates (stepped once per update)."""

    def __init__(self, scheduler: LRScheduler):
        self.scheduler = scheduler

    def step_update(self, num_updates: int) -> None:
        while self.scheduler.last_epoch < num_updates:  # once per applied update; none for a skipped one
            self.scheduler.step()

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)


class PerEpoch(PerUpdate):
    """A torch scheduler stepped once per epoch, with the validation metric when it takes one (plateau)."""

    def __init__(self, scheduler, with_metric: bool = False):
        super().__init__(scheduler)
        self.with_metric = with_metric

    def step_update(self, num_updates: int) -> None:
        pass

    def step(self, epoch: int, metric: float | None = None) -> None:
        self.scheduler.step(metric) if self.with_metric else self.scheduler.step()


class Switch(Schedule):
    """``first`` until epoch ``at`` (1-based) has been evaluated; from then on ``make_second()``, built then.

    The second phase is stepped for epoch ``at`` itself and owns every later update and epoch (SWALR after
    ``--swa-start``). The same shape switches any schedule late in training.
    """

    def __init__(self, first: Schedule, at: int, make_second: Callable[[], Schedule]):
        self.first, self.at, self.make_second = first, at, make_second
        self.second: Schedule | None = None

    def step_update(self, num_updates: int) -> None:
        (self.second or self.first).step_update(num_updates)

    def step(self, epoch: int, metric: float | None = None) -> None:
        if epoch < self.at:
            self.first.step(epoch, metric)
            return
        if self.second is None:
            self.second = self.make_second()
        self.second.step(epoch, metric)

    def state_dict(self) -> dict:
        return {"first": self.first.state_dict(),
                "second": None if self.second is None else self.second.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.first.load_state_dict(state["first"])
        if state["second"] is not None:
            self.second = self.make_second()
            self.second.load_state_dict(state["second"])


def build_schedule(name: str, optimizer: Optimizer, *, epochs: int, steps_per_epoch: int,
                   settings: dict | None = None) -> Schedule:
    """The schedule ``name`` (a key of SCHEDULES) on ``optimizer``, its hyperparameters taken from
    ``settings`` (a Config's values; each schedule takes the ones it declares)."""
    SCHEDULES.lookup(name)
    if epochs < 1 or steps_per_epoch < 1:
        raise UserError(f"--epochs {epochs} / steps per epoch {steps_per_epoch}: both must be >= 1")
    return SCHEDULES.build(name, optimizer, epochs, steps_per_epoch, settings=settings)


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


def _cycles_momentum(optimizer: Optimizer) -> bool:
    """OneCycleLR cycles Adam's beta1 or SGD's momentum, but must not switch momentum on for plain SGD."""
    defaults = optimizer.defaults
    return "betas" in defaults or float(defaults.get("momentum", 0.0)) > 0.0


@SCHEDULES.register("cosine")
def cosine(optimizer: Optimizer, epochs: int, steps_per_epoch: int, *, warmup_epochs: float = 0.0,
           min_lr: float = 0.0) -> Schedule:
    """Linear warmup over ``warmup_epochs``, then cosine from the optimizer's lr to ``min_lr`` (absolute,
    for every parameter group), per update."""
    total, warmup = epochs * steps_per_epoch, _warmup_steps(warmup_epochs, steps_per_epoch)
    if warmup >= total:
        raise UserError(f"--warmup-epochs {warmup_epochs}: must be shorter than --epochs {epochs}")

    def factor(base_lr: float) -> Callable[[int], float]:
        min_factor = min_lr / base_lr if base_lr > 0 else 0.0
        return lambda step: warmup_cosine_factor(step, warmup, total, min_factor)
    return PerUpdate(LambdaLR(optimizer, [factor(group["lr"]) for group in optimizer.param_groups]))


@SCHEDULES.register("constant")
def constant(optimizer: Optimizer, epochs: int, steps_per_epoch: int, *, warmup_epochs: float = 0.0) -> Schedule:
    """The optimizer's lr, after an optional linear warmup, per update."""
    warmup = _warmup_steps(warmup_epochs, steps_per_epoch)
    return PerUpdate(LambdaLR(optimizer, lambda step: (step + 1) / (warmup + 1) if step < warmup else 1.0))


@SCHEDULES.register("onecycle")
def onecycle(optimizer: Optimizer, epochs: int, steps_per_epoch: int, *, warmup_epochs: float = 0.0,
             max_lr: float | None = None, pct_start: float = 0.1, div_factor: float = 25.0,
             final_div_factor: float = 1000.0) -> Schedule:
    """OneCycleLR over exactly ``epochs * steps_per_epoch`` updates; ``max_lr`` defaults to the optimizer's
    lr; starts at max_lr / div_factor, ends at max_lr / (div_factor * final_div_factor); like torch's default
    it cycles Adam's beta1 (or SGD momentum, if set) 0.95 -> 0.85 -> 0.95."""
    if _warmup_steps(warmup_epochs, steps_per_epoch):
        raise UserError("--warmup-epochs: onecycle has its own warmup (--pct-start); set it to 0")
    if not 0.0 < pct_start < 1.0:
        raise UserError(f"--pct-start {pct_start}: must be in (0, 1)")
    total = epochs * steps_per_epoch
    if pct_start * total == 1.0:
        # torch's OneCycleLR divides by zero when its warmup is exactly one update (e.g. 10 updates at 0.1);
        # a hair more keeps the same lr at every step of such a tiny run
        pct_start = math.nextafter(pct_start, 1.0)
    return PerUpdate(OneCycleLR(
        optimizer, max_lr=optimizer.param_groups[0]["lr"] if max_lr is None else max_lr,
        total_steps=total, pct_start=pct_start, div_factor=div_factor,
        final_div_factor=final_div_factor, cycle_momentum=_cycles_momentum(optimizer)))


@SCHEDULES.register("plateau")
def plateau(optimizer: Optimizer, epochs: int, steps_per_epoch: int, *, warmup_epochs: float = 0.0,
            min_lr: float = 0.0, plateau_factor: float = 0.1, plateau_patience: int = 3,
            plateau_mode: str = "max") -> Schedule:
    """ReduceLROnPlateau(mode, factor, patience, min_lr), stepped once per epoch with the validation metric
    (mode max: the metric should rise)."""
    if _warmup_steps(warmup_epochs, steps_per_epoch):
        raise UserError("--warmup-epochs: not supported with --scheduler plateau; set it to 0")
    if plateau_mode not in ("min", "max"):
        # not a flag: every --metric rises as it improves, so train.py always uses max; other callers may not
        raise UserError(f"plateau_mode {plateau_mode!r}: choose min or max")
    return PerEpoch(ReduceLROnPlateau(optimizer, mode=plateau_mode, factor=plateau_factor,
                                      patience=plateau_patience, min_lr=min_lr), with_metric=True)
