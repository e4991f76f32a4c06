"""Bad input, round three, outside the config file (tests/test_config_file.py): the default prediction folder,
export writers on a full disk, a teacher gone on resume. Each ends in one line and exit 2, nothing changed."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

import predict as predict_script
from imgcls.errors import UserError
from imgcls.teacher import teacher_test
from tests.helpers import ENV, ROOT, assert_one_line_error, cli, snapshot

pytestmark = pytest.mark.slow  # trains runs or starts processes: outside the fast lane (pytest -m "not slow")


def test_predict_checks_its_default_output_folder_before_predicting(finished_v1, capsys):
    run = finished_v1 / "v1"
    blocker = run / "predict-test"  # where the default folder would go: a file, so nothing can be written there
    blocker.write_text("not a folder")
    try:
        before = snapshot(run)
        code, out, err = cli(predict_script, "--run", run, capsys=capsys)
        assert_one_line_error(code, err, f"the default output {blocker / 'predictions.csv'} cannot be written",
                              "pass --out FILE.csv")
        assert "predicting" not in out  # refused before any work
        assert snapshot(run) == before
    finally:
        blocker.unlink()


@pytest.mark.parametrize("fmt", ["torchscript", "torch-export"])
def test_an_export_writer_on_a_full_disk_is_one_line_with_the_file_and_the_free_space(finished_v1, fmt, tmp_path):
    out = tmp_path / "export"
    limit = 8 * 1024  # `ulimit -f`: writes past it fail with EFBIG (Python ignores SIGXFSZ), like a full disk
    proc = subprocess.run([sys.executable, str(ROOT / "export.py"), "--run", str(finished_v1 / "v1"), "--format", fmt,
                           "--out", str(out)], env=ENV, capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    line, = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: --out {out}: could not write the export (") and "File too large" in line, line
    assert "GiB free there" in line and "nothing was written" in line
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_teacher_that_is_gone_is_named_by_its_flag(tmp_path):
    with pytest.raises(UserError, match=r"^--teacher .*gone: .*no such run folder"):
        teacher_test(str(tmp_path / "gone"), [])
