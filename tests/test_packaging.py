"""pyproject.toml's dependencies are requirements.txt's, range for range: `pip install .` and `pip install -r
requirements.txt` must not drift apart."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_dependencies_equal_requirements_txt():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    required = [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]
    assert sorted(project["dependencies"]) == sorted(required)
