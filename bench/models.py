"""Speed of the project's backbones against torchvision's, same weights, same run.

For each model, input size and memory format, measures a training step (forward + backward + AdamW step) and
inference (eval, inference_mode) in images/s, alternating project and torchvision repeats (and which goes first)
so that load from other processes hits both alike. Prints a markdown table of the median images/s of each and
the median over repeats of the paired ratio project / torchvision (a pair is measured back to back, so a burst of
load from other processes cancels out); `--out FILE` also writes the table, with the command line, to FILE.

    python bench/models.py                         # defaults: a few minutes on 2 CPU cores
    python bench/models.py --models convnext_tiny --sizes 224x224:8 --repeats 3
    python bench/models.py --models vit_b_16 swin_t --sizes 224x224:8 --formats contiguous
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torchvision.ops import StochasticDepth

from common import REPO  # noqa: E402,F401  (first: it puts the checkout on the import path)
from imgcls.models import create_model  # noqa: E402

FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def parse_size(text: str) -> tuple[int, int, int]:
    """'HxW:batch' -> (H, W, batch)."""
    shape, _, batch = text.partition(":")
    h, w = shape.split("x")
    return int(h), int(w), int(batch or 8)


def build_pair(name: str, num_classes: int, drop_path: float):
    """The project's model and torchvision's, with identical weights and stochastic depth (torchvision's ViT
    has none: the project's ViT is built without it too)."""
    builder = getattr(tvm, name)
    if name.startswith("vit_"):
        ref, drop_path = builder(num_classes=num_classes), 0.0
    elif name.startswith("swin_"):  # its builders fix the rate per variant: set it on the layers
        ref = builder(num_classes=num_classes)
        layers = [m for m in ref.modules() if isinstance(m, StochasticDepth)]
        for i, layer in enumerate(layers):
            layer.p = drop_path * i / max(len(layers) - 1, 1)
    else:
        ref = builder(num_classes=num_classes, stochastic_depth_prob=drop_path)
    ours = create_model(name, num_classes, drop_path_rate=drop_path, log=lambda *_: None)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def make_step(model, mode: str, x: torch.Tensor, y: torch.Tensor):
    """A closure running one training step or one inference batch."""
    if mode == "train":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
    else:
        model.eval()

        def step():
            with torch.inference_mode():
                model(x)
    return step


def images_per_s(step, steps: int, batch: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["efficientnet_b0", "efficientnet_v2_s", "convnext_tiny"])
    p.add_argument("--sizes", nargs="+", default=["80x60:32", "224x224:8"], help="HxW:batch")
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    p.add_argument("--modes", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    p.add_argument("--repeats", type=int, default=7, help="timed repeats per implementation (median reported)")
    p.add_argument("--steps", type=int, default=1, help="batches per timed repeat")
    p.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth for both implementations")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", help="also write the table (and this command) to this markdown file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows, ratios = [], []
    header = ("| model | HxW | batch | memory format | mode | project img/s | torchvision img/s | ratio |\n"
              "|---|---|---|---|---|---:|---:|---:|")
    print(header, flush=True)
    for name in args.models:
        ours, ref = build_pair(name, 44, args.drop_path)
        for size in args.sizes:
            h, w, batch = parse_size(size)
            for fmt in args.formats:
                ours, ref = ours.to(memory_format=FORMATS[fmt]), ref.to(memory_format=FORMATS[fmt])
                x = torch.randn(batch, 3, h, w).to(memory_format=FORMATS[fmt])
                y = torch.randint(0, 44, (batch,))
                for mode in args.modes:
                    steps = {"project": make_step(ours, mode, x, y), "torchvision": make_step(ref, mode, x, y)}
                    for step in steps.values():
                        step()  # warm-up (allocator, oneDNN kernel selection)
                    speed = {"project": [], "torchvision": []}
                    for r in range(args.repeats):
                        order = ["project", "torchvision"] if r % 2 == 0 else ["torchvision", "project"]
                        for impl in order:
                            speed[impl].append(images_per_s(steps[impl], args.steps, batch))
                    mine, theirs = statistics.median(speed["project"]), statistics.median(speed["torchvision"])
                    ratio = statistics.median(a / b for a, b in zip(speed["project"], speed["torchvision"]))
                    ratios.append(ratio)
                    row = (f"| {name} | {h}x{w} | {batch} | {fmt} | {mode} | {mine:.1f} | {theirs:.1f} | "
                           f"{ratio:.3f} |")
                    rows.append(row)
                    print(row, flush=True)
    summary = f"\nMedian ratio over all rows: {statistics.median(ratios):.3f} (min {min(ratios):.3f})"
    print(summary)
    if args.out:
        command = "python bench/models.py " + " ".join(sys.argv[1:] if argv is None else argv)
        with open(args.out, "w") as f:
            f.write(f"# Model speed: project vs torchvision\n\nCommand: `{command}`\n\n"
                    f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs; medians of "
                    f"{args.repeats} repeats x {args.steps} batches, project and torchvision interleaved; "
                    "ratio = median of the paired per-repeat ratios.\n\n"
                    + header + "\n" + "\n".join(rows) + "\n" + summary + "\n")


if __name__ == "__main__":
    main()
