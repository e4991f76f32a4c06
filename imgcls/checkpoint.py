"""Self-describing checkpoints, written atomically (imgcls.fsio) and read with weights_only=True."""

from __future__ import annotations

import dataclasses
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import UserError
from .fsio import atomic_write

# Every checkpoint imgcls writes (last.pt, shipped.pt, swa.pt) carries these; a file without them came from
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
                        "give a shipped.pt or last.pt written by train.py")
    return state


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


# --- The record: what shipped.pt, swa.pt and last.pt hold, as one typed object. ------------------------------
# On disk it is a plain dict of tensors and Python values (torch.load(weights_only=True) reads it); the
# dataclasses below are the only place its keys are spelled.

FORMAT_VERSION = 1


@dataclass
class Preprocessing:
    """Everything predict.py needs to feed the model the way it was trained."""
    model: str
    img_size: tuple
    mean: tuple
    std: tuple
    storage_size: tuple

    def to_dict(self) -> dict:
        return {"model": self.model, "img_size": list(self.img_size), "mean": list(self.mean),
                "std": list(self.std), "storage_size": list(self.storage_size)}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(model=d["model"], img_size=tuple(d["img_size"]), mean=tuple(d["mean"]), std=tuple(d["std"]),
                   storage_size=tuple(d["storage_size"]))


@dataclass
class RunState:
    """The training loop's own progress: saved whole in last.pt and restored whole on resume."""
    epoch: int = 0                # epochs finished
    num_updates: int = 0          # optimizer updates applied (an fp16 step the GradScaler skipped is not one)
    skipped_updates: int = 0      # steps whose gradients overflowed under fp16 and were skipped
    history: list = field(default_factory=list)     # one row of summary.csv per epoch
    lr_history: list = field(default_factory=list)  # the lr of every training step
    best_metric: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    train_time: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunState":
        return cls(**d)


@dataclass
class Checkpoint:
    """A trained model with what it takes to use it (shipped.pt, swa.pt) and, in last.pt, to resume training.

    ``selected``: "best" (the best epoch), "swa" (the SWA average), "ema" (the EMA of the weights) or "last"
    (the final weights; in last.pt, the latest epoch).
    """
    model_name: str
    num_classes: int
    class_names: list
    preprocessing: Preprocessing
    config: dict
    fold: int
    train_class_counts: list
    model: dict                   # state_dict
    epoch: int
    metric: float
    selected: str
    decision_tau: float = 0.0     # predict.py's default post-hoc logit adjustment (decision.py)
    # resume state, last.pt only
    progress: RunState | None = None
    optimizer: dict | None = None
    schedule: dict | None = None
    scaler: dict | None = None
    swa_model: dict | None = None
    ema_model: dict | None = None
    rng: dict | None = None
    finished: bool = False
    result: dict | None = None
    format: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["preprocessing"] = self.preprocessing.to_dict()
        out["progress"] = None if self.progress is None else self.progress.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict, path: str | Path = "checkpoint") -> "Checkpoint":
        version = d.get("format")
        if version != FORMAT_VERSION:
            raise UserError(f"{path}: checkpoint format {version} is not {FORMAT_VERSION}, the one this imgcls "
                            f"reads; retrain (train.py --restart) with this version")
        try:
            values = dict(d, preprocessing=Preprocessing.from_dict(d["preprocessing"]))
            if d.get("progress") is not None:
                values["progress"] = RunState.from_dict(d["progress"])
            return cls(**values)
        except (KeyError, TypeError, ValueError) as exc:  # a field missing, unknown or of the wrong kind
            raise UserError(f"{path}: not a complete imgcls checkpoint ({type(exc).__name__}: {exc}); give a "
                            "shipped.pt or last.pt written by train.py") from None


def save(record: Checkpoint, path: str | Path) -> None:
    save_atomic(record.to_dict(), path)


def read(path: str | Path) -> Checkpoint:
    """The typed record in ``path`` (a UserError naming the file when it is missing, foreign or old)."""
    return Checkpoint.from_dict(load(path), path)
