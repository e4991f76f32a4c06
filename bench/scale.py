"""Benchmark: the decode cache as a memory mapping, against today's in-memory copy, through train.py itself.

    python bench/scale.py throughput [--repeats 3]   # (a) training images/s, mapping vs memory (warm page cache)
    python bench/scale.py ranks                      # (b) 2 torchrun ranks: memory of both (sum of PSS)
    python bench/scale.py cgroup [--limit-gb 2]      # (c) one epoch over a >= 2x-the-limit cache in a cgroup
    python bench/scale.py cold                       # (d) random batch gathers from a cold mapping

(a), (b) and (d) use ../shared/data/fashion-small (or --data) with train.py's default cache folder; every
training is `train.py --version v1 --model efficientnet_lite0` at 80x60 for 1 epoch of --epoch-samples draws
(v1's weighted sampler: random rows from the whole set, the worst case for a mapping), once with the default
`--cache-mode mmap` and once with `--cache-mode memory` (the whole cache read into the process, as before).
(c) writes a synthetic class-per-folder set of tiny PNGs decoded at 224x224 (>= 2x the limit), runs one
training epoch inside a Linux memory cgroup (v1 or v2; root), and then the same command with
`--cache-mode memory`. Each mode prints a markdown table; bench/results/scale.md collects them.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from PIL import Image

from common import REPO  # noqa: E402,F401  (first: it puts the checkout on the import path)
DEFAULT_DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "fashion-small")
TRAIN = os.path.join(REPO, "train.py")


def train_flags(data: str, out: str, mode: str, samples: int, size: str = "80x60", model: str = "efficientnet_lite0",
                extra=()) -> list[str]:
    return ["--version", "v1", "--model", model, "--pretrained", "none", "--data", data, "--img-size", size,
            "--epochs", "1", "--epoch-samples", str(samples), "--batch-size", "64", "--val-frac", "0.02",
            "--test-frac", "0.02", "--device", "cpu", "--workers", "2", "--out", out, "--restart", "true",
            "--cache-mode", mode, *extra]


def run(cmd: list[str], env=None, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=env or os.environ, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise SystemExit(f"{shlex_join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}")
    return proc


def shlex_join(cmd) -> str:
    import shlex
    return shlex.join(str(c) for c in cmd)


def train_img_s(out: str) -> float:
    from common import layout  # imgcls (and torch) only when needed: this process's memory is measured
    rows = list(csv.DictReader(open(os.path.join(layout.fold_dir(os.path.join(out, "v1"), 0), layout.SUMMARY))))
    return float(rows[-1]["train_img_s"])


# --------------------------------------------------------------------------------------------- (a)

def throughput(args) -> None:
    speeds = {"mmap": [], "memory": []}
    with tempfile.TemporaryDirectory() as tmp:
        run([sys.executable, TRAIN, *train_flags(args.data, tmp, "mmap", 64)])  # the cache exists, pages warm
        for _ in range(args.repeats):
            for mode in speeds:  # alternated, so drift hits both
                out = os.path.join(tmp, mode)
                run([sys.executable, TRAIN, *train_flags(args.data, out, mode, args.samples)])
                speeds[mode].append(train_img_s(out))
    mm, mem = statistics.median(speeds["mmap"]), statistics.median(speeds["memory"])
    print(f"`python bench/scale.py throughput --repeats {args.repeats} --samples {args.samples}`: training images/s "
          f"of train.py (v1, efficientnet_lite0 80x60, batch 64, 2 threads), median of {args.repeats}\n")
    print("| cache | images/s (median) | runs |\n|---|---:|---|")
    for mode, values in speeds.items():
        print(f"| {mode} | {statistics.median(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} |")
    print(f"\nratio mmap / memory: {mm / mem:.3f}")


# --------------------------------------------------------------------------------------------- (b)

def _ranks(launcher_pid: int) -> list[int]:
    """The train.py processes torchrun started (children of the launcher with LOCAL_RANK in their environment)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != launcher_pid:
                continue
            with open(f"/proc/{name}/environ", "rb") as f:
                if b"LOCAL_RANK=" in f.read():
                    found.append(int(name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _pss_kib(pid: int, path_part: str | None = None) -> int:
    """Pss of the whole process (smaps_rollup), or of the regions mapping a file whose path contains path_part."""
    if path_part is None:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
    total, inside = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and ":" in head[3]:
                inside = len(head) >= 6 and path_part in head[5]
            elif inside and head[0] == "Pss:":
                total += int(head[1])
    return total


def ranks(args) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        run([sys.executable, TRAIN, *train_flags(args.data, tmp, "mmap", 64)])  # cache ready before timing
        for mode in ("mmap", "memory"):
            out = os.path.join(tmp, mode)
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", TRAIN,
                   *train_flags(args.data, out, mode, args.samples)]
            proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            peak = {"total": 0, "cache": 0}
            stop = threading.Event()

            def watch():
                while not stop.is_set():
                    pids = _ranks(proc.pid)
                    try:
                        total = sum(_pss_kib(p) for p in pids)
                        cache = sum(_pss_kib(p, "decoded-") for p in pids)
                    except OSError:  # a rank just exited
                        continue
                    if len(pids) == 2:
                        peak["total"], peak["cache"] = max(peak["total"], total), max(peak["cache"], cache)
                    stop.wait(0.25)

            watcher = threading.Thread(target=watch)
            watcher.start()
            _, err = proc.communicate()
            stop.set()
            watcher.join()
            if proc.returncode != 0:
                raise SystemExit(f"torchrun failed:\n{err[-2000:]}")
            rows.append((mode, peak["total"] / 1024, peak["cache"] / 1024))
        folder = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "imgcls")
        newest = max((os.path.join(folder, f) for f in os.listdir(folder) if f.startswith("decoded-")
                      and f.endswith(".npy")), key=os.path.getmtime)  # the one the first run wrote or read
        cache_mb = os.path.getsize(newest) / 2**20
    print(f"`python bench/scale.py ranks --samples {args.samples}`: torchrun --nproc-per-node 2 train.py (gloo, "
          f"1 thread each), peak of the two ranks' summed PSS (/proc/PID/smaps_rollup, every 0.25 s); the decode "
          f"cache file: {cache_mb:.0f} MiB\n")
    print("| cache | sum of PSS, 2 ranks (MiB) | of which the mapped cache file (MiB) |\n|---|---:|---:|")
    for mode, total, cache in rows:
        print(f"| {mode} | {total:.0f} | {cache:.0f} |")
    print(f"\ndifference memory - mmap: {rows[1][1] - rows[0][1]:.0f} MiB")


# --------------------------------------------------------------------------------------------- (c)

def synthetic_set(root: str, count: int, classes: int = 4) -> str:
    """Class-per-folder 8x8 PNGs (a few hundred bytes each); at --storage-size 224x224 each is 150,528 bytes
    of pixels in the cache."""
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = os.path.join(root, f"class_{i % classes}")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(os.path.join(folder, f"{i:06d}.png"))
    return root


class MemoryCgroup:
    """A memory cgroup with a hard limit (v2 memory.max, else v1 memory.limit_in_bytes); root only."""

    def __init__(self, limit: int):
        v2 = "/sys/fs/cgroup/cgroup.controllers"
        if os.path.exists(v2) and "memory" in open(v2).read():
            self.path, self.limit_file, self.peak_file = "/sys/fs/cgroup/imgcls-bench", "memory.max", "memory.peak"
        elif os.path.isdir("/sys/fs/cgroup/memory"):
            self.path = "/sys/fs/cgroup/memory/imgcls-bench"
            self.limit_file, self.peak_file = "memory.limit_in_bytes", "memory.max_usage_in_bytes"
        else:
            raise SystemExit("no memory cgroup controller here (neither v2 nor v1 mounted): cannot run (c)")
        try:
            os.makedirs(self.path, exist_ok=True)
            with open(os.path.join(self.path, self.limit_file), "w") as f:
                f.write(str(limit))
        except OSError as err:
            raise SystemExit(f"cannot create a memory cgroup at {self.path} ({err.strerror}): (c) needs root")

    def command(self, cmd: list[str]) -> list[str]:
        """cmd run inside the cgroup: the shell joins it, then execs the command."""
        procs = os.path.join(self.path, "cgroup.procs")
        return ["sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh", *cmd]

    def reset_peak(self) -> None:
        try:
            with open(os.path.join(self.path, self.peak_file), "w") as f:
                f.write("0")
        except OSError:
            pass

    def read(self, name: str) -> str:
        try:
            return open(os.path.join(self.path, name)).read().strip()
        except OSError:
            return "?"

    def remove(self) -> None:
        try:
            os.rmdir(self.path)
        except OSError:
            pass


def cgroup(args) -> None:
    limit = int(args.limit_gb * 2**30)
    count = int(np.ceil(args.cache_gb * 2**30 / (3 * 224 * 224)))
    group = MemoryCgroup(limit)
    root = tempfile.mkdtemp(dir=args.workdir)
    try:
        data = synthetic_set(os.path.join(root, "data"), count)
        env = dict(os.environ, XDG_CACHE_HOME=os.path.join(root, "cache"), OMP_NUM_THREADS="2")
        rows = []
        for mode in ("mmap", "memory"):
            out = os.path.join(root, "runs", mode)
            cmd = [sys.executable, TRAIN, *train_flags(data, out, mode, count, size="64x64", model="tiny_efficientnet",
                                                     extra=["--storage-size", "224x224"])]
            group.reset_peak()
            start = time.perf_counter()
            proc = subprocess.run(group.command(cmd), cwd=REPO, env=env, capture_output=True, text=True)
            took = time.perf_counter() - start
            cache = [f for f in os.listdir(os.path.join(root, "cache", "imgcls")) if f.endswith(".npy")]
            size = os.path.getsize(os.path.join(root, "cache", "imgcls", cache[0])) if cache else 0
            speed = train_img_s(out) if proc.returncode == 0 else float("nan")
            oom = [line for line in group.read("memory.oom_control").splitlines() if line.startswith("oom_kill ")]
            rows.append((mode, proc.returncode, took, speed, size, group.read(group.peak_file),
                         oom[0] if oom else group.read("memory.events")))
            print(f"{mode}: exit {proc.returncode}; last output: {(proc.stdout + proc.stderr).strip()[-300:]!r}",
                  file=sys.stderr)
        print(f"`python bench/scale.py cgroup --limit-gb {args.limit_gb} --cache-gb {args.cache_gb}`: {count} synthetic "
              f"images decoded at 224x224, train.py v1 with tiny_efficientnet at 64x64 input, one epoch of {count} "
              f"draws, inside a memory cgroup limited to {args.limit_gb} GiB ({group.path})\n")
        print("| cache mode | exit code | wall s (decode + epoch) | train images/s | cache file GiB | cgroup peak GiB | "
              "OOM counter |\n|---|---:|---:|---:|---:|---:|---|")
        for mode, code, took, speed, size, peak, oom in rows:
            peak_gib = f"{int(peak) / 2**30:.2f}" if peak.isdigit() else peak
            print(f"| {mode} | {code} | {took:.0f} | {speed:.0f} | {size / 2**30:.2f} | {peak_gib} | {oom} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)
        group.remove()


# --------------------------------------------------------------------------------------------- (d)

def cold(args) -> None:
    sys.path.insert(0, REPO)
    import torch
    from imgcls.data import load_dataset
    data = load_dataset(args.data, cache_dir="default", log=lambda *a: None)
    images = data.images
    files = [f for f in os.listdir(os.path.join(os.path.expanduser("~/.cache"), "imgcls")) if f.endswith(".npy")]
    rng = np.random.default_rng(0)
    rows = []
    for state in ("cold", "warm"):
        if state == "cold":  # drop this file's clean pages from the page cache (no root needed)
            for name in files:
                fd = os.open(os.path.join(os.path.expanduser("~/.cache"), "imgcls", name), os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)
        start, n = time.perf_counter(), 0
        while n < args.gathers:
            batch = torch.from_numpy(rng.integers(0, len(images), 64))
            images[batch].float()
            n += 64
        rows.append((state, n / (time.perf_counter() - start)))
    print(f"`python bench/scale.py cold --gathers {args.gathers}`: random batches of 64 rows gathered from the "
          f"mapped cache of {args.data} ({tuple(images.shape)}, {images.numel() / 2**20:.0f} MiB)\n")
    print("| page cache | images/s |\n|---|---:|")
    for state, speed in rows:
        print(f"| {state} | {speed:.0f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["throughput", "ranks", "cgroup", "cold"])
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--samples", type=int, default=3200, help="training draws per run in (a) and (b)")
    p.add_argument("--limit-gb", type=float, default=2.0)
    p.add_argument("--cache-gb", type=float, default=4.0)
    p.add_argument("--workdir", default=None, help="(c): where the synthetic set and its cache go (default: tmp)")
    p.add_argument("--gathers", type=int, default=20000)
    args = p.parse_args()
    {"throughput": throughput, "ranks": ranks, "cgroup": cgroup, "cold": cold}[args.mode](args)


if __name__ == "__main__":
    main()
