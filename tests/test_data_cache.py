"""Decoding: odd image modes, broken files, storage size, and the on-disk cache (reuse + invalidation)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import predict as predict_script
import train as train_script
from imgcls.data import cache, load_index
from imgcls.data.cache import decode_images, default_cache_dir, resolve_cache_dir
from imgcls.presets import resolve
from tests.helpers import (
    ENV,
    TINY,
    TINY_B0,
    cli,
    needs_non_root,
    write_folder_dataset,
)

QUIET = dict(log=lambda *_: None)


def _save(img, path):
    img.save(path)
    return str(path)


def test_odd_modes_become_rgb_at_storage_size(tmp_path):
    # Storage size 8x6 (H x W); every image below has another mode and most another size.
    rgba = Image.new("RGBA", (6, 8), (10, 20, 30, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent -> white
    gray = Image.new("L", (6, 8), 77)
    cmyk_white = Image.new("CMYK", (12, 16), (0, 0, 0, 0))
    cmyk_black = Image.new("CMYK", (3, 4), (0, 0, 0, 255))
    deep = np.full((8, 6), 65535, dtype=np.uint16)
    deep[:, 2:4] = 128 * 257  # mid-grey: Pillow's own convert("RGB") would clip this to 255
    deep[:, 4:] = 0
    sixteen = Image.fromarray(deep)  # 16-bit grayscale ("I;16"): full range must map to 0..255
    paths = [
        _save(rgba, tmp_path / "alpha.png"),
        _save(gray, tmp_path / "gray.png"),
        _save(cmyk_white, tmp_path / "cmyk_white.jpg"),
        _save(cmyk_black, tmp_path / "cmyk_black.jpg"),
        _save(sixteen, tmp_path / "deep.png"),
    ]
    assert Image.open(paths[4]).mode.startswith("I")
    images, ok, reasons = decode_images(paths, (8, 6), None, workers=2, **QUIET)
    assert images.dtype == torch.uint8 and images.shape == (5, 3, 8, 6)
    assert ok.all() and reasons == [""] * 5
    assert images[0, :, 0, 0].tolist() == [255, 255, 255]
    assert images[0, :, 4, 3].tolist() == [10, 20, 30]
    assert (images[1] == 77).all()
    assert (images[2].int() >= 250).all()  # JPEG CMYK white
    assert (images[3].int() <= 5).all()  # JPEG CMYK black
    assert images[4, :, 0].tolist() == [[255, 255, 128, 128, 0, 0]] * 3


def test_zero_byte_and_truncated_jpeg_are_reported_not_fatal(tmp_path):
    good = _save(Image.new("RGB", (6, 8), (1, 2, 3)), tmp_path / "good.jpg")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    whole = (tmp_path / "good.jpg").read_bytes()
    truncated = tmp_path / "truncated.jpg"
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 48, 3), dtype=np.uint8))
    big.save(truncated, quality=90)
    truncated.write_bytes(truncated.read_bytes()[: len(truncated.read_bytes()) // 2])
    assert len(whole) > 0
    images, ok, reasons = decode_images([good, str(empty), str(truncated)], (8, 6), None, 1, **QUIET)
    assert ok.tolist() == [True, False, False]
    assert reasons[0] == "" and reasons[1].startswith("undecodable") and reasons[2].startswith("undecodable")
    assert images.shape == (1, 3, 8, 6)  # the decodable image only


def test_size_none_uses_the_most_common_size(tmp_path):
    paths = [_save(Image.new("RGB", (6, 8), (9, 9, 9)), tmp_path / f"{i}.png") for i in range(3)]
    paths.append(_save(Image.new("RGB", (10, 10), (9, 9, 9)), tmp_path / "odd.png"))
    images, ok, _ = decode_images(paths, None, None, 2, **QUIET)
    assert images.shape == (4, 3, 8, 6) and ok.all() and (images == 9).all()


def test_cache_is_reused_without_decoding_and_invalidated_by_a_change(tmp_path, monkeypatch):
    paths = [_save(Image.new("RGB", (8, 10), (i * 40, 0, 0)), tmp_path / f"{i}.png") for i in range(4)]
    cache_dir = str(tmp_path / "cache")
    first, ok1, _ = decode_images(paths, None, cache_dir, 2, **QUIET)
    files = sorted(os.listdir(cache_dir))
    # pixels + status, and the size found for these files (so that asking for 10x8 later reads the same cache)
    assert [f.split("-")[0] for f in files] == ["decoded", "decoded", "size"]
    stamps = {f: os.stat(os.path.join(cache_dir, f)).st_mtime_ns for f in files}

    calls = []
    real = cache._decode_file

    def counting(path, size):
        calls.append(path)
        return real(path, size)

    monkeypatch.setattr(cache, "_decode_file", counting)
    logged = []
    second, ok2, _ = decode_images(paths, None, cache_dir, 2, log=logged.append)
    assert calls == [] and "from cache" in logged[-1] and logged[0].startswith("decode cache: ")
    assert torch.equal(first, second) and ok2.all()
    assert {f: os.stat(os.path.join(cache_dir, f)).st_mtime_ns for f in files} == stamps

    # another storage size is another cache entry
    decode_images(paths, (4, 3), cache_dir, 2, **QUIET)
    assert len(calls) == 4

    # change one file: the key changes, everything is decoded again and the new pixels are used
    calls.clear()
    Image.new("RGB", (8, 10), (0, 255, 0)).save(paths[2])
    st = os.stat(paths[2])
    os.utime(paths[2], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third, _, _ = decode_images(paths, None, cache_dir, 2, **QUIET)
    assert len(calls) == 4
    assert third[2, :, 0, 0].tolist() == [0, 255, 0] and torch.equal(third[:2], first[:2])


def test_cached_tensor_is_exactly_n_3_h_w_bytes(tmp_path):
    paths = [_save(Image.new("RGB", (6, 8), (i, i, i)), tmp_path / f"{i}.png") for i in range(5)]
    cache_dir = str(tmp_path / "c")
    decode_images(paths, None, cache_dir, 1, **QUIET)
    images, _, _ = decode_images(paths, None, cache_dir, 1, **QUIET)
    assert images.untyped_storage().nbytes() == 5 * 3 * 8 * 6
    npy = [f for f in os.listdir(cache_dir) if f.endswith(".npy")][0]
    assert os.path.getsize(os.path.join(cache_dir, npy)) <= 5 * 3 * 8 * 6 + 256  # + the .npy header


@pytest.mark.parametrize("workers", [1, 3])
def test_workers_fill_every_slot_in_order(tmp_path, workers, monkeypatch):
    monkeypatch.setattr(cache, "_CHUNK", 2)  # several chunks even for a tiny list
    paths = [_save(Image.new("RGB", (6, 8), (i, 2 * i, 3 * i)), tmp_path / f"{i}.png") for i in range(7)]
    images, ok, _ = decode_images(paths, None, None, workers, **QUIET)
    assert ok.all()
    assert images[:, :, 0, 0].tolist() == [[i, 2 * i, 3 * i] for i in range(7)]


def test_exif_orientation_is_applied(tmp_path):
    stored = Image.new("RGB", (6, 8), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 3, 8))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = str(tmp_path / "phone.jpg")
    stored.save(path, exif=exif, quality=95)
    images, ok, _ = decode_images([path], None, None, 1, **QUIET)
    assert ok.all() and images.shape == (1, 3, 6, 8)  # upright: 8 wide, 6 tall
    top, bottom = images[0, :, 0, 4].tolist(), images[0, :, -1, 4].tolist()
    assert top[0] > 200 and top[2] < 50 and bottom[2] > 200 and bottom[0] < 50


def test_a_damaged_cache_is_decoded_again(tmp_path):
    paths = [_save(Image.new("RGB", (6, 8), (i, 0, 0)), tmp_path / f"{i}.png") for i in range(3)]
    cache_dir = tmp_path / "c"
    # a copy: the returned tensor maps the file itself, which this test truncates in place (imgcls never
    # writes to a cache file in place; it renames a new one over it, so a mapping stays valid)
    first = decode_images(paths, None, str(cache_dir), 1, **QUIET)[0].clone()
    npy = next(cache_dir.glob("*.npy"))
    npy.write_bytes(npy.read_bytes()[:40])
    again, ok, _ = decode_images(paths, None, str(cache_dir), 1, **QUIET)
    assert ok.all() and torch.equal(again, first)
    assert np.load(npy).shape == (3, 3, 8, 6)  # and the cache was rewritten


@pytest.mark.parametrize("damage", [[0, 0], [4, 4], [10, "8"], [10, 8.5], [10, 10**6]])
def test_a_recorded_size_outside_the_flags_bounds_is_a_miss_and_the_size_is_found_again(tmp_path, damage):
    paths = [_save(Image.new("RGB", (8, 10), (i * 40, 0, 0)), tmp_path / f"{i}.png") for i in range(3)]
    cache_dir = str(tmp_path / "cache")
    decode_images(paths, None, cache_dir, 1, **QUIET)
    record = next(p for p in os.listdir(cache_dir) if p.startswith("size-"))
    with open(os.path.join(cache_dir, record), "w") as f:
        f.write('{"size": %s}' % str(damage).replace("'", '"'))
    logged = []
    for _ in range(2):  # the cached path and, with the cache gone, the decoding one
        images, ok, _ = decode_images(paths, None, cache_dir, 1, log=logged.append)
        assert images.shape == (3, 3, 10, 8) and ok.all()
        assert "storage size (most common H x W of the data): 10x8" in logged
        for name in os.listdir(cache_dir):
            if name.startswith("decoded-"):
                os.unlink(os.path.join(cache_dir, name))
        with open(os.path.join(cache_dir, record), "w") as f:
            f.write('{"size": %s}' % str(damage).replace("'", '"'))
        logged.clear()
    images, _, _ = decode_images(paths, None, None, 1, **QUIET)  # no cache: unaffected
    assert images.shape == (3, 3, 10, 8)


@pytest.mark.parametrize("failing", ["_decode_to_file", "_write_status", "_write_size"])
def test_a_cache_write_that_fails_removes_every_file_it_wrote(tmp_path, monkeypatch, failing):
    """A disk that takes the pixels but not the status file (or the size record): nothing is left behind, the
    images come back decoded in memory, and one warning says why."""
    paths = [_save(Image.new("RGB", (8, 10), (i * 40, 0, 0)), tmp_path / f"{i}.png") for i in range(3)]
    cache_dir = tmp_path / "cache"
    real = getattr(cache, failing)

    def full_disk(*args, **kwargs):
        if failing != "_decode_to_file":
            real(*args, **kwargs)  # the file is written, then the disk fills: the error comes after it
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache, failing, full_disk)
    logged = []
    images, ok, _ = decode_images(paths, None, str(cache_dir), 1, log=logged.append)
    assert images.shape == (3, 3, 10, 8) and ok.all() and int(images[1, 0, 0, 0]) == 40
    assert sorted(os.listdir(cache_dir)) == []
    warnings = [line for line in logged if line.startswith("warning:")]
    assert len(warnings) == 1 and "No space left on device" in warnings[0]


def test_a_cache_folder_that_cannot_be_created_is_one_warning(tmp_path):
    paths = [_save(Image.new("RGB", (8, 10), (9, 9, 9)), tmp_path / f"{i}.png") for i in range(2)]
    (tmp_path / "taken").write_text("a file where the cache folder would go")
    logged = []
    images, ok, _ = decode_images(paths, None, str(tmp_path / "taken" / "cache"), 1, log=logged.append)
    assert images.shape == (2, 3, 10, 8) and ok.all()
    assert len([line for line in logged if line.startswith("warning:")]) == 1, logged


def test_default_cache_location_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == str(tmp_path / "xdg" / "imgcls") == resolve_cache_dir("default")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == str(tmp_path / "home" / ".cache" / "imgcls")
    assert resolve_cache_dir("none") is None and resolve_cache_dir(None) is None
    assert resolve_cache_dir(str(tmp_path / "c")) == str(tmp_path / "c")
    assert resolve("v1", {}).cache_dir == "default"


@pytest.mark.slow  # a subprocess or a large file
def test_command_line_caches_by_default_and_none_turns_it_off(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    data = write_folder_dataset(tmp_path / "d", counts=(10, 8, 6))
    code, out, err = cli(train_script, "--data", data, "--out", tmp_path / "r1", *TINY, capsys=capsys)
    assert code == 0, err
    cached = sorted(p.name for p in (tmp_path / "xdg" / "imgcls").iterdir())
    decoded = [name for name in cached if name.startswith("decoded-")]  # and size-<key>.json, the size found
    assert len(decoded) == 2 and decoded[0].endswith(".json") and decoded[1].endswith(".npy") and len(cached) == 3
    assert f"decode cache: {tmp_path / 'xdg' / 'imgcls'} (0 MiB in use" in out
    code, out, err = cli(train_script, "--data", data, "--out", tmp_path / "r2", *TINY, capsys=capsys)
    assert code == 0 and "loaded 24 from cache" in out, out + err
    code, out, err = cli(train_script, "--data", data, "--out", tmp_path / "r3", "--cache-dir", "none", *TINY,
                         capsys=capsys)
    assert code == 0 and "decode cache" not in out and "from cache" not in out


def test_bench_measures_the_default_cache_path(tmp_path, monkeypatch):
    """bench/data.py loads through the resolved Config: it writes and reads the default cache, like train.py."""
    from helpers import load_bench_script
    bench = load_bench_script(monkeypatch, "data")  # with bench/ on the path, for its common.py
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    data = write_folder_dataset(tmp_path / "d", counts=(4, 3, 2))
    logged = []
    bench.load_like_train_py(str(data), log=logged.append)
    assert len(list((tmp_path / "xdg" / "imgcls").glob("decoded-*.npy"))) == 1
    logged.clear()
    bench.load_like_train_py(str(data), log=logged.append)
    assert any("from cache" in line for line in logged)


@pytest.fixture
def small_paths(tmp_path):
    data = write_folder_dataset(tmp_path / "d", counts=(4, 3, 2))
    return sorted(str(p) for p in data.rglob("*.png"))


@pytest.mark.parametrize("damage", ["empty_npy", "truncated_npy", "json_wrong_shape", "json_not_json",
                                    "wrong_count"])
def test_damaged_cache_is_decoded_again_and_said(small_paths, tmp_path, damage):
    cache_dir = tmp_path / "cache"
    # a copy: the tensor maps the file, which this test damages in place (imgcls itself only renames over it)
    reference = decode_images(small_paths, None, str(cache_dir), 1, **QUIET)[0].clone()
    npy = next(cache_dir.glob("*.npy"))
    meta = npy.with_suffix(".json")
    if damage == "empty_npy":
        npy.write_bytes(b"")
    elif damage == "truncated_npy":
        npy.write_bytes(npy.read_bytes()[:200])
    elif damage == "json_wrong_shape":
        meta.write_text(json.dumps([1, 2, 3]))
    elif damage == "json_not_json":
        meta.write_text("{")
    else:
        meta.write_text(json.dumps({"ok": [True] * 3, "reasons": [""] * 3}))
    logged = []
    again, ok2, _ = decode_images(small_paths, None, str(cache_dir), 1, log=logged.append)
    assert torch.equal(again, reference) and ok2.all()
    said = [line for line in logged if "unreadable" in line]
    assert len(said) == 1 and str(npy) in said[0] and "decoding again" in said[0]
    # and it was rewritten: the next start reads it
    logged.clear()
    decode_images(small_paths, None, str(cache_dir), 1, log=logged.append)
    assert any("from cache" in line for line in logged)


def test_unusable_cache_folder_is_one_warning_and_the_run_goes_on(small_paths, tmp_path):
    (tmp_path / "afile").write_text("x")
    logged = []
    images, ok, _ = decode_images(small_paths, None, str(tmp_path / "afile" / "cache"), 1, log=logged.append)
    assert ok.all() and images.shape[0] == len(small_paths)
    warnings = [line for line in logged if line.startswith("warning: could not write the decode cache")]
    assert len(warnings) == 1 and "continuing without it" in warnings[0]


@needs_non_root
def test_read_only_cache_folder_is_one_warning(small_paths, tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    logged = []
    _, ok, _ = decode_images(small_paths, None, str(tmp_path / "ro"), 1, log=logged.append)
    assert ok.all() and sum("could not write the decode cache" in line for line in logged) == 1
    assert list((tmp_path / "ro").iterdir()) == []


@pytest.mark.slow  # a subprocess or a large file
def test_full_disk_while_writing_the_cache_leaves_no_temp(small_paths, tmp_path):
    """`ulimit -f`: writes past 64 KiB fail with EFBIG (Python ignores SIGXFSZ), like a full disk."""
    cache_dir = tmp_path / "cache"
    script = (f"from imgcls.data.cache import decode_images\n"
              f"paths = {small_paths!r}\n"
              f"images, ok, _ = decode_images(paths, (64, 64), {str(cache_dir)!r}, 1)\n"
              f"print('decoded', int(ok.sum()))\n")
    limit = 64 * 1024  # the pixels are 9 x 3 x 64 x 64 = 110 KiB
    proc = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "decoded 9" in proc.stdout
    assert sum("warning: could not write the decode cache" in line for line in proc.stdout.splitlines()) == 1
    assert "(OSError: " in proc.stdout  # numpy words EFBIG as "N requested and M written"
    assert list(cache_dir.iterdir()) == []  # no partial .npy, no temp


def test_jpeg_draft_matches_a_full_decode_and_resize(tmp_path):
    rng = np.random.default_rng(0)
    # smooth content (a real photo's spectrum); DCT scaling and a bilinear resize then agree closely
    base = rng.integers(0, 256, size=(12, 16, 3)).astype(np.uint8)
    big = Image.fromarray(base).resize((640, 480), Image.BICUBIC)
    big.save(tmp_path / "big.jpg", quality=95)
    ours = cache._decode_file(str(tmp_path / "big.jpg"), (60, 80))
    with Image.open(tmp_path / "big.jpg") as im:
        full = np.asarray(im.convert("RGB").resize((80, 60), Image.BILINEAR)).transpose(2, 0, 1)
    diff = np.abs(ours.astype(int) - full.astype(int))
    assert ours.shape == (3, 60, 80) and diff.mean() < 3 and diff.max() < 40
    with Image.open(tmp_path / "big.jpg") as im:  # and draft is what made it cheap: 1/8 scale is 80x60
        im.draft(im.mode, (80, 60))
        assert im.size == (80, 60)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A valid PNG signature + IHDR of the given size and a tiny IDAT: the header is all we must read."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\0" * (width + 1) * 4)  # the first rows only: decoding it would fail later
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def _decode_one_in_a_fresh_process(path, report: str) -> list[str]:
    """decode_images on one file in a new process: [ok, peak RSS growth in MiB, str(report)] (a fresh process so
    the growth is this decode's alone)."""
    script = (f"import resource\n"
              f"from imgcls.data.cache import decode_images\n"
              f"before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              f"images, ok, why = decode_images([{str(path)!r}], (60, 80), None, 1)\n"
              f"grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
              f"print(bool(ok[0]), grown // 1024, {report})\n")
    proc = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(" ", 2)


@pytest.mark.slow  # a subprocess or a large file
def test_huge_png_is_refused_from_its_header_without_decoding(tmp_path):
    _png_header_only(tmp_path / "huge.png", 12000, 12000)
    good, grown_mb, reason = _decode_one_in_a_fresh_process(tmp_path / "huge.png", "why[0]")
    assert good == "False" and reason.startswith("too large to decode: 12000x12000 pixels")
    assert int(grown_mb) < 50  # a full RGB decode would be 412 MiB


@pytest.mark.slow  # a subprocess or a large file
def test_big_jpeg_decodes_with_little_memory(tmp_path):
    Image.new("RGB", (6000, 4000), (120, 30, 200)).save(tmp_path / "big.jpg", quality=90)  # 24 MP photo size
    good, grown_mb, pixel = _decode_one_in_a_fresh_process(tmp_path / "big.jpg", "images[0, :, 30, 40].tolist()")
    assert good == "True" and int(grown_mb) < 30  # a full decode is 69 MiB
    assert np.allclose(eval(pixel), [120, 30, 200], atol=3)


def test_a_cache_file_of_another_storage_size_is_a_miss_not_a_hit(tmp_path):
    data = write_folder_dataset(tmp_path / "data", counts=(3, 2, 2))
    paths = load_index(str(data), log=lambda *a: None).paths
    cache = tmp_path / "cache"
    first, ok, _ = decode_images(paths, size=None, cache_dir=str(cache), log=lambda *a: None)
    first = first.clone()  # the tensor maps the file, which np.save below rewrites in place
    assert tuple(first.shape[2:]) == (20, 16) and ok.all()
    npy = next(cache.glob("decoded-*.npy"))
    np.save(npy, np.zeros((len(paths), 3, 10, 10), np.uint8))  # parses, but is not what was decoded
    lines = []
    again, _, _ = decode_images(paths, size=None, cache_dir=str(cache), log=lines.append)
    assert torch.equal(again, first)  # decoded again at the data's own size, not trained at 10x10
    assert any("unreadable" in line and "decoding again" in line for line in lines), lines


def _trained_with_cache(tmp_path, capsys) -> Path:
    """A v1 run on a small folder data set with its decode cache in tmp_path/cache; returns the cache folder."""
    data = write_folder_dataset(tmp_path / "data", counts=(8, 6, 6))
    cache = tmp_path / "cache"
    code, _, err = cli(train_script, "--version", "v1", "--data", data, "--out", tmp_path / "runs", *TINY_B0,
                       "--cache-dir", cache, capsys=capsys)
    assert code == 0, err
    return cache


def test_predict_says_when_it_decodes_again_past_a_damaged_cache(tmp_path, capsys):
    cache = _trained_with_cache(tmp_path, capsys)
    npy = next(cache.glob("decoded-*.npy"))
    npy.write_bytes(npy.read_bytes()[:100])  # truncated
    code, out, err = cli(predict_script, "--run", tmp_path / "runs" / "v1", "--out", tmp_path / "p.csv",
                         capsys=capsys)
    assert code == 0, err
    assert any(line.startswith(f"decode cache {npy} unreadable") and line.endswith("decoding again")
               for line in out.splitlines()), out


def test_predict_on_a_trained_run_reuses_its_cache_file(tmp_path, capsys):
    """Training asks for the data's own size, predict for the size it resolved to: one cache file for both."""
    cache = _trained_with_cache(tmp_path, capsys)
    before = sorted(p.name for p in cache.iterdir())
    code, out, err = cli(predict_script, "--run", tmp_path / "runs" / "v1", "--out", tmp_path / "p.csv",
                         capsys=capsys)
    assert code == 0, err
    assert sorted(p.name for p in cache.iterdir()) == before and "loaded 20 from cache" in out
