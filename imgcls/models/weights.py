"""Known checkpoints, where to find them, and converters from foreign key layouts to the project's.

The project's modules use torchvision's key layout, so torchvision checkpoints load unchanged; timm and the
official ConvNeXt release are renamed by one pure function each, chosen by looking at the keys.
"""
from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from imgcls.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class WeightRecord:
    """One published checkpoint: where it lives, its key layout and the preprocessing it was trained with."""
    format: str                      # "torchvision" | "timm" | "official"
    url: str | None
    file_name: str | None
    train_size: int
    test_size: int
    interpolation: str = "bicubic"
    num_classes: int = 1000
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def as_cfg(self) -> dict:
        return {"mean": self.mean, "std": self.std, "interpolation": self.interpolation,
                "train_size": self.train_size, "test_size": self.test_size, "num_classes": self.num_classes,
                "url": self.url, "file_name": self.file_name, "format": self.format}


def _tv(file_name: str, size: int, interpolation: str, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> WeightRecord:
    # torchvision publishes the evaluation crop; we use it for training too.
    return WeightRecord("torchvision", "https://download.pytorch.org/models/" + file_name, file_name, size, size,
                        interpolation, 1000, mean, std)


def _fb(file_name: str, num_classes: int) -> WeightRecord:
    return WeightRecord("official", "https://dl.fbaipublicfiles.com/convnext/" + file_name, file_name, 224, 224,
                        "bicubic", num_classes)


def _timm_effv2(file_name: str, train_size: int, test_size: int) -> WeightRecord:
    return WeightRecord("timm", "https://github.com/rwightman/pytorch-image-models/releases/download/"
                        "v0.1-effv2-weights/" + file_name, file_name, train_size, test_size, "bicubic")


# name -> {tag -> record}; the first tag is the default. Values copied from torchvision 0.29 weight enums,
# timm 1.0 pretrained cfgs and the ConvNeXt README.
RECORDS: dict[str, dict[str, WeightRecord]] = {
    "convnext_tiny": {"tv_in1k": _tv("convnext_tiny-983f1562.pth", 224, "bilinear")},
    "convnext_small": {"tv_in1k": _tv("convnext_small-0c510722.pth", 224, "bilinear")},
    "convnext_base": {"tv_in1k": _tv("convnext_base-6075fbad.pth", 224, "bilinear")},
    "convnext_large": {"tv_in1k": _tv("convnext_large-ea097f82.pth", 224, "bilinear")},
    "efficientnet_b0": {"tv_in1k": _tv("efficientnet_b0_rwightman-7f5810bc.pth", 224, "bicubic")},
    "efficientnet_b1": {"tv_in1k": _tv("efficientnet_b1-c27df63c.pth", 240, "bilinear")},
    "efficientnet_b2": {"tv_in1k": _tv("efficientnet_b2_rwightman-c35c1473.pth", 288, "bicubic")},
    "efficientnet_b3": {"tv_in1k": _tv("efficientnet_b3_rwightman-b3899882.pth", 300, "bicubic")},
    "efficientnet_b4": {"tv_in1k": _tv("efficientnet_b4_rwightman-23ab8bcd.pth", 380, "bicubic")},
    "efficientnet_b5": {"tv_in1k": _tv("efficientnet_b5_lukemelas-1a07897c.pth", 456, "bicubic")},
    "efficientnet_b6": {"tv_in1k": _tv("efficientnet_b6_lukemelas-24a108a5.pth", 528, "bicubic")},
    "efficientnet_b7": {"tv_in1k": _tv("efficientnet_b7_lukemelas-c5b4e57e.pth", 600, "bicubic")},
    "efficientnet_v2_s": {"tv_in1k": _tv("efficientnet_v2_s-dd5fe13b.pth", 384, "bilinear")},
    "efficientnet_v2_m": {"tv_in1k": _tv("efficientnet_v2_m-dc08266a.pth", 480, "bilinear")},
    "efficientnet_v2_l": {"tv_in1k": _tv("efficientnet_v2_l-59c71312.pth", 480, "bicubic",
                                         (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))},
    "tf_efficientnetv2_b0": {"in1k": _timm_effv2("tf_efficientnetv2_b0-c7cc451f.pth", 192, 224)},
    "tf_efficientnetv2_b1": {"in1k": _timm_effv2("tf_efficientnetv2_b1-be6e41b0.pth", 192, 240)},
    "tf_efficientnetv2_b2": {"in1k": _timm_effv2("tf_efficientnetv2_b2-847de54e.pth", 208, 260)},
    "tf_efficientnetv2_b3": {"in1k": _timm_effv2("tf_efficientnetv2_b3-57773f13.pth", 240, 300)},
}
for _size in ("tiny", "small", "base", "large"):
    RECORDS[f"convnext_{_size}"]["fb_in22k"] = _fb(f"convnext_{_size}_22k_224.pth", 21841)
    RECORDS[f"convnext_{_size}"]["fb_in22k_ft_in1k"] = _fb(f"convnext_{_size}_22k_1k_224.pth", 1000)


# ---------------------------------------------------------------- converters (state_dict -> state_dict)

def convnext_from_official(sd: dict) -> dict:
    """facebookresearch/ConvNeXt keys (downsample_layers / stages / norm / head) -> project keys."""
    out = {}
    for key, value in sd.items():
        if m := re.fullmatch(r"downsample_layers\.(\d)\.(\d)\.(.+)", key):
            stage, idx, rest = int(m[1]), m[2], m[3]
            out[f"features.{2 * stage}.{idx}.{rest}"] = value
        elif m := re.fullmatch(r"stages\.(\d)\.(\d+)\.(\w+)(\..+)?", key):
            out.update(_convnext_block_key(int(m[1]), m[2], m[3], m[4], value))
        elif m := re.fullmatch(r"norm\.(.+)", key):
            out[f"classifier.0.{m[1]}"] = value
        elif m := re.fullmatch(r"head\.(.+)", key):
            out[f"classifier.2.{m[1]}"] = value
        else:
            out[key] = value  # left for the strict load to report
    return out


def convnext_from_timm(sd: dict) -> dict:
    """timm ConvNeXt keys (stem / stages.N.downsample / stages.N.blocks / head.norm, head.fc) -> project keys."""
    out = {}
    for key, value in sd.items():
        if m := re.fullmatch(r"stem\.(\d)\.(.+)", key):
            out[f"features.0.{m[1]}.{m[2]}"] = value
        elif m := re.fullmatch(r"stages\.(\d)\.downsample\.(\d)\.(.+)", key):
            out[f"features.{2 * int(m[1])}.{m[2]}.{m[3]}"] = value
        elif m := re.fullmatch(r"stages\.(\d)\.blocks\.(\d+)\.([\w.]+?)(\.weight|\.bias)?", key):
            out.update(_convnext_block_key(int(m[1]), m[2], m[3], m[4], value))
        elif m := re.fullmatch(r"head\.norm\.(.+)", key):
            out[f"classifier.0.{m[1]}"] = value
        elif m := re.fullmatch(r"head\.fc\.(.+)", key):
            out[f"classifier.2.{m[1]}"] = value
        else:
            out[key] = value
    return out


# Block sub-module names in the official / timm layouts -> index in the project's CNBlock.block.
_CONVNEXT_BLOCK = {"dwconv": "0", "conv_dw": "0", "norm": "2", "pwconv1": "3", "mlp.fc1": "3",
                   "pwconv2": "5", "mlp.fc2": "5"}


def _convnext_block_key(stage: int, block: str, name: str, suffix: str | None, value: torch.Tensor) -> dict:
    prefix = f"features.{2 * stage + 1}.{block}"
    if name == "gamma":  # (C,) -> (C, 1, 1)
        return {f"{prefix}.layer_scale": value.reshape(-1, 1, 1)}
    if name in _CONVNEXT_BLOCK:
        return {f"{prefix}.block.{_CONVNEXT_BLOCK[name]}{suffix or ''}": value}
    return {f"stages.{stage}.{block}.{name}{suffix or ''}": value}


# timm EfficientNet block layouts -> project indices, keyed by block type (recognised from its sub-modules).
_TIMM_EFFNET_BLOCKS = {
    "conv_bn_act": {"conv": "block.0.0", "bn1": "block.0.1"},  # timm ConvBnAct = FusedMBConv ratio 1
    "edge_residual": {"conv_exp": "block.0.0", "bn1": "block.0.1", "conv_pwl": "block.1.0", "bn2": "block.1.1"},
    "inverted_residual": {"conv_pw": "block.0.0", "bn1": "block.0.1", "conv_dw": "block.1.0", "bn2": "block.1.1",
                          "se.conv_reduce": "block.2.fc1", "se.conv_expand": "block.2.fc2",
                          "conv_pwl": "block.3.0", "bn3": "block.3.1"},
}


def efficientnet_from_timm(sd: dict) -> dict:
    """timm EfficientNet keys (conv_stem / bn1 / blocks.i.j.* / conv_head / bn2 / classifier) -> project keys."""
    block_parts: dict[tuple[int, int], set[str]] = {}
    for key in sd:
        if m := re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(.+)\.\w+", key):
            block_parts.setdefault((int(m[1]), int(m[2])), set()).add(m[3])
    head_idx = max((s for s, _ in block_parts), default=-1) + 2
    out = {}
    for key, value in sd.items():
        if m := re.fullmatch(r"(conv_stem|bn1|conv_head|bn2)\.(.+)", key):
            idx = "0" if m[1] in ("conv_stem", "bn1") else str(head_idx)
            out[f"features.{idx}.{'0' if m[1].startswith('conv') else '1'}.{m[2]}"] = value
        elif m := re.fullmatch(r"classifier\.(.+)", key):
            out[f"classifier.1.{m[1]}"] = value
        elif m := re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(.+)\.(\w+)", key):
            parts = block_parts[(int(m[1]), int(m[2]))]
            kind = ("edge_residual" if "conv_exp" in parts else
                    "inverted_residual" if "conv_pwl" in parts else "conv_bn_act")
            new = _TIMM_EFFNET_BLOCKS[kind].get(m[3])
            out[f"features.{int(m[1]) + 1}.{m[2]}.{new}.{m[4]}" if new else key] = value
        else:
            out[key] = value
    return out


def detect_format(sd: dict) -> str:
    """Tell the key layout of a state_dict: "torchvision", "official" (ConvNeXt) or "timm"."""
    keys = set(sd)
    if any(k.startswith("features.") for k in keys):
        return "torchvision"
    if any(k.startswith("downsample_layers.") for k in keys):
        return "official"
    if "conv_stem.weight" in keys or any(k.startswith("stem.") for k in keys):
        return "timm"
    raise ValueError("unknown checkpoint layout (first keys: " + ", ".join(list(sd)[:5]) + ")")


def to_project_keys(sd: dict, family: str) -> dict:
    """Convert a state_dict in any known layout to the project's keys for `family` ("convnext"/"efficientnet")."""
    fmt = detect_format(sd)
    converters: dict[tuple[str, str], Callable[[dict], dict]] = {
        ("official", "convnext"): convnext_from_official,
        ("timm", "convnext"): convnext_from_timm,
        ("timm", "efficientnet"): efficientnet_from_timm,
    }
    if fmt == "torchvision":
        return dict(sd)
    if (fmt, family) not in converters:
        raise ValueError(f"a {fmt}-format checkpoint cannot be loaded into a {family} model")
    return converters[(fmt, family)](sd)


def unwrap(obj) -> dict:
    """Return the state_dict inside a checkpoint file's content ({"model": ...}, {"state_dict": ...} or bare)."""
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"expected a dict of tensors, got {type(obj).__name__}")
    return obj


# ---------------------------------------------------------------- finding and loading files

def checkpoint_dir() -> str:
    """Where torch.hub caches checkpoints: $TORCH_HOME/hub/checkpoints (default ~/.cache/torch/...)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def read_checkpoint(path: str) -> dict:
    """Load a checkpoint file safely (weights_only) and return its state_dict."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: checkpoint file not found; pass an existing file to --pretrained")
    try:
        return unwrap(torch.load(path, map_location="cpu", weights_only=True))
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError) as err:
        # Corrupt or truncated files, and pickles holding objects other than tensors (refused by weights_only).
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({first_line}); re-download it or pass a "
                        "state_dict saved with torch.save") from err


def fetch_state_dict(record: WeightRecord, name: str, log=print) -> dict:
    """The record's checkpoint from the torch.hub cache, downloading it there if it is missing."""
    folder = checkpoint_dir()
    path = os.path.join(folder, record.file_name)
    if os.path.isfile(path):
        log(f"{name}: loading {path}")
        return read_checkpoint(path)
    log(f"{name}: {path} not found, downloading {record.url}")
    try:
        obj = torch.hub.load_state_dict_from_url(record.url, model_dir=folder, map_location="cpu",
                                                 file_name=record.file_name, weights_only=True)
    except Exception as err:  # no network, HTTP error, proxy...: all end in the same advice
        raise UserError(f"{name}: cannot get {record.file_name} ({type(err).__name__}: {err}); download "
                        f"{record.url} and put it in {folder}, or pass --pretrained none for random init") from err
    return unwrap(obj)


def load_pretrained(model: nn.Module, sd: dict, family: str, head_keys: tuple[str, str], source: str,
                    log=print) -> None:
    """Load a (converted) state_dict into `model`: every backbone key must match; the head is replaced if
    its shape differs (e.g. a 21841- or 1000-class checkpoint for a 44-class task)."""
    try:
        sd = to_project_keys(sd, family)
    except ValueError as err:
        raise UserError(f"{source}: {err}; pass a checkpoint made for this model") from err
    own = model.state_dict()
    dropped = [k for k in head_keys if k in sd and k in own and sd[k].shape != own[k].shape]
    if dropped:
        log(f"{source}: classifier has {sd[head_keys[0]].shape[0]} classes, the model {own[head_keys[0]].shape[0]}: "
            f"dropped {', '.join(dropped)} (new head is randomly initialised)")
        sd = {k: v for k, v in sd.items() if k not in dropped}
    bad_shape = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items()
                 if k in own and v.shape != own[k].shape]
    missing = sorted(set(own) - set(sd) - set(dropped))
    unexpected = sorted(set(sd) - set(own))
    if bad_shape or missing or unexpected:
        raise UserError(f"{source}: checkpoint does not fit the model: missing {_few(missing)}; unexpected "
                        f"{_few(unexpected)}; wrong shape {_few(bad_shape)}; pass a checkpoint for this model name")
    model.load_state_dict(sd, strict=not dropped)


def _few(items: list[str], n: int = 8) -> str:
    if not items:
        return "none"
    return "[" + ", ".join(items[:n]) + (f", ... {len(items) - n} more" if len(items) > n else "") + "]"
