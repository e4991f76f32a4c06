"""What the benchmark scripts share: the checkout on the import path (so `import imgcls` works from bench/),
a run's file names through imgcls.run (`layout.SHIPPED`, `layout.fold_dir(...)`: no script spells them), the median
[min, max] cell, and the report written where the README quotes it (and printed). Import it first."""

from __future__ import annotations

import os
import shlex
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)



def __getattr__(name: str):
    """`from common import layout` is imgcls.run, imported on that request only: threads.py must set the
    environment before torch loads, and importing this module loads nothing."""
    if name == "layout":
        from imgcls import run
        return run
    raise AttributeError(name)


def spread(values, fmt: str = "{:.3f}") -> str:
    """median [min, max] of values; the median alone for one value."""
    med = fmt.format(statistics.median(values))
    return med if len(values) == 1 else f"{med} [{fmt.format(min(values))}, {fmt.format(max(values))}]"


def publish(lines: list[str], path: str | None) -> str:
    """Print the report and write it to path (its folder made as needed; None: print only); returns the text."""
    text = "\n".join(lines) + "\n"
    print(text)
    if path is None:
        return text
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)
    return text


def run_logged(cmd: list[str], log: str, threads: int | None = None, cwd: str | None = None) -> None:
    """Run a command with its output appended to log (threads: its OMP_NUM_THREADS; None: torch's own
    choice); a failure ends the bench with one line naming the log."""
    os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
    print("$ " + shlex.join(cmd), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    with open(log, "a") as fh:
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    if done.returncode != 0:
        raise SystemExit(f"{cmd[1]} failed (exit {done.returncode}); its output is in {log}")
