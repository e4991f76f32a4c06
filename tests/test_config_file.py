"""`train.py --config FILE` goes through the command line's own path: every value parsed by its flag's parser,
checked by the same range table, before any file is touched; run state (restart, resume) is neither recorded
in config.json nor taken from a config file. Bad input, round three (issue 32)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import train as train_script
from imgcls.config import RUN_STATE, Config
from tests.helpers import (
    assert_one_line_error,
    cli,
    snapshot,
)

TINY = ["--version", "v1", "--model", "tiny_efficientnet", "--pretrained", "none", "--img-size", "32", "--epochs", "1",
        "--batch-size", "8", "--workers", "1", "--eval-batch-size", "64", "--device", "cpu"]
FLAGS = [f for f in dataclasses.fields(Config) if f.name not in ("version", "fold")]
SIZES = {"img_size", "storage_size"}

# (value in a JSON file, the same value typed after the flag). Every pair is tried on every flag.
PAIRS = [(True, "true"), (False, "false"), ("false", "false"), ("no", "no"), ("maybe", "maybe"), (None, "none"),
         (0, "0"), (1, "1"), (3, "3"), (-1, "-1"), (1.5, "1.5"), (0.5, "0.5"), (1e-3, "0.001"), (float("nan"), "nan"),
         (float("inf"), "inf"), ("auto", "auto"), ("bogus", "bogus"), ("", ""), ("sqrt", "sqrt"), ("last", "last"),
         ([0.9, 0.999], "0.9,0.999"), ([0.9], "0.9"), ([[0.5, 0.5, 0.5], [1, 1, 1]], "0.5:0.5:0.5,1:1:1"),
         ([[0.5, 0.5, float("nan")], [1, 1, 1]], "0.5:0.5:nan,1:1:1"), ("0.5:0.5,1:1", "0.5:0.5,1:1")]


def _size_pairs():
    return [([80, 64], "80x64"), ([4, 4], "4x4"), ([64, float("nan")], "64xnan"), ("96", "96")]


def outcome(capsys, *args) -> tuple[int, dict | None]:
    code, out, err = cli(train_script, *args, "--print-config", capsys=capsys)
    if code == 0:
        return code, json.loads(out)
    assert_one_line_error(code, err)
    return code, None


@pytest.mark.parametrize("name", [f.name for f in FLAGS])
def test_a_config_file_value_has_the_outcome_of_the_same_value_typed_after_the_flag(name, tmp_path, capsys,
                                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    flag = "--" + name.replace("_", "-")
    field = next(f for f in FLAGS if f.name == name)
    pairs = PAIRS + (_size_pairs() if name in SIZES else []) + [(c, c) for c in field.metadata["choices"] or ()] \
        + ([("tiny_efficientnet", "tiny_efficientnet")] if name == "model" else [])
    accepted = 0
    for value, text in pairs:
        (tmp_path / "c.json").write_text(json.dumps({name: value}))
        from_file = outcome(capsys, "--config", tmp_path / "c.json")
        typed = outcome(capsys, flag, text)
        if name in RUN_STATE:  # parsed like the flag (so a bad value is refused), then left out of the settings
            assert from_file[0] == typed[0], (name, value, text)
        else:
            assert from_file == typed, (name, value, text)
        accepted += from_file[0] == 0
    assert accepted >= 1  # the comparison covered values the flag takes, not only refusals


def test_config_json_holds_no_run_state_and_an_old_one_with_restart_does_not_delete_the_run(finished_v1, capsys):
    run = finished_v1 / "v1" / "fold0"
    saved = json.loads((run / "config.json").read_text())
    assert not set(RUN_STATE) & set(saved)
    old = finished_v1 / "old-config.json"  # written by an earlier version, from a run started with --restart
    old.write_text(json.dumps(dict(saved, restart=True, resume=False)))
    before = snapshot(finished_v1 / "v1")
    code, out, err = cli(train_script, "--config", old, capsys=capsys)
    assert code == 0, err
    assert "already finished" in out and '"restart": true ignored' in out
    assert snapshot(finished_v1 / "v1") == before


@pytest.mark.parametrize("settings,fragment", [
    ({"restart": "false"}, "already finished"),
    ({"refit": "false"}, "already finished"),
])
def test_booleans_written_as_strings_are_read_as_the_flag_reads_them(finished_v1, settings, fragment, tmp_path,
                                                                     capsys):
    saved = json.loads((finished_v1 / "v1" / "fold0" / "config.json").read_text())
    (tmp_path / "c.json").write_text(json.dumps(dict(saved, **settings)))
    before = snapshot(finished_v1 / "v1")
    code, out, err = cli(train_script, "--config", tmp_path / "c.json", capsys=capsys)
    assert code == 0, err
    assert fragment in out and "refit, stage" not in out
    assert snapshot(finished_v1 / "v1") == before


def test_tta_no_in_a_config_file_is_off(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.json").write_text('{"tta": "no", "version": "v3"}')
    code, config = outcome(capsys, "--config", tmp_path / "c.json")
    assert code == 0 and config["tta"] is False


@pytest.mark.parametrize("key,value,fragment", [
    ("epochs", 1.5, "\"epochs\": 1.5 refused (invalid int value: '1.5')"),
    ("batch_size", 8.5, "\"batch_size\": 8.5 refused"),
    ("img_size", [], "\"img_size\": [] refused"),
    ("img_size", [float("nan"), 32], "\"img_size\": [NaN, 32] refused"),
    ("img_size", [4, 4], "both sides >= 8"),
    ("betas", 0.9, "--betas 0.9: expected two numbers"),
    ("model", None, "--model none: unknown model"),
    ("metric", "auc", "\"metric\": \"auc\" refused (invalid choice"),
    ("cache_mode", "bogus", "\"cache_mode\": \"bogus\" refused"),
    ("amp", "fp8", "\"amp\": \"fp8\" refused"),
    ("optimizer", "adam2", "\"optimizer\": \"adam2\" refused"),
    ("select", "bogus", "\"select\": \"bogus\" refused"),
    ("channels_last", "maybe", "\"channels_last\": \"maybe\" refused"),
    ("restart", "maybe", "\"restart\": \"maybe\" refused"),
    ("progressive", [[0.5, 0.5, float("inf")], [1, 1, 1]], "finite"),
    ("contrast", "bogus", "--contrast bogus: unknown"),
    ("version", 5, "\"version\": 5: expected a preset name"),
])
def test_a_bad_value_in_a_config_file_is_one_line_naming_file_and_key_and_touches_nothing(finished_v1, key, value,
                                                                                          fragment, tmp_path,
                                                                                          capsys):
    saved = json.loads((finished_v1 / "v1" / "fold0" / "config.json").read_text())
    (tmp_path / "c.json").write_text(json.dumps(dict(saved, **{key: value})))
    before = snapshot(finished_v1)
    code, _, err = cli(train_script, "--config", tmp_path / "c.json", capsys=capsys)
    assert_one_line_error(code, err, fragment)
    assert "c.json" in err  # the file the value came from
    assert snapshot(finished_v1) == before


def test_the_range_table_names_the_file_when_the_value_came_from_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.json").write_text('{"epochs": 0}')
    code, _, err = cli(train_script, "--config", tmp_path / "c.json", "--print-config", capsys=capsys)
    assert_one_line_error(code, err, "--epochs 0: expected a number >= 1", "(set in --config")
    code, _, err = cli(train_script, "--config", tmp_path / "c.json", "--epochs", "-2", "--print-config",
                       capsys=capsys)
    assert_one_line_error(code, err, "--epochs -2")
    assert "set in --config" not in err  # typed here: the flag won


def _train(out: Path, *extra, capsys) -> None:
    code, _, err = cli(train_script, "--version", "v1", "--out", out, *TINY, *extra, capsys=capsys)
    assert code == 0, err


@pytest.mark.parametrize("flag", ["--init-from", "--teacher"])
def test_restart_never_deletes_the_run_that_init_from_or_teacher_reads(finished_v1, flag, capsys):
    before = snapshot(finished_v1 / "v1")
    source = finished_v1 / "v1"
    code, _, err = cli(train_script, "--version", "v1", "--out", finished_v1, *TINY, flag, source, "--restart",
                       capsys=capsys)
    assert_one_line_error(code, err, f"--restart would delete {source / 'fold0'}, which {flag} {source} reads")
    assert "another --out" in err
    assert snapshot(finished_v1 / "v1") == before
    # without --restart the refusal's advice is advice that works: another --out, not --restart
    code, _, err = cli(train_script, "--version", "v1", "--out", finished_v1, *TINY, flag, source,
                       "--lr", "0.5", capsys=capsys)
    if flag == "--init-from":
        assert_one_line_error(code, err, "pass another --out", "--restart is no way out")
        assert "pass --restart" not in err
    else:
        assert code == 2 and "pass --restart" not in err
    assert snapshot(finished_v1 / "v1") == before


def test_restart_never_deletes_the_folder_the_config_file_is_in(finished_v1, capsys):
    config = finished_v1 / "v1" / "fold0" / "config.json"
    before = snapshot(finished_v1 / "v1")
    code, _, err = cli(train_script, "--config", config, "--restart", capsys=capsys)
    assert_one_line_error(code, err, "--restart would delete", f"--config {config} reads")
    assert snapshot(finished_v1 / "v1") == before


def test_find_lr_has_an_upper_bound(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(train_script, "--model", "tiny_efficientnet", "--find-lr", "1000000000000", capsys=capsys)
    assert_one_line_error(code, err, "--find-lr 1000000000000: expected a number in [2, 10000]")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag,value", [("--refit", "maybe"), ("--ema-warmup", "maybe"), ("--compile", "2")])
def test_a_bad_boolean_flag_names_the_flag(flag, value, capsys):
    code, _, err = cli(train_script, flag, value, "--print-config", capsys=capsys)
    assert_one_line_error(code, err, f"argument {flag}", "expected true/false")


@pytest.mark.parametrize("stages", ["0.5:0.5:nan,1:1:1", "0.5:0.5:inf,1:1:1", "0.5:0.5,1:1:nan", "0.5:nan,1:1",
                                    "0.5:0.5:-1,1:1:1", "nan:0.5,1:1"])
def test_progressive_strengths_and_sizes_are_checked_at_parse_time(stages, capsys):
    code, _, err = cli(train_script, "--progressive", stages, "--print-config", capsys=capsys)
    assert_one_line_error(code, err, "--progressive")


def test_a_progressive_size_the_vit_patch_does_not_divide_is_refused_naming_progressive(capsys):
    code, _, err = cli(train_script, "--model", "tiny_vit", "--img-size", "64", "--progressive", "0.5:0.3,1:1",
                       "--print-config", capsys=capsys)
    assert_one_line_error(code, err, "--progressive 0.5:0.3:1,1:1:1: stage 1 trains at 19x19",
                          "8-pixel patches")
    code, _, err = cli(train_script, "--model", "tiny_vit", "--img-size", "64", "--progressive", "0.5:0.5,1:1",
                       "--print-config", capsys=capsys)
    assert code == 0, err  # 32x32: the patch divides it


def test_a_model_typo_suggests_the_closest_names_in_their_own_order(capsys):
    code, _, err = cli(train_script, "--model", "efficientnet_bo", "--print-config", capsys=capsys)
    assert_one_line_error(code, err, "did you mean efficientnet_b0 or")


def test_a_refusal_after_a_config_file_note_is_still_one_line(finished_v1, capsys):
    """The note on an ignored "restart" comes only once the settings are valid, so a refusal stays one line."""
    saved = json.loads((finished_v1 / "v1" / "fold0" / "config.json").read_text())
    old = finished_v1 / "old-config-bad.json"
    old.write_text(json.dumps(dict(saved, restart=True)))
    before = snapshot(finished_v1 / "v1")
    code, _, err = cli(train_script, "--config", old, "--epochs", "0", capsys=capsys)
    assert_one_line_error(code, err, "--epochs 0")
    assert snapshot(finished_v1 / "v1") == before


def test_config_file_round_trip_reproduces_the_runs_config_and_flags_win(finished_v1, capsys):
    saved = json.loads((finished_v1 / "v1" / "fold0" / "config.json").read_text())
    code, out, err = cli(train_script, "--config", finished_v1 / "v1" / "fold0" / "config.json",
                         "--print-config", capsys=capsys)
    assert code == 0, err
    assert json.loads(out) == saved
    code, out, err = cli(train_script, "--config", finished_v1 / "v1" / "fold0" / "config.json", "--lr", "0.5",
                         "--print-config", capsys=capsys)
    assert code == 0 and json.loads(out) == dict(saved, lr=0.5)


def test_a_config_file_with_an_unknown_setting_is_one_line(tmp_path, capsys):
    (tmp_path / "c.json").write_text('{"lr": 0.1, "learning_rate": 0.1}')
    code, _, err = cli(train_script, "--config", tmp_path / "c.json", "--print-config", capsys=capsys)
    assert_one_line_error(code, err, "c.json: unknown settings learning_rate")
