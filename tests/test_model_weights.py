"""Checkpoint records, lookup and error handling (no network: unreachable URLs only)."""
import argparse
import dataclasses

import pytest
import timm
import torch
import torchvision.models as tvm
from timm.models import get_pretrained_cfg

from imgcls.errors import UserError
from imgcls.models import create_model, list_models, pretrained_cfg
from imgcls.models.weights import RECORDS, detect_format

QUIET = dict(log=lambda *_: None)


def test_required_names_exist():
    names = set(list_models())
    assert list_models() == sorted(names)
    for name in ["efficientnet_b0", "convnext_base", "convnext_base.fb_in22k", "convnext_base.fb_in22k_ft_in1k",
                 "tf_efficientnetv2_b2", "efficientnet_v2_s", "efficientnet_b7", "convnext_large",
                 "tiny_convnext", "tiny_efficientnet", "tiny_efficientnet_v2"]:
        assert name in names


def test_torchvision_records_match_torchvision():
    for arch, tags in RECORDS.items():
        rec = tags.get("tv_in1k")
        if rec is None:
            continue
        weights = tvm.get_model_weights(arch).DEFAULT
        transforms = weights.transforms()
        assert rec.url == weights.url and rec.url.endswith("/" + rec.file_name)
        assert rec.test_size == transforms.crop_size[0]
        assert rec.interpolation == transforms.interpolation.value
        assert rec.mean == pytest.approx(tuple(transforms.mean)) and rec.std == pytest.approx(tuple(transforms.std))


def test_swag_records_match_torchvision():
    """ViT's SWAG weights are torchvision's too (end to end at 384 / 512 / 518, and linear-classifier)."""
    enums = {"swag_e2e": "IMAGENET1K_SWAG_E2E_V1", "swag_lc": "IMAGENET1K_SWAG_LINEAR_V1"}
    checked = 0
    for arch, tags in RECORDS.items():
        for tag, enum in enums.items():
            if tag not in tags:
                continue
            rec, weights = tags[tag], getattr(tvm.get_model_weights(arch), enum)
            assert rec.url == weights.url and rec.url.endswith("/" + rec.file_name)
            assert rec.test_size == weights.transforms().crop_size[0]
            checked += 1
    assert checked >= 6  # B/16, L/16, H/14 each have both


def test_timm_and_official_records_match_timm_cfgs():
    for name in list_models():
        arch, _, tag = name.partition(".")
        if not tag or tag == "tv_in1k" or pretrained_cfg(name).get("format") == "torchvision":
            continue  # torchvision's files are checked against torchvision above
        ref = get_pretrained_cfg(f"{arch}.{tag}")
        cfg = pretrained_cfg(name)
        assert cfg["url"] == ref.url and ref.url.endswith("/" + cfg["file_name"])
        assert cfg["num_classes"] == ref.num_classes
        assert cfg["train_size"] == ref.input_size[-1]
        assert cfg["interpolation"] == ref.interpolation
        assert cfg["mean"] == pytest.approx(ref.mean) and cfg["std"] == pytest.approx(ref.std)


def test_default_names_resolve_to_expected_files():
    assert pretrained_cfg("convnext_base")["file_name"] == "convnext_base-6075fbad.pth"
    assert pretrained_cfg("convnext_base.fb_in22k")["file_name"] == "convnext_base_22k_224.pth"
    assert pretrained_cfg("convnext_base.fb_in22k")["num_classes"] == 21841
    assert pretrained_cfg("convnext_base.fb_in22k_ft_in1k")["file_name"] == "convnext_base_22k_1k_224.pth"
    assert pretrained_cfg("tf_efficientnetv2_b2")["file_name"] == "tf_efficientnetv2_b2-847de54e.pth"
    cfg = pretrained_cfg("tiny_convnext")
    assert (cfg["train_size"], cfg["interpolation"], cfg["url"]) == (32, "bilinear", None)


def test_unknown_names_are_user_errors():
    with pytest.raises(UserError, match="unknown model"):
        create_model("resnet50", 3, **QUIET)
    with pytest.raises(UserError, match="unknown checkpoint tag"):
        pretrained_cfg("convnext_base.in21k")
    with pytest.raises(UserError, match="no known checkpoint"):
        create_model("tiny_convnext", 3, pretrained="default", **QUIET)


def test_missing_checkpoint_offline_names_file_url_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    record = dataclasses.replace(RECORDS["efficientnet_b0"]["tv_in1k"], url="http://127.0.0.1:9/x.pth")
    monkeypatch.setitem(RECORDS["efficientnet_b0"], "tv_in1k", record)
    with pytest.raises(UserError) as err:
        create_model("efficientnet_b0", 7, pretrained="default", **QUIET)
    message = str(err.value)
    assert "efficientnet_b0_rwightman-7f5810bc.pth" in message
    assert "http://127.0.0.1:9/x.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "\n" not in message


def test_missing_path_is_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        create_model("tiny_convnext", 3, pretrained=str(tmp_path / "nope.pth"), **QUIET)


def test_checkpoint_for_another_model_lists_keys(tmp_path):
    path = tmp_path / "other.pth"
    sd = create_model("tiny_efficientnet", 3, **QUIET).state_dict()
    del sd["features.0.1.running_var"]
    torch.save(sd, path)
    with pytest.raises(UserError, match=r"missing \[features\.0\.1\.running_var\]"):
        create_model("tiny_efficientnet", 3, pretrained=str(path), **QUIET)
    with pytest.raises(UserError, match="does not fit"):
        create_model("tiny_efficientnet_v2", 3, pretrained=str(path), **QUIET)
    torch.save({"foo.weight": torch.zeros(1)}, path)
    with pytest.raises(UserError, match="unknown checkpoint layout"):
        create_model("tiny_convnext", 3, pretrained=str(path), **QUIET)


def test_unsafe_or_corrupt_file_is_user_error(tmp_path):
    path = tmp_path / "bad.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        create_model("tiny_convnext", 3, pretrained=str(path), **QUIET)
    torch.save(argparse.Namespace(model=1), path)  # needs arbitrary unpickling: refused by weights_only
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        create_model("tiny_convnext", 3, pretrained=str(path), **QUIET)


def test_format_detection():
    assert detect_format(tvm.mobilenet_v2().state_dict()) == "torchvision"
    assert detect_format(timm.create_model("test_efficientnet").state_dict()) == "timm"  # timm's own tiny model
    assert detect_format({"downsample_layers.0.0.weight": 0, "stages.0.0.gamma": 0}) == "official"
