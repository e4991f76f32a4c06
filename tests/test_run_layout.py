"""run.py owns every file and folder name of a run: no other module of imgcls, no bench script and no top-level
script spells one (issue 34). A new name goes into run.py as a constant; this test finds a literal anywhere else."""

from __future__ import annotations

import re
from pathlib import Path

from imgcls import run

ROOT = Path(__file__).resolve().parents[1]
NAMES = [run.BEST, run.LAST, run.METRICS, run.SPLIT, run.CONFIG, run.BEFORE_CRT, run.BEST_EPOCH, run.SWA, run.SUMMARY,
         run.SKIPPED, run.REPORT, run.CURVES, run.LR_PLOT, run.CONFUSION, run.PREDICTIONS,
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
