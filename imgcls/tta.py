"""Test-time augmentation on an already normalised float batch B x 3 x H x W at the model's input size.

Views are geometric only, so they commute with per-channel normalisation and can be applied after it.
Scale views resize about the image centre and then pad (zoom out) or crop (zoom in) back to H x W, so the
model always sees its input size: at 60x80 source images a plain 0.9x resize would shrink the feature
maps instead (the images must already be upsampled to the input size by the caller).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from imgcls.errors import UserError

TTA_VIEWS = ("identity", "hflip", "scale0.9", "scale1.1")

MAX_SCALE = 4.0
_SCALE = re.compile(r"scale(\d+(?:\.\d*)?|\.\d+)")


def _scale_of(name: str) -> float | None:
    """The factor of a "scaleF" view name, None for the other names; UserError for anything unknown."""
    if name in ("identity", "hflip"):
        return None
    match = _SCALE.fullmatch(name)
    if match is None or float(match.group(1)) <= 0:
        raise UserError(
            f"--tta view {name!r}: unknown; use identity, hflip or scaleF with F > 0 (e.g. scale0.9)"
        )
    if float(match.group(1)) > MAX_SCALE:  # the view resizes the batch by F x F first: 1000 would need ~150 GB
        raise UserError(f"--tta view {name!r}: scale factor above {MAX_SCALE:g}; views are meant near 1 "
                        "(e.g. scale0.9, scale1.1)")
    return float(match.group(1))


def _scaled_size(n: int, scale: float) -> int:
    """n * scale rounded so the size changes by an even number of pixels: the pad or crop is then the same
    on both sides and the view stays exactly centred (it commutes with hflip)."""
    return max(1 + n % 2, n + 2 * round(n * (scale - 1.0) / 2))


def _fit_dim(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Centre-crop or replicate-pad dimension ``dim`` (2 = height, 3 = width) of x to ``size``."""
    current = x.shape[dim]
    if current > size:
        start = (current - size) // 2
        return x.narrow(dim, start, size)
    if current < size:
        before = (size - current) // 2
        after = size - current - before
        # F.pad lists (left, right, top, bottom); replicate edges rather than black borders, which the
        # model never saw in training and would read as content.
        pad = (before, after, 0, 0) if dim == 3 else (0, 0, before, after)
        return F.pad(x, pad, mode="replicate")
    return x


def tta_view(x: torch.Tensor, name: str) -> torch.Tensor:
    """View ``name`` of batch x (B x C x H x W), same shape: identity, hflip, or scaleF (resize by F)."""
    scale = _scale_of(name)
    if name == "identity":
        return x
    if name == "hflip":
        return x.flip(-1)
    if x.dim() != 4:
        raise UserError(f"--tta: expected a B x C x H x W batch, got shape {tuple(x.shape)}")
    height, width = x.shape[-2:]
    new_size = (_scaled_size(height, scale), _scaled_size(width, scale))
    if new_size == (height, width):
        return x
    # antialias off: the views must match what the plain bilinear resize of training-time code produces.
    resized = F.interpolate(x, size=new_size, mode="bilinear", align_corners=False, antialias=False)
    return _fit_dim(_fit_dim(resized, 2, height), 3, width)


@torch.no_grad()
def predict_probs(model: nn.Module, x: torch.Tensor, views: Sequence[str] = ("identity",)) -> torch.Tensor:
    """Mean over ``views`` of softmax(model(view)) in float32: class probabilities B x C.

    The model is used as given: put it in eval mode first (BatchNorm and dropout would otherwise act).
    """
    if isinstance(views, str) or len(views) == 0:
        raise UserError(f"--tta views {views!r}: give a non-empty list of names such as {TTA_VIEWS}")
    for name in views:
        _scale_of(name)  # fail on a bad name before spending model time
    total = None
    for name in views:
        probs = torch.softmax(model(tta_view(x, name)).float(), dim=1)
        total = probs if total is None else total + probs
    return total / len(views)
