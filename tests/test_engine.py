"""The training engine end to end on tiny generated images and tiny models (CPU, seconds each)."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.optim.swa_utils import update_bn

import train as train_script
from imgcls import checkpoint, engine
from imgcls.data import load_dataset
from imgcls.data.augment import eval_transform
from imgcls.decision import adjust
from imgcls.metrics import classification_metrics
from imgcls.models import create_model
from imgcls.presets import resolve
from tests.helpers import (
    ROOT,
    cli,
    tiny_overrides,
    write_folder_dataset,
)
from tests.helpers import TINY_B0 as TINY

pytestmark = pytest.mark.slow  # trains runs or starts processes: outside the fast lane (pytest -m "not slow")


TINY_MODEL = {"v1": "tiny_efficientnet", "v2": "tiny_convnext", "v2.1": "tiny_convnext",
              "v3": "tiny_efficientnet_v2", "v4": "tiny_efficientnet"}
RUN_FILES = ["config.json", "split.json", "summary.csv", "shipped.pt", "last.pt", "metrics.json", "lr.png",
             "curves.png", "confusion.png", "skipped.json"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_folder_dataset(tmp_path_factory.mktemp("data"))


def _fit(version, data_dir, out, fold=0, **extra):
    extra.setdefault("model", TINY_MODEL[version])
    cfg = resolve(version, tiny_overrides(data_dir, out, **extra))
    return cfg, engine.fit(cfg, fold, log=lambda *a, **k: None)


@pytest.mark.parametrize("version,extra", [
    ("v1", {}),
    ("v2", {"swa_start": 1, "swa_freq": 1, "warmup_epochs": 1}),
    ("v2.1", {"swa_start": 2, "warmup_epochs": 1}),
    ("v3", {}),
    ("v4", {"crt_steps": 20}),
])
def test_every_version_trains_and_writes_every_file(version, extra, data_dir, tmp_path):
    cfg, result = _fit(version, data_dir, tmp_path, **extra)
    rdir = Path(result["run_dir"])
    assert rdir == tmp_path / version / "fold0"
    for name in RUN_FILES:
        assert (rdir / name).is_file() and (rdir / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(rdir / "summary.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(rows[0]) >= {"lr", "train_loss", "train_img_s", "val_loss", "val_acc", "val_macro_f1",
                            "val_balanced_acc", "time_s"}
    metrics = json.loads((rdir / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "weighted_f1", "balanced_accuracy", "per_class", "confusion_matrix",
                "smallest_class_f1", "per_class_f1_std", "train_time_s", "peak_memory_mb", "selected"):
        assert key in metrics, key
    best = checkpoint.load(rdir / "shipped.pt")
    assert best["class_names"] == ["shirts", "shoes", "watches"]
    assert best["preprocessing"]["img_size"] == [32, 32]
    assert best["config"]["version"] == version
    assert checkpoint.load(rdir / "last.pt")["finished"] is True
    # The saved model reproduces the recorded validation metrics.
    assert metrics["accuracy"] == pytest.approx(_evaluate_saved(rdir, data_dir, tmp_path)["accuracy"])


def _evaluate_saved(rdir: Path, data_dir: Path, out: Path) -> dict:
    best = checkpoint.load(rdir / "shipped.pt")
    model = create_model(best["model_name"], best["num_classes"])
    model.load_state_dict(best["model"])
    model.eval()
    data = load_dataset(str(data_dir), cache_dir=str(out / "cache"), workers=1, log=lambda *a, **k: None)
    split = json.loads((rdir / "split.json").read_text())
    val = np.asarray(split["folds"][best["fold"]]["val"])
    pre = best["preprocessing"]
    with torch.no_grad():
        x = eval_transform(data.images[torch.as_tensor(val)], tuple(pre["img_size"]), pre["mean"], pre["std"])
        probs = torch.softmax(model(x), 1).numpy()
    # with the run's own decision rule (v4 chooses a tau on validation; the others keep 0)
    pred = adjust(probs, best["train_class_counts"], best.get("decision_tau", 0.0)).argmax(1)
    return classification_metrics(data.labels.numpy()[val], pred, best["class_names"])


def test_onecycle_runs_exactly_the_real_number_of_updates(data_dir, tmp_path):
    cfg, result = _fit("v3", data_dir, tmp_path, epochs=3, epoch_samples=80)
    last = checkpoint.load(Path(result["run_dir"]) / "last.pt")
    lrs = last["progress"]["lr_history"]  # the lr each update used
    steps = (80 // cfg.batch_size) * cfg.epochs
    assert len(lrs) == steps == 30
    assert lrs[0] == pytest.approx(cfg.max_lr / cfg.div_factor)
    # OneCycleLR's warmup ends at update pct_start * total - 1 = 2, at exactly max_lr.
    assert int(np.argmax(lrs)) == 2 and max(lrs) == pytest.approx(cfg.max_lr)
    assert lrs[-1] < lrs[0] / cfg.final_div_factor * 1.5


def test_swa_averages_every_freq_epochs_and_recomputes_batchnorm(data_dir, tmp_path):
    cfg, result = _fit("v2", data_dir, tmp_path, model="tiny_efficientnet", epochs=4, swa_start=2, swa_freq=2)
    rdir = Path(result["run_dir"])
    last = checkpoint.load(rdir / "last.pt")
    # Epochs 2 and 4 are averaged (start 2, every 2 epochs).
    assert int(last["swa_model"]["n_averaged"]) == 2
    swa = checkpoint.load(rdir / "swa.pt")
    averaged = {k[len("module."):]: v for k, v in last["swa_model"].items() if k.startswith("module.")}
    bn_keys = [k for k in swa["model"] if k.endswith("running_mean")]
    assert bn_keys, "tiny_efficientnet has BatchNorm"
    assert any(not torch.equal(swa["model"][k], averaged[k]) for k in bn_keys), "update_bn changed nothing"
    # Independent reference: torch's update_bn over the un-augmented training images.
    ref = create_model(cfg.model, 3)
    ref.load_state_dict(averaged)
    data = load_dataset(str(data_dir), cache_dir=str(tmp_path / "cache"), workers=1, log=lambda *a, **k: None)
    train = torch.as_tensor(json.loads((rdir / "split.json").read_text())["folds"][0]["train"])
    batches = [eval_transform(data.images[train[i:i + 64]], (32, 32), swa["preprocessing"]["mean"],
                              swa["preprocessing"]["std"]) for i in range(0, len(train), 64)]
    update_bn(batches, ref)
    for k in bn_keys:
        torch.testing.assert_close(swa["model"][k], ref.state_dict()[k], rtol=1e-4, atol=1e-5)


def test_early_stopping_stops_after_patience(data_dir, tmp_path):
    # lr 0 and a LayerNorm-only model: the metric never improves after epoch 1, so patience 2 stops at 3.
    _, result = _fit("v2.1", data_dir, tmp_path, epochs=6, lr=0.0, scheduler="constant", swa_start=None,
                     mix_prob=0.0, early_stop=2)
    metrics = json.loads((Path(result["run_dir"]) / "metrics.json").read_text())
    assert metrics["epochs_run"] == 3 and metrics["stopped_early"] is True and metrics["best_epoch"] == 1


def test_killed_run_resumes_to_identical_weights(data_dir, tmp_path):
    extra = dict(epochs=3, swa_start=2, swa_freq=1)
    _, full = _fit("v2", data_dir, tmp_path / "a", **extra)

    class Killed(Exception):
        pass

    def kill_in_epoch_3(line, *args, **kwargs):
        if str(line).startswith("epoch 3/3"):
            raise Killed  # dies after epoch 3 trained, before its checkpoint: last.pt holds epoch 2
    cfg = resolve("v2", tiny_overrides(data_dir, tmp_path / "b", model="tiny_convnext", **extra))
    with pytest.raises(Killed):
        engine.fit(cfg, 0, log=kill_in_epoch_3)
    assert checkpoint.load(tmp_path / "b" / "v2" / "fold0" / "last.pt")["progress"]["epoch"] == 2
    resumed = engine.fit(cfg, 0, log=lambda *a, **k: None)
    a, b = (checkpoint.load(Path(r["run_dir"]) / "last.pt") for r in (full, resumed))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    ma, mb = (json.loads((Path(r["run_dir"]) / "metrics.json").read_text()) for r in (full, resumed))
    assert ma["accuracy"] == mb["accuracy"] and ma["macro_f1"] == mb["macro_f1"]
    assert a["progress"]["lr_history"] == b["progress"]["lr_history"]


def test_a_run_killed_before_the_shipped_pt_rename_resumes_from_its_best_pt(data_dir, tmp_path):
    """Runs saved before 2026-12-06 kept the best epoch so far in best.pt: resumed, they finish to the same
    shipped.pt as a run trained at once, and leave no stale best.pt beside it."""
    extra = dict(epochs=3, lr=0.0, scheduler="constant", swa_start=None, mix_prob=0.0, early_stop=None)  # best: 1
    _, full = _fit("v2.1", data_dir, tmp_path / "a", **extra)

    class Killed(Exception):
        pass

    def kill_in_epoch_3(line, *args, **kwargs):
        if str(line).startswith("epoch 3/3"):
            raise Killed
    cfg = resolve("v2.1", tiny_overrides(data_dir, tmp_path / "b", model="tiny_convnext", **extra))
    with pytest.raises(Killed):
        engine.fit(cfg, 0, log=kill_in_epoch_3)
    fold = tmp_path / "b" / "v2.1" / "fold0"
    (fold / "best_epoch.pt").rename(fold / "best.pt")  # the old name of the best epoch so far
    resumed = engine.fit(cfg, 0, log=lambda *a, **k: None)
    a, b = (checkpoint.read(Path(r["run_dir"]) / "shipped.pt") for r in (full, resumed))
    assert a.epoch == b.epoch == 1 and a.model.keys() == b.model.keys()
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model)
    assert sorted(p.name for p in fold.glob("*.pt")) == ["last.pt", "shipped.pt"]


def test_nan_loss_stops_with_epoch_and_step(data_dir, tmp_path):
    cfg = resolve("v1", tiny_overrides(data_dir, tmp_path, model="tiny_convnext", lr=1e30,
                                       scheduler="constant"))
    with pytest.raises(engine.TrainingDiverged, match=r"epoch 1 step \d+"):
        engine.fit(cfg, 0, log=lambda *a, **k: None)
    assert not (tmp_path / "v1" / "fold0" / "shipped.pt").exists()


def test_fold_out_of_range_is_a_user_error(data_dir, tmp_path):
    cfg = resolve("v1", tiny_overrides(data_dir, tmp_path, model="tiny_convnext"))
    with pytest.raises(engine.UserError, match="--fold 5: this run has 1 fold"):
        engine.fit(cfg, 5, log=lambda *a, **k: None)


def test_torchrun_two_process_gloo_metrics_equal_single_process_evaluation(data_dir, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    flags = ["--version", "v1", "--model", "tiny_efficientnet", "--pretrained", "none", "--data", str(data_dir),
             "--out", str(tmp_path), "--cache-dir", str(tmp_path / "cache"), "--img-size", "32",
             "--epochs", "2", "--batch-size", "8", "--workers", "1", "--device", "cpu"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "train.py"), *flags]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rdir = tmp_path / "v1" / "fold0"
    metrics = json.loads((rdir / "metrics.json").read_text())
    single = _evaluate_saved(rdir, data_dir, tmp_path)
    assert metrics["accuracy"] == pytest.approx(single["accuracy"])
    assert metrics["macro_f1"] == pytest.approx(single["macro_f1"])
    assert metrics["confusion_matrix"] == single["confusion_matrix"]
    # Only rank 0 writes: one summary line per epoch, not two.
    assert len(list(csv.DictReader(open(rdir / "summary.csv")))) == 2


def test_fp16_on_cpu_skips_overflowing_updates_and_resumes_exactly(data_dir, tmp_path):
    """--amp fp16 on the CPU takes CUDA's path (autocast + GradScaler). A loss scale of 2**24, written into a
    real last.pt, makes the next fp16 backward passes overflow: the scaler skips those updates and halves its
    scale each time, the schedule does not advance on them, training goes on, and a resume is exact."""
    extra = dict(amp="fp16", epochs=3, epoch_samples=64)  # v3: onecycle per update; 8 steps per epoch

    class Killed(Exception):
        pass

    def kill_at(prefix):
        def log(line, *args, **kwargs):
            if str(line).startswith(prefix):
                raise Killed  # after the epoch trained, before its last.pt: last.pt keeps the epoch before
        return log

    runs = {}
    for name in ("a", "b"):
        cfg = resolve("v3", tiny_overrides(data_dir, tmp_path / name, model=TINY_MODEL["v3"], **extra))
        with pytest.raises(Killed):
            engine.fit(cfg, 0, log=kill_at("epoch 2/3"))
        last_path = tmp_path / name / "v3" / "fold0" / "last.pt"
        state = checkpoint.load(last_path)
        assert state["progress"]["epoch"] == 1
        before = dict(state["progress"])
        state["scaler"]["scale"] = 2.0**24
        checkpoint.save_atomic(state, last_path)
        runs[name] = (cfg, last_path, before)
    cfg_a, last_a, before = runs["a"]
    engine.fit(cfg_a, 0, log=lambda *a, **k: None)
    cfg_b, last_b, _ = runs["b"]
    with pytest.raises(Killed):
        engine.fit(cfg_b, 0, log=kill_at("epoch 3/3"))
    engine.fit(cfg_b, 0, log=lambda *a, **k: None)

    a, b = checkpoint.load(last_a), checkpoint.load(last_b)
    progress = a["progress"]
    skipped_late = progress["skipped_updates"] - before["skipped_updates"]
    # The scaler halved its scale once per skipped step (no growth: its interval is 2000 steps).
    assert skipped_late == round(math.log2(2.0**24 / a["scaler"]["scale"])) >= 1
    assert progress["num_updates"] + progress["skipped_updates"] == 24
    assert progress["num_updates"] > before["num_updates"]  # training went on after the overflow
    # AdamW counts the steps it took: the skipped ones are not among them; nor did the schedule advance.
    assert all(int(s["step"]) == progress["num_updates"] for s in a["optimizer"]["state"].values())
    assert a["schedule"]["last_epoch"] == progress["num_updates"]
    assert len(progress["lr_history"]) == 24
    # Exact resume, skipped steps included.
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["scaler"] == b["scaler"] and a["schedule"] == b["schedule"]
    for key in ("num_updates", "skipped_updates", "lr_history", "best_epoch", "best_metric"):
        assert progress[key] == b["progress"][key], key


def test_the_plots_follow_every_epoch_only_when_epochs_are_long(data_dir, tmp_path, monkeypatch):
    """lr.png and curves.png are drawn after an epoch once PLOTS_EVERY_S have passed since the last drawing,
    and always after the last epoch: a short run draws them once, a run of long epochs after each epoch."""
    drawn = []
    monkeypatch.setattr(engine, "plot_lr", lambda lrs, path: drawn.append(len(lrs)))
    _fit("v1", data_dir, tmp_path / "short", epochs=3, early_stop=None)
    per_epoch = drawn[0] // 3
    assert drawn == [3 * per_epoch]
    drawn.clear()
    monkeypatch.setattr(engine, "PLOTS_EVERY_S", 0.0)
    _fit("v1", data_dir, tmp_path / "long", epochs=3, early_stop=None)
    assert drawn == [per_epoch, 2 * per_epoch, 3 * per_epoch]


def _weights(path: Path) -> dict:
    return {k: v for k, v in checkpoint.read(path).model.items() if v.is_floating_point() and "running" not in k}


def test_init_from_starts_from_a_runs_weights_with_a_fresh_schedule(tmp_path, capsys):
    data = write_folder_dataset(tmp_path / "data", counts=(8, 6, 6))
    code, _, err = cli(train_script, "--version", "v1", "--data", data, "--out", tmp_path / "a", *TINY,
                       capsys=capsys)
    assert code == 0, err
    start = _weights(tmp_path / "a" / "v1" / "fold0" / "shipped.pt")
    # same classes: every weight; an lr of 1e-9 leaves them where they started, so what started is visible
    code, out, err = cli(train_script, "--version", "v1", "--data", data, "--out", tmp_path / "b", *TINY,
                         "--init-from", tmp_path / "a" / "v1", "--lr", "1e-9", "--scheduler", "constant",
                         capsys=capsys)
    assert code == 0, err
    assert "weights loaded (epoch 1 of that run); a fresh schedule" in out
    after = _weights(tmp_path / "b" / "v1" / "fold0" / "last.pt")
    for key, value in start.items():
        torch.testing.assert_close(after[key], value, atol=1e-6, rtol=0)
    assert checkpoint.read(tmp_path / "b" / "v1" / "fold0" / "last.pt").progress.epoch == 1
    # other classes (fine-tuning on new data): the backbone, and a new classifier
    shutil.rmtree(data / "watches")
    code, out, err = cli(train_script, "--version", "v1", "--data", data, "--out", tmp_path / "c", *TINY,
                         "--init-from", tmp_path / "a" / "v1" / "fold0" / "shipped.pt", "--lr", "1e-9",
                         "--scheduler", "constant", capsys=capsys)
    assert code == 0, err
    assert "its 3 classes differ from these 2: backbone loaded, new classifier" in out
    tuned = _weights(tmp_path / "c" / "v1" / "fold0" / "last.pt")
    head = {k for k in tuned if tuned[k].shape != start[k].shape}
    assert head and all(k.startswith("classifier") for k in head)
    for key in set(start) - head:
        torch.testing.assert_close(tuned[key], start[key], atol=1e-6, rtol=0)


def test_a_run_and_its_data_moved_to_other_folders_resume_to_the_same_result(tmp_path):
    data = write_folder_dataset(tmp_path / "data", counts=(8, 6, 6))

    def config(data_dir, out):
        return resolve("v1", tiny_overrides(data_dir, out, model="tiny_efficientnet", epochs=3))

    engine.fit(config(data, tmp_path / "ref"), 0, log=lambda *a, **k: None)

    class Killed(Exception):
        pass

    def kill_in_epoch_2(line, *args, **kwargs):
        if str(line).startswith("epoch 2/3"):
            raise Killed

    with pytest.raises(Killed):
        engine.fit(config(data, tmp_path / "run"), 0, log=kill_in_epoch_2)
    shutil.move(tmp_path / "data", tmp_path / "moved-data")
    shutil.move(tmp_path / "run", tmp_path / "moved-run")
    engine.fit(config(tmp_path / "moved-data", tmp_path / "moved-run"), 0, log=lambda *a, **k: None)
    ours = checkpoint.read(tmp_path / "moved-run" / "v1" / "fold0" / "shipped.pt").model
    reference = checkpoint.read(tmp_path / "ref" / "v1" / "fold0" / "shipped.pt").model
    for key, value in reference.items():
        assert torch.equal(ours[key], value), key


def test_a_run_killed_before_metrics_json_ships_again_on_resume_to_the_same_model(data_dir, tmp_path, monkeypatch):
    """metrics.json is written last and is the one sign of a finished fold (run.is_finished): a run killed after
    last.pt was marked finished but before metrics.json runs the shipping steps again (candidate, cRT from
    before_crt.pt, tau) and ends with the model and scores of a run that was never killed."""
    from imgcls import run, shipping
    extra = dict(model="tiny_efficientnet", epochs=2, crt_steps=50)
    _, full = _fit("v4", data_dir, tmp_path / "a", **extra)

    class Killed(Exception):
        pass

    real_write = shipping.atomic_write

    def killed_at_metrics(path, data):
        if Path(path).name == "metrics.json":
            raise Killed
        return real_write(path, data)
    monkeypatch.setattr(shipping, "atomic_write", killed_at_metrics)
    with pytest.raises(Killed):
        _fit("v4", data_dir, tmp_path / "b", **extra)
    fold = tmp_path / "b" / "v4" / "fold0"
    assert checkpoint.read(fold / "last.pt").finished and not run.is_finished(fold)
    monkeypatch.setattr(shipping, "atomic_write", real_write)
    _, resumed = _fit("v4", data_dir, tmp_path / "b", **extra)
    assert run.is_finished(fold)
    a, b = (checkpoint.read(Path(r["run_dir"]) / "shipped.pt") for r in (full, resumed))
    assert a.decision_tau == b.decision_tau and all(torch.equal(a.model[k], b.model[k]) for k in a.model)
    ma, mb = (json.loads((Path(r["run_dir"]) / "metrics.json").read_text()) for r in (full, resumed))
    assert (ma["accuracy"], ma["macro_f1"]) == (mb["accuracy"], mb["macro_f1"])
    assert sorted(p.name for p in fold.iterdir()) == sorted(p.name for p in Path(full["run_dir"]).iterdir())
