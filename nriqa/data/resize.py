"""Resizing an image before it is cropped: the resize and small-image policies. Pure functions of
their arguments, with no torch, so the config can check a policy name cheaply."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from nriqa.errors import ImageError

RESIZE_POLICIES = ("none", "deiqt", "aspect:HxW", "short:N")
SMALL_IMAGE_POLICIES = ("upscale", "pad", "error")

# torchvision's Resize((512, 384)) as DEIQT applies it to KonIQ / SPAQ: (height, width), aspect lost.
DEIQT_SIZE_HW = (512, 384)

_RESAMPLE = Image.Resampling.BICUBIC


def resize_image(img: Image.Image, policy: str) -> Image.Image:
    """Resize ``img`` by ``policy`` (bicubic, antialiased); returns ``img`` itself when unchanged.

    - ``"none"``: unchanged.
    - ``"deiqt"``: DEIQT's quirk, height 512 x width 384 whatever the aspect ratio.
    - ``"aspect:HxW"`` (``"aspect:384x512"`` is the KonIQ / SPAQ default): scale, keeping the
      aspect ratio, to fit an H x W box turned like the image (landscape box for a landscape image,
      portrait box for a portrait one): a 4:3 landscape image becomes exactly 512x384, a 3:4
      portrait one 384x512, a wider one e.g. 512x288.
    - ``"short:N"``: scale so the short side is N.
    """
    target = resized_size(img.width, img.height, policy)
    if target == img.size:
        return img
    return img.resize(target, _RESAMPLE)


def resized_size(width: int, height: int, policy: str) -> tuple[int, int]:
    """The ``(width, height)`` :func:`resize_image` produces for an image of this size."""
    policy = str(policy).strip()
    if policy == "none":
        return width, height
    if policy == "deiqt":
        return DEIQT_SIZE_HW[1], DEIQT_SIZE_HW[0]
    match = re.fullmatch(r"aspect:(\d+)x(\d+)", policy)
    if match and min(int(match[1]), int(match[2])) > 0:
        box_short, box_long = sorted((int(match[1]), int(match[2])))
        scale = min(box_long / max(width, height), box_short / min(width, height))
        return _scaled(width, height, scale)
    match = re.fullmatch(r"short:(\d+)", policy)
    if match and int(match[1]) > 0:
        return _scaled(width, height, int(match[1]) / min(width, height))
    raise ValueError(
        f"unknown resize policy {policy!r}; allowed: {', '.join(RESIZE_POLICIES)} "
        f"(e.g. 'aspect:384x512', 'short:384')"
    )


def _scaled(width: int, height: int, scale: float) -> tuple[int, int]:
    return max(1, round(width * scale)), max(1, round(height * scale))


def ensure_min_size(
    img: Image.Image, size: int, policy: str = "upscale", path: str | Path | None = None
) -> Image.Image:
    """Make ``img`` at least ``size`` x ``size`` so a crop fits; returns ``img`` when it already does.

    - ``"upscale"`` (default): scale up, keeping the aspect ratio, so the short side equals
      ``size`` (bicubic).
    - ``"pad"``: reflect-pad each short dimension symmetrically to ``size`` (no resampling).
    - ``"error"``: raise :class:`ImageError` naming ``path``, the image size and the crop size.
    """
    if policy not in SMALL_IMAGE_POLICIES:
        raise ValueError(
            f"unknown small_image policy {policy!r}; allowed: {', '.join(SMALL_IMAGE_POLICIES)}"
        )
    width, height = img.size
    if width >= size and height >= size:
        return img
    if policy == "error":
        raise ImageError(
            path,
            f"image is {width}x{height}, smaller than the {size}x{size} crop (small_image='error')",
        )
    if policy == "upscale":
        target = _scaled(width, height, size / min(width, height))
        # Rounding can leave the long side one pixel short of ``size`` for extreme aspect ratios.
        return img.resize((max(size, target[0]), max(size, target[1])), _RESAMPLE)
    arr = np.asarray(img)
    pad_y, pad_x = max(0, size - height), max(0, size - width)
    pads = [(pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2)]
    pads += [(0, 0)] * (arr.ndim - 2)
    return Image.fromarray(np.pad(arr, pads, mode="reflect"))
