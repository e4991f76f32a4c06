"""Benchmark: images/s delivered ready to train, the project's pipeline vs a torchvision DataLoader.

    python bench/data.py [--data DIR] [--baseline-images 4096] [--repeats 3] [--threads 2]

Ours: cached uint8 tensor + EpochSampler + TrainAugment (batched, per-sample params) at the storage size,
batches spread over --threads Python threads (one torch thread each).
Baseline: an ImageFolder-style Dataset (PIL open per image) + transforms.Compose with the same augmentations
(hflip .5, rotation 10, brightness .2, normalise) + DataLoader(num_workers=2). Both deliver normalised float
batches of 256 with labels. Also measured: first start (index + decode + cache write) and second start (cache
read), through the same Config and default cache location ($XDG_CACHE_HOME/imgcls) as `train.py --data DIR`
(XDG_CACHE_HOME points at a temporary folder, emptied before each first start, so it is a cold start and the
user's cache is untouched), each the median of --repeats; and the memory of the cached tensor. Each throughput is the median of --repeats epochs after one
warm-up epoch; the last line is the speed ratio.

Without --data it uses ../shared/data/fashion-small (relative to the repository) when present, otherwise it
writes 4,000 generated 60x80 JPEGs to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from common import REPO  # noqa: E402,F401  (first: it puts the checkout on the import path)

from imgcls.presets import resolve  # noqa: E402
from imgcls.data import load_dataset  # noqa: E402
from imgcls.data.augment import TrainAugment  # noqa: E402
from imgcls.data.samplers import EpochSampler  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def generated_images(root: str, n: int = 4000, classes: int = 10) -> str:
    """Class-per-folder JPEGs of 60x80 with smooth random content (so JPEG sizes are realistic)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = os.path.join(root, f"class_{i % classes}")
        os.makedirs(folder, exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 255, (10, 8, 3), dtype=np.uint8))
        coarse.resize((60, 80), Image.BILINEAR).save(os.path.join(folder, f"{i}.jpg"), quality=75)
    return root


def load_like_train_py(data: str, log=None):
    """What `train.py --data DATA` does to get its pixels: the resolved Config's cache_dir, workers, label column.

    The cache_dir is the Config default ('default' -> $XDG_CACHE_HOME/imgcls), so this measures the cached
    path the command line takes, not a cache folder the command line would never use.
    """
    cfg = resolve("v1", {"data": data})
    return load_dataset(cfg.data, label_col=cfg.label_col, size=cfg.storage_size, cache_dir=cfg.cache_dir,
                        workers=cfg.workers, log=log or (lambda *_: None))


def ours_epoch(images, labels, sampler, augment, epoch, batch, threads) -> int:
    """One epoch of ready-to-train batches; returns the number of images delivered.

    `threads` Python threads each gather + augment every threads-th batch with one intra-op torch thread:
    on a busy 2-core machine that beats one thread running 2-way OpenMP (whose barriers spin while the
    other core is taken). Each batch has its own generator seeded from (epoch, batch number), so the result
    does not depend on which thread ran it.
    """
    batches = sampler.indices(epoch).split(batch)

    def work(k: int) -> int:
        generator = torch.Generator().manual_seed(epoch * 1_000_003 + k)
        idx = batches[k]
        x, y = augment(images[idx], generator), labels[idx]
        return x.shape[0] if len(y) == x.shape[0] else 0

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(work, range(len(batches))))


class PathDataset(torch.utils.data.Dataset):
    """What most projects do: open, decode and transform one image per __getitem__ with PIL."""

    def __init__(self, paths, labels, transform):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as im:
            return self.transform(im.convert("RGB")), int(self.labels[i])


def baseline_loader(paths, labels, size, batch):
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    transform = transforms.Compose([
        transforms.Resize(size),
        transforms.RandomHorizontalFlip(0.5),
        transforms.RandomRotation(10, interpolation=InterpolationMode.BILINEAR),
        transforms.ColorJitter(brightness=0.2),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])
    return torch.utils.data.DataLoader(PathDataset(paths, labels, transform), batch_size=batch, shuffle=True,
                                       num_workers=2, persistent_workers=True)


def _rss_mib() -> float:
    """Resident memory now (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return _peak_rss_mib()


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="data set (default: fashion-small if present, else generated)")
    parser.add_argument("--baseline-images", type=int, default=4096, help="images per baseline epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="threads for our pipeline, one torch thread each "
                        "(the baseline has 2 worker processes)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    tmp = tempfile.mkdtemp(prefix="imgcls-bench-")
    data = args.data
    if data is None:
        shared = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "fashion-small"))
        data = shared if os.path.isdir(shared) else generated_images(os.path.join(tmp, "images"))
    os.environ["XDG_CACHE_HOME"] = os.path.join(tmp, "xdg")  # the default location, in a throwaway folder

    rss_before = _rss_mib()
    firsts, seconds_ = [], []
    for r in range(args.repeats):
        shutil.rmtree(os.environ["XDG_CACHE_HOME"], ignore_errors=True)  # cold: nothing cached yet
        first_s, ds = timed(lambda: load_like_train_py(data))
        if r == 0:
            first_peak_growth = _peak_rss_mib() - rss_before
        del ds
        second_s, ds = timed(lambda: load_like_train_py(data))
        firsts.append(first_s)
        seconds_.append(second_s)
    first_s, second_s = statistics.median(firsts), statistics.median(seconds_)
    n, _, height, width = ds.images.shape
    cache_bytes = ds.images.untyped_storage().nbytes()

    sampler = EpochSampler(ds.labels, "natural", seed=0)
    augment = TrainAugment((height, width), MEAN, STD)
    ours_epoch(ds.images, ds.labels, sampler, augment, 0, args.batch, args.threads)  # warm-up
    ours = []
    for r in range(args.repeats):
        seconds, count = timed(lambda: ours_epoch(ds.images, ds.labels, sampler, augment, r + 1, args.batch,
                                                  args.threads))
        ours.append(count / seconds)

    pick = np.random.default_rng(0).permutation(n)[: min(args.baseline_images, n)]
    loader = baseline_loader([ds.paths[i] for i in pick], ds.labels[pick].numpy(), (height, width), args.batch)

    def baseline_epoch() -> int:
        return sum(len(y) for _, y in loader)

    baseline_epoch()  # warm-up: starts the workers
    base = []
    for _ in range(args.repeats):
        seconds, count = timed(baseline_epoch)
        base.append(count / seconds)

    ours_med, base_med = statistics.median(ours), statistics.median(base)
    print(f"data: {data}  ({n} images, storage {height}x{width}, {len(ds.class_names)} classes, "
          f"{len(ds.skipped)} skipped)")
    print(f"torch {torch.__version__}, ours: {args.threads} threads x 1 torch thread, batch {args.batch}, "
          f"median of {args.repeats} epochs after 1 warm-up")
    print()
    print("| measurement | value |")
    print("|---|---|")
    print(f"| first start: index + decode + cache write (default cache, median of {args.repeats}) "
          f"| {first_s:.1f} s |")
    print(f"| second start: index + cache read (default cache, median of {args.repeats}) | {second_s:.1f} s |")
    print(f"| cached uint8 tensor | {cache_bytes / 2**20:.0f} MiB "
          f"({cache_bytes / (n * 3 * height * width):.2f} x N*3*H*W) |")
    print(f"| peak memory growth during first start (index + decode) | {first_peak_growth:.0f} MiB "
          f"({first_peak_growth * 2**20 / cache_bytes:.2f} x the tensor) |")
    print(f"| ours: cached uint8 + EpochSampler + TrainAugment ({n} img/epoch) | {ours_med:,.0f} img/s |")
    print(f"| baseline: PIL Dataset + Compose + DataLoader(num_workers=2) ({len(pick)} img/epoch) "
          f"| {base_med:,.0f} img/s |")
    print()
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"{ours_med / base_med:.1f}x")


if __name__ == "__main__":
    main()
