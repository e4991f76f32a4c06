"""One name per setting: the decision tau is `decision_tau` / `--decision-tau` everywhere, with one range; the
loss's own tau is `loss_tau`; old names are accepted only as aliases that say they are old."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import export as export_script
import imgcls
import predict as predict_script
import train as train_script
from helpers import assert_one_line_error, cli
from imgcls.flags import read_config_file
from imgcls.run import saved_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", [predict_script, export_script])
def test_logit_adjust_is_the_decision_taus_old_name_on_predict_and_export(script):
    parser = script.build_parser()
    base = ["--run", "r"]
    assert vars(parser.parse_args(base + ["--logit-adjust", "0.5"])) == \
        vars(parser.parse_args(base + ["--decision-tau", "0.5"]))
    assert "--logit-adjust is its old name" in " ".join(parser.format_help().split())


def test_tau_is_the_loss_taus_old_name_as_flag_config_file_and_saved_run(tmp_path):
    parser = train_script.build_parser()
    assert vars(parser.parse_args(["--tau", "2"])) == {**vars(parser.parse_args([])), "loss_tau": 2.0}
    assert "--tau: its old name" in " ".join(parser.format_help().split())
    (tmp_path / "c.json").write_text(json.dumps({"tau": 2.0, "loss": "logit_adjusted"}))
    assert read_config_file(str(tmp_path / "c.json")) == {"loss_tau": 2.0, "loss": "logit_adjusted"}
    assert saved_config({"tau": 2.0}).loss_tau == 2.0  # a run saved before the rename


def test_no_other_spelling_of_the_decision_tau_in_the_package():
    """'logit_adjust' / '--logit-adjust' (not the loss 'logit_adjusted') only where the aliases are defined."""
    allowed = {"imgcls/commands/predict.py", "imgcls/commands/export.py", "imgcls/api.py"}
    found = {str(p.relative_to(ROOT)) for p in (ROOT / "imgcls").rglob("*.py")
             if re.search(r"logit[-_]adjust(?!ed)\b", p.read_text())}
    assert found == allowed


def test_one_range_for_the_decision_tau_everywhere(finished_v1, tmp_path, capsys):
    run = finished_v1 / "v1"
    code, _, err = cli(train_script, "--version", "v4", "--decision-tau", "11", "--print-config", capsys=capsys)
    assert_one_line_error(code, err, "--decision-tau 11", "[-10, 10]")
    for script in (predict_script, export_script):
        code, _, err = cli(script, "--run", run, "--decision-tau", "11", "--out", tmp_path / "x", capsys=capsys)
        assert_one_line_error(code, err, "--decision-tau 11", "[-10, 10]")
    with pytest.raises(imgcls.UserError, match=re.escape("--decision-tau 11.0: expected a number in [-10, 10]")):
        imgcls.load(run, decision_tau=11.0)


def test_the_apis_old_keyword_warns_and_means_the_same(finished_v1):
    run = finished_v1 / "v1"
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    new = imgcls.load(run, device="cpu", decision_tau=0.7)
    with pytest.warns(DeprecationWarning, match="old name of decision_tau"):
        old = imgcls.load(run, device="cpu", logit_adjust=0.7)
    assert old.decision_taus == new.decision_taus == [0.7]
    np.testing.assert_array_equal(old.probabilities(x), new.probabilities(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name alone: no warning
        imgcls.load(run, device="cpu", decision_tau=0.7)
