"""Crop positions and crop extraction: pure functions of their arguments (resizing is in
:mod:`nriqa.data.resize`).

Boxes are ``(x0, y0, x1, y1)`` integer pixel coordinates in the (resized) image, ``x1 - x0 ==
y1 - y0 == size``. Training draws boxes with :func:`random_boxes` from a generator the caller seeds;
evaluation uses :func:`eval_boxes`, which is deterministic so an image always gets the same score.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
from PIL import Image

TEST_CROP_POLICIES = ("grid", "seeded")


def random_boxes(
    width: int, height: int, size: int, k: int, rng: np.random.Generator
) -> np.ndarray:
    """``k`` uniformly random ``size`` x ``size`` boxes inside a ``width`` x ``height`` image."""
    _check_fits(width, height, size)
    x0 = rng.integers(0, width - size + 1, size=k)
    y0 = rng.integers(0, height - size + 1, size=k)
    return _boxes(x0, y0, size)


def eval_boxes(
    width: int, height: int, size: int, n: int, policy: str = "grid", key: str = ""
) -> np.ndarray:
    """``n`` deterministic ``size`` x ``size`` boxes for evaluation, shape ``(n, 4)``.

    - ``"grid"``: spread evenly over a near-square grid of about sqrt(n) rows (more crops along the
      image's long side), each row's crops evenly spaced from edge to edge; for n >= 4 the four
      corners are included; n = 1 is the centre crop.
    - ``"seeded"``: uniformly random positions from a generator seeded by a SHA-256 hash of ``key``
      (e.g. the image's file name), so the same key always gets the same crops, across processes
      and machines (Python's ``hash`` is salted per process and is not used).
    """
    if policy not in TEST_CROP_POLICIES:
        raise ValueError(
            f"unknown test_crops policy {policy!r}; allowed: {', '.join(TEST_CROP_POLICIES)}"
        )
    if n < 1:
        raise ValueError(f"need at least one test crop, got n={n}")
    _check_fits(width, height, size)
    if policy == "seeded":
        return random_boxes(width, height, size, n, np.random.default_rng(stable_seed(key)))
    return _grid_boxes(width, height, size, n)




def stable_seed(key: str) -> int:
    """A 64-bit seed from ``key`` that is the same in every process, run and machine."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")


def _grid_boxes(width: int, height: int, size: int, n: int) -> np.ndarray:
    # Lay the grid out along (long side, short side), then map back to (x, y).
    long_span, short_span = max(width, height) - size, min(width, height) - size
    lines = max(1, math.isqrt(n))
    counts = [n // lines + (i < n % lines) for i in range(lines)]
    line_offsets = _spread(short_span, lines)
    along, across = [], []
    for offset, count in zip(line_offsets, counts):
        along.append(_spread(long_span, count))
        across.append(np.full(count, offset))
    along, across = np.concatenate(along), np.concatenate(across)
    x0, y0 = (along, across) if width >= height else (across, along)
    return _boxes(x0, y0, size)


def _spread(span: int, count: int) -> np.ndarray:
    """``count`` integer offsets evenly spread over ``[0, span]``; one offset is the centre."""
    if count == 1:
        return np.array([span // 2])
    return np.rint(np.linspace(0, span, count)).astype(np.int64)


def _boxes(x0: np.ndarray, y0: np.ndarray, size: int) -> np.ndarray:
    x0, y0 = np.asarray(x0, dtype=np.int64), np.asarray(y0, dtype=np.int64)
    return np.stack([x0, y0, x0 + size, y0 + size], axis=1)


def _check_fits(width: int, height: int, size: int) -> None:
    if size < 1:
        raise ValueError(f"crop size must be positive, got {size}")
    if width < size or height < size:
        raise ValueError(
            f"a {size}x{size} crop does not fit a {width}x{height} image; "
            f"apply ensure_min_size first"
        )


def extract_crops(img: Image.Image | np.ndarray, boxes: np.ndarray, flips=None) -> torch.Tensor:
    """Cut ``boxes`` out of ``img`` as a uint8 tensor ``(k, 3, size, size)``.

    ``img`` is an RGB ``PIL.Image`` or an ``(H, W, 3)`` uint8 array; it is converted to one
    channels-first array and every crop is a slice of it. ``flips`` (bool, one per box) mirrors crops horizontally.
    """
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image, got array {arr.shape} {arr.dtype}")
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    k = len(boxes)
    flips = np.zeros(k, dtype=bool) if flips is None else np.asarray(flips, dtype=bool).reshape(-1)
    if len(flips) != k:
        raise ValueError(f"{len(flips)} flips for {k} boxes")
    if k == 0:
        raise ValueError("no boxes to extract")
    sizes = np.concatenate([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]])
    size = int(sizes[0])
    if size < 1 or np.any(sizes != size):
        raise ValueError(f"all boxes must be squares of one size, got sides {sorted(set(sizes))}")
    height, width = arr.shape[:2]
    if boxes[:, :2].min() < 0 or boxes[:, 2].max() > width or boxes[:, 3].max() > height:
        raise ValueError(f"a box falls outside the {width}x{height} image")
    # One channels-first copy of the image makes every crop a copy of contiguous row runs: about
    # 25x faster than slicing HWC and permuting each crop.
    chw = np.ascontiguousarray(arr.transpose(2, 0, 1))
    out = np.empty((k, 3, size, size), dtype=np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        crop = chw[:, y0:y1, x0:x1]
        out[i] = crop[:, :, ::-1] if flips[i] else crop
    return torch.from_numpy(out)
