"""report.html in a real browser (headless Chromium): every class of metrics.json in the per-class table
with its values, every inlined image decoded, nothing fetched from the network; ECE by hand elsewhere
(tests/test_metrics.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import balanced_accuracy_score
from sklearn.metrics import confusion_matrix as sk_confusion

import predict as predict_script
import train as train_script
from imgcls.metrics import classification_metrics
from imgcls.plots import plot_confusion
from tests.helpers import (
    write_folder_dataset,
)

pytestmark = pytest.mark.slow  # trains runs or starts processes: outside the fast lane (pytest -m "not slow")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (.ci/run installs Debian's "
                                   "chromium package where it can; apt-get install chromium)")
TINY = ["--version", "v1", "--model", "tiny_efficientnet", "--pretrained", "none", "--img-size", "32", "--epochs", "1",
        "--batch-size", "8", "--workers", "1", "--device", "cpu"]


class Rows(HTMLParser):
    """The cells of the table with id per-class, row by row."""

    def __init__(self):
        super().__init__()
        self.inside, self.rows, self.cell = False, [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table" and dict(attrs).get("id") == "per-class":
            self.inside = True
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = False
        elif self.inside and tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(self.cell.strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    data = write_folder_dataset(root / "data", counts=(30, 12, 6))
    assert train_script.main(["--version", "v1", "--data", str(data), "--out", str(root / "runs"),
                              "--cache-dir", "none", *TINY]) == 0
    assert predict_script.main(["--run", str(root / "runs" / "v1"), "--out", str(root / "p.csv"),
                                "--cache-dir", "none", "--split", "all"]) == 0
    return root


def _chromium(*args, cwd):
    # the browser's own traffic (time sync, dictionaries, sign-in, updates) off, so that the net log holds
    # what the page asks for; no name resolves, so nothing could leave the machine anyway
    quiet = ["--disable-background-networking", "--disable-component-update", "--disable-sync", "--bwsi",
             "--disable-domain-reliability", "--no-pings", "--disable-default-apps", "--no-default-browser-check",
             "--disable-features=Translate,OptimizationHints,SpellCheck,MediaRouter,AutofillServerCommunication"]
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", *quiet,
                           "--host-resolver-rules=MAP * ~NOTFOUND", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


@needs_browser
def test_the_report_opens_in_a_browser_with_every_class_its_images_and_no_network(predicted):
    report = predicted / "p" / "report.html"
    metrics = json.loads((predicted / "p" / "metrics.json").read_text())
    url = report.as_uri()
    shot = predicted / "shot.png"
    _chromium(f"--screenshot={shot}", "--window-size=1200,1600", url, cwd=predicted)
    image = Image.open(shot).convert("L")
    assert image.size == (1200, 1600) and len(set(image.tobytes())) > 10  # drawn, not a blank page
    dom = _chromium("--dump-dom", "--virtual-time-budget=5000", url, cwd=predicted)
    assert dom.returncode == 0, dom.stderr[-2000:]
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom.stdout)
    assert loaded and loaded.group(1) == loaded.group(2) and int(loaded.group(2)) >= 3, loaded
    parser = Rows()
    parser.feed(dom.stdout)
    header, *rows = parser.rows
    assert header[:2] == ["class", "support"] and header[-3:] == ["precision", "recall", "F1"]
    assert sorted(r[0] for r in rows) == sorted(metrics["per_class"])
    for row in rows:
        expected = metrics["per_class"][row[0]]
        assert int(row[1]) == expected["support"]
        assert [float(v) for v in row[-3:]] == [round(expected[k], 3) for k in ("precision", "recall", "f1")]
    # no network: the page's Content-Security-Policy lets it load only inlined (data:) images, and the browser
    # enforces it; every image decoded above, so none needed anything else. (Chromium's own background
    # traffic is in its net log too, so that log cannot tell the page's requests apart.)
    assert "default-src 'none'; img-src data:" in dom.stdout


def test_the_training_run_and_the_prediction_each_write_a_self_contained_report(predicted):
    trained = (predicted / "runs" / "v1" / "fold0" / "report.html").read_text()
    predictions = (predicted / "p" / "report.html").read_text()
    for text in (trained, predictions):
        assert "<table class='sortable' id='per-class'>" in text and "Most confused" in text
        assert not re.search(r"""(src|href)=['"]https?:""", text)  # everything is inlined
    assert "<h2>Curves</h2>" in trained and "<h2>Settings</h2>" in trained
    assert "id='reliability'" in predictions and "Highest loss" in predictions


def test_two_thousand_classes_report_in_bounded_memory_with_the_full_matrix_in_sparse_form(tmp_path):
    """A dense 2,000 x 2,000 matrix (and scikit-learn's balanced accuracy, which builds one) is what 20,000
    classes ran out of memory on; the cells kept are every non-zero one, checked against scikit-learn."""
    rng = np.random.default_rng(0)
    num_classes = 2000
    y_true = rng.integers(0, num_classes, 6000)
    y_pred = np.where(rng.random(6000) < 0.7, y_true, rng.integers(0, num_classes, 6000))
    names = [f"c{i}" for i in range(num_classes)]
    m = classification_metrics(y_true, y_pred, names)
    reference = sk_confusion(y_true, y_pred, labels=np.arange(num_classes))
    cells = m["confusion_matrix"]["cells"]
    assert m["confusion_matrix"]["shape"] == [num_classes, num_classes] and len(cells) == np.count_nonzero(reference)
    assert all(reference[t, p] == n for t, p, n in cells)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred), abs=1e-12)
    plot_confusion(m["confusion_matrix"], names, tmp_path / "confusion.png")  # the 60 largest classes
    assert (tmp_path / "confusion.png").stat().st_size > 0
    assert len(json.dumps(m)) < 2_000_000
