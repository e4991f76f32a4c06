"""run.py: it owns every file and folder name of a run (no other module of imgcls, no bench script and no
top-level script spells one; a new name goes into run.py as a constant, and a grep here finds a literal anywhere
else); runs saved under the old names still load; a checkpoint with NaN weights and a fold whose training has
not finished are refused or warned about wherever a run is loaded."""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import export as export_script
import imgcls
import predict as predict_script
from imgcls import checkpoint, run
from tests.helpers import (
    an_image,
    assert_one_line_error,
    cli,
)

ROOT = Path(__file__).resolve().parents[1]
NAMES = [run.SHIPPED, run.OLD_SHIPPED, run.LAST, run.METRICS, run.SPLIT, run.CONFIG, run.BEFORE_CRT, run.OLD_BEFORE_CRT,
         run.BEST_EPOCH, run.SWA, run.SUMMARY, run.SKIPPED, run.REPORT, run.CURVES, run.LR_PLOT, run.CONFUSION,
         run.PREDICTIONS,
         # (run.TENSORBOARD, "tensorboard", is also the flag's and the package's name: not greppable)
         run.LABEL_ISSUES, run.DUPLICATES, run.OUTLIERS, run.AUDIT_PAGE, run.AUDIT_SUMMARY, run.OUT_OF_FOLD,
         run.HUB_WEIGHTS, run.INT8_DIR]


def test_the_run_file_names_are_distinct_constants():
    assert len(set(NAMES)) == len(NAMES)
    assert run.HUB_CONFIG == run.CONFIG  # an export's config.json is the Hub's name, not a second run file


def test_no_module_or_script_spells_a_run_file_name_outside_run_py():
    quoted = re.compile("[\"'](" + "|".join(re.escape(n) for n in NAMES) + ")[\"']")
    files = [*(ROOT / "imgcls").rglob("*.py"), *(ROOT / "bench").glob("*.py"), *ROOT.glob("*.py")]
    assert len([f for f in files if f.parent.name == "bench"]) >= 10 and (ROOT / "audit.py") in files
    found = [f"{path.relative_to(ROOT)}:{i}: {line.strip()}" for path in files if path.name != "run.py"
             or path.parent.name != "imgcls"
             for i, line in enumerate(path.read_text().splitlines(), 1) if quoted.search(line)]
    assert found == []


def test_a_run_saved_before_the_shipped_pt_rename_loads_and_predicts_the_same(finished_v5, tmp_path):
    """Runs saved before 2026-12-06 named each fold's shipped model best.pt: they are found, listed and predict
    exactly as the same run under the new name."""
    old = tmp_path / "runs" / "v5"
    shutil.copytree(finished_v5, old)
    for fold in old.glob("fold*"):
        (fold / run.SHIPPED).rename(fold / run.OLD_SHIPPED)
    assert run.find_checkpoints(old) == [old / f"fold{k}" / run.OLD_SHIPPED for k in range(3)]
    assert run.find_checkpoints(old / "fold1") == [old / "fold1" / run.OLD_SHIPPED]
    assert run.run_versions(old.parent) == ["v5"]
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    new_p = imgcls.load(finished_v5, tta=False).probabilities(x)
    old_p = imgcls.load(old, tta=False).probabilities(x)
    assert np.array_equal(new_p, old_p)


@pytest.fixture(scope="module")
def nan_checkpoint(finished_v1, tmp_path_factory):
    """The finished run's shipped.pt with one weight set to NaN, in a fold folder of its own."""
    record = checkpoint.read(finished_v1 / "v1" / "fold0" / "shipped.pt")
    name = next(k for k, v in record.model.items() if v.is_floating_point())
    record.model[name] = torch.full_like(record.model[name], float("nan"))
    folder = tmp_path_factory.mktemp("nan") / "fold0"
    checkpoint.save(record, folder / "shipped.pt")
    return folder / "shipped.pt", name


def test_a_checkpoint_with_nan_weights_is_refused_by_predict_export_and_the_api(nan_checkpoint, tmp_path, capsys):
    path, name = nan_checkpoint
    code, _, err = cli(predict_script, "--checkpoint", path, "--images", an_image(tmp_path), "--out",
                       tmp_path / "p.csv", capsys=capsys)
    assert_one_line_error(code, err, str(path), name, "NaN or inf")
    code, _, err = cli(export_script, "--run", path, "--out", tmp_path / "export", capsys=capsys)
    assert_one_line_error(code, err, str(path), name, "NaN or inf")
    with pytest.raises(imgcls.UserError, match="NaN or inf"):
        imgcls.load(path)
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "export").exists()


def test_export_and_the_api_warn_on_a_fold_whose_training_has_not_finished(finished_v1, tmp_path, capsys):
    """As predict.py does: a last.pt without metrics.json means the fold's model is only the best epoch so far."""
    fold = tmp_path / "run" / "fold0"
    shutil.copytree(finished_v1 / "v1" / "fold0", fold)
    (fold / "metrics.json").unlink()
    warning = f"warning: {fold}: training has not finished (no metrics.json)"
    code, out, _ = cli(export_script, "--run", fold.parent, "--out", tmp_path / "e", capsys=capsys)
    assert code == 0 and warning in out
    with pytest.warns(UserWarning, match="training has not finished"):
        imgcls.load(fold.parent)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a finished run: no warning
        imgcls.load(finished_v1 / "v1")
