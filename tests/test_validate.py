"""validate.py: bad train.py flag values and unusable --out folders are one line with exit 2, before anything
is written."""

from __future__ import annotations

import os

import pytest

import export as export_script
import imgcls
import predict as predict_script
import train as train_script
from tests.helpers import TINY_B0 as TINY
from tests.helpers import (
    assert_one_line_error,
    cli,
    needs_non_root,
    snapshot,
)


@pytest.mark.parametrize("args,fragments", [
    (["--lr", "nan"], ["--lr nan", "> 0"]),
    (["--lr", "inf"], ["--lr inf"]),
    (["--batch-size", "0"], ["--batch-size 0", "[1, 4096]"]),
    (["--eval-batch-size", "0"], ["--eval-batch-size 0"]),
    (["--swa-freq", "0"], ["--swa-freq 0"]),
    (["--epochs", "0"], ["--epochs 0"]),
    (["--hflip", "1.5"], ["--hflip 1.5", "[0, 1]"]),
    (["--test-frac", "-0.1"], ["--test-frac -0.1"]),
    (["--betas", "0.9,nan"], ["--betas 0.9,nan"]),
    (["--device", "foo"], ["--device foo", "auto, cpu, cuda"]),
    (["--device", "cuda:99"], ["--device cuda:99"]),
])
def test_bad_train_flags_are_one_line(args, fragments, tmp_path, capsys):
    code, _, err = cli(train_script, "--out", tmp_path, *args, capsys=capsys)
    assert_one_line_error(code, err, *fragments)
    assert list(tmp_path.iterdir()) == []


def test_out_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    code, _, err = cli(train_script, "--out", tmp_path / "f", capsys=capsys)
    assert_one_line_error(code, err, f"--out {tmp_path / 'f'}", "is a file")
    code, _, err = cli(train_script, "--out", tmp_path / "f" / "sub", capsys=capsys)
    assert_one_line_error(code, err, "--out", "is a file, not a folder")


@needs_non_root
def test_unwritable_out_is_one_line(tmp_path, capsys):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    code, _, err = cli(train_script, "--out", tmp_path / "ro" / "runs", capsys=capsys)
    assert_one_line_error(code, err, "--out", "not writable")


def test_restart_with_resume_is_refused_before_the_finished_run_is_deleted(finished_v1, capsys):
    before = snapshot(finished_v1 / "v1")
    code, _, err = cli(train_script, "--version", "v1", "--out", finished_v1, *TINY, "--restart", "--resume",
                       capsys=capsys)
    assert_one_line_error(code, err, "--restart with --resume")
    assert snapshot(finished_v1 / "v1") == before


def test_a_non_finite_logit_adjust_is_refused_by_export_and_the_api(finished_v1, tmp_path, capsys):
    run = finished_v1 / "v1"
    for value in ("nan", "inf"):
        code, _, err = cli(export_script, "--run", run, "--decision-tau", value, "--out", tmp_path / "e",
                           capsys=capsys)
        assert_one_line_error(code, err, f"--decision-tau {value}")
        with pytest.raises(imgcls.UserError, match="--decision-tau"):
            imgcls.load(run, decision_tau=float(value))
    assert not (tmp_path / "e").exists()


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


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_an_out_folder_where_nothing_can_be_created_is_one_line(tmp_path, capsys):
    code, _, err = cli(train_script, "--version", "v1", "--out", "/proc/x", *TINY, capsys=capsys)
    assert_one_line_error(code, err, "--out /proc/x: nothing can be created in /proc")
