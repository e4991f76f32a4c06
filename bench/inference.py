#!/usr/bin/env python3
"""CPU inference of one trained run: PyTorch fp32, TorchScript, ONNX Runtime fp32 and int8 (and torch.ao
int8, the other quantiser considered): images/s at batch 1 and 64, and accuracy / macro-F1 on the run's
held-out test split.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/inference.py --run runs/v1 [--threads 2]

Every backend gets the same uint8 images at the storage size and includes the resize and normalisation.
Throughput is the median of --repeats interleaved timings (one backend after another in each repeat, so a
noisy neighbour slows all of them alike). Writes bench/results/inference.md (or --out).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from common import REPO, layout  # noqa: E402,F401  (first: it puts the checkout on the import path)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import imgcls  # noqa: E402
from imgcls import export, quantize  # noqa: E402
from imgcls.data import load_dataset  # noqa: E402
from imgcls.data.splits import load_split  # noqa: E402
from imgcls.metrics import classification_metrics  # noqa: E402


def held_out(clf, limit: int | None):
    """uint8 images and labels (model class order) of the run's held-out test split."""
    member = clf.members[0]
    cfg = member.record.config
    data = load_dataset(cfg.get("data"), label_col=cfg.get("label_col", "subCategory"), size=clf.storage_size,
                        cache_dir=cfg.get("cache_dir"), workers=2, log=lambda *a, **k: None)
    test = np.asarray(load_split(str(member.path.parent / layout.SPLIT), data.paths)["test"], dtype=np.int64)
    if limit:
        test = test[:limit]
    where = {name: i for i, name in enumerate(clf.classes)}
    lookup = np.array([where[n] for n in data.class_names])
    return data.images[torch.as_tensor(test)], lookup[data.labels.numpy()[test]]


def torch_ao_int8(module, calibration: torch.Tensor):
    """FX graph-mode static quantisation (x86 backend) of the network behind the float preprocessing."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    torch.backends.quantized.engine = "x86"
    net = module.models[0]
    example = module.preprocess(calibration[:2], 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(net, get_default_qconfig_mapping("x86"), (example,))
        with torch.no_grad():
            for i in range(0, len(calibration), 32):
                prepared(module.preprocess(calibration[i:i + 32], 0))
        quantised = convert_fx(prepared)

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(quantised(module.preprocess(x, 0)), 1).numpy()
    return run


def backends(clf, tmp: Path, calibration: torch.Tensor, threads: int, with_torch_ao: bool) -> dict:
    """name -> function(uint8 batch) -> probabilities."""
    module = export.deployable(clf.members, clf.views, channels_last=True)
    onnx_file = export.export_onnx(module, tmp / "model.onnx")
    ts_file = export.export_torchscript(module, tmp / "model.pt")
    int8_file = quantize.quantize_onnx(onnx_file, tmp / "model.int8.onnx", calibration)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(ts_file))
    ort_fp32 = quantize.ort_session(onnx_file, threads)
    ort_int8 = quantize.ort_session(int8_file, threads)

    def ts(x):
        with torch.no_grad():
            return scripted(x).numpy()

    found = {
        "PyTorch fp32 (imgcls.load, eager)": clf.probabilities,
        "TorchScript fp32 (frozen)": ts,
        "ONNX Runtime fp32": lambda x: quantize.run_session(ort_fp32, x.numpy(), len(x)),
        "ONNX Runtime int8 (imgcls --int8)": lambda x: quantize.run_session(ort_int8, x.numpy(), len(x)),
    }
    if with_torch_ao:
        try:
            found["torch.ao int8 (FX, x86)"] = torch_ao_int8(export.deployable(clf.members, clf.views), calibration)
        except Exception as exc:  # recorded in the table: the comparison is the point, not this backend
            print(f"torch.ao int8 failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    sizes = {"model.onnx": onnx_file, "model.pt": ts_file, "model.int8.onnx": int8_file}
    return found, {k: v.stat().st_size / 2**20 for k, v in sizes.items()}


def throughput(fn, images: torch.Tensor, batch: int, seconds: float) -> float:
    """images/s of fn over consecutive batches for about `seconds` (after one warm-up batch)."""
    fn(images[:batch])
    done, start, i = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        x = images[i:i + batch] if i + batch <= len(images) else images[:batch]
        fn(x)
        done += len(x)
        i = (i + batch) % max(1, len(images) - batch)
    return done / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seconds", type=float, default=4.0, help="per timing")
    p.add_argument("--limit", type=int, help="evaluate on the first N test images only")
    p.add_argument("--calibration-images", type=int, default=256)
    p.add_argument("--no-torch-ao", action="store_true")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "inference.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    clf = imgcls.load(args.run, tta=False, batch_size=64)
    images, labels = held_out(clf, args.limit)
    calibration = quantize.calibration_images(clf.members, count=args.calibration_images, log=lambda *a: None)
    with tempfile.TemporaryDirectory() as tmp:
        fns, sizes = backends(clf, Path(tmp), calibration, args.threads, not args.no_torch_ao)
        quality, reference = {}, None
        for name, fn in fns.items():
            probs = np.concatenate([fn(images[i:i + 64]) for i in range(0, len(images), 64)])
            pred = probs.argmax(1)
            reference = pred if reference is None else reference
            m = classification_metrics(labels, pred, clf.classes)
            quality[name] = (m["accuracy"], m["macro_f1"], float(np.mean(pred == reference)))
            print(f"{name}: accuracy {m['accuracy']:.4f} macro-F1 {m['macro_f1']:.4f} "
                  f"top-1 agreement with fp32 {quality[name][2]:.4f}", flush=True)
        speed = {(n, b): [] for n in fns for b in (1, 64)}
        for r in range(args.repeats):
            for batch in (1, 64):
                for name, fn in fns.items():
                    speed[(name, batch)].append(throughput(fn, images, batch, args.seconds))
            print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{n.split(' (')[0]} b{b} {v[-1]:.0f}"
                                                                 for (n, b), v in speed.items()), flush=True)

    load = os.getloadavg()[1]  # other jobs on the machine: the numbers are only as quiet as it was
    first = next(iter(fns))
    rows = []
    for name in fns:
        s1, s64 = np.median(speed[(name, 1)]), np.median(speed[(name, 64)])
        # the ratio pairs timings of the same repeat (same machine load), as bench/models.py does
        ratio = np.median(np.array(speed[(name, 64)]) / np.array(speed[(first, 64)]))
        ratio1 = np.median(np.array(speed[(name, 1)]) / np.array(speed[(first, 1)]))
        acc, f1, agree = quality[name]
        rows.append(f"| {name} | {s1:.0f} | {s64:.0f} | {ratio1:.2f}x | {ratio:.2f}x | {acc:.4f} | {f1:.4f} | "
                    f"{agree:.4f} |")
    model_name = clf.members[0].record.model_name
    table = "\n".join(["| backend | img/s batch 1 | img/s batch 64 | vs PyTorch fp32 (b1) | vs PyTorch fp32 (b64) | "
                       "test accuracy | test macro-F1 | top-1 = fp32 |", "|---|---:|---:|---:|---:|---:|---:|---:|",
                       *rows])
    text = (f"# Inference on the CPU\n\n    {' '.join(['OMP_WAIT_POLICY=PASSIVE', 'python', *sys.argv])}\n\n"
            f"Run {args.run}: {model_name}, {len(clf.classes)} classes, storage "
            f"{'x'.join(map(str, clf.storage_size))}, input {'x'.join(map(str, clf.preprocessing['img_size']))}, "
            f"{len(clf.members)} model(s), no TTA. {len(images)} held-out test images; {args.threads} threads "
            f"(torch and onnxruntime); img/s: median of {args.repeats} interleaved timings of "
            f"{args.seconds:.0f} s each; "
            f"ratios: median of the per-repeat ratios; "
            f"int8 calibrated on {len(calibration)} training images. torch {torch.__version__}, onnxruntime "
            f"{__import__('onnxruntime').__version__}, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs, 5-minute load average {load:.1f} at the end. Files: "
            + ", ".join(f"{k} {v:.1f} MiB" for k, v in sizes.items()) + ".\n\n" + table + "\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
