"""ConvNeXt (Liu et al. 2022, "A ConvNet for the 2020s", arXiv:2201.03545).

Module names follow torchvision's layout so its checkpoints load as they are; official and timm checkpoints
are renamed by `imgcls.models.weights`. A block is

    x + drop_path(gamma * Linear(GELU(Linear(LN(dwconv7x7(x))))))

where the two Linear layers on a channels-last tensor are the paper's 1x1 convs ("pwconv1/pwconv2").
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import DropPath, LayerNorm2d, Permute

LN_EPS = 1e-6


@dataclass(frozen=True)
class ConvNeXtConfig:
    """Widths and depths of the four stages (paper Sec. 3 / Table 9)."""
    dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]


CONFIGS: dict[str, ConvNeXtConfig] = {
    "convnext_tiny": ConvNeXtConfig((96, 192, 384, 768), (3, 3, 9, 3)),
    "convnext_small": ConvNeXtConfig((96, 192, 384, 768), (3, 3, 27, 3)),
    "convnext_base": ConvNeXtConfig((128, 256, 512, 1024), (3, 3, 27, 3)),
    "convnext_large": ConvNeXtConfig((192, 384, 768, 1536), (3, 3, 27, 3)),
    "tiny_convnext": ConvNeXtConfig((8, 16, 32, 64), (1, 1, 1, 1)),
}


class CNBlock(nn.Module):
    """One ConvNeXt block; `block` indices 0/2/3/5 = dwconv / norm / pwconv1 / pwconv2."""

    def __init__(self, dim: int, drop_path: float, layer_scale_init: float = 1e-6):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim),
            Permute([0, 2, 3, 1]),
            nn.LayerNorm(dim, eps=LN_EPS),
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Linear(4 * dim, dim),
            Permute([0, 3, 1, 2]),
        )
        # Per-channel residual scale ("gamma" in the official code), shaped to broadcast over N x C x H x W.
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), layer_scale_init))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop_path(self.layer_scale * self.block(x))
        out += x  # in place: saves one activation-sized allocation per block
        return out


class ConvNeXt(nn.Module):
    """ConvNeXt backbone + head. `features` = [stem, stage1, down2, stage2, down3, stage3, down4, stage4]."""

    def __init__(self, cfg: ConvNeXtConfig, num_classes: int = 1000, drop_path_rate: float = 0.0):
        super().__init__()
        dims, depths = cfg.dims, cfg.depths
        # Stochastic depth grows linearly from 0 to drop_path_rate over the global block index.
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4), LayerNorm2d(dims[0], eps=LN_EPS))]
        block_idx = 0
        for stage, (dim, depth) in enumerate(zip(dims, depths)):
            if stage > 0:
                layers.append(nn.Sequential(LayerNorm2d(dims[stage - 1], eps=LN_EPS),
                                            nn.Conv2d(dims[stage - 1], dim, 2, stride=2)))
            layers.append(nn.Sequential(*[CNBlock(dim, rates[block_idx + j]) for j in range(depth)]))
            block_idx += depth
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = dims[-1]
        self.num_classes = num_classes
        self.classifier = nn.Sequential(LayerNorm2d(dims[-1], eps=LN_EPS), nn.Flatten(1),
                                        nn.Linear(dims[-1], num_classes))
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.classifier[2]

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final Linear layer (new random init) for `num_classes` outputs."""
        self.num_classes = num_classes
        self.classifier[2] = nn.Linear(self.num_features, num_classes)
        _init_weights(self.classifier[2])


def _init_weights(m: nn.Module) -> None:
    # The paper's init: truncated normal (std .02) for conv/linear weights, zero biases.
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def convnext(name: str, num_classes: int, drop_path_rate: float = 0.0) -> ConvNeXt:
    """Build the ConvNeXt called `name` (a key of CONFIGS)."""
    return ConvNeXt(CONFIGS[name], num_classes, drop_path_rate)
