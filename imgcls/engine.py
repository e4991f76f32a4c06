"""The training loop: one readable file, no framework (its parts are built in trainer.py; what the run ships
after its epochs is decided in shipping.py).

fit(cfg, fold) trains one fold of one version into OUT/<version>/fold<k>/ and returns its result. With --refit
it trains twice: a selection stage in fold<k>/select/ chooses the epochs, the model candidate and the decision
tau on the validation split, then the final model is trained on train + validation with those settings (as
scikit-learn's GridSearchCV(refit=True) does). Each training pass flows in one direction: data (uint8 cache +
split) -> sampler indices -> batched augmentation on the device -> model under autocast -> loss -> optimizer /
scheduler / SWA / EMA -> evaluation -> checkpoint, summary, plots.

Exact resume: a checkpoint is written at the end of every epoch, and every source of randomness inside an
epoch (sampler draw, augmentation, dropout / stochastic depth) is seeded from (seed, epoch), so a run killed
in epoch k and resumed from the end of epoch k-1 replays epoch k bit for bit on the CPU.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import checkpoint, interrupt
from .checkpoint import RunState
from . import distributed as dist
from .config import Config, renamed
from .data import write_skipped
from .data.samplers import epoch_seed
from .errors import UserError
from .fsio import atomic_write, clean_stale_temps
from .progressive import describe, phase_at
from .plots import objective_label, plot_curves, plot_lr
from .run import (BEST_EPOCH, CONFIG, CONFUSION, CURVES, LAST, LR_PLOT, METRICS, SELECT, SKIPPED, SPLIT, SUMMARY,
                  TENSORBOARD, check_restart, fold_model, is_finished, reads_inputs_inside)
from .tblog import TensorBoardLog

from .trainer import (Carried, Stage, Trainer, build_trainer, evaluate, fold_indices, make_record, planned_images,
                      prepare_data, run_dir, run_root, use_compile)
from .shipping import ship_carried, ship_chosen
# the training parts under the names lr_find.py, bench scripts and tests have always used (engine.X)
from .trainer import make_optimizer, weight_span_warning  # noqa: F401
from .shipping import after_training, final_line  # noqa: F401

# lr.png and curves.png are redrawn after an epoch only when this many seconds have passed since they were last
# drawn, and always after the last epoch: drawing both takes ~1 s on a CPU (matplotlib), more than a whole
# epoch of a small run, while an epoch of a real one takes minutes (so its plots still follow every epoch).
PLOTS_EVERY_S = 30.0

# Fields that change how fast or where a run goes, not what it computes: a resume may differ in these.
# "data": a run (or its data) moved to another folder resumes; what guards it is the split, which records the
# data set's files relative to their common folder (splits.paths_digest), and the class names in last.pt.
_RESUME_FREE = {"out", "device", "workers", "restart", "resume", "eval_batch_size", "compile", "cache_dir",
                "cache_mode", "tta", "fold", "data", "tensorboard", "leak_check"}


class TrainingDiverged(UserError):
    """The loss became NaN/inf: the message names the epoch and step; last.pt holds the last good epoch."""


def fit(cfg: Config, fold: int, log=print, data=None) -> dict:
    """Train one fold; resume it if OUT/<version>/fold<k>/last.pt exists. Returns the run's result dict.

    data: (dataset, split) from prepare_data, so that `--fold all` loads and splits once for every fold.
    A Ctrl-C stops it at once, or at the next update if it landed where Python drops exceptions (interrupt.py).
    """
    with interrupt.recorded():
        return _fit(cfg, fold, log, data)


def _fit(cfg: Config, fold: int, log, data) -> dict:
    cfg = dataclasses.replace(cfg, fold=fold)  # config.json and the checkpoints record the fold trained
    say = log if dist.is_main() else (lambda *a, **k: None)
    rdir = run_dir(cfg, fold)
    check_restart(cfg, fold)  # never deletes what --init-from or --teacher reads
    if cfg.restart:  # the data first (a restarted run needs it anyway): an error in it, e.g. a --relabel label
        data = data if data is not None else prepare_data(cfg, say)  # no class has, stops before the delete
        if dist.is_main() and rdir.exists():
            shutil.rmtree(rdir)
    if not cfg.refit:
        saved = open_run(cfg, rdir, say)
        if saved is not None and is_finished(rdir):
            return _already_finished(cfg, rdir, saved, say)
        data = data if data is not None else prepare_data(cfg, say)
        return train_stage(cfg, data, Stage(rdir, *fold_indices(data[1], fold)), saved, say)
    if is_finished(rdir):
        return _already_finished(cfg, rdir, checkpoint.read(rdir / LAST), say)
    data = data if data is not None else prepare_data(cfg, say)
    train_idx, val_idx = fold_indices(data[1], fold)
    select_dir = rdir / SELECT
    saved = open_run(cfg, select_dir, say)
    if saved is None or not is_finished(select_dir):
        say(f"refit, stage 1 of 2: choose the model candidate and tau on {len(val_idx)} validation images")
        train_stage(cfg, data, Stage(select_dir, train_idx, val_idx), saved, say)
    else:
        say(f"refit, stage 1 of 2: {select_dir} already finished")
    carried = read_carried(select_dir)
    # The refit trains the chosen number of epochs on everything, with nothing held out to stop or select on.
    refit_cfg = dataclasses.replace(cfg, epochs=carried.epochs, early_stop=None)
    everything = np.union1d(train_idx, val_idx)
    say(f"refit, stage 2 of 2: {carried.epochs} epochs on train + validation ({len(everything)} images), "
        f"ships the {carried.selected} weights with tau {carried.decision_tau:+.1f}")
    return train_stage(refit_cfg, data, Stage(rdir, everything, everything[:0]), open_run(refit_cfg, rdir, say),
                       say, ship=functools.partial(ship_carried, carried))


def train_stage(cfg: Config, data, stage: Stage, saved: checkpoint.Checkpoint | None, say,
                ship=ship_chosen) -> dict:
    """One training pass into stage.rdir, resumed from `saved` (its last.pt) when given; `ship` (shipping.py)
    decides what the pass ships once its epochs are done. A pass killed after its last epoch but before
    metrics.json (run.is_finished) runs the shipping steps again on resume."""
    if saved is not None and is_finished(stage.rdir):
        return _already_finished(cfg, stage.rdir, saved, say)
    t = setup(cfg, data, stage, saved, say)
    state = restore(t, saved) if saved is not None else RunState()
    board = TensorBoardLog(stage.rdir / TENSORBOARD, state.epoch) if cfg.tensorboard and dist.is_main() else None
    val = ema_val = None
    drawn = time.monotonic()  # the first epoch's plots wait like the others: a short run draws them once
    for epoch in range(state.epoch, cfg.epochs):
        if state.stopped_early:
            break
        train_loss, seconds = train_one_epoch(t, state, epoch)
        lr = t.optimizer.param_groups[0]["lr"]
        val = evaluate(t, t.model) if len(t.val_idx) else None
        ema_val = evaluate(t, t.ema.module) if t.ema is not None and len(t.val_idx) else None
        end_epoch(t, state, epoch, val)
        log_epoch(t, state, epoch, lr, train_loss, seconds, val, ema_val)
        if board is not None:
            board.epoch(state.history[-1])
        last_epoch = epoch + 1 == cfg.epochs or state.stopped_early
        plots_due = last_epoch or time.monotonic() - drawn >= PLOTS_EVERY_S
        # after the last epoch, shipping.finish draws curves.png with the scores after cRT and the tau
        save_progress(t, state, val, plots=plots_due, curves=not last_epoch)
        drawn = time.monotonic() if plots_due else drawn
        interrupt.check()  # a Ctrl-C swallowed while the epoch's files were written stops here
    # the final epoch's scores are those of the "last" and "ema" candidates: no second validation pass
    result, metrics, tau = ship(t, state, scored={"last": val, "ema": ema_val})
    if board is not None:
        stages = after_training(cfg, metrics, tau) if len(t.val_idx) else []
        board.finished(stages, metrics, state.epoch, stage.rdir / CONFUSION)
        board.close()
    return result


def _already_finished(cfg: Config, rdir: Path, saved: checkpoint.Checkpoint, say) -> dict:
    say(f"{rdir}: already finished ({cfg.metric} {saved.result['metric']:.4f}); --restart to train again")
    return saved.result


def read_carried(select_dir: Path) -> Carried:
    """The selection stage's choices, from the files it wrote (so a resumed refit carries the same ones)."""
    best = checkpoint.read(fold_model(select_dir))
    metrics = json.loads((select_dir / METRICS).read_text())
    return Carried(selected=best.selected, epochs=int(best.epoch), decision_tau=float(best.decision_tau),
                   metrics=metrics)


def open_run(cfg: Config, rdir: Path, say) -> checkpoint.Checkpoint | None:
    """The interrupted or finished run in rdir (None: start afresh), checked against cfg."""
    last_path = rdir / LAST
    if dist.is_main():  # temp files a killed run left behind (its writes were atomic, the temps are just litter)
        clean_stale_temps(rdir)
        clean_stale_temps(run_root(cfg))
    dist.barrier()
    saved = checkpoint.read(last_path) if last_path.exists() else None
    if cfg.resume and saved is None:
        raise UserError(f"--resume: {last_path} not found; nothing to resume (drop --resume to start this run)")
    if saved is not None:
        _check_resumable(saved.config, cfg, last_path, inputs_inside=reads_inputs_inside(cfg, rdir))
    return saved


def setup(cfg: Config, data, stage: Stage, saved: checkpoint.Checkpoint | None, say) -> Trainer:
    """The run folder's files, then model, data order, augmentation, loss and optimisation for one stage."""
    if dist.is_main():
        rdir = stage.rdir
        rdir.mkdir(parents=True, exist_ok=True)
        atomic_write(rdir / SPLIT, (run_root(cfg) / SPLIT).read_bytes())
        atomic_write(rdir / CONFIG, json.dumps(cfg.settings(), indent=2) + "\n")
        write_skipped(data[0].skipped, str(rdir / SKIPPED))
    t = build_trainer(cfg, data, stage, saved, say)
    if saved is None:
        _log_start(t)
    return t


def _log_start(t: Trainer) -> None:
    cfg = t.cfg
    weights = getattr(t.criterion, "class_weights", None)
    if weights is not None:
        t.say(f"loss {cfg.loss}: class weights min {weights.min():.4g} max {weights.max():.4g} "
              f"(ratio {weights.max() / weights.min():.1f}x); per class: "
              + ", ".join(f"{n}={v:.3g}" for n, v in zip(t.class_names, weights.tolist())))
        warning = weight_span_warning(cfg.loss, weights)
        if warning:
            t.say(warning)
    t.say(f"{t.rdir}: {cfg.model} on {len(t.train_idx)} train / {len(t.val_idx)} val images, "
          f"{len(t.class_names)} classes, input {t.pre.img_size[0]}x{t.pre.img_size[1]}, {cfg.epochs} epochs x "
          f"{t.steps_per_epoch} steps, device {t.device}, amp {t.amp_dtype}, world size {dist.world_size()}, "
          + use_compile(cfg.compile, planned_images(cfg, t.steps_per_epoch), cfg.batch_size, t.device)[1])
    if t.phases is not None:
        t.say(describe(t.phases))


def restore(t: Trainer, saved: checkpoint.Checkpoint) -> RunState:
    """Every trained object back to the end of the saved epoch; returns the saved run state."""
    t.model.load_state_dict(saved.model)
    t.optimizer.load_state_dict(saved.optimizer)
    t.schedule.load_state_dict(saved.schedule)
    t.scaler.load_state_dict(saved.scaler)
    if t.swa is not None:
        t.swa.load_state_dict(saved.swa_model)
    if t.ema is not None:
        t.ema.load_state_dict(saved.ema_model)
    torch.set_rng_state(saved.rng["torch"])
    t.say(f"{t.rdir}: resuming after epoch {saved.progress.epoch}/{t.cfg.epochs}")
    return saved.progress


def train_one_epoch(t: Trainer, state: RunState, epoch: int) -> tuple[float, float]:
    """One pass over this epoch's sampler draw; returns (mean training loss, seconds)."""
    cfg = t.cfg
    torch.manual_seed(epoch_seed(cfg.seed, epoch, "model"))  # dropout / stochastic depth
    gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch, "augment"))  # augmentation, mixing
    order = torch.as_tensor(t.train_idx)[t.sampler.indices(epoch)]
    t.train_model.train()
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=t.device)
    bar = tqdm(range(t.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
               disable=not (dist.is_main() and sys.stderr.isatty()), dynamic_ncols=True)
    criterion = t.criterion
    for step in bar:
        interrupt.check()
        loss = train_step(t, state, order[step * cfg.batch_size:(step + 1) * cfg.batch_size], gen, criterion)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"{t.rdir}: loss is {loss.item()} at epoch {epoch + 1} step {step + 1}; "
                                   f"last.pt keeps epoch {state.epoch}. Lower --lr or set --grad-clip")
        loss_sum += loss.detach()
        if step % 10 == 0 or step + 1 == t.steps_per_epoch:
            _report_step(bar, t.say, epoch, cfg.epochs, step, t.steps_per_epoch, loss,
                         t.optimizer.param_groups[0]["lr"], (step + 1) * cfg.batch_size * dist.world_size(), t0)
    if t.device.type == "cuda":
        torch.cuda.synchronize(t.device)
    return (loss_sum / t.steps_per_epoch).item(), time.perf_counter() - t0


def train_step(t: Trainer, state: RunState, batch: torch.Tensor, gen: torch.Generator,
               criterion: nn.Module) -> torch.Tensor:
    """Augment, forward under autocast, loss, backward, update, schedule. Returns the (unscaled) loss;
    a non-finite loss is returned before any update, for the caller to stop on."""
    augment, mixer = t.augment, t.mixer
    if t.phases is not None:  # by the update's index: resumed runs and the schedule see the same stages
        phase = phase_at(t.phases, state.num_updates + state.skipped_updates)
        augment, mixer = phase.augment, phase.mixer
    x = augment(t.images[batch.to(t.images.device)].to(t.device, non_blocking=True), gen)
    target = t.labels_dev[batch.to(t.device)]
    if mixer is not None:
        x, target = mixer(x, target, gen)
    if t.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(t.device.type, dtype=t.amp_dtype or torch.float32, enabled=t.amp_dtype is not None):
        logits = t.train_model(x)
    loss = criterion(logits.float(), target)
    if t.distill is not None:  # the hard-label loss mixed with the teacher's soft targets for these images
        loss = t.distill(logits, loss, batch)
    if t.contrast is not None:  # the features of this forward pass, pulled together within each class
        loss = t.contrast(loss, target)
    if not torch.isfinite(loss):
        return loss
    t.optimizer.zero_grad(set_to_none=True)
    t.scaler.scale(loss).backward()
    if t.cfg.grad_clip:
        t.scaler.unscale_(t.optimizer)
        nn.utils.clip_grad_norm_(t.model.parameters(), t.cfg.grad_clip)
    scale = t.scaler.get_scale() if t.scaler.is_enabled() else None
    t.scaler.step(t.optimizer)  # skipped by the scaler when fp16 gradients overflowed
    t.scaler.update()
    state.lr_history.append(t.optimizer.param_groups[0]["lr"])
    if scale is not None and t.scaler.get_scale() < scale:  # the scaler backs off exactly when it skipped
        state.skipped_updates += 1
    else:
        state.num_updates += 1
        if t.ema is not None:
            t.ema.update_parameters(t.model)
    t.schedule.step_update(state.num_updates)
    return loss


def end_epoch(t: Trainer, state: RunState, epoch: int, val: dict | None) -> None:
    """The epoch's consequences: schedule, SWA average, best checkpoint, early stopping (the last two only
    with a validation split)."""
    cfg, done = t.cfg, epoch + 1
    score = float(val[cfg.metric]) if val is not None else None
    t.schedule.step(done, score)
    if t.swa is not None and done >= cfg.swa_start and (done - cfg.swa_start) % cfg.swa_freq == 0:
        t.swa.update_parameters(t.model)
    if score is None:
        state.epoch = done
        return
    improved = score > state.best_metric + cfg.early_stop_min_delta
    if score > state.best_metric:
        state.best_metric, state.best_epoch = score, done
        if dist.is_main():
            checkpoint.save(make_record(t, t.model, done, score, "best"), t.rdir / BEST_EPOCH)
    state.bad_epochs = 0 if improved else state.bad_epochs + 1
    if cfg.early_stop is not None and state.bad_epochs >= cfg.early_stop:
        state.stopped_early = True
    state.epoch = done


def log_epoch(t: Trainer, state: RunState, epoch: int, lr: float, train_loss: float, seconds: float,
              val: dict | None, ema_val: dict | None = None) -> None:
    """One row of summary.csv (kept in the run state) and its log line. Without a validation split (a refit)
    the validation columns are NaN; with an EMA its validation scores get columns of their own."""
    cfg = t.cfg
    state.train_time += seconds
    nan = float("nan")
    row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss,
           "train_img_s": t.steps_per_epoch * cfg.batch_size * dist.world_size() / seconds}
    for prefix, scores in [("val_", val)] + ([("val_ema_", ema_val)] if t.ema is not None else []):
        row.update({prefix + "loss": scores["loss"] if scores else nan,
                    prefix + "acc": scores["accuracy"] if scores else nan,
                    prefix + "macro_f1": scores["macro_f1"] if scores else nan,
                    prefix + "balanced_acc": scores["balanced_accuracy"] if scores else nan})
    row["time_s"] = seconds
    state.history.append(row)
    line = f"epoch {epoch + 1}/{cfg.epochs} lr {lr:.2e} train_loss {train_loss:.4f} {row['train_img_s']:.0f} img/s"
    if val is not None:
        line += (f" val_loss {val['loss']:.4f} acc {val['accuracy']:.4f} macro_f1 {val['macro_f1']:.4f} "
                 f"bal_acc {val['balanced_accuracy']:.4f}")
    if ema_val is not None:
        line += (f" | ema val_loss {ema_val['loss']:.4f} acc {ema_val['accuracy']:.4f} "
                 f"macro_f1 {ema_val['macro_f1']:.4f}")
    t.say(line + f" ({seconds:.1f}s)" + (" *" if state.best_epoch == epoch + 1 else ""))


def save_progress(t: Trainer, state: RunState, val: dict | None, plots: bool = True, curves: bool = True) -> None:
    """last.pt (everything a resume needs) and summary.csv at the end of every epoch; lr.png when `plots`,
    curves.png too unless `curves` is false."""
    if dist.is_main():
        record = make_record(t, t.model, state.epoch, float(val[t.cfg.metric]) if val else float("nan"), "last")
        record.progress, record.rng = state, {"torch": torch.get_rng_state()}
        record.optimizer, record.schedule = t.optimizer.state_dict(), t.schedule.state_dict()
        record.scaler = t.scaler.state_dict()
        record.swa_model = t.swa.state_dict() if t.swa is not None else None
        record.ema_model = t.ema.state_dict() if t.ema is not None else None
        checkpoint.save(record, t.rdir / LAST)
        _write_summary(state.history, t.rdir / SUMMARY)
    if dist.is_main() and plots:
        plot_lr(state.lr_history, t.rdir / LR_PLOT)
    if dist.is_main() and plots and curves:
        plot_curves(state.history, t.rdir / CURVES, title=f"{t.cfg.version}/fold{t.fold}",
                    objective=objective_label(t.cfg.to_dict()), best_epoch=state.best_epoch,
                    swa_start=t.cfg.swa_start)
    dist.barrier()
    if state.stopped_early:
        t.say(f"early stopping: no {t.cfg.metric} improvement > {t.cfg.early_stop_min_delta} for "
              f"{t.cfg.early_stop} epochs (best {state.best_metric:.4f} at epoch {state.best_epoch})")


def _report_step(bar, say, epoch, epochs, step, steps, loss, lr, seen, t0) -> None:
    """The tqdm bar's postfix on a terminal; a plain line every ~10% of the epoch in a log file."""
    img_s = seen / (time.perf_counter() - t0)
    if not bar.disable:
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", img_s=f"{img_s:.0f}")
    elif step % max(10, steps // 10 // 10 * 10) == 0 and step > 0:
        say(f"[epoch {epoch + 1}/{epochs} step {step}/{steps}] loss {loss.item():.4f} lr {lr:.2e} "
            f"{img_s:.0f} img/s")


def _write_summary(rows: list[dict], path: Path) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, text.getvalue())


def _check_resumable(saved: dict, cfg: Config, path: Path, inputs_inside=()) -> None:
    current = cfg.to_dict()
    # A setting the saved run does not record did not exist when it trained: it trained with the default.
    saved = dict(Config().to_dict(), **renamed(saved))
    changed = sorted(k for k in current if k not in _RESUME_FREE and saved.get(k) != current[k])
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed[:5])
        # advice that works: --restart would delete the weights --init-from / --teacher point at
        fix = (f"pass another --out ({' and '.join(f'{n} {p}' for n, p in inputs_inside)} reads from this run, so "
               f"--restart is no way out)" if inputs_inside else "pass --restart (or another --out) to start over")
        raise UserError(f"{path}: holds a run with other settings ({diffs}); rerun with the same flags to "
                        f"resume, or {fix}")
