"""The comparison table warns when it comes from a smoke run; run_all.sh names a flag missing its value."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from imgcls.compare import main as compare_main
from imgcls.compare import smoke_note
from imgcls.metrics import classification_metrics

ROOT = Path(__file__).resolve().parent.parent


def _fake_run(runs: Path, version: str, data, model: str) -> None:
    fold = runs / version / "fold0"
    fold.mkdir(parents=True)
    (fold / "config.json").write_text(json.dumps({"data": data, "model": model}))
    (fold / "metrics.json").write_text(json.dumps({"peak_memory_kind": "process_max_rss"}))
    m = classification_metrics([0, 1, 1, 0], [0, 1, 0, 0], ["a", "b"])
    m.update(train_time_s=12.0, peak_memory_mb=300.0, models=["x"], views=["identity"])
    (runs / version / "predict-test").mkdir()
    (runs / version / "predict-test" / "metrics.json").write_text(json.dumps(m))


def test_quick_table_says_it_is_a_smoke_run(tmp_path):
    _fake_run(tmp_path / "quick", "v1", None, "tiny_efficientnet")
    out = tmp_path / "comparison-quick.md"
    assert compare_main(["--runs", str(tmp_path / "quick"), "--out", str(out), "--versions", "v1"]) == 0
    text = out.read_text()
    first = text.split("\n\n")[1]
    assert first.startswith("> **Smoke run, not a result.**") and "demo data" in first and "tiny models" in first
    assert "not comparable with the write-up" in first


def test_real_runs_get_no_smoke_note(tmp_path):
    _fake_run(tmp_path / "runs", "v3", "/data/fashion", "efficientnetv2_b2")
    assert smoke_note(tmp_path / "runs", ["v3"]) == ""
    out = tmp_path / "comparison.md"
    compare_main(["--runs", str(tmp_path / "runs"), "--out", str(out), "--versions", "v3"])
    assert "Smoke run" not in out.read_text()


@pytest.mark.parametrize("argv", [["--data"], ["--data", "--quick"], ["--quick", "--out"], ["--results"]])
def test_run_all_flag_without_value_is_a_one_line_error(argv):
    proc = subprocess.run(["bash", str(ROOT / "run_all.sh"), *argv], capture_output=True, text=True,
                          env=dict(os.environ, PYTHON="false"), timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: run_all.sh {argv[-1] if argv[-1] != '--quick' else argv[0]} needs a value")
    assert "unbound" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_without_versions_the_table_compares_the_versions_there_are_and_prints_the_smoke_note(tmp_path, capsys):
    _fake_run(tmp_path / "runs", "v4", None, "tiny_efficientnet")
    out = tmp_path / "comparison.md"
    assert compare_main(["--runs", str(tmp_path / "runs"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in out.read_text().splitlines() if line.startswith("| v") and "version" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["v4"]
    assert printed.startswith("> **Smoke run, not a result.**")
