"""export.py --format safetensors: the Hugging Face Hub's layout (model.safetensors, config.json, README.md),
readable with the safetensors library alone and by imgcls.load with the run's own probabilities."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import export as export_script
import imgcls
from helpers import cli
from imgcls import checkpoint

pytest.importorskip("safetensors")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(finished_v5, tmp_path_factory):
    out = tmp_path_factory.mktemp("hub") / "v5"
    assert export_script.main(["--run", str(finished_v5), "--format", "safetensors", "--out", str(out)]) == 0
    return out


def test_the_export_holds_every_member_and_loads_with_safetensors_alone(finished_v5, exported):
    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    # a fresh interpreter that imports safetensors and json only: no imgcls, no torch.load, no pickle
    code = ("import json, sys; from safetensors.numpy import load_file; "
            "t = load_file(sys.argv[1] + '/model.safetensors'); c = json.load(open(sys.argv[1] + '/config.json')); "
            "print(json.dumps({'keys': sorted(t), 'imgcls': 'imgcls' in sys.modules, 'pickle': 'pickle' in sys.modules, "
            "'members': [m['weights_prefix'] for m in c['members']], 'classes': c['class_names']}))")
    proc = subprocess.run([sys.executable, "-I", "-c", code, str(exported)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert not seen["imgcls"] and seen["members"] == ["members.0.", "members.1.", "members.2."]
    from safetensors.torch import load_file
    tensors = load_file(str(exported / "model.safetensors"))
    for i in range(3):  # each member's weights, bit for bit
        record = checkpoint.read(finished_v5 / f"fold{i}" / "shipped.pt")
        assert record.class_names == seen["classes"]
        for name, value in record.model.items():
            assert torch.equal(tensors[f"members.{i}.{name}"], value), name
    assert len(seen["keys"]) == 3 * len(record.model)


def test_imgcls_load_of_the_export_gives_the_run_probabilities(finished_v5, exported):
    run, hub = imgcls.load(finished_v5, device="cpu"), imgcls.load(exported, device="cpu")
    x = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    expected, got = run.probabilities(x), hub.probabilities(x)
    assert np.abs(expected - got).max() <= 1e-6
    assert hub.decision_taus == run.decision_taus and hub.views == run.views and hub.classes == run.classes
    # an override of the tau applies to the export as to the run
    a, b = imgcls.load(finished_v5, device="cpu", decision_tau=1.0), imgcls.load(exported, device="cpu", decision_tau=1.0)
    assert np.abs(a.probabilities(x) - b.probabilities(x)).max() <= 1e-6


def _card_scores(card: str, heading: str) -> dict:
    """The | metric | value | table that follows the paragraph starting with `heading`."""
    block = card[card.index(heading):].split("\n\n", 2)[1]
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^\| ([a-zA-Z -]+F?1?) \| ([0-9.]+) \|$", block, re.M)}


def test_the_model_card_numbers_are_the_runs_metrics(finished_v5, exported):
    card = (exported / "README.md").read_text()
    test = json.loads((finished_v5 / "predict-test" / "metrics.json").read_text())
    names = {"accuracy": "accuracy", "macro-F1": "macro_f1", "balanced accuracy": "balanced_accuracy",
             "weighted-F1": "weighted_f1", "smallest-class F1": "smallest_class_f1"}
    scores = _card_scores(card, "On the run's held-out test split")
    assert set(scores) == set(names)
    for label, key in names.items():
        assert scores[label] == round(test[key], 4)
    assert f"({test['num_samples']} images" in card
    for k in range(3):
        fold = json.loads((finished_v5 / f"fold{k}" / "metrics.json").read_text())
        member = _card_scores(card, f"Member {k} on its validation split")
        assert member == {label: round(fold[key], 4) for label, key in names.items()}
    for name, row in test["per_class"].items():  # the per-class table of the test split
        assert f"| {name} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {row['support']} |" in card


def test_a_hub_layout_beside_onnx_and_a_broken_export_is_one_line(finished_v5, tmp_path, capsys):
    pytest.importorskip("onnx")
    code, _, err = cli(export_script, "--run", finished_v5, "--fold", "0", "--hub", "--out", tmp_path / "o",
                       capsys=capsys)
    assert code == 0, err
    assert {"model.onnx", "config.json", "README.md"} <= {p.name for p in (tmp_path / "o").iterdir()}
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    (broken / "config.json").write_text(json.dumps({"imgcls_hub_format": 1}))
    with pytest.raises(imgcls.UserError, match="model.safetensors: not a readable safetensors file"):
        imgcls.load(broken)
    (broken / "config.json").write_text("{}")
    with pytest.raises(imgcls.UserError, match="not an imgcls safetensors export"):
        imgcls.load(broken)
