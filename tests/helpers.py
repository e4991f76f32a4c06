"""Tiny data sets the tests write themselves (no network, nothing from ../shared)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Three imbalanced classes with distinct colours, so that a tiny model learns something in one epoch.
COLOURS = {"shirts": (220, 40, 40), "shoes": (40, 200, 60), "watches": (50, 60, 230)}


def write_folder_dataset(root: Path, counts=(30, 14, 6), size=(20, 16), seed=0) -> Path:
    """root/<class>/<i>.png, `counts` images per class, H x W = size, noisy class colours."""
    rng = np.random.default_rng(seed)
    for (name, colour), count in zip(COLOURS.items(), counts):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = np.clip(np.array(colour) + rng.normal(0, 40, size=(*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}_{i:03d}.png")
    return root


def tiny_overrides(data: Path, out: Path, **extra) -> dict:
    """Config overrides that make any preset train in a second or two on a CPU."""
    values = dict(data=str(data), out=str(out), cache_dir=str(out / "cache"), pretrained=None,
                  img_size=(32, 32), epochs=2, batch_size=8, workers=1, eval_batch_size=64, test_frac=0.2)
    values.update(extra)
    return values
