"""fsio.py: writes are atomic (a failed write keeps the old file and leaves no temp), files get normal
permissions, temps of dead writers are cleaned while live ones are kept, and two processes never collide."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading

import pytest
import torch

from imgcls import checkpoint, engine
from imgcls.data.splits import load_split, save_split
from imgcls.fsio import atomic_write, clean_stale_temps
from imgcls.presets import resolve
from tests.helpers import (
    ENV,
    ROOT,
    file_size_limit,
    temps,
    tiny_overrides,
    write_folder_dataset,
)
from tests.helpers import TINY_B0 as TINY

QUIET = dict(log=lambda *a, **k: None)


def test_atomic_write_failure_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "f.json"
    atomic_write(target, "old")

    def half_then_fail(fh):
        fh.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old" and temps(tmp_path) == []


def test_written_files_get_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        checkpoint.save_atomic({"x": torch.zeros(1)}, tmp_path / "c.pt")
        atomic_write(tmp_path / "t.txt", "x")
    finally:
        os.umask(old)
    for name in ("c.pt", "t.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_stale_temps_of_dead_writers_are_cleaned_live_ones_and_others_kept(tmp_path):
    dead = subprocess.run(["true"]).returncode  # noqa: F841 (just a pid that has exited)
    child = subprocess.Popen(["sleep", "30"])
    try:
        names = {
            f".last.pt.{2**22 + 12345}.deadbeef.tmp": True,  # no such pid: stale
            "last.pt.a1b2c3d4.tmp": True,  # mkstemp's name from older versions
            "decoded-0123abcd.npy.999999999.tmp": True,
            "split.json.tmp": True,
            f".last.pt.{child.pid}.0badf00d.tmp": False,  # a live writer
            "notes.tmp": False,  # not ours
            "last.pt": False,
        }
        for name in names:
            (tmp_path / name).write_text("x")
        removed = {p.name for p in clean_stale_temps(tmp_path)}
    finally:
        child.kill()
        child.wait()
    assert removed == {n for n, stale in names.items() if stale}
    assert {p.name for p in tmp_path.iterdir()} == {n for n, stale in names.items() if not stale}


@pytest.mark.slow  # a subprocess or a large file
def test_training_removes_orphan_temps_of_a_killed_run(tmp_path):
    data = write_folder_dataset(tmp_path / "d", counts=(8, 6, 6))
    rdir = tmp_path / "r" / "v1" / "fold0"
    rdir.mkdir(parents=True)
    for name in (".last.pt.4194999.cafef00d.tmp", "last.pt.x1y2z3w4.tmp", ".best.pt.4194998.00000000.tmp"):
        (rdir / name).write_bytes(b"\0" * 1000)
    (rdir.parent / ".split.json.4194997.12345678.tmp").write_text("{")
    cfg = resolve("v1", tiny_overrides(data, tmp_path / "r", model="tiny_convnext", epochs=1))
    engine.fit(cfg, 0, **QUIET)
    assert temps(tmp_path) == []


def test_two_processes_saving_the_same_split_never_collide(tmp_path):
    paths = [f"/d/{i}.png" for i in range(50)]
    split = {"seed": 0, "test": list(range(10)), "folds": [{"train": list(range(10, 50)), "val": []}],
             "kept_in_train": {}, "notes": []}
    errors = []

    def writer():
        try:
            for _ in range(30):
                save_split(str(tmp_path / "split.json"), split, paths)
                assert load_split(str(tmp_path / "split.json"), paths)["test"] == split["test"]
        except Exception as err:  # collected: a failing thread must fail the test
            errors.append(err)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and temps(tmp_path) == []


@pytest.mark.slow  # a subprocess or a large file
def test_a_full_disk_while_training_is_one_line_and_leaves_no_temp(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--version", "v1", "--out", str(tmp_path / "runs"),
                           *TINY], env=ENV, capture_output=True, text=True, timeout=300,
                          preexec_fn=file_size_limit(8192))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    line, = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / 'runs' / 'v1' / 'fold0'}/") and \
        "File too large while writing; the file there is unchanged" in line, line
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
