import math

import pytest
import torch

from imgcls.errors import UserError
from imgcls.schedules import SCHEDULE_NAMES, build_scheduler, current_lr


def _opt(lr=1e-3, kind="adamw"):
    p = torch.nn.Parameter(torch.zeros(1))
    if kind == "sgd":
        return torch.optim.SGD([p], lr=lr)
    return torch.optim.AdamW([p], lr=lr)


def _record(opt, sched, n):
    """lr used by each of n updates: read before the update, step after it (the engine's order)."""
    lrs = []
    for _ in range(n):
        lrs.append(current_lr(opt))
        opt.step()
        sched.step()
    return lrs


def test_cosine_warmup_then_cosine_to_min_lr():
    base, min_lr, epochs, spe = 1e-3, 1e-7, 5, 10
    opt = _opt(base)
    sched, interval = build_scheduler(
        "cosine", opt, epochs=epochs, steps_per_epoch=spe, warmup_epochs=2, min_lr=min_lr
    )
    assert interval == "step"
    total, warmup = epochs * spe, 2 * spe
    lrs = _record(opt, sched, total)
    # Warmup: linear from base/(W+1), strictly increasing, reaches the base lr at update W.
    assert lrs[0] == pytest.approx(base / (warmup + 1))
    assert all(b > a for a, b in zip(lrs[: warmup + 1], lrs[1 : warmup + 1]))
    assert lrs[warmup - 1] < base
    assert lrs[warmup] == pytest.approx(base) and max(lrs) == pytest.approx(base)
    # Cosine: monotone down, exact midpoint value, min_lr on the last update.
    assert all(b < a for a, b in zip(lrs[warmup:], lrs[warmup + 1 :]))
    mid = warmup + (total - 1 - warmup) / 2
    if mid == int(mid):
        assert lrs[int(mid)] == pytest.approx((base + min_lr) / 2)
    k = warmup + 7
    expected = min_lr + (base - min_lr) * 0.5 * (1 + math.cos(math.pi * 7 / (total - 1 - warmup)))
    assert lrs[k] == pytest.approx(expected)
    assert lrs[-1] == pytest.approx(min_lr, rel=1e-9)


def test_cosine_without_warmup_starts_at_base_lr():
    opt = _opt(0.1, "sgd")
    sched, _ = build_scheduler("cosine", opt, epochs=1, steps_per_epoch=11, min_lr=0.0)
    lrs = _record(opt, sched, 11)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[5] == pytest.approx(0.05)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_cosine_min_lr_is_absolute_for_every_param_group():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 1e-2}, {"params": [b], "lr": 1e-3}])
    sched, _ = build_scheduler("cosine", opt, epochs=2, steps_per_epoch=4, min_lr=1e-5)
    for _ in range(7):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-5, 1e-5])


def test_onecycle_shape_and_exact_total_steps():
    max_lr, div, final_div, epochs, spe = 1e-3, 25.0, 1000.0, 4, 25
    opt = _opt(1e-4)
    sched, interval = build_scheduler(
        "onecycle", opt, epochs=epochs, steps_per_epoch=spe, max_lr=max_lr, pct_start=0.1,
        div_factor=div, final_div_factor=final_div,
    )
    assert interval == "step"
    total = epochs * spe
    assert opt.param_groups[0]["betas"][0] == pytest.approx(0.95)
    lrs, beta1 = [], []
    for _ in range(total):  # exactly `total` steps must not raise
        lrs.append(current_lr(opt))
        beta1.append(opt.param_groups[0]["betas"][0])
        opt.step()
        sched.step()
    assert len(lrs) == total
    assert lrs[0] == pytest.approx(max_lr / div)
    peak = max(range(total), key=lrs.__getitem__)
    assert abs(peak - 0.1 * total) <= 1
    assert lrs[peak] == pytest.approx(max_lr)
    assert lrs[-1] == pytest.approx(max_lr / (div * final_div))
    # Adam's beta1 is cycled opposite to the lr (OneCycle's default): 0.95 -> 0.85 at the peak -> 0.95.
    assert beta1[peak] == pytest.approx(0.85) and beta1[-1] == pytest.approx(0.95)
    with pytest.raises(ValueError):
        sched.step()  # one more than planned is a bug in the engine's step count


def test_onecycle_defaults_max_lr_to_optimizer_lr_and_keeps_plain_sgd_without_momentum():
    opt = _opt(0.5, "sgd")
    sched, _ = build_scheduler("onecycle", opt, epochs=1, steps_per_epoch=20)
    lrs = _record(opt, sched, 20)
    assert max(lrs) == pytest.approx(0.5)
    assert opt.param_groups[0]["momentum"] == 0.0


def test_plateau_reduces_after_patience_epochs_without_improvement():
    opt = _opt(1.0, "sgd")
    sched, interval = build_scheduler(
        "plateau", opt, epochs=30, steps_per_epoch=10, plateau_factor=0.1, plateau_patience=3
    )
    assert interval == "metric"
    lrs = []
    for acc in [0.5, 0.6, 0.6, 0.6, 0.6, 0.59, 0.7]:
        sched.step(acc)
        lrs.append(current_lr(opt))
    # Best 0.6 at epoch 1; epochs 2-4 are 3 bad epochs (patience 3 tolerates them), the 4th (epoch 5) cuts.
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 1.0, 1.0, 0.1, 0.1])


def test_plateau_mode_min_reduces_on_rising_loss():
    opt = _opt(1.0, "sgd")
    sched, _ = build_scheduler(
        "plateau", opt, epochs=9, steps_per_epoch=1, plateau_patience=1, plateau_mode="min", min_lr=0.05
    )
    for loss in [1.0, 1.1, 1.2, 1.3, 1.4, 1.5]:
        sched.step(loss)
    assert current_lr(opt) == pytest.approx(0.05)  # clipped at min_lr


def test_constant_with_warmup():
    opt = _opt(0.2, "sgd")
    sched, interval = build_scheduler("constant", opt, epochs=2, steps_per_epoch=2, warmup_epochs=1)
    assert interval == "step"
    assert _record(opt, sched, 4) == pytest.approx([0.2 / 3, 0.4 / 3, 0.2, 0.2])


@pytest.mark.parametrize("name", ["cosine", "onecycle", "constant"])
def test_state_dict_round_trip_continues_the_same_curve(name):
    kw = dict(epochs=3, steps_per_epoch=10, warmup_epochs=0.0 if name == "onecycle" else 1.0, min_lr=1e-6)
    opt = _opt()
    sched, _ = build_scheduler(name, opt, **kw)
    reference = _record(opt, sched, 30)

    opt1 = _opt()
    s1, _ = build_scheduler(name, opt1, **kw)
    _record(opt1, s1, 13)
    saved_opt, saved_sched = opt1.state_dict(), s1.state_dict()

    opt2 = _opt()
    s2, _ = build_scheduler(name, opt2, **kw)
    opt2.load_state_dict(saved_opt)
    s2.load_state_dict(saved_sched)
    assert _record(opt2, s2, 17) == pytest.approx(reference[13:], rel=1e-12)

    # Resume without saved state: start_step replays the first updates.
    opt3 = _opt()
    s3, _ = build_scheduler(name, opt3, **kw, start_step=13)
    assert _record(opt3, s3, 17) == pytest.approx(reference[13:], rel=1e-12)


def test_plateau_state_dict_round_trip():
    opt1 = _opt(1.0, "sgd")
    s1, _ = build_scheduler("plateau", opt1, epochs=10, steps_per_epoch=1, plateau_patience=2)
    for acc in [0.5, 0.4, 0.4]:
        s1.step(acc)
    opt2 = _opt(1.0, "sgd")
    s2, _ = build_scheduler("plateau", opt2, epochs=10, steps_per_epoch=1, plateau_patience=2)
    opt2.load_state_dict(opt1.state_dict())
    s2.load_state_dict(s1.state_dict())
    s2.step(0.4)  # third bad epoch: the restored counter must make this the cut
    assert current_lr(opt2) == pytest.approx(0.1)


def test_user_errors():
    opt = _opt()
    with pytest.raises(UserError, match="--schedule"):
        build_scheduler("linear", opt, epochs=1, steps_per_epoch=1)
    with pytest.raises(UserError, match="--epochs"):
        build_scheduler("cosine", opt, epochs=0, steps_per_epoch=1)
    with pytest.raises(UserError, match="--warmup-epochs"):
        build_scheduler("cosine", opt, epochs=2, steps_per_epoch=3, warmup_epochs=2)
    with pytest.raises(UserError, match="--warmup-epochs"):
        build_scheduler("plateau", opt, epochs=2, steps_per_epoch=3, warmup_epochs=1)
    with pytest.raises(UserError, match="start_step"):
        build_scheduler("cosine", opt, epochs=1, steps_per_epoch=3, start_step=4)
    assert set(SCHEDULE_NAMES) == {"plateau", "cosine", "onecycle", "constant"}
