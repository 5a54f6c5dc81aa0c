"""Torch datasets: labelled crops for training and evaluation, and crops of arbitrary files for scoring.

Items are dicts of tensors with fixed shapes, so the default ``collate_fn`` batches images of any
source size. Pixels stay uint8; the model converts and normalises them.

Each item decodes its image once (:func:`~nriqa.data.images.load_image`), resizes it once and
slices every crop out of one array.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from nriqa.data.crops import extract_crops, random_boxes
from nriqa.data.policy import CropPolicy, crop_key
from nriqa.errors import DataError

_RESAMPLE = Image.Resampling.BICUBIC
_DEFAULT_POLICY = CropPolicy()  # 224 px, one grid crop, no resize; frozen, so safe to share


class _CropSettings:
    """What turns a file into crops; shared by both datasets and checked once, up front. The
    decode, resize and test boxes are the :class:`~nriqa.data.policy.CropPolicy`'s, as in
    scoring."""

    def __init__(self, policy: CropPolicy, return_full: bool, full_size: int):
        if not isinstance(policy, CropPolicy):
            raise TypeError(f"policy must be a CropPolicy, got {type(policy).__name__}")
        if full_size < 1:
            raise ValueError(f"full_size must be positive, got {full_size}")
        self.policy = policy
        self.crop_size = int(policy.crop_size)
        self.return_full = bool(return_full)
        self.full_size = int(full_size)

    def prepare(self, path: str) -> Image.Image:
        """Decode, resize and make the image large enough for one crop."""
        return self.policy.open(path)

    def eval_views(self, img: Image.Image, path: str) -> tuple[np.ndarray, np.ndarray]:
        # Keyed by the file name, not the full path: the crops do not depend on where the data lives.
        return self.policy.eval_views(img, crop_key(path))

    def crop_item(self, img: Image.Image, boxes: np.ndarray, flips: np.ndarray) -> dict:
        scale = np.array([*img.size, *img.size], dtype=np.float64)  # (x0, y0, x1, y1) -> [0, 1]
        item = {
            "image": extract_crops(img, boxes, flips),
            "boxes": torch.from_numpy((boxes / scale).astype(np.float32)),
            "flip": torch.from_numpy(np.asarray(flips, dtype=bool)),
        }
        if self.return_full:
            item["full"] = _full_image(img, self.full_size)
        return item

    def blank_item(self, k: int) -> dict:
        """The item :class:`ImageListDataset` returns for a file it cannot read."""
        s = self.crop_size
        item = {
            "image": torch.zeros((k, 3, s, s), dtype=torch.uint8),
            "boxes": torch.zeros((k, 4), dtype=torch.float32),
            "flip": torch.zeros(k, dtype=torch.bool),
        }
        if self.return_full:
            item["full"] = torch.zeros((3, self.full_size, self.full_size), dtype=torch.uint8)
        return item


def _full_image(img: Image.Image, size: int) -> torch.Tensor:
    arr = np.asarray(img.resize((size, size), _RESAMPLE))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class IQADataset(Dataset):
    """Crops of the images of a label table, with their labels.

    ``policy`` (:class:`~nriqa.data.policy.CropPolicy`) says how a file becomes crops: its crop
    size, resize and small-image policies in both modes, its ``patch_num``, ``test_crops`` and
    ``test_flip`` in evaluation. The other arguments are training-only, except ``return_full`` /
    ``full_size``.

    Training (``train=True``): ``len = len(table) * repeats`` (DEIQT's PATCH_NUM: each image is
    visited ``repeats`` times an epoch); item ``i`` is image ``i % len(table)`` with
    ``crops_per_item`` (K) uniformly random crops, each flipped horizontally with probability 1/2
    when ``hflip``. The randomness comes only from ``np.random.default_rng([seed, epoch, i])``, so a
    run is exact whatever the number of DataLoader workers and a resumed run sees the same crops.
    Call :meth:`set_epoch` at the start of every epoch; the epoch lives in shared memory so
    persistent workers see it too.

    Evaluation (``train=False``): ``len = len(table)``; each item holds the policy's ``views``
    deterministic crops: ``patch_num`` boxes by its ``test_crops`` (``"grid"`` or ``"seeded"`` by
    the file name), then, with ``test_flip``, the same boxes mirrored; ``repeats``,
    ``crops_per_item``, ``seed`` and ``hflip`` are not used.

    Each image is resized by the policy's ``resize`` (see :func:`~nriqa.data.resize.resize_image`),
    then made at least ``crop_size`` on each side by its ``small_image`` (see
    :func:`~nriqa.data.resize.ensure_min_size`). Items:

    - ``image`` uint8 ``(K, 3, S, S)``; ``label`` float32 scalar (the table's ``label``, [0, 1]);
    - ``index`` int64: the table's row label (its integer index, so a subset ``table.iloc[rows]``
      still reports rows of the full table; the position when the index is not integer);
    - ``group`` int64: position of the row's ``group`` among this table's sorted unique groups;
    - ``boxes`` float32 ``(K, 4)``: ``(x0, y0, x1, y1)`` divided by the width / height of the image
      the crops were cut from (after resizing and the small-image policy);
    - ``flip`` bool ``(K,)``;
    - ``full`` uint8 ``(3, F, F)`` when ``return_full``: that same image resized to F x F.

    An unreadable image raises :class:`~nriqa.errors.ImageError` naming it; nothing is substituted.
    """

    def __init__(
        self,
        table: pd.DataFrame,
        train: bool,
        policy: CropPolicy = _DEFAULT_POLICY,
        *,
        repeats: int = 1,
        crops_per_item: int = 1,
        seed: int = 0,
        hflip: bool = True,
        return_full: bool = False,
        full_size: int = 224,
    ):
        missing = [c for c in ("path", "label", "group") if c not in table.columns]
        if missing:
            raise ValueError(f"label table lacks column(s) {missing}")
        if len(table) == 0:
            raise ValueError("label table is empty")
        if crops_per_item < 1 or repeats < 1:
            raise ValueError(
                f"crops_per_item and repeats must be >= 1, got {crops_per_item}, {repeats}"
            )
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.settings = _CropSettings(policy, return_full, full_size)
        self.policy = policy
        self.train = bool(train)
        self.crops_per_item = int(crops_per_item)
        self.repeats = int(repeats)
        self.seed = int(seed)
        self.hflip = bool(hflip)
        self.paths = [str(p) for p in table["path"]]
        self.labels = table["label"].to_numpy(dtype=np.float32)
        self.rows = _row_numbers(table.index)
        groups = table["group"].astype(str).to_numpy()
        self.group_names = np.unique(groups)
        self.group_codes = np.searchsorted(self.group_names, groups).astype(np.int64)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the training crops of ``epoch`` (no effect on evaluation crops)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.paths) * (self.repeats if self.train else 1)

    def __getitem__(self, idx: int) -> dict:
        idx = _check_index(idx, len(self))
        row = idx % len(self.paths)
        path = self.paths[row]
        img = self.settings.prepare(path)
        if self.train:
            boxes, flips = self._train_boxes(img, idx)
        else:
            boxes, flips = self.settings.eval_views(img, path)
        item = self.settings.crop_item(img, boxes, flips)
        item["label"] = torch.tensor(self.labels[row], dtype=torch.float32)
        item["index"] = torch.tensor(self.rows[row], dtype=torch.int64)
        item["group"] = torch.tensor(self.group_codes[row], dtype=torch.int64)
        return item

    def _train_boxes(self, img: Image.Image, idx: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch, idx])
        k = self.crops_per_item
        boxes = random_boxes(*img.size, self.settings.crop_size, k, rng)
        flips = rng.random(k) < 0.5 if self.hflip else np.zeros(k, dtype=bool)
        return boxes, flips


class ImageListDataset(Dataset):
    """The ``policy``'s ``views`` deterministic test crops of each file in ``paths``, for
    scoring unlabelled images.

    Same preprocessing as :class:`IQADataset` in evaluation with the same policy. Items:
    ``image``, ``boxes``, ``flip`` (and ``full``) as there, ``index`` int64 (position in ``paths``), ``path`` str and ``error`` str.

    A file that cannot be used (missing, corrupt, too small under ``small_image="error"``) does not
    raise: its item has all-zero ``image`` / ``boxes`` and ``error`` holds the message naming the
    file (``""`` for good files), so a scoring run can report the file and go on. Callers must
    check ``error`` before using a score.
    """

    def __init__(
        self,
        paths,
        policy: CropPolicy = _DEFAULT_POLICY,
        *,
        return_full: bool = False,
        full_size: int = 224,
    ):
        self.settings = _CropSettings(policy, return_full, full_size)
        self.policy = policy
        self.paths = [str(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx: int) -> dict:
        idx = _check_index(idx, len(self))
        path = self.paths[idx]
        try:
            img = self.settings.prepare(path)
            item = self.settings.crop_item(img, *self.settings.eval_views(img, path))
            error = ""
        except DataError as err:
            item, error = self.settings.blank_item(self.policy.views), str(err)
        item.update(index=torch.tensor(idx, dtype=torch.int64), path=path, error=error)
        return item


def _row_numbers(index: pd.Index) -> np.ndarray:
    if pd.api.types.is_integer_dtype(index.dtype):
        return index.to_numpy(dtype=np.int64)
    return np.arange(len(index), dtype=np.int64)


def _check_index(idx, length: int) -> int:
    idx = int(idx)
    if idx < 0:
        idx += length
    if not 0 <= idx < length:
        raise IndexError(f"index {idx} out of range for a dataset of {length} items")
    return idx
