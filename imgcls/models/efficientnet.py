"""EfficientNet V1 (Tan & Le 2019, arXiv:1905.11946), V2 (Tan & Le 2021, arXiv:2104.00298) and Lite.

One `EfficientNet` class serves all: a stage is a run of MBConv blocks (inverted residual with depthwise conv
and squeeze-excite) or FusedMBConv blocks (expansion and depthwise conv fused into one kxk conv, V2's early
stages). EfficientNet-Lite (Google's efficientnet/lite, for mobile and int8) is V1 without squeeze-excite, with
ReLU6 and unscaled ends. Module names follow torchvision's layout; timm and efficientnet_pytorch checkpoints are
renamed by `imgcls.models.weights`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
import torch
from torch import nn

from .layers import DropPath, SqueezeExcite, conv_bn_act, make_divisible


@dataclass(frozen=True)
class StageConfig:
    """One row of a paper table: a stage of `layers` blocks of one kind (a key of BLOCKS)."""
    block: str              # "mbconv": inverted residual (SE unless the model has none); "fused": FusedMBConv
    expand_ratio: float
    kernel: int
    stride: int
    in_ch: int
    out_ch: int
    layers: int


def mbconv(expand_ratio: float, kernel: int, stride: int, in_ch: int, out_ch: int, layers: int) -> StageConfig:
    return StageConfig("mbconv", expand_ratio, kernel, stride, in_ch, out_ch, layers)


def fused(expand_ratio: float, kernel: int, stride: int, in_ch: int, out_ch: int, layers: int) -> StageConfig:
    return StageConfig("fused", expand_ratio, kernel, stride, in_ch, out_ch, layers)


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
    act: str = "silu"               # a key of ACTIVATIONS
    se: bool = True                 # squeeze-excite in MBConv blocks
    # EfficientNet-Lite keeps the stem and head widths and the first and last stages' repeats unscaled, so the
    # small and the big variants share the cheap ends (Google's efficientnet/lite builder).
    scale_ends: bool = True

    def width(self, channels: int) -> int:
        return make_divisible(channels * self.width_mult, 8, self.round_limit)

    def depth(self, layers: int) -> int:
        return int(math.ceil(layers * self.depth_mult))

    def stage_depth(self, index: int) -> int:
        """Repeats of stage `index` after depth scaling."""
        if not self.scale_ends and index in (0, len(self.stages) - 1):
            return self.stages[index].layers
        return self.depth(self.stages[index].layers)

    def end_width(self, channels: int) -> int:
        """Width of the stem or the head conv."""
        return self.width(channels) if self.scale_ends else channels


# EfficientNet-B0, Tan & Le 2019 Table 1 (stage 1 is the stem, stage 9 the head).
V1_STAGES = (mbconv(1, 3, 1, 32, 16, 1), mbconv(6, 3, 2, 16, 24, 2), mbconv(6, 5, 2, 24, 40, 2),
             mbconv(6, 3, 2, 40, 80, 3), mbconv(6, 5, 1, 80, 112, 3), mbconv(6, 5, 2, 112, 192, 4),
             mbconv(6, 3, 1, 192, 320, 1))
# EfficientNetV2-S, Tan & Le 2021 Table 4; M and L from the authors' code (google/automl efficientnetv2).
V2_S_STAGES = (fused(1, 3, 1, 24, 24, 2), fused(4, 3, 2, 24, 48, 4), fused(4, 3, 2, 48, 64, 4),
               mbconv(4, 3, 2, 64, 128, 6), mbconv(6, 3, 1, 128, 160, 9), mbconv(6, 3, 2, 160, 256, 15))
V2_M_STAGES = (fused(1, 3, 1, 24, 24, 3), fused(4, 3, 2, 24, 48, 5), fused(4, 3, 2, 48, 80, 5),
               mbconv(4, 3, 2, 80, 160, 7), mbconv(6, 3, 1, 160, 176, 14), mbconv(6, 3, 2, 176, 304, 18),
               mbconv(6, 3, 1, 304, 512, 5))
V2_L_STAGES = (fused(1, 3, 1, 32, 32, 4), fused(4, 3, 2, 32, 64, 7), fused(4, 3, 2, 64, 96, 7),
               mbconv(4, 3, 2, 96, 192, 10), mbconv(6, 3, 1, 192, 224, 19), mbconv(6, 3, 2, 224, 384, 25),
               mbconv(6, 3, 1, 384, 640, 7))
# EfficientNetV2-B0 (the authors' code, "efficientnetv2-base"); B1-B3 scale it.
V2_BASE_STAGES = (fused(1, 3, 1, 32, 16, 1), fused(4, 3, 2, 16, 32, 2), fused(4, 3, 2, 32, 48, 2),
                  mbconv(4, 3, 2, 48, 96, 3), mbconv(6, 3, 1, 96, 112, 5), mbconv(6, 3, 2, 112, 192, 8))
# Tiny nets for fast tests of the training engine (no checkpoints).
TEST_V1_STAGES = (mbconv(1, 3, 1, 8, 8, 1), mbconv(4, 3, 2, 8, 16, 1), mbconv(4, 5, 2, 16, 24, 1))
TEST_V2_STAGES = (fused(1, 3, 1, 8, 8, 1), fused(4, 3, 2, 8, 16, 1), mbconv(4, 3, 2, 16, 24, 1))


def _v1(width: float, depth: float, dropout: float, bn_eps: float = 1e-5, bn_momentum: float = 0.1):
    return EfficientNetConfig(V1_STAGES, width_mult=width, depth_mult=depth, dropout=dropout, bn_eps=bn_eps,
                              bn_momentum=bn_momentum)


def _v2_base(width: float, depth: float, dropout: float):
    # timm's tf_efficientnetv2_b*: BN eps 1e-3 (TF default), TF padding, plain nearest-multiple rounding.
    return EfficientNetConfig(V2_BASE_STAGES, width_mult=width, depth_mult=depth, head_ch=1280, dropout=dropout,
                              bn_eps=1e-3, tf_same=True, round_limit=0.0)


def _tf_v1(width: float, depth: float, dropout: float):
    # B0-B7 as trained in TensorFlow (efficientnet_pytorch's files, timm's tf_efficientnet_b*): BN eps 1e-3 and
    # TF padding; stage table, rounding and head as torchvision's B0-B7.
    return EfficientNetConfig(V1_STAGES, width_mult=width, depth_mult=depth, dropout=dropout, bn_eps=1e-3,
                              tf_same=True)


def _lite(width: float, depth: float, dropout: float):
    # EfficientNet-Lite (Google's efficientnet/lite): B0's table without SE, ReLU6 (int8-friendly), fixed ends.
    return EfficientNetConfig(V1_STAGES, width_mult=width, depth_mult=depth, head_ch=1280, dropout=dropout,
                              bn_eps=1e-3, tf_same=True, act="relu6",
                              se=False, scale_ends=False)


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
    **{f"tf_efficientnet_b{i}": _tf_v1(w, d, p) for i, (w, d, p) in enumerate([
        (1.0, 1.0, 0.2), (1.0, 1.1, 0.2), (1.1, 1.2, 0.3), (1.2, 1.4, 0.3), (1.4, 1.8, 0.4), (1.6, 2.2, 0.4),
        (1.8, 2.6, 0.5), (2.0, 3.1, 0.5)])},
    **{f"efficientnet_lite{i}": _lite(w, d, p) for i, (w, d, p) in enumerate([
        (1.0, 1.0, 0.2), (1.0, 1.1, 0.2), (1.1, 1.2, 0.3), (1.2, 1.4, 0.3), (1.4, 1.8, 0.3)])},
    "tiny_efficientnet": EfficientNetConfig(TEST_V1_STAGES, head_ch=64, dropout=0.0),
    "tiny_efficientnet_v2": EfficientNetConfig(TEST_V2_STAGES, head_ch=64, dropout=0.0, bn_eps=1e-3),
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
    """Inverted residual: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 project, residual when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, expand_ratio: float, kernel: int, stride: int,
                 drop_path: float, unit: dict, tf_same: bool, se: bool):
        mid = make_divisible(in_ch * expand_ratio, 8)
        layers: list[nn.Module] = []
        if mid != in_ch:
            layers.append(conv_bn_act(in_ch, mid, 1, **unit))
        layers.append(conv_bn_act(mid, mid, kernel, stride, groups=mid, tf_same=tf_same, **unit))
        if se:
            layers.append(SqueezeExcite(mid, max(1, in_ch // 4)))
        layers.append(conv_bn_act(mid, out_ch, 1, **{**unit, "act": False}))
        super().__init__(layers, residual=stride == 1 and in_ch == out_ch, drop_path=drop_path)


class FusedMBConv(_ResidualBlock):
    """Fused inverted residual: kxk expand conv -> [1x1 project]; with ratio 1 a single kxk conv (never SE)."""

    def __init__(self, in_ch: int, out_ch: int, expand_ratio: float, kernel: int, stride: int,
                 drop_path: float, unit: dict, tf_same: bool, se: bool):
        mid = make_divisible(in_ch * expand_ratio, 8)
        if mid != in_ch:
            layers = [conv_bn_act(in_ch, mid, kernel, stride, tf_same=tf_same, **unit),
                      conv_bn_act(mid, out_ch, 1, **{**unit, "act": False})]
        else:
            layers = [conv_bn_act(in_ch, out_ch, kernel, stride, tf_same=tf_same, **unit)]
        super().__init__(layers, residual=stride == 1 and in_ch == out_ch, drop_path=drop_path)


BLOCKS = {"mbconv": MBConv, "fused": FusedMBConv}
ACTIVATIONS = {"silu": nn.SiLU, "relu6": nn.ReLU6}


class EfficientNet(nn.Module):
    """`features` = [stem, stage..., head conv]; then global average pool, dropout, Linear."""

    def __init__(self, cfg: EfficientNetConfig, num_classes: int = 1000, drop_path_rate: float = 0.0):
        super().__init__()
        # Keyword arguments of every conv-BN-activation unit.
        unit = {"bn_eps": cfg.bn_eps, "bn_momentum": cfg.bn_momentum, "act": ACTIVATIONS[cfg.act]}
        stem_ch = cfg.end_width(cfg.stages[0].in_ch)
        layers: list[nn.Module] = [conv_bn_act(3, stem_ch, 3, 2, tf_same=cfg.tf_same, **unit)]
        depths = [cfg.stage_depth(i) for i in range(len(cfg.stages))]
        block_idx = 0
        in_ch = stem_ch
        for stage, depth in zip(cfg.stages, depths):
            out_ch = cfg.width(stage.out_ch)
            blocks = []
            for i in range(depth):
                # Stochastic depth rises linearly with the global block index (as torchvision and timm do).
                rate = drop_path_rate * block_idx / sum(depths)
                blocks.append(BLOCKS[stage.block](in_ch if i == 0 else out_ch, out_ch, stage.expand_ratio,
                                                  stage.kernel, stage.stride if i == 0 else 1, rate, unit,
                                                  cfg.tf_same, cfg.se))
                block_idx += 1
            layers.append(nn.Sequential(*blocks))
            in_ch = out_ch
        head_ch = cfg.end_width(cfg.head_ch) if cfg.head_ch is not None else 4 * in_ch
        layers.append(conv_bn_act(in_ch, head_ch, 1, **unit))
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

    def get_classifier(self) -> nn.Linear:
        return self.classifier[1]

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
