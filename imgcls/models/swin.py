"""Swin Transformer V1 (Liu et al. 2021, arXiv:2103.14030) and V2 (Liu et al. 2022, arXiv:2111.09883).

Module names follow torchvision's layout (models/swin_transformer.py), so its checkpoints load as they are.
Tokens stay in N x H x W x C. A stage is a run of blocks whose attention works inside non-overlapping windows,
every second block on windows shifted by half a window (with a mask so that a shifted window does not attend
across the image's wrap-around); stages are joined by patch merging (2 x 2 neighbours -> one token, 2x the
width).

    V1 block: x = x + drop_path(attn(LN(x)));  x = x + drop_path(MLP(LN(x)))     (pre-norm)
              attention logits q.k / sqrt(d) + a learned relative-position bias table
    V2 block: x = x + drop_path(LN(attn(x)));  x = x + drop_path(LN(MLP(x)))     (res-post-norm)
              scaled cosine attention: cos(q, k) * exp(clamped logit_scale), and a log-spaced continuous
              position bias from a small MLP, 16 * sigmoid(.)

Attention goes through torch.nn.functional.scaled_dot_product_attention, the bias and the shift mask as its
additive mask. Any input size: a feature map that is not a multiple of the window is padded at the right and
bottom for the attention and cropped after (as torchvision does); the shift is dropped where a window covers
the whole padded map.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import DropPath, Permute


@dataclass(frozen=True)
class SwinConfig:
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window: int
    v2: bool = False
    patch_size: int = 4


CONFIGS: dict[str, SwinConfig] = {
    "swin_t": SwinConfig(96, (2, 2, 6, 2), (3, 6, 12, 24), 7),
    "swin_s": SwinConfig(96, (2, 2, 18, 2), (3, 6, 12, 24), 7),
    "swin_b": SwinConfig(128, (2, 2, 18, 2), (4, 8, 16, 32), 7),
    "swin_v2_t": SwinConfig(96, (2, 2, 6, 2), (3, 6, 12, 24), 8, v2=True),
    "swin_v2_s": SwinConfig(96, (2, 2, 18, 2), (3, 6, 12, 24), 8, v2=True),
    "swin_v2_b": SwinConfig(128, (2, 2, 18, 2), (4, 8, 16, 32), 8, v2=True),
    "tiny_swin": SwinConfig(16, (2, 2), (2, 4), 4),
    "tiny_swin_v2": SwinConfig(16, (2, 2), (2, 4), 4, v2=True),
}


def relative_position_index(window: int) -> torch.Tensor:
    """(window^2 * window^2,) index into the (2w-1)^2 table of relative offsets, for every query/key pair."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return (rel[..., 0] * (2 * window - 1) + rel[..., 1]).flatten()


def log_spaced_coords(window: int) -> torch.Tensor:
    """V2's input to the position-bias MLP: relative offsets scaled to [-8, 8], then sign * log2(1 + |.|) / 3."""
    offsets = torch.arange(-(window - 1), window, dtype=torch.float32)
    table = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij")).permute(1, 2, 0).unsqueeze(0)
    table = table / (window - 1) * 8
    return torch.sign(table) * torch.log2(table.abs() + 1.0) / 3.0


def shift_mask(height: int, width: int, window: int, shift: tuple[int, int], device) -> torch.Tensor:
    """(windows, w^2, w^2) additive mask: -100 between tokens that the cyclic shift brought from different
    regions of the (padded) map, 0 elsewhere (the paper's and torchvision's value)."""
    region = torch.zeros(height, width, device=device)
    count = 0
    for hs in ((0, -window), (-window, -shift[0]), (-shift[0], None)):
        for ws in ((0, -window), (-window, -shift[1]), (-shift[1], None)):
            region[hs[0]:hs[1], ws[0]:ws[1]] = count
            count += 1
    region = region.view(height // window, window, width // window, window).permute(0, 2, 1, 3)
    region = region.reshape(-1, window * window)
    diff = region.unsqueeze(1) - region.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0)


class WindowAttention(nn.Module):
    """(Shifted-)window multi-head self-attention with a relative position bias (V1 table or V2 MLP)."""

    def __init__(self, dim: int, window: int, shift: int, num_heads: int, v2: bool):
        super().__init__()
        self.window, self.shift, self.num_heads, self.v2 = window, shift, num_heads, v2
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        if v2:
            self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(num_heads, 1, 1)))
            self.cpb_mlp = nn.Sequential(nn.Linear(2, 512), nn.ReLU(inplace=True), nn.Linear(512, num_heads, bias=False))
            self.register_buffer("relative_coords_table", log_spaced_coords(window))
            with torch.no_grad():
                self.qkv.bias[dim:2 * dim].zero_()  # V2 has no key bias (it is zeroed again in forward)
        else:
            self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
            nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window))

    def position_bias(self) -> torch.Tensor:
        """(1, heads, w^2, w^2)."""
        n = self.window * self.window
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads) if self.v2 \
            else self.relative_position_bias_table
        bias = table[self.relative_position_index].view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        return 16 * torch.sigmoid(bias) if self.v2 else bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        win = self.window
        x = F.pad(x, (0, 0, 0, (win - w % win) % win, 0, (win - h % win) % win))
        _, ph, pw, _ = x.shape
        # no shift along a side that one window already covers (there is nothing to connect)
        shift = (0 if win >= ph else self.shift, 0 if win >= pw else self.shift)
        if any(shift):
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        windows = (ph // win) * (pw // win)
        x = x.view(b, ph // win, win, pw // win, win, c).permute(0, 1, 3, 2, 4, 5).reshape(b * windows, win * win, c)

        bias = self.qkv.bias
        if self.v2:
            bias = torch.cat([bias[:c], torch.zeros_like(bias[c:2 * c]), bias[2 * c:]])
        q, k, v = F.linear(x, self.qkv.weight, bias).view(x.shape[0], win * win, 3, self.num_heads, -1) \
            .permute(2, 0, 3, 1, 4)
        mask = self.position_bias()  # (1, heads, n, n)
        if any(shift):
            mask = mask.unsqueeze(1) + shift_mask(ph, pw, win, shift, x.device).unsqueeze(1).unsqueeze(0)
            mask = mask.expand(b, -1, -1, -1, -1).reshape(b * windows, self.num_heads, win * win, win * win)
        if self.v2:  # scaled cosine attention
            scale = torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
            out = F.scaled_dot_product_attention(F.normalize(q, dim=-1) * scale, F.normalize(k, dim=-1), v,
                                                 attn_mask=mask.to(q.dtype), scale=1.0)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))
        x = self.proj(out.transpose(1, 2).reshape(x.shape[0], win * win, c))

        x = x.view(b, ph // win, pw // win, win, win, c).permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, c)
        if any(shift):
            x = torch.roll(x, shifts=shift, dims=(1, 2))
        return x[:, :h, :w, :].contiguous()


class SwinBlock(nn.Module):
    """One block; `mlp` indices 0/3 = the two Linear layers (torchvision's MLP)."""

    def __init__(self, dim: int, num_heads: int, window: int, shift: int, drop_path: float, v2: bool):
        super().__init__()
        self.v2 = v2
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, shift, num_heads, v2)
        self.stochastic_depth = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(4 * dim, dim),
                                 nn.Dropout(0.0))
        for linear in (self.mlp[0], self.mlp[3]):  # torchvision's init
            nn.init.xavier_uniform_(linear.weight)
            nn.init.normal_(linear.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.v2:
            x = x + self.stochastic_depth(self.norm1(self.attn(x)))
            return x + self.stochastic_depth(self.norm2(self.mlp(x)))
        x = x + self.stochastic_depth(self.attn(self.norm1(x)))
        return x + self.stochastic_depth(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2 x 2 neighbouring tokens concatenated (odd sides padded), then V1: LN -> Linear; V2: Linear -> LN."""

    def __init__(self, dim: int, v2: bool):
        super().__init__()
        self.v2 = v2
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim if v2 else 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1:3]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.norm(self.reduction(x)) if self.v2 else self.reduction(self.norm(x))


class SwinTransformer(nn.Module):
    """`features` = [patch embedding, stage 1, merge, stage 2, merge, stage 3, merge, stage 4]; then norm, global
    average pool, head."""

    def __init__(self, cfg: SwinConfig, num_classes: int = 1000, drop_path_rate: float = 0.0):
        super().__init__()
        p = cfg.patch_size
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, cfg.embed_dim, p, stride=p), Permute([0, 2, 3, 1]),
                                                 nn.LayerNorm(cfg.embed_dim))]
        total, index = sum(cfg.depths), 0
        for stage, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads)):
            dim = cfg.embed_dim * 2 ** stage
            blocks = []
            for i in range(depth):
                # stochastic depth grows linearly from 0 to drop_path_rate over the global block index
                rate = drop_path_rate * index / max(total - 1, 1)
                blocks.append(SwinBlock(dim, heads, cfg.window, 0 if i % 2 == 0 else cfg.window // 2, rate, cfg.v2))
                index += 1
            layers.append(nn.Sequential(*blocks))
            if stage < len(cfg.depths) - 1:
                layers.append(PatchMerging(dim, cfg.v2))
        self.features = nn.Sequential(*layers)
        self.num_features = cfg.embed_dim * 2 ** (len(cfg.depths) - 1)
        self.num_classes = num_classes
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes)
        for m in self.modules():  # torchvision's init of every Linear (after the blocks' own)
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """N x H x W x C tokens after the final norm."""
        return self.norm(self.features(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(1, 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)


def swin(name: str, num_classes: int, drop_path_rate: float = 0.0) -> SwinTransformer:
    """Build the Swin Transformer called `name` (a key of CONFIGS)."""
    return SwinTransformer(CONFIGS[name], num_classes, drop_path_rate)
