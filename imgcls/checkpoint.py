"""Self-describing checkpoints, written atomically and read with weights_only=True."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from .errors import UserError


def save_atomic(obj: dict, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, then os.replace: a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; train first (python train.py ...) or fix the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which and why in one line
        raise UserError(f"{path}: not a readable imgcls checkpoint ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200]})") from None
