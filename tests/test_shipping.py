"""shipping.py: the run's last line. (What ships is tested end to end: the candidate choice and cRT in
test_engine.py and test_v4.py, the decision tau in test_v4.py, the refit's carried choices in test_v5.py.)"""

from __future__ import annotations

from pathlib import Path


def test_the_final_line_names_each_score_once_and_the_split_it_was_measured_on():
    from imgcls.shipping import final_line
    v1 = final_line(Path("runs/v1/fold0"), "best", {"accuracy": 0.93474, "train_time_s": 12.3}, "accuracy")
    assert v1 == ("runs/v1/fold0: done; ships the best model; on the validation split: accuracy 0.9347; "
                  "train time 12s; test scores: predict.py --run runs/v1")
    v4 = final_line(Path("runs/v4/fold0"), "best", {"macro_f1": 0.6939, "accuracy": 0.9347, "train_time_s": 500,
                                                    "decision_tau_scores": {}}, "macro_f1", tau_chosen=True)
    assert v4.count("macro_f1") == 1 and v4.count("accuracy") == 1
    assert "on the validation split (where its tau was chosen): macro_f1 0.6939, accuracy 0.9347" in v4
