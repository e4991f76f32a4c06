"""Decode every image once into one uint8 N x 3 x H x W array on disk, and map that file for every run.

Training then never touches PIL: a batch is a gather from this array, augmented on the device.

With a cache folder (the default) the array is a .npy file that is memory-mapped read-only, never read whole:
the operating system's page cache holds it once per machine, shared by every process that maps it (torchrun
ranks, predict.py beside a training), and pages it in and out when the data set is larger than RAM (FFCV's
`os_cache=True`). A first run decodes straight into that file: a thread pool (Pillow releases the GIL while it
decodes) writes each chunk of images at its offset with pwrite, so peak memory is the chunks in flight, not
the data set; the file is renamed into place when complete. Without a cache folder (`--cache-dir none`), or
with `--cache-mode memory`, the array lives in the process's memory as before.

The cache file is keyed by the list of files, each file's size and mtime, and the requested storage size: any
change to the data gives a new key, so a stale cache is never read. The pixels hold the decodable images only
(in order); the status file lists every file with its reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import sys
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from imgcls.fsio import atomic_write, clean_stale_temps, temp_name
from imgcls.limits import MAX_SIDE, MIN_SIDE

# bump when the file would change for the same images (2: JPEG draft, reduce; 3: decodable rows only)
CACHE_FORMAT = 3
CACHE_MODES = ("mmap", "memory")
# Refused above this (one RGB copy is 3 bytes a pixel, per decode worker): a 50 MP image is 150 MB.
MAX_DECODE_PIXELS = 50_000_000
_CHUNK = 256  # images per task at most: amortises pool overhead, keeps the progress bar smooth
_CHUNK_BYTES = 16 * 2**20  # and at most this many pixel bytes per task: the memory a decode worker holds
_ORIENTATION = 0x0112  # EXIF tag; values 5-8 mean the stored image is transposed relative to its display


def default_cache_dir() -> str:
    """$XDG_CACHE_HOME/imgcls, else ~/.cache/imgcls (the XDG base-directory convention)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "imgcls")


def resolve_cache_dir(value: str | None) -> str | None:
    """The --cache-dir value -> a folder or None (off): 'default'/'auto' -> default_cache_dir(); 'none' -> off."""
    if value is None or str(value).lower() in ("none", "off", ""):
        return None
    if str(value).lower() in ("default", "auto"):
        return default_cache_dir()
    return str(value)


def decode_images(paths: list[str], size: tuple[int, int] | None, cache_dir: str | None, workers: int = 2,
                  log=print, mode: str = "mmap") -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """Decode `paths` to RGB uint8 at storage size (H, W); reuse the cache in `cache_dir` when it matches.

    size None picks the most common (H, W) of the data. Returns (images, ok bool array, reasons): images holds
    the decodable files only, in order (len = ok.sum()); reasons[i] says why file i was not (or "").
    cache_dir: a folder, 'default' (see default_cache_dir) or None/'none' (off). mode: 'mmap' maps the cache
    file read-only (the tensor is a view of the page cache, not a copy); 'memory' reads it whole. The cache is
    only an optimisation: a damaged cache file means decoding again, an unwritable folder means one warning.
    """
    if mode not in CACHE_MODES:
        raise ValueError(f"cache mode {mode!r}: expected one of {', '.join(CACHE_MODES)}")
    cache_dir = resolve_cache_dir(cache_dir)
    stamps = file_stamps(paths) if cache_dir else b""  # one stat per file, for both keys below
    unsized = cache_key(paths, None, stamps) if cache_dir and size is None else ""
    recorded = _recorded_size(cache_dir, unsized) if unsized else None  # the size an earlier run found
    size = size or recorded
    if size is None:
        size = most_common_size(paths, workers)
        log(f"storage size (most common H x W of the data): {size[0]}x{size[1]}")
    if not cache_dir:
        return _decode_in_memory(paths, size, workers)
    # one cache per size: a run asking for the data's own size finds it again through this record
    size_record = _size_record(cache_dir, unsized) if unsized and recorded is None else None
    key = cache_key(paths, size, stamps)
    log(f"decode cache: {cache_dir} ({_folder_size(cache_dir) / 2**20:.0f} MiB in use; --cache-dir none "
        "turns it off)")
    cached = _load_cache(cache_dir, key, len(paths), size, log, mode)
    if cached is not None:
        log(f"decoded images: loaded {len(paths)} from cache {_cache_files(cache_dir, key)[0]}"
            + (" (memory-mapped)" if mode == "mmap" else ""))
        if size_record is not None:
            _write_cache_files(cache_dir, [(size_record, lambda: _write_size(size_record, size))], log,
                               then="the images are loaded; the next start finds their size again")
        return cached
    npy, meta = _cache_files(cache_dir, key)
    decoded = []  # (ok, reasons) from the decode, for the status file written after the pixels
    steps = [(npy, lambda: decoded.extend(_decode_to_file(npy, paths, size, workers))),
             (meta, lambda: _write_status(meta, key, size, *decoded))]
    if size_record is not None:
        steps.append((size_record, lambda: _write_size(size_record, size)))
    if _write_cache_files(cache_dir, steps, log):
        cached = _load_cache(cache_dir, key, len(paths), size, log, mode)
        if cached is not None:
            return cached
    return _decode_in_memory(paths, size, workers)


def _write_cache_files(cache_dir: str, steps: list, log=print,
                       then: str = "decoding in memory; next start decodes again") -> bool:
    """Run each (file, write) step in order, all or nothing: when one fails (unwritable folder, disk full,
    file size limit) every file these steps wrote is removed, so no pixels are left without their status file
    and no size record points at nothing, and one warning says why; the run goes on without the cache."""
    try:
        os.makedirs(cache_dir, exist_ok=True)
        clean_stale_temps(cache_dir)  # what killed runs (or a full disk) left behind
        for _, write in steps:
            write()
        return True
    except Exception as err:
        for path, _ in steps:  # the failing step's own file too; a cache file is never worth keeping half
            try:
                os.unlink(path)
            except OSError:
                pass
        reason = getattr(err, "strerror", None) or str(err).strip()[:200]
        log(f"warning: could not write the decode cache in {cache_dir} ({type(err).__name__}: {reason}); "
            f"continuing without it ({then})")
        return False


def _decode_all(paths: list[str], size: tuple[int, int], workers: int, store) -> tuple[np.ndarray, list[str]]:
    """Decode every file on a thread pool, calling store(start, block) with each chunk's pixels (undecodable
    images all zero). Returns (ok, reasons); a file that cannot be decoded is reported, never fatal."""
    height, width = size
    ok = np.ones(len(paths), dtype=bool)
    reasons = [""] * len(paths)
    chunk = max(1, min(_CHUNK, _CHUNK_BYTES // (3 * height * width)))

    def work(start: int) -> int:
        stop = min(start + chunk, len(paths))
        block = np.zeros((stop - start, 3, height, width), dtype=np.uint8)
        for i in range(start, stop):
            try:
                block[i - start] = _decode_file(paths[i], (height, width))
            except NotDecodable as err:  # our own checks: the reason says it all
                ok[i], reasons[i] = False, str(err)
            except Exception as err:  # any unreadable file is reported, never fatal
                ok[i], reasons[i] = False, f"undecodable: {type(err).__name__}: {err}"
        store(start, block)
        return stop - start

    with ThreadPoolExecutor(max(1, workers)) as pool, \
            tqdm(total=len(paths), desc="decoding", unit="img", disable=len(paths) < 1000 or not sys.stderr.isatty()) as bar:
        for done in pool.map(work, range(0, len(paths), chunk)):
            bar.update(done)
    return ok, reasons


def _decode_in_memory(paths: list[str], size: tuple[int, int], workers: int):
    """No cache file: one N x 3 x H x W tensor filled in place, then the undecodable rows squeezed out in place
    (no second buffer)."""
    images = torch.zeros((len(paths), 3, *size), dtype=torch.uint8)
    target = images.numpy()  # shares memory with `images`

    def store(start, block):
        target[start:start + len(block)] = block

    ok, reasons = _decode_all(paths, size, workers, store)
    keep = np.flatnonzero(ok)
    for new, old in enumerate(keep.tolist()):
        if new != old:  # old >= new always, so a row is read before it can be overwritten
            images[new] = images[old]
    return images[: len(keep)], ok, reasons


def _decode_to_file(npy: str, paths: list[str], size: tuple[int, int], workers: int) -> tuple[np.ndarray, list]:
    """Decode straight into the cache file: workers pwrite their chunks at their offsets in a temp file (the
    page cache holds the pixels, not this process), the undecodable rows are squeezed out, then the file is
    renamed into place. The space is reserved before any decoding, so a full disk is found at once. Returns
    (ok, reasons) for the status file, which the caller writes last: its presence marks a complete cache."""
    row = 3 * size[0] * size[1]
    tmp = temp_name(npy)
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        try:
            os.pwrite(fd, _npy_header((len(paths), 3, *size)), 0)
            if len(paths):
                os.posix_fallocate(fd, 0, _HEADER + len(paths) * row)

            def store(start, block):
                os.pwrite(fd, memoryview(block).cast("B"), _HEADER + start * row)

            ok, reasons = _decode_all(paths, size, workers, store)
            keep = np.flatnonzero(ok)
            for new, old in enumerate(keep.tolist()):  # squeeze out the undecodable rows, front to back
                if new != old:
                    os.pwrite(fd, os.pread(fd, row, _HEADER + old * row), _HEADER + new * row)
            os.ftruncate(fd, _HEADER + len(keep) * row)
            os.pwrite(fd, _npy_header((len(keep), 3, *size)), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, npy)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return ok, reasons


def _write_status(meta: str, key: str, size: tuple[int, int], ok: np.ndarray, reasons: list) -> None:
    atomic_write(meta, json.dumps({"key": key, "shape": [int(ok.sum()), 3, *size], "ok": ok.tolist(),
                                   "reasons": reasons}))


# The .npy header (format 1.0), always this long, so that the row count can be rewritten in place after the
# undecodable rows are squeezed out without moving the pixels. np.load reads it like any other.
_HEADER = 128


def _npy_header(shape: tuple[int, ...]) -> bytes:
    text = "{'descr': '|u1', 'fortran_order': False, 'shape': (%s), }" % ", ".join(str(int(n)) for n in shape)
    text = text.ljust(_HEADER - 10 - 1) + "\n"
    return np.lib.format.magic(1, 0) + struct.pack("<H", len(text)) + text.encode("latin1")


def cache_key(paths: list[str], size: tuple[int, int] | None, stamps: bytes | None = None) -> str:
    """Hash of the file list, each file's size and mtime (ns), the storage size and the cache format.
    stamps: file_stamps(paths), when the caller needs keys for more than one size (one stat per file)."""
    h = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, "size": size}).encode())
    h.update(file_stamps(paths) if stamps is None else stamps)
    return h.hexdigest()[:24]


def file_stamps(paths: list[str]) -> bytes:
    """Every path with its size and mtime (ns). Paths are taken as the bytes the OS gave us (os.fsencode): a
    file name that is not valid UTF-8 arrives as a str with surrogate escapes, which str.encode() refuses."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        out.append(os.fsencode(path) + f"\0{stamp}\n".encode())
    return b"".join(out)


class NotDecodable(Exception):
    """A file we refuse to open or decode, with the reason as its message (listed in skipped.json)."""


def open_image(path: str) -> Image.Image:
    """Image.open, after checking that `path` is a regular file.

    Opening a FIFO named x.jpg blocks until something writes to it (forever), and a device file can be
    endless: both are refused from os.stat alone, before any open.
    """
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotDecodable("not a regular file (a folder, FIFO, device or socket): not opened")
    return Image.open(path)


def most_common_size(paths: list[str], workers: int = 2) -> tuple[int, int]:
    """The most common (H, W) among the files, read from their headers only (no pixel decoding)."""
    def header_size(path: str):
        try:
            with open_image(path) as im:
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
    60x60 images among fashion-small's 60x80 ones. A big JPEG is decoded at 1/2, 1/4 or 1/8 scale by libjpeg
    itself (Image.draft: still at least the storage size), so a 24 MP photo costs a few MB, not 72; a big
    image of another format is box-reduced right after decoding, before the mode conversion copies it.
    Images above MAX_DECODE_PIXELS (after draft) are refused from their header, before any pixel is decoded.
    """
    height, width = size
    with open_image(path) as im:
        turned = im.getexif().get(_ORIENTATION) in (5, 6, 7, 8)  # stored on its side: swap the request
        want = (height, width) if turned else (width, height)
        if im.format == "JPEG":
            im.draft(im.mode, want)
        if im.width * im.height > MAX_DECODE_PIXELS:
            raise NotDecodable(f"too large to decode: {im.width}x{im.height} pixels (limit "
                               f"{MAX_DECODE_PIXELS // 10**6} MP); shrink it first")
        im.load()  # raises on a truncated or corrupt file (Pillow's default; it is reported, not padded)
        factor = min(im.width // want[0], im.height // want[1])
        if factor >= 2 and im.mode not in ("P", "1"):  # reduce() needs pixel values that can be averaged
            im = im.reduce(factor)
        ImageOps.exif_transpose(im, in_place=True)  # camera photos: upright as a viewer shows them
        rgb = to_rgb(im)
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


def _load_cache(cache_dir: str, key: str, count: int, size: tuple[int, int] | None, log=print, mode="mmap"):
    """The cached (images, ok, reasons), or None when absent; a damaged cache is reported and ignored.
    mode 'mmap': the images are a read-only mapping of the file (np.load's mmap_mode='r'), nothing is read."""
    npy, meta = _cache_files(cache_dir, key)
    if not (os.path.isfile(npy) and os.path.isfile(meta)):
        return None
    try:
        with open(meta, encoding="utf-8") as f:
            status = json.load(f)
        ok, reasons = status["ok"], status["reasons"]
        if status.get("key") != key:
            raise ValueError(f"its status file was written for key {status.get('key')}, not {key}")
        images = np.load(npy, mmap_mode="r" if mode == "mmap" else None, allow_pickle=False)
        if not (isinstance(ok, list) and isinstance(reasons, list) and len(ok) == len(reasons) == count):
            raise ValueError(f"status lists {len(ok)} images, expected {count}")
        # the pixels must be what the status file recorded, and the size asked for: a cache file of another
        # storage size that still parses would otherwise train the run at that size without a word
        if images.dtype != np.uint8 or list(images.shape) != status.get("shape") \
                or images.shape[:2] != (sum(map(bool, ok)), 3) \
                or (size is not None and tuple(images.shape[2:]) != tuple(size)):
            raise ValueError(f"pixels of shape {images.shape} {images.dtype}, expected {status.get('shape')} uint8")
    except Exception as err:  # 0-byte or truncated .npy, a .json of another shape: decode again
        log(f"decode cache {npy} unreadable ({type(err).__name__}: {str(err).strip()[:120]}); decoding again")
        return None
    with warnings.catch_warnings():  # "not writable": a read-only mapping is the point; nothing writes to it
        warnings.simplefilter("ignore", UserWarning)
        pixels = torch.from_numpy(images)
    return pixels, np.array(ok, dtype=bool), [str(r) for r in reasons]


def _size_record(cache_dir: str, unsized_key: str) -> str:
    return os.path.join(cache_dir, f"size-{unsized_key}.json")


def _recorded_size(cache_dir: str, unsized_key: str) -> tuple[int, int] | None:
    """The storage size found for these files before (size-<key>.json), so that a run asking for the data's
    own size and predict asking for the resolved one (80x60) read the same cache file. A record outside the
    flag's bounds (a damaged file: [0, 0], [4, 4]) is a miss, as an unreadable one is: the size is found again."""
    try:
        with open(_size_record(cache_dir, unsized_key), encoding="utf-8") as f:
            height, width = json.load(f)["size"]
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or damaged: find the size again
        return None
    sides = (height, width)
    if not all(type(v) is int and MIN_SIDE <= v <= MAX_SIDE for v in sides):
        return None
    return height, width


def _write_size(path: str, size: tuple[int, int]) -> None:
    atomic_write(path, json.dumps({"size": list(size)}))


def _folder_size(folder: str) -> int:
    try:
        return sum(e.stat().st_size for e in os.scandir(folder) if e.is_file())
    except OSError:
        return 0
