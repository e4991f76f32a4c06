"""imgcls.load(...).predict(...): inputs of every kind, ensembles with the preset's TTA, and equality with
predict.py's predictions.csv; plus the installed package working outside the checkout."""

from __future__ import annotations

import csv
import os
import subprocess
import sysconfig
import venv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgcls
from imgcls import checkpoint, engine
from imgcls.api import list_images, pil_to_uint8
from imgcls.data.augment import eval_transform
from imgcls.data.cache import decode_images
from imgcls.errors import UserError
from imgcls.models import create_model
from imgcls.predict import predict
from imgcls.presets import resolve
from imgcls.tta import TTA_VIEWS, tta_view
from predict import build_parser
from tests.helpers import (
    tiny_overrides,
    write_folder_dataset,
)

QUIET = dict(log=lambda *a, **k: None)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-fold v2.1 run (its preset turns TTA on) on tiny generated images stored at 20x16."""
    root = tmp_path_factory.mktemp("api")
    data = write_folder_dataset(root / "data")
    cfg = resolve("v2.1", tiny_overrides(data, root / "runs", model="tiny_convnext", folds="2", epochs=2,
                                         swa_start=None, early_stop=None, warmup_epochs=0))
    for fold in (0, 1):
        engine.fit(cfg, fold, **QUIET)
    images = sorted((data).rglob("*.png"))
    return root / "runs" / "v2.1", data, images


def reference_probs(fold_dirs, pixels: torch.Tensor, views) -> np.ndarray:
    """Mean over folds and views of softmax(model(view(normalised resize))), written out by hand."""
    total = 0
    for rdir in fold_dirs:
        state = checkpoint.load(rdir / "shipped.pt")
        model = create_model(state["model_name"], state["num_classes"], **QUIET)
        model.load_state_dict(state["model"])
        model.eval()
        pre = state["preprocessing"]
        x = eval_transform(pixels, tuple(pre["img_size"]), pre["mean"], pre["std"])
        with torch.no_grad():
            for v in views:
                total = total + torch.softmax(model(tta_view(x, v)), 1).numpy()
    return total / (len(fold_dirs) * len(views))


def test_run_folder_is_its_fold_ensemble_with_the_presets_tta(run):
    run_dir, _, images = run
    clf = imgcls.load(run_dir)
    assert clf.views == TTA_VIEWS and len(clf.members) == 2
    paths = [str(p) for p in images[::5]]
    pixels, ok, _ = decode_images(paths, size=(20, 16), cache_dir=None, workers=1, **QUIET)
    expected = reference_probs([run_dir / "fold0", run_dir / "fold1"], pixels, TTA_VIEWS)
    got = clf.predict(paths, top_k=3)
    assert [g.label for g in got] == [clf.classes[i] for i in expected.argmax(1)]
    np.testing.assert_allclose([g.probability for g in got], expected.max(1), atol=1e-5)
    assert all(len(g.top_k) == 3 and g.top_k[0] == (g.label, g.probability) for g in got)
    assert all(g.top_k[0][1] >= g.top_k[1][1] >= g.top_k[2][1] for g in got)
    assert clf.classes == ["shirts", "shoes", "watches"]
    assert clf.preprocessing["storage_size"] == (20, 16) and clf.preprocessing["img_size"] == (32, 32)


def test_one_fold_or_checkpoint_without_tta(run):
    run_dir, _, images = run
    clf = imgcls.load(run_dir / "fold1" / "shipped.pt", tta=False)
    assert clf.views == ("identity",) and len(clf.members) == 1
    pixels, _, _ = decode_images([str(images[0])], size=(20, 16), cache_dir=None, workers=1, **QUIET)
    expected = reference_probs([run_dir / "fold1"], pixels, ("identity",))
    np.testing.assert_allclose(clf.predict(images[0], top_k=1)[0].probability, expected.max(), atol=1e-5)
    assert len(imgcls.load(run_dir, fold=0).members) == 1


def test_every_input_kind_gives_the_same_probabilities(run, tmp_path):
    run_dir, data, images = run
    clf = imgcls.load(run_dir)
    picked = images[:4]
    by_path = clf.predict([str(p) for p in picked])
    pil = [Image.open(p) for p in picked]
    tensor = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB")).transpose(2, 0, 1).copy()) for im in pil])
    folder = tmp_path / "unlabeled" / "deeper"
    folder.mkdir(parents=True)
    for p in picked:
        (folder / p.name).write_bytes(p.read_bytes())
    by_folder = clf.predict(tmp_path / "unlabeled")  # recursive, sorted by path
    order = sorted(range(len(picked)), key=lambda i: str(folder / picked[i].name))
    for other in (clf.predict(pil[0]) + clf.predict(pil[1:]), clf.predict(tensor),
                  [by_folder[order.index(i)] for i in range(len(picked))]):
        assert [o.label for o in other] == [b.label for b in by_path]
        np.testing.assert_allclose([o.probability for o in other], [b.probability for b in by_path], atol=1e-6)
    assert by_folder[0].source.endswith(".png")


def test_inputs_at_another_size_are_resized_like_files(tmp_path):
    """A PIL image or tensor of another size goes through the decoder's own resize (PIL bilinear)."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(37, 23, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "odd.png")
    decoded, _, _ = decode_images([str(tmp_path / "odd.png")], size=(20, 16), cache_dir=None, workers=1, **QUIET)
    assert torch.equal(pil_to_uint8(Image.fromarray(pixels), (20, 16)), decoded[0])
    assert list_images(tmp_path) == [str(tmp_path / "odd.png")]


def test_api_equals_predict_py_predictions_csv(run, tmp_path):
    run_dir, _, images = run
    files = [str(p) for p in images[::3]]
    out = tmp_path / "pred.csv"
    predict(build_parser().parse_args(["--run", str(run_dir), "--tta", "--images", *files, "--out", str(out)]),
            **QUIET)
    rows = list(csv.DictReader(open(out)))
    got = imgcls.load(run_dir).predict(files, top_k=5)
    assert [r["path"] for r in rows] == [g.source for g in got]
    assert [r["label"] for r in rows] == [g.label for g in got]
    for r, g in zip(rows, got):
        assert [r[f"top{k}"] for k in range(1, 4)] == [name for name, _ in g.top_k]
        np.testing.assert_allclose([float(r[f"top{k}_prob"]) for k in range(1, 4)], [p for _, p in g.top_k],
                                   atol=1e-6)


def test_errors_name_the_input(run, tmp_path):
    run_dir, _, _ = run
    clf = imgcls.load(run_dir)
    with pytest.raises(UserError, match="nope.png"):
        clf.predict(tmp_path / "nope.png")
    with pytest.raises(UserError, match="nope.png"):
        clf.predict([str(tmp_path / "nope.png")])
    with pytest.raises(UserError, match="uint8"):
        clf.predict(torch.zeros(1, 3, 20, 16))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no image files"):
        clf.predict(tmp_path / "empty")
    with pytest.raises(UserError, match="pick a version: .*v2.1"):
        imgcls.load(run_dir.parent)  # a root of versions
    with pytest.raises(UserError, match="no such run folder"):
        imgcls.load(tmp_path / "missing")


def _requirements(path: Path) -> list[str]:
    lines = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
    return sorted(ln for ln in lines if ln)


def test_pyproject_dependencies_are_requirements_txt():
    import tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert sorted(project["dependencies"]) == _requirements(REPO / "requirements.txt")


def test_pip_install_then_load_outside_the_checkout(run, tmp_path):
    """A fresh venv that sees the shared site-packages (so nothing is downloaded), `pip install --no-deps
    --no-build-isolation` of a copy of the package, then imgcls.load from another folder."""
    import shutil
    run_dir, _, images = run
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "imgcls", src / "imgcls", ignore=shutil.ignore_patterns("__pycache__"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                      text=True).strip()
    # The new venv's own site-packages comes first; the shared one (torch, pip, setuptools) after it.
    Path(purelib, "shared.pth").write_text(sysconfig.get_path("purelib") + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", str(src)], check=True, env=env, cwd=tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    code = ("import imgcls, sys; clf = imgcls.load(sys.argv[1]); p = clf.predict(sys.argv[2])[0]; "
            "print(imgcls.__file__); print(p.label, round(p.probability, 6))")
    out = subprocess.run([str(python), "-c", code, str(run_dir), str(images[0])], check=True, env=env,
                         cwd=outside, capture_output=True, text=True).stdout.splitlines()
    assert out[0].startswith(purelib) and str(REPO) not in out[0]
    expected = imgcls.load(run_dir).predict(images[0])[0]
    assert out[1] == f"{expected.label} {round(expected.probability, 6)}"


def test_the_api_refuses_bad_arguments_with_one_line_user_errors(finished_v1):
    run = finished_v1 / "v1"
    with pytest.raises(imgcls.UserError, match="^--device foo: unknown device"):
        imgcls.load(run, device="foo")
    with pytest.raises(imgcls.UserError, match=r"^--batch-size 0: expected a number in \[1, 4096\]"):
        imgcls.load(run, batch_size=0)
    clf = imgcls.load(run)
    with pytest.raises(imgcls.UserError, match="empty list of images"):
        clf.predict([])
    empty = torch.zeros((0, 3, *clf.storage_size), dtype=torch.uint8)
    assert clf.probabilities(empty).shape == (0, len(clf.classes)) and clf.predict(empty) == []
