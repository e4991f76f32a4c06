"""EfficientNet V1 (Tan & Le 2019, arXiv:1905.11946) and V2 (Tan & Le 2021, arXiv:2104.00298).

One `EfficientNet` class serves both: a stage is a run of MBConv blocks (inverted residual with depthwise conv
and squeeze-excite) or FusedMBConv blocks (expansion and depthwise conv fused into one kxk conv, V2's early
stages). Module names follow torchvision's layout; timm checkpoints are renamed by `imgcls.models.weights`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import torch
from torch import nn

from .layers import DropPath, SqueezeExcite, conv_bn_act, make_divisible


@dataclass(frozen=True)
class MBConvConfig:
    """A stage of MBConv blocks (with SE, ratio 1/4 of the block input): one row of a paper table."""
    expand_ratio: float
    kernel: int
    stride: int
    in_ch: int
    out_ch: int
    layers: int


@dataclass(frozen=True)
class FusedMBConvConfig:
    """A stage of FusedMBConv blocks (no SE)."""
    expand_ratio: float
    kernel: int
    stride: int
    in_ch: int
    out_ch: int
    layers: int


StageConfig = Union[MBConvConfig, FusedMBConvConfig]


@dataclass(frozen=True)
class EfficientNetConfig:
    """A base table plus the compound scaling and the details a checkpoint depends on."""
    stages: tuple[StageConfig, ...]
    width_mult: float = 1.0
    depth_mult: float = 1.0
    head_ch: int | None = None      # None: 4x the last stage's width (V1)
    dropout: float = 0.2
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    tf_same: bool = False           # TensorFlow "SAME" padding on strided convs (timm's tf_* weights)
    round_limit: float = 0.9        # channel rounding rule, see make_divisible

    def width(self, channels: int) -> int:
        return make_divisible(channels * self.width_mult, 8, self.round_limit)

    def depth(self, layers: int) -> int:
        return int(math.ceil(layers * self.depth_mult))


M, F = MBConvConfig, FusedMBConvConfig

# EfficientNet-B0, Tan & Le 2019 Table 1 (stage 1 is the stem, stage 9 the head).
V1_STAGES = (M(1, 3, 1, 32, 16, 1), M(6, 3, 2, 16, 24, 2), M(6, 5, 2, 24, 40, 2), M(6, 3, 2, 40, 80, 3),
             M(6, 5, 1, 80, 112, 3), M(6, 5, 2, 112, 192, 4), M(6, 3, 1, 192, 320, 1))
# EfficientNetV2-S, Tan & Le 2021 Table 4; M and L from the authors' code (google/automl efficientnetv2).
V2_S_STAGES = (F(1, 3, 1, 24, 24, 2), F(4, 3, 2, 24, 48, 4), F(4, 3, 2, 48, 64, 4), M(4, 3, 2, 64, 128, 6),
               M(6, 3, 1, 128, 160, 9), M(6, 3, 2, 160, 256, 15))
V2_M_STAGES = (F(1, 3, 1, 24, 24, 3), F(4, 3, 2, 24, 48, 5), F(4, 3, 2, 48, 80, 5), M(4, 3, 2, 80, 160, 7),
               M(6, 3, 1, 160, 176, 14), M(6, 3, 2, 176, 304, 18), M(6, 3, 1, 304, 512, 5))
V2_L_STAGES = (F(1, 3, 1, 32, 32, 4), F(4, 3, 2, 32, 64, 7), F(4, 3, 2, 64, 96, 7), M(4, 3, 2, 96, 192, 10),
               M(6, 3, 1, 192, 224, 19), M(6, 3, 2, 224, 384, 25), M(6, 3, 1, 384, 640, 7))
# EfficientNetV2-B0 (the authors' code, "efficientnetv2-base"); B1-B3 scale it.
V2_BASE_STAGES = (F(1, 3, 1, 32, 16, 1), F(4, 3, 2, 16, 32, 2), F(4, 3, 2, 32, 48, 2), M(4, 3, 2, 48, 96, 3),
                  M(6, 3, 1, 96, 112, 5), M(6, 3, 2, 112, 192, 8))
# Tiny nets for fast tests of the training engine (no checkpoints).
TEST_V1_STAGES = (M(1, 3, 1, 8, 8, 1), M(4, 3, 2, 8, 16, 1), M(4, 5, 2, 16, 24, 1))
TEST_V2_STAGES = (F(1, 3, 1, 8, 8, 1), F(4, 3, 2, 8, 16, 1), M(4, 3, 2, 16, 24, 1))


def _v1(width: float, depth: float, dropout: float, bn_eps: float = 1e-5, bn_momentum: float = 0.1):
    return EfficientNetConfig(V1_STAGES, width, depth, None, dropout, bn_eps, bn_momentum)


def _v2_base(width: float, depth: float, dropout: float):
    # timm's tf_efficientnetv2_b*: BN eps 1e-3 (TF default), TF padding, plain nearest-multiple rounding.
    return EfficientNetConfig(V2_BASE_STAGES, width, depth, 1280, dropout, 1e-3, 0.1, True, 0.0)


CONFIGS: dict[str, EfficientNetConfig] = {
    # (width, depth, dropout) per variant from the paper's compound scaling; torchvision trained B5-B7
    # (ported from TF) with BN eps 1e-3, momentum 0.01.
    "efficientnet_b0": _v1(1.0, 1.0, 0.2),
    "efficientnet_b1": _v1(1.0, 1.1, 0.2),
    "efficientnet_b2": _v1(1.1, 1.2, 0.3),
    "efficientnet_b3": _v1(1.2, 1.4, 0.3),
    "efficientnet_b4": _v1(1.4, 1.8, 0.4),
    "efficientnet_b5": _v1(1.6, 2.2, 0.4, 1e-3, 0.01),
    "efficientnet_b6": _v1(1.8, 2.6, 0.5, 1e-3, 0.01),
    "efficientnet_b7": _v1(2.0, 3.1, 0.5, 1e-3, 0.01),
    "efficientnet_v2_s": EfficientNetConfig(V2_S_STAGES, head_ch=1280, dropout=0.2, bn_eps=1e-3),
    "efficientnet_v2_m": EfficientNetConfig(V2_M_STAGES, head_ch=1280, dropout=0.3, bn_eps=1e-3),
    "efficientnet_v2_l": EfficientNetConfig(V2_L_STAGES, head_ch=1280, dropout=0.4, bn_eps=1e-3),
    "tf_efficientnetv2_b0": _v2_base(1.0, 1.0, 0.2),
    "tf_efficientnetv2_b1": _v2_base(1.0, 1.1, 0.2),
    "tf_efficientnetv2_b2": _v2_base(1.1, 1.2, 0.3),
    "tf_efficientnetv2_b3": _v2_base(1.2, 1.4, 0.3),
    "test_efficientnet": EfficientNetConfig(TEST_V1_STAGES, head_ch=64, dropout=0.0),
    "test_efficientnet_v2": EfficientNetConfig(TEST_V2_STAGES, head_ch=64, dropout=0.0, bn_eps=1e-3),
}


class _ResidualBlock(nn.Module):
    """`block` (a Sequential), plus the input when shapes allow, with stochastic depth on the branch."""

    def __init__(self, layers: list[nn.Module], residual: bool, drop_path: float):
        super().__init__()
        self.block = nn.Sequential(*layers)
        self.use_residual = residual
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_residual:
            out = self.drop_path(out)
            out += x  # in place: saves one activation-sized allocation per block
        return out


class MBConv(_ResidualBlock):
    """Inverted residual: [1x1 expand] -> kxk depthwise -> SE -> 1x1 project, residual when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, expand_ratio: float, kernel: int, stride: int,
                 drop_path: float, bn: dict, tf_same: bool):
        mid = make_divisible(in_ch * expand_ratio, 8)
        layers: list[nn.Module] = []
        if mid != in_ch:
            layers.append(conv_bn_act(in_ch, mid, 1, **bn))
        layers += [
            conv_bn_act(mid, mid, kernel, stride, groups=mid, tf_same=tf_same, **bn),
            SqueezeExcite(mid, max(1, in_ch // 4)),
            conv_bn_act(mid, out_ch, 1, act=False, **bn),
        ]
        super().__init__(layers, residual=stride == 1 and in_ch == out_ch, drop_path=drop_path)


class FusedMBConv(_ResidualBlock):
    """Fused inverted residual: kxk expand conv -> [1x1 project]; with ratio 1 a single kxk conv."""

    def __init__(self, in_ch: int, out_ch: int, expand_ratio: float, kernel: int, stride: int,
                 drop_path: float, bn: dict, tf_same: bool):
        mid = make_divisible(in_ch * expand_ratio, 8)
        if mid != in_ch:
            layers = [conv_bn_act(in_ch, mid, kernel, stride, tf_same=tf_same, **bn),
                      conv_bn_act(mid, out_ch, 1, act=False, **bn)]
        else:
            layers = [conv_bn_act(in_ch, out_ch, kernel, stride, tf_same=tf_same, **bn)]
        super().__init__(layers, residual=stride == 1 and in_ch == out_ch, drop_path=drop_path)


class EfficientNet(nn.Module):
    """`features` = [stem, stage..., head conv]; then global average pool, dropout, Linear."""

    def __init__(self, cfg: EfficientNetConfig, num_classes: int = 1000, drop_path_rate: float = 0.0):
        super().__init__()
        bn = {"bn_eps": cfg.bn_eps, "bn_momentum": cfg.bn_momentum}
        stem_ch = cfg.width(cfg.stages[0].in_ch)
        layers: list[nn.Module] = [conv_bn_act(3, stem_ch, 3, 2, tf_same=cfg.tf_same, **bn)]
        total = sum(cfg.depth(s.layers) for s in cfg.stages)
        block_idx = 0
        in_ch = stem_ch
        for stage in cfg.stages:
            block_cls = MBConv if isinstance(stage, MBConvConfig) else FusedMBConv
            out_ch = cfg.width(stage.out_ch)
            blocks = []
            for i in range(cfg.depth(stage.layers)):
                # Stochastic depth rises linearly with the global block index (as torchvision and timm do).
                rate = drop_path_rate * block_idx / total
                blocks.append(block_cls(in_ch if i == 0 else out_ch, out_ch, stage.expand_ratio, stage.kernel,
                                        stage.stride if i == 0 else 1, rate, bn, cfg.tf_same))
                block_idx += 1
            layers.append(nn.Sequential(*blocks))
            in_ch = out_ch
        head_ch = cfg.width(cfg.head_ch) if cfg.head_ch is not None else 4 * in_ch
        layers.append(conv_bn_act(in_ch, head_ch, 1, **bn))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = head_ch
        self.num_classes = num_classes
        self.classifier = nn.Sequential(nn.Dropout(cfg.dropout, inplace=True), nn.Linear(head_ch, num_classes))
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final Linear layer (new random init) for `num_classes` outputs."""
        self.num_classes = num_classes
        self.classifier[1] = nn.Linear(self.num_features, num_classes)
        _init_weights(self.classifier[1])


def _init_weights(m: nn.Module) -> None:
    # He init (fan-out) for convs, unit BN, small uniform Linear: the reference implementations' choice.
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        bound = 1.0 / math.sqrt(m.out_features)
        nn.init.uniform_(m.weight, -bound, bound)
        nn.init.zeros_(m.bias)


def efficientnet(name: str, num_classes: int, drop_path_rate: float = 0.0) -> EfficientNet:
    """Build the EfficientNet called `name` (a key of CONFIGS)."""
    return EfficientNet(CONFIGS[name], num_classes, drop_path_rate)
