"""The one place where a user's mistake becomes a one-line message and exit code 2 (no traceback)."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from .errors import UserError


def run_cli(main: Callable[[], int]) -> None:
    try:
        sys.exit(main())
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last finished epoch", file=sys.stderr)
        sys.exit(130)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the same one-line error as everything else (argparse prints its whole usage first)."""

    def error(self, message: str):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)
