"""Batched inference on cached uint8 images: shared by validation during training and by predict.py."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from . import distributed as dist
from .data.augment import eval_transform
from .tta import predict_probs


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """'auto' means fp16 on CUDA (with a GradScaler when training) and full precision elsewhere."""
    if amp == "auto":
        return torch.float16 if device.type == "cuda" else None
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "off": None}[amp]


def use_channels_last(setting: str, device: torch.device) -> bool:
    # NHWC suits cuDNN's tensor-core convolutions, and on the CPU bench/models.py measured it 1.2-1.5x faster
    # for EfficientNet training steps and equal for ConvNeXt (bench/results/models.md); MPS stays NCHW.
    return setting == "on" or (setting == "auto" and device.type in ("cuda", "cpu"))


@torch.no_grad()
def predict_dataset(model: nn.Module, images: torch.Tensor, positions: np.ndarray, *, img_size, mean, std,
                    device: torch.device, batch_size: int = 256, views=("identity",), amp: str = "off",
                    channels_last: bool = False, progress=None) -> np.ndarray:
    """Class probabilities (float32, len(positions) x C) for images[positions].

    Under torch.distributed every rank predicts its own shard and the shards are gathered back into the
    original order, so every rank returns the full array.
    """
    was_training = model.training
    model.eval()
    positions = np.asarray(positions, dtype=np.int64)
    mine = np.arange(len(positions))[dist.rank()::dist.world_size()]
    dtype = autocast_dtype(amp, device)
    chunks = []
    starts = range(0, len(mine), batch_size)
    for start in (progress(starts) if progress else starts):
        batch = torch.as_tensor(positions[mine[start:start + batch_size]])
        x = eval_transform(images[batch].to(device, non_blocking=True), img_size, mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            chunks.append(predict_probs(model, x, views).float().cpu())
    model.train(was_training)
    num_classes = chunks[0].shape[1] if chunks else 0
    local = torch.cat(chunks).numpy() if chunks else np.zeros((0, num_classes), np.float32)
    gathered = dist.gather_objects((mine, local))
    num_classes = max(p.shape[1] for _, p in gathered)
    probs = np.zeros((len(positions), num_classes), dtype=np.float32)
    for where, part in gathered:
        probs[where] = part
    return probs
