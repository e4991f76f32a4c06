"""Progressive learning (Tan & Le 2021, EfficientNetV2; fastai's progressive resizing): the input size and
the regularisation grow together over the run, small and weakly augmented early (cheap updates that learn
coarse features), the final size and full strength late.

`--progressive END:SIZE:STRENGTH,...` is data: until fraction END of the run's updates, images are resized
(on the device, in the same batched augmentation as every run) to SIZE x --img-size, and rotation,
brightness, scale jitter and the mixing probability are multiplied by STRENGTH. The last phase is the
--img-size at which validation, the checkpoint, predict.py and export work. Which phase an update belongs to
is a function of its index alone, so the lr schedule counts every update once and a resumed run takes the
same phases as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Config
from .data.augment import MixupCutmix, TrainAugment


@dataclass(frozen=True)
class Phase:
    end_update: int               # this phase trains updates [previous end, end_update)
    size: tuple[int, int]
    strength: float
    augment: TrainAugment
    mixer: MixupCutmix | None


def make_augment(cfg: Config, size, mean, std, strength: float = 1.0) -> TrainAugment:
    return TrainAugment(size, mean, std, hflip=cfg.hflip, rotation=cfg.rotation * strength,
                        brightness=min(1.0, cfg.brightness * strength), scale=min(0.95, cfg.scale * strength))


def make_mixer(cfg: Config, num_classes: int, strength: float = 1.0) -> MixupCutmix | None:
    """Mixup / CutMix at mix_prob x strength; None when the run does not mix at all."""
    if not (cfg.mix_prob > 0 and (cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0)):
        return None
    return MixupCutmix(num_classes, mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha,
                       prob=min(1.0, cfg.mix_prob * strength), switch_prob=cfg.switch_prob,
                       label_smoothing=cfg.label_smoothing)


def plan(phases, total_updates: int, img_size: tuple[int, int]) -> list[tuple[int, tuple[int, int], float]]:
    """(end update, input H x W, strength) per phase: ends at round(END x total), sides at least 8 pixels."""
    out = []
    for end, size, strength in phases:
        hw = (max(8, round(img_size[0] * size)), max(8, round(img_size[1] * size)))
        out.append((round(end * total_updates), hw, float(strength)))
    return out


def build_phases(cfg: Config, total_updates: int, img_size, mean, std, num_classes: int) -> list[Phase] | None:
    if cfg.progressive is None:
        return None
    return [Phase(end, size, strength, make_augment(cfg, size, mean, std, strength),
                  make_mixer(cfg, num_classes, strength))
            for end, size, strength in plan(cfg.progressive, total_updates, img_size)]


def phase_at(phases: list[Phase], update: int) -> Phase:
    """The phase of the update with this 0-based index (the last phase past the planned total)."""
    for phase in phases:
        if update < phase.end_update:
            return phase
    return phases[-1]


def describe(phases: list[Phase]) -> str:
    start, parts = 0, []
    for phase in phases:
        parts.append(f"updates {start}-{phase.end_update - 1} at {phase.size[0]}x{phase.size[1]} "
                     f"(strength {phase.strength:g})")
        start = phase.end_update
    return "progressive: " + ", ".join(parts)
