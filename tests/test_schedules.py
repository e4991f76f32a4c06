import math

import pytest
import torch

from imgcls.errors import UserError
from imgcls.schedules import SCHEDULES, build_schedule


def build_scheduler(name, opt, *, epochs, steps_per_epoch, **settings):
    return build_schedule(name, opt, epochs=epochs, steps_per_epoch=steps_per_epoch, settings=settings)


def current_lr(opt):
    return opt.param_groups[0]["lr"]


def _opt(lr=1e-3, kind="adamw"):
    p = torch.nn.Parameter(torch.zeros(1))
    if kind == "sgd":
        return torch.optim.SGD([p], lr=lr)
    return torch.optim.AdamW([p], lr=lr)


def _record(opt, sched, n):
    """lr used by each of n updates: read before the update, step after it (the engine's order), with the
    epoch call the engine also makes (ignored by per-update schedules)."""
    lrs = []
    done = sched.scheduler.last_epoch
    for i in range(n):
        lrs.append(current_lr(opt))
        opt.step()
        sched.step_update(done + i + 1)
        sched.step(1 + i // 10, metric=0.0)  # the contract: a per-update schedule ignores this call
    return lrs


def test_cosine_warmup_then_cosine_to_min_lr():
    base, min_lr, epochs, spe = 1e-3, 1e-7, 5, 10
    opt = _opt(base)
    sched = build_scheduler(
        "cosine", opt, epochs=epochs, steps_per_epoch=spe, warmup_epochs=2, min_lr=min_lr
    )
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
    sched = build_scheduler("cosine", opt, epochs=1, steps_per_epoch=11, min_lr=0.0)
    lrs = _record(opt, sched, 11)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[5] == pytest.approx(0.05)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_cosine_min_lr_is_absolute_for_every_param_group():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 1e-2}, {"params": [b], "lr": 1e-3}])
    sched = build_scheduler("cosine", opt, epochs=2, steps_per_epoch=4, min_lr=1e-5)
    for n in range(7):
        opt.step()
        sched.step_update(n + 1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-5, 1e-5])


def test_onecycle_shape_and_exact_total_steps():
    max_lr, div, final_div, epochs, spe = 1e-3, 25.0, 1000.0, 4, 25
    opt = _opt(1e-4)
    sched = build_scheduler(
        "onecycle", opt, epochs=epochs, steps_per_epoch=spe, max_lr=max_lr, pct_start=0.1,
        div_factor=div, final_div_factor=final_div,
    )
    total = epochs * spe
    assert opt.param_groups[0]["betas"][0] == pytest.approx(0.95)
    lrs, beta1 = [], []
    for n in range(total):  # exactly `total` steps must not raise
        lrs.append(current_lr(opt))
        beta1.append(opt.param_groups[0]["betas"][0])
        opt.step()
        sched.step_update(n + 1)
    assert len(lrs) == total
    assert lrs[0] == pytest.approx(max_lr / div)
    peak = max(range(total), key=lrs.__getitem__)
    assert abs(peak - 0.1 * total) <= 1
    assert lrs[peak] == pytest.approx(max_lr)
    assert lrs[-1] == pytest.approx(max_lr / (div * final_div))
    # Adam's beta1 is cycled opposite to the lr (OneCycle's default): 0.95 -> 0.85 at the peak -> 0.95.
    assert beta1[peak] == pytest.approx(0.85) and beta1[-1] == pytest.approx(0.95)
    with pytest.raises(ValueError):
        sched.step_update(total + 1)  # one more than planned is a bug in the engine's step count


def test_onecycle_with_a_one_update_warmup_runs_and_follows_the_cosine_formula():
    """10 updates at pct_start 0.1 put torch's warmup at exactly one update, where OneCycleLR divides by zero;
    the run goes on with the schedule's formula: max_lr / div at update 0, then cosine from max_lr to
    max_lr / (div * final_div) over the remaining 9 updates."""
    opt = _opt(1e-3)
    sched = build_scheduler("onecycle", opt, epochs=2, steps_per_epoch=5, pct_start=0.1)
    lrs = _record(opt, sched, 10)
    low = 1e-3 / (25.0 * 1000.0)
    expected = [1e-3 / 25.0] + [low + (1e-3 - low) * (1 + math.cos(math.pi * k / 9)) / 2 for k in range(1, 10)]
    assert lrs == pytest.approx(expected, rel=1e-6)


def test_onecycle_defaults_max_lr_to_optimizer_lr_and_keeps_plain_sgd_without_momentum():
    opt = _opt(0.5, "sgd")
    sched = build_scheduler("onecycle", opt, epochs=1, steps_per_epoch=20)
    lrs = _record(opt, sched, 20)
    assert max(lrs) == pytest.approx(0.5)
    assert opt.param_groups[0]["momentum"] == 0.0


def test_plateau_reduces_after_patience_epochs_without_improvement():
    opt = _opt(1.0, "sgd")
    sched = build_scheduler(
        "plateau", opt, epochs=30, steps_per_epoch=10, plateau_factor=0.1, plateau_patience=3
    )
    lrs = []
    for epoch, acc in enumerate([0.5, 0.6, 0.6, 0.6, 0.6, 0.59, 0.7], start=1):
        for n in range(10):
            sched.step_update((epoch - 1) * 10 + n + 1)  # the contract: plateau ignores updates
        sched.step(epoch, acc)
        lrs.append(current_lr(opt))
    # Best 0.6 at epoch 1; epochs 2-4 are 3 bad epochs (patience 3 tolerates them), the 4th (epoch 5) cuts.
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 1.0, 1.0, 0.1, 0.1])


def test_plateau_mode_min_reduces_on_rising_loss():
    opt = _opt(1.0, "sgd")
    sched = build_scheduler(
        "plateau", opt, epochs=9, steps_per_epoch=1, plateau_patience=1, plateau_mode="min", min_lr=0.05
    )
    for epoch, loss in enumerate([1.0, 1.1, 1.2, 1.3, 1.4, 1.5], start=1):
        sched.step(epoch, loss)
    assert current_lr(opt) == pytest.approx(0.05)  # clipped at min_lr


def test_constant_with_warmup():
    opt = _opt(0.2, "sgd")
    sched = build_scheduler("constant", opt, epochs=2, steps_per_epoch=2, warmup_epochs=1)
    assert _record(opt, sched, 4) == pytest.approx([0.2 / 3, 0.4 / 3, 0.2, 0.2])


@pytest.mark.parametrize("name", ["cosine", "onecycle", "constant"])
def test_state_dict_round_trip_continues_the_same_curve(name):
    kw = dict(epochs=3, steps_per_epoch=10, warmup_epochs=0.0 if name == "onecycle" else 1.0, min_lr=1e-6)
    opt = _opt()
    sched = build_scheduler(name, opt, **kw)
    reference = _record(opt, sched, 30)

    opt1 = _opt()
    s1 = build_scheduler(name, opt1, **kw)
    _record(opt1, s1, 13)
    saved_opt, saved_sched = opt1.state_dict(), s1.state_dict()

    opt2 = _opt()
    s2 = build_scheduler(name, opt2, **kw)
    opt2.load_state_dict(saved_opt)
    s2.load_state_dict(saved_sched)
    assert _record(opt2, s2, 17) == pytest.approx(reference[13:], rel=1e-12)


def test_plateau_state_dict_round_trip():
    opt1 = _opt(1.0, "sgd")
    s1 = build_scheduler("plateau", opt1, epochs=10, steps_per_epoch=1, plateau_patience=2)
    for epoch, acc in enumerate([0.5, 0.4, 0.4], start=1):
        s1.step(epoch, acc)
    opt2 = _opt(1.0, "sgd")
    s2 = build_scheduler("plateau", opt2, epochs=10, steps_per_epoch=1, plateau_patience=2)
    opt2.load_state_dict(opt1.state_dict())
    s2.load_state_dict(s1.state_dict())
    s2.step(4, 0.4)  # third bad epoch: the restored counter must make this the cut
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
    assert set(SCHEDULES) == {"plateau", "cosine", "onecycle", "constant"}


def test_swalr_is_a_late_phase_of_the_schedule():
    """Switch(cosine, at=2, SWALR): cosine per update through epoch 2, then torch's SWALR once per epoch, which
    ignores updates; the state round trip works inside the late phase."""
    from torch.optim.swa_utils import SWALR

    from imgcls.schedules import PerEpoch, Switch

    def run(epochs, opt, sched, start_epoch=0):
        lrs = []
        for epoch in range(start_epoch, epochs):
            for n in range(5):
                lrs.append(current_lr(opt))
                opt.step()
                sched.step_update(epoch * 5 + n + 1)
            sched.step(epoch + 1, metric=0.5)
        return lrs

    def make(opt):
        main = build_scheduler("cosine", opt, epochs=6, steps_per_epoch=5)
        return Switch(main, 2, lambda: PerEpoch(SWALR(opt, swa_lr=1e-5, anneal_epochs=2)))

    opt = _opt(1e-3)
    lrs = run(6, opt, make(opt))
    # Reference: the cosine alone for 2 epochs, then SWALR built there and stepped once per epoch.
    ref_opt = _opt(1e-3)
    cos = build_scheduler("cosine", ref_opt, epochs=6, steps_per_epoch=5)
    ref = _record(ref_opt, cos, 10)
    swalr = SWALR(ref_opt, swa_lr=1e-5, anneal_epochs=2)
    for _ in range(4):
        swalr.step()
        ref += [current_lr(ref_opt)] * 5
    assert lrs == pytest.approx(ref, rel=1e-12)
    assert lrs[-1] == pytest.approx(1e-5)

    opt1 = _opt(1e-3)
    s1 = make(opt1)
    run(3, opt1, s1)
    opt2 = _opt(1e-3)
    s2 = make(opt2)
    opt2.load_state_dict(opt1.state_dict())
    s2.load_state_dict(s1.state_dict())
    assert run(6, opt2, s2, start_epoch=3) == pytest.approx(lrs[15:], rel=1e-12)
