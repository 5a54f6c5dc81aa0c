"""Scoring images with a trained model: paths, PIL images or tensors, batched and deterministic.

>>> scorer = Scorer.from_checkpoint("runs/demo/model.safetensors")  # doctest: +SKIP
>>> scorer.score_paths(["a.jpg", "b.png"])                            # doctest: +SKIP

Scores are higher = better, on the scale labels were normalised to in training ([0, 1]); they are
the model's output, not clamped, so a score can fall a little outside [0, 1]. Each image
gets the same deterministic test crops as in evaluation, so the same image always gets the same
score; on CPU inference is bit-for-bit repeatable.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from nriqa.data.dataset import ImageListDataset
from nriqa.data.policy import CropPolicy
from nriqa.models import DEIQT
from nriqa.outputs.checkpoint import load_model

_POLICY_FIELDS = tuple(f.name for f in fields(CropPolicy))
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}


@dataclass
class ScoreResult:
    path: str
    score: float  # NaN when ``error`` is set
    error: str = ""


class Scorer:
    """Scores images with ``model`` and one :class:`~nriqa.data.policy.CropPolicy` (the model
    file's, with :meth:`from_checkpoint`): paths, ``PIL`` images and tensors get the same decode
    and the same crops, so the same image gets the same score through every method."""

    def __init__(self, model: DEIQT, crop_size: int = 224, patch_num: int = 25,
                 test_crops: str = "grid", resize: str = "none", small_image: str = "upscale",
                 device: str | torch.device | None = None, batch_size: int = 8,
                 num_workers: int = 0, policy: CropPolicy | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.policy = policy or CropPolicy(crop_size, patch_num, test_crops, resize, small_image)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.source = ""  # which model, in words (set by the constructors below)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device=None, **overrides) -> Scorer:
        """``overrides``: ``batch_size``, ``num_workers``, or crop settings (``crop_size``,
        ``patch_num``, ``test_crops``, ``resize``, ``small_image``) replacing the file's."""
        model, meta = load_model(path)
        crop = {k: overrides.pop(k) for k in _POLICY_FIELDS if k in overrides}
        policy = replace(CropPolicy.from_meta(meta), **crop)
        scorer = cls(model, device=device, policy=policy, **overrides)
        scorer.source = str(path)
        return scorer

    @classmethod
    def from_pretrained(cls, name: str = "default", device=None, **overrides) -> Scorer:
        """A shipped model by name (``nriqa models list``), a model file, or ``hf:OWNER/REPO/FILE``;
        a shipped file is checked against its card's sha256 first."""
        from nriqa.outputs.zoo import resolve_model

        path, label = resolve_model(name)
        scorer = cls.from_checkpoint(path, device=device, **overrides)
        scorer.source = label
        return scorer

    @torch.inference_mode()
    def score_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """``(B,K,3,S,S)`` crops (uint8 or float in [0,1]) -> ``(B,)`` scores."""
        return self.model.score_crops(crops.to(self.device, non_blocking=True)).float().cpu()

    def score_paths(self, paths: Sequence[str | Path], progress: bool = False) -> list[ScoreResult]:
        """Score files; an unreadable file gets its error in its row and the rest are scored."""
        dataset = ImageListDataset.from_policy(paths, self.policy)
        loader = DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers)
        results: list[ScoreResult] = []
        batches: Iterable = loader
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(loader, desc="scoring", unit="batch")
        for batch in batches:
            scores = self.score_crops(batch["image"]).numpy()
            for path, error, score in zip(batch["path"], batch["error"], scores):
                results.append(ScoreResult(path, float("nan") if error else float(score), error))
        return results

    def score_image(self, image: Image.Image, key: str | None = None) -> float:
        """Score one ``PIL`` image of any mode, decoded as a file would be (EXIF orientation,
        alpha on white, 16-bit scaled). ``key`` seeds the ``seeded`` crop policy; by default the
        name of the file the image was opened from (as :meth:`score_paths` does), else ``""``."""
        return float(self.score_crops(self.policy.crops(image, key)[None])[0])

    def score_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """Score images ``(B,3,H,W)`` or ``(3,H,W)`` in [0, 1] (float) or uint8."""
        if images.dim() == 3:
            images = images[None]
        if images.is_floating_point():
            if images.min() < 0 or images.max() > 1:
                raise ValueError("float images must be in [0, 1]")
            images = (images * 255).round().to(torch.uint8)
        arrays = images.permute(0, 2, 3, 1).cpu().numpy()
        return torch.tensor([self.score_image(Image.fromarray(np.ascontiguousarray(a))) for a in arrays])


def find_images(paths: Sequence[str | Path], recursive: bool = False) -> list[Path]:
    """Expand folders into their image files (sorted); files are kept as given.

    A dangling or looping symbolic link with an image suffix is kept, so that its row says what is
    wrong with it; with ``recursive``, a link back into a folder already scanned is kept once as
    its own row instead of being followed for ever."""
    found: list[Path] = []
    for p in map(Path, paths):
        found += _images_in(p, recursive) if p.is_dir() else [p]
    return found


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    out: list[Path] = []
    seen = {os.path.realpath(folder)}
    pending = [folder]
    while pending:
        try:
            with os.scandir(pending.pop()) as it:
                entries = list(it)
        except OSError:
            continue  # an unreadable sub-folder: nothing to list
        for entry in entries:
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()  # follows links; False for a dangling or looping one
            except OSError:
                is_dir = False
            if not is_dir:
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    out.append(path)
            elif recursive:
                real = os.path.realpath(path)
                if real in seen:
                    out.append(path)  # a loop: its row says so
                else:
                    seen.add(real)
                    pending.append(path)
    return sorted(out)
