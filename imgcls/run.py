"""A trained run on disk: the one module that knows its layout and reads it back.

    OUT/<version>/split.json              the held-out test split and the folds (data/splits.py)
    OUT/<version>/fold<k>/shipped.pt      the fold's shipped model and its decision tau (checkpoint.Checkpoint;
                                          best.pt in runs saved before 2026-12-06, still read)
    OUT/<version>/fold<k>/last.pt         everything a resume needs; marked finished at the end
    OUT/<version>/fold<k>/metrics.json    written only when the fold's training finished
    OUT/<version>/fold<k>/select/         a --refit's selection stage (a complete fold folder of its own)
    OUT/<version>/export-int8/            the int8 model predict.py --int8 makes once (quantize.py)

train.py writes it (engine.py), everything after training reads it through here: the Python API, predict,
export and int8 quantisation. It sits below all of them and imports none of them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .config import Config, renamed
from .errors import UserError
from .models import create_model
from .limits import DECISION_TAU_RANGE
from .validate import check_range

SHIPPED, LAST, METRICS, SPLIT, CONFIG = "shipped.pt", "last.pt", "metrics.json", "split.json", "config.json"
# the rest of a fold folder: the model before cRT, the best epoch so far (while training runs; kept for
# inspection with --select last) and the SWA average, the refit's selection stage, the per-epoch table, the
# skipped inputs, the plots and the report
BEFORE_CRT, BEST_EPOCH, SWA = "before_crt.pt", "best_epoch.pt", "swa.pt"
# the names in runs saved before 2026-12-06, still read: the shipped model (which also held the best epoch
# while training ran) and the model before cRT (read on resume)
OLD_SHIPPED, OLD_BEFORE_CRT = "best.pt", "stage1.pt"
SELECT, SUMMARY, SKIPPED, REPORT = "select", "summary.csv", "skipped.json", "report.html"
CURVES, LR_PLOT, CONFUSION = "curves.png", "lr.png", "confusion.png"
TENSORBOARD = "tensorboard"  # --tensorboard: the event files
# a prediction folder (RUN/predict-<split>[-tta]/): the predictions beside metrics.json, the report and plots
PREDICTIONS = "predictions.csv"
INT8_DIR = "export-int8"
# audit.py's folder in the run: label issues, duplicate groups, outliers, the page, the counts
AUDIT, LABEL_ISSUES, DUPLICATES, OUTLIERS = "audit", "label_issues.csv", "duplicates.csv", "outliers.csv"
AUDIT_PAGE, AUDIT_SUMMARY, OUT_OF_FOLD, EXCLUDE = "audit.html", "summary.json", "out_of_fold.npz", "exclude.csv"
RELABEL = "relabel.csv"
# train.py's leak line at the end of training, kept so that a finished run trained again does not recompute it
LEAK_CHECK = "leak_check.json"
# export.py --format safetensors (the Hugging Face Hub layout, hub.py): weights, their config, the model card
HUB_WEIGHTS, HUB_CONFIG, HUB_CARD = "model.safetensors", CONFIG, "README.md"


def fold_dir(root: str | Path, fold: int) -> Path:
    return Path(root) / f"fold{fold}"


def fold_model(folder: str | Path) -> Path | None:
    """A fold folder's model: shipped.pt once its training finished (best.pt in an older run); while training runs
    or after a kill, the best epoch so far (unfinished_note warns about it); None when there is none yet."""
    for name in (SHIPPED, OLD_SHIPPED, BEST_EPOCH):
        path = Path(folder) / name
        if path.is_file():
            return path
    return None


def fold_models(root: str | Path) -> list[Path]:
    """The model of each fold folder under a run folder, in fold order."""
    folders = sorted((p for p in Path(root).glob("fold*") if p.is_dir()), key=_fold_number)
    return [m for m in map(fold_model, folders) if m is not None]


def reads_inputs_inside(cfg: Config, folder: Path, inputs: dict | None = None) -> list[tuple[str, str]]:
    """(flag, path) of each input this run reads (--init-from, --teacher, --exclude, --relabel, and `inputs`, e.g.
    --config) that lies inside `folder` or holds it: what deleting `folder` would destroy before the run could
    read it."""
    reads = {"--init-from": cfg.init_from, "--teacher": cfg.teacher, "--exclude": cfg.exclude,
             "--relabel": cfg.relabel, **(inputs or {})}
    target = Path(folder).resolve()
    found = []
    for name, path in reads.items():
        if not path:
            continue
        p = Path(path).resolve()
        if p == target or target in p.parents or p in target.parents:
            found.append((name, str(path)))
    return found


def check_restart(cfg: Config, fold: int | None, inputs: dict | None = None) -> None:
    """--restart deletes the fold folder it trains (every fold folder with --fold all, fold None): refused, naming
    both paths, when an input of the run lies there. A refusal never deletes."""
    if not cfg.restart:
        return
    doomed = Path(cfg.out) / cfg.version
    doomed = doomed if fold is None else fold_dir(doomed, fold)
    inside = reads_inputs_inside(cfg, doomed, inputs)
    if inside:
        name, path = inside[0]
        raise UserError(f"--restart would delete {doomed}, which {name} {path} reads from; train into another "
                        f"--out instead (or copy {path} out of {doomed} first)")


def prediction_folder(root: str | Path, source: str, tta: bool = False, int8: bool = False) -> Path:
    """Where predict.py writes by default: RUN/predict-<source>[-tta][-int8]/ (source: test, val, all, ...)."""
    return Path(root) / f"predict-{source}{'-tta' if tta else ''}{'-int8' if int8 else ''}"


def test_metrics_file(root: str | Path) -> Path | None:
    """The run's scores on its held-out test split (predict.py's metrics.json), with TTA where there are both."""
    for tta in (True, False):
        path = prediction_folder(root, "test", tta) / METRICS
        if path.is_file():
            return path
    return None


def is_finished(folder: str | Path) -> bool:
    """A fold's training finished: train.py writes metrics.json only at its very end, after last.pt is marked
    finished (the one definition: training, predict, export and the API all ask this)."""
    return (Path(folder) / METRICS).is_file()


def unfinished_folds(root: str | Path, num_folds: int, but: int | None = None) -> list[int]:
    return [k for k in range(num_folds) if k != but and not is_finished(fold_dir(root, k))]


def unfinished_note(path: str | Path) -> str | None:
    """A warning line when a checkpoint comes from a fold whose training has not finished (killed or still
    running): its model file is only the best epoch so far, and the numbers from it are not the run's."""
    folder = Path(path).parent
    if (folder / LAST).is_file() and not is_finished(folder):
        return (f"warning: {folder}: training has not finished (no {METRICS}); {Path(path).name} is the best "
                "epoch so far, not the run's result (rerun train.py to finish it)")
    return None


def run_versions(root: Path) -> list[str]:
    """Sub-folders of `root` that are runs (hold a fold's model): `runs-quick` -> ['v1', 'v2', ...]."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and fold_models(p))


def _fold_number(folder: Path) -> int:
    digits = folder.name[len("fold"):]
    return int(digits) if digits.isdigit() else 0


def find_checkpoints(source: str | Path, fold: str | int = "all") -> list[Path]:
    """Checkpoint files of a run folder (its folds, or fold K), a fold folder, or a checkpoint file."""
    path = Path(source)
    fold = str(fold)
    if path.is_file():
        return [path]
    if not path.exists():
        raise UserError(f"{path}: no such run folder or checkpoint file; train first "
                        f"(python train.py --version ...) or point at OUT/<version>")
    own = fold_model(path)
    if own is not None and not fold_models(path):
        return [own]  # a fold folder
    if fold == "all":
        found = fold_models(path)
    else:
        found = [p for p in [fold_model(fold_dir(path, fold))] if p is not None]
    if found:
        return found
    versions = run_versions(path)
    if versions:
        raise UserError(f"{path}: a folder of runs, not one run; pick a version: "
                        + ", ".join(str(path / v) for v in versions))
    raise UserError(f"{path}: no trained fold{'s' if fold == 'all' else ' ' + fold} (fold*/{SHIPPED}) there; "
                    f"train it first or pick another --fold")


@dataclass
class Member:
    """One trained model of an ensemble: where it came from and its checkpoint record."""
    path: Path
    record: checkpoint.Checkpoint

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def config(self) -> Config:
        return saved_config(self.record.config)

    def metrics(self) -> dict:
        """The fold's metrics.json ({} while its training has not finished, or for a loose checkpoint)."""
        path = self.folder / METRICS
        return json.loads(path.read_text()) if path.is_file() else {}


def saved_config(values: dict) -> Config:
    """A run's saved config as a Config: the defaults are Config's own, never typed again. Keys a newer or
    older imgcls does not know are dropped (a checkpoint outlives the code that wrote it)."""
    known = {f.name for f in dataclasses.fields(Config)}
    return Config.from_dict({k: v for k, v in renamed(values).items() if k in known})


def load_members(paths: list[Path]) -> list[Member]:
    members = [Member(Path(p), checkpoint.read(p)) for p in paths]
    for m in members:
        _check_finite(m)
    first = members[0].record
    for m in members[1:]:
        for key in ("class_names", "num_classes"):
            if getattr(m.record, key) != getattr(first, key):
                raise UserError(f"{m.path}: {key} differ from {members[0].path}; ensemble only folds of one run")
        if m.record.preprocessing.to_dict() != first.preprocessing.to_dict():
            raise UserError(f"{m.path}: other preprocessing (sizes, mean, std) than {members[0].path}")
    return members


def _check_finite(member: Member) -> None:
    """A checkpoint with NaN or inf weights predicts NaN for every image: refuse it where it is loaded."""
    for name, value in member.record.model.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise UserError(f"{member.path}: weight {name} holds NaN or inf values; this checkpoint cannot "
                            "predict (train again, or use another fold's or an earlier run's model)")


def build_model(member: Member, device: torch.device | str = "cpu") -> torch.nn.Module:
    record = member.record
    model = create_model(record.model_name, record.num_classes, log=lambda *a, **k: None)  # weights follow
    try:
        model.load_state_dict(record.model)
    except RuntimeError as exc:
        raise UserError(f"{member.path}: weights do not fit {record.model_name} with "
                        f"{record.num_classes} classes ({str(exc).splitlines()[0]})") from None
    return model.to(device).eval()


def decision_taus(members, override: float | None = None) -> list[float]:
    """Each member's decision tau (decision.py): `override` when given (--decision-tau at predict time),
    else the tau its run chose in training (0 for runs without one)."""
    check_range("decision_tau", override, *DECISION_TAU_RANGE)  # train.py, predict.py, export.py and the API alike
    return [float(override) if override is not None else float(m.record.decision_tau) for m in members]


def starting_point(source: str | Path, fold: int) -> Member:
    """The trained model a new run starts from (--init-from): a checkpoint file, a fold folder, or a run
    folder's fold `fold` (its first fold when it has no such fold)."""
    paths = find_checkpoints(source, "all")
    same_fold = [p for p in paths if p.parent.name == f"fold{fold}"]
    return load_members([(same_fold or paths)[0]])[0]


def run_root_of(members) -> Path:
    """The folder that holds the members: the run folder for an ensemble, the fold folder for one model."""
    return members[0].folder.parent if len(members) > 1 else members[0].folder


def run_data(members, part: str = "test", *, data: str | None = None, label_col: str | None = None,
             cache_dir: str | None = None, workers: int | None = None, size=None, log=print):
    """(dataset, positions): the run's data set loaded as training loaded it (its cache), and which of its
    images `part` means: "test" (the held-out split), "val" (one fold's validation split), "train" (every
    image outside the test split: what training could use) or "all". `data` etc. override the saved config;
    with another data set only "all" has a meaning."""
    from .data import load_dataset
    from .data.splits import load_split
    cfg = members[0].config
    storage = tuple(size or members[0].record.preprocessing.storage_size)
    dataset = load_dataset(data or cfg.data, label_col=label_col or cfg.label_col, size=storage,
                           cache_dir=cache_dir or cfg.cache_dir, workers=workers or cfg.workers, log=log,
                           exclude=None if data else cfg.exclude,  # the run's own data: as it trained
                           relabel=None if data else cfg.relabel)
    everything = np.arange(len(dataset.paths), dtype=np.int64)
    if data or part == "all":
        return dataset, everything
    split = load_split(str(members[0].folder / SPLIT), dataset.paths)  # one error if it is missing
    test = np.asarray(split["test"], dtype=np.int64)
    if part == "test":
        return dataset, test
    if part == "val":
        if len(members) > 1:
            raise UserError("--split val: each fold has its own validation set; pick one with --fold K")
        return dataset, np.asarray(split["folds"][members[0].record.fold]["val"], dtype=np.int64)
    if part == "train":
        return dataset, np.setdiff1d(everything, test)
    raise ValueError(f"run_data: unknown part {part!r} (test, val, train or all)")
