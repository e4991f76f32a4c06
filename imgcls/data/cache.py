"""Decode every image once into one uint8 N x 3 x H x W tensor, and keep it on disk for the next start.

Training then never touches PIL: a batch is a gather from this tensor, augmented on the device. The tensor is
preallocated and filled in place by a thread pool (Pillow releases the GIL while it decodes), so peak memory
is the tensor itself plus one image per worker.

The cache file is keyed by the list of files, each file's size and mtime, and the requested storage size: any
change to the data gives a new key, so a stale cache is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

CACHE_FORMAT = 1  # bump when the decoded pixels would change for the same files (e.g. a new resize rule)
_CHUNK = 256  # images per task: amortises pool overhead, keeps the progress bar smooth
_ORIENTATION = 0x0112  # EXIF tag; values 5-8 mean the stored image is transposed relative to its display


def decode_images(paths: list[str], size: tuple[int, int] | None, cache_dir: str | None, workers: int = 2,
                  log=print) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """Decode `paths` to RGB uint8 at storage size (H, W); reuse the cache in `cache_dir` when it matches.

    size None picks the most common (H, W) of the data. Returns (images N3HW uint8, ok bool array, reasons):
    an undecodable file gets ok False, an all-zero image, and its reason (reasons[i] is "" when ok).
    """
    key = cache_key(paths, size)
    if cache_dir:
        cached = _load_cache(cache_dir, key)
        if cached is not None:
            log(f"decoded images: loaded {len(paths)} from cache {_cache_files(cache_dir, key)[0]}")
            return cached
    if size is None:
        size = most_common_size(paths, workers)
        log(f"storage size (most common H x W of the data): {size[0]}x{size[1]}")
    height, width = size
    images = torch.zeros((len(paths), 3, height, width), dtype=torch.uint8)
    ok = np.ones(len(paths), dtype=bool)
    reasons = [""] * len(paths)
    target = images.numpy()  # shares memory with `images`: workers write straight into the tensor

    def work(start: int) -> int:
        stop = min(start + _CHUNK, len(paths))
        for i in range(start, stop):
            try:
                target[i] = _decode_file(paths[i], (height, width))
            except Exception as err:  # any unreadable file is reported, never fatal
                ok[i], reasons[i] = False, f"undecodable: {type(err).__name__}: {err}"
        return stop - start

    with ThreadPoolExecutor(max(1, workers)) as pool, \
            tqdm(total=len(paths), desc="decoding", unit="img", disable=len(paths) < 1000 or not sys.stderr.isatty()) as bar:
        for done in pool.map(work, range(0, len(paths), _CHUNK)):
            bar.update(done)
    if cache_dir:
        _save_cache(cache_dir, key, images, ok, reasons)
    return images, ok, reasons


def cache_key(paths: list[str], size: tuple[int, int] | None) -> str:
    """Hash of the file list, each file's size and mtime (ns), the storage size and the cache format."""
    h = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, "size": size}).encode())
    for path in paths:
        try:
            st = os.stat(path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{path}\0{stamp}\n".encode())
    return h.hexdigest()[:24]


def most_common_size(paths: list[str], workers: int = 2) -> tuple[int, int]:
    """The most common (H, W) among the files, read from their headers only (no pixel decoding)."""
    def header_size(path: str):
        try:
            with Image.open(path) as im:
                turned = im.getexif().get(_ORIENTATION) in (5, 6, 7, 8)  # stored on its side
                return (im.width, im.height) if turned else (im.height, im.width)
        except Exception:
            return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        sizes = Counter(s for s in pool.map(header_size, paths, chunksize=_CHUNK) if s is not None)
    if not sizes:
        return (64, 64)  # nothing readable: any size will do, every image is reported as undecodable
    return sizes.most_common(1)[0][0]


def _decode_file(path: str, size: tuple[int, int]) -> np.ndarray:
    """One file -> 3 x H x W uint8 RGB, whatever its mode (alpha, palette, gray, CMYK, 16-bit, EXIF-rotated).

    An image of another size is resized (bilinear, stretched) to the storage size, like the few 53x80 or
    60x60 images among fashion-small's 60x80 ones.
    """
    with Image.open(path) as im:
        im.load()  # raises on a truncated or corrupt file (Pillow's default; it is reported, not padded)
        ImageOps.exif_transpose(im, in_place=True)  # camera photos: upright as a viewer shows them
        rgb = to_rgb(im)
    height, width = size
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow image to 8-bit RGB.

    Transparent pixels are composited on white (product photos have white backgrounds); 16- and 32-bit
    grayscale is scaled by its full range (Pillow's own convert would clip everything above 255 to white).
    """
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        peak = 65535.0 if im.mode.startswith("I;16") or np.asarray(im).max() > 255 else 255.0
        gray = np.asarray(im, dtype=np.float64) * (255.0 / peak)
        im = Image.fromarray(np.clip(np.round(gray), 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        im = Image.fromarray(np.clip(np.asarray(im), 0, 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return im.convert("RGB")


def _cache_files(cache_dir: str, key: str) -> tuple[str, str]:
    return os.path.join(cache_dir, f"decoded-{key}.npy"), os.path.join(cache_dir, f"decoded-{key}.json")


def _save_cache(cache_dir: str, key: str, images: torch.Tensor, ok: np.ndarray, reasons: list[str]) -> None:
    """Write pixels (.npy) and status (.json) via temporary names, so a killed run leaves no half cache."""
    os.makedirs(cache_dir, exist_ok=True)
    npy, meta = _cache_files(cache_dir, key)
    tmp = f".{os.getpid()}.tmp"  # per process: two processes writing the same cache never share a temp file
    with open(npy + tmp, "wb") as f:
        np.save(f, images.numpy())
    with open(meta + tmp, "w") as f:
        json.dump({"ok": ok.tolist(), "reasons": reasons}, f)
    os.replace(npy + tmp, npy)
    os.replace(meta + tmp, meta)  # written last: its presence marks a complete cache


def _load_cache(cache_dir: str, key: str):
    npy, meta = _cache_files(cache_dir, key)
    if not (os.path.isfile(npy) and os.path.isfile(meta)):
        return None
    try:
        with open(meta) as f:
            status = json.load(f)
        images = torch.from_numpy(np.load(npy))  # one read into memory, no copy
    except (OSError, ValueError):  # damaged (e.g. disk full while writing elsewhere): decode again
        return None
    if len(status["ok"]) != images.shape[0]:
        return None
    return images, np.array(status["ok"], dtype=bool), status["reasons"]
