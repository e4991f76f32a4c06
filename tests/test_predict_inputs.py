"""predict.py on unlabelled inputs and its outputs: folders (recursive), path-only manifests, a line per
image, --out FILE.csv with its companions in FILE/, LF line ends, errors naming the file or the versions."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import imgcls
import predict as predict_script
import train as train_script
from imgcls import engine
from imgcls.errors import UserError
from imgcls.predict import predict
from imgcls.presets import resolve
from predict import build_parser
from tests.helpers import (
    ENV,
    assert_one_line_error,
    cli,
    file_size_limit,
    skipped_entries,
    tiny_overrides,
    write_folder_dataset,
    write_kaggle,
)
from tests.helpers import TINY_B0 as TINY

ROOT = Path(__file__).resolve().parent.parent
LOGS: list[str] = []


def log(*args, **kwargs):
    LOGS.append(" ".join(str(a) for a in args))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pin")
    data = write_folder_dataset(root / "data")
    cfg = resolve("v1", tiny_overrides(data, root / "runs", model="tiny_efficientnet", epochs=2))
    engine.fit(cfg, 0, log=lambda *a, **k: None)
    return root / "runs" / "v1", data


def _run(*argv):
    LOGS.clear()
    return predict(build_parser().parse_args([str(a) for a in argv]), log=log)


def _loose_copy(data: Path, dest: Path, n: int = 5) -> list[Path]:
    """n images of the data set, copied without class folders into dest/a/ and dest/a/b/ (unlabelled)."""
    files = sorted(data.rglob("*.png"))[::7][:n]
    out = []
    for i, f in enumerate(files):
        target = dest / "a" / ("b" if i % 2 else "") / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.read_bytes())
        out.append(target)
    return out


def test_unlabelled_folder_recursive_equals_the_api(run, tmp_path):
    run_dir, data = run
    files = _loose_copy(data, tmp_path / "photos")
    out = tmp_path / "preds" / "photos.csv"
    result = _run("--run", run_dir, "--data", tmp_path / "photos", "--out", out)
    rows = list(csv.DictReader(open(out, newline="")))
    expected = imgcls.load(run_dir).predict(tmp_path / "photos")
    assert [r["path"] for r in rows] == [e.source for e in expected] and result["num_images"] == len(files)
    assert sorted(r["path"] for r in rows) == sorted(str(f) for f in files)  # sub-folders included
    assert [r["label"] for r in rows] == [e.label for e in expected]
    np.testing.assert_allclose([float(r["confidence"]) for r in rows], [e.probability for e in expected], atol=1e-6)
    assert "true_label" not in rows[0] and "metrics" not in result
    # few images: one console line each, path, label, probability
    lines = [ln for ln in LOGS if ln.count("\t") == 2]
    assert [ln.split("\t")[:2] for ln in lines] == [[e.source, e.label] for e in expected]
    # the same through --images DIR
    again = _run("--run", run_dir, "--images", tmp_path / "photos", "--out", tmp_path / "again.csv")
    assert again["num_images"] == len(files)


def test_manifest_with_only_a_path_column(run, tmp_path):
    run_dir, data = run
    files = _loose_copy(data, tmp_path / "m", n=3)
    manifest = tmp_path / "m" / "list.csv"
    manifest.write_text("path\n" + "".join(f"{f.relative_to(manifest.parent)}\n" for f in files) + "gone.png\n")
    out = tmp_path / "list-preds.csv"
    result = _run("--run", run_dir, "--data", manifest, "--out", out)
    rows = list(csv.DictReader(open(out, newline="")))
    assert [Path(r["path"]) for r in rows] == files and result["skipped"] == 1
    skipped = json.loads((tmp_path / "list-preds" / "skipped.json").read_text())
    assert "list.csv row 5 (gone.png)" in json.dumps(skipped)


def test_path_only_manifest_with_a_byte_order_mark_predicts_every_image(run, tmp_path):
    """Excel's "CSV UTF-8" starts the file with a BOM; read as plain UTF-8 the header is '\ufeffpath', no
    `path` column is found and the manifest was not recognised as one."""
    run_dir, data = run
    files = _loose_copy(data, tmp_path / "m", n=4)
    manifest = tmp_path / "m" / "excel.csv"
    manifest.write_bytes(b"\xef\xbb\xbf" + ("path\r\n" + "".join(f"{f.relative_to(manifest.parent)}\r\n"
                                                                   for f in files)).encode())
    out = tmp_path / "bom-preds.csv"
    result = _run("--run", run_dir, "--data", manifest, "--out", out)
    rows = list(csv.DictReader(open(out, newline="")))
    assert [Path(r["path"]) for r in rows] == files and result["num_images"] == 4 and result["skipped"] == 0
    expected = imgcls.load(run_dir).predict([str(f) for f in files])
    assert [r["label"] for r in rows] == [e.label for e in expected]


def test_out_file_keeps_its_companions_in_a_folder_named_after_it_with_lf_endings(run, tmp_path):
    run_dir, _ = run
    out = tmp_path / "results" / "test-split.csv"
    _run("--run", run_dir, "--out", out, "--print")
    assert sorted(p.name for p in out.parent.iterdir()) == ["test-split", "test-split.csv"]
    assert {"metrics.json", "report.txt", "confusion.png"} <= {p.name for p in (out.parent / "test-split").iterdir()}
    raw = out.read_bytes()
    assert b"\r" not in raw and raw.count(b"\n") == len(list(csv.reader(open(out, newline=""))))
    n_images = raw.count(b"\n") - 1
    assert n_images > 0 and sum(ln.count("\t") == 2 for ln in LOGS) == n_images  # --print: every image
    with pytest.raises(UserError, match="--out .*preds.txt: give a .csv"):
        _run("--run", run_dir, "--out", tmp_path / "preds.txt")


def test_errors_name_the_missing_file_and_list_versions(run, tmp_path):
    run_dir, _ = run
    with pytest.raises(UserError, match=r"nope\.png: no such image file"):
        _run("--run", run_dir, "--images", tmp_path / "nope.png")
    with pytest.raises(UserError, match=r"a folder of runs, not one run; pick a version: .*v1"):
        _run("--run", run_dir.parent)


def test_cli_one_line_error_and_grouped_help(run, tmp_path):
    run_dir, _ = run
    proc = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--run", str(run_dir), "--images",
                           str(tmp_path / "nope.png")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {tmp_path / 'nope.png'}: no such image file"
    text = build_parser().format_help()
    for group in ("model:", "images (default: the run's own held-out test split):", "prediction:", "output:",
                  "machine:"):
        assert group in text
    assert "preset or" not in text


def test_predict_int8_writes_its_own_folder_and_keeps_the_fp32_labels(run):
    pytest.importorskip("onnxruntime", reason="--int8 needs onnxruntime (requirements-dev.txt)")
    run_dir, _ = run
    fp32 = _run("--run", run_dir)
    int8 = _run("--run", run_dir, "--int8")
    assert Path(int8["predictions"]).parent.name == "predict-test-int8" and int8["metrics"]["int8"] is True
    a = [r["label"] for r in csv.DictReader(open(fp32["predictions"], newline=""))]
    b = [r["label"] for r in csv.DictReader(open(int8["predictions"], newline=""))]
    assert len(a) == len(b) > 0 and np.mean(np.array(a) == np.array(b)) >= 0.9


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_predict_device_cuda_without_cuda_is_one_line(folder_run, capsys):
    code, _, err = cli(predict_script, "--run", folder_run[0], "--device", "cuda", capsys=capsys)
    assert_one_line_error(code, err, "--device cuda", "CUDA is not available")


@pytest.mark.parametrize("args,fragments", [
    (["--batch-size", "0"], ["--batch-size 0"]),
    (["--logit-adjust", "nan"], ["--decision-tau nan", "[-10, 10]"]),  # the old name, refused under the new one
    (["--device", "foo"], ["--device foo"]),
])
def test_bad_predict_flags_are_one_line(folder_run, capsys, args, fragments):
    code, _, err = cli(predict_script, "--run", folder_run[0], *args, capsys=capsys)
    assert_one_line_error(code, err, *fragments)


def test_predict_out_that_is_a_folder_is_one_line_and_leaves_nothing(folder_run, tmp_path, capsys):
    (tmp_path / "dir").mkdir()
    code, _, err = cli(predict_script, "--run", folder_run[0], "--device", "cpu", "--out", tmp_path / "dir",
                       capsys=capsys)
    assert_one_line_error(code, err, f"--out {tmp_path / 'dir'}", "is a folder")
    assert sorted(tmp_path.rglob("*")) == [tmp_path / "dir"]


def test_logit_adjust_nan_writes_nothing(folder_run, capsys):
    out = folder_run[0] / "predict-test" / "predictions.csv"
    code, _, err = cli(predict_script, "--run", folder_run[0], "--device", "cpu", capsys=capsys)
    assert code == 0, err
    before = out.read_bytes()
    code, _, err = cli(predict_script, "--run", folder_run[0], "--device", "cpu", "--decision-tau", "nan",
                       capsys=capsys)
    assert_one_line_error(code, err, "--decision-tau nan")
    assert out.read_bytes() == before


def test_predict_on_an_unfinished_run_warns(folder_run, tmp_path, capsys):
    metrics = folder_run[0] / "fold0" / "metrics.json"
    saved = metrics.read_bytes()
    metrics.unlink()  # what a run killed before its end looks like: last.pt, best_epoch.pt, no metrics.json
    try:
        code, out, err = cli(predict_script, "--run", folder_run[0], "--device", "cpu", "--out",
                             tmp_path / "p.csv", capsys=capsys)
    finally:
        metrics.write_bytes(saved)
    assert code == 0, err
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "training has not finished" in warnings[0]
    assert str(folder_run[0] / "fold0") in warnings[0]
    code, out, err = cli(predict_script, "--run", folder_run[0], "--device", "cpu", "--out", tmp_path / "p.csv",
                         capsys=capsys)
    assert "warning:" not in out


def test_old_skipped_json_is_replaced_or_removed(folder_run, tmp_path, capsys):
    good = folder_run[1] / "shoes" / "shoes_000.png"
    (tmp_path / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "p" / "predictions.csv"
    code, _, err = cli(predict_script, "--run", folder_run[0], "--device", "cpu", "--out", out, "--images", good,
                       tmp_path / "broken.png", capsys=capsys)
    assert code == 0, err
    assert [e["item"] for e in skipped_entries(out.with_suffix("") / "skipped.json")] == [str(tmp_path / "broken.png")]
    code, _, err = cli(predict_script, "--run", folder_run[0], "--device", "cpu", "--out", out, "--images", good,
                       capsys=capsys)
    assert code == 0, err
    assert not (out.with_suffix("") / "skipped.json").exists()


@pytest.mark.slow  # a subprocess or a large file
def test_a_full_disk_while_predicting_keeps_the_earlier_predictions(finished_v1, tmp_path, capsys):
    out = tmp_path / "p.csv"
    code, _, err = cli(predict_script, "--run", finished_v1 / "v1", "--out", out, capsys=capsys)
    assert code == 0, err
    before = out.read_bytes()
    assert len(before) > 4096
    proc = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--run", str(finished_v1 / "v1"), "--out",
                           str(out), "--logit-adjust", "1"], env=ENV, capture_output=True, text=True, timeout=300,
                          preexec_fn=file_size_limit(4096))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {out}: File too large while writing; the file there is unchanged. Free some space (or raise the "
        "limit) and rerun the same command: a training run resumes from its last epoch"]
    assert out.read_bytes() == before


def test_predict_on_the_runs_test_split_counts_no_skipped_image_for_rows_without_one(tmp_path, capsys):
    data = write_kaggle(tmp_path / "data", per_class=6, extra_rows=["901,Men,shirts,gone", "902,Men,shoes,gone"])
    code, _, err = cli(train_script, "--version", "v1", "--data", data, "--out", tmp_path / "runs", *TINY,
                       capsys=capsys)
    assert code == 0, err
    code, out, err = cli(predict_script, "--run", tmp_path / "runs" / "v1", "--out", tmp_path / "p.csv",
                         capsys=capsys)
    assert code == 0, err
    assert "input(s) (missing or unreadable)" not in out and not (tmp_path / "p" / "skipped.json").exists()
    assert "note: 2 row(s) of the run's data have no readable image and are in no split" in out
