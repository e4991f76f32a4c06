"""run.py owns every file and folder name of a run: no other module of imgcls, no bench script and no top-level
script spells one (issue 34). A new name goes into run.py as a constant; this test finds a literal anywhere else."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import torch

import imgcls
from imgcls import run

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


def test_a_run_saved_before_the_model_pt_rename_loads_and_predicts_the_same(finished_v5, tmp_path):
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
