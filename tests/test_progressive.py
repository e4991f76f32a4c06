"""Progressive learning: stages parse and plan by hand, the model sees the planned input size from the
planned update on, the lr schedule counts each update once (the same lrs as a fixed-size run), and a run
killed inside a stage resumes to the same weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from imgcls import checkpoint, engine
from imgcls.checkpoint import RunState
from imgcls.config import parse_phases
from imgcls.presets import resolve
from imgcls.errors import UserError
from imgcls.progressive import plan
from tests.helpers import tiny_overrides, write_folder_dataset

pytestmark = pytest.mark.slow  # trains runs or starts processes: outside the fast lane (pytest -m "not slow")

QUIET = dict(log=lambda *a, **k: None)
STAGES = "0.5:0.5:0.25,1:1:1"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_folder_dataset(tmp_path_factory.mktemp("data"), counts=(40, 16, 8))


def test_stages_parse_and_plan_by_hand():
    assert parse_phases("0.3:0.5,1:1:2") == ((0.3, 0.5, 1.0), (1.0, 1.0, 2.0))
    assert parse_phases([[0.5, 0.5, 0.5], [1, 1, 1]]) == ((0.5, 0.5, 0.5), (1.0, 1.0, 1.0))  # config.json
    assert parse_phases("none") is None
    # 30 updates at 64x48: 0.3 -> update 9, half size; the rest at full size
    assert plan(parse_phases("0.3:0.5,1:1:2"), 30, (64, 48)) == [(9, (32, 24), 1.0), (30, (64, 48), 2.0)]
    for bad in ("0.5:0.5", "1:0.5", "0.5:1,0.4:1,1:1", "a:b", "0.5:2,1:1"):
        with pytest.raises(UserError, match="--progressive"):
            parse_phases(bad)


def _trainer(data_dir, out, **extra):
    cfg = resolve("v1", tiny_overrides(data_dir, out, model="tiny_convnext", epochs=3, scheduler="cosine",
                                       warmup_epochs=1, rotation=10.0, img_size=(64, 64), **extra))
    cfg = dataclasses.replace(cfg, fold=0)
    data = engine.prepare_data(cfg, **QUIET)
    train_idx, val_idx = engine.fold_indices(data[1], 0)
    return engine.build_trainer(cfg, data, engine.Stage(out, train_idx, val_idx), None, QUIET["log"])


def test_the_model_sees_the_planned_size_from_the_planned_update_and_the_schedule_counts_each_once(
        data_dir, tmp_path):
    sizes, lrs = [], {}
    for name, stages in (("fixed", None), ("progressive", STAGES)):
        t = _trainer(data_dir, tmp_path / name, progressive=stages)
        seen = []
        t.model.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
        state = RunState()
        for epoch in range(3):
            engine.train_one_epoch(t, state, epoch)
        lrs[name] = state.lr_history
        sizes = seen
        total = 3 * t.steps_per_epoch
    assert len(lrs["progressive"]) == total and lrs["progressive"] == lrs["fixed"]
    half = round(0.5 * total)
    assert sizes == [(32, 32)] * half + [(64, 64)] * (total - half)
    early, late = t.phases
    assert early.augment.rotation == pytest.approx(2.5) and late.augment.rotation == pytest.approx(10.0)


def test_a_progressive_run_killed_inside_a_stage_resumes_to_the_same_weights(data_dir, tmp_path):
    extra = dict(model="tiny_convnext", epochs=3, progressive="0.6:0.5,1:1", img_size=(64, 64))
    full = engine.fit(resolve("v1", tiny_overrides(data_dir, tmp_path / "a", **extra)), 0, **QUIET)

    class Killed(Exception):
        pass

    def kill_in_epoch_2(line, *args, **kwargs):
        if str(line).startswith("epoch 2/3"):
            raise Killed  # epoch 2 (where the stage changes) trained, its checkpoint not written
    cfg = resolve("v1", tiny_overrides(data_dir, tmp_path / "b", **extra))
    with pytest.raises(Killed):
        engine.fit(cfg, 0, log=kill_in_epoch_2)
    resumed = engine.fit(cfg, 0, **QUIET)
    a, b = (checkpoint.load(Path(r["run_dir"]) / "last.pt") for r in (full, resumed))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["progress"]["lr_history"] == b["progress"]["lr_history"]
    best = checkpoint.load(Path(full["run_dir"]) / "shipped.pt")
    assert tuple(best["preprocessing"]["img_size"]) == (64, 64)  # the last phase's size, for predict.py
    assert np.isfinite(full["metric"])


def test_a_run_saved_before_these_settings_existed_still_resumes():
    """Runs trained before --progressive / --teacher / --contrast existed recorded no such keys: they trained
    with the defaults, so `--fold all` still skips (or resumes) them; a recorded different value is still
    refused."""
    cfg = resolve("v5", {})
    new = ("progressive", "teacher", "distill", "kd_alpha", "kd_temperature", "contrast", "contrast_weight",
           "contrast_temperature")
    saved = {k: v for k, v in cfg.to_dict().items() if k not in new}
    engine._check_resumable(saved, cfg, Path("last.pt"))
    with pytest.raises(UserError, match="kd_alpha: 0.9 -> 0.5"):
        engine._check_resumable(dict(saved, kd_alpha=0.9), cfg, Path("last.pt"))
