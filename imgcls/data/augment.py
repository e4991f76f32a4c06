"""Batched augmentation on the batch's device: uint8 B x 3 x h x w in, normalised float32 B x 3 x H x W out.

Every sample gets its own random parameters, but the work is a handful of tensor ops per batch (one
grid_sample for flip + rotation together), never a Python loop over images. Parameters are drawn from the
caller's torch.Generator (a CPU one is fine), so the same seed gives the same batch on any device.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from imgcls.labels import smoothed_one_hot


def _normalise_(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(x - mean) / std per channel, in place (x is always a fresh tensor of ours here)."""
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x.sub_(mean_t).div_(std_t)


def resize(x: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a float batch, antialiased when shrinking in any direction."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(out_size):
        return x
    antialias = out_size[0] < h or out_size[1] < w
    return F.interpolate(x, size=tuple(out_size), mode="bilinear", align_corners=False, antialias=antialias)


def eval_transform(x_uint8: torch.Tensor, out_size: tuple[int, int], mean, std) -> torch.Tensor:
    """Deterministic preprocessing: resize to out_size (bilinear, antialiased when shrinking), normalise.

    It is exactly TrainAugment with no flip, no rotation and no brightness change, so train and eval see
    the same resize.
    """
    x = resize(x_uint8.to(torch.float32, copy=True).div_(255.0), out_size)
    return _normalise_(x, mean, std)


class TrainAugment:
    """Resize, random horizontal flip, random rotation and zoom, random brightness, normalise; per sample, batched.

    Matches torchvision's RandomHorizontalFlip(hflip), RandomRotation(rotation) (bilinear, black fill) and
    ColorJitter(brightness=brightness) (factor uniform in [1-b, 1+b], result clamped to [0, 1]); `scale` adds
    RandomAffine's zoom about the centre, factor uniform in [1-s, 1+s] (> 1 crops in, < 1 pads with black).
    """

    def __init__(self, out_size: tuple[int, int], mean, std, hflip: float = 0.5, rotation: float = 10.0,
                 brightness: float = 0.2, scale: float = 0.0):
        self.out_size = (int(out_size[0]), int(out_size[1]))
        self.mean, self.std = tuple(mean), tuple(std)
        self.hflip, self.rotation, self.brightness = float(hflip), float(rotation), float(brightness)
        self.scale = float(scale)

    def __call__(self, x_uint8: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a uint8 batch (on any device) with per-sample parameters drawn from `generator`."""
        batch = x_uint8.shape[0]
        u = torch.rand((3, batch), generator=generator, device=generator.device).to(x_uint8.device)
        flip = u[0] < self.hflip
        angle = (2.0 * u[1] - 1.0) * math.radians(self.rotation)
        factor = 1.0 + (2.0 * u[2] - 1.0) * self.brightness
        zoom = None
        if self.scale > 0:  # a separate draw, so runs without zoom keep their random stream
            z = torch.rand(batch, generator=generator, device=generator.device).to(x_uint8.device)
            zoom = 1.0 + (2.0 * z - 1.0) * self.scale

        # Resize first (as eval does), then one grid_sample at the output size for flip + rotation: sampling
        # the storage-size image directly would blend black padding into the border pixels when enlarging.
        # Pixels stay in 0..255 until the brightness step: resize and sampling are linear, so the 1/255
        # folds into the brightness factor and saves a pass over the batch.
        x = resize(x_uint8.to(torch.float32, copy=True), self.out_size)
        height, width = self.out_size
        if self.hflip > 0 or self.rotation > 0 or zoom is not None:
            x = F.grid_sample(x, self._grid(flip, angle, width / height, zoom), mode="bilinear",
                              padding_mode="zeros", align_corners=False)
        scale = factor / 255.0 if self.brightness > 0 else torch.full_like(factor, 1.0 / 255.0)
        x.mul_(scale.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)  # ColorJitter clamps brightness to [0, 1]
        return _normalise_(x, self.mean, self.std)

    def _grid(self, flip: torch.Tensor, angle: torch.Tensor, aspect: float,
              zoom: torch.Tensor | None = None) -> torch.Tensor:
        """Sampling grid B x H x W x 2 for grid_sample: output pixel -> rotated (and mirrored) input position,
        divided by the zoom factor (zoom 2 samples the central half: the image appears twice as large).

        grid_sample works in coordinates normalised to [-1, 1] on each axis; a rotation in pixels becomes
        [[cos, -sin * H/W], [sin * W/H, cos]] there, so non-square images rotate without shearing. This is
        affine_grid's result, built from its separable form (x' = a x + b y, y' = c x + d y) with broadcast
        multiply-adds written straight into the output: affine_grid's batched bmm of B tiny matrices, or a
        matmul followed by a transposing copy, is several times slower on the CPU.
        """
        height, width = self.out_size
        cos, sin = torch.cos(angle), torch.sin(angle)
        # flip first, then rotate (torchvision's order): output(p) = input(F R p), F = diag(sign, 1)
        sign = 1.0 - 2.0 * flip.to(angle.dtype)
        xs = (torch.arange(width, device=angle.device, dtype=torch.float32) * 2 + 1) / width - 1
        ys = (torch.arange(height, device=angle.device, dtype=torch.float32) * 2 + 1) / height - 1
        xs, ys = xs.view(1, 1, width), ys.view(1, height, 1)  # pixel centres (align_corners=False)
        grid = torch.empty(len(angle), height, width, 2, device=angle.device)
        coef = torch.stack([cos * sign, -sin / aspect * sign, sin * aspect, cos], dim=1).view(-1, 4, 1, 1)
        if zoom is not None:
            coef = coef / zoom.view(-1, 1, 1, 1)
        torch.add(coef[:, 0] * xs, coef[:, 1] * ys, out=grid[..., 0])
        torch.add(coef[:, 2] * xs, coef[:, 3] * ys, out=grid[..., 1])
        return grid


class MixupCutmix:
    """Batch-level Mixup / CutMix with soft targets (label smoothing folded in).

    With probability `prob` the batch is mixed with itself reversed: CutMix with probability switch_prob
    (lambda ~ Beta(cutmix_alpha, cutmix_alpha), then corrected to the real pasted area after clipping the
    box to the image), otherwise Mixup (lambda ~ Beta(mixup_alpha, mixup_alpha)). An alpha of 0 disables
    that kind. Unmixed batches get (smoothed) one-hot targets, so the loss always sees B x C targets.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.2, cutmix_alpha: float = 1.0, prob: float = 0.5,
                 switch_prob: float = 0.5, label_smoothing: float = 0.0):
        self.num_classes = int(num_classes)
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.prob, self.switch_prob, self.label_smoothing = float(prob), float(switch_prob), float(label_smoothing)
        self.last: tuple[str, float] = ("none", 1.0)  # what the latest call did: kind and effective lambda

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator):
        """Returns (x_mixed, soft targets B x C) and sets self.last = (kind, lambda) for inspection."""
        u = torch.rand(2, generator=generator, device=generator.device).tolist()
        targets = smoothed_one_hot(y, self.num_classes, self.label_smoothing)
        use_cutmix = self.cutmix_alpha > 0 and (u[1] < self.switch_prob or self.mixup_alpha <= 0)
        use_mixup = not use_cutmix and self.mixup_alpha > 0
        if u[0] >= self.prob or not (use_cutmix or use_mixup):
            self.last = ("none", 1.0)
            return x, targets
        # torch's Beta sampler takes no generator; a numpy Generator seeded from ours keeps it reproducible.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(np.random.default_rng(seed).beta(alpha, alpha))
        partner = x.flip(0)
        if use_cutmix:
            y0, y1, x0, x1 = self._box(x.shape[-2], x.shape[-1], lam, generator)
            x = x.clone()
            x[:, :, y0:y1, x0:x1] = partner[:, :, y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (x.shape[-2] * x.shape[-1])
            self.last = ("cutmix", lam)
        else:
            x = x * lam + partner * (1.0 - lam)
            self.last = ("mixup", lam)
        return x, targets * lam + targets.flip(0) * (1.0 - lam)

    @staticmethod
    def _box(height: int, width: int, lam: float, generator: torch.Generator):
        """A box of about (1 - lam) of the image area, centred uniformly, clipped to the image."""
        ratio = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * ratio), int(width * ratio)
        cy = int(torch.randint(0, height, (1,), generator=generator, device=generator.device))
        cx = int(torch.randint(0, width, (1,), generator=generator, device=generator.device))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, height)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, width)
        return y0, y1, x0, x1
