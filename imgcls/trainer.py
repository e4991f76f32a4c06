"""A fold's training parts, built once: data (decoded, split), model (pretrained or --init-from), sampler,
augmentation, loss, optimizer and schedule, SWA / EMA, assembled into one Trainer; and evaluation on the
validation split. engine.py runs the loop over them; shipping.py decides what the run ships."""

from __future__ import annotations

import os
import resource
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import SWALR, AveragedModel
from tqdm import tqdm

from . import checkpoint, interrupt
from . import distributed as dist
from .config import Config
from .data import load_dataset
from .data.augment import MixupCutmix, TrainAugment, eval_transform
from .data.samplers import EpochSampler
from .contrast import CONTRAST, Contrast, FeatureTap
from .distill import DISTILL, Distillation
from .teacher import teacher_log_probs, teacher_test
from .decoupling import final_linear
from .data.splits import auto_num_folds, load_split, make_split, save_split
from .errors import UserError
from .inference import autocast_dtype, predict_dataset, use_channels_last
from .losses import build_loss
from .metrics import classification_metrics
from .progressive import Phase, build_phases, make_augment, make_mixer
from .models import create_model, freeze_leading, pretrained_cfg
from .run import LAST, SPLIT, fold_dir, starting_point
from .schedules import PerEpoch, Schedule, Switch, build_schedule
from .selection import make_ema



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
    dataset = load_dataset(cfg.data, label_col=cfg.label_col, size=cfg.storage_size, cache_dir=cfg.cache_dir,
                           workers=cfg.workers, log=log, cache_mode=cfg.cache_mode, exclude=cfg.exclude,
                           relabel=cfg.relabel)
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
    """What a refit takes over from its selection stage (read back from select/shipped.pt and metrics.json)."""
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
    criterion: nn.Module
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


def fold_indices(split: dict, fold: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0 <= fold < len(split["folds"]):
        raise UserError(f"--fold {fold}: this run has {len(split['folds'])} fold(s), "
                        f"0..{len(split['folds']) - 1}")
    return (np.asarray(split["folds"][fold]["train"], dtype=np.int64),
            np.asarray(split["folds"][fold]["val"], dtype=np.int64))


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
        val_idx=stage.val_idx, class_names=class_names,
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
    freeze_leading(model, cfg.freeze_features, cfg.model)
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
    if use_compile(cfg.compile, planned_images(cfg, parts["steps_per_epoch"]), cfg.batch_size, device)[0]:
        # a compile the user did not ask for must not stop the run (eager if it fails); one asked for with
        # --compile true fails loudly. Set on every compile: the flag is process-wide, and a later run in the
        # same process (the API, a notebook) must not inherit auto's
        import torch._dynamo as dynamo
        dynamo.config.suppress_errors = cfg.compile == "auto"
        train_model = torch.compile(train_model)
    return dict(optimizer=optimizer, schedule=schedule, scaler=scaler, amp_dtype=amp_dtype,
                swa=AveragedModel(model) if cfg.swa_start is not None else None, train_model=train_model,
                ema=make_ema(model, cfg.ema_decay, cfg.ema_warmup))


# bench/loop.py, Lite0 on 2 CPU cores, two runs: compiled, the engine's step at batch 16 ran 1.24x and 1.38x
# the eager images/s and paid back its ~85-100 s compile after 24-41k images; at batch 64 it ran 1.09x and
# 0.84x (never paid back). Nothing was measured on a GPU, so auto leaves GPUs eager (--compile true there).
COMPILE_MIN_IMAGES = 100_000
COMPILE_MAX_BATCH = 16


def planned_images(cfg: Config, steps_per_epoch: int) -> int:
    """The images the run's training steps will see, over every process."""
    return cfg.epochs * steps_per_epoch * cfg.batch_size * dist.world_size()


def use_compile(setting: bool | str, train_images: int, batch_size: int, device: torch.device) -> tuple[bool, str]:
    """--compile's decision and why, for the start line. auto compiles where it was measured to pay: on a CPU,
    small batches (where per-operator overhead, which compiling fuses away, is a large part of a step), in a
    run long enough to earn back the compile, with a C++ compiler for TorchInductor to build kernels with."""
    if setting != "auto":
        return bool(setting), f"compile {'on' if setting else 'off'}"
    if device.type != "cpu":
        return False, "compile off (auto: not measured on this device; --compile true to try)"
    if batch_size > COMPILE_MAX_BATCH:
        return False, f"compile off (auto: batch {batch_size} > {COMPILE_MAX_BATCH}, where it did not pay)"
    if train_images < COMPILE_MIN_IMAGES:
        return False, f"compile off (auto: {train_images:,} training images, under {COMPILE_MIN_IMAGES:,})"
    compiler = os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")
    if shutil.which(compiler) is None:
        return False, f"compile off (auto: no C++ compiler '{compiler}' for TorchInductor)"
    return True, f"compile on (auto: batch {batch_size}, {train_images:,} training images)"


def weight_span_warning(loss: str, weights: torch.Tensor) -> str | None:
    """One line when class weights span more than 100x (V3's beta 0.9999 gives ~3,900x on the Kaggle set)."""
    span = float(weights.max() / weights.min())
    if span <= 100:
        return None
    return (f"warning: --loss {loss} class weights span {span:.0f}x: the tail's few images dominate the loss; "
            "try --cb-beta 0.999, or --version v4 (re-balance only the classifier, after training)")


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


def make_record(t: Trainer, net: nn.Module, epoch: int, metric: float, selected: str) -> checkpoint.Checkpoint:
    return checkpoint.Checkpoint(
        model_name=t.cfg.model, num_classes=len(t.class_names), class_names=t.class_names,
        preprocessing=t.pre, config=t.cfg.settings(), fold=t.fold, train_class_counts=t.train_counts.tolist(),
        model=net.state_dict(), epoch=epoch, metric=metric, selected=selected)


def bn_batches(images, idx, pre: checkpoint.Preprocessing, device, batch_size, channels_last):
    """Un-augmented training batches for recomputing the SWA model's BatchNorm statistics."""
    for start in range(0, len(idx), batch_size):
        batch = torch.as_tensor(idx[start:start + batch_size])
        x = eval_transform(images[batch.to(images.device)].to(device), pre.img_size, pre.mean, pre.std)
        yield x.contiguous(memory_format=torch.channels_last) if channels_last else x
