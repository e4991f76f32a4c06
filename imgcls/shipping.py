"""What a run ships once its epochs are done: the model candidate (best epoch, last, EMA or SWA), the
classifier re-trained on frozen features (cRT), the decision tau, then shipped.pt, metrics.json, the plots and the
report.

engine.train_stage hands its trained Trainer to one of two shipping policies, built from the same steps:
ship_chosen chooses the candidate and the tau on the stage's validation split (every run, and a refit's
selection stage); ship_carried takes them from a refit's selection stage (Carried), since the refit holds no
image out to choose on. Bench scripts call ship_chosen's steps (retrain_head, choose_decision) rather than
copying them."""

from __future__ import annotations

import json
import time
from pathlib import Path

from typing import NamedTuple

import numpy as np
from torch import nn
from torch.optim.swa_utils import update_bn

from . import checkpoint
from .checkpoint import RunState
from . import distributed as dist
from .config import Config
from .decision import adjust, choose_tau
from .decoupling import crt
from .fsio import atomic_write
from .plots import objective_label, plot_confusion, plot_curves
from .report import write_report
from .run import (BEFORE_CRT, BEST_EPOCH, CONFUSION, CURVES, LAST, LR_PLOT, METRICS, OLD_BEFORE_CRT, OLD_SHIPPED,
                  SHIPPED, SWA)
from .selection import pick
from .trainer import Carried, Trainer, bn_batches, evaluate, make_record, peak_memory_mb, val_probs


class Shipped(NamedTuple):
    result: dict     # what fit returns: run_dir, the metric, the selected candidate
    metrics: dict    # metrics.json
    tau: float       # the decision tau stored with the model


def ship_chosen(t: Trainer, state: RunState, scored: dict | None = None) -> Shipped:
    """Choose on the validation split: the candidate (--select), its cRT, the decision tau; then write the run.
    scored: validation metrics the loop already computed for the last weights and the EMA."""
    net, selected, metrics = select_result(t, state, scored)
    net, metrics, probs = retrain_head(t, state, net, selected, metrics)
    tau, metrics = choose_decision(t, net, metrics, probs)
    return Shipped(finish(t, state, net, selected, metrics, tau), metrics, tau)


def ship_carried(carried: Carried, t: Trainer, state: RunState, scored: dict | None = None) -> Shipped:
    """A refit: the kind of candidate its selection stage chose, cRT re-fitted on every image it trained on, the
    selection stage's tau. Its metrics.json holds the selection stage's validation scores (the only held-out
    ones the run has; "scored" says so) and the time of both stages."""
    kind = carried.selected
    net = _candidates(t, [kind])[kind] if kind in ("ema", "swa") else t.model
    net, crt, _ = retrain_head(t, state, net, kind, None)
    metrics = dict(carried.metrics, crt_seconds=carried.metrics.get("crt_seconds", 0.0)
                   + (crt or {}).get("crt_seconds", 0.0))
    refit = dict(refit=True, refit_train_time_s=state.train_time,
                 train_time_s=state.train_time + carried.metrics["train_time_s"],
                 scored="the selection stage (select/) on the validation split, before the refit trained on it")
    return Shipped(finish(t, state, net, kind, metrics, carried.decision_tau, refit), metrics,
                   carried.decision_tau)


def select_result(t: Trainer, state: RunState, scored: dict | None = None) -> tuple[nn.Module, str, dict | None]:
    """The run's model, by --select (selection.py): best = the better of the best epoch and the SWA average
    by --metric; last = the final weights, their EMA or the SWA average, whichever has the lowest validation
    loss. scored: validation metrics already computed for the current weights ("last") and the EMA, if any."""
    if t.cfg.select == "last":
        nets = _candidates(t, ["last", "ema", "swa"])
        scores = {name: (scored or {}).get(name) or evaluate(t, net) for name, net in nets.items()}
        name = pick(scores, by="loss")
        if len(scores) > 1:
            t.say("candidates by validation loss: " + ", ".join(
                f"{n} {m['loss']:.4f} (macro_f1 {m['macro_f1']:.4f})" for n, m in scores.items()) + f" -> {name}")
        return nets[name], name, scores[name]
    dist.barrier()  # rank 0 has written best_epoch.pt; torchrun's ranks share this machine's disk
    # the best epoch so far; an interrupted run saved before 2026-12-06 kept it in best.pt
    best = checkpoint.read(next(p for p in (t.rdir / BEST_EPOCH, t.rdir / OLD_SHIPPED) if p.exists()))
    t.model.load_state_dict(best.model)
    chosen = (t.model, "best", evaluate(t, t.model))
    if t.swa is None or int(t.swa.n_averaged) == 0:
        return chosen
    swa_net = _candidates(t, ["swa"])["swa"]
    swa_metrics = evaluate(t, swa_net)
    metric = t.cfg.metric
    if dist.is_main():  # kept whichever wins, so both candidates can be inspected
        checkpoint.save(make_record(t, swa_net, state.epoch, float(swa_metrics[metric]), "swa"), t.rdir / SWA)
    t.say(f"SWA ({int(t.swa.n_averaged)} averages) {metric} {swa_metrics[metric]:.4f} vs best "
          f"epoch {best.epoch} {chosen[2][metric]:.4f}")
    return (swa_net, "swa", swa_metrics) if swa_metrics[metric] >= chosen[2][metric] else chosen


def _candidates(t: Trainer, kinds: list[str]) -> dict[str, nn.Module]:
    """The models of these kinds that the run has: last (the current weights), ema, swa (BatchNorm statistics
    recomputed on the training images, as SWA needs)."""
    nets = {}
    for kind in kinds:
        if kind == "last":
            nets[kind] = t.model
        elif kind == "ema" and t.ema is not None and int(t.ema.n_averaged) > 0:
            nets[kind] = t.ema.module
        elif kind == "swa" and t.swa is not None and int(t.swa.n_averaged) > 0:
            update_bn(bn_batches(t.images, t.train_idx, t.pre, t.device, t.cfg.eval_batch_size,
                                  t.channels_last), t.swa.module)
            nets[kind] = t.swa.module
    return nets


def retrain_head(t: Trainer, state: RunState, net: nn.Module, selected: str,
                 metrics: dict | None) -> tuple[nn.Module, dict | None, np.ndarray | None]:
    """cRT (decoupling.py): a new classifier on the frozen features of the training images, drawn by
    --crt-sampler. The model before it is kept as before_crt.pt; a resumed run starts from that file again, so
    re-running this stage gives the same head. Also returns the new validation probabilities (None when off,
    or when there is no validation split, as in a refit)."""
    cfg = t.cfg
    if cfg.crt_sampler is None:
        return net, metrics, None
    before = t.rdir / BEFORE_CRT
    saved = next((p for p in (before, t.rdir / OLD_BEFORE_CRT) if p.exists()), None)
    if saved is not None:
        net.load_state_dict(checkpoint.read(saved).model)
    elif dist.is_main():
        checkpoint.save(make_record(t, net, _epoch_of(state, selected),
                                float(metrics[cfg.metric]) if metrics else float("nan"), selected), before)
    start = time.time()
    t.say(f"cRT: features of {len(t.train_idx)} training images, then {cfg.crt_steps} steps of a new classifier "
          f"({cfg.crt_sampler} sampling)")
    crt(net, t.images, t.train_idx, t.labels, cfg.to_dict(), img_size=t.pre.img_size, mean=t.pre.mean,
        std=t.pre.std, device=t.device, batch_size=cfg.eval_batch_size, channels_last=t.channels_last)
    if metrics is None:
        t.say(f"classifier re-trained on {len(t.train_idx)} images ({cfg.crt_sampler} sampling, {cfg.crt_steps} "
              f"steps, {time.time() - start:.0f}s)")
        return net, {"crt_seconds": time.time() - start}, None
    probs = val_probs(t, net)
    after = evaluate(t, net, probs=probs)
    t.say(f"classifier re-trained ({cfg.crt_sampler} sampling, {cfg.crt_steps} steps, "
          f"{time.time() - start:.0f}s): val {cfg.metric} {metrics[cfg.metric]:.4f} -> {after[cfg.metric]:.4f}, "
          f"acc {metrics['accuracy']:.4f} -> {after['accuracy']:.4f}")
    after["crt_seconds"] = time.time() - start
    return net, after, probs


def choose_decision(t: Trainer, net: nn.Module, metrics: dict,
                    probs: np.ndarray | None = None) -> tuple[float, dict]:
    """The run's post-hoc logit adjustment: --decision-tau, or with 'auto' the tau of decision.TAU_GRID with
    the best validation macro-F1. metrics become those of the adjusted rule, with the unadjusted ones kept
    under "before_decision". probs: net's validation probabilities when the caller has them."""
    cfg = t.cfg
    if cfg.decision_tau == 0:
        return 0.0, metrics
    probs = val_probs(t, net) if probs is None else probs
    if cfg.decision_tau == "auto":
        tau, scores = choose_tau(probs, t.labels.numpy()[t.val_idx], t.train_counts)
    else:
        tau, scores = float(cfg.decision_tau), None
    adjusted = evaluate(t, net, probs=adjust(probs, t.train_counts, tau))
    adjusted.update({k: metrics[k] for k in ("crt_seconds",) if k in metrics})
    adjusted.update(decision_tau=tau, before_decision={k: metrics[k] for k in
                                                       ("accuracy", "macro_f1", "balanced_accuracy", "loss")})
    if scores is not None:
        adjusted["decision_tau_scores"] = scores
    t.say(f"decision rule: tau {tau:+.1f} ({'chosen on validation' if scores else '--decision-tau'}): val "
          f"macro_f1 {metrics['macro_f1']:.4f} -> {adjusted['macro_f1']:.4f}, "
          f"acc {metrics['accuracy']:.4f} -> {adjusted['accuracy']:.4f}")
    return tau, adjusted


def finish(t: Trainer, state: RunState, net: nn.Module, selected: str, metrics: dict, tau: float = 0.0,
           refit: dict | None = None) -> dict:
    """shipped.pt = the selected model, metrics.json, the confusion plot; last.pt marked finished. refit: the
    fields a refit's metrics.json adds or overrides (ship_carried)."""
    cfg, rdir = t.cfg, t.rdir
    metrics.update(
        selected=selected, best_epoch=state.best_epoch, epochs_run=state.epoch,
        stopped_early=state.stopped_early, train_time_s=state.train_time,
        peak_memory_mb=peak_memory_mb(t.device), peak_memory_kind="cuda_max_allocated"
        if t.device.type == "cuda" else "process_max_rss", split="val", fold=t.fold, train_images=len(t.train_idx))
    metrics.update(refit or {})
    result = {"run_dir": str(rdir), "metric": float(metrics[cfg.metric]), "selected": selected}
    if dist.is_main():
        record = make_record(t, net, _epoch_of(state, selected), result["metric"], selected)
        record.decision_tau = tau
        checkpoint.save(record, rdir / SHIPPED)
        plot_confusion(metrics["confusion_matrix"], t.class_names, rdir / CONFUSION)
        stages = after_training(cfg, metrics, tau) if len(t.val_idx) else []
        # the curves end where the run's reported score is: after cRT and the tau (when there are any)
        plot_curves(state.history, rdir / CURVES, title=f"{cfg.version}/fold{t.fold}",
                    objective=objective_label(cfg.to_dict()), best_epoch=state.best_epoch,
                    swa_start=cfg.swa_start, after=stages)
        write_report(rdir, title=f"{cfg.version}/fold{t.fold}: {selected} model on the validation split",
                     metrics=metrics, class_names=t.class_names, settings=cfg.to_dict(),
                     train_counts=t.train_counts, pngs={"Curves": rdir / CURVES, "Confusion matrix":
                                                        rdir / CONFUSION, "Learning rate": rdir / LR_PLOT})
        last = checkpoint.read(rdir / LAST)
        last.finished, last.result = True, result
        checkpoint.save(last, rdir / LAST)
        # metrics.json last: its presence is run.is_finished, the one definition of a finished fold. A kill
        # before it reruns these steps on resume, from best_epoch.pt and before_crt.pt, which are still there.
        atomic_write(rdir / METRICS, json.dumps(metrics, indent=2) + "\n")
        # best_epoch.pt is kept for inspection with --select last; with --select best it is shipped.pt or lost
        # to SWA, as before. An older run resumed here leaves no stale best.pt beside its model.
        for path in [rdir / OLD_SHIPPED] + ([rdir / BEST_EPOCH] if cfg.select == "best" else []):
            path.unlink(missing_ok=True)
        t.say(final_line(rdir, selected, metrics, cfg.metric, refit=bool(refit),
                         tau_chosen=isinstance(metrics.get("decision_tau_scores"), dict)))
    dist.barrier()
    return result


def final_line(rdir: Path, selected: str, metrics: dict, metric: str, refit: bool = False,
               tau_chosen: bool = False) -> str:
    """The run's last line: each score once, which split it was measured on, and that a tau chosen on that
    split flatters it; the held-out test scores come from predict.py."""
    scores = {metric: metrics[metric], "accuracy": metrics["accuracy"]}
    split = "the selection stage's validation split" if refit else "the validation split"
    note = " (where its tau was chosen)" if tau_chosen else ""
    return (f"{rdir}: done; ships the {selected} model; on {split}{note}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
            + f"; train time {metrics['train_time_s']:.0f}s; test scores: predict.py --run {rdir.parent}")


def after_training(cfg: Config, metrics: dict, tau: float) -> list[tuple[str, dict]]:
    """The validation scores of the stages after the epochs, in order: cRT, then the decision tau."""
    stages = []
    if cfg.crt_sampler is not None:
        stages.append(("cRT", metrics.get("before_decision", metrics)))
    if "before_decision" in metrics:
        stages.append((f"tau {tau:+.1f}", metrics))
    return stages


def _epoch_of(state: RunState, selected: str) -> int:
    """The epochs the selected model trained for: the best epoch's number, else every epoch run."""
    return state.best_epoch if selected == "best" else state.epoch
