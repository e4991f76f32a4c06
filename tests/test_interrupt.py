"""Ctrl-C at many moments across an epoch boundary: validation, the checkpoint write, the summary and plots, and a
garbage collection whose callback receives the interrupt (where Python prints "Exception ignored" and drops it).
Every time the process stops within seconds with exit 130, its last.pt is whole, and resuming it ends with the
same weights as a run that was never interrupted."""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from imgcls import checkpoint, engine, interrupt
from imgcls.plots import plot_curves
from tests.helpers import (
    write_folder_dataset,
)

pytestmark = pytest.mark.slow  # trains runs or starts processes: outside the fast lane (pytest -m "not slow")

EPOCHS = 3
AT_EPOCH = 2  # the boundary after epoch 2: epoch 1's last.pt exists, so a stop keeps a real checkpoint


def _argv(data: Path, out: Path) -> list[str]:
    return ["--version", "v1", "--data", str(data), "--out", str(out), "--cache-dir", str(out / "cache"),
            "--model", "tiny_convnext",
            "--pretrained", "none", "--img-size", "32", "--epochs", str(EPOCHS), "--batch-size", "8",
            "--workers", "1", "--device", "cpu"]


@pytest.fixture(autouse=True)
def sigint_as_in_a_terminal():
    """Python's own Ctrl-C handler, as a run in a terminal's foreground has it. A suite started as a background
    job of a script (`pytest &`) inherits SIGINT ignored, which interrupt.recorded rightly keeps (nohup runs
    must not stop on Ctrl-C), so these tests' interrupts would never arrive."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _interrupt_at(moment: str, stamp: Path) -> None:
    """Patch the training code so that SIGINT is sent to this process at `moment` of epoch AT_EPOCH's end."""
    calls = {"n": 0}

    def send():
        stamp.write_text(repr(time.monotonic()))
        os.kill(os.getpid(), signal.SIGINT)

    def nth(original, when=lambda *a, **k: True):
        def wrapped(*args, **kwargs):
            if when(*args, **kwargs):
                calls["n"] += 1
                if calls["n"] == AT_EPOCH:
                    send()
            return original(*args, **kwargs)
        return wrapped

    if moment == "validation":
        engine.evaluate = nth(engine.evaluate)
    elif moment == "checkpoint write":
        checkpoint.save = nth(checkpoint.save, lambda record, path: Path(path).name == "last.pt")
    elif moment == "summary":
        engine._write_summary = nth(engine._write_summary)
    elif moment == "plots":
        engine.PLOTS_EVERY_S = 0.0  # plots after every epoch, as a run with long epochs draws them
        engine.plot_curves = nth(engine.plot_curves)
    elif moment == "garbage collection":
        def collect_with_interrupt(*args, **kwargs):
            def callback(phase, info):  # runs inside gc: an exception raised here is printed and dropped
                gc.callbacks.remove(callback)
                send()
                for _ in range(1000):  # the handler runs at the next bytecode, still inside the callback
                    pass
            gc.callbacks.append(callback)
            gc.collect()
        original = engine._write_summary

        def summary(*args, **kwargs):
            out = original(*args, **kwargs)
            calls["n"] += 1
            if calls["n"] == AT_EPOCH:
                collect_with_interrupt()
            return out
        engine._write_summary = summary


def _child(data: Path, out: Path, moment: str | None, stamp: Path) -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (see sigint_as_in_a_terminal)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    if moment is not None:
        _interrupt_at(moment, stamp)
    import train
    from imgcls.cli import run_cli
    run_cli(lambda: train.main(_argv(data, out)))


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt")
    data = write_folder_dataset(root / "data", counts=(12, 8, 6), size=(16, 16))
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "imgcls.engine", "train"])
    reference = ctx.Process(target=_child, args=(data, root / "ref", None, root / "unused"))
    reference.start()
    reference.join(300)
    assert reference.exitcode == 0
    return ctx, data, checkpoint.read(root / "ref" / "v1" / "fold0" / "shipped.pt")


@pytest.mark.parametrize("moment", ["validation", "checkpoint write", "summary", "plots", "garbage collection"])
def test_ctrl_c_at_an_epoch_boundary_stops_with_130_and_resumes_to_the_same_weights(setting, moment, tmp_path):
    ctx, data, reference = setting
    out, stamp = tmp_path / "run", tmp_path / "sent"
    proc = ctx.Process(target=_child, args=(data, out, moment, stamp))
    proc.start()
    proc.join(300)
    stopped = time.monotonic()
    assert stamp.exists(), "the moment was never reached"
    assert proc.exitcode == 130, f"{moment}: exit {proc.exitcode}, not 130 (the interrupt was lost)"
    assert stopped - float(stamp.read_text()) < 5
    last = checkpoint.read(out / "v1" / "fold0" / "last.pt")  # whole: it reads
    assert not last.finished and last.epoch in (AT_EPOCH - 1, AT_EPOCH)
    assert not list(out.rglob("*.tmp"))
    resumed = ctx.Process(target=_child, args=(data, out, None, stamp))
    resumed.start()
    resumed.join(300)
    assert resumed.exitcode == 0
    final = checkpoint.read(out / "v1" / "fold0" / "shipped.pt")
    assert final.model.keys() == reference.model.keys()
    assert all(torch.equal(final.model[k], reference.model[k]) for k in reference.model)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the drop this test makes
def test_a_swallowed_interrupt_is_raised_at_the_next_check():
    """The handler's own raise can be dropped (here: inside a gc callback); the flag it set is not."""
    with interrupt.recorded():
        def callback(phase, info):
            gc.callbacks.remove(callback)
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass
        gc.callbacks.append(callback)
        gc.collect()  # prints "Exception ignored ..." and carries on
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
        interrupt.check()  # raised once, then clear
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_while_a_plot_is_written_stops_after_it_instead_of_being_swallowed(tmp_path):
    """SIGINT during savefig: the PNG is finished whole, then KeyboardInterrupt reaches the caller (the
    training loop stops there and its last.pt resumes); before, it was printed as "Exception ignored"."""
    rows = [{"epoch": 1, "lr": 1e-3, "train_loss": 1.0, "val_loss": 1.0, "val_acc": 0.5, "val_macro_f1": 0.4}]
    sent = []

    def interrupting_write(original):
        def write(self, data):
            if not sent:
                sent.append(True)
                os.kill(os.getpid(), signal.SIGINT)  # lands inside the PNG writer's callback
            return original(self, data)
        return write

    from imgcls.fsio import _Recording
    original = _Recording.write
    _Recording.write = interrupting_write(original)
    try:
        with pytest.raises(KeyboardInterrupt):
            plot_curves(rows, tmp_path / "curves.png")
    finally:
        _Recording.write = original
    assert sent and Image.open(tmp_path / "curves.png").size[0] > 0  # written whole before the stop
