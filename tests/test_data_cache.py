"""Decoding: odd image modes, broken files, storage size, and the on-disk cache (reuse + invalidation)."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.data import cache
from imgcls.data.cache import decode_images

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
