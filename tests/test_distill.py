"""Distillation: the soft term equals Hinton's formula and BKD's re-weighted one on hand-computed cases, the
mix is (1 - alpha) hard + alpha soft, a student trained through train.py --teacher ends closer to the
teacher's probabilities than the same student trained on labels alone, and a teacher that does not fit is
refused with one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import imgcls
from imgcls.distill import DISTILL, Distillation, soft_term
from tests.helpers import assert_one_line_error, cli, write_folder_dataset

pytestmark = pytest.mark.slow  # trains runs or starts processes: outside the fast lane (pytest -m "not slow")

LOGITS_S = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
LOGITS_T = np.array([[1.0, 1.5, -0.5], [3.0, -1.0, 0.0]])


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _kl_by_hand(q, student, temperature):
    p = _softmax(student / temperature)
    return temperature ** 2 * np.mean(np.sum(q * (np.log(q) - np.log(p)), axis=1))


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_soft_term_is_hintons_t_squared_kl(temperature):
    q = _softmax(LOGITS_T / temperature)
    expected = _kl_by_hand(q, LOGITS_S, temperature)
    got = soft_term(torch.tensor(LOGITS_S), torch.tensor(LOGITS_T), temperature)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # the teacher may be given as log-probabilities: softmax(log p / T) is the same tempered distribution
    log_p = torch.log_softmax(torch.tensor(LOGITS_T), 1)
    assert soft_term(torch.tensor(LOGITS_S), log_p, temperature).item() == pytest.approx(expected, rel=1e-6)


def test_bkd_reweights_the_teachers_distribution_by_class_balanced_weights():
    counts, beta, temperature = np.array([100, 10, 2]), 0.99, 2.0
    w = (1 - beta) / (1 - beta ** counts)  # Cui et al.: one over the effective number
    w = w / w.sum() * len(counts)
    q = _softmax(LOGITS_T / temperature) * w
    q = q / q.sum(1, keepdims=True)
    expected = _kl_by_hand(q, LOGITS_S, temperature)
    loss = DISTILL.build("bkd", torch.tensor(LOGITS_T, dtype=torch.float32), counts,
                         settings=dict(kd_temperature=temperature, kd_alpha=1.0, cb_beta=beta))
    got = loss(torch.tensor(LOGITS_S, dtype=torch.float32), torch.tensor(0.0), torch.arange(2))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_the_loss_mixes_the_hard_label_loss_and_the_soft_term():
    table = torch.tensor(LOGITS_T, dtype=torch.float32)[[1, 0]]  # rows by image index: image 1 first
    loss = Distillation(table, temperature=2.0, alpha=0.3)
    hard = torch.tensor(0.7)
    got = loss(torch.tensor(LOGITS_S, dtype=torch.float32), hard, torch.tensor([1, 0]))
    soft = _kl_by_hand(_softmax(LOGITS_T / 2.0), LOGITS_S, 2.0)
    assert got.item() == pytest.approx(0.7 * 0.7 + 0.3 * soft, rel=1e-5)


def test_a_linear_student_converges_to_a_fixed_teachers_probabilities():
    """The constructed problem: a teacher whose soft targets disagree with the labels. Trained on the soft
    term alone the student's probabilities reach the teacher's; on the labels alone they do not."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 64, generator=gen)  # as many features as images: any logits can be fitted
    labels = torch.randint(0, 4, (32,), generator=gen)
    torch.manual_seed(0)
    teacher = torch.distributions.Dirichlet(torch.ones(4)).sample((32,))
    kl = {}
    for alpha in (0.0, 1.0):
        torch.manual_seed(0)
        student = torch.nn.Linear(64, 4)
        loss_fn = Distillation(teacher.log(), temperature=1.0, alpha=alpha)
        opt = torch.optim.SGD(student.parameters(), lr=0.5)
        before = soft_term(student(x), teacher.log(), 1.0).item()
        for _ in range(500):
            logits = student(x)
            loss = loss_fn(logits, torch.nn.functional.cross_entropy(logits, labels), torch.arange(32))
            opt.zero_grad()
            loss.backward()
            opt.step()
        kl[alpha] = soft_term(student(x), teacher.log(), 1.0).item()
    assert kl[1.0] < 0.01 * before and kl[1.0] < 0.01 * kl[0.0], (before, kl)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    import train
    root = tmp_path_factory.mktemp("distill")
    data = write_folder_dataset(root / "data", counts=(30, 14, 6), size=(32, 32))
    common = ["--model", "tiny_vit", "--pretrained", "none", "--lr", "0.003", "--data", data, "--cache-dir",
              root / "cache", "--batch-size", "8", "--workers", "1", "--device", "cpu", "--seed", "0",
              "--test-frac", "0.2", "--img-size", "32"]
    assert train.main([str(a) for a in ["--version", "v1", *common, "--epochs", "6", "--out", root / "teacher",
                                                  "--label-smoothing", "0.3"]]) == 0  # a soft teacher
    return root, data, common, root / "teacher" / "v1"


def _mean_kl_to(teacher_probs, run, pixels):
    p = imgcls.load(run).probabilities(pixels)
    return float(np.mean(np.sum(teacher_probs * (np.log(teacher_probs) - np.log(p)), axis=1)))


def test_a_student_moves_toward_its_teachers_probabilities(teacher, capsys):
    import train
    root, data, common, teacher_run = teacher
    # the student: another seed's initialisation; both students take the teacher's test split
    student = ["--version", "v1", *common, "--seed", "1", "--epochs", "6", "--sampler", "natural", "--rotation", "0"]
    code, _, err = cli(train, *student, "--out", root / "labels", capsys=capsys)
    assert code == 0, err
    code, out, err = cli(train, *student, "--out", root / "student", "--teacher", teacher_run, "--kd-alpha", "1",
                         "--kd-temperature", "1", capsys=capsys)
    assert code == 0, err
    assert "--teacher" in out and "view(s) on the" in out
    clf = imgcls.load(teacher_run)
    pixels = clf.images(data).pixels
    teacher_probs = clf.probabilities(pixels)
    distilled, labels_only = (_mean_kl_to(teacher_probs, root / name / "v1", pixels) for name in ("student", "labels"))
    assert distilled < 0.7 * labels_only, (distilled, labels_only)


def test_a_teacher_that_does_not_fit_is_refused_in_one_line(teacher, capsys):
    import train
    root, data, common, teacher_run = teacher
    # a run folder whose split was drawn without the teacher (seed 1), restarted with it
    code, _, err = cli(train, "--version", "v1", *common, "--seed", "1", "--epochs", "1", "--out", root / "s1",
                       capsys=capsys)
    assert code == 0, err
    code, _, err = cli(train, "--version", "v1", *common, "--seed", "1", "--epochs", "1", "--out", root / "s1",
                       "--restart", "--teacher", teacher_run, capsys=capsys)
    assert_one_line_error(code, err, "--teacher", "test split is not this run's")
    code, _, err = cli(train, "--version", "v2", *common, "--epochs", "1", "--out", root / "mix",
                       "--teacher", teacher_run, capsys=capsys)
    assert_one_line_error(code, err, "--teacher", "--mix-prob 0")
