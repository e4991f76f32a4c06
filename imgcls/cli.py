"""The one place where a user's mistake becomes a one-line message and exit code 2 (no traceback)."""

from __future__ import annotations

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
