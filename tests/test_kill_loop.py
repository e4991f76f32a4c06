"""SIGKILL a tiny training run again and again (some kills inside a checkpoint write), resume it to the end.

The run that was killed at least 10 times must end with the same metrics, history and weights as one that
never was, and leave no temp file anywhere (run folder or decode cache).
"""

from __future__ import annotations

import pytest
import csv
import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import torch

from imgcls import checkpoint
from tests.helpers import write_folder_dataset

pytestmark = pytest.mark.slow  # trains runs or starts processes: outside the fast lane (pytest -m "not slow")

ROOT = Path(__file__).resolve().parents[1]
TIMING = {"train_time_s", "peak_memory_mb", "train_img_s", "time_s"}  # wall-clock numbers, never identical


def train_py(data: Path, out: Path) -> None:
    """`python train.py ...` in a child process: the same main and run_cli, without a new interpreter."""
    os.environ.update(OMP_NUM_THREADS="1")
    # Each fsync in this child pauses 30 ms first (timing only): an atomic write's window between writing its
    # temp file and renaming it widens, so kills land inside one. Patched here, in the child, not in the library.
    real_fsync = os.fsync

    def slow_fsync(fd):
        time.sleep(0.03)
        real_fsync(fd)

    os.fsync = slow_fsync
    import torch as _torch
    _torch.set_num_threads(1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    import train
    from imgcls.cli import run_cli
    run_cli(lambda: train.main(["--version", "v1", "--data", str(data), "--out", str(out), "--cache-dir", str(out / "cache"),
                                "--model", "tiny_convnext", "--pretrained", "none", "--img-size", "32",
                                "--epochs", "6", "--batch-size", "8", "--workers", "1", "--device", "cpu"]))


def start(ctx, data: Path, out: Path):
    proc = ctx.Process(target=train_py, args=(data, out))
    proc.start()
    return proc


def checkpoint_temps(out: Path) -> list[Path]:
    return [p for p in out.rglob("*.tmp") if p.name.startswith((".last.pt.", ".best_epoch.pt.", ".shipped.pt."))]


def without_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def test_killed_at_random_moments_resumes_to_the_same_result(tmp_path):
    data = write_folder_dataset(tmp_path / "data", counts=(12, 8, 6), size=(16, 16))
    # Children are forked from a server that has imported torch and imgcls but never run an op: a start
    # costs a fork, not an interpreter and a torch import (seconds each), so 10+ kills fit in a test.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "imgcls.engine", "train"])
    reference = start(ctx, data, tmp_path / "ref")
    reference.join(300)
    assert reference.exitcode == 0

    out, rng = tmp_path / "killed", random.Random(0)
    kills = mid_write = 0
    finished = False
    deadline = time.monotonic() + 240
    while not finished:
        assert time.monotonic() < deadline, f"no end after {kills} kills"
        stale = set(checkpoint_temps(out))  # left by the previous kill; the new process removes them
        proc = start(ctx, data, out)
        # Alternate: kill the moment a checkpoint temp appears, or a random time after training starts writing.
        during_write = kills % 2 == 0
        delay = rng.uniform(0.0, 0.4)
        seen_at = None
        while proc.is_alive():
            if set(checkpoint_temps(out)) - stale:
                seen_at = seen_at or time.monotonic()
                if during_write or time.monotonic() - seen_at >= delay:
                    break
            time.sleep(0.002)
        if kills >= 10 or not proc.is_alive():  # enough kills: let this one run to the end
            proc.join(300)
            assert proc.exitcode == 0
            finished = True
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        kills += 1
        mid_write += bool(set(checkpoint_temps(out)) - stale)  # it left a new temp: it was inside a write

    assert kills >= 10 and mid_write >= 3, (kills, mid_write)
    ref_dir, run_dir = tmp_path / "ref" / "v1" / "fold0", out / "v1" / "fold0"
    ref_metrics = json.loads((ref_dir / "metrics.json").read_text())
    run_metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {k: v for k, v in run_metrics.items() if k not in TIMING} == \
        {k: v for k, v in ref_metrics.items() if k not in TIMING}
    assert without_timing(csv.DictReader(open(run_dir / "summary.csv"))) == \
        without_timing(csv.DictReader(open(ref_dir / "summary.csv")))
    a, b = checkpoint.load(ref_dir / "shipped.pt"), checkpoint.load(run_dir / "shipped.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert checkpoint.load(run_dir / "last.pt")["finished"]
    assert list(out.rglob("*.tmp")) == [] and list((tmp_path / "ref").rglob("*.tmp")) == []
