"""The learning-rate range test: smoothing and suggestion against hand-computed curves, the sweep's stop,
and `train.py --find-lr` on the demo data: its suggestion is an lr where a short run converges (a hundred
times lower barely learns, a hundred times higher learns worse), and it writes nothing into any run folder."""

from __future__ import annotations

import pytest
import numpy as np

from imgcls.presets import resolve
from imgcls.lr_find import lr_grid, smooth, smooth_centered, suggest, sweep, training_step
from tests.helpers import cli, snapshot

pytestmark = pytest.mark.slow  # trains runs or starts processes: outside the fast lane (pytest -m "not slow")


def test_smooth_is_the_bias_corrected_moving_average():
    # beta 0.5 by hand: 0.5 / 0.5 = 1; (0.25 + 1) / 0.75; (0.625 + 1.5) / 0.875
    np.testing.assert_allclose(smooth([1, 2, 3], beta=0.5), [1.0, 1.25 / 0.75, 2.125 / 0.875])


def test_centred_smoothing_does_not_lag():
    ramp = np.arange(200.0)
    assert np.all(ramp[80:120] - smooth(ramp)[80:120] > 8.9)  # beta 0.9 lags a ramp by 9 points
    np.testing.assert_allclose(smooth_centered(ramp)[80:120], ramp[80:120], atol=0.02)


def test_suggestion_is_the_steepest_fall_before_the_minimum():
    lrs = lr_grid(100)
    x = np.log10(lrs)
    # falls from 2 to 0.5 around lr 1e-3 (steepest there), then blows up past lr 0.1
    loss = 2 - 1.5 / (1 + np.exp(-3 * (x + 3))) + np.where(x > -1, 5 * (x + 1) ** 2, 0)
    assert abs(np.log10(suggest(lrs, loss)) + 3) < 0.1
    assert suggest(lrs, np.linspace(1, 2, 100)) is None  # never falls: no suggestion


def test_sweep_stops_at_divergence_and_at_a_non_finite_loss():
    lrs = lr_grid(100)
    done, losses = sweep(lambda lr: 1.0 if lr < 1e-2 else 1e3, lrs)
    assert done[-1] >= 1e-2 and len(done) <= np.searchsorted(lrs, 1e-2) + 2 and np.all(np.isfinite(losses))
    done, _ = sweep(lambda lr: 1.0 if lr < 1e-4 else float("nan"), lrs)
    assert done[-1] < 1e-4 and len(done) == np.searchsorted(lrs, 1e-4)


def test_find_lr_suggests_where_a_short_run_converges_and_writes_no_run_file(tmp_path, capsys):
    import train
    common = ["--version", "v4", "--model", "tiny_efficientnet", "--pretrained", "none", "--out", tmp_path,
              "--device", "cpu", "--batch-size", "32", "--workers", "1", "--cache-dir", "none"]
    code, _, err = cli(train, *common, "--epochs", "1", "--fold", "0", capsys=capsys)
    assert code == 0, err
    before = snapshot(tmp_path)
    code, out, err = cli(train, *common, "--find-lr", capsys=capsys)
    assert code == 0, err
    after = snapshot(tmp_path)
    assert set(after) - set(before) == {"lr_find.png"} and after["lr_find.png"][:4] == b"\x89PNG"
    assert {k: v for k, v in after.items() if k != "lr_find.png"} == before  # the run folder is untouched
    line = next(x for x in out.splitlines() if "suggested --lr" in x)
    lr = float(line.split("suggested --lr ")[1].split()[0])

    cfg = resolve("v4", dict(model="tiny_efficientnet", pretrained=None, out=str(tmp_path / "short"),
                             device="cpu", batch_size=32, cache_dir="none"), log=None)
    tail = {}
    for factor in (0.01, 1, 100):  # 40 updates at a constant lr from the same start
        step, _ = training_step(cfg, 0, log=lambda *a: None)
        losses = [step(lr * factor) for _ in range(40)]
        tail[factor] = np.mean(losses[-10:])
        if factor == 1:
            assert tail[1] < 0.5 * np.mean(losses[:5]), losses
    assert tail[1] < tail[0.01] - 0.5 and tail[1] < tail[100], tail
    assert not (tmp_path / "short").exists()


def test_find_lr_needs_two_updates(capsys):
    import train
    code, _, err = cli(train, "--model", "tiny_efficientnet", "--find-lr", "1", capsys=capsys)
    assert code == 2 and "--find-lr 1" in err, err
