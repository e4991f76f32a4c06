"""v4 end to end: classifier re-training after training, the validation-chosen decision rule stored in the
checkpoint and used by predict.py; presets scaled to short runs; the class-weight span warning."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from imgcls import checkpoint, engine
from imgcls.presets import VERSIONS, resolve, scale_to_epochs
from imgcls.data import load_dataset
from imgcls.decision import choose_tau
from imgcls.decoupling import extract_features, retrain_classifier
from imgcls.inference import predict_dataset
from imgcls.models import create_model
from tests.helpers import tiny_overrides, write_folder_dataset

pytestmark = pytest.mark.slow  # trains runs or starts processes: outside the fast lane (pytest -m "not slow")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_folder_dataset(tmp_path_factory.mktemp("data"), counts=(60, 20, 8))


@pytest.fixture(scope="module")
def v4_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = resolve("v4", tiny_overrides(data_dir, out, model="tiny_efficientnet", epochs=2, crt_steps=200))
    engine.fit(cfg, 0, log=lambda *a, **k: None)
    return cfg, out / "v4" / "fold0"


def _model(record: checkpoint.Checkpoint) -> torch.nn.Module:
    model = create_model(record.model_name, record.num_classes, pretrained=None)
    model.load_state_dict(record.model)
    return model.eval()


def test_v4_head_is_crt_on_the_stage1_features_and_tau_maximises_validation_macro_f1(v4_run, data_dir):
    cfg, rdir = v4_run
    stage1, best = checkpoint.read(rdir / "before_crt.pt"), checkpoint.read(rdir / "shipped.pt")
    split = json.loads((rdir / "split.json").read_text())
    dataset = load_dataset(str(data_dir), size=tuple(best.preprocessing.storage_size), cache_dir=None,
                           log=lambda *a: None)
    train_idx, val_idx = np.array(split["folds"][0]["train"]), np.array(split["folds"][0]["val"])
    pre = best.preprocessing
    kw = dict(img_size=pre.img_size, mean=pre.mean, std=pre.std, device=torch.device("cpu"))
    # the backbone is untouched: only the classifier layer differs between before_crt.pt and shipped.pt
    differing = [k for k in best.model if not torch.equal(best.model[k], stage1.model[k])]
    assert differing and all(k.startswith("classifier.") for k in differing)
    # the head is cRT (class-balanced sampling) on the stage-1 model's features, recomputed independently
    feats = extract_features(_model(stage1), dataset.images, train_idx, **kw)
    head = retrain_classifier(feats, dataset.labels[train_idx], 3, sampler="weighted", steps=200, seed=cfg.seed)
    torch.testing.assert_close(best.model["classifier.1.weight"], head.weight)
    # the stored tau is the grid's best validation macro-F1 for the final model
    probs = predict_dataset(_model(best), dataset.images, val_idx, **kw)
    tau, scores = choose_tau(probs, dataset.labels.numpy()[val_idx], best.train_class_counts)
    assert best.decision_tau == tau
    metrics = json.loads((rdir / "metrics.json").read_text())
    assert metrics["decision_tau"] == tau and metrics["macro_f1"] == pytest.approx(max(scores.values()))
    assert set(metrics["before_decision"]) >= {"accuracy", "macro_f1"}
    assert metrics["crt_seconds"] > 0  # the re-training's cost is part of the run's reported time


def test_stage1_equals_the_same_run_without_the_post_training_stages(v4_run, data_dir, tmp_path):
    """What bench/longtail.py relies on for its paired plain-CE row: the v4 run's before_crt.pt is the model that
    `--crt-sampler none --decision-tau 0` trains."""
    cfg, rdir = v4_run
    plain = resolve("v4", tiny_overrides(data_dir, tmp_path, model="tiny_efficientnet", epochs=2, crt_steps=200,
                                         crt_sampler=None, decision_tau=0.0))
    engine.fit(plain, 0, log=lambda *a, **k: None)
    other = checkpoint.read(tmp_path / "v4" / "fold0" / "shipped.pt")
    stage1 = checkpoint.read(rdir / "before_crt.pt")
    assert other.decision_tau == 0.0 and not (tmp_path / "v4" / "fold0" / "before_crt.pt").exists()
    for key, value in stage1.model.items():
        assert torch.equal(value, other.model[key]), key


def _predict(run: Path, data: Path, out: Path, *extra) -> list[dict]:
    subprocess.run([sys.executable, str(ROOT / "predict.py"), "--run", str(run), "--data", str(data),
                    "--out", str(out), *extra], check=True, capture_output=True, cwd=ROOT)
    return list(csv.DictReader(open(out, newline="")))


def test_predict_uses_the_runs_tau_by_default_and_the_flag_overrides_it(v4_run, data_dir, tmp_path):
    cfg, rdir = v4_run
    record = checkpoint.read(rdir / "shipped.pt")
    record.decision_tau = 0.8  # a tau that changes decisions on this data, written back as a run would
    checkpoint.save(record, rdir / "shipped.pt")
    default = _predict(rdir.parent, data_dir, tmp_path / "a.csv")
    explicit = _predict(rdir.parent, data_dir, tmp_path / "b.csv", "--logit-adjust", "0.8")
    off = _predict(rdir.parent, data_dir, tmp_path / "c.csv", "--logit-adjust", "0")
    assert default == explicit
    assert default != off


def test_presets_scale_epoch_values_to_short_runs_and_keep_given_ones():
    v2 = VERSIONS["v2"]
    scaled = scale_to_epochs(v2, {"epochs": 3})
    assert scaled["warmup_epochs"] == pytest.approx(v2["warmup_epochs"] * 3 / 30)
    assert scaled["swa_start"] == 2 and 1 <= scaled["swa_freq"] and scaled["swa_anneal_epochs"] >= 0
    assert scale_to_epochs(v2, {"epochs": 30}) == {} and scale_to_epochs(v2, {}) == {}
    assert "swa_start" not in scale_to_epochs(v2, {"epochs": 3, "swa_start": 3})
    assert scale_to_epochs(VERSIONS["v2.1"], {"epochs": 60})["early_stop"] == 10
    cfg = resolve("v2", {"epochs": 3})
    assert cfg.swa_start == 2 and cfg.warmup_epochs < cfg.epochs
    notes = []
    resolve("v3", {"epochs": 6}, log=notes.append)  # nothing epoch-anchored in v3: silent
    resolve("v2", {"epochs": 3}, log=notes.append)
    assert len(notes) == 1 and "swa-start 20 -> 2" in notes[0]


def test_short_v2_run_trains_end_to_end(data_dir, tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--version", "v2", "--epochs", "3",
                          "--data", str(data_dir), "--out", str(tmp_path), "--model", "tiny_convnext",
                          "--pretrained", "none", "--img-size", "32x32", "--batch-size", "8", "--cache-dir", "none"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "scaled: warmup-epochs 2 -> 0.2, swa-start 20 -> 2" in out.stdout
    assert json.loads((tmp_path / "v2" / "fold0" / "metrics.json").read_text())["selected"] in ("best", "swa")


def test_class_weight_span_over_100x_is_said_with_what_to_try():
    assert engine.weight_span_warning("cb_focal", torch.tensor([0.04, 1.0, 2.0])) is None  # 50x
    line = engine.weight_span_warning("cb_focal", torch.tensor([0.001, 1.0, 3.887]))
    assert "3887x" in line and "--cb-beta 0.999" in line


def test_print_config_stays_json_when_values_are_scaled():
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--version", "v2", "--epochs", "3",
                          "--print-config"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and json.loads(out.stdout)["swa_start"] == 2
    assert "swa-start 20 -> 2" in out.stderr


def test_lr_moves_the_onecycle_peak_that_a_preset_wrote_as_max_lr():
    """v3-v5 write their OneCycle peak as max_lr = lr; --lr (what --find-lr prints) must move it (it was
    silently ignored), --max-lr still wins, and without --lr the preset's values stay (old runs resume)."""
    for version in ("v3", "v4", "v5"):
        assert resolve(version, {}).max_lr == VERSIONS[version]["max_lr"] == 1e-3
        cfg = resolve(version, {"lr": 5.2e-4})
        assert cfg.lr == cfg.max_lr == 5.2e-4
        cfg = resolve(version, {"lr": 5.2e-4, "max_lr": 2e-3})
        assert (cfg.lr, cfg.max_lr) == (5.2e-4, 2e-3)
