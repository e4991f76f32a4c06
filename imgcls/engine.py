"""The training loop: one readable file, no framework.

fit(cfg, fold) trains one fold of one version into OUT/<version>/fold<k>/ and returns its result. The flow is
one direction: data (uint8 cache + split) -> sampler indices -> batched augmentation on the device -> model
under autocast -> loss -> optimizer / scheduler / SWA -> evaluation -> checkpoint, summary, plots.

Exact resume: a checkpoint is written at the end of every epoch, and every source of randomness inside an
epoch (sampler draw, augmentation, dropout / stochastic depth) is seeded from (seed, epoch), so a run killed
in epoch k and resumed from the end of epoch k-1 replays epoch k bit for bit on the CPU.
"""

from __future__ import annotations

import csv
import io
import json
import math
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn
from tqdm import tqdm

from . import checkpoint
from . import distributed as dist
from .config import Config
from .data import load_dataset, write_skipped
from .data.augment import MixupCutmix, TrainAugment, eval_transform
from .data.samplers import EpochSampler
from .data.splits import auto_num_folds, load_split, make_split, save_split
from .errors import UserError
from .fsio import atomic_write, clean_stale_temps
from .inference import autocast_dtype, predict_dataset, use_channels_last
from .losses import build_loss
from .metrics import classification_metrics
from .models import create_model, pretrained_cfg
from .plots import plot_confusion, plot_curves, plot_lr
from .schedules import build_scheduler

# Fields that change how fast or where a run goes, not what it computes: a resume may differ in these.
_RESUME_FREE = {"out", "device", "workers", "restart", "resume", "eval_batch_size", "compile", "cache_dir", "tta",
                "fold"}


class TrainingDiverged(UserError):
    """The loss became NaN/inf: the message names the epoch and step; last.pt holds the last good epoch."""


def run_root(cfg: Config) -> Path:
    return Path(cfg.out) / cfg.version


def run_dir(cfg: Config, fold: int) -> Path:
    return run_root(cfg) / f"fold{fold}"


def num_folds(cfg: Config, labels: np.ndarray) -> int:
    if cfg.folds == "auto":
        return auto_num_folds(np.bincount(labels))
    try:
        k = int(cfg.folds)
    except ValueError:
        raise UserError(f"--folds {cfg.folds}: expected a whole number >= 1 or 'auto'") from None
    if k < 1:
        raise UserError(f"--folds {cfg.folds}: expected a whole number >= 1 or 'auto'")
    return k


def prepare_data(cfg: Config, log=print):
    """Load (decode once, cached) and split; the split is saved once per version so every fold, and
    predict.py later, sees the same held-out test set."""
    # Under torchrun, rank 0 decodes and writes the cache first; the other ranks then read it.
    if not dist.is_main():
        dist.barrier()
    dataset = load_dataset(cfg.data, label_col=cfg.label_col, size=cfg.storage_size,
                           cache_dir=cfg.cache_dir, workers=cfg.workers, log=log)
    if dist.is_main():
        dist.barrier()
    labels = dataset.labels.numpy()
    split_path = run_root(cfg) / "split.json"
    if split_path.exists():
        split = load_split(str(split_path), dataset.paths)
    else:
        split = make_split(labels, test_frac=cfg.test_frac, num_folds=num_folds(cfg, labels),
                           val_frac=cfg.val_frac, seed=cfg.seed, class_names=dataset.class_names)
        if dist.is_main():
            save_split(str(split_path), split, dataset.paths)
        for note in split.get("notes", []):
            log(f"split: {note}")
    return dataset, split


@dataclass
class Preprocessing:
    """Everything predict.py needs to feed the model the way it was trained."""
    model: str
    img_size: tuple
    mean: tuple
    std: tuple
    storage_size: tuple

    def to_dict(self) -> dict:
        return {"model": self.model, "img_size": list(self.img_size), "mean": list(self.mean),
                "std": list(self.std), "storage_size": list(self.storage_size)}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    # No weight decay on norms and biases (1-d tensors), as timm and the ConvNeXt recipe do.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def fit(cfg: Config, fold: int, log=print, data=None) -> dict:
    """Train one fold; resume it if OUT/<version>/fold<k>/last.pt exists. Returns the run's result dict.

    data: (dataset, split) from prepare_data, so that `--fold all` loads and splits once for every fold.
    """
    main = dist.is_main()
    say = log if main else (lambda *a, **k: None)
    device = dist.local_device(cfg.device)
    rdir = run_dir(cfg, fold)
    last_path, best_path = rdir / "last.pt", rdir / "best.pt"
    if cfg.restart and main and rdir.exists():
        shutil.rmtree(rdir)
    if main:  # temp files a killed run left behind (its writes were atomic, the temps are just litter)
        clean_stale_temps(rdir)
        clean_stale_temps(run_root(cfg))
    dist.barrier()
    state = checkpoint.load(last_path) if last_path.exists() else None
    if cfg.resume and state is None:
        raise UserError(f"--resume: {last_path} not found; nothing to resume (drop --resume to start this run)")
    if state is not None:
        _check_resumable(state["config"], cfg, last_path)
        if state["finished"]:
            say(f"{rdir}: already finished ({cfg.metric} {state['result']['metric']:.4f}); "
                f"--restart to train again")
            return state["result"]

    dataset, split = data if data is not None else prepare_data(cfg, say)
    if not 0 <= fold < len(split["folds"]):
        raise UserError(f"--fold {fold}: this run has {len(split['folds'])} fold(s), "
                        f"0..{len(split['folds']) - 1}")
    if main:
        rdir.mkdir(parents=True, exist_ok=True)
        atomic_write(rdir / "split.json", (run_root(cfg) / "split.json").read_bytes())
        atomic_write(rdir / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
        write_skipped(dataset.skipped, str(rdir / "skipped.json"))
    train_idx = np.asarray(split["folds"][fold]["train"], dtype=np.int64)
    val_idx = np.asarray(split["folds"][fold]["val"], dtype=np.int64)
    labels = dataset.labels
    class_names = list(dataset.class_names)
    num_classes = len(class_names)
    train_counts = np.bincount(labels.numpy()[train_idx], minlength=num_classes)

    # --- model, preprocessing ---
    pcfg = pretrained_cfg(cfg.model)
    storage = tuple(dataset.images.shape[-2:])
    pre = Preprocessing(cfg.model, tuple(cfg.img_size or storage), tuple(pcfg["mean"]), tuple(pcfg["std"]),
                        storage)
    torch.manual_seed(cfg.seed)
    # On resume the weights come from last.pt: no pretrained lookup (and no network) is needed.
    model = create_model(cfg.model, num_classes, pretrained=None if state else cfg.pretrained,
                         drop_path_rate=cfg.drop_path, log=say)
    channels_last = use_channels_last(cfg.channels_last, device)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    images = dataset.images.to(device) if device.type == "cuda" else dataset.images
    labels_dev = labels.to(device)

    # --- sampling, augmentation, loss ---
    sampler = EpochSampler(labels.numpy()[train_idx], kind=cfg.sampler, num_samples=cfg.epoch_samples,
                           seed=cfg.seed, total_epochs=cfg.epochs, beta=cfg.cb_beta,
                           rank=dist.rank(), world_size=dist.world_size())
    epoch_draws = cfg.epoch_samples or len(train_idx)
    steps_per_epoch = (epoch_draws // dist.world_size()) // cfg.batch_size
    if steps_per_epoch == 0:
        raise UserError(f"--batch-size {cfg.batch_size}: larger than the {epoch_draws} training images of fold "
                        f"{fold} (per process); use a smaller batch size")
    augment = TrainAugment(pre.img_size, pre.mean, pre.std, hflip=cfg.hflip, rotation=cfg.rotation,
                           brightness=cfg.brightness)
    mixing = cfg.mix_prob > 0 and (cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0)
    mixer = MixupCutmix(num_classes, mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha,
                        prob=cfg.mix_prob, switch_prob=cfg.switch_prob,
                        label_smoothing=cfg.label_smoothing) if mixing else None
    # Label smoothing lives in exactly one place: the mixer's soft targets when mixing, else the loss.
    criterion = build_loss(cfg.loss, train_counts, label_smoothing=0.0 if mixing else cfg.label_smoothing,
                           focal_gamma=cfg.focal_gamma, cb_beta=cfg.cb_beta, tau=cfg.tau)
    if getattr(criterion, "class_weights", None) is not None and state is None:
        w = criterion.class_weights
        say(f"loss {cfg.loss}: class weights min {w.min():.4g} max {w.max():.4g} "
            f"(ratio {w.max() / w.min():.1f}x); per class: "
            + ", ".join(f"{n}={v:.3g}" for n, v in zip(class_names, w.tolist())))
    criterion.to(device)

    # --- optimisation ---
    optimizer = make_optimizer(cfg, model)
    scheduler, interval = build_scheduler(
        cfg.scheduler, optimizer, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
        warmup_epochs=cfg.warmup_epochs, min_lr=cfg.min_lr, max_lr=cfg.max_lr or cfg.lr,
        pct_start=cfg.pct_start, div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor,
        plateau_factor=cfg.plateau_factor, plateau_patience=cfg.plateau_patience, plateau_mode="max")
    amp_dtype = autocast_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    if cfg.swa_start is not None and not 1 <= cfg.swa_start <= cfg.epochs:
        raise UserError(f"--swa-start {cfg.swa_start}: must be an epoch in 1..{cfg.epochs} (or none)")
    swa_model = AveragedModel(model) if cfg.swa_start is not None else None
    swa_scheduler = None

    progress = {"epoch": 0, "history": [], "lr_history": [], "best_metric": -math.inf, "best_epoch": 0,
                "bad_epochs": 0, "stopped_early": False, "train_time": 0.0}
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if swa_model is not None:
            swa_model.load_state_dict(state["swa_model"])
        if state.get("swa_scheduler") is not None:
            swa_scheduler = SWALR(optimizer, swa_lr=cfg.swa_lr, anneal_epochs=cfg.swa_anneal_epochs)
            swa_scheduler.load_state_dict(state["swa_scheduler"])
        progress = state["progress"]
        torch.set_rng_state(state["rng"]["torch"])
        say(f"{rdir}: resuming after epoch {progress['epoch']}/{cfg.epochs}")

    train_model = model
    if dist.world_size() > 1:
        train_model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)

    meta = {"model_name": cfg.model, "num_classes": num_classes, "class_names": class_names,
            "preprocessing": pre.to_dict(), "config": cfg.to_dict(), "fold": fold,
            "train_class_counts": train_counts.tolist()}
    eval_kw = dict(img_size=pre.img_size, mean=pre.mean, std=pre.std, device=device,
                   batch_size=cfg.eval_batch_size, amp=cfg.amp, channels_last=channels_last)

    def evaluate(net: nn.Module) -> dict:
        probs = predict_dataset(net, images, val_idx, **eval_kw)
        y = labels.numpy()[val_idx]
        m = classification_metrics(y, probs.argmax(1), class_names)
        m["loss"] = float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean())
        return m

    if state is None:
        say(f"{rdir}: {cfg.model} on {len(train_idx)} train / {len(val_idx)} val images, {num_classes} classes, "
            f"input {pre.img_size[0]}x{pre.img_size[1]}, {cfg.epochs} epochs x {steps_per_epoch} steps, "
            f"device {device}, amp {amp_dtype}, world size {dist.world_size()}")

    for epoch in range(progress["epoch"], cfg.epochs):
        if progress["stopped_early"]:
            break
        swa_phase = cfg.swa_start is not None and epoch + 1 > cfg.swa_start  # SWALR owns the lr now
        torch.manual_seed(_epoch_seed(cfg.seed, epoch))  # dropout / stochastic depth
        gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch) + 1)  # augmentation, mixing
        order = torch.as_tensor(train_idx)[sampler.indices(epoch)]
        train_model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not (main and sys.stderr.isatty()), dynamic_ncols=True)
        for step in bar:
            batch = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            x = augment(images[batch.to(images.device)].to(device, non_blocking=True), gen)
            target = labels_dev[batch.to(device)]
            if mixer is not None:
                x, target = mixer(x, target, gen)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = train_model(x)
            loss = criterion(logits.float(), target)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"{rdir}: loss is {loss.item()} at epoch {epoch + 1} step {step + 1}; "
                                       f"last.pt keeps epoch {progress['epoch']}. Lower --lr or set --grad-clip")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            progress["lr_history"].append(optimizer.param_groups[0]["lr"])
            if interval == "step" and not swa_phase:
                scheduler.step()
            loss_sum += loss.detach()
            if step % 10 == 0 or step + 1 == steps_per_epoch:
                _report_step(bar, say, epoch, cfg.epochs, step, steps_per_epoch, loss,
                             optimizer.param_groups[0]["lr"], (step + 1) * cfg.batch_size * dist.world_size(), t0)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - t0
        train_loss = (loss_sum / steps_per_epoch).item()
        lr_now = optimizer.param_groups[0]["lr"]

        val = evaluate(model)
        score = float(val[cfg.metric])
        if cfg.swa_start is not None and epoch + 1 >= cfg.swa_start:
            if (epoch + 1 - cfg.swa_start) % cfg.swa_freq == 0:
                swa_model.update_parameters(model)
            if swa_scheduler is None:
                swa_scheduler = SWALR(optimizer, swa_lr=cfg.swa_lr, anneal_epochs=cfg.swa_anneal_epochs)
            swa_scheduler.step()
        elif interval == "epoch":
            scheduler.step()
        elif interval == "metric":
            scheduler.step(score)

        progress["train_time"] += train_seconds
        improved = score > progress["best_metric"] + cfg.early_stop_min_delta
        if score > progress["best_metric"]:
            progress["best_metric"], progress["best_epoch"] = score, epoch + 1
            if main:
                checkpoint.save_atomic(dict(meta, model=model.state_dict(), epoch=epoch + 1,
                                            metric=score, selected="best"), best_path)
        progress["bad_epochs"] = 0 if improved else progress["bad_epochs"] + 1
        if cfg.early_stop is not None and progress["bad_epochs"] >= cfg.early_stop:
            progress["stopped_early"] = True
        progress["epoch"] = epoch + 1
        progress["history"].append({
            "epoch": epoch + 1, "lr": lr_now, "train_loss": train_loss,
            "train_img_s": steps_per_epoch * cfg.batch_size * dist.world_size() / train_seconds,
            "val_loss": val["loss"], "val_acc": val["accuracy"], "val_macro_f1": val["macro_f1"],
            "val_balanced_acc": val["balanced_accuracy"], "time_s": train_seconds})
        row = progress["history"][-1]
        say(f"epoch {epoch + 1}/{cfg.epochs} lr {lr_now:.2e} train_loss {train_loss:.4f} "
            f"{row['train_img_s']:.0f} img/s val_loss {val['loss']:.4f} acc {val['accuracy']:.4f} "
            f"macro_f1 {val['macro_f1']:.4f} bal_acc {val['balanced_accuracy']:.4f} ({train_seconds:.1f}s)"
            + (" *" if progress["best_epoch"] == epoch + 1 else ""))
        if main:
            checkpoint.save_atomic(dict(
                meta, model=model.state_dict(), optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(), scaler=scaler.state_dict(),
                swa_model=swa_model.state_dict() if swa_model is not None else None,
                swa_scheduler=swa_scheduler.state_dict() if swa_scheduler is not None else None,
                progress=progress, finished=False, rng={"torch": torch.get_rng_state()}), last_path)
            _write_summary(progress["history"], rdir / "summary.csv")
            plot_lr(progress["lr_history"], rdir / "lr.png")
            plot_curves(progress["history"], rdir / "curves.png")
        dist.barrier()
        if progress["stopped_early"]:
            say(f"early stopping: no {cfg.metric} improvement > {cfg.early_stop_min_delta} for "
                f"{cfg.early_stop} epochs (best {progress['best_metric']:.4f} at epoch {progress['best_epoch']})")

    # --- the run's result: the better of the best plain model and the SWA average ---
    dist.barrier()  # rank 0 has written best.pt; torchrun's ranks share this machine's disk
    best_state = checkpoint.load(best_path)
    model.load_state_dict(best_state["model"])
    result_model, selected, result_metrics = model, "best", evaluate(model)
    if swa_model is not None and int(swa_model.n_averaged) > 0:
        swa_net = swa_model.module
        update_bn(_bn_batches(images, train_idx, pre, device, cfg.eval_batch_size, channels_last), swa_net)
        swa_metrics = evaluate(swa_net)
        if main:  # kept whichever wins, so both candidates can be inspected
            checkpoint.save_atomic(dict(meta, model=swa_net.state_dict(), epoch=progress["epoch"],
                                        metric=float(swa_metrics[cfg.metric]), selected="swa"),
                                   rdir / "swa.pt")
        say(f"SWA ({int(swa_model.n_averaged)} averages) {cfg.metric} {swa_metrics[cfg.metric]:.4f} vs best "
            f"epoch {best_state['epoch']} {result_metrics[cfg.metric]:.4f}")
        if swa_metrics[cfg.metric] >= result_metrics[cfg.metric]:
            result_model, selected, result_metrics = swa_net, "swa", swa_metrics
    result_metrics.update(
        selected=selected, best_epoch=progress["best_epoch"], epochs_run=progress["epoch"],
        stopped_early=progress["stopped_early"], train_time_s=progress["train_time"],
        peak_memory_mb=peak_memory_mb(device), peak_memory_kind="cuda_max_allocated"
        if device.type == "cuda" else "process_max_rss", split="val", fold=fold)
    result = {"run_dir": str(rdir), "metric": float(result_metrics[cfg.metric]), "selected": selected}
    if main:
        checkpoint.save_atomic(dict(meta, model=result_model.state_dict(), epoch=progress["best_epoch"],
                                    metric=result["metric"], selected=selected), best_path)
        atomic_write(rdir / "metrics.json", json.dumps(result_metrics, indent=2) + "\n")
        plot_confusion(result_metrics["confusion_matrix"], class_names, rdir / "confusion.png")
        final = checkpoint.load(last_path)
        final.update(finished=True, result=result)
        checkpoint.save_atomic(final, last_path)
        say(f"{rdir}: done; result = {selected} model, {cfg.metric} {result['metric']:.4f}, "
            f"acc {result_metrics['accuracy']:.4f}, macro_f1 {result_metrics['macro_f1']:.4f}, "
            f"train time {progress['train_time']:.0f}s")
    dist.barrier()
    return result


def _report_step(bar, say, epoch, epochs, step, steps, loss, lr, seen, t0) -> None:
    """The tqdm bar's postfix on a terminal; a plain line every ~10% of the epoch in a log file."""
    img_s = seen / (time.perf_counter() - t0)
    if not bar.disable:
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", img_s=f"{img_s:.0f}")
    elif step % max(10, steps // 10 // 10 * 10) == 0 and step > 0:
        say(f"[epoch {epoch + 1}/{epochs} step {step}/{steps}] loss {loss.item():.4f} lr {lr:.2e} "
            f"{img_s:.0f} img/s")


def _bn_batches(images, idx, pre: Preprocessing, device, batch_size, channels_last):
    """Un-augmented training batches for recomputing the SWA model's BatchNorm statistics."""
    for start in range(0, len(idx), batch_size):
        batch = torch.as_tensor(idx[start:start + batch_size])
        x = eval_transform(images[batch.to(images.device)].to(device), pre.img_size, pre.mean, pre.std)
        yield x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _write_summary(rows: list[dict], path: Path) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, text.getvalue())


def _check_resumable(saved: dict, cfg: Config, path: Path) -> None:
    current = cfg.to_dict()
    changed = sorted(k for k in current if k not in _RESUME_FREE and saved.get(k) != current[k])
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed[:5])
        raise UserError(f"{path}: holds a run with other settings ({diffs}); rerun with the same flags to "
                        f"resume, or pass --restart (or another --out) to start over")
