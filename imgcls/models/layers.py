"""Small building blocks shared by the backbones.

Parameter and buffer names follow torchvision's layout (e.g. a conv-BN-activation unit is a Sequential whose
conv is `0` and whose norm is `1`), so torchvision checkpoints load without renaming.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def make_divisible(value: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Round `value` to the nearest multiple of `divisor` (at least `divisor`).

    If rounding down lost more than (1 - round_limit) of the value, one more `divisor` is added. torchvision and
    timm's EfficientNet-B* use round_limit 0.9; timm's EfficientNetV2-B* pass round_limit 0 (plain nearest
    multiple), which is why timm's B3 keeps 16 * 1.2 = 19.2 at 16 where torchvision would give 24.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < round_limit * value:
        rounded += divisor
    return rounded


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016): zero the residual branch of whole samples with probability p.

    Kept samples are scaled by 1 / (1 - p) so the expected output equals the input; identity in eval mode.
    """
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = x.new_empty(mask_shape).bernoulli_(keep)
    return x * mask.div_(keep)


class DropPath(nn.Module):
    """Module wrapper around `drop_path` (no parameters)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of an N x C x H x W tensor (ConvNeXt's "channels_first" LN)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.layer_norm normalises trailing dims, so move C last and back; in channels_last memory both
        # permutes are free views.
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Permute(nn.Module):
    """Permute dimensions (lets ConvNeXt keep its block as one Sequential, with torchvision's indices)."""

    def __init__(self, dims: list[int]):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.permute(x, self.dims)


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow "SAME" padding for one spatial dim: (before, after); the odd pixel goes after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding, computed from the input size at every call.

    Strided convs in TF-trained checkpoints (timm's tf_* models) pad asymmetrically (extra pixel right/bottom);
    symmetric padding would shift every feature map by half a pixel and change the outputs.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def conv2d(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False,
           tf_same: bool = False) -> nn.Conv2d:
    """A kxk conv with "same"-style padding: symmetric (k-1)//2, or TF "SAME" when `tf_same`.

    For stride 1 and odd k both agree, so the dynamic version is only used where it matters.
    """
    if tf_same and stride > 1:
        return Conv2dSame(in_ch, out_ch, kernel, stride, padding=0, groups=groups, bias=bias)
    return nn.Conv2d(in_ch, out_ch, kernel, stride, padding=(kernel - 1) // 2, groups=groups, bias=bias)


def conv_bn_act(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, *, bn_eps: float,
                bn_momentum: float = 0.1, act: type[nn.Module] | bool = True,
                tf_same: bool = False) -> nn.Sequential:
    """conv (no bias) -> BatchNorm -> activation: keys `0.weight`, `1.*` as in torchvision.

    act: an activation class (e.g. nn.ReLU6), True for SiLU, False for none.
    """
    layers: list[nn.Module] = [
        conv2d(in_ch, out_ch, kernel, stride, groups, bias=False, tf_same=tf_same),
        nn.BatchNorm2d(out_ch, eps=bn_eps, momentum=bn_momentum),
    ]
    if act:
        layers.append((nn.SiLU if act is True else act)(inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation (Hu et al. 2018): channel gates from globally pooled features."""

    def __init__(self, channels: int, squeeze_channels: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)  # dispatches to the fastest kernel for either memory format
        scale = self.fc2(F.silu(self.fc1(scale)))
        return x * torch.sigmoid(scale)
