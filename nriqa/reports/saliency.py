"""LML-IQA pictures: where the (teacher) model looks, and how crop embeddings cluster.

* :func:`plot_saliency`: for a few images, the saliency map LML-IQA uses to pick each image's
  salient crop (decoder cross-attention, ViT CLS attention or spectral residual), with K random
  training crops drawn on the image and the salient one marked.
* :func:`embedding_plot`: t-SNE (scikit-learn) of crop embeddings (the LML projector's when the
  checkpoint has one, else the mean of the panel members' output tokens), coloured by image and by
  quality, before and after training: a 2 x 2 grid.

Command line (:mod:`nriqa.cli.analyze`)::

    nriqa analyze saliency --checkpoint CKPT IMAGE... [--output saliency.png]
    nriqa analyze embeddings --checkpoint CKPT [--before CKPT | --backbone-only] --dataset NAME
                             [--root DIR] [--max-images N] [--output embeddings.png]

A Lightning checkpoint (``.ckpt``) of an LML-IQA run carries the student, the EMA teacher and both
projectors; an exported ``.safetensors`` model carries the DEIQT network only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.patches import Rectangle
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score

from nriqa.config import ModelConfig
from nriqa.data.dataset import IQADataset
from nriqa.data.policy import CropPolicy
from nriqa.errors import WeightsError
from nriqa.inference.model_files import load_model, read_checkpoint
from nriqa.methods.lml import Projector, box_saliency, saliency_maps
from nriqa.models import DEIQT
from nriqa.reports.plotting import save_figure, subplots

SALIENCY_KINDS = ("decoder", "vit-cls", "spectral")


# ------------------------------------------------------------------------------- networks


@dataclass
class Networks:
    """The networks of a checkpoint: the student, and for LML-IQA runs the teacher and projectors."""

    student: DEIQT
    meta: dict
    teacher: DEIQT | None = None
    projector: Projector | None = None
    teacher_projector: Projector | None = None

    def pick(self, network: str = "auto") -> tuple[DEIQT, Projector | None, str]:
        """``(model, projector, name)`` for ``student``, ``teacher`` or ``auto`` (the teacher
        when the checkpoint has one)."""
        if network not in ("auto", "student", "teacher"):
            raise ValueError(f"network must be auto, student or teacher, got {network!r}")
        if network == "teacher" and self.teacher is None:
            raise WeightsError("this checkpoint has no EMA teacher (an LML-IQA .ckpt with "
                               "method.lml.ema=true has one)")
        if network != "student" and self.teacher is not None:
            return self.teacher, self.teacher_projector, "teacher"
        return self.student, self.projector, "student"


def _projector_from(state: dict, prefix: str) -> Projector | None:
    w0, w2 = state.get(f"{prefix}net.0.weight"), state.get(f"{prefix}net.2.weight")
    if w0 is None or w2 is None:
        return None
    proj = Projector(w0.shape[1], w2.shape[0])
    proj.load_state_dict(_below(state, prefix))
    return proj.eval()


def load_networks(path: str | Path, device: str | torch.device = "cpu") -> Networks:
    """Load a checkpoint's networks (see :class:`Networks`); raises :class:`WeightsError`."""
    path = Path(path).expanduser()
    student, meta = load_model(path, device)
    nets = Networks(student=student, meta=meta)
    if path.suffix != ".ckpt":
        return nets
    state = read_checkpoint(path)["state_dict"]
    base = _lml_prefix(state)
    if base is None:
        return nets
    nets.projector = _projector_from(state, base + "projector.")
    nets.teacher_projector = _projector_from(state, base + "teacher_projector.")
    teacher_state = _below(state, base + "teacher.")
    if teacher_state:
        teacher = DEIQT.from_config(ModelConfig.model_validate(meta["model"]), weights="none")
        try:
            teacher.load_state_dict(teacher_state, strict=True)
        except RuntimeError as err:
            raise WeightsError(f"{path}: teacher weights do not fit the model ({err})") from err
        nets.teacher = teacher.to(device).eval()
    for proj in (nets.projector, nets.teacher_projector):
        if proj is not None:
            proj.to(device)
    return nets


_PROJECTOR_KEY = "projector.net.0.weight"


def _lml_prefix(state: dict) -> str | None:
    """``methods.N.``, the state-dict prefix of the LML-IQA method (the one with a projector)."""
    for key in state:
        head, _, rest = key.partition(".")
        index, _, tail = rest.partition(".")
        if head == "methods" and index.isdigit() and tail == _PROJECTOR_KEY:
            return f"methods.{index}."
    return None


def _below(state: dict, prefix: str) -> dict:
    """The entries of ``state`` under ``prefix``, with the prefix taken off."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def input_size_of(model: DEIQT, default: int = 224) -> int:
    """The square input size a ViT was built for; ``default`` for other backbones."""
    size = getattr(getattr(model.backbone.net, "patch_embed", None), "img_size", None)
    return int(size[0]) if size else default


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


# ------------------------------------------------------------------------------- saliency


@torch.no_grad()
def plot_saliency(model: DEIQT, image_paths, out_png: str | Path, k: int = 4, seed: int = 0,
                  saliency: str = "decoder", input_size: int | None = None, resize: str = "none",
                  small_image: str = "upscale", full_size: int = 224,
                  title: str | None = None) -> Path:
    """Draw each image's saliency map with K random training crops, the salient one in red.

    Crops and the whole-image input come from the training pipeline
    (:class:`~nriqa.data.dataset.IQADataset`, seeded by ``seed``), and the map and crop choice
    from the same functions LML-IQA trains with (:func:`~nriqa.methods.lml.saliency_maps`,
    :func:`~nriqa.methods.lml.box_saliency`). Each row: the image with the crops (label: crop
    saliency ``s`` and predicted quality ``q``) and the map over the image. Returns the path.
    """
    if saliency not in SALIENCY_KINDS:
        raise ValueError(f"saliency must be one of {SALIENCY_KINDS}, got {saliency!r}")
    paths = [str(p) for p in image_paths]
    if not paths:
        raise ValueError("no images to draw")
    model = model.eval()
    size = int(input_size or input_size_of(model))
    device = _device_of(model)
    table = pd.DataFrame({"path": paths, "label": 0.0, "group": paths})
    data = IQADataset(table, train=True, policy=CropPolicy(size, 1, "grid", resize, small_image),
                      crops_per_item=k, seed=seed, return_full=True, full_size=full_size)
    fig, axes = subplots(len(paths), 2, figsize=(8.4, 3.9 * len(paths)), dpi=110,
                         squeeze=False)
    for row, path in enumerate(paths):
        item = data[row]
        img = np.asarray(data.settings.prepare(path))
        h, w = img.shape[:2]
        full = item["full"][None].to(device)
        maps = saliency_maps(model, full, saliency, size)
        sal = box_saliency(maps, item["boxes"][None].to(device).float())[0].cpu().numpy()
        chosen = int(sal.argmax())
        quality = model(item["image"].to(device)).float().cpu().numpy()
        heat = F.interpolate(maps[:, None].float(), size=(h, w), mode="bilinear",
                             align_corners=False)[0, 0].cpu().numpy()
        boxes = item["boxes"].numpy() * np.array([w, h, w, h])
        for col, ax in enumerate(axes[row]):
            ax.imshow(img)
            if col == 1:
                shown = ax.imshow(heat, cmap="jet", alpha=0.5, extent=(0, w, h, 0))
                fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
            for j, (x0, y0, x1, y1) in enumerate(boxes):
                hot = j == chosen
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False,
                                       edgecolor="red" if hot else "white",
                                       linewidth=2.5 if hot else 1.2,
                                       linestyle="-" if hot else "--"))
                if col == 0:
                    ax.text(x0 + 2, y0 + 2, f"{j}{' salient' if hot else ''}\n"
                            f"s={sal[j]:.3g} q={quality[j]:.2f}", va="top", fontsize=7,
                            color="white", clip_on=True,
                            bbox={"facecolor": "red" if hot else "black", "alpha": 0.6,
                                  "pad": 1, "linewidth": 0})
            ax.set_xlim(0, w)
            ax.set_ylim(h, 0)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_title(f"{Path(path).name}: {k} crops, salient = {chosen}", fontsize=9)
        axes[row, 1].set_title(f"{saliency} saliency", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_png)


# ------------------------------------------------------------------------------ embeddings


@torch.no_grad()
def crop_embeddings(model: DEIQT, table: pd.DataFrame, projector: Projector | None = None,
                    features: str = "decoder", input_size: int | None = None,
                    crops_per_image: int = 4, seed: int = 0, resize: str = "none",
                    small_image: str = "upscale", batch_size: int = 8):
    """L2-normalised embeddings of K seeded random crops of each image of ``table``.

    ``features``: ``decoder`` (the mean of the panel members' output tokens, then ``projector``
    when given) or ``backbone`` (the backbone's global feature ``c``: a model before any IQA
    training). Returns ``(embeddings (M,D), image number (M,), label (M,))`` as numpy arrays.
    """
    if features not in ("decoder", "backbone"):
        raise ValueError(f"features must be decoder or backbone, got {features!r}")
    model = model.eval()
    size = int(input_size or input_size_of(model))
    device = _device_of(model)
    data = IQADataset(table.reset_index(drop=True), train=True,
                      policy=CropPolicy(size, 1, "grid", resize, small_image),
                      crops_per_item=crops_per_image, seed=seed)
    out, image, label = [], [], []
    for start in range(0, len(data), batch_size):
        items = [data[i] for i in range(start, min(start + batch_size, len(data)))]
        crops = torch.stack([it["image"] for it in items]).flatten(0, 1).to(device)
        c, tokens = model.features(crops)
        if features == "backbone":
            emb = c.float()
        else:
            emb = model.head(c, tokens).tokens.mean(1)
            emb = projector(emb) if projector is not None else emb.float()
        out.append(F.normalize(emb.float(), dim=-1).cpu())
        for offset, it in enumerate(items):
            image += [start + offset] * crops_per_image
            label += [float(it["label"])] * crops_per_image
    return torch.cat(out).numpy(), np.asarray(image), np.asarray(label)


def embedding_stats(emb: np.ndarray, image: np.ndarray) -> dict:
    """Mean cosine similarity of crops of the same image and of different images, and the
    silhouette of the image clusters (cosine; in [-1, 1], higher = tighter, better separated)."""
    sim = emb @ emb.T
    same = image[:, None] == image[None, :]
    off = ~np.eye(len(emb), dtype=bool)
    stats = {"within_image_cos": float(sim[same & off].mean()) if (same & off).any() else float("nan"),
             "between_image_cos": float(sim[~same].mean()) if (~same).any() else float("nan")}
    n_images = len(np.unique(image))
    stats["silhouette_image"] = (float(silhouette_score(emb, image, metric="cosine"))
                                 if 2 <= n_images < len(emb) else float("nan"))
    return stats


def _tsne(emb: np.ndarray, seed: int, perplexity: float | None) -> np.ndarray:
    n = len(emb)
    if n < 4:
        raise ValueError(f"t-SNE needs at least 4 crops, got {n}")
    perp = perplexity or min(30.0, max(2.0, (n - 1) / 3))
    perp = min(perp, n - 1.0)
    return TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed,
                metric="cosine").fit_transform(emb)


def embedding_plot(model_before: DEIQT, model_after: DEIQT, table: pd.DataFrame,
                   out_png: str | Path, *, projector_before: Projector | None = None,
                   projector_after: Projector | None = None, features_before: str = "decoder",
                   features_after: str = "decoder", input_size: int | None = None,
                   crops_per_image: int = 4, max_images: int = 40, seed: int = 0,
                   resize: str = "none", small_image: str = "upscale",
                   perplexity: float | None = None,
                   titles: tuple[str, str] = ("before training", "after training")) -> dict:
    """t-SNE of crop embeddings before and after training, coloured by image and by quality.

    Up to ``max_images`` images of ``table`` (a seeded sample) with ``crops_per_image`` seeded
    random crops each, embedded by :func:`crop_embeddings` (each model with its projector when
    given). A 2 x 2 grid: rows before / after, columns coloured by image / by label. Returns
    ``{"path", "before", "after", "images", "crops"}`` with :func:`embedding_stats` per model.
    """
    if len(table) > max_images:
        table = table.sample(n=max_images, random_state=seed)
    table = table.reset_index(drop=True)
    size = input_size or input_size_of(model_after)
    common = dict(input_size=size, crops_per_image=crops_per_image, seed=seed, resize=resize,
                  small_image=small_image)
    panels = []
    for model, proj, feats, name in ((model_before, projector_before, features_before, titles[0]),
                                     (model_after, projector_after, features_after, titles[1])):
        emb, image, label = crop_embeddings(model, table, proj, feats, **common)
        space = ("backbone feature c" if feats == "backbone"
                 else "projector" if proj is not None else "mean panel tokens")
        panels.append((name, space, emb, image, label, embedding_stats(emb, image),
                       _tsne(emb, seed, perplexity)))

    fig, axes = subplots(2, 2, figsize=(10, 9), dpi=110)
    for row, (name, space, _emb, image, label, stats, xy) in enumerate(panels):
        ax = axes[row, 0]
        ax.scatter(xy[:, 0], xy[:, 1], c=image % 20, cmap="tab20", vmin=0, vmax=19, s=16,
                   edgecolors="none")
        for i in np.unique(image):  # a faint line from each crop to its image's centre
            pts = xy[image == i]
            centre = pts.mean(0)
            for p in pts:
                ax.plot([centre[0], p[0]], [centre[1], p[1]], color="grey", lw=0.4, alpha=0.5)
        ax.set_title(f"{name} ({space}): by image\nwithin cos {stats['within_image_cos']:.3f}, "
                     f"between cos {stats['between_image_cos']:.3f}, "
                     f"silhouette {stats['silhouette_image']:.3f}", fontsize=8.5)
        ax = axes[row, 1]
        shown = ax.scatter(xy[:, 0], xy[:, 1], c=label, cmap="viridis", s=16, edgecolors="none")
        fig.colorbar(shown, ax=ax, label="label (higher = better)")
        ax.set_title(f"{name} ({space}): by quality", fontsize=8.5)
        for a in axes[row]:
            a.set_xticks([])
            a.set_yticks([])
    fig.suptitle(f"t-SNE of crop embeddings: {len(table)} images x {crops_per_image} crops",
                 fontsize=10)
    fig.tight_layout()
    path = save_figure(fig, out_png)
    return {"path": path, "before": panels[0][5], "after": panels[1][5], "images": len(table),
            "crops": len(table) * crops_per_image}
