#!/usr/bin/env python3
"""`python export.py ...` in the checkout: the same command as `imgcls export ...` (imgcls/commands/export.py)."""

from imgcls.cli import run_cli  # first: it sets the thread policy before torch loads
from imgcls.commands.export import build_parser, free_space, main  # noqa: F401,I001

if __name__ == "__main__":
    run_cli(main)
