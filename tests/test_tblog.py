"""train.py --tensorboard: the event files hold the numbers of summary.csv and metrics.json, read back with
tensorboard's own event reader; without the flag nothing is written."""

from __future__ import annotations

import csv
import json
import math

import pytest

import train
from helpers import cli

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def test_the_event_file_holds_summary_csv_and_the_stages_after_training(tmp_path, capsys):
    code, _, err = cli(train, "--version", "v5", "--fold", "0", "--out", tmp_path, "--model", "tiny_efficientnet",
                       "--pretrained", "none", "--img-size", "32", "--epochs", "2", "--crt-steps", "5", "--workers",
                       "1", "--device", "cpu", "--cache-dir", "none", "--tensorboard", capsys=capsys)
    assert code == 0, err
    fold = tmp_path / "v5" / "fold0"
    events = EventAccumulator(str(fold / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    with open(fold / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and "val_ema_macro_f1" in rows[0]  # v5's EMA has its own columns
    for column in rows[0]:
        if column == "epoch":
            continue
        logged = {e.step: e.value for e in events.Scalars(f"epoch/{column}")}
        expected = {int(r["epoch"]): float(r[column]) for r in rows}
        assert logged.keys() == expected.keys(), column
        for step, value in expected.items():  # event files hold float32
            assert math.isclose(logged[step], value, rel_tol=1e-6, abs_tol=1e-7), (column, step)
    metrics = json.loads((fold / "metrics.json").read_text())
    for stage, scores in [("cRT", metrics["before_decision"]), ("tau", metrics)]:
        for key in ("accuracy", "macro_f1", "balanced_accuracy", "loss"):
            (event,) = events.Scalars(f"final/{stage}/{key}")
            assert math.isclose(event.value, scores[key], rel_tol=1e-6, abs_tol=1e-7) and event.step == 2
    assert events.Scalars("final/decision_tau")[0].value == pytest.approx(metrics["decision_tau"])
    (image,) = events.Images("final/confusion_matrix")
    assert image.width > 100 and image.height > 100


def test_without_the_flag_there_is_no_event_file(finished_v5):
    assert not any(finished_v5.rglob("tensorboard")) and not any(finished_v5.rglob("events.out.tfevents*"))
