"""--help is grouped by area and shows what each preset sets (not "preset or X")."""

from __future__ import annotations

from imgcls.flags import preset_values
from imgcls.presets import VERSIONS
from train import build_parser


def test_train_help_groups_flags_by_area_with_each_presets_value():
    text = build_parser().format_help()
    for group in ("run:", "data:", "model:", "optimisation:", "loss:", "sampling:", "augmentation:",
                  "schedule:", "SWA:", "validation:", "speed:", "prediction:"):
        assert f"\n{group}\n" in text
    assert "preset or" not in text
    flat = " ".join(text.split())
    # --lr and --tta: every preset's own value, in VERSIONS order
    lr = ", ".join(f"{v} {p.get('lr', 0.001)}" for v, p in VERSIONS.items())
    assert lr.startswith("v1 0.001, v2 0.0001, v2.1 0.0001, v3 0.001") and f"({lr})" in flat
    tta = ", ".join(f"{v} {p.get('tta', False)}" for v, p in VERSIONS.items())
    assert tta.startswith("v1 False, v2 False, v2.1 True, v3 True") and f"({tta})" in flat


def test_preset_values_reads_the_presets():
    assert preset_values("lr", 1e-3) == ", ".join(f"{v} {p.get('lr', 1e-3)}" for v, p in VERSIONS.items())
    assert preset_values("seed", 0) == "every version: 0"
    assert preset_values("img_size", None).startswith("v1 224x168")
