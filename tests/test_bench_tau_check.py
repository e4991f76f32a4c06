"""bench/tau_check.py's rule on a hand-made table: the best median macro-F1 among the taus whose pooled
accuracy is within the slack of the best, ties to the tau nearer -0.5, then to the more accurate."""
from tests.helpers import load_bench_script


def test_the_rule_keeps_accuracy_first_then_macro_f1_then_nearness_to_minus_half(monkeypatch):
    tau_check = load_bench_script(monkeypatch, "tau_check")
    table = {-0.5: (0.9486, 0.8428), -0.4: (0.9499, 0.8438), -0.3: (0.9487, 0.8389), 0.2: (0.9385, 0.90)}
    assert tau_check.choose(table, 0.001) == -0.4      # +0.2 has the best F1 but 1.1 points less accuracy
    assert tau_check.choose(table, 0.0015) == -0.4     # -0.5 and -0.3 allowed now; -0.4 still has the best F1
    table[-0.3] = (0.9490, 0.8438)                      # a tie on macro-F1 within the slack: nearer -0.5 wins
    assert tau_check.choose(table, 0.001) == -0.4
    table[-0.6] = (0.9495, 0.8438)
    assert tau_check.choose(table, 0.001) == -0.4      # -0.6 and -0.4 are both 0.1 from -0.5: the more accurate
    assert tau_check.choose(table, 0.02) == 0.2
