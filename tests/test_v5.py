"""v5: the EMA of the weights (against a hand-rolled average and timm's ModelEmaV3), selection of the annealed
model, the cross-fitted fold ensemble (v5's default: every image outside the test split trained on by two of
three members), the refit on train + validation that carries the chosen settings (--refit), and v5 end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm.utils
import torch
from sklearn.metrics import f1_score
from torch import nn
from torch.optim.swa_utils import AveragedModel

from imgcls import checkpoint, engine
from imgcls.presets import resolve
from imgcls.data import load_dataset
from imgcls.decision import adjust, choose_tau
from imgcls.decoupling import extract_features, retrain_classifier
from imgcls.inference import predict_dataset
from imgcls.metrics import classification_metrics
from imgcls.models import create_model
from imgcls.selection import ema_multi_avg_fn, make_ema, pick
from tests.helpers import tiny_overrides, write_folder_dataset

pytestmark = pytest.mark.slow  # trains runs or starts processes: outside the fast lane (pytest -m "not slow")

ROOT = Path(__file__).resolve().parents[1]
QUIET = dict(log=lambda *a, **k: None)
REFIT = dict(refit=True, folds="1")  # v5 as one model: choose on validation, then train on train + validation


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_folder_dataset(tmp_path_factory.mktemp("data"), counts=(60, 20, 8))


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _sgd_steps(net: nn.Module, steps: int):
    """Train net by SGD on random inputs, yielding the 1-based step after each update."""
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for step in range(1, steps + 1):
        x = torch.randn(16, 4, generator=torch.Generator().manual_seed(step))
        loss = net(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        yield step


def test_ema_equals_a_hand_rolled_exponential_average_and_timms_model_ema_v3():
    net, decay = _tiny_net(), 0.9
    ema = make_ema(net, decay, warmup=True)
    reference = timm.utils.ModelEmaV3(net, decay=decay, use_warmup=True)
    hand = None
    for step in _sgd_steps(net, 40):
        ema.update_parameters(net)
        reference.update(net, step=step)
        current = {k: v.detach().clone() for k, v in net.state_dict().items()}
        if hand is None:  # the first update copies the model
            hand = current
        else:  # decay warms up as 1 - (1 + k)^(-2/3) after k earlier updates, capped at `decay`
            d = min(decay, 1 - (1 + (step - 1)) ** (-2 / 3))
            hand = {k: (d * hand[k] + (1 - d) * current[k]) if v.is_floating_point() else current[k]
                    for k, v in hand.items()}
    ours = ema.module.state_dict()
    assert set(ours) == set(hand)
    for key, value in hand.items():
        torch.testing.assert_close(ours[key], value, rtol=1e-5, atol=1e-6)  # parameters and BN buffers
        torch.testing.assert_close(ours[key], reference.module.state_dict()[key], rtol=1e-5, atol=1e-6)
    assert int(ours["1.num_batches_tracked"]) == 40  # integer buffers are copied, not averaged
    assert not torch.allclose(ours["3.weight"], net.state_dict()["3.weight"])  # it is an average, not a copy


def test_no_ema_when_the_decay_is_zero():
    assert make_ema(_tiny_net(), 0.0) is None


def test_selection_prefers_the_annealed_model_where_one_single_image_class_flips_the_old_rule():
    """Validation: 40 + 40 images of two big classes and 1 image of a third. The earlier epoch gets the one
    image right but is worse on the big classes; the annealed (last) model is better on 79 images and misses
    the one. Macro-F1 (today's rule) picks the earlier epoch, the validation loss picks the annealed model."""
    y = np.array([0] * 40 + [1] * 40 + [2])

    def probs(correct_big: int, third_right: bool, confidence: float) -> np.ndarray:
        p = np.full((len(y), 3), (1 - confidence) / 2)
        for i, label in enumerate(y[:80]):
            right = (i % 40) < correct_big
            p[i, label if right else 1 - label] = confidence
        p[80, 2 if third_right else 0] = confidence
        p[80, [c for c in range(3) if c != (2 if third_right else 0)]] = (1 - confidence) / 2
        return p

    epoch = probs(correct_big=34, third_right=True, confidence=0.7)   # 68/80 big-class images right
    last = probs(correct_big=38, third_right=False, confidence=0.8)   # 76/80 right, the single image missed

    def scores(p):
        m = classification_metrics(y, p.argmax(1), ["a", "b", "c"])
        m["loss"] = float(-np.log(p[np.arange(len(y)), y]).mean())
        return m

    candidates = {"last": scores(last), "best epoch": scores(epoch)}
    assert candidates["best epoch"]["macro_f1"] > candidates["last"]["macro_f1"]  # the flip the case is built on
    assert candidates["last"]["accuracy"] > candidates["best epoch"]["accuracy"]
    assert pick(candidates, by="macro_f1") == "best epoch"  # today's rule
    assert pick(candidates, by="loss") == "last"           # --select last


def test_pick_breaks_ties_toward_the_first_candidate():
    same = {"loss": 0.5, "macro_f1": 0.5}
    assert pick({"last": same, "ema": dict(same)}, by="loss") == "last"
    assert pick({"best": same, "swa": dict(same)}, by="macro_f1") == "best"


def _model(record: checkpoint.Checkpoint) -> nn.Module:
    model = create_model(record.model_name, record.num_classes, pretrained=None)
    model.load_state_dict(record.model)
    return model.eval()


@pytest.fixture(scope="module")
def v5_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = resolve("v5", tiny_overrides(data_dir, out, model="tiny_efficientnet", epochs=2, crt_steps=100,
                                       ema_decay=0.99, **REFIT))
    engine.fit(cfg, 0, **QUIET)
    return cfg, out / "v5" / "fold0"


def test_refit_trains_on_exactly_train_plus_validation_and_carries_tau_and_epochs(v5_run, data_dir):
    cfg, rdir = v5_run
    split = json.loads((rdir / "split.json").read_text())
    train, val, test = (set(split["folds"][0]["train"]), set(split["folds"][0]["val"]), set(split["test"]))
    everything = np.array(sorted(train | val))
    assert not (train | val) & test and len(val) > 0
    dataset = load_dataset(str(data_dir), cache_dir=None, log=lambda *a: None)
    labels = dataset.labels.numpy()
    select_best, best = checkpoint.read(rdir / "select" / "shipped.pt"), checkpoint.read(rdir / "shipped.pt")
    # the selection stage trained on the training split only; the refit on train + validation
    assert select_best.train_class_counts == np.bincount(labels[sorted(train)], minlength=3).tolist()
    assert best.train_class_counts == np.bincount(labels[everything], minlength=3).tolist()
    metrics = json.loads((rdir / "metrics.json").read_text())
    select_metrics = json.loads((rdir / "select" / "metrics.json").read_text())
    assert metrics["train_images"] == len(everything) and select_metrics["train_images"] == len(train)
    # the refit's cRT head (v5: square-root sampling) is re-trained on the features of exactly those images
    stage1 = checkpoint.read(rdir / "before_crt.pt")
    pre = best.preprocessing
    feats = extract_features(_model(stage1), dataset.images, everything, img_size=pre.img_size, mean=pre.mean,
                             std=pre.std, device=torch.device("cpu"))
    head = retrain_classifier(feats, dataset.labels[everything], 3, sampler=cfg.crt_sampler, settings=cfg.to_dict(),
                              steps=100, seed=cfg.seed)
    torch.testing.assert_close(best.model["classifier.1.weight"], head.weight)
    # carried over: the tau chosen on validation, the kind of candidate, the epochs; the held-out score is the
    # selection stage's (the refit has none of its own)
    assert best.decision_tau == select_best.decision_tau and best.selected == select_best.selected
    assert best.epoch == select_best.epoch == cfg.epochs
    assert metrics["macro_f1"] == select_metrics["macro_f1"] and metrics["refit"] is True
    assert metrics["train_time_s"] == pytest.approx(select_metrics["train_time_s"] + metrics["refit_train_time_s"])
    refit_last = checkpoint.read(rdir / "last.pt")
    assert refit_last.progress.epoch == cfg.epochs and refit_last.finished
    # the refit trained a new model: its backbone differs from the selection stage's
    first = next(iter(stage1.model))
    assert not torch.equal(stage1.model[first], select_best.model[first])


def test_select_last_ships_the_final_weights_or_their_ema_by_validation_loss(v5_run):
    _, rdir = v5_run
    sdir = rdir / "select"
    last, stage1 = checkpoint.read(sdir / "last.pt"), checkpoint.read(sdir / "before_crt.pt")
    assert stage1.selected in ("last", "ema")
    shipped = last.model if stage1.selected == "last" else last.ema_model
    for key, value in stage1.model.items():
        assert torch.equal(value, shipped[key]), key
    assert (sdir / "best_epoch.pt").is_file()  # today's rule's candidate, kept for comparison


def test_ema_and_refit_resume_bit_exact_after_a_kill(data_dir, tmp_path):
    class Killed(Exception):
        pass

    def kill_at(marker):
        def log(line, *args, **kwargs):
            if marker in str(line):
                raise Killed
        return log

    def config(out):
        return resolve("v5", tiny_overrides(data_dir, out, model="tiny_efficientnet", epochs=3, crt_steps=50,
                                            ema_decay=0.99, **REFIT))

    engine.fit(config(tmp_path / "a"), 0, **QUIET)
    cfg = config(tmp_path / "b")
    with pytest.raises(Killed):  # in the selection stage, after epoch 2 trained (last.pt keeps epoch 1)
        engine.fit(cfg, 0, log=kill_at("epoch 2/3"))
    assert checkpoint.read(tmp_path / "b" / "v5" / "fold0" / "select" / "last.pt").ema_model is not None
    def kill_in_refit_epoch_3(line, *args, **kwargs):
        if str(line).startswith("epoch 3/3") and "val_loss" not in str(line):  # the refit logs no validation
            raise Killed

    with pytest.raises(Killed):  # in the refit, after its epoch 3 trained (its last.pt keeps epoch 2)
        engine.fit(cfg, 0, log=kill_in_refit_epoch_3)
    engine.fit(cfg, 0, **QUIET)
    for sub in ("select/last.pt", "select/shipped.pt", "last.pt", "shipped.pt"):
        a = checkpoint.read(tmp_path / "a" / "v5" / "fold0" / sub)
        b = checkpoint.read(tmp_path / "b" / "v5" / "fold0" / sub)
        for key in a.model:
            assert torch.equal(a.model[key], b.model[key]), (sub, key)
        if a.ema_model is not None:
            for key in a.ema_model:
                assert torch.equal(a.ema_model[key], b.ema_model[key]), (sub, key)
        assert a.decision_tau == b.decision_tau


def test_restart_and_resume_refused_before_anything_is_deleted(v5_run):
    """A finished refit run: rerunning returns its result without touching either stage's files."""
    cfg, rdir = v5_run
    before = {p: p.stat().st_mtime_ns for p in rdir.rglob("*.pt")}
    again = engine.fit(cfg, 0, **QUIET)
    assert again["selected"] == checkpoint.read(rdir / "shipped.pt").selected
    assert {p: p.stat().st_mtime_ns for p in rdir.rglob("*.pt")} == before


@pytest.mark.parametrize("flags, message", [
    (["--folds", "1", "--scheduler", "plateau"], "--refit: the plateau schedule follows validation scores"),
    (["--folds", "3"], "--refit with --folds 3: every fold's refit would train on the same images"),
])
def test_refit_refuses_settings_it_cannot_honour_before_any_work(flags, message, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--version", "v5", "--refit", "true",
                           "--out", str(tmp_path), *flags],
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {message}" + proc.stderr.strip().split(message, 1)[1]]
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_v5_end_to_end_on_the_demo_data_a_cross_fitted_ensemble_then_predict(tmp_path):
    """v5's default: 3 folds, each member trains on the two thirds outside its validation third (which together
    cover every image outside the test split), chooses its tau on that third, and predict.py averages the
    members' adjusted probabilities."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT),
               XDG_CACHE_HOME=str(tmp_path / "cache"))
    train = subprocess.run([sys.executable, str(ROOT / "train.py"), "--version", "v5", "--fold", "all",
                            "--model", "tiny_efficientnet", "--pretrained", "none", "--epochs", "2",
                            "--crt-steps", "50", "--out", str(tmp_path / "runs"), "--device", "cpu"],
                           env=env, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]
    run = tmp_path / "runs" / "v5"
    split = json.loads((run / "split.json").read_text())
    test = np.array(split["test"])
    assert len(split["folds"]) == 3
    vals = [np.array(f["val"]) for f in split["folds"]]
    records = [checkpoint.read(run / f"fold{k}" / "shipped.pt") for k in range(3)]
    dataset = load_dataset(None, size=tuple(records[0].preprocessing.storage_size), cache_dir=None,
                           log=lambda *a: None)
    labels = dataset.labels.numpy()
    outside_test = np.setdiff1d(np.arange(len(labels)), test)
    # the validation thirds are disjoint and together are every image outside the test split, but for the
    # classes too small to split three ways (the split keeps those in every member's training set)
    in_val = np.concatenate(vals)
    assert len(np.unique(in_val)) == len(in_val)
    never = np.setdiff1d(outside_test, in_val)
    kept = {int(c): n for c, n in split["kept_in_train"].items()}
    assert set(labels[never].tolist()) == set(kept) and len(never) == sum(kept.values())
    np.testing.assert_array_equal(np.sort(np.union1d(in_val, never)), outside_test)
    member_probs = []
    for k, (record, val) in enumerate(zip(records, vals)):
        train_k = np.array(split["folds"][k]["train"])
        np.testing.assert_array_equal(np.sort(train_k), np.setdiff1d(outside_test, val))
        assert record.train_class_counts == np.bincount(labels[train_k], minlength=record.num_classes).tolist()
        assert record.selected in ("last", "ema")
        # the member's tau is the one its own validation third chooses (decision.choose_tau)
        pre = record.preprocessing
        model = _model(record)
        val_probs = predict_dataset(model, dataset.images, val, img_size=pre.img_size, mean=pre.mean, std=pre.std,
                                    device=torch.device("cpu"))
        assert record.decision_tau == choose_tau(val_probs, labels[val], record.train_class_counts)[0]
        probs = predict_dataset(model, dataset.images, test, img_size=pre.img_size, mean=pre.mean, std=pre.std,
                                device=torch.device("cpu"))
        member_probs.append(adjust(probs, record.train_class_counts, record.decision_tau))
    pred = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--run", str(run),
                           "--device", "cpu", "--out", str(tmp_path / "pred.csv")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert pred.returncode == 0, pred.stdout[-2000:] + pred.stderr[-2000:]
    ours = f1_score(labels[test], np.mean(member_probs, axis=0).argmax(1), average="macro", zero_division=0)
    metrics_files = list(tmp_path.glob("pred*/metrics.json")) + list(tmp_path.glob("metrics.json"))
    assert metrics_files, list(tmp_path.iterdir())
    assert json.loads(metrics_files[0].read_text())["macro_f1"] == pytest.approx(ours, abs=1e-9)


def test_training_one_fold_of_an_ensemble_says_how_to_train_the_rest(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(tmp_path / "cache"))
    train = subprocess.run([sys.executable, str(ROOT / "train.py"), "--version", "v5", "--fold", "1",
                            "--model", "tiny_efficientnet", "--pretrained", "none", "--epochs", "1",
                            "--crt-steps", "10", "--out", str(tmp_path / "runs"), "--device", "cpu"],
                           env=env, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]
    assert train.stdout.strip().splitlines()[-1] == (
        "fold 1 of 3 trained; the ensemble lacks folds 0, 2: train them with --fold all (finished folds are "
        "skipped), or predict with the folds there are")


def test_predict_on_the_validation_split_of_a_refit_run_says_it_was_trained_on(v5_run, tmp_path):
    cfg, rdir = v5_run
    proc = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--run", str(rdir.parent), "--split", "val",
                           "--device", "cpu", "--out", str(tmp_path / "val.csv")],
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT)), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refitted on train + validation (--refit): these validation images were trained on" in proc.stdout


def test_the_ema_with_its_pairs_kept_equals_averaged_model_step_for_step_and_across_a_resume():
    """selection.EMA keeps its tensor pairs between updates; torch's AveragedModel with the same multi_avg_fn
    (which walks the modules every time) must give the same weights, before and after a load_state_dict."""
    net, decay = _tiny_net(), 0.95
    ours = make_ema(net, decay, warmup=True)
    reference = AveragedModel(net, multi_avg_fn=ema_multi_avg_fn(decay, True), use_buffers=True)
    for step in _sgd_steps(net, 30):
        ours.update_parameters(net)
        reference.update_parameters(net)
        if step == 12:  # a resume: a fresh EMA loads the saved state and goes on
            saved = ours.state_dict()
            ours = make_ema(_tiny_net(), decay, warmup=True)
            ours.load_state_dict(saved)
        for key, value in reference.state_dict().items():
            assert torch.equal(ours.state_dict()[key], value), (step, key)
    assert int(ours.n_averaged) == 30 and int(ours.module[1].num_batches_tracked) == 30
