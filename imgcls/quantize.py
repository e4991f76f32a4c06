"""int8 post-training quantisation for CPU inference: onnxruntime's static quantiser on the exported ONNX
graph, calibrated on the run's own training images (never its held-out test split).

Why onnxruntime and not torch.ao: bench/inference.py measured both on the same run (see
bench/results/inference.md); ORT's int8 graph is the faster of the two on this CPU, and it is one file a user
can run without the project. Only the networks are quantised (every operator onnxruntime can quantise:
convolutions, SiLU, squeeze-excitation, the head); the resize/normalise matrices before them and the
softmax/averaging after them stay in float: they are cheap, and quantising them only adds error.
Calibration ranges are the 0.001-99.999th percentiles of each tensor: MinMax ranges, set by a few outlier
activations, cost the fashion-small B0 run more accuracy (bench/results/inference.md).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from . import export
from .errors import UserError
from .run import INT8_DIR, decision_taus, run_data, run_root_of

CALIBRATION_IMAGES = 256
NETWORK_SCOPE = "/models."  # ONNX node names of the ensemble members' layers (Deployable.models)


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise UserError("int8 and ONNX inference need onnxruntime (and onnx to export): "
                        "pip install onnx onnxruntime") from None
    return onnxruntime


def ort_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session for `path` (threads None = onnxruntime's default)."""
    ort = _onnxruntime()
    options = ort.SessionOptions()
    # No busy-waiting between operators: on a shared CPU, spinning threads waited for descheduled peers and
    # ran batch-1 inference 10x slower (34 vs 376 img/s measured here), as OMP_WAIT_POLICY=PASSIVE does for torch.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(session, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Probabilities from an exported model's session, fed `batch_size` uint8 images at a time."""
    out = [session.run(None, {"images": images[i:i + batch_size]})[0] for i in range(0, len(images), batch_size)]
    return np.concatenate(out).astype(np.float32, copy=False)


def quantize_onnx(fp32_path: str | Path, int8_path: str | Path, calibration: torch.Tensor,
                  per_channel: bool = True) -> Path:
    """Static int8 quantisation (QDQ, int8 weights per output channel, uint8 activations, percentile
    ranges) of an exported model's networks, calibrated on `calibration` (uint8 N x 3 x H x W at the storage size)."""
    _onnxruntime()
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # One image per calibration run: onnxruntime's histogram calibrators stack each tensor's outputs over
    # the runs and fail when a last, smaller batch gives them another shape.
    batches = [calibration[i:i + 1].numpy() for i in range(len(calibration))]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            batch = next(self.it, None)
            return None if batch is None else {"images": batch}

    int8_path = Path(int8_path)
    prepared = int8_path.with_name(int8_path.stem + ".prep.onnx")
    # Shape inference and graph fusions (Conv+BN etc.) first, as onnxruntime's docs advise for static
    # quantisation; the prepared file is an intermediate and is removed. auto_merge: Swin pads to its window
    # with sizes computed in the graph, which symbolic inference cannot prove equal without merging (it
    # otherwise fails and leaves sym_shape_infer_temp.onnx in the working directory); the CNNs have nothing
    # to merge. Its "unable to determine ... treat as equal" warnings are about those pads, so they are muted.
    shape_log = logging.getLogger("onnxruntime.tools.symbolic_shape_infer")
    level = shape_log.level
    shape_log.setLevel(logging.ERROR)
    try:
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False, auto_merge=True)
    finally:
        shape_log.setLevel(level)
    import onnx
    outside = [n.name for n in onnx.load(str(prepared)).graph.node if not n.name.startswith(NETWORK_SCOPE)]
    try:
        quantize_static(str(prepared), str(int8_path), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.Percentile, nodes_to_exclude=outside)
    finally:
        prepared.unlink(missing_ok=True)
    return int8_path


def calibration_images(members, count: int = CALIBRATION_IMAGES, seed: int = 0, log=print) -> torch.Tensor:
    """`count` images drawn (seeded) from the run's training data: everything but its held-out test split."""
    dataset, pool = run_data(members, "train", log=log)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(pool, size=min(count, len(pool)), replace=False))
    return dataset.images[torch.as_tensor(chosen)]


def int8_model_for(members, views, taus=None, log=print) -> Path:
    """The int8 ONNX model for these members, views and taus: RUN/export-int8/model.int8.onnx (FOLD/export-int8/
    for one model), made on the first call (export + calibration + quantisation), reused while they match."""
    out = run_root_of(members) / INT8_DIR
    int8_path, meta_path = out / "model.int8.onnx", out / "int8.json"
    key = {"sources": [str(Path(m.path).resolve()) for m in members],
           "mtimes": [Path(m.path).stat().st_mtime for m in members], "views": list(views),
           "decision_taus": [float(t) for t in (taus if taus is not None else decision_taus(members))]}
    if int8_path.is_file() and meta_path.is_file() and json.loads(meta_path.read_text()) == key:
        return int8_path
    log(f"making the int8 model in {out} (once): export, calibrate on training images, quantise")
    module = export.deployable(members, views, taus=taus)
    fp32_path = export.export_onnx(module, out / "model.onnx")
    quantize_onnx(fp32_path, int8_path, calibration_images(members, log=log))
    export.write_metadata(out, members[0].record.class_names, members[0].record.preprocessing.to_dict(), views,
                          [str(m.path) for m in members], int8_path.name, key["decision_taus"])
    meta_path.write_text(json.dumps(key) + "\n")
    return int8_path

