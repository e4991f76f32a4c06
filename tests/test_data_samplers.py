"""Samplers: drawn class frequencies match their target probabilities; shards; determinism; no global RNG."""

import numpy as np
import pytest
import torch

from imgcls.data.samplers import EpochSampler
from imgcls.labels import class_balanced_weights
from imgcls.errors import UserError

COUNTS = np.array([500, 120, 40, 9, 3, 1])
LABELS = np.repeat(np.arange(len(COUNTS)), COUNTS)
DRAWS = 20000


def _assert_frequencies(sampler, epoch, expected):
    """Observed class frequencies within 5 binomial standard deviations of the expected probabilities."""
    drawn = torch.as_tensor(LABELS)[sampler.indices(epoch)]
    observed = torch.bincount(drawn, minlength=len(COUNTS)).double().numpy() / len(drawn)
    expected = np.asarray(expected, dtype=np.float64)
    std = np.sqrt(expected * (1 - expected) / len(drawn))
    assert np.all(np.abs(observed - expected) <= 5 * std + 1e-12), (observed, expected)


def test_natural_is_a_permutation_and_probabilities_are_the_class_shares():
    sampler = EpochSampler(LABELS, "natural", seed=1)
    draw = sampler.indices(0)
    assert draw.dtype == torch.int64 and sorted(draw.tolist()) == list(range(len(LABELS)))
    assert torch.allclose(sampler.class_probs(0), torch.as_tensor(COUNTS / COUNTS.sum()))
    longer = EpochSampler(LABELS, "natural", num_samples=2 * len(LABELS) + 5).indices(0)
    assert torch.bincount(longer).min() >= 2


def test_weighted_v1_draws_every_class_equally():
    sampler = EpochSampler(LABELS, "weighted", num_samples=DRAWS, seed=0)
    # V1's sample weight: 1/count, class weights normalised to sum to #classes; the class share of the draw is
    # count * weight / total weight, computed here independently of the sampler
    class_w = (1.0 / COUNTS) * len(COUNTS) / (1.0 / COUNTS).sum()
    expected = COUNTS * class_w / (COUNTS * class_w).sum()
    assert np.allclose(expected, 1 / len(COUNTS))
    assert np.allclose(sampler.class_probs(0).numpy(), expected)
    _assert_frequencies(sampler, 0, expected)


def test_sqrt_draws_each_class_in_proportion_to_the_root_of_its_count():
    sampler = EpochSampler(LABELS, "sqrt", num_samples=DRAWS, seed=0)
    expected = np.sqrt(COUNTS) / np.sqrt(COUNTS).sum()  # Kang et al. 2020, square-root sampling (q = 1/2)
    assert np.allclose(sampler.class_probs(0).numpy(), expected)
    _assert_frequencies(sampler, 0, expected)


def test_class_balanced_uses_the_effective_number():
    beta = 0.99
    sampler = EpochSampler(LABELS, "class_balanced", num_samples=DRAWS, settings={"cb_beta": beta}, seed=2)
    effective = (1 - beta ** COUNTS) / (1 - beta)  # Cui et al. 2019, eq. for E_n
    expected = COUNTS / effective / (COUNTS / effective).sum()
    assert np.allclose(sampler.class_probs(3).numpy(), expected)
    _assert_frequencies(sampler, 3, expected)
    weights = class_balanced_weights(COUNTS, beta).double().numpy()
    assert np.isclose(weights.sum(), len(COUNTS)) and np.allclose(weights / weights[0], effective[0] / effective)


@pytest.mark.parametrize("kind", ["dynamic", "dynamic_reverse"])
def test_dynamic_interpolates_linearly_between_balanced_and_natural(kind):
    epochs = 5
    sampler = EpochSampler(LABELS, kind, num_samples=DRAWS, total_epochs=epochs, seed=4)
    natural, balanced = COUNTS / COUNTS.sum(), np.full(len(COUNTS), 1 / len(COUNTS))
    for epoch in range(epochs):
        t = epoch / (epochs - 1)
        if kind == "dynamic_reverse":
            t = 1 - t
        expected = (1 - t) * balanced + t * natural
        assert np.allclose(sampler.class_probs(epoch).numpy(), expected)
    _assert_frequencies(sampler, 0, sampler.class_probs(0).numpy())
    _assert_frequencies(sampler, 2, sampler.class_probs(2).numpy())
    first = sampler.class_probs(0).numpy()
    assert np.allclose(first, balanced if kind == "dynamic" else natural)


@pytest.mark.parametrize("kind", ["natural", "weighted", "dynamic"])
def test_shards_are_disjoint_and_together_the_single_process_draw(kind):
    world = 3
    single = EpochSampler(LABELS, kind, seed=7, total_epochs=4).indices(2)
    shards = [EpochSampler(LABELS, kind, seed=7, total_epochs=4, rank=r, world_size=world).indices(2)
              for r in range(world)]
    # position p of the draw goes to rank p % world: interleaving the shards rebuilds the draw exactly
    rebuilt = torch.empty_like(single)
    for r, shard in enumerate(shards):
        rebuilt[r::world] = shard
    assert torch.equal(rebuilt, single)
    assert sum(len(s) for s in shards) == len(single)
    if kind == "natural":  # without replacement the shards share no item
        sets = [set(s.tolist()) for s in shards]
        assert not (sets[0] & sets[1]) and not (sets[1] & sets[2]) and not (sets[0] & sets[2])
    assert [len(EpochSampler(LABELS, kind, rank=r, world_size=world)) for r in range(world)] == \
        [len(s) for s in shards]


def test_draw_depends_only_on_seed_and_epoch_and_leaves_global_rng_alone():
    sampler = EpochSampler(LABELS, "weighted", seed=5)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = sampler.indices(1)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)
    assert torch.equal(EpochSampler(LABELS, "weighted", seed=5).indices(1), first)
    assert not torch.equal(sampler.indices(2), first)
    assert not torch.equal(EpochSampler(LABELS, "weighted", seed=6).indices(1), first)


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError, match="--sampler"):
        EpochSampler(LABELS, "no_such_sampler")
    with pytest.raises(UserError, match="rank"):
        EpochSampler(LABELS, rank=2, world_size=2)


def test_one_epoch_seed_rule_for_every_stream():
    from imgcls.data.samplers import STREAMS, epoch_seed
    seeds = {(s, e, k): epoch_seed(s, e, k) for s in range(3) for e in range(3) for k in STREAMS}
    assert len(set(seeds.values())) == len(seeds)  # unrelated for neighbouring seeds, epochs and streams
    assert all(0 <= v < 2**63 for v in seeds.values())
    # the sampler's draw is the one its stream's seed gives
    g = torch.Generator().manual_seed(epoch_seed(7, 2, "sampler"))
    assert torch.equal(EpochSampler(LABELS, "natural", seed=7).indices(2), torch.randperm(len(LABELS), generator=g))


def test_a_sampler_rule_can_switch_at_an_epoch():
    from imgcls.data.samplers import SAMPLERS

    @SAMPLERS.register("test_deferred")
    def deferred(counts, total_epochs, *, switch_epoch=2):  # natural permutation, then balanced from epoch k
        balanced = (counts > 0).double() / (counts > 0).sum()
        return lambda epoch: None if epoch < switch_epoch else balanced
    try:
        sampler = EpochSampler(LABELS, "test_deferred", num_samples=DRAWS, seed=3, settings={"switch_epoch": 1})
        assert torch.allclose(sampler.class_probs(0), torch.as_tensor(COUNTS / COUNTS.sum()))
        assert torch.bincount(sampler.indices(0)[: len(LABELS)]).max() == 1  # a permutation
        _assert_frequencies(sampler, 1, np.full(len(COUNTS), 1 / len(COUNTS)))
    finally:
        del SAMPLERS["test_deferred"]
