"""The README and docs/ point at things that exist: every relative link, every results file they cite (except
superseded ones, which they cite through `git show`), every bench script in a command; the README stays short."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_is_at_most_250_lines_and_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    linked = set(re.findall(r"\(docs/([\w-]+\.md)\)", readme))
    assert linked == {p.name for p in (ROOT / "docs").glob("*.md")}


def test_every_relative_link_resolves():
    missing = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                missing.append(f"{page.relative_to(ROOT)}: {target}")
    assert missing == []


def test_every_cited_results_file_and_bench_script_exists():
    missing = []
    for page in PAGES:
        text = re.sub(r"git show \w+:\S+", "", page.read_text())  # superseded files: printed from git
        for name in re.findall(r"bench/results/([\w.-]+\.(?:md|png))", text):
            if not (ROOT / "bench" / "results" / name).exists():
                missing.append(f"{page.relative_to(ROOT)}: results/{name}")
        for name in re.findall(r"python (?:\.\./)?bench/([\w-]+\.py)", text):
            if not (ROOT / "bench" / name).exists():
                missing.append(f"{page.relative_to(ROOT)}: bench/{name}")
    assert missing == []
