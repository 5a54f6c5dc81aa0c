"""How an image becomes its test crops: one object, built once from a config or a model file.

:class:`CropPolicy` is used by the evaluation datasets and by :class:`~nriqa.inference.scoring.Scorer`
alike, so a file, an opened ``PIL`` image and a labelled test image all get the same pixels and the
same crops:

1. decode to 8-bit RGB (:func:`~nriqa.data.images.to_rgb`: EXIF orientation applied, alpha on
   white, 16-bit scaled);
2. resize by ``resize``, then make each side at least ``crop_size`` by ``small_image``;
3. cut ``patch_num`` deterministic boxes by ``test_crops``; with ``test_flip`` each box is also
   scored mirrored (left-right), so an image has ``views`` = 2 x ``patch_num`` test crops.
   ``"seeded"`` boxes are keyed by the image's file *name* (not its folder): :func:`crop_key`
   gives that key for a path, and for a ``PIL`` image opened from a file (its ``filename``); an
   image made in memory has the key ``""``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nriqa.data.crops import TEST_CROP_POLICIES, eval_boxes, extract_crops
from nriqa.data.images import decode_image, load_image
from nriqa.data.resize import SMALL_IMAGE_POLICIES, ensure_min_size, resize_image, resized_size


@dataclass(frozen=True)
class CropPolicy:
    crop_size: int = 224
    patch_num: int = 1  # test crops per image
    test_crops: str = "grid"
    resize: str = "none"
    small_image: str = "upscale"
    test_flip: bool = False  # also score the mirror image of every test crop

    def __post_init__(self):
        if isinstance(self.crop_size, bool) or int(self.crop_size) < 1:
            raise ValueError(f"crop_size must be a positive integer, got {self.crop_size!r}")
        if isinstance(self.patch_num, bool) or int(self.patch_num) < 1:
            raise ValueError(f"patch_num must be >= 1, got {self.patch_num!r}")
        if not isinstance(self.test_flip, bool):
            raise ValueError(f"test_flip must be true or false, got {self.test_flip!r}")
        resized_size(self.crop_size, self.crop_size, self.resize)  # names the allowed policies
        if self.small_image not in SMALL_IMAGE_POLICIES:
            raise ValueError(f"unknown small_image policy {self.small_image!r}; "
                             f"allowed: {', '.join(SMALL_IMAGE_POLICIES)}")
        if self.test_crops not in TEST_CROP_POLICIES:
            raise ValueError(f"unknown test_crops policy {self.test_crops!r}; "
                             f"allowed: {', '.join(TEST_CROP_POLICIES)}")

    @classmethod
    def from_meta(cls, meta) -> CropPolicy:
        """The policy a model file records (a validated :class:`~nriqa.inference.model_files.ModelMeta`
        or its dict)."""
        def get(key, default=None):
            return meta.get(key, default) if isinstance(meta, dict) else getattr(meta, key, default)

        # test_flip is absent from files written before nriqa had it: they score without it.
        return cls(get("crop_size"), get("test_patch_num"), get("test_crops"), get("resize"),
                   get("small_image"), get("test_flip", False))

    @classmethod
    def from_config(cls, cfg, settings) -> CropPolicy:
        """The evaluation policy of a run (``settings``: its resolved dataset defaults)."""
        d = cfg.data
        return cls(d.crop_size, settings.test_patch_num, d.test_crops, settings.resize,
                   d.small_image, d.test_flip)

    def prepare(self, img: Image.Image, path: str | Path | None = None) -> Image.Image:
        """An RGB image resized and made large enough for one crop."""
        return ensure_min_size(resize_image(img, self.resize), self.crop_size, self.small_image, path)

    def open(self, path: str | Path) -> Image.Image:
        """Decode ``path`` (raising :class:`~nriqa.errors.ImageError` naming it) and prepare it."""
        return self.prepare(load_image(path), path)

    @property
    def views(self) -> int:
        """Test crops per image: ``patch_num``, twice that with ``test_flip``."""
        return self.patch_num * (2 if self.test_flip else 1)

    def boxes(self, img: Image.Image, key: str, n: int | None = None) -> np.ndarray:
        return eval_boxes(*img.size, self.crop_size, n or self.patch_num, self.test_crops, key)

    def eval_views(self, img: Image.Image, key: str) -> tuple[np.ndarray, np.ndarray]:
        """The ``views`` test boxes of a prepared image and whether each is mirrored: the
        ``patch_num`` boxes, then (with ``test_flip``) the same boxes mirrored."""
        boxes = self.boxes(img, key)
        if not self.test_flip:
            return boxes, np.zeros(len(boxes), dtype=bool)
        return np.concatenate([boxes, boxes]), np.repeat([False, True], len(boxes))

    def crops(self, image: Image.Image, key: str | None = None) -> torch.Tensor:
        """The ``(views, 3, S, S)`` uint8 test crops of a ``PIL`` image of any mode."""
        key = crop_key(image) if key is None else key
        img = self.prepare(decode_image(image, getattr(image, "filename", None) or None))
        return extract_crops(img, *self.eval_views(img, key))


def crop_key(source: str | Path | Image.Image) -> str:
    """The key that seeds ``seeded`` test crops: the file name of a path or of the file a ``PIL``
    image was opened from; ``""`` for an image made in memory."""
    if isinstance(source, Image.Image):
        source = getattr(source, "filename", "") or ""
    return Path(source).name if str(source) else ""
