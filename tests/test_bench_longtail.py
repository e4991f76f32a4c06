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
