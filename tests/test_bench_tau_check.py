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


def test_the_views_rule_keeps_macro_f1_then_takes_accuracy_then_the_fewest_views(monkeypatch):
    tau_check = load_bench_script(monkeypatch, "tau_check")
    one, two, four = "identity", "identity,hflip", "identity,hflip,scale0.9,scale1.1"
    tables = {one: (0.9499, 0.8438), two: (0.9510, 0.8440), four: (0.9530, 0.8430)}
    assert tau_check.choose_views(tables) == two        # four is more accurate but below one view's macro-F1
    tables[four] = (0.9530, 0.8438)                      # equal macro-F1 is allowed: the more accurate wins
    assert tau_check.choose_views(tables) == four
    tables[four] = (0.9514, 0.8450)                      # within 0.0005 of the best accuracy: the cheaper
    assert tau_check.choose_views(tables) == two
    tables = {one: (0.9499, 0.8438), two: (0.9490, 0.8300), four: (0.9480, 0.8500)}
    assert tau_check.choose_views(tables) == one        # nothing more accurate keeps the macro-F1: one view
