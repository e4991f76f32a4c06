"""Export a trained run for deployment: `imgcls export --run runs/v3 --format onnx --out export/v3`
(`python export.py ...` in the checkout).

The exported model takes uint8 RGB images N x 3 x H x W at the run's storage size (any N) and returns class
probabilities; resize and normalisation are inside it. A run's folds become one model averaging their
probabilities (--fold K for one). classes.json and preprocessing.json are written beside the model file.
--int8 adds model.int8.onnx: int8 weights and activations, calibrated on the run's training images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from imgcls.cli import ArgumentParser
from imgcls.errors import UserError
from imgcls.export import FORMATS
from imgcls.tta import TTA_VIEWS


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder OUT/<version>, a fold folder, or a checkpoint file")
    p.add_argument("--fold", default="all", help="fold K or 'all' (one model averaging every fold; default)")
    p.add_argument("--format", default="onnx", choices=(*FORMATS, "safetensors"),
                   help="onnx (default), torchscript, torch-export (a .pt2 for torch.export.load), or safetensors "
                        "(every member's weights, config.json and a README.md model card: the Hugging Face Hub's "
                        "layout, read back by imgcls.load; needs pip install safetensors)")
    p.add_argument("--hub", action="store_true",
                   help="also write config.json and the README.md model card beside an onnx / torchscript / "
                        "torch-export model (--format safetensors always has them)")
    p.add_argument("--out", help="output folder (default: RUN/export-<format>)")
    p.add_argument("--tta", action="store_true", help="put the TTA views into the graph (--views); with "
                   "safetensors, record them in config.json (default there: the run's own TTA setting)")
    p.add_argument("--views", default=",".join(TTA_VIEWS), help="TTA views with --tta (default %(default)s)")
    p.add_argument("--int8", action="store_true",
                   help="also write model.int8.onnx (static int8, calibrated on the run's training images)")
    p.add_argument("--decision-tau", "--logit-adjust", dest="decision_tau", type=float, default=None, metavar="TAU",
                   help="the decision rule's tau inside the graph, in [-10, 10]; default: the tau each member "
                        "chose in training (v4, v5), else 0 (off). --logit-adjust is its old name, still accepted")
    p.add_argument("--calibration-images", type=int, default=256, help="images for int8 calibration")
    return p


def free_space(path: Path) -> str:
    """The free space of the file system `path` is (or would be) on, e.g. '1.2 GiB'."""
    import shutil
    from imgcls.validate import existing_parent
    try:
        return f"{shutil.disk_usage(existing_parent(path)).free / 2**30:.1f} GiB"
    except OSError:
        return "unknown space"


def main(argv=None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    if args.int8 and args.format != "onnx":
        raise UserError("--int8: int8 models are ONNX files; use --format onnx")
    if args.calibration_images < 1:
        raise UserError(f"--calibration-images {args.calibration_images}: must be at least 1")
    from imgcls import export, hub, quantize
    from imgcls.api import parse_views
    from imgcls.fsio import folder_swap
    from imgcls.run import decision_taus, find_checkpoints, load_members, run_root_of, unfinished_note
    from imgcls.validate import check_out_folder
    run = Path(args.run)
    out = Path(args.out) if args.out else (run.parent if run.is_file() else run) / f"export-{args.format}"
    check_out_folder("--out", str(out))  # before any work: not a file, and writable
    members = load_members(find_checkpoints(args.run, args.fold))
    for note in filter(None, (unfinished_note(m.path) for m in members)):
        print(note)
    weights_only = args.format == "safetensors"
    # A graph has TTA only when asked; safetensors records the views imgcls.load(run) would use
    views = parse_views(args.views) if args.tta else \
        (TTA_VIEWS if weights_only and members[0].config.tta else ("identity",))
    taus = decision_taus(members, args.decision_tau)
    record = members[0].record
    card = hub.model_card(members, views, taus, run_root_of(members)) if (weights_only or args.hub) else None
    if weights_only:
        hub.check_available()  # before the folder is touched
    try:
        with folder_swap(out) as folder:  # all files or none: an earlier export stays whole until replaced
            if weights_only:
                written = hub.write(folder, members, views, taus, card)
            else:
                module = export.deployable(members, views, channels_last=args.format == "torchscript", taus=taus)
                writer, name = export.WRITERS[args.format]
                model_file = writer(module, folder / name)
                written = [model_file.name]
                if args.int8:
                    calib = quantize.calibration_images(members, count=args.calibration_images)
                    written.append(quantize.quantize_onnx(model_file, folder / "model.int8.onnx", calib).name)
                export.write_metadata(folder, record.class_names, record.preprocessing.to_dict(), views,
                                      [str(m.path) for m in members], model_file.name, taus)
                if args.hub:
                    written += hub.write_card(folder, members, views, taus, card)
    except (OSError, RuntimeError) as err:  # disk full, quota, a read-only file system; ONNX's C++ writer
        reason = (err.strerror if isinstance(err, OSError) else None) or str(err).strip().splitlines()[0][:200]
        where = f"{err.filename}: " if isinstance(err, OSError) and err.filename else ""
        raise UserError(f"--out {out}: could not write the export ({where}{reason}; {free_space(out)} free there); "
                        f"{'the earlier export there is unchanged' if out.exists() else 'nothing was written'}"
                        ) from None
    print(f"exported {len(members)} model(s) x {len(views)} view(s): " + ", ".join(str(out / name) for name in written)
          + ("" if weights_only else f"; classes.json and preprocessing.json in {out}"))
    return 0

