"""bench/longtail.py's time-to-quality summary: where each recipe stands against macro-F1 0.75 and 0.80, by
its median over seeds and seed by seed, on a hand-made table; the figure is written."""
from tests.helpers import load_bench_script


def load_longtail(monkeypatch):
    return load_bench_script(monkeypatch, "longtail")


def rows(*points):
    return [{"seed": i, "train_s": minutes * 60, "macro_f1": f1} for i, (minutes, f1) in enumerate(points)]


def test_time_to_quality_says_which_seeds_and_medians_reach_each_threshold(monkeypatch, tmp_path):
    longtail = load_longtail(monkeypatch)
    results = {("imagenet", "plain (independent, all images)"): rows((8, 0.70), (9, 0.68), (7, 0.69)),
               ("imagenet", "v5"): rows((27, 0.74), (26, 0.80), (28, 0.76)),
               ("imagenet", "student-kd"): rows((40, 0.73), (42, 0.75)),
               ("imagenet", "student-kd-e4"): rows((50, 0.77), (52, 0.78)),
               ("imagenet", "v4 stage 1 (best epoch, 80%)"): rows((8, 0.9))}  # a decomposition: left out
    text = longtail.time_to_quality(results, str(tmp_path / "ttq.png"))
    lines = text.splitlines()
    assert lines[0] == str(tmp_path / "ttq.png") and (tmp_path / "ttq.png").stat().st_size > 10_000
    assert ("- plain (independent, all images) (imagenet), median 0.690 at 8 min: macro-F1 0.75 not reached by "
            "the median, by 0 of 3 seeds") in lines
    # v5: the median 0.76 passes 0.75; seeds 1 and 2 pass it (at 26 and 28 min); only seed 1 passes 0.80
    assert "- v5 (imagenet), median 0.760 at 27 min: macro-F1 0.75 reached by the median, by 2 of 3 seeds " \
           "(at 26-28 min)" in lines
    assert "- v5 (imagenet), median 0.760 at 27 min: macro-F1 0.80 not reached by the median, by 1 of 3 seeds " \
           "(at 26 min)" in lines
    # two seeds: the median is their mean (0.74 at 41 min)
    assert "- student-kd (imagenet), median 0.740 at 41 min: macro-F1 0.75 not reached by the median, by 1 of 2 " \
           "seeds (at 42 min)" in lines
    assert not any("stage 1" in line for line in lines)
    assert len(lines) == 1 + 4 * len(longtail.THRESHOLDS)


def test_a_plain_ensemble_is_scored_on_its_members_mean_and_timed_by_their_sum(monkeypatch, tmp_path):
    """plain-ens3: three plain models (the first is the plain recipe's own run), probabilities averaged; the
    row's macro-F1 is scikit-learn's on the mean's argmax, its time the members' sum."""
    import json
    import types

    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score
    longtail = load_longtail(monkeypatch)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 40)
    test = np.arange(20, 40)
    fake = types.SimpleNamespace(labels=types.SimpleNamespace(numpy=lambda: labels), class_names=list("abcd"))
    monkeypatch.setattr(longtail, "dataset", lambda args: fake)
    monkeypatch.setattr(longtail, "bench_split", lambda args, seed: {"test": test.tolist()})
    args = types.SimpleNamespace(runs=str(tmp_path), epochs=2, v5_factor=3.7)
    members = longtail.plain_members(args, "imagenet", 3, "plain-ens3")
    assert [m[2] for m in members] == [3, 1003, 2003]
    assert members[0][0] == longtail.plain_probs_path(args, "imagenet", 3, "plain")  # shared with plain's run
    probs = []
    for (out, log, _), seconds in zip(members, (100.0, 110.0, 120.0)):
        p = rng.dirichlet(np.ones(4), len(test))
        probs.append(p)
        (tmp_path / out).parent.mkdir(parents=True, exist_ok=True)
        np.save(out, p)
        with open(log, "w") as fh:
            fh.write("noise\n" + json.dumps({"train_s": seconds}) + "\n")
    rows = longtail.Scorer(args).rows_of_run(args, "imagenet", 3, "plain-ens3")
    row = rows[longtail.PLAIN["plain-ens3"].name]
    pred = np.mean(probs, axis=0).argmax(1)
    assert abs(row["macro_f1"] - f1_score(labels[test], pred, average="macro", zero_division=0)) < 1e-12
    assert abs(row["accuracy"] - accuracy_score(labels[test], pred)) < 1e-12
    assert row["train_s"] == 330.0
    assert longtail.plain_epochs(args, longtail.PLAIN["plain-eq"]) == 7.4
    assert longtail.plain_epochs(args, longtail.PLAIN["plain"]) == 2
