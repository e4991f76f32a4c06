"""Which item indices an epoch visits: natural order, class-rebalanced, or a schedule between the two.

Every draw depends only on (seed, epoch) through its own torch.Generator, never on the global RNG, so a
resumed run and every distributed rank see the same draw; each rank then takes its shard draw[rank::world].
"""

from __future__ import annotations

import numpy as np
import torch

from imgcls.errors import UserError
from imgcls.labels import effective_number
from imgcls.registry import Registry

# name -> builder(counts, total_epochs, *, hyperparameters) -> rule(epoch) giving the class probabilities of
# that epoch's draws, or None for a natural permutation (each item once per len(labels) draws). A rule may
# switch at an epoch (deferred re-sampling: None before epoch k, balanced from k on).
SAMPLERS = Registry("--sampler")


STREAMS = ("sampler", "model", "augment")  # the random streams of an epoch, each seeded on its own


def epoch_seed(seed: int, epoch: int, stream: str) -> int:
    """The seed of one random stream of one epoch: the only rule for seeding inside an epoch.

    SeedSequence mixes (seed, epoch, stream) well, so neighbouring seeds, epochs or streams give unrelated
    draws; the result fits torch.manual_seed (63 bits).
    """
    entropy = [seed, epoch, STREAMS.index(stream)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)


class EpochSampler:
    """Per-epoch item indices for one rank, drawn by the SAMPLERS rule ``kind`` (see each builder below).

    Indices are positions in `labels`: give it the labels of the training fold and map back with
    train_idx[sampler.indices(epoch)]. class_probs has one entry per label value up to labels.max().
    With world_size > 1 and num_samples not divisible by it, the first ranks get one index more.
    ``settings``: hyperparameters by Config name (cb_beta, ...); each rule takes the ones it declares.
    """

    def __init__(self, labels, kind: str = "natural", num_samples: int | None = None, seed: int = 0,
                 total_epochs: int = 1, rank: int = 0, world_size: int = 1, settings: dict | None = None):
        SAMPLERS.lookup(kind)
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} / world size {world_size}: need 0 <= rank < world_size")
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        if self.labels.numel() == 0:
            raise UserError("sampler: no training items; check the split")
        self.kind = kind
        self.num_samples = len(self.labels) if num_samples is None else int(num_samples)
        self.seed, self.total_epochs = seed, max(1, int(total_epochs))
        self.rank, self.world_size = rank, world_size
        self.counts = torch.bincount(self.labels).to(torch.float64)
        self.rule = SAMPLERS.build(kind, self.counts, self.total_epochs, settings=settings)

    def __len__(self) -> int:
        """Number of indices this rank gets per epoch."""
        return len(range(self.rank, self.num_samples, self.world_size))

    def class_probs(self, epoch: int) -> torch.Tensor:
        """Probability that one draw of this epoch comes from each class (float64, sums to 1)."""
        probs = self.rule(epoch)
        return _natural(self.counts) if probs is None else probs

    def indices(self, epoch: int) -> torch.Tensor:
        """This rank's indices for `epoch`: draw[rank::world_size] of a draw fixed by (seed, epoch)."""
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, "sampler"))
        per_class = self.rule(epoch)
        if per_class is None:
            n = len(self.labels)
            repeats = -(-self.num_samples // n)
            draw = torch.cat([torch.randperm(n, generator=g) for _ in range(repeats)])[: self.num_samples]
        else:
            per_sample = per_class[self.labels] / self.counts[self.labels]
            draw = torch.multinomial(per_sample, self.num_samples, replacement=True, generator=g)
        return draw[self.rank:: self.world_size]


def _natural(counts: torch.Tensor) -> torch.Tensor:
    return counts / counts.sum()


def _balanced(counts: torch.Tensor) -> torch.Tensor:
    present = (counts > 0).to(torch.float64)
    return present / present.sum()


@SAMPLERS.register("natural")
def natural(counts: torch.Tensor, total_epochs: int):
    """A random permutation: each item once per len(labels) draws."""
    return lambda epoch: None


@SAMPLERS.register("weighted")
def weighted(counts: torch.Tensor, total_epochs: int):
    """V1: per-sample weight 1/class count, with replacement -> every present class equally likely."""
    balanced = _balanced(counts)
    return lambda epoch: balanced


@SAMPLERS.register("class_balanced")
def class_balanced(counts: torch.Tensor, total_epochs: int, *, cb_beta: float = 0.9999):
    """Per-sample weight (1-beta)/(1-beta^n) (effective number): between natural and balanced (beta 0 is
    natural sampling). The range of beta is checked once, by labels.effective_number (validate.RULES)."""
    present = counts > 0
    mass = torch.zeros_like(counts)
    mass[present] = counts[present] / effective_number(counts[present], cb_beta)
    probs = mass / mass.sum()
    return lambda epoch: probs


def _linear(counts: torch.Tensor, total_epochs: int, reverse: bool):
    """Class probabilities moving linearly between balanced and natural over the epochs."""
    balanced, natural = _balanced(counts), _natural(counts)

    def rule(epoch: int) -> torch.Tensor:
        t = epoch / (total_epochs - 1) if total_epochs > 1 else 0.0
        t = min(max(t, 0.0), 1.0)
        if reverse:
            t = 1.0 - t
        return (1.0 - t) * balanced + t * natural
    return rule


@SAMPLERS.register("dynamic")
def dynamic(counts: torch.Tensor, total_epochs: int):
    """V3's intent: class probabilities move linearly from balanced (first epoch) to natural (last epoch)."""
    return _linear(counts, total_epochs, reverse=False)


@SAMPLERS.register("dynamic_reverse")
def dynamic_reverse(counts: torch.Tensor, total_epochs: int):
    """natural -> balanced, the direction of deferred re-balancing (DRW, progressive balancing)."""
    return _linear(counts, total_epochs, reverse=True)


@SAMPLERS.register("sqrt")
def square_root(counts: torch.Tensor, total_epochs: int):
    """Square-root sampling (Mahajan et al. 2018; Kang et al. 2020): class c drawn with probability
    proportional to sqrt(n_c), halfway (in log space) between natural and balanced."""
    root = counts.sqrt()
    probs = root / root.sum()
    return lambda epoch: probs
