"""--freeze-features N: the first N blocks of the backbone keep the weights they were loaded with while the rest
trains, and a value the model cannot take is one line naming the flag."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import train
from imgcls.checkpoint import RunState
from imgcls.engine import train_step
from imgcls.errors import UserError
from imgcls.presets import resolve
from imgcls.trainer import Stage, build_trainer, fold_indices, prepare_data
from tests.helpers import assert_one_line_error, cli, snapshot, tiny_overrides, write_folder_dataset


def trained_blocks(tmp_path: Path, freeze: int, model: str = "tiny_efficientnet", steps: int = 3):
    """A v6 Trainer after `steps` updates: (initial block weights, final block weights, the optimizer's
    parameter count)."""
    data_dir = write_folder_dataset(tmp_path / "data", counts=(12, 8, 6))
    cfg = resolve("v6", tiny_overrides(data_dir, tmp_path / "runs", model=model, val_frac=0.2,
                                       freeze_features=freeze))
    data = prepare_data(cfg, log=lambda *a, **k: None)
    train_idx, val_idx = fold_indices(data[1], 0)
    t = build_trainer(cfg, data, Stage(tmp_path / "runs" / "fold0", train_idx, val_idx), None,
                      lambda *a, **k: None)
    before = [[p.detach().clone() for p in block.parameters()] for block in t.model.features]
    state, gen = RunState(), torch.Generator().manual_seed(0)
    for step in range(steps):
        train_step(t, state, torch.as_tensor(train_idx[step * 8:(step + 1) * 8]), gen, t.criterion)
    after = [[p.detach() for p in block.parameters()] for block in t.model.features]
    in_optimizer = sum(len(group["params"]) for group in t.optimizer.param_groups)
    return before, after, in_optimizer, t.model


def unchanged(before, after) -> bool:
    return all(torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("freeze", [1, 2])
def test_the_first_blocks_keep_their_weights_and_the_rest_trains(tmp_path, freeze):
    before, after, in_optimizer, model = trained_blocks(tmp_path, freeze)
    for i, (b, a) in enumerate(zip(before, after)):
        if i < freeze:
            assert unchanged(b, a), f"block {i} changed"
        elif b:
            assert not unchanged(b, a), f"block {i} did not train"
    frozen = sum(1 for block in model.features[:freeze] for _ in block.parameters())
    assert in_optimizer == sum(1 for _ in model.parameters()) - frozen > 0


def test_without_the_flag_the_stem_trains(tmp_path):
    # the same run with nothing frozen moves the stem: what the test above checks can fail
    before, after, in_optimizer, model = trained_blocks(tmp_path, 0)
    assert not unchanged(before[0], after[0])
    assert in_optimizer == sum(1 for _ in model.parameters())


@pytest.mark.parametrize("model, value, fragment", [
    ("tiny_efficientnet", 5, "has 5 feature blocks; pass 0 to 4"),
    ("tiny_efficientnet", -1, "pass 0 to 4"),
    ("tiny_vit", 1, "no sequence of feature blocks"),
])
def test_a_value_the_model_cannot_take_is_refused(tmp_path, model, value, fragment):
    with pytest.raises(UserError) as caught:
        trained_blocks(tmp_path, value, model=model, steps=0)
    assert f"--freeze-features {value}: {model}" in str(caught.value) and fragment in str(caught.value)


def test_the_command_line_refuses_it_in_one_line(tmp_path, capsys):
    data_dir = write_folder_dataset(tmp_path / "data", counts=(12, 8, 6))
    code, _, err = cli(train, "--version", "v6", "--data", data_dir, "--out", tmp_path / "runs", "--model",
                       "tiny_efficientnet", "--pretrained", "none", "--img-size", "32x32", "--epochs", "1",
                       "--val-frac", "0.2", "--cache-dir", tmp_path / "cache", "--freeze-features", "12",
                       capsys=capsys)
    assert_one_line_error(code, err, "--freeze-features 12", "tiny_efficientnet")


def test_a_bad_value_with_restart_is_refused_before_the_run_folder_is_touched(tmp_path, capsys):
    data_dir = write_folder_dataset(tmp_path / "data", counts=(12, 8, 6))
    run = tmp_path / "runs" / "v6" / "fold0"
    run.mkdir(parents=True)
    (run / "last.pt").write_bytes(b"an earlier run's weights")
    before = snapshot(tmp_path / "runs")
    code, _, err = cli(train, "--version", "v6", "--data", data_dir, "--out", tmp_path / "runs", "--model",
                       "tiny_efficientnet", "--pretrained", "none", "--img-size", "32x32", "--epochs", "1",
                       "--val-frac", "0.2", "--cache-dir", tmp_path / "cache", "--freeze-features", "5",
                       "--restart", capsys=capsys)
    assert_one_line_error(code, err, "--freeze-features 5", "pass 0 to 4")
    assert snapshot(tmp_path / "runs") == before


def test_v6s_preset_value_on_a_model_without_feature_blocks_says_the_preset_set_it(tmp_path, capsys):
    data_dir = write_folder_dataset(tmp_path / "data", counts=(12, 8, 6))
    code, _, err = cli(train, "--version", "v6", "--data", data_dir, "--out", tmp_path / "runs", "--model",
                       "tiny_vit", "--pretrained", "none", "--img-size", "32x32", "--epochs", "1",
                       "--val-frac", "0.2", "--cache-dir", tmp_path / "cache", capsys=capsys)
    assert_one_line_error(code, err, "--freeze-features 3 (v6's preset value)", "pass --freeze-features 0")
