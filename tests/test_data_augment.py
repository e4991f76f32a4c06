"""Batched augmentation against torchvision's per-image transforms, and Mixup/CutMix targets."""

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from imgcls.data.augment import MixupCutmix, TrainAugment, eval_transform

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _smooth_batch(n=6, size=(20, 14), seed=0):
    """Smooth random images, so that bilinear resampling differences stay small and comparable."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((n, 3, 5, 4), generator=g)
    return (F.interpolate(coarse, size=size, mode="bilinear", align_corners=False) * 255).round().to(torch.uint8)


def _params(seed, batch):
    """The per-sample parameters TrainAugment draws: u[0] flip, u[1] rotation, u[2] brightness."""
    return torch.rand((3, batch), generator=torch.Generator().manual_seed(seed))


def test_shape_dtype_and_range():
    x = _smooth_batch()
    out = TrainAugment((24, 18), MEAN, STD)(x, torch.Generator().manual_seed(0))
    assert out.shape == (6, 3, 24, 18) and out.dtype == torch.float32
    low = (0 - torch.tensor(MEAN)) / torch.tensor(STD)
    high = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    per_channel = out.transpose(0, 1).reshape(3, -1)
    assert (per_channel.min(1).values >= low.view(3) - 1e-5).all()
    assert (per_channel.max(1).values <= high.view(3) + 1e-5).all()


@pytest.mark.parametrize("out_size", [(20, 14), (40, 28), (10, 7), (16, 16)])
def test_without_random_ops_it_is_the_eval_transform(out_size):
    x = _smooth_batch()
    plain = TrainAugment(out_size, MEAN, STD, hflip=0, rotation=0, brightness=0)(x, torch.Generator())
    assert torch.allclose(plain, eval_transform(x, out_size, MEAN, STD), atol=1e-5)


def test_eval_transform_matches_torchvision_resize_and_normalize():
    x = _smooth_batch(n=2)
    for out_size in [(40, 28), (10, 7)]:
        ours = eval_transform(x, out_size, MEAN, STD)
        for i in range(2):
            ref = TF.normalize(TF.resize(x[i].float() / 255, list(out_size), antialias=True), MEAN, STD)
            assert torch.allclose(ours[i], ref, atol=1e-4)


def test_flip_and_rotation_match_torchvision_per_sample():
    x = _smooth_batch()
    out = TrainAugment((20, 14), (0, 0, 0), (1, 1, 1), hflip=0.5, rotation=30, brightness=0)(
        x, torch.Generator().manual_seed(1))
    u = _params(1, len(x))
    flips = u[0] < 0.5
    assert 0 < flips.sum() < len(x)  # both cases are exercised
    for i in range(len(x)):
        img = x[i].float() / 255
        if flips[i]:
            img = TF.hflip(img)
        angle = float((2 * u[1, i] - 1) * 30)
        ref = TF.rotate(img, angle, interpolation=InterpolationMode.BILINEAR)  # counter-clockwise, black fill
        assert torch.allclose(out[i], ref, atol=1e-4), (i, angle)


def test_brightness_factor_per_sample_like_colorjitter():
    x = _smooth_batch()
    out = TrainAugment((20, 14), (0, 0, 0), (1, 1, 1), hflip=0, rotation=0, brightness=0.4)(
        x, torch.Generator().manual_seed(5))
    u = _params(5, len(x))
    for i in range(len(x)):
        factor = float(1 + (2 * u[2, i] - 1) * 0.4)
        ref = TF.adjust_brightness(x[i].float() / 255, factor)
        assert torch.allclose(out[i], ref, atol=1e-5)


def test_identical_images_get_different_parameters_and_seeds_reproduce():
    x = _smooth_batch(n=1).expand(8, -1, -1, -1).contiguous()
    aug = TrainAugment((20, 14), MEAN, STD)
    out = aug(x, torch.Generator().manual_seed(11))
    distinct = {tuple(o.flatten()[:200].tolist()) for o in out}
    assert len(distinct) == 8
    assert torch.equal(out, aug(x, torch.Generator().manual_seed(11)))
    assert not torch.equal(out, aug(x, torch.Generator().manual_seed(12)))


def _distinct_batch(n=4, h=10, w=8):
    """Float images whose every pixel differs from the reversed batch's pixel at the same place."""
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1) + torch.zeros(n, 3, h, w)


def test_cutmix_lambda_equals_the_pasted_area_and_targets_sum_to_one():
    mix = MixupCutmix(num_classes=5, prob=1.0, switch_prob=1.0, label_smoothing=0.1)
    x, y = _distinct_batch(), torch.tensor([0, 1, 2, 3])
    for seed in range(10):
        mixed, targets = mix(x, y, torch.Generator().manual_seed(seed))
        kind, lam = mix.last
        assert kind == "cutmix"
        pasted = (mixed != x)[0, 0].float().mean().item()
        assert pasted == pytest.approx(1 - lam, abs=1e-6)
        assert torch.allclose(targets.sum(1), torch.ones(4))
        # true class: lam * (1 - 0.1 + 0.02) + (1 - lam) * 0.02
        assert targets[0, 0].item() == pytest.approx(lam * 0.92 + (1 - lam) * 0.02, abs=1e-6)
        assert targets[0, 3].item() == pytest.approx((1 - lam) * 0.92 + lam * 0.02, abs=1e-6)
    assert torch.equal(x, _distinct_batch())  # the input batch is not modified


def test_mixup_blends_images_and_targets_with_the_same_lambda():
    mix = MixupCutmix(num_classes=4, mixup_alpha=0.2, prob=1.0, switch_prob=0.0)
    x, y = _distinct_batch(), torch.tensor([0, 1, 2, 3])
    mixed, targets = mix(x, y, torch.Generator().manual_seed(1))
    kind, lam = mix.last
    assert kind == "mixup" and 0 <= lam <= 1
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0))
    assert torch.allclose(targets, lam * F.one_hot(y, 4).float() + (1 - lam) * F.one_hot(y.flip(0), 4).float())
    again, _ = mix(x, y, torch.Generator().manual_seed(1))
    assert torch.equal(again, mixed)


def test_unmixed_batches_get_smoothed_one_hot_and_prob_is_respected():
    mix = MixupCutmix(num_classes=4, prob=0.0, label_smoothing=0.2)
    x, y = _distinct_batch(), torch.tensor([3, 1, 0, 2])
    out, targets = mix(x, y, torch.Generator().manual_seed(0))
    assert out is x and mix.last == ("none", 1.0)
    assert torch.allclose(targets, F.one_hot(y, 4).float() * 0.8 + 0.05)
    half = MixupCutmix(num_classes=4, prob=0.5)
    g = torch.Generator().manual_seed(0)
    kinds = []
    for _ in range(400):
        half(x, y, g)
        kinds.append(half.last[0])
    mixed_share = 1 - kinds.count("none") / 400
    assert abs(mixed_share - 0.5) < 5 * (0.25 / 400) ** 0.5
    assert 0 < kinds.count("cutmix") and 0 < kinds.count("mixup")


def test_scale_jitter_matches_torchvision_affine_zoom_per_sample():
    """--scale s: zoom about the centre by a factor uniform in [1-s, 1+s], drawn after the flip / rotation /
    brightness parameters (so runs without it keep their random stream), like RandomAffine(scale=...)."""
    x = _smooth_batch()
    out = TrainAugment((20, 14), (0, 0, 0), (1, 1, 1), hflip=0.5, rotation=20, brightness=0, scale=0.3)(
        x, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    u = torch.rand((3, len(x)), generator=g)
    zoom = 1 + (2 * torch.rand(len(x), generator=g) - 1) * 0.3
    assert zoom.min() < 0.95 and zoom.max() > 1.05  # zooming in and out are both exercised
    for i in range(len(x)):
        img = x[i].float() / 255
        if u[0, i] < 0.5:
            img = TF.hflip(img)
        # TF.affine turns clockwise, TF.rotate (and TrainAugment) counter-clockwise
        ref = TF.affine(img, angle=-float((2 * u[1, i] - 1) * 20), translate=[0, 0], scale=float(zoom[i]),
                        shear=[0.0, 0.0], interpolation=InterpolationMode.BILINEAR)
        assert torch.allclose(out[i], ref, atol=1e-4), (i, float(zoom[i]))
