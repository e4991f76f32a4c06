"""train.py / predict.py / run_all.sh as a user runs them: flags, one-line errors, exit codes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

import train as train_script
from imgcls.presets import VERSIONS
from tests.helpers import (
    ENV,
    ROOT,
    assert_one_line_error,
    cli,
    write_folder_dataset,
)

pytestmark = pytest.mark.slow  # trains runs or starts processes: outside the fast lane (pytest -m "not slow")


def run(*args, timeout=300, cwd=ROOT):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def assert_exits_2_with_one_line(proc, *fragments):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_print_config_shows_preset_values_and_flags_override_them():
    proc = run(ROOT / "train.py", "--version", "v3", "--print-config", "--lr", "5e-4", "--img-size", "80x60")
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)
    for key, value in VERSIONS["v3"].items():
        if key not in ("lr", "max_lr", "img_size"):
            assert cfg[key] == (list(value) if isinstance(value, tuple) else value), key
    assert cfg["lr"] == 5e-4 and cfg["img_size"] == [80, 60]
    assert cfg["max_lr"] == 5e-4  # the preset's OneCycle peak (max_lr = lr) follows --lr
    assert cfg["loss"] == "cb_focal" and cfg["cb_beta"] == 0.9999 and cfg["sampler"] == "dynamic"
    assert cfg["scheduler"] == "onecycle" and cfg["folds"] == "auto"


def test_every_preset_resolves_and_v2_has_the_writeup_values():
    v2 = json.loads(run(ROOT / "train.py", "--version", "v2", "--print-config").stdout)
    assert (v2["swa_start"], v2["swa_freq"], v2["swa_lr"], v2["swa_anneal_epochs"]) == (20, 2, 1e-5, 5)
    assert (v2["mixup_alpha"], v2["mix_prob"], v2["label_smoothing"], v2["grad_clip"]) == (0.2, 0.5, 0.1, 5.0)
    assert (v2["warmup_epochs"], v2["min_lr"], v2["scheduler"]) == (2, 1e-7, "cosine")
    v21 = json.loads(run(ROOT / "train.py", "--version", "v2.1", "--print-config").stdout)
    assert (v21["folds"], v21["early_stop"], v21["early_stop_min_delta"], v21["tta"]) == ("3", 5, 1e-4, True)


def test_list_models():
    proc = run(ROOT / "train.py", "--list-models")
    names = proc.stdout.split()
    assert {"efficientnet_b0", "convnext_base", "tf_efficientnetv2_b2", "efficientnet_v2_s"} <= set(names)


@pytest.mark.parametrize("args,fragments", [
    (["--version", "v9"], ["--version v9", "v1, v2, v2.1, v3"]),
    (["--loss", "foo"], ["--loss", "'foo'"]),
    (["--fold", "x"], ["--fold x"]),
    (["--img-size", "axb"], ["size 'axb'"]),
    (["--data", "/no/such/dir"], ["/no/such/dir"]),
    (["--pretrained", "/no/such/weights.pth", "--model", "tiny_convnext"], ["/no/such/weights.pth"]),
    (["--resume", "--model", "tiny_convnext"], ["--resume", "last.pt not found"]),
])
def test_user_mistakes_give_one_line_and_exit_2(args, fragments, tmp_path):
    proc = run(ROOT / "train.py", "--out", tmp_path, "--cache-dir", tmp_path / "c", "--epochs", "1", *args)
    assert_exits_2_with_one_line(proc, *fragments)


def test_fold_out_of_range_on_real_data(tmp_path):
    data = write_folder_dataset(tmp_path / "data")
    proc = run(ROOT / "train.py", "--version", "v1", "--model", "tiny_convnext", "--pretrained", "none", "--data", data,
               "--out", tmp_path, "--cache-dir", tmp_path / "c", "--fold", "3")
    assert_exits_2_with_one_line(proc, "--fold 3", "1 fold")


def test_run_all_quick_on_demo_data_writes_the_comparison_table(tmp_path):
    env = dict(ENV, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "run_all.sh"), "--quick", "--out", str(tmp_path / "runs"),
                           "--results", str(tmp_path / "results"), "--", "--cache-dir", str(tmp_path / "c")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    table = (tmp_path / "results" / "comparison-quick.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| v") and "version" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["v1", "v2", "v2.1", "v3", "v4", "v5", "v6"]
    header = next(line for line in table.splitlines() if line.startswith("| version"))
    for column in ("accuracy", "macro-F1", "training time", "peak memory", "weighted-F1", "balanced acc",
                   "smallest-class F1", "std per-class F1", "write-up acc"):
        assert column in header
    # The table's numbers are the ones predict.py measured on the held-out test split.
    v3 = json.loads((tmp_path / "runs" / "v3" / "predict-test-tta" / "metrics.json").read_text())
    assert f"{100 * v3['accuracy']:.1f}%" == rows[3].split("|")[2].strip()
    assert len(v3["models"]) == 2 and len(v3["views"]) == 4  # V3's rule gives 2 folds on the demo data
    # Rerunning skips every finished fold and gives the same table.
    again = subprocess.run(["bash", str(ROOT / "run_all.sh"), "--quick", "--out", str(tmp_path / "runs"),
                            "--results", str(tmp_path / "results"), "--", "--cache-dir", str(tmp_path / "c")],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "already finished" in again.stdout
    assert (tmp_path / "results" / "comparison-quick.md").read_text() == table
    with open(tmp_path / "runs" / "v1" / "predict-test" / "predictions.csv") as fh:
        header = next(csv.reader(fh))
    assert header[:6] == ["id", "path", "label", "confidence", "top1", "top1_prob"]


def test_list_models_into_a_closed_pipe_is_quiet():
    """`train.py --list-models | head -1`: the reader is gone before we write."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--list-models"], env=ENV, stdout=write_end,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(write_end)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_a_typo_in_model_exits_2_before_reading_data_and_creates_no_folder(tmp_path, capsys):
    data = tmp_path / "missing-data"  # never read: the model name is checked first
    code, _, err = cli(train_script, "--version", "v2", "--model", "convnext_tny", "--data", data,
                       "--out", tmp_path / "runs", capsys=capsys)
    assert_one_line_error(code, err, "--model convnext_tny: unknown model; did you mean convnext_tiny")
    assert not (tmp_path / "runs").exists()
    code, _, err = cli(train_script, "--version", "v2", "--model", "convnext_tny", "--print-config", capsys=capsys)
    assert_one_line_error(code, err, "--model convnext_tny")


@pytest.mark.parametrize("script", ["train.py", "predict.py", "export.py"])
def test_the_command_lines_set_the_openmp_wait_policy_before_torch_loads(script):
    env = {k: v for k, v in ENV.items() if k != "OMP_WAIT_POLICY"}
    proc = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / script), "--help"], env=env,
                          capture_output=True, text=True, timeout=120)
    order = [line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert "imgcls.cli" in order and order.index("imgcls.cli") < (order.index("torch") if "torch" in order
                                                                  else len(order))
    probe = "import os, imgcls.cli; print(repr(os.environ['OMP_WAIT_POLICY']))"
    assert subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "'PASSIVE'"
    mine = subprocess.run([sys.executable, "-c", probe], env=dict(env, OMP_WAIT_POLICY="ACTIVE"),
                          capture_output=True, text=True, check=True)
    assert mine.stdout.strip() == "'ACTIVE'"  # the user's setting wins
