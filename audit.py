#!/usr/bin/env python3
"""`python audit.py ...` in the checkout: the same command as `imgcls audit ...` (imgcls/commands/audit.py)."""

from imgcls.cli import run_cli  # first: it sets the thread policy before torch loads
from imgcls.commands.audit import build_parser, main  # noqa: F401,I001

if __name__ == "__main__":
    run_cli(main)
