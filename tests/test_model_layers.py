"""Building blocks and the tiny test models, against torchvision/timm layers and hand-computed cases."""
import pytest
import timm.layers
import torch
import torchvision.ops
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.convnext import LayerNorm2d as TvLayerNorm2d

from imgcls.models import create_model
from imgcls.models.layers import (Conv2dSame, LayerNorm2d, SqueezeExcite, drop_path, make_divisible,
                                  same_padding)

QUIET = dict(log=lambda *_: None)


def test_make_divisible_hand_cases():
    assert make_divisible(32) == 32
    assert make_divisible(19.2, 8, round_limit=0.9) == 24   # torchvision: 16 would lose > 10%
    assert make_divisible(19.2, 8, round_limit=0.0) == 16   # timm V2-B3: 16 * 1.2 stays 16
    assert make_divisible(1280 * 1.1, 8, round_limit=0.0) == 1408
    assert make_divisible(3, 8) == 8


def test_drop_path_keeps_or_drops_whole_samples():
    x = torch.ones(2000, 3, 2, 2)
    assert drop_path(x, 0.5, training=False) is x
    assert drop_path(x, 0.0, training=True) is x
    y = drop_path(x, 0.25, training=True)
    per_sample = y.flatten(1)
    assert torch.all((per_sample == 0).all(1) | (per_sample == 1 / 0.75).all(1))
    kept = (per_sample[:, 0] > 0).float().mean().item()
    assert abs(kept - 0.75) < 0.05  # binomial std ~0.01
    assert abs(y.mean().item() - 1.0) < 0.07


def test_same_padding_hand_cases():
    # TF "SAME": output ceil(n/s); total pad (out-1)*s + k - n, extra pixel after.
    assert same_padding(6, 3, 2) == (0, 1)
    assert same_padding(5, 3, 2) == (1, 1)
    assert same_padding(60, 3, 2) == (0, 1)
    assert same_padding(7, 1, 1) == (0, 0)


@pytest.mark.parametrize("shape", [(1, 4, 6, 5), (2, 4, 7, 8), (1, 4, 1, 1)])
def test_conv2d_same_matches_timm(shape):
    ours = Conv2dSame(4, 6, 3, stride=2, bias=False)
    ref = timm.layers.create_conv2d(4, 6, 3, stride=2, padding="same")
    ref.weight.data.copy_(ours.weight.data)
    x = torch.randn(shape)
    assert torch.allclose(ours(x), ref(x), atol=1e-6)


def test_layernorm2d_matches_torchvision():
    ours, ref = LayerNorm2d(8, eps=1e-6), TvLayerNorm2d(8, eps=1e-6)
    torch.nn.init.normal_(ours.weight)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 8, 5, 3)
    assert torch.allclose(ours(x), ref(x), atol=1e-6)
    assert torch.allclose(ours(x.to(memory_format=torch.channels_last)), ref(x), atol=1e-6)


def test_squeeze_excite_matches_torchvision():
    ours = SqueezeExcite(16, 4)
    ref = torchvision.ops.SqueezeExcitation(16, 4, activation=torch.nn.SiLU)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 16, 5, 7)
    assert torch.allclose(ours(x), ref(x), atol=1e-6)


@pytest.mark.parametrize("name", ["tiny_convnext", "tiny_efficientnet", "tiny_efficientnet_v2"])
def test_tiny_models_are_small_and_complete(name):
    model = create_model(name, 5, drop_path_rate=0.1, **QUIET)
    x = torch.randn(2, 3, 32, 32)
    # "Fast" as a load-independent bound: forward + backward of a 2x3x32x32 batch under 20 MFLOPs
    # (a few ms on one core; wall-clock asserts flake on a shared machine).
    with FlopCounterMode(display=False) as flops:
        out = model(x)
        out.sum().backward()
    assert 0 < flops.get_total_flops() < 20e6
    assert out.shape == (2, 5) and model.num_classes == 5
    assert all(p.grad is not None for p in model.parameters())
    feats = model.forward_features(torch.randn(1, 3, 80, 60))
    assert feats.ndim == 4 and model.forward_head(feats).shape == (1, 5)
    model.reset_classifier(9)
    assert model(torch.randn(1, 3, 33, 47)).shape == (1, 9) and model.num_classes == 9


def test_tiny_models_have_the_stage_types_asked_for():
    v2 = create_model("tiny_efficientnet_v2", 3, **QUIET)
    kinds = {type(m).__name__ for m in v2.modules()}
    assert {"FusedMBConv", "MBConv", "SqueezeExcite"} <= kinds
    assert "FusedMBConv" not in {type(m).__name__ for m in create_model("tiny_efficientnet", 3, **QUIET).modules()}


def test_drop_path_rate_ramps_linearly():
    model = create_model("convnext_tiny", 3, drop_path_rate=0.4, **QUIET)
    rates = [m.p for m in model.modules() if type(m).__name__ == "DropPath"]
    assert len(rates) == 18
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.4)
    assert rates == pytest.approx([0.4 * i / 17 for i in range(18)])
    eff = create_model("efficientnet_b0", 3, drop_path_rate=0.2, **QUIET)
    rates = [m.p for m in eff.modules() if type(m).__name__ == "DropPath"]
    assert rates == pytest.approx([0.2 * i / 16 for i in range(16)])  # torchvision's rule: index / total


def test_drop_path_active_only_in_training():
    model = create_model("tiny_convnext", 3, drop_path_rate=0.9, **QUIET)
    for name, p in model.named_parameters():
        if name.endswith("layer_scale"):
            p.data.fill_(1.0)  # the 1e-6 init would hide the residual branches
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, model(x))
