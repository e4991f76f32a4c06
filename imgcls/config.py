"""One Config drives a run: every field is a command-line flag (``--field-name``, imgcls/flags.py), so every
preset value (imgcls/presets.py) can be seen (``--print-config``) and overridden.

Resolution order: Config defaults -> the version's preset -> flags the user gave (presets.resolve).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from .data.cache import CACHE_MODES
from .data.samplers import SAMPLERS
from .distill import DISTILL
from .errors import UserError
from .limits import MIN_SIDE
from .losses import LOSSES
from .schedules import SCHEDULES


def parse_size(text: str | list | tuple | None) -> tuple[int, int] | None:
    """'224' -> (224, 224); '224x168' -> (224, 168) as (H, W); 'none' -> None."""
    if text is None or isinstance(text, (list, tuple)):
        return None if text is None else (int(text[0]), int(text[-1]))
    if str(text).lower() in ("none", "auto", ""):
        return None
    parts = str(text).lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise UserError(f"size '{text}': expected H or HxW in pixels, e.g. 224 or 224x168") from None
    if len(sizes) not in (1, 2) or min(sizes) < MIN_SIDE:
        raise UserError(f"size '{text}': expected H or HxW with both sides >= {MIN_SIDE}, e.g. 224x168")
    return (sizes[0], sizes[-1])


def parse_phases(text) -> tuple | None:
    """'0.5:0.5:0.5,1:1:1' -> ((0.5, 0.5, 0.5), (1.0, 1.0, 1.0)): progressive-learning phases END:SIZE[:STRENGTH]
    (STRENGTH 1 when left out); 'none' -> None. Lists (a saved config.json) are taken as they are."""
    if text is None or str(text).lower() in ("none", "off", ""):
        return None
    if isinstance(text, (list, tuple)):
        phases = [tuple(float(v) for v in phase) for phase in text]
    else:
        try:
            phases = [tuple(float(v) for v in part.split(":")) for part in str(text).split(",")]
        except ValueError:
            raise UserError(f"--progressive {text}: expected END:SIZE[:STRENGTH],..., e.g. 0.5:0.5:0.5,1:1:1") from None
    phases = [phase if len(phase) == 3 else (*phase, 1.0) for phase in phases]
    if not all(math.isfinite(v) for phase in phases for v in phase):
        raise UserError(f"--progressive {text}: every END, SIZE and STRENGTH must be a finite number")
    ends = [phase[0] for phase in phases]
    if any(len(phase) != 3 for phase in phases) or ends != sorted(set(ends)) or ends[-1] != 1.0 or ends[0] <= 0:
        raise UserError(f"--progressive {text}: expected phases END:SIZE[:STRENGTH] with END increasing to 1, "
                        f"e.g. 0.5:0.5:0.5,1:1:1 (the first half of the updates at half the size)")
    if phases[-1][1] != 1.0 or not all(0 < phase[1] <= 1 for phase in phases) or min(s[2] for s in phases) < 0:
        raise UserError(f"--progressive {text}: SIZE is a fraction of --img-size in (0, 1] and the last phase's "
                        f"is 1 (the size predict.py and export use); STRENGTH >= 0")
    return tuple(phases)


def parse_optional_str(text: str | None) -> str | None:
    return None if text is None or str(text).lower() in ("none", "") else str(text)


def parse_optional_int(text: str | int | None) -> int | None:
    return None if text is None or str(text).lower() in ("none", "off", "") else int(text)


def parse_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    value = str(text).lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise UserError(f"'{text}': expected true/false")


def parse_bool_or_auto(text: str | bool) -> bool | str:
    """true / false as parse_bool, or auto (the program decides and says what it chose)."""
    if str(text).lower() == "auto":
        return "auto"
    try:
        return parse_bool(text)
    except UserError:
        raise UserError(f"'{text}': expected true/false or auto") from None


def parse_betas(text: str) -> tuple:
    return tuple(float(v) for v in str(text).split(","))


def parse_optional_float(text: str) -> float | None:
    """'none' (or 'off') -> None, else a number."""
    return None if str(text).lower() in ("none", "off") else float(text)


def parse_grad_clip(text: str) -> float | None:
    """'none', 'off' or 0 -> no clipping."""
    return None if str(text).lower() in ("none", "off", "0") else float(text)


def parse_tau(text: str | float) -> str | float:
    """'auto' (chosen on validation) or a number."""
    if str(text).lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise UserError(f"--decision-tau '{text}': expected 'auto' or a number, e.g. 0.5") from None


# What a command does to its run folder, not what the run trains: never written into config.json, and
# ignored when a config file has it (older runs' config.json files do).
RUN_STATE = ("restart", "resume")
# Settings renamed since runs were saved: {old name: new name}. A saved config.json, a checkpoint's config and a
# --config file are read through `renamed`, and the old flag stays an alias (flags.py) whose help says so.
RENAMED = {"tau": "loss_tau"}


def renamed(values: dict) -> dict:
    """`values` with the old names of renamed settings replaced by the new (a new name given too wins)."""
    out = {RENAMED.get(k, k): v for k, v in values.items() if k not in RENAMED}
    out.update({RENAMED[k]: v for k, v in values.items() if k in RENAMED and RENAMED[k] not in values})
    return out


def _opt(default: Any, help: str, parse=None, choices=None):
    return field(default=default, metadata={"help": help, "parse": parse, "choices": choices})


@dataclass
class Config:
    # --- run ---
    version: str = _opt("v1", "preset to start from", choices=None)
    out: str = _opt("runs", "root folder; the run goes to OUT/<version>/fold<k>/")
    fold: int = _opt(0, "the fold this run trained (0-based; train.py --fold K or all sets it)")
    seed: int = _opt(0, "seed for splits, sampling, augmentation and init")
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N | mps")
    workers: int = _opt(2, "processes/threads for decoding images")
    restart: bool = _opt(False, "discard an existing run in the run folder instead of resuming it", parse_bool)
    resume: bool = _opt(False, "require an interrupted run to continue (rerunning the same command resumes "
                               "anyway; this makes a missing last.pt an error)", parse_bool)
    # --- data ---
    data: str | None = _opt(None, "data set: Kaggle dir (styles.csv + images/), class-per-folder dir or "
                                  "manifest CSV; none = built-in demo", parse_optional_str)
    label_col: str = _opt("subCategory", "label column of a Kaggle styles.csv")
    exclude: str | None = _opt(None, "a CSV with a `path` column (e.g. a run's audit/label_issues.csv, after a "
                               "look): those images are left out of this run (listed in skipped.json); none = "
                               "keep all", parse_optional_str)
    relabel: str | None = _opt(None, "a CSV with `path` and `label` columns (e.g. a run's audit/relabel.csv): "
                               "those images train under the label given; a path --exclude lists too is kept, "
                               "relabelled; none = the data's labels", parse_optional_str)
    storage_size: tuple | None = _opt(None, "HxW images are decoded to once; none = the data's own size",
                                      parse_size)
    cache_dir: str | None = _opt("default", "decode cache folder; default = $XDG_CACHE_HOME/imgcls, else "
                                            "~/.cache/imgcls; none = off", parse_optional_str)
    cache_mode: str = _opt("mmap", "mmap: map the decode cache read-only (shared by every process on the machine, "
                                   "larger-than-RAM data pages in and out); memory: read it whole into this "
                                   "process", choices=CACHE_MODES)
    test_frac: float = _opt(0.2, "stratified holdout test fraction (never trained on)")
    folds: str = _opt("1", "number of folds: 1 = one holdout validation split; K >= 2 = stratified K-fold; "
                           "auto = V3's rule (2 if smallest class < 3 else min(3, smallest))")
    val_frac: float = _opt(0.2, "validation fraction when folds = 1")
    # --- model ---
    model: str = _opt("efficientnet_b0", "backbone name (python train.py --list-models)")
    pretrained: str | None = _opt("default", "none | default | PATH to a checkpoint", parse_optional_str)
    init_from: str | None = _opt(None, "start from a trained run's weights (run folder, fold folder or "
                                       "shipped.pt) with a fresh schedule: to continue a finished run for more "
                                       "epochs, or to fine-tune on new data (other classes: all but the classifier)",
                                 parse_optional_str)
    drop_path: float = _opt(0.0, "stochastic depth rate")
    freeze_features: int = _opt(0, "train without the first N blocks of the backbone (1 = the stem): their "
                                "weights get no gradient and stay as loaded (their BatchNorm statistics still "
                                "update); saves the backward pass through the largest feature maps")
    img_size: tuple | None = _opt(None, "model input HxW; none = the storage size", parse_size)
    # --- optimisation ---
    epochs: int = _opt(30, "epochs")
    batch_size: int = _opt(64, "batch size per process")
    optimizer: str = _opt("adamw", "adamw | sgd", choices=("adamw", "sgd"))
    lr: float = _opt(1e-3, "base learning rate")
    weight_decay: float = _opt(1e-2, "weight decay (decoupled for AdamW)")
    betas: tuple = _opt((0.9, 0.999), "AdamW betas, e.g. 0.9,0.999",
                        parse_betas)
    eps: float = _opt(1e-8, "AdamW eps")
    momentum: float = _opt(0.9, "SGD momentum")
    grad_clip: float | None = _opt(None, "clip the gradient norm (after unscaling); none = off",
                                   parse_grad_clip)
    # --- loss ---
    loss: str = _opt("ce", " | ".join(LOSSES), choices=tuple(LOSSES))
    label_smoothing: float = _opt(0.0, "label smoothing")
    focal_gamma: float = _opt(2.0, "focal loss gamma")
    cb_beta: float = _opt(0.9999, "class-balanced beta (effective number of samples)")
    loss_tau: float = _opt(1.0, "strength of --loss logit_adjusted's prior offset in training (Menon et al.'s "
                           "tau; not the decision tau)")
    # --- sampling ---
    sampler: str = _opt("natural", " | ".join(SAMPLERS), choices=tuple(SAMPLERS))
    epoch_samples: int | None = _opt(None, "draws per epoch; none = the training set size", parse_optional_int)
    # --- augmentation ---
    hflip: float = _opt(0.5, "horizontal flip probability")
    rotation: float = _opt(10.0, "max rotation in degrees")
    brightness: float = _opt(0.2, "brightness jitter")
    scale: float = _opt(0.0, "scale jitter: zoom factor uniform in [1-s, 1+s] (0 = off)")
    mixup_alpha: float = _opt(0.0, "Mixup Beta(alpha, alpha); 0 = off")
    cutmix_alpha: float = _opt(0.0, "CutMix Beta(alpha, alpha); 0 = off")
    mix_prob: float = _opt(0.0, "probability that a batch is mixed")
    switch_prob: float = _opt(0.5, "probability of CutMix rather than Mixup when both are on")
    progressive: tuple | None = _opt(None, "progressive learning (EfficientNetV2): phases END:SIZE[:STRENGTH], "
                                           "until fraction END of the updates train at SIZE x --img-size with "
                                           "rotation, brightness, scale and mix-prob x STRENGTH; e.g. "
                                           "0.5:0.5:0.5,1:1:1; none = off", parse_phases)
    # --- schedule ---
    scheduler: str = _opt("cosine", " | ".join(SCHEDULES), choices=tuple(SCHEDULES))
    warmup_epochs: float = _opt(0.0, "linear warmup epochs (cosine)")
    min_lr: float = _opt(0.0, "final learning rate (cosine)")
    max_lr: float | None = _opt(None, "OneCycle peak lr; none = --lr", parse_optional_float)
    pct_start: float = _opt(0.1, "OneCycle warmup fraction")
    div_factor: float = _opt(25.0, "OneCycle initial lr = max_lr / div_factor")
    final_div_factor: float = _opt(1000.0, "OneCycle final lr = initial lr / final_div_factor")
    plateau_factor: float = _opt(0.1, "ReduceLROnPlateau factor")
    plateau_patience: int = _opt(3, "ReduceLROnPlateau patience (epochs)")
    # --- SWA ---
    swa_start: int | None = _opt(None, "first epoch (1-based) averaged by SWA; none = off", parse_optional_int)
    swa_freq: int = _opt(2, "average every N epochs")
    swa_lr: float = _opt(1e-5, "SWALR target learning rate")
    swa_anneal_epochs: int = _opt(5, "SWALR anneal epochs")
    # --- EMA of weights ---
    ema_decay: float = _opt(0.0, "exponential moving average of the weights, updated every optimizer step "
                                 "(timm's --model-ema-decay); 0 = off")
    ema_warmup: bool = _opt(True, "ramp the EMA decay up as 1 - (1 + step)^(-2/3) (timm's ModelEmaV3 warmup), "
                                  "so short runs are not dominated by the initial weights", parse_bool)
    # --- validation ---
    metric: str = _opt("macro_f1", "validation metric for best model / early stopping / plateau",
                       choices=("macro_f1", "accuracy", "balanced_accuracy", "weighted_f1"))
    select: str = _opt("best", "the run's model: best = the epoch with the best --metric (then SWA if better "
                               "by it); last = the final weights, or their EMA / SWA average when that has the "
                               "lower validation loss (the annealed model, not an epoch picked on noise)",
                       choices=("best", "last"))
    refit: bool = _opt(False, "after choosing epochs, model candidate and decision tau on the validation split, "
                              "train again on train + validation with those settings (cRT re-fitted on all of "
                              "it) and ship that model: it has seen every labelled image outside the test "
                              "split", parse_bool)
    early_stop: int | None = _opt(None, "early stopping patience in epochs; none = off", parse_optional_int)
    early_stop_min_delta: float = _opt(1e-4, "minimum improvement that resets early stopping")
    # --- speed ---
    amp: str = _opt("auto", "auto (fp16 on CUDA, off on CPU) | fp16 | bf16 | off",
                    choices=("auto", "fp16", "bf16", "off"))
    channels_last: str = _opt("auto", "auto (on for CUDA and CPU: measured faster) | on | off", choices=("auto", "on", "off"))
    compile: bool | str = _opt("auto", "torch.compile the training model; auto = on where it was measured to "
                               "pay (bench/loop.py): on a CPU, batch <= 16, at least 100,000 training images "
                               "(epochs x images) to earn back the compile's ~1.5 min, a C++ compiler found "
                               "(a compile that fails then falls back to eager); off on GPUs (not measured)",
                               parse_bool_or_auto)
    eval_batch_size: int = _opt(256, "batch size for evaluation")
    # --- logging ---
    tensorboard: bool = _opt(False, "also write TensorBoard event files to RUN/foldK/tensorboard/ (per-epoch "
                             "scores, losses, lr, throughput; cRT and tau results; the confusion matrix); needs pip "
                             "install tensorboard", parse_bool)
    leak_check: bool = _opt(True, "once every fold is trained, count the duplicate groups (exact, or near by the "
                            "first member's features) that put test images beside training images: one forward "
                            "pass over every image", parse_bool)
    # --- after training: classifier re-training and the decision rule (decoupling.py, decision.py) ---
    crt_sampler: str | None = _opt(None, "re-train the classifier on frozen features after training (cRT, Kang "
                                         "et al. 2020), drawing classes by this sampler (weighted = balanced, "
                                         "sqrt, natural); none = off", parse_optional_str)
    crt_steps: int = _opt(600, "classifier re-training steps (SGD, cosine lr)")
    crt_batch_size: int = _opt(512, "classifier re-training batch size")
    crt_lr: float = _opt(0.1, "classifier re-training peak learning rate")
    decision_tau: str | float = _opt(0.0, "post-hoc logit adjustment log p - tau * log prior stored with the "
                                          "run and used by predict.py; auto = the tau in -1..1 with the best "
                                          "validation macro-F1", parse_tau)
    # --- distillation (distill.py) ---
    teacher: str | None = _opt(None, "distil from a trained run (its fold ensemble, TTA and decision tau), a fold "
                                     "folder or a shipped.pt: its probabilities on every training image, computed "
                                     "once, are soft targets beside the labels; none = off", parse_optional_str)
    distill: str = _opt("kd", "kd (Hinton et al. 2015) | bkd (Zhang et al. 2021: the teacher's distribution "
                              "re-weighted by class-balanced weights, --cb-beta)", choices=tuple(DISTILL))
    kd_temperature: float = _opt(2.0, "distillation temperature T (the soft term is scaled by T^2)")
    kd_alpha: float = _opt(0.5, "weight of the soft term: (1 - alpha) * hard-label loss + alpha * soft term")
    # --- contrastive auxiliary loss (contrast.py) ---
    contrast: str | None = _opt(None, "supervised contrastive loss on the classifier's input features, added to "
                                      "the loss: supcon (Khosla et al. 2020) | balanced (Zhu et al. 2022's "
                                      "class-averaged denominator); none = off", parse_optional_str)
    contrast_weight: float = _opt(0.1, "weight of the contrastive term")
    contrast_temperature: float = _opt(0.1, "temperature of the contrastive term")
    # --- prediction (recorded with the run; predict.py reads it) ---
    tta: bool = _opt(False, "test-time augmentation when predicting this run: predict.py's default, which "
                           "--tta / --no-tta override", parse_bool)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def settings(self) -> dict:
        """What the run trains with, as JSON values: config.json, the checkpoints' record, --print-config.
        Without RUN_STATE: a run's recorded settings reproduce what it trained, not what the command that
        started it did to the folder (a config.json that said "restart": true deleted the run it came from)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUN_STATE}

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        values = renamed(values)
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise UserError(f"unknown config keys {unknown}")
        converted = {}
        for name, value in values.items():
            if name in ("img_size", "storage_size") and value is not None:
                value = parse_size(value)
            elif name == "progressive":
                value = parse_phases(value)
            elif name == "betas":
                value = tuple(value)
            converted[name] = value
        return cls(**converted)
