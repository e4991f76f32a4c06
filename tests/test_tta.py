

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import export as export_script
import predict as predict_script
from imgcls.errors import UserError
from imgcls.tta import TTA_VIEWS, predict_probs, tta_view
from tests.helpers import (
    assert_one_line_error,
    cli,
)


def _model(num_classes=5):
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(16, num_classes),
    ).eval()


def test_hflip_of_symmetric_image_is_identical_and_of_asymmetric_is_reversed():
    half = torch.randn(2, 3, 8, 5)
    symmetric = torch.cat([half, half.flip(-1)], dim=-1)
    assert torch.equal(tta_view(symmetric, "hflip"), symmetric)
    x = torch.randn(2, 3, 8, 10)
    assert torch.equal(tta_view(x, "hflip")[..., 0], x[..., -1])
    assert torch.equal(tta_view(x, "identity"), x)


@pytest.mark.parametrize("name", TTA_VIEWS + ("scale0.5", "scale2", "scale1.25", "scale.8"))
@pytest.mark.parametrize("size", [(16, 16), (15, 20)])
def test_views_keep_the_shape(name, size):
    x = torch.randn(2, 3, *size)
    assert tta_view(x, name).shape == x.shape


def test_scale_down_of_constant_image_stays_constant():
    x = torch.full((1, 3, 20, 30), 0.7)
    x[:, 1] = -1.3  # per-channel constants, as after normalisation
    torch.testing.assert_close(tta_view(x, "scale0.9"), x)


def test_scale_down_is_centred_resize_with_replicated_border():
    x = torch.randn(1, 3, 20, 20)
    out = tta_view(x, "scale0.9")  # 18 x 18 resized content, one pixel of edge replication on each side
    inner = F.interpolate(x, size=(18, 18), mode="bilinear", align_corners=False, antialias=False)
    torch.testing.assert_close(out[..., 1:19, 1:19], inner)
    torch.testing.assert_close(out[..., 0, 1:19], inner[..., 0, :])
    torch.testing.assert_close(out[..., 1:19, -1], inner[..., :, -1])


def test_scale_up_is_centre_crop_of_resize():
    x = torch.randn(1, 3, 20, 20)
    out = tta_view(x, "scale1.1")  # 22 x 22, crop the middle 20 x 20
    big = F.interpolate(x, size=(22, 22), mode="bilinear", align_corners=False, antialias=False)
    torch.testing.assert_close(out, big[..., 1:21, 1:21])
    # Zooming in about the centre keeps a centred blob centred.
    blob = torch.zeros(1, 1, 21, 21)
    blob[..., 8:13, 8:13] = 1.0
    zoomed = tta_view(blob, "scale1.5")
    torch.testing.assert_close(zoomed, zoomed.flip(-1))
    torch.testing.assert_close(zoomed, zoomed.flip(-2))


@pytest.mark.parametrize("name", ["scale0.9", "scale1.1", "scale0.7", "scale1.3"])
@pytest.mark.parametrize("size", [(21, 21), (15, 20), (60, 80)])
def test_scale_views_are_centred_so_they_commute_with_hflip(name, size):
    x = torch.randn(1, 3, *size)
    # Up to float rounding of bilinear's source coordinates; an off-centre crop would differ by O(1).
    tol = dict(atol=1e-4, rtol=0)
    torch.testing.assert_close(tta_view(x.flip(-1), name), tta_view(x, name).flip(-1), **tol)
    torch.testing.assert_close(tta_view(x.flip(-2), name), tta_view(x, name).flip(-2), **tol)


def test_predict_probs_identity_equals_softmax_and_rows_sum_to_one():
    model = _model()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        expected = torch.softmax(model(x), dim=1)
    torch.testing.assert_close(predict_probs(model, x), expected)
    probs = predict_probs(model, x, TTA_VIEWS)
    assert probs.shape == (4, 5) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(4))


def test_predict_probs_is_the_mean_over_views():
    model = _model()
    x = torch.randn(3, 3, 16, 16)
    views = ("identity", "hflip", "scale0.9")
    with torch.no_grad():
        expected = sum(torch.softmax(model(tta_view(x, v)), dim=1) for v in views) / 3
    torch.testing.assert_close(predict_probs(model, x, views), expected)
    assert not torch.allclose(predict_probs(model, x, views), predict_probs(model, x))


def test_predict_probs_softmax_in_float32_for_bf16_logits():
    class Big(torch.nn.Module):
        def forward(self, x):
            return (x.mean(dim=(2, 3)) * 100).to(torch.bfloat16)

    probs = predict_probs(Big(), torch.randn(2, 3, 8, 8), ("identity", "hflip"))
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2))


@pytest.mark.parametrize("bad", ["vflip", "scale", "scale0", "scale-1", "scalex"])
def test_unknown_views_are_user_errors(bad):
    with pytest.raises(UserError, match="--tta"):
        tta_view(torch.zeros(1, 3, 4, 4), bad)
    with pytest.raises(UserError, match="--tta"):
        predict_probs(_model(), torch.zeros(1, 3, 4, 4), ("identity", bad))


def test_empty_or_string_views_are_rejected_with_a_user_message():
    with pytest.raises(UserError):
        predict_probs(_model(), torch.zeros(1, 3, 4, 4), ())
    with pytest.raises(UserError):
        predict_probs(_model(), torch.zeros(1, 3, 4, 4), "hflip")


def test_a_tta_view_scale_far_from_one_is_refused_up_front(finished_v1, tmp_path, capsys):
    code, _, err = cli(predict_script, "--run", finished_v1 / "v1", "--tta", "--views", "identity,scale1000",
                       "--out", tmp_path / "p.csv", capsys=capsys)
    assert_one_line_error(code, err, "--tta view 'scale1000'", "above 4")
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("script", ["export", "predict"])
def test_tta_with_no_view_is_one_line(finished_v1, script, tmp_path, capsys):
    module = export_script if script == "export" else predict_script
    code, _, err = cli(module, "--run", finished_v1 / "v1", "--tta", "--views", ",", "--out",
                       tmp_path / ("e" if script == "export" else "p.csv"), capsys=capsys)
    assert_one_line_error(code, err, "--views: no view given")
    assert list(tmp_path.iterdir()) == []
