"""Bad input and faults (issue 8): each case ends with a one-line message, a skipped.json entry, or a recovery.

No traceback, no hang, nothing silently wrong. The CLI cases run train.py / predict.py in-process through
run_cli (the same code path as the command line, without paying a Python start per case); the few that need
a real process (a broken pipe, a file size limit, a FIFO that could hang) use a subprocess with a timeout.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import predict as predict_script
import train as train_script
from imgcls import checkpoint, engine
from imgcls.presets import resolve
from imgcls.data import load_dataset, load_index
from imgcls.data import cache as cache_mod
from imgcls.data.cache import decode_images, default_cache_dir, resolve_cache_dir
from imgcls.data.splits import load_split, save_split
from imgcls.fsio import atomic_write, clean_stale_temps
from tests.helpers import (COLOURS, assert_one_line_error, cli, skipped_entries, temps, tiny_overrides,
                           write_folder_dataset, write_image, write_kaggle)

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
AS_ROOT = os.geteuid() == 0
needs_non_root = pytest.mark.skipif(AS_ROOT, reason="root reads and writes through any permission bits")
QUIET = dict(log=lambda *a, **k: None)
TINY = ["--version", "v1", "--model", "tiny_convnext", "--pretrained", "none", "--img-size", "32", "--epochs", "1",
        "--batch-size", "8", "--workers", "1", "--eval-batch-size", "64", "--device", "cpu"]


# --- 1. duplicates -------------------------------------------------------------------------------------------

def test_duplicate_ids_keep_the_first_are_listed_and_never_cross_the_split(tmp_path, capsys):
    # id 1 is a shirt; a second row calls it a shoe (conflict), id 2 repeats with the same label.
    data = write_kaggle(tmp_path / "k", extra_rows=["1,Men,shoes,thing 1 again", "2,Men,shirts,thing 2 again"])
    code, out, err = cli(train_script, "--data", data, "--out", tmp_path / "runs", "--cache-dir", "none",
                         "--label-col", "subCategory", *TINY, capsys=capsys)
    assert code == 0, err
    summary = [line for line in out.splitlines() if "skipped 2 item(s)" in line]
    assert len(summary) == 1 and "duplicate id with a different label" in summary[0], out
    entries = skipped_entries(tmp_path / "runs" / "v1" / "fold0" / "skipped.json")
    reasons = {e["item"].split(" (")[0]: e["reason"] for e in entries}
    assert reasons == {"styles.csv row 26": "duplicate id with a different label (kept the first)",
                       "styles.csv row 27": "duplicate of an earlier row (kept the first)"}
    assert "first at row 2 as 'shirts', here 'shoes'" in entries[0]["item"]

    index = load_index(str(data), "subCategory", **QUIET)
    assert len(index.paths) == len(set(index.paths)) == 24
    first = index.paths.index(str(data / "images" / "1.jpg"))
    assert index.class_names[index.labels[first]] == "shirts"  # the first row's label
    split = load_split(str(tmp_path / "runs" / "v1" / "split.json"), index.paths)
    test = {index.paths[i] for i in split["test"]}
    for fold in split["folds"]:
        train, val = ({index.paths[i] for i in fold[part]} for part in ("train", "val"))
        assert not (train & val) and not (train & test) and not (val & test)
        assert len(train | val | test) == 24


def test_duplicate_paths_in_a_manifest_keep_the_first(tmp_path):
    for name in COLOURS:
        for i in range(4):
            write_image(tmp_path / name / f"{i}.png", COLOURS[name], seed=i)
    lines = ["path,label"] + [f"{n}/{i}.png,{n}" for n in COLOURS for i in range(4)]
    lines += ["./shirts/0.png,shoes", str(tmp_path / "shirts" / "1.png") + ",shirts"]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    index = load_index(str(tmp_path / "m.csv"), **QUIET)
    assert len(index.paths) == len(set(index.paths)) == 12
    assert [why for _, why in index.skipped] == ["duplicate id with a different label (kept the first)",
                                                 "duplicate of an earlier row (kept the first)"]
    assert index.skipped[0][0].startswith("m.csv row 14 (./shirts/0.png), first at row 2")


# --- 2. unreadable folders and files -------------------------------------------------------------------------

@needs_non_root
def test_unreadable_class_folder_is_listed_not_dropped_silently(tmp_path):
    data = write_folder_dataset(tmp_path / "d")
    (data / "shoes").chmod(0)
    try:
        index = load_index(str(data), **QUIET)
    finally:
        (data / "shoes").chmod(0o755)
    assert "shoes" not in index.class_names
    assert (str(data / "shoes"), "unreadable folder: Permission denied") in index.skipped


@needs_non_root
def test_unreadable_image_file_is_listed_like_an_undecodable_one(tmp_path):
    data = write_folder_dataset(tmp_path / "d")
    bad = data / "shoes" / "shoes_000.png"
    bad.chmod(0)
    ds = load_dataset(str(data), cache_dir=None, workers=1, **QUIET)
    assert [(item, why.split(":")[0]) for item, why in ds.skipped] == [(str(bad), "undecodable")]
    assert "Permission denied" in ds.skipped[0][1]


def test_walk_errors_are_reported_through_onerror(tmp_path, monkeypatch):
    """Runs as root too: a folder that vanishes between listing and walking raises inside os.walk."""
    data = write_folder_dataset(tmp_path / "d")
    real_walk = os.walk

    def walk_with_error(top, onerror=None, **kw):
        if top.endswith("shoes"):
            onerror(PermissionError(13, "Permission denied", top))
            return iter(())
        return real_walk(top, onerror=onerror, **kw)

    monkeypatch.setattr(os, "walk", walk_with_error)
    index = load_index(str(data), **QUIET)
    assert (str(data / "shoes"), "unreadable folder: Permission denied") in index.skipped


@needs_non_root
def test_unreadable_styles_csv_is_one_line(tmp_path, capsys):
    data = write_kaggle(tmp_path / "k")
    (data / "styles.csv").chmod(0)
    code, _, err = cli(train_script, "--data", data, "--out", tmp_path / "r", *TINY, capsys=capsys)
    assert_one_line_error(code, err, "styles.csv", "cannot read")


# --- 3. the decode cache on by default -----------------------------------------------------------------------

def test_default_cache_location_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == str(tmp_path / "xdg" / "imgcls") == resolve_cache_dir("default")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == str(tmp_path / "home" / ".cache" / "imgcls")
    assert resolve_cache_dir("none") is None and resolve_cache_dir(None) is None
    assert resolve_cache_dir(str(tmp_path / "c")) == str(tmp_path / "c")
    assert resolve("v1", {}).cache_dir == "default"


def test_command_line_caches_by_default_and_none_turns_it_off(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    data = write_folder_dataset(tmp_path / "d", counts=(10, 8, 6))
    code, out, err = cli(train_script, "--data", data, "--out", tmp_path / "r1", *TINY, capsys=capsys)
    assert code == 0, err
    cached = sorted(p.name for p in (tmp_path / "xdg" / "imgcls").iterdir())
    decoded = [name for name in cached if name.startswith("decoded-")]  # and size-<key>.json, the size found
    assert len(decoded) == 2 and decoded[0].endswith(".json") and decoded[1].endswith(".npy") and len(cached) == 3
    assert f"decode cache: {tmp_path / 'xdg' / 'imgcls'} (0 MiB in use" in out
    code, out, err = cli(train_script, "--data", data, "--out", tmp_path / "r2", *TINY, capsys=capsys)
    assert code == 0 and "loaded 24 from cache" in out, out + err
    code, out, err = cli(train_script, "--data", data, "--out", tmp_path / "r3", "--cache-dir", "none", *TINY,
                         capsys=capsys)
    assert code == 0 and "decode cache" not in out and "from cache" not in out


def test_bench_measures_the_default_cache_path(tmp_path, monkeypatch):
    """bench/data.py loads through the resolved Config: it writes and reads the default cache, like train.py."""
    from helpers import load_bench_script
    bench = load_bench_script(monkeypatch, "data")  # with bench/ on the path, for its common.py
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    data = write_folder_dataset(tmp_path / "d", counts=(4, 3, 2))
    logged = []
    bench.load_like_train_py(str(data), log=logged.append)
    assert len(list((tmp_path / "xdg" / "imgcls").glob("decoded-*.npy"))) == 1
    logged.clear()
    bench.load_like_train_py(str(data), log=logged.append)
    assert any("from cache" in line for line in logged)


# --- 4. file names that are not UTF-8, FIFOs -----------------------------------------------------------------

def test_non_utf8_file_name_trains_and_predicts(tmp_path, capsys):
    data = write_folder_dataset(tmp_path / "d", counts=(10, 8, 6))
    odd = os.fsencode(data / "shoes") + b"/caf\xe9-\xff.png"  # Latin-1 bytes: not valid UTF-8
    os.rename(os.fsencode(data / "shoes" / "shoes_000.png"), odd)
    code, out, err = cli(train_script, "--data", data, "--out", tmp_path / "r", "--cache-dir", tmp_path / "c",
                         *TINY, capsys=capsys)
    assert code == 0, err
    index = load_index(str(data), **QUIET)
    assert os.fsdecode(odd) in index.paths and not index.skipped
    code, out, err = cli(predict_script, "--run", tmp_path / "r" / "v1", "--images", os.fsdecode(odd),
                         "--device", "cpu", "--out", tmp_path / "p" / "predictions.csv", capsys=capsys)
    assert code == 0, err
    rows = (tmp_path / "p" / "predictions.csv").read_bytes().splitlines()
    assert len(rows) == 2 and odd in rows[1]  # the path as its bytes on disk


def test_fifo_is_skipped_before_any_open(tmp_path):
    data = write_folder_dataset(tmp_path / "d", counts=(6, 6, 6))
    os.mkfifo(data / "shoes" / "x.jpg")
    os.mkfifo(tmp_path / "y.jpg")
    script = (f"from imgcls.data import load_dataset\n"
              f"from imgcls.data.cache import decode_images\n"
              f"ds = load_dataset({str(data)!r}, cache_dir=None, workers=1, log=lambda *a: None)\n"
              f"print(repr(ds.skipped))\n"
              f"_, ok, why = decode_images([{str(tmp_path / 'y.jpg')!r}], (8, 8), None, 1, log=lambda *a: None)\n"
              f"print(bool(ok[0]), why[0])\n")
    proc = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    listed, decoded = proc.stdout.strip().splitlines()
    assert eval(listed) == [(str(data / "shoes" / "x.jpg"),
                             "not a regular file (a folder, FIFO, device or socket): not opened")]
    assert decoded == "False not a regular file (a folder, FIFO, device or socket): not opened"


# --- 5. the cache is best-effort -----------------------------------------------------------------------------

@pytest.fixture
def small_paths(tmp_path):
    data = write_folder_dataset(tmp_path / "d", counts=(4, 3, 2))
    return sorted(str(p) for p in data.rglob("*.png"))


@pytest.mark.parametrize("damage", ["empty_npy", "truncated_npy", "json_wrong_shape", "json_not_json",
                                    "wrong_count"])
def test_damaged_cache_is_decoded_again_and_said(small_paths, tmp_path, damage):
    cache_dir = tmp_path / "cache"
    # a copy: the tensor maps the file, which this test damages in place (imgcls itself only renames over it)
    reference = decode_images(small_paths, None, str(cache_dir), 1, **QUIET)[0].clone()
    npy = next(cache_dir.glob("*.npy"))
    meta = npy.with_suffix(".json")
    if damage == "empty_npy":
        npy.write_bytes(b"")
    elif damage == "truncated_npy":
        npy.write_bytes(npy.read_bytes()[:200])
    elif damage == "json_wrong_shape":
        meta.write_text(json.dumps([1, 2, 3]))
    elif damage == "json_not_json":
        meta.write_text("{")
    else:
        meta.write_text(json.dumps({"ok": [True] * 3, "reasons": [""] * 3}))
    logged = []
    again, ok2, _ = decode_images(small_paths, None, str(cache_dir), 1, log=logged.append)
    assert torch.equal(again, reference) and ok2.all()
    said = [line for line in logged if "unreadable" in line]
    assert len(said) == 1 and str(npy) in said[0] and "decoding again" in said[0]
    # and it was rewritten: the next start reads it
    logged.clear()
    decode_images(small_paths, None, str(cache_dir), 1, log=logged.append)
    assert any("from cache" in line for line in logged)


def test_unusable_cache_folder_is_one_warning_and_the_run_goes_on(small_paths, tmp_path):
    (tmp_path / "afile").write_text("x")
    logged = []
    images, ok, _ = decode_images(small_paths, None, str(tmp_path / "afile" / "cache"), 1, log=logged.append)
    assert ok.all() and images.shape[0] == len(small_paths)
    warnings = [line for line in logged if line.startswith("warning: could not write the decode cache")]
    assert len(warnings) == 1 and "continuing without it" in warnings[0]


@needs_non_root
def test_read_only_cache_folder_is_one_warning(small_paths, tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    logged = []
    _, ok, _ = decode_images(small_paths, None, str(tmp_path / "ro"), 1, log=logged.append)
    assert ok.all() and sum("could not write the decode cache" in line for line in logged) == 1
    assert list((tmp_path / "ro").iterdir()) == []


def test_full_disk_while_writing_the_cache_leaves_no_temp(small_paths, tmp_path):
    """`ulimit -f`: writes past 64 KiB fail with EFBIG (Python ignores SIGXFSZ), like a full disk."""
    cache_dir = tmp_path / "cache"
    script = (f"from imgcls.data.cache import decode_images\n"
              f"paths = {small_paths!r}\n"
              f"images, ok, _ = decode_images(paths, (64, 64), {str(cache_dir)!r}, 1)\n"
              f"print('decoded', int(ok.sum()))\n")
    limit = 64 * 1024  # the pixels are 9 x 3 x 64 x 64 = 110 KiB
    proc = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "decoded 9" in proc.stdout
    assert sum("warning: could not write the decode cache" in line for line in proc.stdout.splitlines()) == 1
    assert "(OSError: " in proc.stdout  # numpy words EFBIG as "N requested and M written"
    assert list(cache_dir.iterdir()) == []  # no partial .npy, no temp


# --- 6. checkpoints ------------------------------------------------------------------------------------------

class Booby:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 1-fold tiny run."""
    root = tmp_path_factory.mktemp("run")
    data = write_folder_dataset(root / "data", counts=(12, 8, 6))
    cfg = resolve("v1", tiny_overrides(data, root / "runs", model="tiny_convnext", epochs=1))
    engine.fit(cfg, 0, **QUIET)
    return root / "runs" / "v1", data


@pytest.mark.parametrize("content,fragments", [
    (b"", ["empty file (0 bytes)", "not an imgcls checkpoint"]),
    ("tensor", ["not an imgcls checkpoint", "holds a Tensor"]),
    ("dict", ["not an imgcls checkpoint", "no 'model'", "'class_names'"]),
    ("evil", ["holds code or objects other than tensors and was refused; only load files you trust"]),
    (b"PK\x03\x04 truncated", ["not a readable imgcls checkpoint"]),
])
def test_foreign_checkpoints_are_one_line(run, tmp_path, capsys, content, fragments):
    bad = tmp_path / "bad.pt"
    if content == "tensor":
        torch.save(torch.zeros(3), bad)
    elif content == "dict":
        torch.save({"weights": torch.zeros(3), "epoch": 1}, bad)
    elif content == "evil":
        bad.write_bytes(pickle.dumps({"model": Booby()}))
    else:
        bad.write_bytes(content)
    code, out, err = cli(predict_script, "--checkpoint", bad, "--images", run[1] / "shoes" / "shoes_000.png",
                         "--device", "cpu", capsys=capsys)
    assert_one_line_error(code, err, str(bad), *fragments)
    assert "weights_only" not in err and "Re-running" not in err and "pwned" not in out


def test_empty_last_pt_is_one_line_naming_it(tmp_path, capsys):
    data = write_folder_dataset(tmp_path / "d", counts=(8, 6, 6))
    (tmp_path / "r" / "v1" / "fold0").mkdir(parents=True)
    (tmp_path / "r" / "v1" / "fold0" / "last.pt").write_bytes(b"")
    code, _, err = cli(train_script, "--data", data, "--out", tmp_path / "r", "--cache-dir", "none", *TINY,
                       capsys=capsys)
    assert_one_line_error(code, err, str(tmp_path / "r" / "v1" / "fold0" / "last.pt"), "empty file")


# --- 7. atomic writes, stale temps, permissions --------------------------------------------------------------

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


# --- 8. encodings --------------------------------------------------------------------------------------------

def test_styles_csv_with_a_bom_is_read(tmp_path):
    data = write_kaggle(tmp_path / "k", per_class=3, bom=True)
    index = load_index(str(data), "subCategory", **QUIET)
    assert len(index.paths) == 9 and index.class_names == sorted(COLOURS)


def test_manifest_with_a_bom_is_read_and_latin1_is_one_line_naming_the_row(tmp_path, capsys):
    for i, name in enumerate(COLOURS):
        for j in range(3):
            write_image(tmp_path / f"{name}{j}.png", COLOURS[name], seed=j)
    body = "path,label\n" + "".join(f"{n}{j}.png,{n}\n" for n in COLOURS for j in range(3))
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + body.encode())
    assert len(load_index(str(tmp_path / "bom.csv"), **QUIET).paths) == 9
    (tmp_path / "latin1.csv").write_bytes((body + "shirts0.png,chemis\xe9\n").encode("latin-1"))
    code, _, err = cli(train_script, "--data", tmp_path / "latin1.csv", "--out", tmp_path / "r", *TINY,
                       capsys=capsys)
    assert_one_line_error(code, err, str(tmp_path / "latin1.csv"), "row 11 is not UTF-8", "0xe9")


# --- 9. flag values ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,fragments", [
    (["--lr", "nan"], ["--lr nan", "> 0"]),
    (["--lr", "inf"], ["--lr inf"]),
    (["--batch-size", "0"], ["--batch-size 0", "[1, 4096]"]),
    (["--eval-batch-size", "0"], ["--eval-batch-size 0"]),
    (["--swa-freq", "0"], ["--swa-freq 0"]),
    (["--epochs", "0"], ["--epochs 0"]),
    (["--hflip", "1.5"], ["--hflip 1.5", "[0, 1]"]),
    (["--test-frac", "-0.1"], ["--test-frac -0.1"]),
    (["--betas", "0.9,nan"], ["--betas 0.9,nan"]),
    (["--device", "foo"], ["--device foo", "auto, cpu, cuda"]),
    (["--device", "cuda:99"], ["--device cuda:99"]),
])
def test_bad_train_flags_are_one_line(args, fragments, tmp_path, capsys):
    code, _, err = cli(train_script, "--out", tmp_path, *args, capsys=capsys)
    assert_one_line_error(code, err, *fragments)
    assert list(tmp_path.iterdir()) == []


def test_out_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    code, _, err = cli(train_script, "--out", tmp_path / "f", capsys=capsys)
    assert_one_line_error(code, err, f"--out {tmp_path / 'f'}", "is a file")
    code, _, err = cli(train_script, "--out", tmp_path / "f" / "sub", capsys=capsys)
    assert_one_line_error(code, err, "--out", "is a file, not a folder")


@needs_non_root
def test_unwritable_out_is_one_line(tmp_path, capsys):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    code, _, err = cli(train_script, "--out", tmp_path / "ro" / "runs", capsys=capsys)
    assert_one_line_error(code, err, "--out", "not writable")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_predict_device_cuda_without_cuda_is_one_line(run, capsys):
    code, _, err = cli(predict_script, "--run", run[0], "--device", "cuda", capsys=capsys)
    assert_one_line_error(code, err, "--device cuda", "CUDA is not available")


@pytest.mark.parametrize("args,fragments", [
    (["--batch-size", "0"], ["--batch-size 0"]),
    (["--logit-adjust", "nan"], ["--decision-tau nan", "[-10, 10]"]),  # the old name, refused under the new one
    (["--device", "foo"], ["--device foo"]),
])
def test_bad_predict_flags_are_one_line(run, capsys, args, fragments):
    code, _, err = cli(predict_script, "--run", run[0], *args, capsys=capsys)
    assert_one_line_error(code, err, *fragments)


def test_predict_out_that_is_a_folder_is_one_line_and_leaves_nothing(run, tmp_path, capsys):
    (tmp_path / "dir").mkdir()
    code, _, err = cli(predict_script, "--run", run[0], "--device", "cpu", "--out", tmp_path / "dir",
                       capsys=capsys)
    assert_one_line_error(code, err, f"--out {tmp_path / 'dir'}", "is a folder")
    assert sorted(tmp_path.rglob("*")) == [tmp_path / "dir"]


def test_list_models_into_a_closed_pipe_is_quiet():
    """`train.py --list-models | head -1`: the reader is gone before we write."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--list-models"], env=ENV, stdout=write_end,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(write_end)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


# --- 10. predict: NaN, unfinished runs, old skipped.json -----------------------------------------------------

def test_logit_adjust_nan_writes_nothing(run, capsys):
    out = run[0] / "predict-test" / "predictions.csv"
    code, _, err = cli(predict_script, "--run", run[0], "--device", "cpu", capsys=capsys)
    assert code == 0, err
    before = out.read_bytes()
    code, _, err = cli(predict_script, "--run", run[0], "--device", "cpu", "--decision-tau", "nan",
                       capsys=capsys)
    assert_one_line_error(code, err, "--decision-tau nan")
    assert out.read_bytes() == before


def test_predict_on_an_unfinished_run_warns(run, tmp_path, capsys):
    metrics = run[0] / "fold0" / "metrics.json"
    saved = metrics.read_bytes()
    metrics.unlink()  # what a run killed before its end looks like: last.pt, best_epoch.pt, no metrics.json
    try:
        code, out, err = cli(predict_script, "--run", run[0], "--device", "cpu", "--out",
                             tmp_path / "p.csv", capsys=capsys)
    finally:
        metrics.write_bytes(saved)
    assert code == 0, err
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "training has not finished" in warnings[0] and str(run[0] / "fold0") in warnings[0]
    code, out, err = cli(predict_script, "--run", run[0], "--device", "cpu", "--out", tmp_path / "p.csv",
                         capsys=capsys)
    assert "warning:" not in out


def test_old_skipped_json_is_replaced_or_removed(run, tmp_path, capsys):
    good = run[1] / "shoes" / "shoes_000.png"
    (tmp_path / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "p" / "predictions.csv"
    code, _, err = cli(predict_script, "--run", run[0], "--device", "cpu", "--out", out, "--images", good,
                       tmp_path / "broken.png", capsys=capsys)
    assert code == 0, err
    assert [e["item"] for e in skipped_entries(out.with_suffix("") / "skipped.json")] == [str(tmp_path / "broken.png")]
    code, _, err = cli(predict_script, "--run", run[0], "--device", "cpu", "--out", out, "--images", good,
                       capsys=capsys)
    assert code == 0, err
    assert not (out.with_suffix("") / "skipped.json").exists()


# --- 11. large images ----------------------------------------------------------------------------------------

def test_jpeg_draft_matches_a_full_decode_and_resize(tmp_path):
    rng = np.random.default_rng(0)
    # smooth content (a real photo's spectrum); DCT scaling and a bilinear resize then agree closely
    base = rng.integers(0, 256, size=(12, 16, 3)).astype(np.uint8)
    big = Image.fromarray(base).resize((640, 480), Image.BICUBIC)
    big.save(tmp_path / "big.jpg", quality=95)
    ours = cache_mod._decode_file(str(tmp_path / "big.jpg"), (60, 80))
    with Image.open(tmp_path / "big.jpg") as im:
        full = np.asarray(im.convert("RGB").resize((80, 60), Image.BILINEAR)).transpose(2, 0, 1)
    diff = np.abs(ours.astype(int) - full.astype(int))
    assert ours.shape == (3, 60, 80) and diff.mean() < 3 and diff.max() < 40
    with Image.open(tmp_path / "big.jpg") as im:  # and draft is what made it cheap: 1/8 scale is 80x60
        im.draft(im.mode, (80, 60))
        assert im.size == (80, 60)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A valid PNG signature + IHDR of the given size and a tiny IDAT: the header is all we must read."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\0" * (width + 1) * 4)  # the first rows only: decoding it would fail later
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def _decode_one_in_a_fresh_process(path, report: str) -> list[str]:
    """decode_images on one file in a new process: [ok, peak RSS growth in MiB, str(report)] (a fresh process so
    the growth is this decode's alone)."""
    script = (f"import resource\n"
              f"from imgcls.data.cache import decode_images\n"
              f"before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              f"images, ok, why = decode_images([{str(path)!r}], (60, 80), None, 1)\n"
              f"grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
              f"print(bool(ok[0]), grown // 1024, {report})\n")
    proc = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(" ", 2)


def test_huge_png_is_refused_from_its_header_without_decoding(tmp_path):
    _png_header_only(tmp_path / "huge.png", 12000, 12000)
    good, grown_mb, reason = _decode_one_in_a_fresh_process(tmp_path / "huge.png", "why[0]")
    assert good == "False" and reason.startswith("too large to decode: 12000x12000 pixels")
    assert int(grown_mb) < 50  # a full RGB decode would be 412 MiB


def test_big_jpeg_decodes_with_little_memory(tmp_path):
    Image.new("RGB", (6000, 4000), (120, 30, 200)).save(tmp_path / "big.jpg", quality=90)  # 24 MP photo size
    good, grown_mb, pixel = _decode_one_in_a_fresh_process(tmp_path / "big.jpg", "images[0, :, 30, 40].tolist()")
    assert good == "True" and int(grown_mb) < 30  # a full decode is 69 MiB
    assert np.allclose(eval(pixel), [120, 30, 200], atol=3)
