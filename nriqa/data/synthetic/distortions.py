"""The embedded dataset's distortions: 18 of KADID-10k's types, each with KADID's five level
parameters, as ``(uint8 HxWx3 image, level 1..5, numpy Generator) -> uint8 HxWx3 image``.

Inside a distortion, images are float32 in [0, 1], as KADID's MATLAB code works.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage, signal
from scipy.interpolate import PchipInterpolator
from skimage.color import lab2rgb, rgb2lab, rgb2ycbcr, ycbcr2rgb

from nriqa.data.synthetic.calibration import KADID_CATEGORIES, KADID_MEANS, KADID_SCALE, N_LEVELS
from nriqa.errors import ConfigError

Distortion = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

# Strong saturation and brightening leave the sRGB gamut; clipping is intended (as in KADID).
# A filter, not catch_warnings: the builder's threads would race on the warning state.
warnings.filterwarnings("ignore", message="Conversion from CIE-LAB", category=UserWarning)


def kadid_label(dist: str, level: int) -> float:
    """The label of distortion ``dist`` at ``level``: KADID's mean for it, mapped 1..5 -> 0..1."""
    if dist not in DISTORTIONS:
        raise ConfigError(f"unknown distortion {dist!r}; known: {sorted(DISTORTIONS)}")
    low, high = KADID_SCALE
    mean = _param(KADID_MEANS[KADID_TYPES[dist].kadid_type], level)
    return round((mean - low) / (high - low), 6)




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
    return rgb2lab(x).astype(np.float32)


def _rgb(lab: np.ndarray) -> np.ndarray:
    return np.clip(lab2rgb(lab), 0, 1).astype(np.float32)


def _curve(x: np.ndarray, mid: float) -> np.ndarray:
    """A tone curve through (0, 0), (0.5, mid), (1, 1): monotone cubic (PCHIP), clipped to [0, 1]
    (``mid`` above 1 saturates the upper half, as KADID's strongest brightening does)."""
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

#: KADID's categories whose distortions add artefacts that a viewer sees without the reference
#: (blur, noise, compression: the families of LIVE and CSIQ). The others re-tone or re-colour the
#: whole photo, or work on regions (brightness, colour, spatial, sharpness): whether a photo was
#: darkened, desaturated or colour-diffused cannot be told from the photo alone (a dark scene or a
#: darkened one?), and KADID's raters judged them beside the reference.
ARTEFACT_CATEGORIES = ("blur", "noise", "compression")


def _in_categories(categories) -> list[str]:
    types = {t for c in categories for t in KADID_CATEGORIES[c]}
    return [name for name, t in KADID_TYPES.items() if t.kadid_type in types]


#: KADID's colour types: they change only the colours, so a grayscale photo is not given them.
COLOUR_ONLY = frozenset(_in_categories(("color",)))


#: Named sets of distortions, for ``build_embedded(distortions=<name>)`` and ``nriqa demo``:
#: ``artefacts`` (the 9 of KADID's blur, noise and compression categories; the demo's default)
#: and ``all`` (the 18 types).
DISTORTION_SETS: dict[str, list[str]] = {
    "artefacts": _in_categories(ARTEFACT_CATEGORIES),
    "all": list(DISTORTIONS),
}


def resolve_distortions(names) -> list[str] | None:
    """``names`` with a set name of :data:`DISTORTION_SETS` expanded (None stays None: all)."""
    if isinstance(names, str) and names in DISTORTION_SETS:
        return list(DISTORTION_SETS[names])
    return names
