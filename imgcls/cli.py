"""The one place where a user's mistake becomes a one-line message and exit code 2 (no traceback)."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import Callable

from .errors import UserError

# OpenMP threads that wait for work sleep instead of spinning: beside another busy process, spinning made
# training ~3.5x slower on 2 cores, at a cost of ~15% when the machine is otherwise idle (bench/threads.py,
# docs/benchmarks.md, "Threads"). Set here, on import, because it must be in the environment before torch loads: the
# command lines import this module first. A user's own OMP_WAIT_POLICY (even an empty one) wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# A full disk (ENOSPC), a quota (EDQUOT) or a file size limit (EFBIG, `ulimit -f`)
OUT_OF_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def run_cli(main: Callable[[], int]) -> None:
    # A file name that is not valid UTF-8 reaches us as a str with surrogate escapes; printing it in a log line
    # must not be what stops a run.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        sys.exit(main())
    except BrokenPipeError:
        # `train.py --list-models | head`: the reader has gone, which is not an error. Point stdout at
        # /dev/null so that the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        if err.errno not in OUT_OF_SPACE:
            raise  # anything else is a bug or a broken machine: keep its traceback
        # Every file imgcls writes goes through fsio.atomic_write, so the file named here kept its old content
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err} while writing; the file there is unchanged. Free some space "
              "(or raise the limit) and rerun the same command: a training run resumes from its last epoch",
              file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last finished epoch", file=sys.stderr)
        sys.exit(130)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the same one-line error as everything else (argparse prints its whole usage first)."""

    def error(self, message: str):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def print_lines(lines) -> None:
    """Print and flush now, so that a closed pipe raises BrokenPipeError inside run_cli, where it is handled."""
    print("\n".join(lines))
    sys.stdout.flush()
