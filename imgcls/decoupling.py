"""Classifier re-training on frozen features (cRT; Kang et al. 2020, "Decoupling representation and classifier
for long-tailed recognition").

Stage one trains the whole network with plain sampling, which learns the best features; stage two freezes
the backbone and trains a fresh linear classifier on its features with class-balanced sampling, which removes
the head-class bias that natural sampling leaves in the classifier. Here stage two runs on features extracted
once (no augmentation, eval-mode BatchNorm), so it costs one inference pass over the training images plus a
few seconds of linear-model steps.

Which classes the re-training draws is a SAMPLERS rule (data/samplers.py): "weighted" (every class equally
likely) is the paper's class-balanced sampling, "sqrt" square-root sampling, "natural" a plain re-fit.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .data.augment import eval_transform
from .data.samplers import EpochSampler


def final_linear(model: nn.Module) -> nn.Linear:
    """The classifier layer, as the model names it (get_classifier(), timm's convention; both families have it)."""
    get = getattr(model, "get_classifier", None)
    if get is None:
        raise ValueError(f"{type(model).__name__} has no get_classifier(); cRT needs to know its classifier layer")
    return get()


@torch.no_grad()
def extract_features(model: nn.Module, images: torch.Tensor, positions, *, img_size, mean, std,
                     device: torch.device, batch_size: int = 256, channels_last: bool = False,
                     mirrored: bool = False) -> torch.Tensor:
    """float32 (len(positions) x D): the input of the classifier layer for images[positions], in eval mode
    (mirrored: of the left-right mirror images instead).

    Read with a forward pre-hook on the classifier layer (dropout before it is the identity in eval mode)."""
    head = final_linear(model)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach().float().cpu()))
    was_training = model.training
    model.eval()
    try:
        positions = np.asarray(positions, dtype=np.int64)
        for start in range(0, len(positions), batch_size):
            batch = torch.as_tensor(positions[start:start + batch_size])
            x = eval_transform(images[batch].to(device), img_size, mean, std)
            x = x.flip(-1) if mirrored else x
            model(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(captured) if captured else torch.zeros(0, head.in_features)


def sample_probs(labels: torch.Tensor, sampler: str, settings: dict | None = None) -> torch.Tensor:
    """Per-sample draw probabilities of the SAMPLERS rule `sampler` (its first epoch's class probabilities,
    spread evenly over each class's items)."""
    rule = EpochSampler(labels, kind=sampler, total_epochs=1, settings=settings)
    per_class = rule.class_probs(0)
    return (per_class[labels] / rule.counts[labels]).float()


def retrain_classifier(features: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
                       sampler: str = "weighted", settings: dict | None = None, steps: int = 600, batch_size: int = 512, lr: float = 0.1, weight_decay: float = 5e-4,
                       seed: int = 0) -> nn.Linear:
    """A new linear classifier fitted to frozen features, its batches drawn by the SAMPLERS rule `sampler`
    (SGD, momentum 0.9, cosine decay to 0 over `steps`), as the paper's cRT; freshly initialised so no
    natural-sampling bias carries over. Weight decay 5e-4 is the paper's."""
    generator = torch.Generator().manual_seed(seed)
    head = nn.Linear(features.shape[1], num_classes)
    with torch.no_grad():  # seeded init (nn.Linear's own init would draw from the global generator)
        bound = 1.0 / math.sqrt(features.shape[1])
        head.weight.uniform_(-bound, bound, generator=generator)
        head.bias.zero_()
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    probs = sample_probs(labels, sampler, settings)
    for step in tqdm(range(steps), desc="cRT", unit="step", leave=False, disable=not sys.stderr.isatty()):
        for group in optimizer.param_groups:
            group["lr"] = 0.5 * lr * (1.0 + math.cos(math.pi * step / steps))
        batch = torch.multinomial(probs, batch_size, replacement=True, generator=generator)
        loss = nn.functional.cross_entropy(head(features[batch]), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return head.requires_grad_(False)


def replace_classifier(model: nn.Module, new: nn.Linear) -> None:
    """Copy a re-trained head into the model's classifier layer (same shapes, same device and dtype)."""
    head = final_linear(model)
    if head.weight.shape != new.weight.shape:
        raise ValueError(f"re-trained head {tuple(new.weight.shape)} does not fit {tuple(head.weight.shape)}")
    with torch.no_grad():
        head.weight.copy_(new.weight)
        head.bias.copy_(new.bias)


def crt(model: nn.Module, images: torch.Tensor, train_idx, labels: torch.Tensor, settings: dict, *, img_size, mean,
        std, device, batch_size: int = 256, channels_last: bool = False) -> nn.Module:
    """cRT as train.py runs it, in place: the model's features of its training images, a new classifier fitted to
    them by the run's settings (a config as a dict: crt_sampler, crt_steps, crt_batch_size, crt_lr, seed), copied
    into the model's classifier layer. The one call for training (shipping.retrain_head) and the benchmarks."""
    features = extract_features(model, images, train_idx, img_size=img_size, mean=mean, std=std, device=device,
                                batch_size=batch_size, channels_last=channels_last)
    head = retrain_classifier(features, labels[train_idx], final_linear(model).out_features,
                              sampler=settings["crt_sampler"], settings=settings, steps=settings["crt_steps"],
                              batch_size=settings["crt_batch_size"], lr=settings["crt_lr"], seed=settings["seed"])
    replace_classifier(model, head.to(device))
    return model
