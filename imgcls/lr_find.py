"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates"; fastai's `lr_find`): train from the
run's starting weights while the lr grows exponentially, one value per update, and suggest the lr where the
smoothed loss falls fastest.

`train.py --find-lr` sweeps with everything a run of the same flags would use (data, fold, model and its
pretrained weights, sampler, augmentation, mixing, loss, optimizer, AMP) and writes nothing into any run
folder: not the split, not a checkpoint. Only the plot is written, beside the runs (OUT/lr_find.png).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from . import distributed as dist
from .checkpoint import RunState
from .config import Config
from .errors import UserError
from .schedules import Schedule

START_LR, END_LR = 1e-7, 10.0   # fastai's default range
# Exponential smoothing of the loss, bias-corrected. fastai uses 0.98, a memory of ~50 updates: with 100
# updates over 8 decades its curve lags the loss by about 4 decades of lr. 0.9 remembers ~10 updates, and
# the curve the suggestion reads is smoothed forward and then backward (no lag at all).
SMOOTHING = 0.9
DIVERGED = 4.0                  # stop once the smoothed loss exceeds this multiple of its minimum
SKIP_START, SKIP_END = 10, 5    # points left out of the suggestion: the first lrs barely move the weights,
                                # the last ones are already blowing up


def lr_grid(steps: int, start: float = START_LR, end: float = END_LR) -> np.ndarray:
    """`steps` learning rates growing exponentially from start to end (both included)."""
    if steps < 2:
        raise UserError(f"--find-lr {steps}: at least 2 updates are needed for a sweep (e.g. 100)")
    return start * (end / start) ** (np.arange(steps) / (steps - 1))


def smooth(losses: Sequence[float], beta: float = SMOOTHING) -> np.ndarray:
    """The bias-corrected exponential moving average of the losses (Adam's correction: the early values
    are not pulled towards 0)."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * float(loss)
        out.append(avg / (1 - beta ** (i + 1)))
    return np.asarray(out)


def smooth_centered(losses: Sequence[float], beta: float = SMOOTHING) -> np.ndarray:
    """`smooth` run forward, then backward over its output: the same smoothing with no lag (a zero-phase
    filter, as scipy's filtfilt), for reading the curve once the sweep is over."""
    return smooth(smooth(losses, beta)[::-1], beta)[::-1]


def sweep(step: Callable[[float], float], lrs: Sequence[float], beta: float = SMOOTHING,
          diverged: float = DIVERGED) -> tuple[np.ndarray, np.ndarray]:
    """Call step(lr) (one update at that lr, returning its loss) for each lr in order; stop at a loss that
    is not finite or once the smoothed loss exceeds `diverged` x its minimum. Returns (lrs, raw losses)
    of the updates done."""
    done, losses, best, avg = [], [], math.inf, 0.0
    for lr in lrs:
        loss = float(step(float(lr)))
        if not math.isfinite(loss):
            break
        done.append(float(lr))
        losses.append(loss)
        avg = beta * avg + (1 - beta) * loss  # smooth()'s running value, kept instead of recomputed
        current = avg / (1 - beta ** len(losses))
        best = min(best, current)
        if current > diverged * best:
            break
    return np.asarray(done), np.asarray(losses)


def suggest(lrs: np.ndarray, smoothed: np.ndarray, skip_start: int = SKIP_START,
            skip_end: int = SKIP_END) -> float | None:
    """The lr of steepest descent of the (centred) smoothed loss against log(lr), searched between the first
    `skip_start` points and the loss minimum (past it the loss only climbs). None when the loss never fell."""
    lowest = int(np.argmin(smoothed))
    stop = min(lowest + 1, len(smoothed) - skip_end)
    if stop - skip_start < 3:
        return None
    slope = np.gradient(smoothed[skip_start:stop], np.log(lrs[skip_start:stop]))
    if slope.min() >= 0:
        return None
    return float(lrs[skip_start + int(np.argmin(slope))])


def training_step(cfg: Config, fold: int, log=print) -> tuple[Callable[[float], float], int]:
    """step(lr): one update of a fresh model (cfg's starting weights) at that lr, on `fold`'s training
    images drawn by cfg's sampler, returning its loss; and the number of training images. Writes no file."""
    from . import engine  # the training loop's own parts: the sweep trains exactly as a run would
    data = engine.prepare_data(cfg, log, keep_split=False)
    train_idx, val_idx = engine.fold_indices(data[1], fold)
    stage = engine.Stage(engine.run_dir(cfg, fold), train_idx, val_idx)
    t = engine.build_trainer(dataclasses.replace(cfg, fold=fold), data, stage, None, log)
    # The sweep owns the lr: no schedule (OneCycle would also move Adam's beta1), no averaging, and an
    # optimizer built afresh, so nothing the schedule set at construction carries over.
    t = dataclasses.replace(t, optimizer=engine.make_optimizer(cfg, t.model), schedule=Schedule(), ema=None,
                            swa=None)
    criterion = t.criterion
    state = RunState()
    gen = torch.Generator().manual_seed(cfg.seed)
    t.train_model.train()
    epoch, order, position = 0, None, t.steps_per_epoch

    def step(lr: float) -> float:
        nonlocal epoch, order, position
        if position == t.steps_per_epoch:  # the sampler's next epoch when the sweep outlasts one
            order, position = torch.as_tensor(t.train_idx)[t.sampler.indices(epoch)], 0
            epoch += 1
        batch = order[position * cfg.batch_size:(position + 1) * cfg.batch_size]
        position += 1
        for group in t.optimizer.param_groups:
            group["lr"] = lr
        return engine.train_step(t, state, batch, gen, criterion).item()

    return step, len(train_idx)


def find_lr(cfg: Config, fold: int, steps: int, log=print) -> dict:
    """The range test on `fold`'s training images with cfg's run setup. Returns {"lrs", "losses",
    "smoothed", "suggestion", "plot"}; writes OUT/lr_find.png and nothing else."""
    from .plots import plot_lr_find
    if dist.world_size() > 1:
        raise UserError("--find-lr: run it in one process (python train.py --find-lr ...), not under torchrun")
    grid = lr_grid(steps)
    step, n_train = training_step(cfg, fold, log)
    log(f"lr finder: {steps} updates, lr {START_LR:.0e} -> {END_LR:.0e}, on fold {fold}'s {n_train} "
        f"training images ({cfg.model}, --sampler {cfg.sampler}, --loss {cfg.loss}); no run file is written")
    lrs, losses = sweep(step, grid)
    smoothed = smooth_centered(losses)
    suggestion = suggest(lrs, smoothed)
    plot = plot_lr_find(lrs, losses, smoothed, suggestion, Path(cfg.out) / "lr_find.png")
    lowest = lrs[int(np.argmin(smoothed))]
    if suggestion is None:
        log(f"lr finder: the loss did not fall over {len(lrs)} updates (lowest smoothed loss "
            f"{smoothed.min():.3f} at lr {lowest:.1e}); no suggestion. See {plot}")
    else:
        log(f"lr finder: suggested --lr {suggestion:.1e} (steepest fall of the smoothed loss; it was lowest "
            f"at lr {lowest:.1e}, the sweep stopped at {lrs[-1]:.1e}); plot: {plot}")
    return {"lrs": lrs, "losses": losses, "smoothed": smoothed, "suggestion": suggestion, "plot": plot}
