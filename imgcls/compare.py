"""results/comparison.md: one row per version, measured by this project, beside the write-up's numbers.

Usage: python -m imgcls.compare --runs runs --out results/comparison.md [--versions v1 v2 v2.1 v3 v4]
Reads each version's held-out test predictions (RUN/predict-test[-tta]/metrics.json, written by predict.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli import ArgumentParser, run_cli
from .presets import VERSIONS
from .errors import UserError
from .run import CONFIG, METRICS, test_metrics_file

# The write-up's own table (validation accuracy, macro-F1, training time, GPU memory), for reference.
WRITEUP = {
    "v1": ("85.2%", "0.81", "8 h", "4 GB"),
    "v2": ("89.1%", "0.85", "15 h", "8 GB"),
    "v2.1": ("88.7%", "0.84", "10 h", "8 GB"),
    "v3": ("90.3%", "0.87", "6 h", "6 GB"),
}

COLUMNS = ["version", "accuracy", "macro-F1", "training time", "peak memory", "weighted-F1",
           "balanced acc", "smallest-class F1", "std per-class F1", "folds", "TTA",
           "write-up acc", "write-up macro-F1", "write-up time", "write-up memory"]


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


def _memory(mb: float, kind: str) -> str:
    text = f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB"
    return text + (" (RSS)" if kind == "process_max_rss" else "")


def row(version: str, run: Path) -> list[str]:
    path = test_metrics_file(run)
    if path is None:
        raise UserError(f"{run}: no predict-test*/metrics.json; run predict.py --run {run} first")
    m = json.loads(path.read_text())
    folds = sorted(run.glob(f"fold*/{METRICS}"))
    kinds = {json.loads(f.read_text()).get("peak_memory_kind", "") for f in folds}
    views = m.get("views", ["identity"])
    return [version, f"{100 * m['accuracy']:.1f}%", f"{m['macro_f1']:.3f}", _duration(m["train_time_s"]),
            _memory(m["peak_memory_mb"], "process_max_rss" if "process_max_rss" in kinds else "cuda"),
            f"{m['weighted_f1']:.3f}", f"{100 * m['balanced_accuracy']:.1f}%", f"{m['smallest_class_f1']:.3f}",
            f"{m['per_class_f1_std']:.3f}", str(len(m.get("models", []))),
            "yes" if len(views) > 1 else "no", *WRITEUP.get(version, ("",) * 4)]


def smoke_note(runs: Path, versions: list[str]) -> str:
    """A warning for the top of the table when a run trained on the built-in demo data or a tiny test model
    (run_all.sh --quick): those numbers say the pipeline runs, nothing about the versions."""
    demo, tiny = [], []
    for version in versions:
        for cfg_file in sorted((runs / version).glob(f"fold*/{CONFIG}")):
            cfg = json.loads(cfg_file.read_text())
            if cfg.get("data") is None and version not in demo:
                demo.append(version)
            if str(cfg.get("model", "")).startswith(("tiny_", "test_")) and version not in tiny:  # test_: the old names
                tiny.append(version)
    if not demo and not tiny:
        return ""
    parts = []
    if demo:
        parts.append(f"trained on the built-in demo data (scikit-learn digits, long-tailed): {', '.join(demo)}")
    if tiny:
        parts.append(f"tiny models with random init, a few short epochs: {', '.join(tiny)}")
    return ("> **Smoke run, not a result.** " + "; ".join(parts).capitalize() + ". These numbers show that the "
            "pipeline runs end to end; they are not comparable with the write-up's numbers beside them.\n\n")


def comparison_table(runs: Path, versions: list[str]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for version in versions:
        lines.append("| " + " | ".join(row(version, runs / version)) + " |")
    return "\n".join(lines)


def main(argv=None, prog: str | None = None) -> int:
    p = ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs")
    p.add_argument("--out", default="results/comparison.md")
    p.add_argument("--versions", nargs="+", default=list(VERSIONS))
    p.add_argument("--title", default="imgcls: the versions on the held-out test split")
    args = p.parse_args(argv)
    runs = Path(args.runs)
    versions = args.versions
    if "--versions" not in (argv if argv is not None else sys.argv[1:]):  # the default: what there is
        versions = [v for v in versions if test_metrics_file(runs / v) is not None]
        if not versions:
            raise UserError(f"{runs}: no version with predict-test*/metrics.json; run predict.py --run "
                            f"{runs}/<version> first")
    table = comparison_table(runs, versions)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    note = smoke_note(runs, versions)
    out.write_text(f"# {args.title}\n\n{note}Measured by `run_all.sh` on this project's held-out test split (mean "
                   f"of fold models; TTA where the version uses it). Training time is summed over folds; "
                   f"peak memory is CUDA max allocated on a GPU, process max RSS on a CPU. The write-up's "
                   f"columns are its own reported numbers (validation, GPU), for reference only.\n\n{table}\n")
    print(note + table)  # the console gets the smoke-run warning too
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
