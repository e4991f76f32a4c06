"""Every numeric and path flag checked in one place, before any work: one line naming the flag and the fix.

Without this a bad value surfaces deep inside torch or numpy (`--lr nan` trains on NaN, `--batch-size 0`
divides by zero, `--device foo` is a RuntimeError) as a traceback, or worse, as a silently wrong result.
The rules are data (RULES); `check_config` applies them to a resolved Config, `check_predict_args` to
predict.py's flags.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import torch

from .contrast import CONTRAST
from .errors import UserError
from .data import read_path_list, read_relabel_list
from .data.samplers import SAMPLERS
from .limits import DECISION_TAU_RANGE, MAX_BATCH, MAX_SEED, MAX_SIDE
from .models import create_model, freeze_leading, input_multiple, pretrained_cfg
from .presets import VERSIONS
from .progressive import plan

# field -> (low, high, low inclusive, high inclusive); None means unbounded. NaN and inf always fail.
RULES: dict[str, tuple] = {
    "seed": (0, MAX_SEED, True, True),
    "workers": (0, 256, True, True),
    "drop_path": (0, 1, True, False),
    "test_frac": (0, 1, True, False),
    "val_frac": (0, 1, False, False),
    "epochs": (1, None, True, True),
    "batch_size": (1, MAX_BATCH, True, True),
    "eval_batch_size": (1, MAX_BATCH, True, True),
    "lr": (0, None, False, True),
    "weight_decay": (0, None, True, True),
    "eps": (0, None, False, True),
    "momentum": (0, 1, True, False),
    "grad_clip": (0, None, False, True),
    "label_smoothing": (0, 1, True, False),
    "focal_gamma": (0, None, True, True),
    "cb_beta": (0, 1, True, False),
    "kd_temperature": (0, None, False, True),
    "kd_alpha": (0, 1, True, True),
    "contrast_weight": (0, None, True, True),
    "contrast_temperature": (0, None, False, True),
    "loss_tau": (0, None, True, True),
    "epoch_samples": (1, None, True, True),
    "hflip": (0, 1, True, True),
    "rotation": (0, 180, True, True),
    "brightness": (0, 1, True, True),  # factor uniform in [1-b, 1+b]: b > 1 would allow negative ones
    "scale": (0, 1, True, False),  # zoom uniform in [1-s, 1+s]: s >= 1 would allow a zero or negative zoom
    "ema_decay": (0, 1, True, False),
    "mixup_alpha": (0, None, True, True),
    "cutmix_alpha": (0, None, True, True),
    "mix_prob": (0, 1, True, True),
    "switch_prob": (0, 1, True, True),
    "warmup_epochs": (0, None, True, True),
    "min_lr": (0, None, True, True),
    "max_lr": (0, None, False, True),
    "pct_start": (0, 1, False, False),
    "div_factor": (0, None, False, True),
    "final_div_factor": (0, None, False, True),
    "plateau_factor": (0, 1, False, False),
    "plateau_patience": (0, None, True, True),
    "swa_start": (1, None, True, True),
    "swa_freq": (1, None, True, True),
    "swa_lr": (0, None, True, True),
    "swa_anneal_epochs": (0, None, True, True),
    "early_stop": (1, None, True, True),
    "early_stop_min_delta": (0, None, True, True),
    "crt_steps": (1, None, True, True),
    "crt_batch_size": (1, 1 << 20, True, True),  # feature vectors, not images: large batches are cheap
    "crt_lr": (0, None, False, True),
}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_range(name: str, value, low=None, high=None, low_inclusive=True, high_inclusive=True) -> None:
    """UserError unless value is a finite number in the range; None (a switched-off option) passes."""
    if value is None:
        return
    values = value if isinstance(value, (tuple, list)) else (value,)
    for v in values:
        bad = not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)
        bad = bad or (low is not None and (v < low if low_inclusive else v <= low))
        bad = bad or (high is not None and (v > high if high_inclusive else v >= high))
        if bad:
            raise UserError(f"{flag(name)} {_show(value)}: {_expect(low, high, low_inclusive, high_inclusive)}")


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def _expect(low, high, low_inc, high_inc) -> str:
    if low is not None and high is not None:
        return f"expected a number in {'[' if low_inc else '('}{low}, {high}{']' if high_inc else ')'}"
    if low is not None:
        return f"expected a number {'>=' if low_inc else '>'} {low}" + (" (a whole number)" if low_inc and
                                                                         low == 1 else "")
    return "expected a finite number"


def check_device(text: str) -> None:
    """--device: auto, cpu, cuda, cuda:N or mps, and only one this machine has."""
    if text == "auto":
        return
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {text}: unknown device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {text}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                            f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {text}: MPS is not available on this machine; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {text}: unsupported device type; use auto, cpu, cuda, cuda:N or mps")


def check_out_folder(name: str, path: str) -> None:
    """An output folder: not an existing file, and creatable/writable (checked at the nearest existing parent)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{name} {path}: is a file, not a folder; give a folder for the run")
    _check_writable(name, path, p if p.is_dir() else existing_parent(p))


def check_out_file(name: str, path: str) -> None:
    """An output file: not an existing folder, and its folder creatable/writable."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{name} {path}: is a folder; give a file path, e.g. {p / 'out.csv'}")
    _check_writable(name, path, existing_parent(p.parent if str(p.parent) else Path(".")))


def existing_parent(p: Path) -> Path:
    """The nearest folder of `p` (or p itself) that exists: where a file at p would be created."""
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_writable(name: str, path: str, folder: Path) -> None:
    if not folder.is_dir():
        raise UserError(f"{name} {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{name} {path}: {folder} is not writable; pick another {name} or fix its permissions")
    try:  # permission bits are not the whole story (/proc, a read-only mount, root): try to create a file.
        # TemporaryFile is unnamed on Linux (O_TMPFILE): nothing appears in the folder, even for a moment
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise UserError(f"{name} {path}: nothing can be created in {folder} ({err.strerror}); pick another "
                        f"{name}") from None


def check_config(cfg) -> None:
    """Every rule in RULES, the betas, --device and --out, for a resolved imgcls.config.Config."""
    for name, (low, high, low_inc, high_inc) in RULES.items():
        check_range(name, getattr(cfg, name), low, high, low_inc, high_inc)
    check_range("betas", cfg.betas, 0, 1, True, False)
    for name in ("img_size", "storage_size"):  # parse_size has checked the lower bound (8)
        size = getattr(cfg, name)
        if size is not None and max(size) > MAX_SIDE:
            raise UserError(f"{flag(name)} {size[0]}x{size[1]}: each side must be at most {MAX_SIDE} pixels")
    if cfg.epoch_samples is not None and cfg.epoch_samples * 8 > memory_bytes() // 4:
        raise UserError(f"--epoch-samples {cfg.epoch_samples}: its draw alone needs "
                        f"{cfg.epoch_samples * 8 / 2**30:.0f} GiB; at most {memory_bytes() // 32:,} on this "
                        f"machine ({memory_bytes() / 2**30:.0f} GiB of memory)")
    if cfg.crt_sampler is not None and cfg.crt_sampler not in SAMPLERS:
        raise UserError(f"--crt-sampler {cfg.crt_sampler}: unknown; choose none or one of {', '.join(SAMPLERS)}")
    if cfg.contrast is not None and cfg.contrast not in CONTRAST:
        raise UserError(f"--contrast {cfg.contrast}: unknown; choose none or one of {', '.join(CONTRAST)}")
    if cfg.decision_tau != "auto":  # the grid 'auto' searches is -1..1; a fixed tau may go further
        check_range("decision_tau", cfg.decision_tau, *DECISION_TAU_RANGE)
    if len(cfg.betas) != 2:
        raise UserError(f"--betas {_show(cfg.betas)}: expected two numbers, e.g. 0.9,0.999")
    if cfg.restart and cfg.resume:  # refused here, before --restart deletes anything
        raise UserError("--restart with --resume: one discards the run folder, the other requires it; "
                        "pass one of them")
    folds = str(cfg.folds)
    if folds != "auto" and not (folds.isdigit() and int(folds) >= 1):  # before the data is read, not after
        raise UserError(f"--folds {cfg.folds}: expected a whole number >= 1 or 'auto'")
    if cfg.refit and str(cfg.folds) != "1":
        raise UserError(f"--refit with --folds {cfg.folds}: every fold's refit would train on the same images "
                        "(all but the test split); use --folds 1, or --refit false for a fold ensemble")
    if cfg.refit and cfg.scheduler == "plateau":
        raise UserError("--refit: the plateau schedule follows validation scores, which a refit on train + "
                        "validation does not have; use --scheduler onecycle or cosine")
    if cfg.exclude:  # unreadable or missing: refused now, before --restart deletes anything
        read_path_list(cfg.exclude)
    if cfg.relabel:
        read_relabel_list(cfg.relabel)
    pretrained_cfg(cfg.model)  # an unknown --model (a typo) is refused here, before any data is read
    if cfg.freeze_features:  # the block count is the architecture's: built on the meta device, without weights
        preset = VERSIONS.get(cfg.version, {}).get("freeze_features")
        source = f" ({cfg.version}'s preset value)" if preset == cfg.freeze_features else ""
        with torch.device("meta"):
            freeze_leading(create_model(cfg.model, 2, pretrained=None, log=lambda *a: None), cfg.freeze_features,
                           cfg.model, source)
    check_patch_sizes(cfg)
    check_device(cfg.device)
    check_out_folder("--out", cfg.out)


def check_patch_sizes(cfg) -> None:
    """A ViT takes only sides its patch divides: --img-size and every --progressive stage checked now, naming
    the flag, not at the first update of that stage. (No --img-size: the storage size, known once the data is
    read; the model refuses it there.)"""
    p = input_multiple(cfg.model)
    if p == 1 or cfg.img_size is None:
        return
    h, w = cfg.img_size
    if h % p or w % p:
        raise UserError(f"--img-size {h}x{w}: {cfg.model}'s {p}-pixel patches need sides divisible by {p}, e.g. "
                        f"{max(p, h // p * p)}x{max(p, w // p * p)}")
    for i, (_, (sh, sw), _) in enumerate(plan(cfg.progressive or (), 1, cfg.img_size)):
        if sh % p or sw % p:
            stages = ",".join(":".join(f"{v:g}" for v in stage) for stage in cfg.progressive)
            raise UserError(f"--progressive {stages}: stage {i + 1} trains at {sh}x{sw} (its SIZE x --img-size "
                            f"{h}x{w}), which {cfg.model}'s {p}-pixel patches do not divide; pick SIZE fractions "
                            f"that give multiples of {p}")


def memory_bytes() -> int:
    """This machine's physical memory."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a large machine, refuse only the absurd
        return 1 << 40


def check_predict_args(args) -> None:
    """predict.py's flags (an argparse Namespace)."""
    check_range("batch_size", args.batch_size, 1, MAX_BATCH)
    check_range("workers", args.workers, 0, RULES["workers"][1])
    check_range("decision_tau", args.decision_tau, *DECISION_TAU_RANGE)
    check_device(args.device)
    if args.out:
        check_out_file("--out", args.out)
