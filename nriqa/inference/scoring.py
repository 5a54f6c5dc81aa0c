"""Scoring images with a trained model: paths, PIL images or tensors, batched and deterministic.

>>> scorer = Scorer.from_checkpoint("runs/demo/model.safetensors")  # doctest: +SKIP
>>> scorer.score_paths(["a.jpg", "b.png"])                            # doctest: +SKIP

Scores are higher = better, on the scale labels were normalised to in training ([0, 1]); they are
the model's output, not clamped, so a score can fall a little outside [0, 1]. Each image gets the
same decode and deterministic test crops as in evaluation (one
:class:`~nriqa.data.policy.CropPolicy`), so the same image always gets the same score through every
method; on CPU inference is bit-for-bit repeatable, whatever the batch size and worker count.

Two backends run the model: ``"torch"`` (eager PyTorch, the default of the Python API, the one
evaluation uses) and ``"onnxruntime"`` (the graph of :mod:`nriqa.inference.export`, several times
faster on CPU; ``pip install 'nriqa[onnx]'``). ``"auto"`` picks onnxruntime when it is installed.
Both cut the same crops and average each image's crop scores the same way; scores agree to 1e-4.
Every :class:`ScoreResult` names the backend that produced it.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from nriqa.data.dataset import ImageListDataset
from nriqa.data.policy import CropPolicy
from nriqa.errors import NriqaError, WeightsError
from nriqa.inference.device import resolve_device
from nriqa.inference.model_files import load_model
from nriqa.models import DEIQT

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}
BACKENDS = ("auto", "torch", "onnxruntime")
_POLICY_FIELDS = tuple(f.name for f in fields(CropPolicy))


@dataclass
class ScoreResult:
    path: str
    score: float  # NaN when ``error`` is set
    error: str = ""
    backend: str = "torch"


def onnxruntime_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def resolve_backend(backend: str, device: str | torch.device | None = None) -> str:
    """``"auto"`` -> the fastest installed backend: onnxruntime when importable (measured several
    times faster than eager PyTorch on CPU: benchmarks/speed.py), else torch. On a GPU, auto
    keeps torch unless onnxruntime has its CUDA provider."""
    if backend not in BACKENDS:
        raise NriqaError(f"backend {backend!r}: unknown; allowed: {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if not onnxruntime_available():
        return "torch"
    device = resolve_device(device)
    if device.type != "cpu":
        import onnxruntime as ort

        cuda = device.type == "cuda"
        return "onnxruntime" if cuda and "CUDAExecutionProvider" in ort.get_available_providers() else "torch"
    return "onnxruntime"


class Scorer:
    """Scores images with ``model`` and one :class:`~nriqa.data.policy.CropPolicy` (the model
    file's, with :meth:`from_checkpoint`): paths, ``PIL`` images and tensors get the same decode
    and the same crops, so the same image gets the same score through every method."""

    def __init__(self, model: DEIQT | None, crop_size: int = 224, patch_num: int = 25,
                 test_crops: str = "grid", resize: str = "none", small_image: str = "upscale",
                 device: str | torch.device | None = None, batch_size: int = 8,
                 num_workers: int = 0, backend: str = "torch", session=None,
                 policy: CropPolicy | None = None, test_flip: bool = False):
        """``backend="onnxruntime"`` runs ``session`` (an onnxruntime session of an exported
        graph) or, when it is None, the graph exported from ``model`` in memory."""
        self.device = resolve_device(device)
        self.backend = resolve_backend(backend, self.device)
        self.policy = policy or CropPolicy(crop_size, patch_num, test_crops, resize, small_image, test_flip)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.source = ""  # which model, in words (set by the constructors below)
        self.model = model.to(self.device).eval() if model is not None else None
        self.session = None
        if self.backend == "onnxruntime":
            from nriqa.inference.export import onnx_bytes, onnx_session

            if session is None:
                if model is None:
                    raise NriqaError("Scorer needs a model or an onnxruntime session")
                session = onnx_session(onnx_bytes(model, self.policy.crop_size), device=str(self.device))
            self.session = session
        elif self.model is None:
            raise NriqaError("backend 'torch' needs a PyTorch model (an .onnx file runs with "
                             "backend 'onnxruntime')")
        self.timing = {"wait_s": 0.0, "model_s": 0.0, "batches": 0}

    @classmethod
    def from_checkpoint(cls, path: str | Path, device=None, backend: str | None = None,
                        **overrides) -> Scorer:
        """A scorer for an nriqa model file: ``.safetensors`` (either backend; torch unless
        ``backend`` says otherwise) or an ``.onnx`` file from ``nriqa export`` (onnxruntime).
        ``overrides``: ``batch_size``, ``num_workers``, or crop settings (``crop_size``,
        ``patch_num``, ``test_crops``, ``resize``, ``small_image``, ``test_flip``) replacing the file's."""
        path = Path(path).expanduser()
        crop = {k: overrides.pop(k) for k in _POLICY_FIELDS if k in overrides}
        if path.suffix.lower() == ".onnx":
            from nriqa.inference.export import onnx_session, session_meta

            if backend == "torch":
                raise NriqaError(f"{path}: an ONNX model runs with backend onnxruntime, not torch")
            if not path.is_file():
                raise WeightsError(f"{path}: checkpoint not found")
            session = onnx_session(path, device=str(device or "cpu"))
            policy = replace(CropPolicy.from_meta(session_meta(session, path)), **crop)
            scorer = cls(None, device=device, backend="onnxruntime", session=session,
                         policy=policy, **overrides)
        else:
            model, meta = load_model(path)
            policy = replace(CropPolicy.from_meta(meta), **crop)
            scorer = cls(model, device=device, backend=backend or "torch", policy=policy,
                         **overrides)
        scorer.source = str(path)
        return scorer

    @classmethod
    def from_pretrained(cls, name: str = "default", device=None, **overrides) -> Scorer:
        """A shipped model by name (``nriqa models list``), a model file, or ``hf:OWNER/REPO/FILE``;
        a shipped file is checked against its card's sha256 first."""
        from nriqa.inference.zoo import resolve_model

        path, label = resolve_model(name)
        scorer = cls.from_checkpoint(path, device=device, **overrides)
        scorer.source = label
        return scorer

    @torch.inference_mode()
    def score_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """``(B,K,3,S,S)`` crops (uint8 or float in [0,1]) -> ``(B,)`` scores.

        On CPU each image's K crops go through the model in a call of their own: matrix-product
        kernels pick their blocking by the number of rows, so a crop's score would otherwise
        depend (in the last bits) on how many images share its batch. Per image, a score is the
        same whatever the batch size, and CPU throughput per crop is no lower (measured)."""
        if self.device.type == "cpu":
            return torch.cat([self._score_images(crops[i:i + 1]) for i in range(len(crops))])
        return self._score_images(crops)

    def _score_images(self, crops: torch.Tensor) -> torch.Tensor:
        if self.session is None:
            return self.model.score_crops(crops.to(self.device, non_blocking=True)).float().cpu()
        b, k = crops.shape[:2]
        if crops.is_floating_point():  # the graph takes uint8 pixels, as the crops are cut
            crops = (crops * 255).round().clamp(0, 255).to(torch.uint8)
        flat = np.ascontiguousarray(crops.flatten(0, 1).cpu().numpy())
        per_crop = torch.from_numpy(self.session.run(None, {"crops": flat})[0])
        return per_crop.view(b, k).mean(1)  # the same reduction as DEIQT.score_crops

    def batches(self, paths: Sequence[str | Path]) -> Iterator[dict]:
        """Collated batches of test crops, decoded ahead of the model: by ``num_workers``
        processes (each two batches ahead), or with 0 workers by one thread of this process."""
        dataset = ImageListDataset(paths, self.policy)
        if self.num_workers > 0:
            return iter(DataLoader(dataset, batch_size=self.batch_size,
                                   num_workers=self.num_workers, prefetch_factor=2))
        return prefetch(DataLoader(dataset, batch_size=self.batch_size), depth=2)

    def iter_scores(self, paths: Sequence[str | Path]) -> Iterator[list[ScoreResult]]:
        """One list of results per batch, in the order of ``paths``. ``self.timing`` adds up
        the time the model waited for decoded batches and the time it ran."""
        batches = self.batches(paths)
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            t1 = time.perf_counter()
            if batch is None:
                return
            scores = self.score_crops(batch["image"]).numpy()
            self.timing["wait_s"] += t1 - t0
            self.timing["model_s"] += time.perf_counter() - t1
            self.timing["batches"] += 1
            yield [ScoreResult(path, math.nan if error else float(score), error, self.backend)
                   for path, error, score in zip(batch["path"], batch["error"], scores)]

    def score_paths(self, paths: Sequence[str | Path], progress: bool = False) -> list[ScoreResult]:
        """Score files; an unreadable file gets its error in its row and the rest are scored."""
        results: list[ScoreResult] = []
        bar = progress_bar(len(paths), disable=not progress)
        for rows in self.iter_scores(paths):
            results += rows
            bar.update(len(rows))
        bar.close()
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


def progress_bar(total: int, disable: bool = False, desc: str = "scoring"):
    """A tqdm bar on stderr counting images, with rate and ETA."""
    import sys

    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=disable,
                dynamic_ncols=True, smoothing=0.1)


_DONE = object()


def prefetch(items: Iterable, depth: int = 2) -> Iterator:
    """Iterate ``items`` in a background thread, ``depth`` items ahead (decoding and cropping
    release the GIL, so they run while the model computes). Errors are re-raised in the caller."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as err:  # handed to the consumer, which re-raises it
            put(err)

    thread = threading.Thread(target=work, name="nriqa-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


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
