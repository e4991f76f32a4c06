"""The decode cache as a memory mapping: read-only view of the file (not a copy), decoded straight to disk
(bounded memory), shared page cache between processes, the same batches as an in-memory copy for every
sampler, and a two-machine torchrun job (two agents on the loopback) equal to a one-machine job."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls import checkpoint, engine
from imgcls.presets import resolve
from imgcls.data.cache import decode_images
from imgcls.data.samplers import SAMPLERS
from tests.helpers import tiny_overrides, write_folder_dataset

pytestmark = pytest.mark.slow  # trains runs or starts processes: outside the fast lane (pytest -m "not slow")

ROOT = Path(__file__).resolve().parents[1]
QUIET = dict(log=lambda *a, **k: None)
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def _mapping_of(address: int, pid: str = "self") -> tuple[str, str] | None:
    """(permissions, path) of the /proc/PID/maps region holding `address`, or None."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, stop = (int(x, 16) for x in fields[0].split("-"))
        if start <= address < stop:
            return fields[1], fields[5] if len(fields) > 5 else ""
    return None


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> list[str]:
    data = write_folder_dataset(tmp_path_factory.mktemp("d"), counts=(5, 4, 3))
    return sorted(str(p) for p in data.rglob("*.png"))


def test_the_loaded_cache_is_a_read_only_mapping_of_the_file_not_a_copy(small_set, tmp_path):
    cache_dir = tmp_path / "cache"
    decoded, _, _ = decode_images(small_set, None, str(cache_dir), 1, **QUIET)  # first run: decodes to the file
    images, ok, _ = decode_images(small_set, None, str(cache_dir), 1, **QUIET)  # next run: maps it
    npy = next(cache_dir.glob("decoded-*.npy"))
    for tensor in (decoded, images):
        perms, path = _mapping_of(tensor.data_ptr())
        assert path == str(npy) and perms.startswith("r-") and perms[3] == "s", (perms, path)  # read-only, shared
    # the mapped bytes are the file's pixels after its header
    raw = np.fromfile(npy, dtype=np.uint8)[-images.numel():]
    assert np.array_equal(raw, images.numpy().reshape(-1)) and ok.all()
    # --cache-mode memory reads the same pixels into this process (anonymous memory, not the file)
    copy, _, _ = decode_images(small_set, None, str(cache_dir), 1, mode="memory", **QUIET)
    assert torch.equal(copy, images)
    region = _mapping_of(copy.data_ptr())
    assert region is None or region[1] != str(npy)


def test_undecodable_files_are_squeezed_out_of_the_file(small_set, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    paths = [small_set[0], str(broken), *small_set[1:3], str(broken)]
    reference, ok_mem, _ = decode_images(paths, None, None, 1, **QUIET)  # in memory, as before
    for _ in range(2):  # decoded to the file, then read back from it
        images, ok, reasons = decode_images(paths, None, str(tmp_path / "cache"), 1, **QUIET)
        assert ok.tolist() == ok_mem.tolist() == [True, False, True, True, False]
        assert reasons[1].startswith("undecodable") and images.shape[0] == 3
        assert torch.equal(images, reference)
    npy = next((tmp_path / "cache").glob("decoded-*.npy"))
    assert os.path.getsize(npy) == 128 + images.numel()  # the fixed header, then the 3 rows only


def _synthetic(folder: Path, count: int) -> Path:
    """`count` tiny PNGs; decoded at 224 x 224 each is 150,528 bytes of pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    listing = folder / "files.txt"
    listing.write_text("\n".join(str(p) for p in sorted(folder.glob("*.png"))))
    return listing


# The peak is VmHWM (this process image's high-water RSS), not getrusage's ru_maxrss: Linux carries ru_maxrss
# across fork + exec, so a child of a large pytest process would report the parent's peak.
_PEAK = textwrap.dedent("""
    import sys
    from imgcls.data.cache import decode_images
    def status_kib(field):
        return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1])
    paths = open(sys.argv[1]).read().split("\\n")
    before = status_kib("VmRSS:")
    images, ok, _ = decode_images(paths, (224, 224), sys.argv[2] if sys.argv[2] != "-" else None, 2,
                                  log=print)
    print(int(ok.sum()), images.numel(), (status_kib("VmHWM:") - before) * 1024)
""")


def test_decoding_300_mb_straight_to_the_file_keeps_peak_memory_under_half_of_it(tmp_path):
    listing = _synthetic(tmp_path / "png", 2000)  # 2000 x 150,528 bytes = 301 MB of pixels
    grown = {}
    for name, cache in (("file", str(tmp_path / "cache")), ("memory", "-")):
        proc = subprocess.run([sys.executable, "-c", _PEAK, str(listing), cache], env=ENV, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "warning" not in proc.stdout, proc.stdout  # decoded to the file, not in memory after a failure
        count, size, grown[name] = map(int, proc.stdout.splitlines()[-1].split())
        assert count == 2000 and size == 2000 * 3 * 224 * 224
    assert grown["file"] < size / 2, grown
    assert grown["memory"] > 0.9 * size, grown  # the in-memory path holds it all: the measure can tell


_HOLD = textwrap.dedent("""
    import sys
    from imgcls.data.cache import decode_images
    paths = open(sys.argv[1]).read().split("\\n")
    images, ok, _ = decode_images(paths, (224, 224), sys.argv[2], 1, log=lambda *a: None)
    print(int(images.sum(dtype=__import__("torch").int64)), flush=True)  # touches every page
    sys.stdin.readline()
""")


def _mapped_kib(pid: int, path: str) -> tuple[int, int]:
    """(Rss, Pss) in KiB of the regions of /proc/PID/smaps that map `path`."""
    rss = pss = 0
    inside = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a region's first line
            inside = len(head) >= 6 and head[5] == path
        elif inside and head[0] == "Rss:":
            rss += int(head[1])
        elif inside and head[0] == "Pss:":
            pss += int(head[1])
    return rss, pss


def test_two_processes_mapping_the_cache_share_its_pages(tmp_path):
    listing = _synthetic(tmp_path / "png", 300)  # 45 MB of pixels
    cache = tmp_path / "cache"
    decode_images(open(listing).read().split("\n"), (224, 224), str(cache), 1, **QUIET)
    npy = str(next(cache.glob("decoded-*.npy")))
    procs = [subprocess.Popen([sys.executable, "-c", _HOLD, str(listing), str(cache)], env=ENV, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(2)]
    try:
        sums = [p.stdout.readline().strip() for p in procs]
        assert sums[0] == sums[1] != ""
        size_kib = 300 * 3 * 224 * 224 / 1024
        for p in procs:
            rss, pss = _mapped_kib(p.pid, npy)
            assert rss > 0.95 * size_kib, (rss, size_kib)  # every page resident in each process...
            assert abs(pss - rss / 2) < 0.05 * rss, (rss, pss)  # ...and counted half to each: one copy
    finally:
        for p in procs:
            p.communicate("\n", timeout=60)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_trains_the_same_weights_from_the_mapping_as_from_memory(sampler, tmp_path):
    data = write_folder_dataset(tmp_path / "data", counts=(12, 6, 3))
    weights = {}
    for mode in ("mmap", "memory"):
        cfg = resolve("v1", tiny_overrides(data, tmp_path / mode, model="tiny_efficientnet", sampler=sampler,
                                           epochs=1, cache_mode=mode, cache_dir=str(tmp_path / "cache")))
        engine.fit(cfg, 0, log=lambda *a, **k: None)
        weights[mode] = checkpoint.load(tmp_path / mode / "v1" / "fold0" / "last.pt")["model"]
    assert weights["mmap"].keys() == weights["memory"].keys()
    for name, value in weights["mmap"].items():
        assert torch.equal(value, weights["memory"][name]), name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_node_loopback_torchrun_equals_the_one_node_two_process_job(tmp_path):
    """Two torchrun agents (--nnodes 2, one process each) meet through c10d rendezvous on 127.0.0.1, each with
    its own (node-local) cache folder, and train to the same final weights as --nproc-per-node 2 on one node."""
    data = write_folder_dataset(tmp_path / "data", counts=(30, 14, 6))
    flags = ["--version", "v1", "--model", "tiny_efficientnet", "--pretrained", "none", "--data", str(data),
             "--img-size", "32", "--epochs", "2", "--batch-size", "8", "--workers", "1", "--device", "cpu"]
    launcher = [sys.executable, "-m", "torch.distributed.run"]
    train = str(ROOT / "train.py")
    one = subprocess.run([*launcher, "--standalone", "--nproc-per-node", "2", train, *flags,
                          "--out", str(tmp_path / "one")], cwd=ROOT, env=dict(ENV, XDG_CACHE_HOME=str(tmp_path / "c0")),
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    port = _free_port()
    nodes = [subprocess.Popen([*launcher, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                               "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "imgcls-test", train, *flags,
                               "--out", str(tmp_path / "two")], cwd=ROOT,
                              env=dict(ENV, XDG_CACHE_HOME=str(tmp_path / f"node{n}")),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(2)]
    outputs = [p.communicate(timeout=300) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    for n in range(2):  # each node decoded once into its own cache folder
        assert len(list((tmp_path / f"node{n}" / "imgcls").glob("decoded-*.npy"))) == 1
    a = checkpoint.load(tmp_path / "one" / "v1" / "fold0" / "last.pt")["model"]
    b = checkpoint.load(tmp_path / "two" / "v1" / "fold0" / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
