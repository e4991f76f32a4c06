"""The training loop's cost per step against a bare PyTorch loop, eager and under torch.compile.

The project's side is the step train.py runs (imgcls.engine.train_step on a Trainer built by build_trainer from
a preset, default flags but --batch-size and --compile): its augmentation, loss, EMA, schedule and bookkeeping.
The reference is the loop a user writes by hand (bench/plain.py's: flip by torch.where, normalise, CE, AdamW,
OneCycleLR), on the same model weights, the same images and the same batches. Both run in this process, their
repeats alternating (and which goes first) so that load from elsewhere hits both alike.

For each batch size and compile setting: the first step's seconds (where torch.compile compiles), the median
steady-state images/s of each side, the median of the paired ratio project / reference, and for compile the
images after which its one-time cost is paid back (against the same side eager).

    python bench/loop.py                                   # v6 at batch 16 and 64, eager and compiled
    python bench/loop.py --version v5 --batches 16 --steps 10 --repeats 3 --compile false
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# A fresh TorchInductor cache, so that the first compile here costs what a user's first compile costs (a later
# run on the same machine finds its kernels cached and compiles faster).
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common import REPO, publish  # noqa: E402  (first: it puts the checkout on the import path)
from imgcls.checkpoint import RunState  # noqa: E402
from imgcls.engine import train_step  # noqa: E402
from imgcls.presets import resolve  # noqa: E402
from imgcls.trainer import Stage, build_trainer, fold_indices, prepare_data  # noqa: E402


def project_side(cfg, data, tmp: str, compiled: bool):
    """train.py's step on a fresh Trainer (as --compile sets it); returns (step(batch) -> None, the Trainer)."""
    train_idx, val_idx = fold_indices(data[1], 0)
    t = build_trainer(dataclasses.replace(cfg, compile=compiled), data, Stage(Path(tmp), train_idx, val_idx), None,
                      lambda *a, **k: None)
    state, gen = RunState(), torch.Generator().manual_seed(0)

    def step(batch: torch.Tensor) -> None:
        train_step(t, state, batch, gen, t.criterion)
    return step, t


def reference_side(t, compiled: bool):
    """bench/plain.py's step: the same model weights, images and labels, nothing of imgcls's training code."""
    model = copy.deepcopy(t.model).train()
    net = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=10_000, pct_start=0.1)
    mean = torch.tensor(t.pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(t.pre.std).view(1, 3, 1, 1)
    images, labels = t.images, t.labels

    def step(batch: torch.Tensor) -> None:
        x = images[batch]
        flip = torch.rand(len(batch)) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        x = ((x.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(net(x), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return step


def timed(step, batches) -> float:
    start = time.perf_counter()
    for batch in batches:
        step(batch)
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=f"{REPO}/../shared/data/fashion-small")
    p.add_argument("--version", default="v6", help="the preset whose training step is measured")
    p.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    p.add_argument("--steps", type=int, default=12, help="steps per repeat (after the first, compiling, step)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", nargs="+", default=["false", "true"], choices=["false", "true"])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", default=None, help="also write the table to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows, paid = [], []
    with tempfile.TemporaryDirectory() as tmp:
        base = resolve(args.version, dict(data=args.data, out=tmp, epochs=1, leak_check=False,
                                          cache_dir="default", device="cpu"))
        data = prepare_data(base, lambda *a, **k: None)
        for batch_size in args.batches:
            cfg = dataclasses.replace(base, batch_size=batch_size)
            gen = torch.Generator().manual_seed(batch_size)
            eager = {}
            for compiled in (c == "true" for c in args.compile):
                ours, t = project_side(cfg, data, f"{tmp}/b{batch_size}-{compiled}", compiled)
                theirs = reference_side(t, compiled)
                pick = lambda: torch.as_tensor(t.train_idx)[torch.randperm(len(t.train_idx), generator=gen)  # noqa
                                                            [:batch_size]]
                first = {"imgcls": timed(ours, [pick()])}  # imgcls first: its compile is the cold one
                first["reference"] = timed(theirs, [pick()])
                rates = {"imgcls": [], "reference": []}
                ratios = []
                for r in range(args.repeats):
                    batches = [pick() for _ in range(args.steps)]
                    sides = [("imgcls", ours), ("reference", theirs)]
                    secs = {name: timed(step, batches) for name, step in (sides if r % 2 == 0 else sides[::-1])}
                    for name in secs:
                        rates[name].append(args.steps * batch_size / secs[name])
                    ratios.append(secs["reference"] / secs["imgcls"])
                med = {name: statistics.median(v) for name, v in rates.items()}
                if not compiled:
                    eager = med
                rows.append(f"| {batch_size} | {'yes' if compiled else 'no'} | {first['imgcls']:.1f} | "
                            f"{first['reference']:.1f} | {med['imgcls']:.1f} [{min(rates['imgcls']):.1f}, "
                            f"{max(rates['imgcls']):.1f}] | {med['reference']:.1f} [{min(rates['reference']):.1f}, "
                            f"{max(rates['reference']):.1f}] | {statistics.median(ratios):.2f} "
                            f"[{min(ratios):.2f}, {max(ratios):.2f}] |")
                if compiled and eager:
                    for name in ("imgcls",):  # the reference's first step hit a warm cache
                        # the compiled side's extra seconds on step one, over the seconds it saves per image
                        per_image = 1 / eager[name] - 1 / med[name]
                        extra = first[name] - batch_size / med[name]
                        paid.append(f"- batch {batch_size}, {name}: compiled {med[name] / eager[name]:.2f}x the "
                                    f"eager images/s; its first step costs {extra:.0f} s more, "
                                    + (f"paid back after {extra / per_image:,.0f} images"
                                       if per_image > 0 else "never paid back"))
    lines = [f"# One training step: imgcls ({args.version}'s train.py step) against a bare PyTorch loop", "",
             "    python bench/loop.py " + " ".join(argv if argv is not None else sys.argv[1:]), "",
             f"CPU, {args.threads} threads, {args.steps} steps per repeat, {args.repeats} repeats alternating; "
             "images/s: median [min, max]; ratio: the median of each repeat's reference seconds / imgcls seconds "
             "(above 1: imgcls is faster). With compile, imgcls's side compiles first, into an empty TorchInductor "
             "cache; the reference's compile then finds the same model's kernels cached, so its first step is "
             "no measure of a compile.", "",
             "| batch | compile | first step s: imgcls | reference | imgcls img/s | reference img/s | "
             "imgcls / reference |", "|---:|---|---:|---:|---:|---:|---:|", *rows, "", *paid]
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
