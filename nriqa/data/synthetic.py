"""The embedded default dataset: KADID-10k's distortions of photos bundled in installed packages.

``nriqa demo`` and ``nriqa train`` with no dataset named train on this dataset. It needs no
download: it is generated on the user's machine from natural colour photos that ship inside the
scikit-image, scikit-learn and matplotlib wheels, and labelled with human opinion measured on
KADID-10k (Lin, Hosu and Saupe, QoMEX 2019). Design, grounding and limits: docs/embedded_dataset.md.

References (content groups, :data:`REFERENCES`)
    Every natural colour photo those wheels bundle: scikit-image's ``astronaut``, ``coffee``,
    ``chelsea`` (a cat), ``rocket``, ``motorcycle`` (the left view of ``stereo_motorcycle``),
    ``immunohistochemistry`` (a stained micrograph), ``retina`` (the central square of the fundus
    photo) and ``hubble_deep_field``; scikit-learn's ``china`` and ``flower``; matplotlib's
    ``grace_hopper``. Each is scaled (PIL bicubic) to cover KADID's 4:3 frame and centre-cropped
    to it: ``size`` x 4/3 ``size`` pixels (default 384 x 512, KADID's size), in its own
    orientation. A reference that an installed version no longer bundles is skipped with a
    warning; the manifest records which references were used.

Distortions (:data:`KADID_TYPES`, five levels each, level 1 mildest)
    18 of KADID-10k's 25 types, each with KADID's five level parameters (reconstructed from the
    dataset's published generation code; the units are listed in :data:`KADID_TYPES`): three
    blurs, colour diffusion, colour quantization, Lab saturation, JPEG 2000, JPEG, four noises,
    brighten, darken, pixelate, quantization, colour blocks, high sharpen. Each function maps
    ``(uint8 HxWx3 image, level 1..5, numpy Generator) -> uint8 HxWx3 image`` and draws all its
    randomness from the generator. The builder seeds it from ``(seed, reference, distortion)`` and
    restarts it for every level (common random numbers: the same noise pattern, motion angle and
    block places at every level of one image, so severity is the only thing that changes).

Label
    ``score`` is the mean human score KADID-10k's raters gave to that distortion type at that
    level (:data:`KADID_MEANS`, over 81 references, 1..5), mapped to [0, 1] by ``(mean - 1) / 4``;
    higher is better. It is the same function of the level for every reference, and falls with the
    level for every type used (the types whose KADID means do not fall are left out). It does not
    depend on the photo: a blind model has to recognise the distortion and its strength on any
    content, which is what makes it learnable from a few references. Limits: the label is KADID's
    average over other photos, not a rating of these images; the distortions are reconstructions
    of KADID's, so a level may look somewhat milder or stronger than KADID's; and one label per
    (type, level) means a model can do well without judging content-dependent visibility.

Layout of a built dataset (``build_embedded``)::

    <root>/refs/<ref>.png                       the references in KADID's frame
    <root>/images/<ref>_<dist>_<level>.png      the distorted images
    <root>/labels.csv                           path,score,group,dist_type,level,ref_path
    <root>/manifest.json                        parameters, references, versions, hashes

``path`` and ``ref_path`` are relative to the root; ``group`` is the reference name. The build
happens in a temporary sibling directory that is renamed into place once complete (manifest
last), so concurrent builders never see a half-written dataset and an interrupted build leaves
nothing that passes for complete. A cached build is reused only when its manifest matches the
parameters, the hash of this module's source (so a changed recipe rebuilds) and the hash of
labels.csv, and every listed image exists. Builds are deterministic for a seed in a given environment:
the same bytes twice. (Other versions of Pillow, its codecs or scikit-image may change pixels;
the manifest records the versions.)
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage, signal

from nriqa.data.table import Scale
from nriqa.errors import ConfigError, DataError

FORMAT_VERSION = 2
DEFAULT_SIZE = 384  # KADID-10k's images are 512 x 384
N_LEVELS = 5
LABEL_SCALE = Scale(0.0, 1.0, True)
LABEL_COLUMNS = ("path", "score", "group", "dist_type", "level", "ref_path")

Distortion = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

# Strong saturation and brightening leave the sRGB gamut; clipping is intended (as in KADID).
# A filter, not catch_warnings: the builder's threads would race on the warning state.
warnings.filterwarnings("ignore", message="Conversion from CIE-LAB", category=UserWarning)


# --------------------------------------------------------------------------------------------
# Human-opinion calibration: KADID-10k's mean score per distortion type and level
# --------------------------------------------------------------------------------------------

#: KADID-10k's 25 distortion types, by its type number (image ``Irr_TT_ll.png``).
KADID_TYPE_NAMES: dict[int, str] = {
    1: "Gaussian blur", 2: "lens blur", 3: "motion blur", 4: "color diffusion", 5: "color shift",
    6: "color quantization", 7: "color saturation 1 (HSV)", 8: "color saturation 2 (Lab)",
    9: "JPEG2000", 10: "JPEG", 11: "white noise", 12: "white noise in color component",
    13: "impulse noise", 14: "multiplicative noise", 15: "denoise", 16: "brighten", 17: "darken",
    18: "mean shift", 19: "jitter", 20: "non-eccentricity patch", 21: "pixelate",
    22: "quantization", 23: "color block", 24: "high sharpen", 25: "contrast change",
}

#: Mean KADID-10k score (1..5, higher = better; KADID calls it DMOS) of each type at levels 1..5,
#: over its 81 references (30 raters per image). A fact about the published labels, recomputed by
#: ``python benchmarks/kadid_table.py`` from KADID's label file (not part of nriqa).
KADID_MEANS: dict[int, tuple[float, ...]] = {
    1: (4.612, 4.382, 2.911, 1.873, 1.303),
    2: (3.862, 2.654, 1.756, 1.442, 1.299),
    3: (4.604, 4.095, 2.848, 2.175, 1.668),
    4: (4.495, 2.602, 1.756, 1.605, 1.394),
    5: (4.227, 2.545, 1.916, 1.854, 1.864),
    6: (4.108, 3.973, 3.719, 3.203, 2.425),
    7: (2.746, 2.335, 2.262, 2.243, 2.027),
    8: (4.580, 3.330, 2.648, 1.816, 1.525),
    9: (4.553, 4.205, 3.873, 2.445, 1.394),
    10: (4.338, 4.246, 3.866, 1.945, 1.350),
    11: (3.893, 3.390, 3.045, 2.710, 2.301),
    12: (4.468, 3.682, 3.170, 2.687, 2.380),
    13: (3.584, 2.930, 2.613, 2.312, 2.132),
    14: (4.404, 3.581, 3.084, 2.639, 2.117),
    15: (3.668, 2.727, 2.203, 1.655, 1.467),
    16: (4.506, 4.288, 3.632, 2.701, 1.809),
    17: (4.600, 4.528, 4.231, 3.535, 2.221),
    18: (4.218, 4.519, 4.603, 4.370, 3.903),
    19: (4.419, 4.086, 3.235, 1.849, 1.339),
    20: (4.333, 3.938, 3.773, 3.464, 3.261),
    21: (3.889, 3.098, 2.900, 2.794, 1.496),
    22: (4.169, 3.933, 3.686, 3.373, 2.799),
    23: (2.687, 2.359, 2.300, 2.126, 2.035),
    24: (3.579, 2.636, 2.136, 1.613, 1.336),
    25: (3.419, 3.858, 4.290, 4.141, 3.324),
}

KADID_SCALE = (1.0, 5.0)


def kadid_label(dist: str, level: int) -> float:
    """The label of distortion ``dist`` at ``level``: KADID's mean for it, mapped 1..5 -> 0..1."""
    if dist not in DISTORTIONS:
        raise ConfigError(f"unknown distortion {dist!r}; known: {sorted(DISTORTIONS)}")
    low, high = KADID_SCALE
    mean = _param(KADID_MEANS[KADID_TYPES[dist].kadid_type], level)
    return round((mean - low) / (high - low), 6)


# --------------------------------------------------------------------------------------------
# Helpers (images as float32 in [0, 1] inside the distortions, as KADID's MATLAB code works)
# --------------------------------------------------------------------------------------------


def _param(values: Sequence, level: int):
    if not 1 <= int(level) <= N_LEVELS:
        raise ConfigError(f"distortion level must be in 1..{N_LEVELS}, got {level}")
    return values[int(level) - 1]


def _float(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) / np.float32(255)


def _uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(x, np.float32) * 255), 0, 255).astype(np.uint8)


def _radius(sigma: float) -> int:
    """Half-width of MATLAB's ``fspecial('gaussian', 2*ceil(2*sigma)+1, sigma)`` kernel."""
    return int(np.ceil(2 * sigma))


def _blur(x: np.ndarray, sigma: float, channels=None) -> np.ndarray:
    """Gaussian blur of the channels of an HxWxC float image, replicated borders."""
    out = x.copy()
    for c in range(x.shape[2]) if channels is None else channels:
        out[..., c] = ndimage.gaussian_filter(x[..., c], sigma, mode="nearest",
                                              radius=_radius(sigma))
    return out


def _convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``imfilter(x, kernel, 'replicate')`` for each channel of an HxWxC float image."""
    r0, r1 = kernel.shape[0] // 2, kernel.shape[1] // 2
    padded = np.pad(x, ((r0, r0), (r1, r1), (0, 0)), mode="edge")
    return signal.fftconvolve(padded, kernel[:, :, None].astype(np.float32), mode="valid",
                              axes=(0, 1))


def _disk(radius: float) -> np.ndarray:
    """An averaging disk: each cell weighted by the share of it inside the circle (as
    ``fspecial('disk')``), measured on an 8x8 sub-grid."""
    r = int(np.ceil(radius))
    sub = (np.arange(8) + 0.5) / 8 - 0.5
    grid = np.arange(-r, r + 1)
    ys = (grid[:, None] + sub[None, :]).reshape(-1)
    inside = (ys[:, None] ** 2 + ys[None, :] ** 2) <= radius**2
    k = inside.reshape(2 * r + 1, 8, 2 * r + 1, 8).mean(axis=(1, 3))
    return k / k.sum()


def _line(length: float, angle: float) -> np.ndarray:
    """A normalised line ``length`` pixels long at ``angle`` radians (``fspecial('motion')``),
    drawn anti-aliased by bilinear splatting of many points along it."""
    half = int(np.ceil(length / 2)) + 1
    k = np.zeros((2 * half + 1, 2 * half + 1), np.float64)
    t = np.linspace(-(length - 1) / 2, (length - 1) / 2, max(2, int(8 * length)))
    xs, ys = half + t * np.cos(angle), half - t * np.sin(angle)
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                      (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(k, (y0 + dy, x0 + dx), w)
    return k / k.sum()


def _lab(x: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab

    return rgb2lab(x).astype(np.float32)


def _rgb(lab: np.ndarray) -> np.ndarray:
    from skimage.color import lab2rgb

    return np.clip(lab2rgb(lab), 0, 1).astype(np.float32)


def _curve(x: np.ndarray, mid: float) -> np.ndarray:
    """A tone curve through (0, 0), (0.5, mid), (1, 1): monotone cubic (PCHIP), clipped to [0, 1]
    (``mid`` above 1 saturates the upper half, as KADID's strongest brightening does)."""
    from scipy.interpolate import PchipInterpolator

    curve = PchipInterpolator([0.0, 0.5, 1.0], [0.0, mid, 1.0])
    return np.clip(curve(np.clip(x, 0, 1)), 0, 1).astype(np.float32)


def _codec(img: np.ndarray, fmt: str, **params) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **params)
    buf.seek(0)
    with Image.open(buf) as out:
        return np.asarray(out.convert("RGB"))


# --------------------------------------------------------------------------------------------
# Distortions: (uint8 HxWx3, level 1..5, rng) -> uint8 HxWx3, with KADID-10k's level parameters
# --------------------------------------------------------------------------------------------


def gaussian_blur(img, level, rng):
    return _uint8(_blur(_float(img), _param((0.1, 0.5, 1, 2, 5), level)))


def lens_blur(img, level, rng):
    return _uint8(_convolve(_float(img), _disk(_param((1, 2, 4, 6, 8), level))))


def motion_blur(img, level, rng):
    length = _param((1, 2, 4, 6, 10), level)
    return _uint8(_convolve(_float(img), _line(length, rng.uniform(0, np.pi))))


def color_diffusion(img, level, rng):
    lab = _lab(_float(img))
    return _uint8(_rgb(_blur(lab, _param((1, 3, 6, 8, 12), level), channels=(1, 2))))


def color_quantization(img, level, rng):
    colors = _param((64, 48, 32, 16, 8), level)
    # MATLAB's rgb2ind (minimum-variance colours, dithered) as an octree palette with
    # Floyd-Steinberg dithering: forty times faster than median cut, a similar look.
    pal = Image.fromarray(img).quantize(colors=colors, method=Image.Quantize.FASTOCTREE,
                                        dither=Image.Dither.FLOYDSTEINBERG)
    return np.asarray(pal.convert("RGB"))


def color_saturation(img, level, rng):
    lab = _lab(_float(img))
    lab[..., 1:] *= _param((1, 2, 3, 6, 9), level)
    return _uint8(_rgb(lab))


def jpeg2000(img, level, rng):
    ratio = _param((16, 32, 45, 120, 170), level)
    return _codec(img, "JPEG2000", quality_mode="rates", quality_layers=[ratio], irreversible=True)


def jpeg(img, level, rng):
    return _codec(img, "JPEG", quality=_param((43, 36, 24, 7, 4), level))


def white_noise(img, level, rng):
    var = _param((0.001, 0.002, 0.003, 0.005, 0.01), level)
    x = _float(img)
    return _uint8(x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(np.sqrt(var)))


def white_noise_color(img, level, rng):
    from skimage.color import rgb2ycbcr, ycbcr2rgb

    var = _param((0.0001, 0.0005, 0.001, 0.002, 0.003), level)
    ycc = rgb2ycbcr(_float(img)) / 255  # MATLAB's rgb2ycbcr range: Y 16..235, Cb/Cr 16..240
    ycc = ycc + rng.standard_normal(ycc.shape).astype(np.float32) * np.float32(np.sqrt(var))
    return _uint8(ycbcr2rgb(np.clip(ycc, 0, 1) * 255))


def impulse_noise(img, level, rng):
    density = _param((0.001, 0.005, 0.01, 0.02, 0.03), level)
    # imnoise 'salt & pepper' on an RGB array: each channel value independently.
    u = rng.random(img.shape, dtype=np.float32)
    out = img.copy()
    out[u < density / 2] = 0
    out[(u >= density / 2) & (u < density)] = 255
    return out


def multiplicative_noise(img, level, rng):
    var = _param((0.001, 0.005, 0.01, 0.02, 0.05), level)
    # imnoise 'speckle': x + n*x, n uniform with zero mean and variance var.
    x = _float(img)
    half = np.float32(np.sqrt(3 * var))
    return _uint8(x + x * rng.uniform(-half, half, x.shape).astype(np.float32))


def brighten(img, level, rng):
    mid = 0.5 + _param((0.1, 0.2, 0.4, 0.7, 1.1), level) / 2
    x = _float(img)
    lab = _lab(x)
    lab[..., 0] = _curve(lab[..., 0] / 100, mid) * 100
    # Two parts the curve applied to RGB, one part the curve applied to lightness only.
    return _uint8((2 * _curve(x, mid) + _rgb(lab)) / 3)


def darken(img, level, rng):
    return _uint8(_curve(_float(img), 0.5 - _param((0.05, 0.1, 0.2, 0.4, 0.8), level) / 2))


def pixelate(img, level, rng):
    z = 0.95 - _param((0.01, 0.05, 0.1, 0.2, 0.5), level) ** 0.6
    h, w = img.shape[:2]
    small = Image.fromarray(img).resize((max(1, int(w * z)), max(1, int(h * z))),
                                        Image.Resampling.NEAREST)
    return np.asarray(small.resize((w, h), Image.Resampling.NEAREST))


def quantization(img, level, rng):
    n = _param((20, 16, 13, 10, 7), level)
    # n equal-width intensity bins per channel, each value replaced by its bin's centre.
    idx = np.minimum((img.astype(np.int32) * n) // 256, n - 1)
    return np.clip(np.rint((idx + 0.5) * 256 / n - 0.5), 0, 255).astype(np.uint8)


def color_block(img, level, rng):
    count, size = _param((2, 4, 6, 8, 10), level), 32
    out = img.copy()
    h, w = img.shape[:2]
    side = min(size, h, w)
    # Draw every block's place and colour for the strongest level, use the first ``count``:
    # a stronger level adds blocks to a milder one's.
    ys = rng.integers(0, h - side + 1, 10)
    xs = rng.integers(0, w - side + 1, 10)
    colors = rng.integers(0, 256, (10, 3))
    for y, x, c in list(zip(ys, xs, colors))[:count]:
        out[y : y + side, x : x + side] = c
    return out


def high_sharpen(img, level, rng):
    # imsharpen on RGB: unsharp masking of the Lab lightness, Gaussian radius 1.
    lab = _lab(_float(img))
    light = lab[..., :1]
    lab[..., :1] = light + _param((1, 2, 3, 6, 12), level) * (light - _blur(light, 1.0))
    return _uint8(_rgb(lab))


@dataclass(frozen=True)
class KadidType:
    """An embedded distortion and the KADID-10k type whose human scores label it."""

    fn: Distortion
    kadid_type: int
    parameter: str  # what the five level parameters are, in KADID's units


#: name -> the distortion and its KADID-10k counterpart. Left out: color shift (5) and mean shift
#: (18), contrast change (25), whose KADID means do not fall with the level; HSV saturation (7),
#: whose two strongest parameters (0, -0.4) cannot be told apart once clipped; denoise (15), which
#: needs a denoising network; jitter (19) and non-eccentricity patch (20), whose exact procedures
#: could not be reconstructed.
KADID_TYPES: dict[str, KadidType] = {
    "gaussian_blur": KadidType(gaussian_blur, 1, "sigma 0.1, 0.5, 1, 2, 5 px"),
    "lens_blur": KadidType(lens_blur, 2, "disk radius 1, 2, 4, 6, 8 px"),
    "motion_blur": KadidType(motion_blur, 3, "line length 1, 2, 4, 6, 10 px, random angle"),
    "color_diffusion": KadidType(color_diffusion, 4, "Lab a/b blur sigma 1, 3, 6, 8, 12 px"),
    "color_quantization": KadidType(color_quantization, 6, "64, 48, 32, 16, 8 colours, dithered"),
    "color_saturation": KadidType(color_saturation, 8, "Lab a/b x 1, 2, 3, 6, 9"),
    "jpeg2000": KadidType(jpeg2000, 9, "compression ratio 16, 32, 45, 120, 170"),
    "jpeg": KadidType(jpeg, 10, "quality 43, 36, 24, 7, 4"),
    "white_noise": KadidType(white_noise, 11, "RGB variance 0.001, 0.002, 0.003, 0.005, 0.01"),
    "white_noise_color": KadidType(white_noise_color, 12,
                                   "YCbCr variance 0.0001, 0.0005, 0.001, 0.002, 0.003"),
    "impulse_noise": KadidType(impulse_noise, 13, "density 0.001, 0.005, 0.01, 0.02, 0.03"),
    "multiplicative_noise": KadidType(multiplicative_noise, 14,
                                      "speckle variance 0.001, 0.005, 0.01, 0.02, 0.05"),
    "brighten": KadidType(brighten, 16, "curve amount 0.1, 0.2, 0.4, 0.7, 1.1"),
    "darken": KadidType(darken, 17, "curve amount 0.05, 0.1, 0.2, 0.4, 0.8"),
    "pixelate": KadidType(pixelate, 21, "strength 0.01, 0.05, 0.1, 0.2, 0.5 (scale 0.95 - s^0.6)"),
    "quantization": KadidType(quantization, 22, "20, 16, 13, 10, 7 levels per channel"),
    "color_block": KadidType(color_block, 23, "2, 4, 6, 8, 10 blocks of 32 x 32 px"),
    "high_sharpen": KadidType(high_sharpen, 24, "unsharp amount 1, 2, 3, 6, 12"),
}

#: name -> distortion function (uint8 HxWx3 image, level 1..5, numpy Generator) -> uint8 image.
DISTORTIONS: dict[str, Distortion] = {name: t.fn for name, t in KADID_TYPES.items()}


# --------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _motorcycle() -> np.ndarray:
    import skimage.data

    return skimage.data.stereo_motorcycle()[0]  # the left view; the right one is the same scene


def _retina() -> np.ndarray:
    """The central square of the fundus photo, inside its circular field of view."""
    import skimage.data

    img = skimage.data.retina()
    h, w = img.shape[:2]
    side = int(0.6 * min(h, w))
    y0, x0 = (h - side) // 2, (w - side) // 2
    return img[y0 : y0 + side, x0 : x0 + side]


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)

    return load


def _matplotlib(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from matplotlib import cbook

        with Image.open(cbook.get_sample_data(filename, asfileobj=False)) as im:
            return np.asarray(im.convert("RGB"))

    return load


#: name -> loader of a natural colour photo bundled in an installed wheel (uint8 HxWx3): every one
#: that scikit-image 0.26, scikit-learn 1.9 and matplotlib 3.11 ship (``chelsea`` is also
#: scikit-image's ``cat``; the data needing a download, grayscale and drawn images are left out).
REFERENCES: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "coffee": _skimage("coffee"),
    "chelsea": _skimage("chelsea"),
    "rocket": _skimage("rocket"),
    "motorcycle": _motorcycle,
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "retina": _retina,
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "china": _sklearn("china.jpg"),
    "flower": _sklearn("flower.jpg"),
    "grace_hopper": _matplotlib("grace_hopper.jpg"),
}


def reference_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """KADID-10k's 4:3 frame: ``size`` x 4/3 ``size``, in the photo's own orientation."""
    long = int(round(size * 4 / 3))
    return (size, long) if width >= height else (long, size)


def load_reference(name: str, size: int = DEFAULT_SIZE) -> np.ndarray:
    """Reference ``name`` as uint8 RGB in KADID's frame: scaled (bicubic) to cover
    :func:`reference_shape` and centre-cropped to it (default 384 x 512, as KADID's images)."""
    if name not in REFERENCES:
        raise ConfigError(f"unknown embedded reference {name!r}; known: {sorted(REFERENCES)}")
    img = np.asarray(REFERENCES[name]())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = np.ascontiguousarray(img[..., :3]).astype(np.uint8)
    h, w = img.shape[:2]
    th, tw = reference_shape(h, w, size)
    scale = max(th / h, tw / w)
    new = (max(tw, round(w * scale)), max(th, round(h * scale)))
    if new != (w, h):
        img = np.asarray(Image.fromarray(img).resize(new, Image.Resampling.BICUBIC))
    y0, x0 = (img.shape[0] - th) // 2, (img.shape[1] - tw) // 2
    return np.ascontiguousarray(img[y0 : y0 + th, x0 : x0 + tw])


# --------------------------------------------------------------------------------------------
# Build and cache
# --------------------------------------------------------------------------------------------


def severities(levels: int = N_LEVELS) -> list[int]:
    """The severities (1..5) a dataset with ``levels`` levels uses: evenly spread over 1..5.

    5 -> [1, 2, 3, 4, 5], 3 -> [1, 3, 5], 2 -> [1, 5], 1 -> [3].
    """
    if not 1 <= int(levels) <= N_LEVELS:
        raise ConfigError(f"levels must be in 1..{N_LEVELS}, got {levels}")
    if int(levels) == 1:
        return [3]
    return sorted({int(round(v)) for v in np.linspace(1, N_LEVELS, int(levels))})


def _resolve_names(names, table: dict, what: str) -> list[str]:
    if names is None:
        return list(table)
    if isinstance(names, str):
        names = [names]
    names = list(dict.fromkeys(str(n) for n in names))
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ConfigError(f"unknown {what} {unknown}; known: {sorted(table)}")
    if not names:
        raise ConfigError(f"no {what} selected")
    return names


def _short_hash(names: Sequence[str]) -> str:
    return hashlib.sha256(",".join(names).encode()).hexdigest()[:8]


def cache_root() -> Path:
    """``$NRIQA_CACHE``, default ``~/.cache/nriqa``."""
    return Path(os.environ.get("NRIQA_CACHE") or "~/.cache/nriqa").expanduser()


def embedded_dir(
    seed: int = 0, size: int = DEFAULT_SIZE, levels: int = N_LEVELS, distortions=None, references=None
) -> Path:
    """Default location of a built dataset: ``$NRIQA_CACHE/embedded-v1-s{seed}-{size}-{code}``.

    ``code`` is the hash of the generating code, so a new nriqa version builds beside an old build
    instead of replacing it under a run that is reading it. Non-default ``levels``, distortions or
    references add a suffix, so datasets never collide.
    """
    name = f"embedded-v{FORMAT_VERSION}-s{int(seed)}-{int(size)}-{_code_hash()[:8]}"
    if int(levels) != N_LEVELS:
        name += f"-l{int(levels)}"
    dists = _resolve_names(distortions, DISTORTIONS, "distortion(s)")
    if dists != list(DISTORTIONS):
        name += f"-d{_short_hash(dists)}"
    refs = _resolve_names(references, REFERENCES, "reference(s)")
    if refs != list(REFERENCES):
        name += f"-r{_short_hash(refs)}"
    return cache_root() / name


def _rng(seed: int, *key) -> np.random.Generator:
    """A generator for one image, from the seed and a stable hash of its key."""
    crc = zlib.crc32("/".join(str(k) for k in key).encode())
    return np.random.default_rng(np.random.SeedSequence([int(seed), crc]))


def _save_png(img: np.ndarray, path: Path) -> None:
    Image.fromarray(img).save(path, format="PNG", compress_level=1)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _code_hash() -> str:
    """Hash of this module's source: a cached build made by other code is rebuilt, not reused."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def _params(seed, size, sev, dists, refs) -> dict:
    return {
        "format": "nriqa-embedded",
        "version": FORMAT_VERSION,
        "code": _code_hash(),
        "seed": int(seed),
        "size": int(size),
        "levels": sev,
        "distortions": dists,
        "requested_references": refs,
    }


def _is_complete(root: Path, params: dict) -> bool:
    """True when ``root`` holds a finished build with these parameters (manifest last)."""
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if any(manifest.get(k) != v for k, v in params.items()):
        return False
    labels = root / "labels.csv"
    try:
        if _sha256(labels) != manifest.get("labels_sha256"):
            return False
        table = pd.read_csv(labels, dtype={"path": str, "ref_path": str})
    except (OSError, ValueError):
        return False
    if len(table) != manifest.get("n_images"):
        return False
    files = set(table["path"]) | set(table["ref_path"])
    return all((root / f).is_file() for f in files)


def _distort_one(tmp: Path, seed: int, ref: str, reference: np.ndarray, dist: str, sev) -> list:
    """All levels of one distortion of one reference: write the images, return label rows."""
    rows = []
    rng = _rng(seed, ref, dist)
    for level in sev:
        # The same generator state for every level (common random numbers): noise patterns and
        # the motion-blur angle are shared across levels, so labels fall with the level per image.
        out = DISTORTIONS[dist](reference, level, copy.deepcopy(rng))
        if out.shape != reference.shape or out.dtype != np.uint8:
            raise RuntimeError(
                f"distortion {dist!r} returned {out.dtype} {out.shape}, "
                f"expected uint8 {reference.shape}"
            )
        path = f"images/{ref}_{dist}_{level}.png"
        _save_png(out, tmp / path)
        rows.append((path, f"{kadid_label(dist, level):.6f}", ref, dist, level,
                     f"refs/{ref}.png"))
    return rows


def _load_ref(name: str, size: int):
    try:
        return load_reference(name, size)
    except Exception as err:  # a wheel that no longer bundles the photo, or needs a download
        return err


def _write_dataset(tmp: Path, seed, size, sev, dists, refs, workers: int) -> None:
    (tmp / "refs").mkdir()
    (tmp / "images").mkdir()
    used, tasks = [], []
    with ThreadPoolExecutor(max_workers=workers) as pool:  # numpy, scipy, PIL release the GIL
        for ref, reference in zip(refs, pool.map(lambda r: _load_ref(r, size), refs)):
            if isinstance(reference, Exception):
                warnings.warn(
                    f"embedded dataset: skipping reference {ref!r}, it could not be loaded "
                    f"offline ({type(reference).__name__}: {reference})",
                    stacklevel=3,
                )
                continue
            _save_png(reference, tmp / f"refs/{ref}.png")
            used.append({"name": ref, "height": reference.shape[0], "width": reference.shape[1]})
            tasks += [(ref, reference, dist) for dist in dists]
        results = pool.map(lambda t: _distort_one(tmp, seed, *t, sev), tasks)
        rows = [row for rows in results for row in rows]  # in task order, whatever the timing
    if len(used) < 2:
        raise DataError(
            tmp, f"only {len(used)} embedded reference photo(s) could be loaded offline; need 2"
        )
    with open(tmp / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(LABEL_COLUMNS)
        writer.writerows(rows)
    import PIL
    import scipy
    import skimage

    manifest = {
        **_params(seed, size, sev, dists, refs),
        "references": used,
        "n_images": len(rows),
        "label": "KADID-10k mean score of the distortion type at the level, (mean - 1) / 4, "
        "higher = better",
        "kadid_types": {d: KADID_TYPES[d].kadid_type for d in dists},
        "labels_sha256": _sha256(tmp / "labels.csv"),
        "versions": {
            "numpy": np.__version__,
            "pillow": PIL.__version__,
            "scipy": scipy.__version__,
            "scikit-image": skimage.__version__,
        },
    }
    part = tmp / "manifest.json.part"
    part.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(part, tmp / "manifest.json")


def _looks_like_ours(root: Path) -> bool:
    """Only ever remove a directory holding nothing but an (old or partial) embedded build."""
    allowed = {"refs", "images", "labels.csv", "manifest.json", "manifest.json.part"}
    try:
        return all(p.name in allowed for p in root.iterdir())
    except OSError:
        return False


def _default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def is_built(root: str | Path | None = None, seed: int = 0, size: int = DEFAULT_SIZE,
             levels: int = N_LEVELS, distortions=None, references=None) -> bool:
    """True when a complete build with these parameters is at ``root`` (default: its cache)."""
    dists = _resolve_names(distortions, DISTORTIONS, "distortion(s)")
    refs = _resolve_names(references, REFERENCES, "reference(s)")
    if root is None:
        root = embedded_dir(seed, size, levels, dists, refs)
    return _is_complete(Path(root), _params(seed, size, severities(levels), dists, refs))


def build_embedded(
    cache_dir: str | Path | None = None,
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    levels: int = N_LEVELS,
    distortions: Sequence[str] | None = None,
    force: bool = False,
    *,
    references: Sequence[str] | None = None,
    workers: int | None = None,
) -> Path:
    """Generate the embedded dataset (or find it already built) and return its root.

    ``cache_dir`` defaults to :func:`embedded_dir`. ``levels`` is how many severities to use,
    spread over 1..5 (:func:`severities`); ``distortions`` and ``references`` select names from
    :data:`DISTORTIONS` and :data:`REFERENCES` (default: all). A complete dataset with the same
    parameters is returned at once unless ``force``. The build is written into a temporary
    sibling directory and renamed into place, so it is safe against interruption and against
    several processes building at once (the first rename wins; the result is the same).
    """
    if int(size) < 16:
        raise ConfigError(f"embedded dataset size must be at least 16 px, got {size}")
    sev = severities(levels)
    dists = _resolve_names(distortions, DISTORTIONS, "distortion(s)")
    refs = _resolve_names(references, REFERENCES, "reference(s)")
    root = (
        Path(cache_dir).expanduser()
        if cache_dir is not None
        else embedded_dir(seed, size, levels, dists, refs)
    )
    params = _params(seed, size, sev, dists, refs)
    if not force and _is_complete(root, params):
        return root
    if root.exists() and not (root.is_dir() and _looks_like_ours(root)):
        raise DataError(
            root,
            "exists and is not an embedded nriqa dataset; refusing to overwrite it "
            "(choose another cache_dir)",
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        _write_dataset(tmp, seed, size, sev, dists, refs, workers or _default_workers())
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset is ordinary readable data
        _install(tmp, root, params, replace=force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _remove_stale(root: Path, age_s: float = 3600.0) -> None:
    """Remove temporary builds of ``root`` left by killed processes (older than ``age_s``)."""
    now = time.time()
    for pattern in (f".{root.name}.tmp-*", f".{root.name}.old-*"):
        for path in root.parent.glob(pattern):
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > age_s:
                    shutil.rmtree(path, ignore_errors=True)


def _install(tmp: Path, root: Path, params: dict, replace: bool) -> None:
    """Rename the finished build ``tmp`` to ``root``, moving any old or partial build aside.

    Without ``replace`` a complete build with the same parameters that another process installed
    meanwhile is accepted as is (builds are deterministic, so it is the same dataset).
    """
    for _ in range(5):
        try:
            os.rename(tmp, root)  # atomic; fails when root exists and is not empty
            return
        except OSError:
            if not root.exists():
                continue
        if not replace and _is_complete(root, params):
            return
        if not _looks_like_ours(root):
            raise DataError(root, "appeared while building and is not an embedded dataset")
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        with contextlib.suppress(OSError):  # another process may have moved it first
            os.rename(root, old / "d")
        shutil.rmtree(old, ignore_errors=True)
        replace = False
    raise DataError(root, "could not install the embedded dataset (concurrent builds?)")
