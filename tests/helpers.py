"""Tiny data sets the tests write themselves (no network, nothing from ../shared)."""

from __future__ import annotations

import importlib.util
import json
import os
import resource
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
# subprocesses of the tests: one thread each, the checkout importable
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
AS_ROOT = os.geteuid() == 0
needs_non_root = pytest.mark.skipif(AS_ROOT, reason="root reads and writes through any permission bits")
# train.py flags of a one-epoch tiny v1 run (random init, 32x32, CPU)
TINY = ["--version", "v1", "--model", "tiny_convnext", "--pretrained", "none", "--img-size", "32", "--epochs", "1",
        "--batch-size", "8", "--workers", "1", "--eval-batch-size", "64", "--device", "cpu"]
TINY_B0 = [*TINY[:3], "tiny_efficientnet", *TINY[4:]]

# Three imbalanced classes with distinct colours, so that a tiny model learns something in one epoch.
COLOURS = {"shirts": (220, 40, 40), "shoes": (40, 200, 60), "watches": (50, 60, 230)}


def write_folder_dataset(root: Path, counts=(30, 14, 6), size=(20, 16), seed=0) -> Path:
    """root/<class>/<i>.png, `counts` images per class, H x W = size, noisy class colours."""
    rng = np.random.default_rng(seed)
    for (name, colour), count in zip(COLOURS.items(), counts):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = np.clip(np.array(colour) + rng.normal(0, 40, size=(*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}_{i:03d}.png")
    return root


def tiny_overrides(data: Path, out: Path, **extra) -> dict:
    """Config overrides that make any preset train in a second or two on a CPU."""
    values = dict(data=str(data), out=str(out), cache_dir=str(out / "cache"), pretrained=None,
                  img_size=(32, 32), epochs=2, batch_size=8, workers=1, eval_batch_size=64, test_frac=0.2)
    values.update(extra)
    return values


def cli(module, *args, capsys):
    """Run a script's main exactly as its __main__ does; -> (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exited:
        run_cli(lambda: module.main([str(a) for a in args]))
    out, err = capsys.readouterr()
    return exited.value.code or 0, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def snapshot(folder: Path) -> dict:
    """{relative path: file bytes} of everything under folder: equal snapshots mean nothing changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def load_bench_script(monkeypatch, name: str):
    """bench/<name>.py as a module (bench/ is not a package; its scripts import their neighbours by name)."""
    bench = Path(__file__).resolve().parents[1] / "bench"
    monkeypatch.syspath_prepend(str(bench))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", bench / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def temps(folder: Path) -> list[Path]:
    return [p for p in Path(folder).rglob("*") if p.name.endswith(".tmp")]


def skipped_entries(path: Path) -> list[dict]:
    return json.loads(path.read_text())["skipped"]


def write_image(path: Path, colour=(200, 30, 30), size=(20, 16), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 30, size=(*size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def write_kaggle(root: Path, per_class=8, extra_rows=(), bom=False) -> Path:
    """root/styles.csv + root/images/<id>.jpg, three classes; extra_rows are appended verbatim."""
    rows, next_id = ["id,gender,subCategory,productDisplayName"], 1
    for k, (name, colour) in enumerate(COLOURS.items()):
        for i in range(per_class):
            write_image(root / "images" / f"{next_id}.jpg", colour, seed=next_id)
            rows.append(f"{next_id},Men,{name},thing {next_id}")
            next_id += 1
    rows += list(extra_rows)
    (root / "styles.csv").write_bytes(("\ufeff" if bom else "").encode() + ("\n".join(rows) + "\n").encode())
    return root


def an_image(folder: Path) -> Path:
    """One grey 16 x 20 PNG in folder."""
    path = folder / "one.png"
    Image.fromarray(np.full((16, 20, 3), 120, np.uint8)).save(path)
    return path


def file_size_limit(limit: int):
    """A subprocess preexec_fn: no file of the child may grow past `limit` bytes (a full disk, as the child sees
    it: writes past it fail with EFBIG)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
