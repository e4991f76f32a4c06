"""The training loop: one readable file, no framework.

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
import io
import json
import resource
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn
from tqdm import tqdm

from . import checkpoint, interrupt
from .checkpoint import RunState
from . import distributed as dist
from .config import Config
from .data import load_dataset, write_skipped
from .data.augment import MixupCutmix, TrainAugment, eval_transform
from .data.samplers import EpochSampler, epoch_seed
from .decision import adjust, choose_tau
from .contrast import CONTRAST, Contrast, FeatureTap
from .distill import DISTILL, Distillation
from .teacher import teacher_log_probs, teacher_test
from .decoupling import extract_features, final_linear, replace_classifier, retrain_classifier
from .data.splits import auto_num_folds, load_split, make_split, save_split
from .errors import UserError
from .fsio import atomic_write, clean_stale_temps
from .inference import autocast_dtype, predict_dataset, use_channels_last
from .losses import build_loss
from .metrics import classification_metrics
from .progressive import Phase, build_phases, describe, make_augment, make_mixer, phase_at
from .models import create_model, pretrained_cfg
from .plots import objective_label, plot_confusion, plot_curves, plot_lr
from .report import write_report
from .run import BEST, CONFIG, LAST, METRICS, SPLIT, check_restart, fold_dir, reads_inputs_inside, starting_point
from .schedules import PerEpoch, Phases, Schedule, Switch, at_epoch, build_schedule
from .selection import make_ema, pick

# Fields that change how fast or where a run goes, not what it computes: a resume may differ in these.
# "data": a run (or its data) moved to another folder resumes; what guards it is the split, which records the
# data set's files relative to their common folder (splits.paths_digest), and the class names in last.pt.
_RESUME_FREE = {"out", "device", "workers", "restart", "resume", "eval_batch_size", "compile", "cache_dir",
                "cache_mode", "tta", "fold", "data"}


class TrainingDiverged(UserError):
    """The loss became NaN/inf: the message names the epoch and step; last.pt holds the last good epoch."""


def run_root(cfg: Config) -> Path:
    return Path(cfg.out) / cfg.version


def run_dir(cfg: Config, fold: int) -> Path:
    return fold_dir(run_root(cfg), fold)


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


def prepare_data(cfg: Config, log=print, keep_split: bool = True):
    """Load (decode once, cached) and split; the split is saved once per version so every fold, and
    predict.py later, sees the same held-out test set (keep_split=False: the lr finder, which writes no run
    files, uses the saved split or the one a run would make)."""
    # Under torchrun, local rank 0 of each machine decodes into the cache folder (node-local by default:
    # ~/.cache/imgcls) while the other ranks wait; then every rank maps the same file, one copy in the page
    # cache per machine. Machines that share a --cache-dir each decode, and the atomic rename makes the last
    # identical file win. Every rank passes the barrier once: local rank 0 after its decode, the others before.
    decodes = dist.local_rank() == 0
    if not decodes:
        dist.barrier()
    dataset = load_dataset(cfg.data, label_col=cfg.label_col, size=cfg.storage_size,
                           cache_dir=cfg.cache_dir, workers=cfg.workers, log=log, cache_mode=cfg.cache_mode)
    if decodes:
        dist.barrier()
    labels = dataset.labels.numpy()
    split_path = run_root(cfg) / SPLIT
    if split_path.exists():
        split = load_split(str(split_path), dataset.paths)
    else:
        fixed_test = teacher_test(cfg.teacher, dataset.paths) if cfg.teacher else None
        if fixed_test is not None:
            log(f"split: the test split is the teacher's ({len(fixed_test)} images; --test-frac not used)")
        split = make_split(labels, test_frac=cfg.test_frac, num_folds=num_folds(cfg, labels),
                           val_frac=cfg.val_frac, seed=cfg.seed, class_names=dataset.class_names, test=fixed_test)
        empty = [k for k, fold in enumerate(split["folds"]) if not len(fold["val"])]
        if empty:  # refused before the split is saved: the loop chooses and schedules on validation scores
            raise UserError(f"--val-frac {cfg.val_frac}: fold {empty[0]}'s validation split of "
                            f"{len(labels) - len(split['test'])} images is empty; use a larger --val-frac")
        if dist.is_main() and keep_split:
            save_split(str(split_path), split, dataset.paths)
        for note in split.get("notes", []):
            log(f"split: {note}")
    return dataset, split


def images_on(device: torch.device, images: torch.Tensor) -> torch.Tensor:
    """The decoded images where batches are gathered from: on a GPU when they take at most a quarter of its
    free memory (one copy; gathers on the device), else where they are (host memory or the cache mapping;
    each batch is copied over)."""
    if device.type == "cuda" and images.numel() <= torch.cuda.mem_get_info(device)[0] // 4:
        return images.to(device)
    return images


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


@dataclass(frozen=True)
class Carried:
    """What a refit takes over from its selection stage (read back from select/best.pt and metrics.json)."""
    selected: str        # the candidate that won on validation: best, last, ema or swa
    epochs: int          # epochs that candidate trained for
    decision_tau: float
    metrics: dict        # the selection stage's validation metrics: the run's only held-out score


@dataclass(frozen=True)
class Stage:
    """One training pass: where it writes, which images it learns from and is scored on."""
    rdir: Path
    train_idx: np.ndarray
    val_idx: np.ndarray          # empty for a refit: every labelled image outside the test split is trained on
    carried: Carried | None = None


@dataclass
class Trainer:
    """Everything one fold's loop works with, built once by `setup` (the data flow's parts, in order)."""
    cfg: Config
    fold: int
    rdir: Path
    device: torch.device
    say: Callable
    images: torch.Tensor          # uint8 N x 3 x H x W, on the device when it is a GPU
    labels: torch.Tensor          # int64 N, on the CPU
    labels_dev: torch.Tensor      # the same on the device
    train_idx: np.ndarray
    val_idx: np.ndarray
    class_names: list
    train_counts: np.ndarray
    pre: checkpoint.Preprocessing
    channels_last: bool
    sampler: EpochSampler
    steps_per_epoch: int
    augment: TrainAugment
    mixer: MixupCutmix | None
    phases: list[Phase] | None    # --progressive: the input size and strength by update (else augment, mixer)
    criterion: nn.Module | Phases  # a loss, or losses that switch at given epochs
    model: nn.Module
    train_model: nn.Module        # the model wrapped for DDP / torch.compile
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    swa: AveragedModel | None
    ema: AveragedModel | None     # exponential moving average of the weights, updated every optimizer step
    distill: Distillation | None  # the teacher's soft targets for every training image (--teacher)
    contrast: Contrast | None     # the supervised contrastive term on the batch's features (--contrast)
    carried: Carried | None       # a refit's settings from its selection stage (None: choose on validation)


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
    if cfg.restart and dist.is_main() and rdir.exists():
        shutil.rmtree(rdir)
    if not cfg.refit:
        saved = open_run(cfg, rdir, say)
        if saved is not None and saved.finished:
            return _already_finished(cfg, rdir, saved, say)
        data = data if data is not None else prepare_data(cfg, say)
        return train_stage(cfg, data, Stage(rdir, *fold_indices(data[1], fold)), saved, say)
    finished = _finished_run(rdir)
    if finished is not None:
        return _already_finished(cfg, rdir, finished, say)
    data = data if data is not None else prepare_data(cfg, say)
    train_idx, val_idx = fold_indices(data[1], fold)
    select_dir = rdir / "select"
    saved = open_run(cfg, select_dir, say)
    if saved is None or not saved.finished:
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
    return train_stage(refit_cfg, data, Stage(rdir, everything, everything[:0], carried),
                       open_run(refit_cfg, rdir, say), say)


def fold_indices(split: dict, fold: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0 <= fold < len(split["folds"]):
        raise UserError(f"--fold {fold}: this run has {len(split['folds'])} fold(s), "
                        f"0..{len(split['folds']) - 1}")
    return (np.asarray(split["folds"][fold]["train"], dtype=np.int64),
            np.asarray(split["folds"][fold]["val"], dtype=np.int64))


def train_stage(cfg: Config, data, stage: Stage, saved: checkpoint.Checkpoint | None, say) -> dict:
    """One training pass into stage.rdir, resumed from `saved` (its last.pt) when given."""
    if saved is not None and saved.finished:
        return _already_finished(cfg, stage.rdir, saved, say)
    t = setup(cfg, data, stage, saved, say)
    state = restore(t, saved) if saved is not None else RunState()
    val = ema_val = None
    for epoch in range(state.epoch, cfg.epochs):
        if state.stopped_early:
            break
        train_loss, seconds = train_one_epoch(t, state, epoch)
        lr = t.optimizer.param_groups[0]["lr"]
        val = evaluate(t, t.model) if len(t.val_idx) else None
        ema_val = evaluate(t, t.ema.module) if t.ema is not None and len(t.val_idx) else None
        end_epoch(t, state, epoch, val)
        log_epoch(t, state, epoch, lr, train_loss, seconds, val, ema_val)
        save_progress(t, state, val)
        interrupt.check()  # a Ctrl-C swallowed while the epoch's files were written stops here
    # the final epoch's scores are those of the "last" and "ema" candidates: no second validation pass
    net, selected, metrics = select_result(t, state, scored={"last": val, "ema": ema_val})
    net, metrics, probs = retrain_head(t, state, net, selected, metrics)
    tau, metrics = choose_decision(t, net, metrics, probs)
    return finish(t, state, net, selected, metrics, tau)


def _already_finished(cfg: Config, rdir: Path, saved: checkpoint.Checkpoint, say) -> dict:
    say(f"{rdir}: already finished ({cfg.metric} {saved.result['metric']:.4f}); --restart to train again")
    return saved.result


def _finished_run(rdir: Path) -> checkpoint.Checkpoint | None:
    last = rdir / LAST
    saved = checkpoint.read(last) if last.exists() else None
    return saved if saved is not None and saved.finished else None


def read_carried(select_dir: Path) -> Carried:
    """The selection stage's choices, from the files it wrote (so a resumed refit carries the same ones)."""
    best = checkpoint.read(select_dir / BEST)
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
        write_skipped(data[0].skipped, str(rdir / "skipped.json"))
    t = build_trainer(cfg, data, stage, saved, say)
    if saved is None:
        _log_start(t)
    return t


def build_trainer(cfg: Config, data, stage: Stage, saved: checkpoint.Checkpoint | None, say) -> Trainer:
    """Model, data order, augmentation, loss and optimisation for one stage; writes no file."""
    dataset, _ = data
    fold, train_idx = cfg.fold, stage.train_idx
    device = dist.local_device(cfg.device)
    class_names = list(dataset.class_names)
    pcfg = pretrained_cfg(cfg.model)
    storage = tuple(dataset.images.shape[-2:])
    pre = checkpoint.Preprocessing(model=cfg.model, img_size=tuple(cfg.img_size or storage),
                                   mean=tuple(pcfg["mean"]), std=tuple(pcfg["std"]), storage_size=storage)
    parts = dict(
        cfg=cfg, fold=fold, rdir=stage.rdir, device=device, say=say, train_idx=train_idx,
        labels=dataset.labels, labels_dev=dataset.labels.to(device),
        images=images_on(device, dataset.images),
        val_idx=stage.val_idx, carried=stage.carried, class_names=class_names,
        train_counts=np.bincount(dataset.labels.numpy()[train_idx], minlength=len(class_names)), pre=pre,
        channels_last=use_channels_last(cfg.channels_last, device))
    parts.update(_model_parts(cfg, parts, resuming=saved is not None))
    parts.update(_data_parts(cfg, parts))
    parts.update(_teacher_parts(cfg, parts, dataset.paths, data[1]["test"]))
    parts.update(_contrast_parts(cfg, parts))
    parts.update(_optimisation_parts(cfg, parts))
    if saved is not None and list(saved.class_names) != class_names:
        raise UserError(f"{stage.rdir / LAST}: was trained on other classes ({len(saved.class_names)}) than "
                        f"--data {cfg.data} has ({len(class_names)}); use that run's data, or --restart")
    return Trainer(**parts)


def _model_parts(cfg: Config, parts: dict, resuming: bool) -> dict:
    torch.manual_seed(cfg.seed)
    # On resume the weights come from last.pt: no pretrained lookup (and no network) is needed.
    starting = not resuming and cfg.init_from is not None
    model = create_model(cfg.model, len(parts["class_names"]),
                         pretrained=None if resuming or starting else cfg.pretrained,
                         drop_path_rate=cfg.drop_path, log=parts["say"])
    if starting:
        _load_starting_point(model, cfg, parts["class_names"], parts["say"])
    model.to(parts["device"], memory_format=torch.channels_last if parts["channels_last"]
             else torch.contiguous_format)
    return {"model": model}


def _load_starting_point(model: nn.Module, cfg: Config, class_names: list, say) -> None:
    """--init-from: the trained run's weights; with other classes, all but the classifier (a new one is
    learned, as when fine-tuning from ImageNet)."""
    member = starting_point(cfg.init_from, cfg.fold)
    record = member.record
    if record.model_name.split(".")[0] != cfg.model.split(".")[0]:
        raise UserError(f"--init-from {cfg.init_from}: holds a {record.model_name}, not a {cfg.model}; pass "
                        f"--model {record.model_name.split('.')[0]}")
    state = record.model
    if list(record.class_names) != list(class_names):
        head = {id(p) for p in final_linear(model).parameters()}
        keep = {name for name, p in model.named_parameters() if id(p) not in head}
        keep |= {name for name, _ in model.named_buffers()}
        state = {k: v for k, v in state.items() if k in keep}
        say(f"--init-from {member.path}: its {len(record.class_names)} classes differ from these "
            f"{len(class_names)}: backbone loaded, new classifier")
    else:
        say(f"--init-from {member.path}: weights loaded (epoch {record.epoch} of that run); a fresh schedule")
    model.load_state_dict(state, strict=len(state) == len(record.model))


def _data_parts(cfg: Config, parts: dict) -> dict:
    """Sampler, augmentation, mixing and loss: what turns the training fold into loss values."""
    sampler = EpochSampler(parts["labels"].numpy()[parts["train_idx"]], kind=cfg.sampler,
                           num_samples=cfg.epoch_samples, seed=cfg.seed, total_epochs=cfg.epochs,
                           rank=dist.rank(), world_size=dist.world_size(), settings=cfg.to_dict())
    epoch_draws = cfg.epoch_samples or len(parts["train_idx"])
    steps_per_epoch = (epoch_draws // dist.world_size()) // cfg.batch_size
    if steps_per_epoch == 0:
        raise UserError(f"--batch-size {cfg.batch_size}: larger than the {epoch_draws} training images of fold "
                        f"{cfg.fold} (per process); use a smaller batch size")
    pre, num_classes = parts["pre"], len(parts["class_names"])
    augment = make_augment(cfg, pre.img_size, pre.mean, pre.std)
    mixer = make_mixer(cfg, num_classes)
    phases = build_phases(cfg, cfg.epochs * steps_per_epoch, pre.img_size, pre.mean, pre.std, num_classes)
    # Label smoothing lives in exactly one place: the mixer's soft targets when mixing, else the loss.
    criterion = build_loss(cfg.loss, parts["train_counts"], cfg.to_dict(),
                           label_smoothing=0.0 if mixer is not None else cfg.label_smoothing)
    return dict(sampler=sampler, steps_per_epoch=steps_per_epoch, augment=augment, mixer=mixer, phases=phases,
                criterion=criterion.to(parts["device"]))


def _teacher_parts(cfg: Config, parts: dict, paths: list, test) -> dict:
    """--teacher: its log-probabilities on the training images, once, and the loss that mixes them in."""
    if cfg.teacher is None:
        return {"distill": None}
    if parts["mixer"] is not None:
        raise UserError(f"--teacher {cfg.teacher}: not with mixup / CutMix (the teacher scores the stored "
                        f"images, not mixed ones); pass --mix-prob 0")
    table = teacher_log_probs(cfg.teacher, parts["images"], paths, parts["train_idx"], parts["class_names"],
                              np.asarray(test), parts["device"], log=parts["say"])
    distill = DISTILL.build(cfg.distill, table, parts["train_counts"], settings=cfg.to_dict())
    return {"distill": distill.to(parts["device"])}


def _contrast_parts(cfg: Config, parts: dict) -> dict:
    """--contrast: a tap on the model's classifier input and the term that uses it."""
    if cfg.contrast is None:
        return {"contrast": None}
    CONTRAST.lookup(cfg.contrast)  # an unknown name fails here, before the tap is attached
    if parts["mixer"] is not None:
        raise UserError(f"--contrast {cfg.contrast}: not with mixup / CutMix (a mixed image has no single class "
                        f"to be positive for); pass --mix-prob 0")
    return {"contrast": CONTRAST.build(cfg.contrast, FeatureTap(parts["model"]), settings=cfg.to_dict())}


def _optimisation_parts(cfg: Config, parts: dict) -> dict:
    """Optimizer, lr schedule (SWALR as its late phase), AMP scaler, SWA average, DDP / compile wrapping."""
    model, device = parts["model"], parts["device"]
    optimizer = make_optimizer(cfg, model)
    schedule = build_schedule(cfg.scheduler, optimizer, epochs=cfg.epochs,
                              steps_per_epoch=parts["steps_per_epoch"], settings=cfg.to_dict())
    if cfg.swa_start is not None and not 1 <= cfg.swa_start <= cfg.epochs:
        raise UserError(f"--swa-start {cfg.swa_start}: must be an epoch in 1..{cfg.epochs} (or none)")
    if cfg.swa_start is not None:  # SWALR owns the lr from the end of epoch swa_start on
        schedule = Switch(schedule, cfg.swa_start, lambda: PerEpoch(
            SWALR(optimizer, swa_lr=cfg.swa_lr, anneal_epochs=cfg.swa_anneal_epochs)))
    # fp16 takes the same path on every device: autocast + GradScaler (torch.amp works on the CPU too).
    amp_dtype = autocast_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    train_model = model
    if dist.world_size() > 1:
        train_model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)
    return dict(optimizer=optimizer, schedule=schedule, scaler=scaler, amp_dtype=amp_dtype,
                swa=AveragedModel(model) if cfg.swa_start is not None else None, train_model=train_model,
                ema=make_ema(model, cfg.ema_decay, cfg.ema_warmup))


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
          f"{t.steps_per_epoch} steps, device {t.device}, amp {t.amp_dtype}, world size {dist.world_size()}")
    if t.phases is not None:
        t.say(describe(t.phases))


def weight_span_warning(loss: str, weights: torch.Tensor) -> str | None:
    """One line when class weights span more than 100x (V3's beta 0.9999 gives ~3,900x on the Kaggle set)."""
    span = float(weights.max() / weights.min())
    if span <= 100:
        return None
    return (f"warning: --loss {loss} class weights span {span:.0f}x: the tail's few images dominate the loss; "
            "try --cb-beta 0.999, or --version v4 (re-balance only the classifier, after training)")


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
    criterion = at_epoch(t.criterion, epoch)
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


def val_probs(t: Trainer, net: nn.Module) -> np.ndarray:
    """Class probabilities of `net` on this fold's validation images (every rank gets the whole set's)."""
    return predict_dataset(net, t.images, t.val_idx, img_size=t.pre.img_size, mean=t.pre.mean, std=t.pre.std,
                           device=t.device, batch_size=t.cfg.eval_batch_size, amp=t.cfg.amp,
                           channels_last=t.channels_last,
                           progress=lambda batches: interrupt.checked(tqdm(
                               batches, desc="validation", unit="batch", leave=False,
                               disable=not sys.stderr.isatty() or not dist.is_main())))


def evaluate(t: Trainer, net: nn.Module, probs: np.ndarray | None = None) -> dict:
    """Validation metrics of `net` (or of given validation probabilities), plus the NLL as "loss"."""
    probs = val_probs(t, net) if probs is None else probs
    y = t.labels.numpy()[t.val_idx]
    metrics = classification_metrics(y, probs.argmax(1), t.class_names)
    metrics["loss"] = float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean())
    return metrics


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
            checkpoint.save(_record(t, t.model, done, score, "best"), t.rdir / BEST)
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
        line += f" | ema val_loss {ema_val['loss']:.4f} acc {ema_val['accuracy']:.4f} macro_f1 {ema_val['macro_f1']:.4f}"
    t.say(line + f" ({seconds:.1f}s)" + (" *" if state.best_epoch == epoch + 1 else ""))


def save_progress(t: Trainer, state: RunState, val: dict | None) -> None:
    """last.pt (everything a resume needs), summary.csv and the plots, at the end of every epoch."""
    if dist.is_main():
        record = _record(t, t.model, state.epoch, float(val[t.cfg.metric]) if val else float("nan"), "last")
        record.progress, record.rng = state, {"torch": torch.get_rng_state()}
        record.optimizer, record.schedule = t.optimizer.state_dict(), t.schedule.state_dict()
        record.scaler = t.scaler.state_dict()
        record.swa_model = t.swa.state_dict() if t.swa is not None else None
        record.ema_model = t.ema.state_dict() if t.ema is not None else None
        checkpoint.save(record, t.rdir / LAST)
        _write_summary(state.history, t.rdir / "summary.csv")
        plot_lr(state.lr_history, t.rdir / "lr.png")
        plot_curves(state.history, t.rdir / "curves.png", title=f"{t.cfg.version}/fold{t.fold}",
                    objective=objective_label(t.cfg.to_dict()), best_epoch=state.best_epoch,
                    swa_start=t.cfg.swa_start)
    dist.barrier()
    if state.stopped_early:
        t.say(f"early stopping: no {t.cfg.metric} improvement > {t.cfg.early_stop_min_delta} for "
              f"{t.cfg.early_stop} epochs (best {state.best_metric:.4f} at epoch {state.best_epoch})")


def select_result(t: Trainer, state: RunState, scored: dict | None = None) -> tuple[nn.Module, str, dict | None]:
    """The run's model, by --select (selection.py): best = the better of the best epoch and the SWA average
    by --metric; last = the final weights, their EMA or the SWA average, whichever has the lowest validation
    loss. A refit takes the kind of candidate its selection stage chose (and has no validation to score it).
    scored: validation metrics already computed for the current weights ("last") and the EMA, if any."""
    if t.carried is not None:
        kind = t.carried.selected
        return (_candidates(t, [kind])[kind] if kind in ("ema", "swa") else t.model), kind, None
    if t.cfg.select == "last":
        nets = _candidates(t, ["last", "ema", "swa"])
        scores = {name: (scored or {}).get(name) or evaluate(t, net) for name, net in nets.items()}
        name = pick(scores, by="loss")
        if len(scores) > 1:
            t.say("candidates by validation loss: " + ", ".join(
                f"{n} {m['loss']:.4f} (macro_f1 {m['macro_f1']:.4f})" for n, m in scores.items()) + f" -> {name}")
        if dist.is_main() and (t.rdir / BEST).exists():  # the best-epoch model, kept for inspection
            shutil.copyfile(t.rdir / BEST, t.rdir / "best_epoch.pt")
        return nets[name], name, scores[name]
    dist.barrier()  # rank 0 has written best.pt; torchrun's ranks share this machine's disk
    best = checkpoint.read(t.rdir / BEST)
    t.model.load_state_dict(best.model)
    chosen = (t.model, "best", evaluate(t, t.model))
    if t.swa is None or int(t.swa.n_averaged) == 0:
        return chosen
    swa_net = _candidates(t, ["swa"])["swa"]
    swa_metrics = evaluate(t, swa_net)
    metric = t.cfg.metric
    if dist.is_main():  # kept whichever wins, so both candidates can be inspected
        checkpoint.save(_record(t, swa_net, state.epoch, float(swa_metrics[metric]), "swa"), t.rdir / "swa.pt")
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
            update_bn(_bn_batches(t.images, t.train_idx, t.pre, t.device, t.cfg.eval_batch_size,
                                  t.channels_last), t.swa.module)
            nets[kind] = t.swa.module
    return nets


def retrain_head(t: Trainer, state: RunState, net: nn.Module, selected: str,
                 metrics: dict | None) -> tuple[nn.Module, dict | None, np.ndarray | None]:
    """cRT (decoupling.py): a new classifier on the frozen features of the training images, drawn by
    --crt-sampler. The model before it is kept as stage1.pt; a resumed run starts from that file again, so
    re-running this stage gives the same head. Also returns the new validation probabilities (None when off,
    or when there is no validation split, as in a refit)."""
    cfg = t.cfg
    if cfg.crt_sampler is None:
        return net, metrics, None
    stage1 = t.rdir / "stage1.pt"
    if stage1.exists():
        net.load_state_dict(checkpoint.read(stage1).model)
    elif dist.is_main():
        checkpoint.save(_record(t, net, _epoch_of(state, selected),
                                float(metrics[cfg.metric]) if metrics else float("nan"), selected), stage1)
    start = time.time()
    t.say(f"cRT: features of {len(t.train_idx)} training images, then {cfg.crt_steps} steps of a new classifier "
          f"({cfg.crt_sampler} sampling)")
    features = extract_features(net, t.images, t.train_idx, img_size=t.pre.img_size, mean=t.pre.mean,
                                std=t.pre.std, device=t.device, batch_size=cfg.eval_batch_size,
                                channels_last=t.channels_last)
    head = retrain_classifier(features, t.labels[t.train_idx], len(t.class_names), sampler=cfg.crt_sampler,
                              settings=cfg.to_dict(), steps=cfg.crt_steps, batch_size=cfg.crt_batch_size,
                              lr=cfg.crt_lr, seed=cfg.seed)
    replace_classifier(net, head.to(t.device))
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
    if t.carried is not None:  # a refit: tau and the held-out scores are the selection stage's
        carried = dict(t.carried.metrics, crt_seconds=(metrics or {}).get("crt_seconds", 0.0))
        carried["crt_seconds"] += t.carried.metrics.get("crt_seconds", 0.0)
        return t.carried.decision_tau, carried
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


def finish(t: Trainer, state: RunState, net: nn.Module, selected: str, metrics: dict, tau: float = 0.0) -> dict:
    """best.pt = the selected model, metrics.json, the confusion plot; last.pt marked finished.

    A refit's metrics.json holds its selection stage's validation scores (the only held-out ones the run has;
    "scored" says so) and the time of both stages."""
    cfg, rdir = t.cfg, t.rdir
    metrics.update(
        selected=selected, best_epoch=state.best_epoch, epochs_run=state.epoch,
        stopped_early=state.stopped_early, train_time_s=state.train_time,
        peak_memory_mb=peak_memory_mb(t.device), peak_memory_kind="cuda_max_allocated"
        if t.device.type == "cuda" else "process_max_rss", split="val", fold=t.fold, train_images=len(t.train_idx))
    if t.carried is not None:
        metrics.update(refit=True, refit_train_time_s=state.train_time,
                       train_time_s=state.train_time + t.carried.metrics["train_time_s"],
                       scored="the selection stage (select/) on the validation split, before the refit trained "
                              "on it")
    result = {"run_dir": str(rdir), "metric": float(metrics[cfg.metric]), "selected": selected}
    if dist.is_main():
        record = _record(t, net, _epoch_of(state, selected), result["metric"], selected)
        record.decision_tau = tau
        checkpoint.save(record, rdir / BEST)
        atomic_write(rdir / METRICS, json.dumps(metrics, indent=2) + "\n")
        plot_confusion(metrics["confusion_matrix"], t.class_names, rdir / "confusion.png")
        stages = after_training(cfg, metrics, tau) if len(t.val_idx) else []
        if stages:  # the curves end where the run's reported score is: after cRT and the tau
            plot_curves(state.history, rdir / "curves.png", title=f"{cfg.version}/fold{t.fold}",
                        objective=objective_label(cfg.to_dict()), best_epoch=state.best_epoch,
                        swa_start=cfg.swa_start, after=stages)
        write_report(rdir, title=f"{cfg.version}/fold{t.fold}: {selected} model on the validation split",
                     metrics=metrics, class_names=t.class_names, settings=cfg.to_dict(),
                     train_counts=t.train_counts, pngs={"Curves": rdir / "curves.png", "Confusion matrix":
                                                        rdir / "confusion.png", "Learning rate": rdir / "lr.png"})
        last = checkpoint.read(rdir / LAST)
        last.finished, last.result = True, result
        checkpoint.save(last, rdir / LAST)
        t.say(final_line(rdir, selected, metrics, cfg.metric, refit=t.carried is not None,
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


def _record(t: Trainer, net: nn.Module, epoch: int, metric: float, selected: str) -> checkpoint.Checkpoint:
    return checkpoint.Checkpoint(
        model_name=t.cfg.model, num_classes=len(t.class_names), class_names=t.class_names,
        preprocessing=t.pre, config=t.cfg.settings(), fold=t.fold, train_class_counts=t.train_counts.tolist(),
        model=net.state_dict(), epoch=epoch, metric=metric, selected=selected)


def _report_step(bar, say, epoch, epochs, step, steps, loss, lr, seen, t0) -> None:
    """The tqdm bar's postfix on a terminal; a plain line every ~10% of the epoch in a log file."""
    img_s = seen / (time.perf_counter() - t0)
    if not bar.disable:
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", img_s=f"{img_s:.0f}")
    elif step % max(10, steps // 10 // 10 * 10) == 0 and step > 0:
        say(f"[epoch {epoch + 1}/{epochs} step {step}/{steps}] loss {loss.item():.4f} lr {lr:.2e} "
            f"{img_s:.0f} img/s")


def _bn_batches(images, idx, pre: checkpoint.Preprocessing, device, batch_size, channels_last):
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


def _check_resumable(saved: dict, cfg: Config, path: Path, inputs_inside=()) -> None:
    current = cfg.to_dict()
    # A setting the saved run does not record did not exist when it trained: it trained with the default.
    saved = dict(Config().to_dict(), **saved)
    changed = sorted(k for k in current if k not in _RESUME_FREE and saved.get(k) != current[k])
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed[:5])
        # advice that works: --restart would delete the weights --init-from / --teacher point at
        fix = (f"pass another --out ({' and '.join(f'{n} {p}' for n, p in inputs_inside)} reads from this run, so "
               f"--restart is no way out)" if inputs_inside else "pass --restart (or another --out) to start over")
        raise UserError(f"{path}: holds a run with other settings ({diffs}); rerun with the same flags to "
                        f"resume, or {fix}")
