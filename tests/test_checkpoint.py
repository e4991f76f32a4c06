"""checkpoint.py: a file that is not an imgcls checkpoint (empty, a bare tensor, a dict without the keys, pickled
code, a truncated zip) is one line naming it, never a traceback or an unpickled object."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

import export as export_script
import imgcls
import predict as predict_script
import train as train_script
from imgcls import checkpoint
from tests.helpers import (
    an_image,
    assert_one_line_error,
    cli,
    write_folder_dataset,
)

TINY = ["--version", "v1", "--model", "tiny_convnext", "--pretrained", "none", "--img-size", "32", "--epochs", "1",
        "--batch-size", "8", "--workers", "1", "--eval-batch-size", "64", "--device", "cpu"]


class Booby:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("content,fragments", [
    (b"", ["empty file (0 bytes)", "not an imgcls checkpoint"]),
    ("tensor", ["not an imgcls checkpoint", "holds a Tensor"]),
    ("dict", ["not an imgcls checkpoint", "no 'model'", "'class_names'"]),
    ("evil", ["holds code or objects other than tensors and was refused; only load files you trust"]),
    (b"PK\x03\x04 truncated", ["not a readable imgcls checkpoint"]),
])
def test_foreign_checkpoints_are_one_line(folder_run, tmp_path, capsys, content, fragments):
    bad = tmp_path / "bad.pt"
    if content == "tensor":
        torch.save(torch.zeros(3), bad)
    elif content == "dict":
        torch.save({"weights": torch.zeros(3), "epoch": 1}, bad)
    elif content == "evil":
        bad.write_bytes(pickle.dumps({"model": Booby()}))
    else:
        bad.write_bytes(content)
    code, out, err = cli(predict_script, "--checkpoint", bad, "--images", folder_run[1] / "shoes" / "shoes_000.png",
                         "--device", "cpu", capsys=capsys)
    assert_one_line_error(code, err, str(bad), *fragments)
    assert "weights_only" not in err and "Re-running" not in err and "pwned" not in out


def test_empty_last_pt_is_one_line_naming_it(tmp_path, capsys):
    data = write_folder_dataset(tmp_path / "d", counts=(8, 6, 6))
    (tmp_path / "r" / "v1" / "fold0").mkdir(parents=True)
    (tmp_path / "r" / "v1" / "fold0" / "last.pt").write_bytes(b"")
    code, _, err = cli(train_script, "--data", data, "--out", tmp_path / "r", "--cache-dir", "none", *TINY,
                       capsys=capsys)
    assert_one_line_error(code, err, str(tmp_path / "r" / "v1" / "fold0" / "last.pt"), "empty file")


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
    for script, args in ((predict_script, ["--checkpoint", path, "--images", an_image(tmp_path)]),
                         (export_script, ["--run", path, "--out", tmp_path / "e"])):
        code, _, err = cli(script, *args, capsys=capsys)
        assert_one_line_error(code, err, str(path), "not a complete imgcls checkpoint")
    with pytest.raises(imgcls.UserError, match="not a complete imgcls checkpoint"):
        imgcls.load(path)
