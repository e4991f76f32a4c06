"""Which item indices an epoch visits: natural order, class-rebalanced, or a schedule between the two.

Every draw depends only on (seed, epoch) through its own torch.Generator, never on the global RNG, so a
resumed run and every distributed rank see the same draw; each rank then takes its shard draw[rank::world].
"""

from __future__ import annotations

import numpy as np
import torch

from imgcls.errors import UserError

KINDS = ("natural", "weighted", "class_balanced", "dynamic", "dynamic_reverse")


def effective_number_weights(counts, beta: float) -> np.ndarray:
    """Class-balanced weights (1 - beta) / (1 - beta**n) of Cui et al. 2019, normalised to sum to #classes.

    Classes with n = 0 get weight 0. Shared with the class-balanced focal loss.
    """
    counts = np.asarray(counts, dtype=np.float64)
    weights = np.zeros_like(counts)
    present = counts > 0
    weights[present] = (1.0 - beta) / (1.0 - np.power(beta, counts[present]))
    return weights * (present.sum() / weights.sum())


class EpochSampler:
    """Per-epoch item indices for one rank.

    kind:
      natural          a random permutation (each item once per N samples)
      weighted         V1: per-sample weight 1/class count (class weights normalised to sum = #classes),
                       with replacement -> every class equally likely
      class_balanced   per-sample weight (1-beta)/(1-beta^n) (effective number) -> between natural and balanced
      dynamic          V3's intent: class probabilities move linearly from balanced (first epoch) to natural
                       (last epoch)
      dynamic_reverse  natural -> balanced, the direction of deferred re-balancing (DRW, progressive balancing)

    Indices are positions in `labels`: give it the labels of the training fold and map back with
    train_idx[sampler.indices(epoch)]. class_probs has one entry per label value up to labels.max().
    With world_size > 1 and num_samples not divisible by it, the first ranks get one index more.
    """

    def __init__(self, labels, kind: str = "natural", num_samples: int | None = None, seed: int = 0,
                 total_epochs: int = 1, beta: float = 0.9999, rank: int = 0, world_size: int = 1):
        if kind not in KINDS:
            raise UserError(f"--sampler {kind}: unknown; choose one of {', '.join(KINDS)}")
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} / world size {world_size}: need 0 <= rank < world_size")
        if not 0.0 < beta < 1.0:
            raise UserError(f"--cb-beta {beta}: must be in (0, 1)")
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        if self.labels.numel() == 0:
            raise UserError("sampler: no training items; check the split")
        self.kind = kind
        self.num_samples = len(self.labels) if num_samples is None else int(num_samples)
        self.seed, self.total_epochs, self.beta = seed, max(1, int(total_epochs)), beta
        self.rank, self.world_size = rank, world_size
        self.counts = torch.bincount(self.labels).to(torch.float64)

    def __len__(self) -> int:
        """Number of indices this rank gets per epoch."""
        return len(range(self.rank, self.num_samples, self.world_size))

    def class_probs(self, epoch: int) -> torch.Tensor:
        """Probability that one draw of this epoch comes from each class (float64, sums to 1)."""
        natural = self.counts / self.counts.sum()
        balanced = (self.counts > 0).to(torch.float64)
        balanced = balanced / balanced.sum()
        if self.kind == "natural":
            return natural
        if self.kind == "weighted":
            # weight 1/n per sample times n samples: the same total for every present class
            return balanced
        if self.kind == "class_balanced":
            mass = self.counts * torch.from_numpy(effective_number_weights(self.counts.numpy(), self.beta))
            return mass / mass.sum()
        t = epoch / (self.total_epochs - 1) if self.total_epochs > 1 else 0.0
        t = min(max(t, 0.0), 1.0)
        if self.kind == "dynamic_reverse":
            t = 1.0 - t
        return (1.0 - t) * balanced + t * natural

    def indices(self, epoch: int) -> torch.Tensor:
        """This rank's indices for `epoch`: draw[rank::world_size] of a draw fixed by (seed, epoch)."""
        g = torch.Generator().manual_seed(self._epoch_seed(epoch))
        if self.kind == "natural":
            n = len(self.labels)
            repeats = -(-self.num_samples // n)
            draw = torch.cat([torch.randperm(n, generator=g) for _ in range(repeats)])[: self.num_samples]
        else:
            per_class = self.class_probs(epoch)
            per_sample = per_class[self.labels] / self.counts[self.labels]
            draw = torch.multinomial(per_sample, self.num_samples, replacement=True, generator=g)
        return draw[self.rank:: self.world_size]

    def _epoch_seed(self, epoch: int) -> int:
        # SeedSequence mixes (seed, epoch) well, so neighbouring seeds/epochs give unrelated draws.
        return int(np.random.SeedSequence([self.seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)
