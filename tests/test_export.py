"""export.py: ONNX (run by onnxruntime) and TorchScript files equal the PyTorch predictions on uint8 input;
the int8 model keeps fp32's top-1."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import export as export_script
import imgcls
from export import main as export_main
from imgcls import checkpoint, engine
from imgcls import export as export_mod
from imgcls.data.augment import resize
from imgcls.errors import UserError
from imgcls.export import axis_matrices, view_matrices
from imgcls.models import create_model
from imgcls.presets import resolve
from imgcls.tta import TTA_VIEWS, tta_view
from tests.helpers import (
    AS_ROOT,
    ENV,
    ROOT,
    assert_one_line_error,
    cli,
    snapshot,
    tiny_overrides,
    write_folder_dataset,
)

pytestmark = pytest.mark.slow  # trains runs or starts processes: outside the fast lane (pytest -m "not slow")

ort = pytest.importorskip("onnxruntime", reason="ONNX parity needs onnxruntime (requirements-dev.txt)")
QUIET = dict(log=lambda *a, **k: None)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs at two storage sizes: 20x16 upsampled to 32x32, and 40x48 shrunk (antialiased) to
    32x36; the first has two folds (an ensemble)."""
    root = tmp_path_factory.mktemp("export")
    small = write_folder_dataset(root / "small", size=(20, 16))
    large = write_folder_dataset(root / "large", size=(40, 48), seed=1)
    cfg = resolve("v1", tiny_overrides(small, root / "runs-small", model="tiny_efficientnet", folds="2",
                                       epochs=3))
    for fold in (0, 1):
        engine.fit(cfg, fold, **QUIET)
    cfg = resolve("v1", tiny_overrides(large, root / "runs-large", model="tiny_convnext", img_size=(32, 36),
                                       epochs=3))
    engine.fit(cfg, 0, **QUIET)
    return root / "runs-small" / "v1", root / "runs-large" / "v1"


@pytest.mark.parametrize("storage,img", [((20, 16), (32, 32)), ((40, 48), (24, 20)), ((30, 30), (30, 30))])
@pytest.mark.parametrize("view", TTA_VIEWS)
def test_view_matrices_equal_resize_then_view(storage, img, view):
    x = torch.rand(3, 3, *storage, generator=torch.Generator().manual_seed(2))
    rows, cols = view_matrices(storage, img, view)
    expected = tta_view(resize(x, img), view)
    torch.testing.assert_close(rows @ x @ cols.T, expected, atol=1e-5, rtol=0)


def test_axis_matrices_refuse_a_non_separable_op():
    with pytest.raises(ValueError, match="separable"):
        axis_matrices(lambda x: x.transpose(-1, -2)[..., :8, :8], 8, 8)  # not a per-axis map


def _uint8(n, size, seed):
    return torch.randint(0, 256, (n, 3, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize("tta", [False, True])
def test_onnx_and_torchscript_equal_pytorch(runs, which, tta, tmp_path):
    run = runs[which]
    clf = imgcls.load(run, tta=tta)
    flags = ["--tta"] if tta else []
    assert export_main(["--run", str(run), "--format", "onnx", "--out", str(tmp_path / "onnx"), *flags]) == 0
    assert export_main(["--run", str(run), "--format", "torchscript", "--out", str(tmp_path / "ts"), *flags]) == 0
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 marks TorchScript deprecated
        scripted = torch.jit.load(str(tmp_path / "ts" / "model.pt"))
    for batch in (1, 7):
        x = _uint8(batch, clf.storage_size, seed=batch)
        expected = clf.probabilities(x)
        np.testing.assert_allclose(session.run(None, {"images": x.numpy()})[0], expected, atol=1e-4, rtol=0)
        with torch.no_grad():
            np.testing.assert_allclose(scripted(x).numpy(), expected, atol=1e-4, rtol=0)
    assert json.loads((tmp_path / "onnx" / "classes.json").read_text()) == clf.classes
    pre = json.loads((tmp_path / "ts" / "preprocessing.json").read_text())
    assert (pre["input"]["height"], pre["input"]["width"]) == clf.storage_size
    assert pre["inside_the_model"]["tta_views"] == list(clf.views)
    assert len(pre["inside_the_model"]["ensemble_of"]) == len(clf.members)


def test_int8_keeps_the_fp32_top1(runs, tmp_path):
    run = runs[0]
    assert export_main(["--run", str(run), "--out", str(tmp_path), "--int8", "--calibration-images", "32"]) == 0
    int8 = ort.InferenceSession(str(tmp_path / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    clf = imgcls.load(run)
    images = clf.images(run.parent.parent / "small")  # the tiny data set's 50 images
    fp32 = clf.probabilities(images.pixels).argmax(1)
    q = int8.run(None, {"images": images.pixels.numpy()})[0].argmax(1)
    assert len(fp32) == 50 and np.mean(q == fp32) >= 0.98
    # the API's int8 path: the same file made on demand inside the run, then reused
    clf8 = imgcls.load(run, int8=True)
    assert (clf8.probabilities(images.pixels).argmax(1) == q).mean() >= 0.98
    assert (run / "export-int8" / "model.int8.onnx").is_file()


def test_export_errors(runs, tmp_path):
    with pytest.raises(UserError, match="--format onnx"):
        export_main(["--run", str(runs[0]), "--format", "torchscript", "--int8"])
    with pytest.raises(UserError, match="no such run"):
        export_main(["--run", str(tmp_path / "none")])


def test_a_runs_decision_tau_is_inside_the_exported_graph(runs, tmp_path):
    """A checkpoint with a logit-adjustment tau (v4 stores one): the API applies decision.adjust per member,
    the ONNX graph does the same as prior-weighted, renormalised probabilities."""
    from imgcls.decision import adjust
    fold = tmp_path / "v4" / "fold0"
    fold.mkdir(parents=True)
    record = checkpoint.read(runs[0] / "fold0" / "shipped.pt")
    record.decision_tau = 1.5
    checkpoint.save(record, fold / "shipped.pt")
    x = _uint8(7, (20, 16), seed=3)
    plain = imgcls.load(runs[0] / "fold0" / "shipped.pt", tta=False).probabilities(x)
    clf = imgcls.load(fold / "shipped.pt", tta=False)
    assert clf.decision_taus == [1.5]
    np.testing.assert_allclose(clf.probabilities(x), adjust(plain, record.train_class_counts, 1.5), atol=1e-6)
    assert export_main(["--run", str(fold / "shipped.pt"), "--out", str(tmp_path / "onnx")]) == 0
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"images": x.numpy()})[0], clf.probabilities(x), atol=1e-4, rtol=0)
    pre = json.loads((tmp_path / "onnx" / "preprocessing.json").read_text())
    assert pre["inside_the_model"]["decision_tau"] == [1.5]


@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize("tta", [False, True])
def test_torch_export_program_equals_pytorch_for_any_batch_and_warns_nothing(runs, which, tta, tmp_path):
    run = runs[which]
    clf = imgcls.load(run, tta=tta)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert export_main(["--run", str(run), "--format", "torch-export", "--out", str(tmp_path / "pt2"),
                            *(["--tta"] if tta else [])]) == 0
    assert [str(w.message) for w in caught] == []
    program = torch.export.load(str(tmp_path / "pt2" / "model.pt2")).module()
    for batch in (1, 7):
        x = _uint8(batch, clf.storage_size, seed=batch)
        with torch.no_grad():
            np.testing.assert_allclose(program(x).numpy(), clf.probabilities(x), atol=1e-4, rtol=0)
    assert json.loads((tmp_path / "pt2" / "preprocessing.json").read_text())["model_file"] == "model.pt2"


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_tf_same_padding_model_exports_without_tracer_warnings_and_matches(fmt, tmp_path):
    """efficientnet_lite0 pads "SAME" from the feature map size: fixed by the Deployable's resize, so the
    tracer's constants are right; the warning is not shown, and the output still matches for two batches."""
    model = create_model("efficientnet_lite0", 4, pretrained=None, log=lambda *a, **k: None).eval()
    module = export_mod.Deployable([model], (30, 40), (30, 40), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = (export_mod.export_onnx if fmt == "onnx" else export_mod.export_torchscript)(
            module, tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt"))
    assert [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)] == []
    for batch in (1, 3):
        x = _uint8(batch, (30, 40), seed=batch)
        with torch.no_grad():
            expected = module(x).numpy()
        if fmt == "onnx":
            got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                got = torch.jit.load(str(path))(x).detach().numpy()
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_export_over_an_earlier_one_on_a_full_disk_keeps_the_earlier_export_whole(finished_v1, tmp_path, capsys):
    out = tmp_path / "export"
    code, _, err = cli(export_script, "--run", finished_v1 / "v1", "--out", out, capsys=capsys)
    assert code == 0, err
    before = snapshot(out)
    assert "model.onnx" in before
    limit = 8 * 1024  # `ulimit -f`: writes past it fail with EFBIG (Python ignores SIGXFSZ), like a full disk
    proc = subprocess.run([sys.executable, str(ROOT / "export.py"), "--run", str(finished_v1 / "v1"), "--out",
                           str(out), "--logit-adjust", "0.5"], env=ENV, capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    line, = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: --out {out}: could not write the export (") and "File too large" in line, line
    assert line.endswith("GiB free there); the earlier export there is unchanged"), line
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["export"]


@pytest.mark.parametrize("kind", ["an existing file", "a read-only folder"])
def test_export_to_an_out_it_cannot_use_is_refused_before_any_work(finished_v1, kind, tmp_path, capsys):
    if kind == "an existing file":
        out = tmp_path / "taken"
        out.write_text("mine")
        fragment = "is a file, not a folder"
    else:
        if AS_ROOT:
            pytest.skip("root writes through any permission bits")
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        out = locked / "export"
        fragment = "not writable"
    code, _, err = cli(export_script, "--run", finished_v1 / "v1", "--out", out, capsys=capsys)
    assert_one_line_error(code, err, f"--out {out}", fragment)
    if kind == "an existing file":
        assert out.read_text() == "mine"
