"""Deployable models: uint8 images at the storage size in, class probabilities out, preprocessing inside.

Resize (bilinear, antialiased when shrinking) and every TTA view (flip, centred scale with crop or edge
padding) act on each image axis separately and linearly, so each becomes two small matrices:
view(resize(x)) = Rows @ x @ Cols^T per channel. The matrices are read off the project's own functions
(`eval_transform`'s resize, `tta.tta_view`) by probing them with basis images, so the exported graph does
exactly what predict.py does, in plain MatMul / Mul / Add that ONNX, TorchScript and int8 quantisers all
handle (ONNX has no antialiased bilinear resize that torch can export). A fold ensemble becomes one module
that averages the members' probabilities over models and views.
"""

from __future__ import annotations

import io

import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from .data.augment import resize
from . import labels
from .errors import UserError
from .run import build_model, decision_taus
from .tta import tta_view

ONNX_OPSET = 17


def axis_matrices(op: Callable[[torch.Tensor], torch.Tensor], height: int, width: int,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(Rows h x H, Cols w x W) with op(x) == Rows @ x @ Cols^T for a separable linear image op.

    Image i of the height probe is 1 on row i and 0 elsewhere, i.e. e_i (x) 1; op maps it to
    (Rows e_i) (x) (Cols 1), and Cols 1 = 1 because every output pixel of a resize / crop / edge pad is a
    weighted mean of inputs (weights sum to one). Checked on a random image, so a non-separable op fails
    loudly instead of exporting something else.
    """
    def probe(n: int, along_height: bool) -> torch.Tensor:
        eye = torch.eye(n, dtype=torch.float64)
        shape = (n, 1, n, 1) if along_height else (n, 1, 1, n)
        return eye.view(shape).expand(n, 1, height, width).contiguous()

    rows = op(probe(height, True))[:, 0, :, 0].T.contiguous()
    cols = op(probe(width, False))[:, 0, 0, :].T.contiguous()
    x = torch.rand(2, 3, height, width, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    if not torch.allclose(rows @ x @ cols.T, op(x), atol=1e-9):
        raise ValueError("axis_matrices: the op is not a separable linear map with rows summing to one")
    return rows.float(), cols.float()


def view_matrices(storage_size: Sequence[int], img_size: Sequence[int], view: str):
    """Matrices of 'resize storage -> model input, then TTA view `view`' (identity, hflip, scaleF)."""
    img_size = tuple(int(v) for v in img_size)
    return axis_matrices(lambda x: tta_view(resize(x, img_size), view), int(storage_size[0]), int(storage_size[1]))


class Deployable(nn.Module):
    """uint8 B x 3 x H x W at the storage size -> class probabilities B x C (float32), mean over the
    models (fold ensemble) and the TTA views; the batch size is free."""

    def __init__(self, models: Sequence[nn.Module], storage_size, img_size, mean, std,
                 views: Sequence[str] = ("identity",), channels_last: bool = False, decision=None):
        super().__init__()
        if not models or not views:
            raise ValueError("Deployable needs at least one model and one view")
        self.models = nn.ModuleList(models).eval()
        mats = [view_matrices(storage_size, img_size, v) for v in views]
        self.register_buffer("rows", torch.stack([r for r, _ in mats]))      # V x h x H
        self.register_buffer("cols_t", torch.stack([c.T for _, c in mats]))  # V x W x w
        std_t = torch.tensor([float(s) for s in std]).view(1, 3, 1, 1)
        mean_t = torch.tensor([float(m) for m in mean]).view(1, 3, 1, 1)
        # (x / 255 - mean) / std as one multiply-add; it commutes with the matrices (their rows sum to one).
        self.register_buffer("scale", 1.0 / (255.0 * std_t))
        self.register_buffer("shift", -mean_t / std_t)
        # Post-hoc logit adjustment per member, decision.adjust's softmax(log p - tau log prior) written as
        # p * prior^-tau renormalised: decision = [(train_class_counts, tau), ...]; tau 0 leaves p as it is.
        decision = list(decision) if decision is not None else [(None, 0.0)] * len(models)
        self.adjusted = [float(tau) != 0.0 for _, tau in decision]
        weights = []
        for counts, tau in decision:
            if float(tau) == 0.0:
                weights.append(torch.ones(self.num_classes_of(counts)))
                continue
            counts_t = torch.as_tensor(counts, dtype=torch.float64)
            log_prior = labels.log_prior(counts_t, "the decision rule", empty_ok=True, dtype=counts_t.dtype)
            w = torch.exp(-float(tau) * (log_prior - log_prior.min()))  # scaled: only ratios matter
            weights.append((w / w.max()).float())
        self.register_buffer("class_weights", torch.stack(weights) if any(self.adjusted) else torch.ones(1))
        self.views = tuple(views)
        self.storage_size = tuple(int(v) for v in storage_size)
        self.channels_last = channels_last

    def preprocess(self, images: torch.Tensor, view: int) -> torch.Tensor:
        x = torch.matmul(torch.matmul(self.rows[view], images.float()), self.cols_t[view])
        x = x * self.scale + self.shift
        # NHWC is faster for these convolutions on the CPU (bench/results/models.md); a no-op in ONNX.
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @staticmethod
    def num_classes_of(counts) -> int:
        return len(counts) if counts is not None else 1

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        member_sums = [None] * len(self.models)
        for v in range(len(self.views)):
            x = self.preprocess(images, v)
            for m, model in enumerate(self.models):
                p = torch.softmax(model(x).float(), dim=1)
                member_sums[m] = p if member_sums[m] is None else member_sums[m] + p
        total = None
        for m, p in enumerate(member_sums):
            p = p / len(self.views)
            if self.adjusted[m]:
                p = p * self.class_weights[m]
                p = p / p.sum(dim=1, keepdim=True)
            total = p if total is None else total + p
        return total / len(self.models)


def deployable(members, views=("identity",), channels_last: bool = False, taus=None) -> Deployable:
    """A Deployable (on the CPU) from loaded ensemble members (run.Member); taus: each member's decision tau
    (None: the checkpoints' own)."""
    pre = members[0].record.preprocessing
    taus = decision_taus(members) if taus is None else taus
    return Deployable([build_model(m, "cpu") for m in members], pre.storage_size, pre.img_size, pre.mean,
                      pre.std, views=views, channels_last=channels_last,
                      decision=[(m.record.train_class_counts, t) for m, t in zip(members, taus)])


def example_input(storage_size, batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, 3, *storage_size), dtype=torch.uint8, generator=gen)


def export_onnx(module: Deployable, path: str | Path) -> Path:
    """ONNX file with input `images` (uint8, dynamic batch) and output `probs`."""
    path = Path(path)
    try:
        import onnx  # noqa: F401  (torch.onnx needs it)
    except ImportError:
        raise UserError("--format onnx needs the onnx package: pip install onnx onnxruntime") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    channels_last, module.channels_last = module.channels_last, False
    try:
        with warnings.catch_warnings():
            # The TorchScript-based exporter (deprecated since torch 2.9, hence the filter): the
            # torch.export-based one needs onnxscript, which is not a dependency.
            warnings.simplefilter("ignore", DeprecationWarning)
            _ignore_fixed_size_tracer_warnings()
            torch.onnx.export(module.eval(), (example_input(module.storage_size),), str(path), dynamo=False,
                              input_names=["images"], output_names=["probs"], opset_version=ONNX_OPSET,
                              dynamic_axes={"images": {0: "batch"}, "probs": {0: "batch"}})
    finally:
        module.channels_last = channels_last
    return path


def export_torchscript(module: Deployable, path: str | Path) -> Path:
    """A traced, frozen TorchScript file (torch.jit.load(path)); the batch size stays free because
    nothing in these models branches on it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # torch 2.14 marks TorchScript deprecated in favour of torch.export; it still is what C++ (libtorch)
        # and older deployments load, and the file round-trips exactly (tests/test_export.py).
        warnings.simplefilter("ignore", FutureWarning)
        _ignore_fixed_size_tracer_warnings()
        traced = torch.jit.trace(module.eval(), example_input(module.storage_size), check_trace=False)
        traced = torch.jit.freeze(traced)
        return _write_serialised(lambda buffer: torch.jit.save(traced, buffer), path)


def _ignore_fixed_size_tracer_warnings() -> None:
    """TF "SAME" padding (models/layers.py, the tf_ and Lite models), ViT's patch grid and Swin's window
    padding and shift are computed from the feature map's height and width, which the tracer warns it turns
    into constants. Here that is right: the Deployable resizes every input to img_size first, so H and W are
    the same for every call of the exported graph (only the batch is free), and the parity tests check the
    result at several batch sizes."""
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning,
                            module=r"imgcls\.models\.(layers|vit|swin)")


def export_program(module: Deployable, path: str | Path) -> Path:
    """A torch.export program (.pt2; `torch.export.load(path).module()(images)`), the format torch now
    recommends over TorchScript; the batch dimension stays free (1 to 4096 images)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.export.export(module.eval(), (example_input(module.storage_size),),
                                      dynamic_shapes={"images": {0: batch}})
    return _write_serialised(lambda buffer: torch.export.save(program, buffer), path)


def _write_serialised(save: Callable[[io.BytesIO], None], path: Path) -> Path:
    """Serialise into memory, then write the bytes with Python's own file I/O: torch's C++ file writer turns
    a full disk into a RuntimeError and, from its destructor, an abort (exit -6) that no caller can catch;
    here it is an OSError with the file's name, which export.py reports in one line."""
    buffer = io.BytesIO()
    save(buffer)
    try:
        with open(path, "wb") as f:
            f.write(buffer.getbuffer())
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from err
    return path


def write_metadata(out_dir: str | Path, class_names: Sequence[str], preprocessing: dict, views: Sequence[str],
                   sources: Sequence[str], model_file: str, taus: Sequence[float] = ()) -> None:
    """classes.json and preprocessing.json beside the model: what the file expects and what it returns."""
    out_dir = Path(out_dir)
    (out_dir / "classes.json").write_text(json.dumps(list(class_names), indent=2) + "\n")
    info = {
        "model_file": model_file,
        "input": {"name": "images", "dtype": "uint8", "layout": "NCHW", "channels": "RGB",
                  "height": int(preprocessing["storage_size"][0]), "width": int(preprocessing["storage_size"][1]),
                  "batch": "any"},
        "output": {"name": "probs", "meaning": "class probabilities, in the order of classes.json"},
        "inside_the_model": {"resize_to": list(preprocessing["img_size"]), "resize": "bilinear, antialiased "
                             "when shrinking", "mean": list(preprocessing["mean"]), "std": list(preprocessing["std"]),
                             "tta_views": list(views), "ensemble_of": list(sources),
                             "decision_tau": [float(t) for t in taus] or [0.0] * len(sources)},
        "to_get_the_input": "decode to RGB, resize to height x width with PIL bilinear (as imgcls does), "
                            "stack as uint8 N x 3 x H x W",
    }
    (out_dir / "preprocessing.json").write_text(json.dumps(info, indent=2) + "\n")


# --format name -> (writer, file name): export.py and its --help read this table, so a new format is one
# function and one line here.
WRITERS = {"onnx": (export_onnx, "model.onnx"), "torchscript": (export_torchscript, "model.pt"),
           "torch-export": (export_program, "model.pt2")}
FORMATS = tuple(WRITERS)
