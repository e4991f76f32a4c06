"""Self-describing checkpoints, written atomically (imgcls.fsio) and read with weights_only=True."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .errors import UserError
from .fsio import atomic_write

# Every checkpoint imgcls writes (last.pt, best.pt, swa.pt) carries these; a file without them came from
# somewhere else, and reading it on would only fail later with a KeyError.
REQUIRED_KEYS = ("model", "model_name", "num_classes", "class_names", "preprocessing", "config")


def save_atomic(obj: dict, path: str | Path) -> None:
    """torch.save via a temp file in the same folder + os.replace: a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda fh: torch.save(obj, fh))


def load(path: str | Path, required: tuple[str, ...] = REQUIRED_KEYS) -> dict:
    """Read an imgcls checkpoint; UserError (one line, naming the file) for anything else."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; train first (python train.py ...) or fix the path")
    try:
        size = path.stat().st_size
        if size == 0:
            raise UserError(f"{path}: empty file (0 bytes), not an imgcls checkpoint; delete it and train again "
                            "(or point at another file)")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except UserError:
        raise
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Weights only" in str(exc):
            # torch's own message ends with advice to pass weights_only=False, i.e. to run the file's code.
            raise UserError(f"{path}: holds code or objects other than tensors and was refused; "
                            "only load files you trust") from None
        raise UserError(f"{path}: not a readable imgcls checkpoint (damaged or not a torch file: "
                        f"{_first_line(exc)})") from None
    except Exception as exc:  # truncated zip, random bytes, permission denied: say which and why
        raise UserError(f"{path}: not a readable imgcls checkpoint (truncated, damaged or not a torch file: "
                        f"{_first_line(exc)})") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: not an imgcls checkpoint (it holds a {type(state).__name__}, not the dict "
                        "train.py writes)")
    missing = [k for k in required if k not in state]
    if missing:
        raise UserError(f"{path}: not an imgcls checkpoint (no {', '.join(repr(k) for k in missing)}); "
                        "give a best.pt or last.pt written by train.py")
    return state


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__
