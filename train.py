#!/usr/bin/env python3
"""`python train.py ...` in the checkout: the same command as `imgcls train ...` (imgcls/commands/train.py)."""

from imgcls.cli import run_cli  # first: it sets the thread policy before torch loads
from imgcls.commands.train import build_parser, main, missing_folds_note, parse_fold  # noqa: F401,I001

if __name__ == "__main__":
    run_cli(main)
