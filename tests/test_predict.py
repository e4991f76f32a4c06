"""predict.py: fold ensembles, TTA, logit adjustment, outputs and errors, against independent computations."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from imgcls import checkpoint, engine
from imgcls.presets import resolve
from imgcls.data import load_dataset
from imgcls.data.augment import eval_transform
from imgcls.errors import UserError
from imgcls.metrics import classification_metrics
from imgcls.models import create_model
from imgcls.decision import adjust as logit_adjust
from imgcls.predict import predict
from predict import build_parser
from tests.helpers import tiny_overrides, write_folder_dataset

pytestmark = pytest.mark.slow  # trains runs or starts processes: outside the fast lane (pytest -m "not slow")

QUIET = dict(log=lambda *a, **k: None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-fold v2.1-style run on tiny generated images (TTA off, so that a bare predict is one view)."""
    root = tmp_path_factory.mktemp("pred")
    data = write_folder_dataset(root / "data")
    cfg = resolve("v2.1", tiny_overrides(data, root / "runs", model="tiny_convnext", folds="2", epochs=2,
                                         swa_start=None, early_stop=None, warmup_epochs=0, tta=False))
    for fold in (0, 1):
        engine.fit(cfg, fold, **QUIET)
    return root, data, cfg


def args_for(*argv):
    return build_parser().parse_args([str(a) for a in argv])


def _fold_probs(rdir: Path, images_uint8: torch.Tensor, views=None) -> np.ndarray:
    state = checkpoint.load(rdir / "shipped.pt")
    model = create_model(state["model_name"], state["num_classes"], **QUIET)
    model.load_state_dict(state["model"])
    model.eval()
    pre = state["preprocessing"]
    with torch.no_grad():
        x = eval_transform(images_uint8, tuple(pre["img_size"]), pre["mean"], pre["std"])
        if views == "hflip":
            x = x.flip(-1)
        return torch.softmax(model(x), 1).numpy()


def test_default_ensembles_every_fold_on_the_held_out_test_split(trained, tmp_path):
    root, data, cfg = trained
    run = root / "runs" / "v2.1"
    out = tmp_path / "p" / "predictions.csv"
    result = predict(args_for("--run", run, "--out", out, "--cache-dir", root / "runs" / "cache"), **QUIET)
    split = json.loads((run / "split.json").read_text())
    dataset = load_dataset(str(data), cache_dir=str(root / "runs" / "cache"), workers=1, **QUIET)
    test = torch.as_tensor(split["test"])
    expected = np.mean([_fold_probs(run / f"fold{k}", dataset.images[test]) for k in (0, 1)], axis=0)
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == len(split["test"]) == result["num_images"]
    names = dataset.class_names
    assert [r["label"] for r in rows] == [names[i] for i in expected.argmax(1)]
    np.testing.assert_allclose([float(r["confidence"]) for r in rows], expected.max(1), atol=1e-5)
    assert [r["id"] for r in rows] == [Path(dataset.paths[i]).stem for i in split["test"]]
    metrics = json.loads((out.with_suffix("") / "metrics.json").read_text())
    ref = classification_metrics(dataset.labels.numpy()[split["test"]], expected.argmax(1), names)
    assert metrics["accuracy"] == pytest.approx(ref["accuracy"])
    assert metrics["macro_f1"] == pytest.approx(ref["macro_f1"])
    assert (out.with_suffix("") / "report.txt").is_file() and (out.with_suffix("") / "confusion.png").is_file()
    assert len(metrics["models"]) == 2 and metrics["split"] == "test"


def test_tta_views_are_averaged(trained, tmp_path):
    root, data, _ = trained
    run = root / "runs" / "v2.1"
    common = ["--run", run, "--fold", "0", "--cache-dir", root / "runs" / "cache"]
    plain = predict(args_for(*common, "--out", tmp_path / "a.csv"), **QUIET)
    identity = predict(args_for(*common, "--tta", "--views", "identity", "--out", tmp_path / "b.csv"), **QUIET)
    flip = predict(args_for(*common, "--tta", "--views", "identity,hflip", "--out", tmp_path / "c.csv"), **QUIET)
    assert open(tmp_path / "a.csv").read() == open(tmp_path / "b.csv").read()
    assert plain["metrics"]["views"] == ["identity"] and flip["metrics"]["views"] == ["identity", "hflip"]
    dataset = load_dataset(str(data), cache_dir=str(root / "runs" / "cache"), workers=1, **QUIET)
    test = torch.as_tensor(json.loads((run / "split.json").read_text())["test"])
    expected = (_fold_probs(run / "fold0", dataset.images[test]) +
                _fold_probs(run / "fold0", dataset.images[test], "hflip")) / 2
    rows = list(csv.DictReader(open(tmp_path / "c.csv")))
    np.testing.assert_allclose([float(r["confidence"]) for r in rows], expected.max(1), atol=1e-5)


def test_logit_adjustment_formula():
    probs = np.array([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]], dtype=np.float32)
    counts = [80, 15, 5]
    assert np.allclose(logit_adjust(probs, counts, 0.0), probs, atol=1e-6)
    prior = np.array(counts) / 100
    ref = np.exp(np.log(probs) - 1.0 * np.log(prior))
    ref /= ref.sum(1, keepdims=True)
    np.testing.assert_allclose(logit_adjust(probs, counts, 1.0), ref, rtol=1e-5)
    assert logit_adjust(probs, counts, 1.0)[1].argmax() == 2  # the rare class wins once the prior is removed


def test_unreadable_images_are_reported_not_fatal(trained, tmp_path):
    root, data, _ = trained
    good = sorted((data / "shoes").glob("*.png"))[:2]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"")
    out = tmp_path / "p" / "predictions.csv"
    result = predict(args_for("--run", root / "runs" / "v2.1", "--images", *good, bad, "--out", out), **QUIET)
    rows = list(csv.DictReader(open(out)))
    assert [r["path"] for r in rows] == [str(p) for p in good] and result["skipped"] == 1
    skipped = json.loads((out.with_suffix("") / "skipped.json").read_text())
    assert str(bad) in json.dumps(skipped)
    assert "metrics" not in result  # no labels for loose files


def test_errors_name_the_problem(trained, tmp_path):
    root, data, _ = trained
    with pytest.raises(UserError, match="no such run folder"):
        predict(args_for("--run", tmp_path / "missing"), **QUIET)
    # A data set with a class the model never saw.
    other = write_folder_dataset(tmp_path / "other", counts=(3, 3, 3))
    (other / "watches").rename(other / "hats")
    with pytest.raises(UserError, match=r"classes \['hats'\] are not among the model's 3 classes"):
        predict(args_for("--run", root / "runs" / "v2.1", "--data", other, "--cache-dir", tmp_path / "c"),
                **QUIET)
    # A checkpoint whose weights do not fit its recorded model / number of classes.
    state = checkpoint.load(root / "runs" / "v2.1" / "fold0" / "shipped.pt")
    state["num_classes"] = 5
    checkpoint.save_atomic(state, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="weights do not fit tiny_convnext with 5 classes"):
        predict(args_for("--checkpoint", tmp_path / "bad.pt", "--data", data, "--cache-dir", tmp_path / "c"),
                **QUIET)


def test_the_runs_tta_setting_is_the_default_and_flags_override_it(trained, tmp_path):
    root, _, _ = trained
    assert checkpoint.read(root / "runs" / "v2.1" / "fold1" / "shipped.pt").config["fold"] == 1
    run = tmp_path / "v2.1"
    shutil.copytree(root / "runs" / "v2.1" / "fold0", run / "fold0")
    record = checkpoint.read(run / "fold0" / "shipped.pt")
    assert record.config["tta"] is False and record.config["fold"] == 0
    record.config["tta"] = True  # as the v2.1 and v3 presets record it
    checkpoint.save(record, run / "fold0" / "shipped.pt")
    cache = ["--cache-dir", root / "runs" / "cache"]
    default = predict(args_for("--run", run, *cache), **QUIET)
    off = predict(args_for("--run", run, "--no-tta", *cache), **QUIET)
    assert default["predictions"] == str(run / "predict-test-tta" / "predictions.csv")
    assert default["metrics"]["views"] == ["identity", "hflip", "scale0.9", "scale1.1"]
    assert off["predictions"] == str(run / "predict-test" / "predictions.csv")
    assert off["metrics"]["views"] == ["identity"]


def test_a_checkpoint_from_an_older_format_is_a_user_error(trained, tmp_path):
    root, _, _ = trained
    state = checkpoint.load(root / "runs" / "v2.1" / "fold0" / "shipped.pt")
    del state["format"]
    checkpoint.save_atomic(state, tmp_path / "old.pt")
    with pytest.raises(UserError, match="old.pt: checkpoint format None is not 1"):
        checkpoint.read(tmp_path / "old.pt")
