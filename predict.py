#!/usr/bin/env python3
"""`python predict.py ...` in the checkout: the same command as `imgcls predict ...` (imgcls/commands/predict.py)."""

from imgcls.cli import run_cli  # first: it sets the thread policy before torch loads
from imgcls.commands.predict import build_parser, latest_run, main  # noqa: F401,I001

if __name__ == "__main__":
    run_cli(main)
