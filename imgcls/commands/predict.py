"""Predict with a trained run: `imgcls predict --run runs/v3 --tta` (`python predict.py ...` in the checkout).

Default: every fold of the run ensembled (mean of probabilities) on the run's own held-out test split, into
RUN/predict-test[-tta]/: predictions.csv (id, path, label, confidence, top-5) and, when labels are known,
metrics.json, report.txt and confusion.png. Unlabelled images: --images FILE/DIR... (folders searched
recursively), or --data with a folder of loose images or a manifest with only a `path` column.
The same code as the Python API: imgcls.load(RUN).predict(...).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from imgcls.cli import ArgumentParser
from imgcls.errors import UserError
from imgcls.tta import TTA_VIEWS
from imgcls.validate import check_predict_args


def latest_run(root: Path = Path("runs")) -> str:
    """The most recently trained run under runs/, for a bare `python predict.py`."""
    from imgcls.run import fold_models
    found = sorted((m for run in root.glob("*") if run.is_dir() for m in fold_models(run)),
                   key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"no trained run under {root}/; train one (python train.py --version v3) or pass --run")
    return str(found[-1].parent.parent)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = p.add_argument_group("model")
    model.add_argument("--run", help="run folder OUT/<version> (default: the latest under runs/)")
    model.add_argument("--checkpoint", help="a single checkpoint file instead of a run's folds")
    model.add_argument("--fold", default="all", help="fold K or 'all' (ensemble of every fold; default all)")
    model.add_argument("--int8", action="store_true",
                       help="run the int8 ONNX model (made once into export-int8/ of the run, or of the fold for "
                            "one model; needs onnxruntime)")
    images = p.add_argument_group("images (default: the run's own held-out test split)")
    images.add_argument("--data", help="a data set: the layouts of train.py --data (labelled: metrics), a folder "
                                       "of loose images or a manifest with only a `path` column (unlabelled)")
    images.add_argument("--images", nargs="+", metavar="FILE_OR_DIR",
                        help="image files and folders (searched recursively); no labels")
    images.add_argument("--split", default="test", choices=("test", "val", "all"),
                        help="which part of the run's own data (default test)")
    images.add_argument("--label-col", help="label column of a Kaggle styles.csv (default: the run's)")
    how = p.add_argument_group("prediction")
    how.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                     help="test-time augmentation (see --views); default: the run's own setting (its version's "
                          "preset, e.g. on for v2.1 and v3)")
    how.add_argument("--views", default=",".join(TTA_VIEWS),
                     help="TTA views, comma-separated (default %(default)s; scaleF for any F)")
    how.add_argument("--decision-tau", "--logit-adjust", dest="decision_tau", type=float, default=None,
                     metavar="TAU", help="the decision rule's tau: softmax(log p - TAU * log(train prior)), in "
                     "[-10, 10]; default: the tau each member chose in training (v4, v5: on validation), else 0 "
                     "(off). --logit-adjust is its old name, still accepted")
    out = p.add_argument_group("output")
    out.add_argument("--out", metavar="FILE.csv",
                     help="predictions CSV; its metrics/report/confusion/skipped go to a folder named after it "
                          "(FILE/) (default: RUN/predict-<split>[-tta]/predictions.csv)")
    out.add_argument("--print", action="store_true",
                     help="a console line per image (path, label, probability); automatic up to 20 images")
    machine = p.add_argument_group("machine")
    machine.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    machine.add_argument("--amp", default="auto", choices=("auto", "fp16", "bf16", "off"),
                         help="autocast (default auto: fp16 on CUDA, off elsewhere)")
    machine.add_argument("--batch-size", type=int, default=256, help="images per batch (default 256)")
    machine.add_argument("--workers", type=int, default=2, help="decode workers (default 2)")
    machine.add_argument("--cache-dir", help="decode cache folder; none = off (default: the run's)")
    return p


def main(argv=None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    check_predict_args(args)
    if args.data and args.images:
        raise UserError("--data and --images: give one of them")
    if not args.checkpoint and not args.run:
        args.run = latest_run()
        print(f"note: no --run given: using the latest run, {args.run}")
    from imgcls.predict import predict
    predict(args)
    return 0

