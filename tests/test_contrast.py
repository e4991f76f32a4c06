"""The contrastive auxiliary loss: supcon equals Khosla et al.'s L_out and balanced equals Zhu et al.'s
class-averaged denominator, both written out as loops over anchors here; an anchor with no positive is left
out; the tap sees exactly the classifier's input; training on the term pulls each class's features together;
train.py runs with it and refuses it with mixup in one line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from imgcls.contrast import CONTRAST, FeatureTap, contrastive_loss
from tests.helpers import assert_one_line_error, cli, write_folder_dataset


def _by_hand(z, labels, t, balanced):
    """The loss, one anchor and one term at a time, in float64."""
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n, losses = len(z), []
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denominator = 0.0
        for a in range(n):
            if a == i:
                continue
            size = sum(1 for b in range(n) if b != i and labels[b] == labels[a]) if balanced else 1
            denominator += math.exp(z[i] @ z[a] / t) / size
        losses.append(-np.mean([math.log(math.exp(z[i] @ z[p] / t) / denominator) for p in positives]))
    return float(np.mean(losses))


@pytest.mark.parametrize("balanced", [False, True])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_the_loss_equals_the_papers_formula_written_as_loops(balanced, temperature):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(9, 5))
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 3])  # class 3: one image, an anchor without a positive
    got = contrastive_loss(torch.tensor(z, dtype=torch.float32), torch.tensor(labels), temperature, balanced)
    assert got.item() == pytest.approx(_by_hand(z, labels, temperature, balanced), rel=1e-4)


def test_balanced_and_plain_differ_only_when_class_counts_differ():
    rng = np.random.default_rng(1)
    z = torch.tensor(rng.normal(size=(6, 4)), dtype=torch.float32)
    # two images a class: every other-class denominator term is weighted 1/2, the own class 1/1
    pairs = torch.tensor([0, 0, 1, 1, 2, 2])
    assert contrastive_loss(z, pairs, 0.2, True).item() != pytest.approx(contrastive_loss(z, pairs, 0.2).item())
    # an anchor's own class counted without it: with one other member of each class, all weights are 1
    one_each = torch.tensor([0, 0, 1, 2, 3, 4])
    weights_one = _by_hand(z.numpy().astype(np.float64), one_each.numpy(), 0.2, True)
    assert contrastive_loss(z, one_each, 0.2, True).item() == pytest.approx(weights_one, rel=1e-4)
    assert contrastive_loss(z, one_each, 0.2, False).item() == pytest.approx(weights_one, rel=1e-4)


def test_a_batch_without_positives_gives_zero_with_a_gradient():
    z = torch.randn(4, 3, requires_grad=True)
    loss = contrastive_loss(z, torch.arange(4), 0.1)
    assert loss.item() == 0.0
    loss.backward()
    assert z.grad is not None and torch.all(z.grad == 0)


class _TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Linear(8, 6), nn.Linear(6, 3)

    def get_classifier(self):
        return self.head

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)))


def test_the_tap_keeps_the_classifiers_input_in_training_only():
    torch.manual_seed(0)
    model, x = _TwoLayer(), torch.randn(5, 8)
    tap = FeatureTap(model)
    model(x)
    assert torch.equal(tap.features, torch.tanh(model.body(x)))
    tap.features = None
    model.eval()
    model(x)
    assert tap.features is None


def test_training_on_the_term_pulls_each_class_together():
    """Features of three classes start mixed; after SGD on the contrastive term alone the mean cosine within
    a class exceeds the mean cosine between classes by a wide margin."""
    torch.manual_seed(0)
    model, x, y = _TwoLayer(), torch.randn(48, 8), torch.arange(48) % 3
    x = x + 3.0 * nn.functional.one_hot(y, 8).float()  # a class signal to find, among 8 noisy inputs
    term = CONTRAST.build("balanced", FeatureTap(model), settings=dict(contrast_weight=1.0,
                                                                        contrast_temperature=0.2))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    def gap():
        z = nn.functional.normalize(torch.tanh(model.body(x)), dim=1)
        cos, same = z @ z.T, (y[:, None] == y[None, :]).float() - torch.eye(48)
        other = 1 - same - torch.eye(48)
        return (cos * same).sum() / same.sum() - (cos * other).sum() / other.sum()

    before = gap().item()
    for _ in range(300):
        model(x)
        loss = term(torch.zeros(()), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert gap().item() > before + 0.5 and gap().item() > 0.7, (before, gap().item())


def test_train_py_trains_with_the_term_and_refuses_it_with_mixup(tmp_path, capsys):
    import train
    data = write_folder_dataset(tmp_path / "data", counts=(12, 8, 4), size=(32, 32))
    common = ["--model", "tiny_vit", "--pretrained", "none", "--data", data, "--cache-dir", tmp_path / "cache",
              "--batch-size", "8", "--workers", "1", "--device", "cpu", "--epochs", "1", "--img-size", "32"]
    code, out, err = cli(train, "--version", "v1", *common, "--out", tmp_path / "run", "--contrast", "supcon",
                         capsys=capsys)
    assert code == 0, err
    cfg = json.loads((tmp_path / "run" / "v1" / "fold0" / "config.json").read_text())
    assert cfg["contrast"] == "supcon" and cfg["contrast_weight"] == 0.1
    code, _, err = cli(train, "--version", "v2", *common, "--out", tmp_path / "mix", "--contrast", "balanced",
                       capsys=capsys)
    assert_one_line_error(code, err, "--contrast", "--mix-prob 0")
    code, _, err = cli(train, "--version", "v1", *common, "--out", tmp_path / "bad", "--contrast", "simclr",
                       capsys=capsys)
    assert_one_line_error(code, err, "--contrast", "supcon")
    code, _, err = cli(train, "--version", "v1", *common, "--out", tmp_path / "bad", "--contrast", "supcon",
                       "--contrast-temperature", "0", capsys=capsys)
    assert_one_line_error(code, err, "--contrast-temperature")
