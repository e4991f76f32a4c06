"""Train one version of the classifier: `imgcls train --version v5 --fold all` (`python train.py ...` in the checkout).

Every preset value is a flag (see --help); --print-config shows the resolved values. Multi-GPU:
`torchrun --nproc_per_node=N train.py --version v3`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from imgcls.cli import ArgumentParser, print_lines  # first: it sets the thread policy before torch loads
from imgcls import distributed as dist  # noqa: I001
from imgcls.flags import add_config_flags, parse_config_values, read_config_file
from imgcls.presets import VERSIONS, default_version, resolve
from imgcls.errors import UserError
from imgcls.limits import MAX_FIND_LR
from imgcls.run import check_restart
from imgcls.validate import check_config, check_range


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default=None, help=f"preset: {', '.join(VERSIONS)} (default: the --config file's, else v5, "
                        "or the best preset whose pretrained weights need no download; said in one line)")
    parser.add_argument("--config", metavar="FILE", help="settings from a JSON (or YAML) file, e.g. a run's "
                        "config.json, under the flags given here (they win)")
    parser.add_argument("--fold", default="0", help="fold to train (0-based) or 'all' (default 0)")
    parser.add_argument("--list-models", nargs="?", const="*", default=None, metavar="PATTERN",
                        help="print the model names (matching PATTERN, e.g. '*lite*'), their checkpoint and "
                             "input size, and exit")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--find-lr", nargs="?", type=int, const=100, default=None, metavar="UPDATES",
                        help="learning-rate range test instead of training: UPDATES (default 100) updates with "
                             "the lr growing from 1e-7 to 10 on this run's data, model, sampler and loss; prints "
                             "the suggested --lr and writes OUT/lr_find.png, no run file")
    add_config_flags(parser)
    return parser


def _set_in(err: UserError, from_file: dict, typed: dict, config_file: str | None) -> str:
    """' (set in --config FILE)' when the refused value came from the file, not from a flag typed here."""
    first = str(err).split(" ", 1)[0]
    key = first[2:].replace("-", "_") if first.startswith("--") else None
    return f" (set in --config {config_file})" if key in from_file and key not in typed else ""


def parse_fold(text: str) -> int | None:
    """'all' -> None; '2' -> 2; anything else is a user error (the range is checked against the split)."""
    if text == "all":
        return None
    if not text.isdigit():
        raise UserError(f"--fold {text}: expected a fold number (0-based) or 'all'")
    return int(text)


def main(argv=None, prog: str | None = None) -> int:
    parser = build_parser(prog)
    args = vars(parser.parse_args(argv))
    pattern = args.pop("list_models")
    if pattern is not None:
        from imgcls.models import model_table
        print_lines(model_table(pattern))
        return 0
    print_config, find_lr = args.pop("print_config"), args.pop("find_lr")
    version, fold_text, config_file = args.pop("version"), args.pop("fold"), args.pop("config")
    # --print-config's stdout stays pure JSON; notes go to stderr there
    say = (lambda line: print(line, file=sys.stderr)) if print_config else print
    from_file, notes = {}, []
    if config_file:  # the file's settings through the flags' own parsers, then the flags typed here on top
        values = read_config_file(config_file)
        from_file, notes = parse_config_values(parser, values, config_file)
        version = version or values.get("version")
    scaled = []  # what the preset scaled to --epochs, said once the settings are known to be valid
    overrides = dict(from_file, **args)
    if version is None:  # the best preset this machine can start without a download
        version, why = default_version(overrides)
        notes.append(why)
    cfg = resolve(version, overrides, log=scaled.append)
    try:
        check_config(cfg)  # every numeric flag, --device and --out, before any data is read
    except UserError as err:
        raise UserError(f"{err}{_set_in(err, from_file, args, config_file)}") from None
    check_range("find_lr", find_lr, 2, MAX_FIND_LR)
    check_restart(cfg, parse_fold(fold_text), {"--config": config_file})
    for line in [f"note: {note}" for note in notes] + scaled if dist.is_main() else ():
        say(line)
    if print_config:
        print(json.dumps(cfg.settings(), indent=2))
        return 0
    if cfg.data is None and dist.is_main():
        print("note: no --data given: training on the built-in demo data (scikit-learn digits, long-tailed). "
              "Use --data DIR (Kaggle styles.csv + images/, or one folder per class) for real data.")

    if find_lr is not None:
        from imgcls.lr_find import find_lr as range_test
        fold = parse_fold(fold_text)
        range_test(cfg, 0 if fold is None else fold, find_lr)
        return 0

    from imgcls import engine
    device = dist.local_device(cfg.device)
    dist.setup(device)
    try:
        fold = parse_fold(fold_text)
        if fold is None:  # every fold: load and split once, share with each fold's fit
            data = engine.prepare_data(cfg, log=print if dist.is_main() else (lambda *a, **k: None))
            for k in range(len(data[1]["folds"])):
                engine.fit(cfg, k, data=data)
            note = None
        else:
            engine.fit(cfg, fold)  # checks the fold against the split
            note = missing_folds_note(engine.run_root(cfg), fold)
            if note and dist.is_main():
                print(note)
        if cfg.leak_check and note is None and dist.is_main():  # the whole run is trained
            print(leak_check(engine.run_root(cfg), cfg.data, device))
    finally:
        dist.teardown()
    return 0


def leak_check(root: Path, data: str | None, device) -> str:
    """The leak line for a trained run. It costs a pass over every image (minutes on a CPU), so it is kept in
    the run and printed again, not recomputed, when the same command meets the finished run (run_all.sh or a
    benchmark rerun); a member trained since, or other --data, computes it afresh."""
    from imgcls.audit import leak_line
    from imgcls.fsio import atomic_write
    from imgcls.run import LEAK_CHECK, find_checkpoints, load_members
    paths, stored = find_checkpoints(root), root / LEAK_CHECK
    newest = max(p.stat().st_mtime for p in paths)
    if stored.exists() and stored.stat().st_mtime >= newest:
        kept = json.loads(stored.read_text())
        if kept.get("data") == data:
            return kept["line"]
    line = leak_line(load_members(paths), device=device)
    atomic_write(stored, json.dumps({"data": data, "line": line}) + "\n")
    return line


def missing_folds_note(root: Path, fold: int) -> str | None:
    """One line when the run is a K-fold ensemble (v2.1, v3, v5) whose other folds are not finished yet:
    predict.py averages the folds it finds, so a user who trained only --fold 0 should know."""
    from imgcls import run
    k = len(json.loads((root / run.SPLIT).read_text())["folds"])
    missing = run.unfinished_folds(root, k, but=fold)
    if not missing:
        return None
    return (f"fold {fold} of {k} trained; the ensemble lacks folds {', '.join(map(str, missing))}: train them with "
            f"--fold all (finished folds are skipped), or predict with the folds there are")

