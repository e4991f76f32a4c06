"""bench/plain.py's fractional --epochs (Lite1 / Lite2 against Lite0 at equal minutes): whole epochs first,
then the fraction's share of one more, and whole --epochs keep the updates (and so the results) they had."""
from tests.helpers import load_bench_script


def test_epoch_lengths_are_whole_epochs_then_the_fraction(monkeypatch):
    plain = load_bench_script(monkeypatch, "plain")
    assert plain.epoch_lengths(2, 352) == [352, 352]  # an integer budget: as before the flag took fractions
    assert plain.epoch_lengths(1.3, 10) == [10, 3]
    assert plain.epoch_lengths(1.2, 352) == [352, 70]  # 422.4 updates round to 422
    assert plain.epoch_lengths(0.5, 10) == [5]
    for epochs in (0.7, 1.0, 1.3, 2.5, 3.01):
        lengths = plain.epoch_lengths(epochs, 37)
        assert sum(lengths) == round(epochs * 37) and all(n == 37 for n in lengths[:-1]) and 0 < lengths[-1] <= 37
