"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words", arXiv:2010.11929).

Module names follow torchvision's layout (models/vision_transformer.py) so its checkpoints load as they are;
timm's / DeiT's layout (`blocks.N.attn.qkv`, `pos_embed`, `cls_token`) is renamed by `imgcls.models.weights`.
A pre-norm encoder layer is

    x = x + drop_path(attention(LN(x)));   x = x + drop_path(MLP(LN(x)))

with attention through torch.nn.functional.scaled_dot_product_attention (the fused kernels on a GPU); its
input projection keeps nn.MultiheadAttention's parameter names (in_proj_weight / in_proj_bias / out_proj).

Any input size: the position embedding is stored for the checkpoint's grid (224 / patch) and resampled
bicubically to the input's patch grid when they differ, as timm's `resample_abs_pos_embed` (antialiased)
does; sizes that do not divide by the patch size are refused with the sizes that work.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from imgcls.errors import UserError

from .layers import DropPath

LN_EPS = 1e-6


@dataclass(frozen=True)
class ViTConfig:
    """Patch size, width, depth, heads and MLP width (paper Table 1); `image_size` is the grid the position
    embedding is stored for (torchvision's default, 224)."""
    patch_size: int
    hidden_dim: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    image_size: int = 224


CONFIGS: dict[str, ViTConfig] = {
    "vit_b_16": ViTConfig(16, 768, 12, 12, 3072),
    "vit_b_32": ViTConfig(32, 768, 12, 12, 3072),
    "vit_l_16": ViTConfig(16, 1024, 24, 16, 4096),
    "vit_l_32": ViTConfig(32, 1024, 24, 16, 4096),
    "vit_h_14": ViTConfig(14, 1280, 32, 16, 5120),
    # DeiT (Touvron et al. 2021): the same architecture, trained on ImageNet-1K alone; timm's key layout
    "deit_tiny_patch16_224": ViTConfig(16, 192, 12, 3, 768),
    "deit_small_patch16_224": ViTConfig(16, 384, 12, 6, 1536),
    "deit_base_patch16_224": ViTConfig(16, 768, 12, 12, 3072),
    "tiny_vit": ViTConfig(8, 32, 2, 2, 64, image_size=32),
}


class SelfAttention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameters (one packed q/k/v projection)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)  # nn.MultiheadAttention's init
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.reshape(n, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(n, length, dim))


class EncoderBlock(nn.Module):
    """One pre-norm Transformer layer; `mlp` indices 0/3 = the two Linear layers (torchvision's MLPBlock)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, drop_path: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.self_attention = SelfAttention(dim, num_heads)
        self.ln_2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(mlp_dim, dim),
                                 nn.Dropout(0.0))
        for linear in (self.mlp[0], self.mlp[3]):  # torchvision's MLPBlock init
            nn.init.xavier_uniform_(linear.weight)
            nn.init.normal_(linear.bias, std=1e-6)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.self_attention(self.ln_1(x)))
        return x + self.drop_path(self.mlp(self.ln_2(x)))


class Encoder(nn.Module):
    """Position embedding (class token first), the layers, the final LayerNorm."""

    def __init__(self, cfg: ViTConfig, drop_path_rate: float):
        super().__init__()
        grid = cfg.image_size // cfg.patch_size
        self.pos_embedding = nn.Parameter(torch.empty(1, grid * grid + 1, cfg.hidden_dim).normal_(std=0.02))
        # Stochastic depth grows linearly from 0 to drop_path_rate over the layers.
        rates = [drop_path_rate * i / max(cfg.num_layers - 1, 1) for i in range(cfg.num_layers)]
        self.layers = nn.Sequential(OrderedDict(
            (f"encoder_layer_{i}", EncoderBlock(cfg.hidden_dim, cfg.num_heads, cfg.mlp_dim, rate))
            for i, rate in enumerate(rates)))
        self.ln = nn.LayerNorm(cfg.hidden_dim, eps=LN_EPS)


def resample_position_embedding(pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]):
    """(1, 1 + h*w, D) for old_grid -> for new_grid: the class token's entry kept, the patch grid resized
    bicubically with antialiasing in float32 (timm's resample_abs_pos_embed)."""
    if tuple(old_grid) == tuple(new_grid):
        return pos
    dim = pos.shape[-1]
    grid = pos[:, 1:].float().reshape(1, *old_grid, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos.dtype)
    return torch.cat([pos[:, :1], grid], dim=1)


class VisionTransformer(nn.Module):
    """ViT backbone + head: conv_proj (patches) -> [class token; patches] + position -> encoder -> heads."""

    def __init__(self, cfg: ViTConfig, num_classes: int = 1000, drop_path_rate: float = 0.0):
        super().__init__()
        self.cfg = cfg
        self.patch_size = cfg.patch_size
        self.grid = (cfg.image_size // cfg.patch_size,) * 2
        self.conv_proj = nn.Conv2d(3, cfg.hidden_dim, cfg.patch_size, stride=cfg.patch_size)
        fan_in = 3 * cfg.patch_size ** 2
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))  # torchvision's init
        nn.init.zeros_(self.conv_proj.bias)
        self.class_token = nn.Parameter(torch.zeros(1, 1, cfg.hidden_dim))
        self.encoder = Encoder(cfg, drop_path_rate)
        self.num_features = cfg.hidden_dim
        self.num_classes = num_classes
        self.heads = nn.Sequential()
        self.heads.add_module("head", nn.Linear(cfg.hidden_dim, num_classes))
        _zero(self.heads.head)

    def _patches(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        h, w = x.shape[-2:]
        p = self.patch_size
        if not torch.jit.is_tracing() and (h % p or w % p):
            raise UserError(f"input {h}x{w}: {type(self).__name__} with {p}-pixel patches needs a height and "
                            f"width divisible by {p} (e.g. {max(p, h // p * p)}x{max(p, w // p * p)} or "
                            f"{(h // p + 1) * p}x{(w // p + 1) * p}); set --img-size so")
        x = self.conv_proj(x)
        grid = (x.shape[-2], x.shape[-1])
        return x.flatten(2).transpose(1, 2), grid

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1 + h*w, D): the encoder's output tokens, class token first."""
        x, grid = self._patches(x)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + resample_position_embedding(self.encoder.pos_embedding, self.grid, grid)
        return self.encoder.ln(self.encoder.layers(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(x[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def fit_checkpoint(self, sd: dict) -> None:
        """Store the position embedding at the checkpoint's grid (SWAG's 384 / 512 / 518-pixel ones), so that
        it loads exactly; inputs of any other size resample it at run time."""
        pos = sd.get("encoder.pos_embedding")
        side = math.isqrt(pos.shape[1] - 1) if pos is not None and pos.ndim == 3 else 0
        if side and side * side == pos.shape[1] - 1 and pos.shape != self.encoder.pos_embedding.shape:
            self.encoder.pos_embedding = nn.Parameter(torch.zeros_like(pos))
            self.grid = (side, side)

    def get_classifier(self) -> nn.Linear:
        return self.heads.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.heads.head = nn.Linear(self.num_features, num_classes)
        _zero(self.heads.head)


def _zero(linear: nn.Linear) -> None:
    # torchvision starts the classifier at zero (the ViT paper's fine-tuning recipe)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)


def vit(name: str, num_classes: int, drop_path_rate: float = 0.0) -> VisionTransformer:
    """Build the ViT called `name` (a key of CONFIGS)."""
    return VisionTransformer(CONFIGS[name], num_classes, drop_path_rate)
