"""Ctrl-C that is never lost: a SIGINT handler records the interrupt before it raises KeyboardInterrupt.

Python raises KeyboardInterrupt wherever the main thread happens to be. When that is a callback run from C
code (a weakref finalizer during garbage collection, the PNG writer's write callback), the exception is printed
as "Exception ignored in ..." and dropped, and a training run went on to its end with exit 0. Here the handler
first sets a flag; the loop calls `check()` at its safe points (every update, every evaluation batch, after an
epoch's files are written), so an interrupt that was swallowed is raised again there, at most one update
later, and the run stops with its last.pt whole (exit 130 from cli.run_cli).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

_pending = False


def _record(signum, frame):
    global _pending
    _pending = True
    raise KeyboardInterrupt


def check() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C arrived since the last check (or was swallowed on its way)."""
    global _pending
    if _pending:
        _pending = False
        raise KeyboardInterrupt


@contextmanager
def recorded():
    """Route SIGINT through the recording handler for the block (a training run); the previous handler and a
    clear flag afterwards, so a later run in the same process (the API, a notebook) starts clean."""
    global _pending
    if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    # A process started with SIGINT ignored (nohup, a background job) keeps ignoring it
    if previous is signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, _record)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _pending = False


@contextmanager
def deferred():
    """Hold a Ctrl-C that arrives inside the block (a PNG write: the writer calls back into Python from C, where
    an exception is dropped) and raise it when the block ends. A plot takes well under a second."""
    global _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            _pending = True  # raised here; and if this raise is lost too, at the next check()
            check()


def checked(items):
    """`items`, with check() before each (the batches of an evaluation)."""
    for item in items:
        check()
        yield item
