"""Reading image files into 8-bit RGB, whatever their mode, with errors that name the file.

Every image nriqa scores or trains on passes through :func:`load_image`, so mode conversions live
here and nowhere else:

=================== ===========================================================================
source mode         conversion
=================== ===========================================================================
RGB                 unchanged (Pillow already maps 16-bit RGB PNGs to 8 bits, high byte)
1, L, YCbCr, CMYK   Pillow's own conversion to RGB
LA, RGBA, PA, P+tRNS composited on a white background (transparent pixels become white)
P                   palette expanded
I;16*, I            16-bit grey: scaled by 255/65535 (white stays white, never clipped); ``I``
                    values outside [0, 65535] are stretched from their own min..max
F                   float grey: [0, 1] scaled by 255, [0, 255] kept, anything else stretched
=================== ===========================================================================

EXIF orientation is applied first, so a phone photo is scored the way it is displayed.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nriqa.errors import ImageError

_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


def load_image(path: str | Path) -> Image.Image:
    """Read ``path`` as an 8-bit RGB ``PIL.Image`` with its EXIF orientation applied.

    The whole file is decoded before returning (``.load()``), so a truncated file fails here rather
    than later in a worker; Pillow's ``LOAD_TRUNCATED_IMAGES`` is left as it is (off by default).
    The file is closed before returning. Raises :class:`ImageError` naming the file for a missing,
    empty, non-image, corrupt, truncated or zero-size file.
    """
    path = Path(path)
    _check_file(path)
    try:
        # We own the file object, so it is closed here whatever the format (Pillow keeps files it
        # opened itself open for multi-frame images); the decoded pixels outlive it.
        with open(path, "rb") as fh:
            return decode_image(Image.open(fh), path, in_place=True)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(path, "not an image file (format not recognised)") from None
    except Image.DecompressionBombError as err:
        raise ImageError(path, f"image too large to decode safely: {err}") from None
    except Exception as err:  # decoders raise OSError, SyntaxError, ValueError, struct.error ...
        raise ImageError(
            path, f"corrupt or truncated image ({type(err).__name__}: {err})"
        ) from None


def decode_image(img: Image.Image, path: str | Path | None = None, in_place: bool = False) -> Image.Image:
    """An opened image as :func:`load_image` returns it: fully decoded, EXIF orientation applied,
    8-bit RGB. ``img`` itself is changed only when ``in_place`` (the caller's own image is not)."""
    img.load()
    if img.width == 0 or img.height == 0:
        raise ImageError(path, f"image has zero size ({img.width}x{img.height})")
    if in_place:
        ImageOps.exif_transpose(img, in_place=True)
    else:
        img = ImageOps.exif_transpose(img)
    return to_rgb(img, path)


def _check_file(path: Path) -> None:
    if path.is_symlink() and not path.exists():
        try:
            os.stat(path)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise ImageError(path, "symbolic link loop") from None
        raise ImageError(path, f"dangling symbolic link (to {os.readlink(path)!r}, "
                               "which does not exist)")
    if not path.exists():
        raise ImageError(path, "file not found")
    if path.is_dir():
        link = " (a symbolic link to a folder: a loop?)" if path.is_symlink() else ""
        raise ImageError(path, f"not a file but a folder{link}")
    if not path.is_file():
        raise ImageError(path, "not a file")
    if path.stat().st_size == 0:
        raise ImageError(path, "empty file (0 bytes)")


def to_rgb(img: Image.Image, path: str | Path | None = None) -> Image.Image:
    """Convert an image of any Pillow mode to 8-bit RGB (see the module's table)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P" and "transparency" in img.info:
        return _on_white(img.convert("RGBA"))
    if mode in _ALPHA_MODES:
        return _on_white(img.convert("RGBA"))
    if mode in _SIXTEEN_BIT_MODES:
        return _grey_to_rgb(np.asarray(img).astype(np.float64) * (255.0 / 65535.0))
    if mode == "I":
        return _grey_to_rgb(_int_to_255(np.asarray(img)))
    if mode == "F":
        return _grey_to_rgb(_float_to_255(np.asarray(img), path))
    try:
        return img.convert("RGB")
    except ValueError as err:
        raise ImageError(path, f"cannot convert image mode {mode!r} to RGB: {err}") from None


def _on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _grey_to_rgb(values: np.ndarray) -> Image.Image:
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=2))


def _int_to_255(values: np.ndarray) -> np.ndarray:
    # Pillow decodes 16-bit grey files as "I" in some formats and versions: treat the 16-bit range
    # as the scale whenever the values fit in it, rather than clipping everything above 255.
    values = values.astype(np.float64)
    if values.size and values.min() >= 0 and values.max() <= 65535:
        return values * (255.0 / 65535.0)
    return _stretch(values)


def _float_to_255(values: np.ndarray, path) -> np.ndarray:
    values = values.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise ImageError(path, "float image has NaN or infinite pixel values")
    if values.size == 0:
        return values
    if values.min() >= 0 and values.max() <= 1:
        return values * 255.0
    if values.min() >= 0 and values.max() <= 255:
        return values
    return _stretch(values)


def _stretch(values: np.ndarray) -> np.ndarray:
    low, high = values.min(), values.max()
    if high == low:
        return np.zeros_like(values)
    return (values - low) * (255.0 / (high - low))
