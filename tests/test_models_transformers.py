"""ViT and Swin: every variant equals torchvision's with the same (random) weights, in eval and train mode, at
224 and at another size (ViT against timm with its resampled position embedding); timm's ViT / DeiT layout and
torchvision's older key names convert; a tiny ViT and a tiny Swin train through train.py and export to ONNX."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from torchvision.ops import StochasticDepth

import imgcls
from imgcls.errors import UserError
from imgcls.models import create_model, list_models, model_table
from imgcls.models.swin import CONFIGS as SWIN
from imgcls.models.vit import CONFIGS as VIT
from imgcls.models.weights import load_pretrained, to_project_keys, vit_from_timm
from tests.helpers import cli, write_folder_dataset

pytestmark = pytest.mark.slow  # trains runs or starts processes: outside the fast lane (pytest -m "not slow")

timm = pytest.importorskip("timm")
ROOT = Path(__file__).resolve().parents[1]
QUIET = dict(log=lambda *a, **k: None)
VIT_NAMES = [n for n in VIT if not n.startswith(("tiny_", "deit_"))]
SWIN_NAMES = [n for n in SWIN if not n.startswith("tiny_")]


def _reference(name: str, num_classes: int = 5) -> torch.nn.Module:
    torch.manual_seed(0)
    ref = getattr(tvm, name)(num_classes=num_classes)
    for module in ref.modules():  # the comparison runs train mode too: no random layer drop (Swin's 0.2-0.5)
        if isinstance(module, StochasticDepth):
            module.p = 0.0
    with torch.no_grad():  # torchvision starts ViT's head at zero: a zero head would hide any difference
        head = ref.heads.head if hasattr(ref, "heads") else ref.head
        head.weight.normal_(std=0.02)
        head.bias.normal_(std=0.02)
    return ref


def _ours_from(ref: torch.nn.Module, name: str, num_classes: int = 5) -> torch.nn.Module:
    # built without its own random init (every weight is the reference's; seconds for the largest ViTs), then
    # its buffers computed at construction copied from a CPU build of the same model
    with torch.device("meta"):
        ours = create_model(name, num_classes, **QUIET)
    ours.to_empty(device="cpu")
    _recompute_buffers(ours, name, num_classes)
    load_pretrained(ours, ref.state_dict(), "vit" if name.startswith("vit") else "swin", "reference", **QUIET)
    return ours


def _recompute_buffers(model: torch.nn.Module, name: str, num_classes: int) -> None:
    """Buffers that are not in the state dict (index tables computed in __init__) come from a real build."""
    persistent = set(model.state_dict())
    missing = [n for n, _ in model.named_buffers() if n not in persistent]
    if missing:
        real = dict(create_model(name, num_classes, **QUIET).named_buffers())
        own = dict(model.named_buffers())
        for n in missing:
            own[n].copy_(real[n])


def _max_diff(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor, mode: str) -> float:
    a.train(mode == "train")
    b.train(mode == "train")
    with torch.no_grad():
        return (a(x) - b(x)).abs().max().item()


@pytest.mark.parametrize("name", VIT_NAMES + SWIN_NAMES)
def test_every_variant_equals_torchvision_with_the_same_weights(name):
    ref = _reference(name)
    ours = _ours_from(ref, name)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    modes = ("eval", "train") if name in ("vit_b_16", "swin_t", "swin_v2_t") else ("eval",)  # time: the big ones once
    for mode in modes:
        assert _max_diff(ours, ref, x, mode) <= 1e-5, (name, mode)
    if name in SWIN_NAMES[:1] + SWIN_NAMES[3:4]:  # Swin takes any size (padded to the window), as torchvision
        x = torch.randn(1, 3, 200, 296, generator=torch.Generator().manual_seed(2))
        for mode in ("eval", "train"):
            assert _max_diff(ours, ref, x, mode) <= 1e-5, (name, mode)


@pytest.mark.parametrize("timm_name,ours_name", [("vit_base_patch16_224", "vit_b_16"),
                                                 ("deit_tiny_patch16_224", "deit_tiny_patch16_224")])
def test_timm_layout_loads_and_equals_timm_at_224_and_at_another_size(timm_name, ours_name):
    torch.manual_seed(0)
    ref = timm.create_model(timm_name, num_classes=5, dynamic_img_size=True)
    with torch.no_grad():
        ref.head.weight.normal_(std=0.02)
    ours = create_model(ours_name, 5, **QUIET)
    load_pretrained(ours, ref.state_dict(), "vit", "timm", **QUIET)
    for size in ((224, 224), (160, 256)):  # 10 x 16 patches: the 14 x 14 position grid resampled
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(3))
        for mode in ("eval", "train"):
            assert _max_diff(ours, ref, x, mode) <= 1e-5, (size, mode)


def test_converters_round_trip():
    torch.manual_seed(0)
    ref = timm.create_model("deit_tiny_patch16_224", num_classes=5)
    converted = vit_from_timm(ref.state_dict())
    ours = create_model("deit_tiny_patch16_224", 5, **QUIET)
    ours.load_state_dict(converted)  # strict: every key named, every shape right
    mine = ours.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in converted.items())
    assert torch.equal(mine["encoder.layers.encoder_layer_3.self_attention.in_proj_weight"],
                       ref.state_dict()["blocks.3.attn.qkv.weight"])
    # torchvision's published ViT files name the MLP layers linear_1 / linear_2 (before its MLPBlock v2)
    tv = _reference("vit_b_32").state_dict()
    legacy = {k.replace(".mlp.0.", ".mlp.linear_1.").replace(".mlp.3.", ".mlp.linear_2."): v for k, v in tv.items()}
    assert any(".mlp.linear_1." in k for k in legacy)
    back = to_project_keys(legacy, "vit")
    assert back.keys() == tv.keys() and all(torch.equal(back[k], tv[k]) for k in tv)


def test_a_swag_checkpoint_at_384_loads_and_runs_at_any_size():
    """SWAG's ViT-B/16 is stored for 384 pixels (24 x 24 patches): the model takes that grid and still accepts
    224 (resampled), equal to torchvision's model built for 384 at 384."""
    torch.manual_seed(0)
    ref = tvm.VisionTransformer(384, 16, 12, 12, 768, 3072, num_classes=5)
    with torch.no_grad():
        ref.heads.head.weight.normal_(std=0.02)
    ours = _ours_from(ref, "vit_b_16")
    assert ours.encoder.pos_embedding.shape == (1, 24 * 24 + 1, 768)
    x = torch.randn(1, 3, 384, 384)
    assert _max_diff(ours, ref, x, "eval") <= 1e-5
    assert ours.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 5)


def test_vit_refuses_a_size_the_patch_does_not_divide_and_says_which_work():
    model = create_model("tiny_vit", 3, **QUIET)
    with pytest.raises(UserError, match=r"input 30x44: .* divisible by 8 \(e.g. 24x40 or 32x48\)"):
        model(torch.zeros(1, 3, 30, 44))


def test_transformers_are_listed_with_their_checkpoints():
    names = list_models()
    for name in ("vit_b_16", "vit_b_16.swag_e2e", "vit_h_14.swag_lc", "swin_t", "swin_v2_b", "deit_small_patch16_224"):
        assert name in names
    table = "\n".join(model_table("swin_v2*"))
    assert "swin_v2_t-b137f0e2.pth" in table and "256" in table


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("transformers")
    data = write_folder_dataset(root / "data", size=(32, 32))
    return root, data


@pytest.mark.parametrize("model", ["tiny_vit", "tiny_swin_v2"])
def test_tiny_transformer_trains_through_train_py_and_exports(model, tiny_runs, capsys):
    """train.py, then ONNX and TorchScript with TTA inside equal to the API's TTA probabilities, and int8."""
    ort = pytest.importorskip("onnxruntime")
    from export import main as export_main
    import train
    root, data = tiny_runs
    out = root / model
    code, _, err = cli(train, "--version", "v1", "--model", model, "--pretrained", "none", "--data", data,
                       "--out", out, "--cache-dir", root / "cache", "--img-size", "32", "--epochs", "1",
                       "--batch-size", "8", "--workers", "1", "--device", "cpu", capsys=capsys)
    assert code == 0, err
    metrics = json.loads((out / "v1" / "fold0" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1
    run = out / "v1"
    for fmt in ("onnx", "torchscript"):
        assert export_main(["--run", str(run), "--format", fmt, "--tta", "--out", str(root / f"{model}-{fmt}")]) == 0
    clf = imgcls.load(run, tta=True)
    assert len(clf.views) > 1
    session = ort.InferenceSession(str(root / f"{model}-onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 marks TorchScript deprecated
        scripted = torch.jit.load(str(root / f"{model}-torchscript" / "model.pt"))
    for batch in (1, 7):  # the batch is the graph's free dimension
        x = torch.randint(0, 256, (batch, 3, *clf.storage_size), dtype=torch.uint8)
        expected = clf.probabilities(x)
        np.testing.assert_allclose(session.run(None, {"images": x.numpy()})[0], expected, atol=1e-4, rtol=0)
        with torch.no_grad():
            np.testing.assert_allclose(scripted(x).numpy(), expected, atol=1e-4, rtol=0)
    # int8 (dynamic quantisation of the attention and MLP matmuls) keeps fp32's top-1 on the run's images
    images = imgcls.load(run).images(data)
    fp32 = imgcls.load(run).probabilities(images.pixels).argmax(1)
    q = imgcls.load(run, int8=True).probabilities(images.pixels).argmax(1)
    assert len(fp32) >= 40 and np.mean(q == fp32) >= 0.9
