"""bench/audit.py end to end on a small folder data set with a tiny model: the injected flips are where it
says, imgcls's flagged set is cleanlab's, the excluded run keeps the clean test split, and the report is
written; plus its pure parts against hand-made cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import load_bench_script, write_folder_dataset

pytestmark = pytest.mark.slow  # trains runs or starts processes: outside the fast lane (pytest -m "not slow")


def test_injected_noise_flips_exactly_the_rate_and_only_the_candidates(monkeypatch):
    bench = load_bench_script(monkeypatch, "audit")
    labels = np.repeat(np.arange(4), 50)
    candidates = np.arange(0, 200, 2)  # the test split is the odd positions
    confused = np.array([1, 2, 3, 0])
    for kind in ("uniform", "confused"):
        noisy, flipped = bench.inject(labels, candidates, 0.15, kind, 4, confused, seed=0)
        assert len(flipped) == 15 and set(flipped) <= set(candidates)
        assert np.flatnonzero(noisy != labels).tolist() == flipped.tolist()  # every flip changes the label
        if kind == "confused":
            assert (noisy[flipped] == confused[labels[flipped]]).all()


def test_most_confused_and_the_split_without_dropped_images(monkeypatch):
    bench = load_bench_script(monkeypatch, "audit")
    labels = np.array([0, 0, 1, 1, 2])
    probs = np.eye(3)[[2, 0, 0, 1, 2]]  # class 0 once predicted as 2, class 1 once as 0, class 2 never wrong
    assert bench.most_confused(labels, probs, 3).tolist() == [2, 0, 0]
    split = {"test": [0, 4], "folds": [{"train": [1, 2], "val": [3]}], "notes": []}
    assert bench.split_without(split, np.array([2]), 5) == {"test": [0, 3], "folds": [{"train": [1], "val": [2]}],
                                                            "notes": []}


def test_the_flagged_set_by_group_of_the_true_class_counted_by_hand(monkeypatch):
    bench = load_bench_script(monkeypatch, "audit")
    train_counts = np.array([600, 60, 5])  # one class per group: head, medium, tail
    true_labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    truth = np.array([1, 0, 0, 0, 1, 0, 0, 1], bool)  # injected flips
    flagged = np.array([1, 1, 0, 0, 0, 1, 1, 1], bool)
    assert bench.flags_by_group(flagged, truth, true_labels, train_counts) == {
        "head": {"flagged": 2, "flips_flagged": 1, "clean": 2, "clean_flagged": 1},
        "medium": {"flagged": 0, "flips_flagged": 0, "clean": 1, "clean_flagged": 0},
        "tail": {"flagged": 3, "flips_flagged": 1, "clean": 2, "clean_flagged": 2}}


def test_the_exclusion_rules_on_a_hand_made_case(monkeypatch):
    bench = load_bench_script(monkeypatch, "audit")
    labels = np.array([0, 0, 0, 1, 1, 2])
    probs = np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.3, 0.4, 0.3],
                      [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    # thresholds: t0 = (0.9 + 0.8 + 0.3) / 3 = 0.667, t1 = (0.8 + 0.3) / 2 = 0.55, t2 = 0.6
    flagged = np.array([1, 0, 1, 0, 1, 0], bool)
    truth = np.array([0, 0, 0, 0, 1, 0], bool)
    listed = np.array([1, 0, 0, 0, 1, 0], bool)  # audit.py's exclude.csv: image 2 had look-alikes under label 0
    # look-alikes (under the given label, under the suggested one) of each flag; unflagged images' do not count
    votes = np.array([[0, 15], [20, 0], [3, 9], [20, 0], [5, 8], [20, 0]])
    rules = {k: v.astype(int).tolist()
             for k, v in bench.exclusion_rules(labels, probs, flagged, truth, listed, votes).items()}
    assert rules == {"all": [1, 0, 1, 0, 1, 0],
                     "both": [0, 0, 0, 0, 0, 0],  # cleanlab's filter_by="both" flags none here either
                     "below-chance": [0, 0, 0, 0, 0, 0],  # a part of "both"
                     "confident-suggestion": [0, 0, 0, 0, 1, 0],  # only image 4's other class reaches 0.5 (0.6)
                     "not-own-class": [0, 0, 1, 0, 1, 0],  # image 0's 0.9 clears t0: confidently its own class
                     "neighbours": [1, 0, 0, 0, 1, 0],  # as listed
                     # fewer than 2 under the given label (image 0), or fewer than half as many as under the
                     # suggested one (image 2: 3 < 4.5); image 4's 5 is not under half of 8
                     "neighbours-everywhere": [1, 0, 1, 0, 0, 0],
                     "relabel": [1, 0, 0, 0, 1, 0],  # the images it changes: exclude.csv's (relabel.csv a part)
                     "oracle": [0, 0, 0, 0, 1, 0]}
    assert list(rules) == list(bench.RULES)
    # an audit without look-alike counts has no such rule
    assert "neighbours-everywhere" not in bench.exclusion_rules(labels, probs, flagged, truth, listed)


def test_below_chance_is_cleanlabs_both_flags_whose_given_label_gets_less_than_a_guess(monkeypatch):
    find_label_issues = pytest.importorskip("cleanlab.filter").find_label_issues
    bench = load_bench_script(monkeypatch, "audit")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 400)
    probs = rng.dirichlet(np.ones(5) * 0.3, 400)
    probs[np.arange(200), labels[:200]] += 2  # half the images confidently their label
    probs /= probs.sum(1, keepdims=True)
    truth = np.zeros(400, bool)
    rules = bench.exclusion_rules(labels, probs, find_label_issues(labels, probs), truth, truth)
    both = find_label_issues(labels, probs, filter_by="both")
    expected = both & (probs[np.arange(400), labels] < 0.2)
    assert 0 < expected.sum() < both.sum()  # the case separates the two sets
    assert (rules["both"] == both).all() and (rules["below-chance"] == expected).all()


def test_a_setting_measured_again_keeps_the_rules_trained_again_only_before(monkeypatch):
    bench = load_bench_script(monkeypatch, "audit")
    before = {"seed": 0, "setting": "uniform-0.15", "excluded_f1": 0.6, "recovered": 0.2,
              "rules": {"all": {"excluded_f1": 0.6, "recovered": 0.2},
                        "oracle": {"excluded_f1": 0.7, "recovered": 0.9},
                        "all, same steps": {"excluded_f1": 0.65, "recovered": 0.5}}}
    now = {"seed": 0, "setting": "uniform-0.15", "excluded_f1": None, "recovered": None,
           "rules": {"all": {"excluded_f1": None, "recovered": None},
                     "oracle": {"excluded_f1": 0.71, "recovered": 0.95}}}
    (row,) = bench.merged([before], [now])
    assert row["rules"] == {"all": {"excluded_f1": 0.6, "recovered": 0.2},
                            "oracle": {"excluded_f1": 0.71, "recovered": 0.95},  # the new score wins
                            "all, same steps": {"excluded_f1": 0.65, "recovered": 0.5}}  # trained only before
    assert (row["excluded_f1"], row["recovered"]) == (0.6, 0.2)


def test_recovery_pooled_over_seeds_is_the_mean_gain_over_the_mean_cost(monkeypatch):
    bench = load_bench_script(monkeypatch, "audit")

    def row(clean, noisy, again):
        rules = {"neighbours": {"excluded_f1": again, "recovered": None if again is None
                                else (again - noisy) / (clean - noisy)}}
        return {"clean_f1": clean, "noisy_f1": noisy, "rules": rules}

    # costs 0.10 and 0.02, gains 0.06 and -0.02: shares 0.6 and -1.0 per seed, pooled (0.02) / (0.06) = 1/3;
    # the third seed was not trained again and counts in neither mean
    rows = [row(0.80, 0.70, 0.76), row(0.75, 0.73, 0.71), row(0.70, 0.60, None)]
    got = bench.pooled_recovery(rows, "neighbours")
    assert got["runs"] == 2 and got["cost"] == pytest.approx(0.06) and got["gain"] == pytest.approx(0.02)
    assert got["share"] == pytest.approx(1 / 3) and got["per_run"] == pytest.approx([0.6, -1.0])
    assert bench.pooled_recovery(rows, "all") is None and bench.pooled_recovery(rows[2:], "neighbours") is None
    # a seed whose noise cost nothing has no share of its own (None), and a pool that cost nothing has none
    flat = [{"clean_f1": 0.70, "noisy_f1": 0.70, "rules": {"neighbours": {"excluded_f1": 0.71, "recovered": None}}}]
    assert bench.pooled_recovery(flat, "neighbours") == {"runs": 1, "settings": [None], "cost": 0.0,
                                                         "gain": pytest.approx(0.01), "share": None,
                                                         "per_run": [None]}


def test_the_steady_score_is_macro_f1_over_the_classes_with_enough_test_images(monkeypatch):
    from sklearn.metrics import f1_score
    from imgcls.metrics import classification_metrics
    bench = load_bench_script(monkeypatch, "audit")
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(6), [40, 12, 5, 4, 1, 2])  # classes 3-5 have fewer than 5 test images
    pred = np.where(rng.random(len(y)) < 0.7, y, rng.integers(0, 6, len(y)))
    scores = classification_metrics(y, pred, [f"c{i}" for i in range(6)])
    want = f1_score(y, pred, labels=[0, 1, 2], average="macro", zero_division=0)
    assert bench.steady_f1(scores) == pytest.approx(want) and bench.STEADY == 5
    assert bench.steady_f1(scores, min_support=1) == pytest.approx(f1_score(y, pred, average="macro"))
    # pooled on the steady score: the rows' clean_steady / noisy_steady / excluded_steady, rows without skipped
    rows = [{"clean_f1": 0.8, "noisy_f1": 0.7, "clean_steady": 0.9, "noisy_steady": 0.8,
             "rules": {"r": {"excluded_f1": 0.75, "excluded_steady": 0.86}}},
            {"clean_f1": 0.8, "noisy_f1": 0.7, "rules": {"r": {"excluded_f1": 0.72}}}]
    got = bench.pooled_recovery(rows, "r", "steady")
    assert got["runs"] == 1 and got["share"] == pytest.approx(0.6) and got["per_run"] == pytest.approx([0.6])
    assert bench.pooled_recovery(rows, "r")["share"] == pytest.approx(0.35)


def test_a_later_run_adds_its_rows_and_replaces_only_the_settings_it_measured_again(monkeypatch):
    bench = load_bench_script(monkeypatch, "audit")
    previous = [{"seed": 0, "setting": "uniform-0.15", "v": 1}, {"seed": 0, "setting": "uniform-0.05", "v": 1},
                {"seed": 1, "setting": "uniform-0.15", "v": 1}]
    rows = [{"seed": 0, "setting": "uniform-0.05", "v": 2}, {"seed": 0, "setting": "confused-0.15", "v": 2}]
    assert bench.merged(previous, rows) == [previous[0], previous[2], *rows]
    assert bench.merged([], rows) == rows


def test_the_benchmark_runs_end_to_end_on_a_small_set(monkeypatch, tmp_path):
    pytest.importorskip("cleanlab")
    bench = load_bench_script(monkeypatch, "audit")
    data = write_folder_dataset(tmp_path / "data", counts=(40, 30, 20), size=(20, 16))
    report = tmp_path / "audit.md"
    tiny = ["--model", "tiny_efficientnet", "--pretrained", "none", "--img-size", "32", "--epochs", "1",
            "--crt-steps", "5", "--workers", "1", "--device", "cpu", "--cache-dir", "none"]
    # two seeds at once (--jobs 2), each training on one thread: both rows land in rows.json and the table
    assert bench.main(["--data", str(data), "--out", str(tmp_path / "runs"), "--seeds", "0", "1", "--jobs", "2",
                       "--threads", "1", "--rates", "0.15",
                       "--kinds", "uniform", "--report", str(report), "--", *tiny]) == 0
    rows = json.loads((tmp_path / "runs" / "rows.json").read_text())
    assert sorted(r["seed"] for r in rows) == [0, 1] and all(r["excluded_f1"] is not None for r in rows)
    row = next(r for r in rows if r["seed"] == 0)
    assert row["same_as_cleanlab"] and row["flips"] > 0 and row["ours"] == row["cleanlab"]
    assert row["both_same_as_cleanlab"]
    assert list(row["rules"]) == list(bench.RULES) and row["rules"]["all"]["prf"] == row["ours"]
    assert row["rules"]["both"]["prf"] == row["both"]  # the rule is audit.py --filter-by both's set
    assert row["rules"]["oracle"]["prf"] == [1.0, 1.0, 1.0] and row["rules"]["oracle"]["excluded_f1"] is None
    assert row["excluded_f1"] == row["rules"]["all"]["excluded_f1"] is not None  # trained again: --retrain all
    # the groups split the flagged flips without losing or double-counting one
    assert sum(g["flips_flagged"] for g in row["groups"].values()) == round(row["ours"][1] * row["flips"])
    seed = tmp_path / "runs" / "s0"
    clean = json.loads((seed / "clean" / "v5" / "split.json").read_text())
    excluded = json.loads((seed / "uniform-0.15" / "excluded" / "v5" / "split.json").read_text())
    assert len(excluded["test"]) == len(clean["test"])  # the same test images, renumbered
    assert "| uniform-0.15 | 2 |" in report.read_text()
    assert (tmp_path / "runs" / "s1" / "bench.log").read_text().count("done;") >= 9  # its own log: 3 runs x 3 folds
    # the table again from rows.json alone (a bench stopped early), the same rows
    again = tmp_path / "again.md"
    assert bench.main(["--out", str(tmp_path / "runs"), "--table-only", "--report", str(again)]) == 0
    table = [line for line in report.read_text().splitlines() if line.startswith("|")]
    assert [line for line in again.read_text().splitlines() if line.startswith("|")] == table
    # rows measured before the steady score: --rescore fills it in from the runs' folders, as measured
    measured = json.loads((tmp_path / "runs" / "rows.json").read_text())
    assert row["clean_steady"] is not None and row["rules"]["all"]["excluded_steady"] is not None
    for r in measured:
        r.pop("clean_steady"), r.pop("noisy_steady"), r["rules"]["all"].pop("excluded_steady")
    (tmp_path / "runs" / "rows.json").write_text(json.dumps(measured))
    # only the seed asked for first; then the rest (what was filled stays)
    assert bench.main(["--data", str(data), "--out", str(tmp_path / "runs"), "--rescore", "--seeds", "1",
                       "--rates", "0.15", "--kinds", "uniform", "--report", str(again)]) == 0
    part = {r["seed"]: r for r in json.loads((tmp_path / "runs" / "rows.json").read_text())}
    assert "clean_steady" in part[1] and "excluded_steady" in part[1]["rules"]["all"]
    assert "clean_steady" not in part[0]
    assert bench.main(["--data", str(data), "--out", str(tmp_path / "runs"), "--rescore", "--rates", "0.15",
                       "--kinds", "uniform", "--report", str(again)]) == 0
    rescored = json.loads((tmp_path / "runs" / "rows.json").read_text())
    for r in rescored:
        was = next(x for x in rows if x["seed"] == r["seed"])
        assert r["clean_steady"] == pytest.approx(was["clean_steady"], abs=1e-12)
        assert r["rules"]["all"]["excluded_steady"] == pytest.approx(was["rules"]["all"]["excluded_steady"], abs=1e-12)
    # a folder that no longer gives the row's macro-F1 is not the run that was scored: refused
    rescored[0]["clean_f1"] += 0.01
    rescored[0].pop("clean_steady")
    (tmp_path / "runs" / "rows.json").write_text(json.dumps(rescored))
    with pytest.raises(SystemExit, match="not the run that was scored"):
        bench.main(["--data", str(data), "--out", str(tmp_path / "runs"), "--rescore", "--rates", "0.15",
                    "--kinds", "uniform", "--report", str(again)])
    (tmp_path / "runs" / "rows.json").write_text(json.dumps(rows))  # as measured, for what follows
    # the relabel rule: the audit's two files, as a user passes them; the relabelled images stay in the split
    audit_dir = seed / "uniform-0.15" / "noisy" / "v5" / "audit"
    moved = (audit_dir / "relabel.csv").read_text().splitlines()[1:]
    dropped = (audit_dir / "exclude.csv").read_text().splitlines()[1:]
    assert bench.main(["--data", str(data), "--out", str(tmp_path / "runs"), "--seeds", "0", "--threads", "1",
                       "--rates", "0.15", "--kinds", "uniform", "--reuse-audit", "--retrain", "relabel",
                       "--report", str(again), "--", *tiny]) == 0
    relabelled = json.loads((seed / "uniform-0.15" / "excluded-relabel" / "v5" / "split.json").read_text())
    assert relabelled["num_items"] == clean["num_items"] - (len(dropped) - len(moved))
    got = next(r for r in json.loads((tmp_path / "runs" / "rows.json").read_text()) if r["seed"] == 0)
    assert got["rules"]["relabel"]["relabelled"] == len(moved) and got["rules"]["relabel"]["excluded_f1"] is not None
    assert got["rules"]["all"]["excluded_f1"] == row["rules"]["all"]["excluded_f1"]  # trained before: kept
    said = (seed / "bench.log").read_text()
    assert f"--relabel {audit_dir / 'relabel.csv'}: {len(moved)} image(s) relabelled" in said
    # a reused audit without exclude.csv (older than the look-alike rule) cannot stand for the "neighbours"
    # rule: the bench stops and says to audit again, instead of training without an empty list
    audit_dir = seed / "uniform-0.15" / "noisy" / "v5" / "audit"
    (audit_dir / "exclude.csv").unlink()
    with pytest.raises(SystemExit, match="has no exclude.csv.*leave out --reuse-audit"):
        bench.main(["--data", str(data), "--out", str(tmp_path / "runs"), "--seeds", "0", "--threads", "1",
                    "--rates", "0.15", "--kinds", "uniform", "--reuse-audit", "--retrain", "neighbours",
                    "--report", str(again), "--", *tiny])
    assert not (seed / "uniform-0.15" / "excluded-neighbours").exists()
