#!/usr/bin/env python3
"""Predict with a trained run: `python predict.py --run runs/v3 --tta`.

Default: every fold of the run ensembled (mean of probabilities) on the run's own held-out test split.
Writes predictions.csv (id, path, label, confidence, top-5) and, when labels are known, metrics.json,
report.txt and confusion.png beside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from imgcls.cli import ArgumentParser, run_cli
from imgcls.errors import UserError
from imgcls.tta import TTA_VIEWS
from imgcls.validate import check_predict_args


def latest_run(root: Path = Path("runs")) -> str:
    """The most recently trained run under runs/, for a bare `python predict.py`."""
    found = sorted(root.glob("*/fold*/best.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"no trained run under {root}/; train one (python train.py --version v3) or pass --run")
    return str(found[-1].parent.parent)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="run folder OUT/<version> (default: the latest under runs/)")
    p.add_argument("--checkpoint", help="a single checkpoint file instead of a run's folds")
    p.add_argument("--fold", default="all", help="fold K or 'all' (ensemble, default)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="test-time augmentation (see --views); default: the run's own setting (its version's "
                        "preset, e.g. on for v2.1 and v3)")
    p.add_argument("--views", default=",".join(TTA_VIEWS),
                   help=f"TTA views, comma-separated (default {','.join(TTA_VIEWS)}; scaleF for any F)")
    p.add_argument("--data", help="predict a whole data set (same layouts as train.py --data)")
    p.add_argument("--images", nargs="+", help="predict these image files")
    p.add_argument("--label-col", help="label column of a Kaggle styles.csv (default: the run's)")
    p.add_argument("--split", default="test", choices=("test", "val", "all"),
                   help="which part of the run's own data (default: the held-out test split)")
    p.add_argument("--out", help="predictions.csv path (default: RUN/predict-<split>[-tta]/predictions.csv)")
    p.add_argument("--logit-adjust", type=float, default=None, metavar="TAU",
                   help="post-hoc logit adjustment: subtract TAU * log(train prior); default: the tau the run "
                        "chose in training (v4: on validation), else 0 (off)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--amp", default="auto", choices=("auto", "fp16", "bf16", "off"))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2, help="decode workers")
    p.add_argument("--cache-dir", help="decode cache folder; none = off (default: the run's)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_predict_args(args)
    if args.data and args.images:
        raise UserError("--data and --images: give one of them")
    if not args.checkpoint and not args.run:
        args.run = latest_run()
        print(f"note: no --run given: using the latest run, {args.run}")
    from imgcls.predict import predict
    predict(args)
    return 0


if __name__ == "__main__":
    run_cli(main)
