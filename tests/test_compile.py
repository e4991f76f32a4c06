"""--compile: auto's decision (a run long enough to pay back the compile, a C++ compiler on the CPU), the flag's
values, and a compiled run training to the eager run's weights."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train as train_script
from imgcls import checkpoint, engine
from imgcls.presets import resolve
from imgcls.trainer import COMPILE_MIN_IMAGES, planned_images, use_compile
from tests.helpers import cli, tiny_overrides, write_folder_dataset

CPU = torch.device("cpu")


def test_auto_compiles_small_batches_of_runs_long_enough_to_pay_it_back_on_a_cpu(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    monkeypatch.delenv("CXX", raising=False)
    assert use_compile("auto", COMPILE_MIN_IMAGES - 1, 16, CPU) == (
        False, "compile off (auto: 99,999 training images, under 100,000)")
    assert use_compile("auto", COMPILE_MIN_IMAGES, 16, CPU) == (
        True, "compile on (auto: batch 16, 100,000 training images)")
    assert use_compile("auto", 10**7, 17, CPU) == (False, "compile off (auto: batch 17 > 16, where it did not pay)")
    assert use_compile("auto", 10**7, 16, torch.device("cuda"))[0] is False  # not measured on a GPU
    assert use_compile(True, 10, 64, torch.device("cuda")) == (True, "compile on")  # what the user typed wins
    assert use_compile(False, 10**9, 16, CPU) == (False, "compile off")


def test_auto_does_not_compile_on_a_cpu_without_a_cxx_compiler(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-c++")
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert use_compile("auto", 10**7, 16, CPU) == (False, "compile off (auto: no C++ compiler 'no-such-c++' for "
                                                        "TorchInductor)")


def test_v5_at_its_epochs_compiles_and_its_one_epoch_cpu_bench_run_does_not(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    member = 35_551 * 2 // 3  # the Kaggle set's training images, 2/3 per v5 member
    cfg = resolve("v5", {})
    assert use_compile(cfg.compile, planned_images(cfg, member // cfg.batch_size), cfg.batch_size, CPU)[0]
    short = resolve("v5", {"epochs": 1})  # bench/longtail.py's budget on fashion-small (~18.8k per member)
    assert not use_compile(short.compile, planned_images(short, 18_800 // 16), 16, CPU)[0]
    v6 = resolve("v6", {})  # batch 64: eager
    assert not use_compile(v6.compile, planned_images(v6, 10**5), v6.batch_size, CPU)[0]


@pytest.mark.parametrize("typed,value", [(["--compile"], True), (["--compile", "false"], False),
                                         (["--compile", "auto"], "auto"), ([], "auto")])
def test_the_flag_takes_a_bare_switch_true_false_and_auto(typed, value, capsys):
    code, out, err = cli(train_script, *typed, "--print-config", capsys=capsys)
    assert code == 0, err
    assert f'"compile": {json.dumps(value)}' in out


@pytest.mark.slow  # torch.compile builds C++ kernels: about a minute
def test_a_compiled_run_trains_to_the_eager_runs_weights(tmp_path):
    data = write_folder_dataset(tmp_path / "data", counts=(24, 16, 8))
    weights, lines = {}, {}
    for compiled in (False, True):
        cfg = resolve("v6", tiny_overrides(data, tmp_path / f"runs-{compiled}", model="tiny_efficientnet",
                                           epochs=1, compile=compiled, val_frac=0.05))
        said = []
        engine.fit(cfg, 0, log=lambda *a, **k: said.append(" ".join(map(str, a))))
        lines[compiled] = [line for line in said if "world size" in line]
        weights[compiled] = checkpoint.read(tmp_path / f"runs-{compiled}" / "v6" / "fold0" / "last.pt").model
    assert lines[True][0].endswith("compile on") and lines[False][0].endswith("compile off")
    assert weights[True].keys() == weights[False].keys()
    # Compiled kernels sum in another order; AdamW turns a gradient's last bits near zero into a step of up
    # to lr (1e-3 here) either way, so the weights agree to a few steps' worth, not to float precision.
    for key, value in weights[False].items():
        torch.testing.assert_close(weights[True][key], value, rtol=0, atol=1e-2)
    losses = {c: [float(row["train_loss"]) for row in csv.DictReader(
        open(tmp_path / f"runs-{c}" / "v6" / "fold0" / "summary.csv"))] for c in (False, True)}
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)


AUTO_WITH_A_BROKEN_COMPILER = """
import sys
from pathlib import Path
import imgcls.trainer as trainer
from imgcls import checkpoint, engine
from imgcls.presets import resolve
from tests.helpers import tiny_overrides
trainer.COMPILE_MIN_IMAGES = 1  # auto's threshold out of the way: this tiny run compiles under auto
data, out = Path(sys.argv[1]), Path(sys.argv[2])
said = []
cfg = resolve("v6", tiny_overrides(data, out, model="tiny_efficientnet", epochs=1, compile="auto", batch_size=8,
                                   val_frac=0.05))
engine.fit(cfg, 0, log=lambda *a, **k: said.append(" ".join(map(str, a))))
print([line for line in said if "world size" in line][0])
"""


@pytest.mark.slow  # a subprocess that tries (and fails) to build C++ kernels
def test_an_auto_compile_that_fails_falls_back_to_eager_and_the_run_finishes(tmp_path):
    """auto compiles without being asked, so a broken toolchain must not stop the run: the C++ compiler is
    /bin/false here (in an empty kernel cache), and the run trains eagerly to the eager run's weights."""
    data = write_folder_dataset(tmp_path / "data", counts=(24, 16, 8))
    env = dict(os.environ, CXX="false", TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", AUTO_WITH_A_BROKEN_COMPILER, str(data), str(tmp_path / "auto")],
                          capture_output=True, text=True, cwd=root, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "compile on (auto: batch 8" in done.stdout
    eager = resolve("v6", tiny_overrides(data, tmp_path / "eager", model="tiny_efficientnet", epochs=1,
                                         compile=False, batch_size=8, val_frac=0.05))
    engine.fit(eager, 0, log=lambda *a, **k: None)
    ours = checkpoint.read(tmp_path / "auto" / "v6" / "fold0" / "last.pt").model
    for key, value in checkpoint.read(tmp_path / "eager" / "v6" / "fold0" / "last.pt").model.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=1e-6)  # eager both: the same arithmetic
