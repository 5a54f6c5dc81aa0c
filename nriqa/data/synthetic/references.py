"""The embedded dataset's references: every natural photo the scikit-image, scikit-learn and
matplotlib wheels bundle, scaled and centre-cropped to KADID-10k's 4:3 frame, and the dataset's
official split by photo."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import skimage.data
from matplotlib import cbook
from PIL import Image
from sklearn.datasets import load_sample_image

from nriqa.errors import ConfigError

DEFAULT_SIZE = 384  # KADID-10k's images are 512 x 384


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        return getattr(skimage.data, name)()

    return load


def _motorcycle() -> np.ndarray:
    return skimage.data.stereo_motorcycle()[0]  # the left view; the right one is the same scene


def _retina() -> np.ndarray:
    """The central square of the fundus photo, inside its circular field of view."""
    img = skimage.data.retina()
    h, w = img.shape[:2]
    side = int(0.6 * min(h, w))
    y0, x0 = (h - side) // 2, (w - side) // 2
    return img[y0 : y0 + side, x0 : x0 + side]


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        return load_sample_image(filename)

    return load


def _matplotlib(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        with Image.open(cbook.get_sample_data(filename, asfileobj=False)) as im:
            return np.asarray(im.convert("RGB"))

    return load


#: name -> loader of a natural photo bundled in an installed wheel (uint8 HxWx3, or HxW for the
#: grayscale ones): every one that scikit-image 0.26, scikit-learn 1.9 and matplotlib 3.11 ship
#: (``chelsea`` is also scikit-image's ``cat``). Left out: data needing a download, drawn or
#: synthetic images, photos already blurred (``clock``), and those under 300 px (``page``,
#: ``text``, ``microaneurysms``), which the frame would have to blow up.
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

#: The grayscale photos (scikit-image's; stored as RGB with three equal channels). KADID's colour
#: distortions would leave them unchanged, so they are not applied to them.
_GRAYSCALE_PHOTOS = ("camera", "moon", "coins", "cell", "brick", "grass", "gravel")
GRAYSCALE = frozenset(_GRAYSCALE_PHOTOS)
REFERENCES |= {name: _skimage(name) for name in _GRAYSCALE_PHOTOS}

#: The embedded dataset's official split by photo (its ``split`` column): the test and validation
#: photos that ``split.seed=0`` drew from the 11 colour photos when the dataset had no others, kept
#: so that the photos every reported held-out number was measured on stay held out; every other
#: photo, the grayscale ones included, is for training.
TEST_PHOTOS = ("flower", "hubble_deep_field", "immunohistochemistry")
VAL_PHOTOS = ("astronaut", "china")


def official_part(name: str) -> str:
    """``train``, ``val`` or ``test``: the part of the official split photo ``name`` is in."""
    return "test" if name in TEST_PHOTOS else "val" if name in VAL_PHOTOS else "train"


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
