"""load_image: every mode to 8-bit RGB, EXIF orientation, and errors that name the file."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nriqa.data.images import load_image
from nriqa.errors import ImageError


def _save(tmp_path: Path, img: Image.Image, name: str, **kw) -> Path:
    path = tmp_path / name
    img.save(path, **kw)
    return path


def _png16(arr: np.ndarray) -> bytes:
    """A 16-bit PNG (grey, RGB or RGBA), which Pillow can read but not write."""
    height, width, channels = arr.shape
    colour_type = {1: 0, 3: 2, 4: 6}[channels]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _pixels(path: Path) -> np.ndarray:
    img = load_image(path)
    assert img.mode == "RGB"
    return np.asarray(img)


def test_rgb_unchanged(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = _pixels(_save(tmp_path, Image.fromarray(arr), "a.png"))
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grey_modes(tmp_path, mode):
    grey = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    img = Image.fromarray(grey).convert(mode)
    out = _pixels(_save(tmp_path, img, f"g_{mode}.png"))
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))


def test_grey_alpha_on_white(tmp_path):
    la = np.array([[[10, 255], [10, 0]]], dtype=np.uint8)  # opaque dark, fully transparent
    out = _pixels(_save(tmp_path, Image.fromarray(la, "LA"), "la.png"))
    np.testing.assert_array_equal(out[0, 0], [10, 10, 10])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])


def test_rgba_composited_on_white(tmp_path):
    rgba = np.array([[[255, 0, 0, 255], [0, 0, 255, 0], [0, 0, 0, 128]]], dtype=np.uint8)
    out = _pixels(_save(tmp_path, Image.fromarray(rgba, "RGBA"), "rgba.png"))
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])
    assert np.all(np.abs(out[0, 2].astype(int) - 127) <= 1)  # half-transparent black on white


def test_palette(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.putpixel((1, 0), 1)
    out = _pixels(_save(tmp_path, img, "p.png"))
    np.testing.assert_array_equal(out[0], [[255, 0, 0], [0, 255, 0]])


def test_palette_transparency_on_white(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.putpixel((1, 0), 1)
    path = _save(tmp_path, img, "pt.png", transparency=1)
    with Image.open(path) as written:
        assert written.info.get("transparency") == 1
    np.testing.assert_array_equal(_pixels(path)[0], [[255, 0, 0], [255, 255, 255]])


def test_palette_gif_transparency(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 255, 9, 9, 9] + [0] * 762)
    img.putpixel((1, 0), 1)
    path = _save(tmp_path, img, "pt.gif", transparency=1)
    np.testing.assert_array_equal(_pixels(path)[0], [[0, 0, 255], [255, 255, 255]])


def test_cmyk(tmp_path):
    cmyk = np.array([[[0, 0, 0, 0], [0, 255, 255, 0], [0, 0, 0, 255]]], dtype=np.uint8)
    out = _pixels(_save(tmp_path, Image.fromarray(cmyk, "CMYK"), "c.tif"))
    np.testing.assert_array_equal(out[0], [[255, 255, 255], [255, 0, 0], [0, 0, 0]])


def test_cmyk_jpeg(tmp_path):
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    out = _pixels(_save(tmp_path, img, "c.jpg", quality=95))
    assert np.all(np.abs(out.astype(int) - [255, 0, 0]) <= 3)


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_sixteen_bit_grey_scaled_not_clipped(tmp_path, fmt):
    values = np.array([[0, 65535, 257 * 100, 32768]], dtype=np.uint16)
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    out = _pixels(_save(tmp_path, img, f"g16.{fmt}"))
    np.testing.assert_array_equal(out[0, :, 0], [0, 255, 100, 128])
    assert np.all(out[..., 0] == out[..., 2])


def test_sixteen_bit_grey_png_by_hand(tmp_path):
    path = tmp_path / "g16b.png"
    path.write_bytes(_png16(np.array([[[0], [65535], [257 * 200]]], dtype=np.uint16)))
    np.testing.assert_array_equal(_pixels(path)[0, :, 0], [0, 255, 200])


def test_mode_i(tmp_path):
    values = np.array([[0, 65535, 257 * 50]], dtype=np.int32)
    path = _save(tmp_path, Image.fromarray(values, "I"), "i.tif")
    with Image.open(path) as written:
        assert written.mode == "I"
    np.testing.assert_array_equal(_pixels(path)[0, :, 1], [0, 255, 50])


def test_mode_i_outside_sixteen_bits_is_stretched(tmp_path):
    values = np.array([[-100, 0, 155]], dtype=np.int32)
    path = _save(tmp_path, Image.fromarray(values, "I"), "i2.tif")
    np.testing.assert_array_equal(_pixels(path)[0, :, 0], [0, 100, 255])


@pytest.mark.parametrize(
    ("values", "expected"),
    [([0.0, 1.0, 0.5], [0, 255, 128]), ([0.0, 255.0, 100.0], [0, 255, 100])],
)
def test_mode_f(tmp_path, values, expected):
    path = _save(tmp_path, Image.fromarray(np.array([values], dtype=np.float32), "F"), "f.tif")
    np.testing.assert_array_equal(_pixels(path)[0, :, 0], expected)


def test_sixteen_bit_rgb_and_rgba_png(tmp_path):
    rgb = np.array([[[65535, 0, 257 * 128], [257 * 10, 65535, 0]]], dtype=np.uint16)
    path = tmp_path / "rgb16.png"
    path.write_bytes(_png16(rgb))
    np.testing.assert_array_equal(_pixels(path)[0], [[255, 0, 128], [10, 255, 0]])

    rgba = np.array([[[65535, 65535, 65535, 65535], [0, 0, 0, 0]]], dtype=np.uint16)
    path = tmp_path / "rgba16.png"
    path.write_bytes(_png16(rgba))
    np.testing.assert_array_equal(_pixels(path)[0], [[255, 255, 255], [255, 255, 255]])


def test_exif_orientation_applied(tmp_path):
    # Left half red, right half blue; orientation 6 means "rotate 90 degrees clockwise to display".
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = [255, 0, 0]
    arr[:, 20:] = [0, 0, 255]
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6
    path = _save(tmp_path, img, "rot.jpg", exif=exif, quality=95)
    out = load_image(path)
    assert out.size == (20, 40)  # width, height swapped
    top, bottom = np.asarray(out)[5, 10], np.asarray(out)[35, 10]
    assert top[0] > 200 and top[2] < 50  # red on top after the clockwise turn
    assert bottom[2] > 200 and bottom[0] < 50


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match="nope.jpg.*not found") as info:
        load_image(path)
    assert info.value.path == str(path)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.touch()
    with pytest.raises(ImageError, match=r"empty.png.*empty"):
        load_image(path)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is text, not pixels\n" * 10)
    with pytest.raises(ImageError, match=r"notes.jpg.*not an image"):
        load_image(path)


def test_corrupt_png(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[40:60] = b"\xff" * 20  # damage IHDR / IDAT, keep the signature
    path = tmp_path / "bad.png"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="bad.png"):
        load_image(path)


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_truncated(tmp_path, fmt):
    arr = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG" if fmt == "jpg" else "PNG")
    path = tmp_path / f"cut.{fmt}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match=rf"cut.{fmt}.*truncated"):
        load_image(path)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to count open files")
def test_no_file_handles_leak(tmp_path):
    good = _save(tmp_path, Image.new("RGB", (8, 8)), "ok.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(good.read_bytes()[:50])
    before = _open_fds()
    for _ in range(50):
        load_image(good).load()
        with pytest.raises(ImageError):
            load_image(bad)
    assert _open_fds() <= before


def test_result_usable_after_file_closed(tmp_path):
    path = _save(tmp_path, Image.new("RGB", (8, 6), (9, 8, 7)), "ok.png")
    img = load_image(path)
    path.unlink()
    assert img.resize((4, 3)).getpixel((0, 0)) == (9, 8, 7)
