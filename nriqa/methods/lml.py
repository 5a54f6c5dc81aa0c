"""LML-IQA (Gao et al. v1 / Huang et al. v2, arXiv 2406.19247), as reconstructed by nriqa.

What the paper states [S]: several crops per image; the most visually salient crop of each image
is the positive that clusters the image's other crops; crops of other images are inter-class
negatives; the non-salient crops of the same image are *intra-class* negatives, which keeps them
distinct (the "local manifold"); a mutual-learning framework (a third-party summary: an EMA
teacher-student) learns where the salient regions are. Everything else is reconstruction [R], each
choice a field of :class:`nriqa.config.LMLConfig` (see ``docs/lml_iqa.md``):

- K crops per image (``crops``, 4), a batch of B images x K crops;
- an EMA teacher (``ema``, ``momentum`` 0.998): a copy of the student DEIQT and projector, never
  back-propagated, ``xi <- m * xi + (1 - m) * theta`` after each optimiser step (buffers copied);
- saliency (``saliency``): the teacher scores the whole image once; ``decoder``: its panel
  decoder's cross-attention over the tokens, averaged over heads and panel members; ``vit-cls``:
  the ViT's last-block CLS attention; ``spectral``: static spectral-residual saliency (Hou & Zhang
  2007); ``random``: a seeded random crop (ablation). A crop's saliency is the mean of the map
  inside its box; the salient crop is the argmax;
- a projector (MLP d -> d -> ``proj_dim``, GELU, L2-normalised) on the mean of the panel members'
  output tokens; student anchors q, teacher keys k (no gradient);
- :func:`lml_infonce` with temperature ``temperature`` and intra-class weight ``alpha``;
- total extra loss ``lambda_c(t) * L_LML + beta * |y_hat - y_teacher|``, ``lambda_c`` ramped
  linearly from 0 over ``ramp_epochs`` (default: the warm-up).

Inference is plain DEIQT: :meth:`LMLMethod.export_model` returns the student (or the EMA teacher,
``infer_with``), a :class:`~nriqa.models.DEIQT` that scores like any DEIQT with the same weights.
"""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nriqa.config import LMLConfig
from nriqa.errors import ConfigError
from nriqa.methods.base import Method, StepContext
from nriqa.methods.registry import register_method
from nriqa.models.backbones import Backbone

log = logging.getLogger(__name__)

#: Saliency maps are upsampled to this square resolution before averaging inside crop boxes.
BOX_RESOLUTION = 64
#: Working size of the spectral-residual saliency (Hou & Zhang 2007 work at 64 px).
SPECTRAL_SIZE = 64

#: Ablation variants for ``nriqa ablate lml``: (name, config overrides).
ABLATIONS: list[tuple[str, list[str]]] = [
    ("deiqt", ["method.names=[]"]),
    ("lml", ["method.names=[lml]"]),
    ("lml-alpha-0", ["method.names=[lml]", "method.lml.alpha=0"]),
    ("lml-random-saliency", ["method.names=[lml]", "method.lml.saliency=random"]),
    ("lml-no-ema", ["method.names=[lml]", "method.lml.ema=false"]),
    ("lml-k-2", ["method.names=[lml]", "method.lml.crops=2"]),
    ("lml-k-6", ["method.names=[lml]", "method.lml.crops=6"]),
    # Only valid with a ViT backbone that has a CLS token (raises ConfigError otherwise).
    ("lml-vit-cls", ["method.names=[lml]", "method.lml.saliency=vit-cls"]),
    ("lml-spectral", ["method.names=[lml]", "method.lml.saliency=spectral"]),
]
#: Variants that need a ViT backbone with a CLS token.
REQUIRES_VIT: frozenset[str] = frozenset({"lml-vit-cls"})


def ablations_for(backbone_has_cls: bool) -> list[tuple[str, list[str]]]:
    """:data:`ABLATIONS` without the variants the backbone cannot run."""
    return [(n, o) for n, o in ABLATIONS if backbone_has_cls or n not in REQUIRES_VIT]


def _runnable_ablations(cfg, variants: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """The variants ``cfg``'s backbone can run (CLS-attention saliency needs a ViT)."""
    m = cfg.model
    has_cls = Backbone(m.backbone, weights="none", img_size=m.img_size, **m.backbone_kwargs).has_cls
    return [(n, o) for n, o in variants if has_cls or n not in REQUIRES_VIT]


# ------------------------------------------------------------------------------------ the loss


def lml_infonce(q: torch.Tensor, k: torch.Tensor, image_ids: torch.Tensor,
                salient_mask: torch.Tensor, tau: float, alpha: float,
                exclude_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                neg_mask_eps: float | None = None) -> torch.Tensor:
    r"""LML-IQA's local-manifold InfoNCE, the mean over all M crops (anchors).

    ``q`` ``(M,D)`` student embeddings (anchors), ``k`` ``(M,D)`` teacher embeddings (keys; no
    gradient flows into them), both L2-normalised by the caller; ``image_ids`` ``(M,)`` which
    image each crop belongs to; ``salient_mask`` ``(M,)`` bool, exactly one True per image (its
    salient crop s_i). With s(a, b) = a.b / tau, for the anchor j of image i::

        L_j = -log  exp(s(q_j, k_{s_i}))
                    / [ exp(s(q_j, k_{s_i}))                                    positive
                        + sum_{l: image(l) != i}               exp(s(q_j, k_l))   inter-class
                        + alpha * sum_{l in N_i, l != j}       exp(s(q_j, k_l)) ] intra-class

    where N_i are the non-salient crops of image i. So a non-salient anchor's intra-class
    negatives are the *other* non-salient crops of its image, and the salient anchor's are all of
    them. ``alpha = 0`` is plain InfoNCE over other images (positive: the salient key).
    Returns ``mean_j L_j`` (float32).

    ``exclude_ids`` (optional, ``(M,)``): crops of *other* items with the same id (the same
    picture drawn twice into one batch) are left out of the inter-class negatives.

    ``labels`` ``(M,)`` and ``neg_mask_eps`` (optional): crops of other images whose label differs
    from the anchor's by less than ``neg_mask_eps`` are left out of the inter-class negatives
    (:func:`inter_class_mask`), so that an image of the same quality is not pushed away.
    """
    if q.shape != k.shape or q.dim() != 2:
        raise ValueError(f"q and k must both be (M, D), got {tuple(q.shape)} and {tuple(k.shape)}")
    ids = image_ids.reshape(-1)
    sal = salient_mask.reshape(-1).bool()
    m = q.shape[0]
    if ids.numel() != m or sal.numel() != m:
        raise ValueError(f"image_ids and salient_mask need {m} entries")
    q = q.float()
    k = k.detach().float()
    same = ids[:, None] == ids[None, :]
    positive = same & sal[None, :]  # (M, M): column l is the salient crop of row j's image
    if not torch.all(positive.sum(1) == 1):
        raise ValueError("salient_mask must mark exactly one crop of every image")
    eye = torch.eye(m, dtype=torch.bool, device=q.device)
    intra = same & ~sal[None, :] & ~eye
    inter = inter_class_mask(ids, exclude_ids, labels, neg_mask_eps)
    weights = positive.float() + inter.float() + float(alpha) * intra.float()  # disjoint sets
    logits = q @ k.t() / float(tau)
    z = (logits + torch.log(weights.clamp_min(1e-30))).masked_fill(weights <= 0, float("-inf"))
    pos_logit = (logits * positive.float()).sum(1)
    return (torch.logsumexp(z, dim=1) - pos_logit).mean()


def inter_class_mask(image_ids: torch.Tensor, exclude_ids: torch.Tensor | None = None,
                     labels: torch.Tensor | None = None,
                     neg_mask_eps: float | None = None) -> torch.Tensor:
    """``(M, M)`` bool: which keys are inter-class negatives of which anchor.

    Crops of other images, less those of another item with the same ``exclude_ids`` (the same
    picture twice in a batch) and, with ``neg_mask_eps``, those whose label is within
    ``neg_mask_eps`` of the anchor's (``|y_j - y_l| < eps``)."""
    ids = image_ids.reshape(-1)
    inter = ids[:, None] != ids[None, :]
    if exclude_ids is not None:
        ex = exclude_ids.reshape(-1).to(ids.device)
        inter = inter & (ex[:, None] != ex[None, :])
    if neg_mask_eps is not None:
        if labels is None:
            raise ValueError("neg_mask_eps needs the crops' labels")
        y = labels.reshape(-1).to(ids.device).double()
        inter = inter & ((y[:, None] - y[None, :]).abs() >= float(neg_mask_eps))
    return inter


# ------------------------------------------------------------------------------- saliency


def box_indices(boxes: torch.Tensor, resolution: int) -> torch.Tensor:
    """Normalised ``(x0, y0, x1, y1)`` boxes -> integer cell ranges of a ``resolution`` grid.

    A box covers the cells ``[floor(x0*R + 0.5), floor(x1*R + 0.5))`` along x (likewise y),
    clamped to the grid and at least one cell wide. Returns int64 of the boxes' shape.
    """
    r = int(resolution)
    idx = torch.floor(boxes.double() * r + 0.5).long().clamp(0, r)
    lo, hi = idx[..., :2].clamp(max=r - 1), idx[..., 2:]
    hi = torch.maximum(hi, lo + 1)
    return torch.cat([lo, hi], -1)


def box_saliency(maps: torch.Tensor, boxes: torch.Tensor,
                 resolution: int = BOX_RESOLUTION) -> torch.Tensor:
    """Mean saliency inside each box: ``maps (B,h,w)``, ``boxes (B,K,4)`` normalised -> ``(B,K)``.

    The maps are upsampled bilinearly (``align_corners=False``) to ``resolution`` x
    ``resolution`` (unchanged when already that size), then averaged over the cells of
    :func:`box_indices`, vectorised with an integral image.
    """
    if maps.dim() != 3 or boxes.dim() != 3 or boxes.shape[-1] != 4 or len(maps) != len(boxes):
        raise ValueError(f"need maps (B,h,w) and boxes (B,K,4), got {tuple(maps.shape)}, "
                         f"{tuple(boxes.shape)}")
    r = int(resolution)
    grid = maps.double()
    if tuple(grid.shape[-2:]) != (r, r):
        grid = F.interpolate(grid[:, None], size=(r, r), mode="bilinear", align_corners=False)[:, 0]
    b = grid.shape[0]
    integral = F.pad(grid.cumsum(1).cumsum(2), (1, 0, 1, 0))  # (B, R+1, R+1)
    flat = integral.reshape(b, -1)
    idx = box_indices(boxes.to(grid.device), r)
    x0, y0, x1, y1 = idx.unbind(-1)

    def at(y, x):
        return flat.gather(1, y * (r + 1) + x)

    total = at(y1, x1) - at(y0, x1) - at(y1, x0) + at(y0, x0)
    return (total / ((x1 - x0) * (y1 - y0)).double()).float()


def salient_index(maps: torch.Tensor, boxes: torch.Tensor,
                  resolution: int = BOX_RESOLUTION) -> torch.Tensor:
    """Each image's salient crop: the argmax over its K boxes of :func:`box_saliency`, ``(B,)``."""
    return box_saliency(maps, boxes, resolution).argmax(1)


def spectral_residual(images, size: int = SPECTRAL_SIZE, avg: int = 3, sigma: float = 2.5,
                      pad: int | None = None) -> np.ndarray:
    """Static spectral-residual saliency (Hou & Zhang, CVPR 2007) of a batch: ``(B,size,size)``.

    ``images``: ``(B,3,H,W)`` or ``(3,H,W)`` uint8 / float-in-[0,1] (tensor or array), or
    ``(H,W)`` / ``(B,H,W)`` grey. Each image is reduced to grey (ITU-R 601 luma) at ``size`` x
    ``size`` (antialiased bilinear); with F its 2-D FFT, the spectral residual is
    ``R = log|F| - mean_{avg x avg}(log|F|)``; the saliency is
    ``gaussian_sigma(|IFFT(exp(R + i*angle(F)))|^2)``, scaled to a maximum of 1 per image.
    ``avg = 3`` and a Gaussian of ``sigma = 2.5`` px at 64 px follow the authors' reference
    MATLAB code. One addition: the grey image is reflect-padded by ``pad`` pixels (default
    ``size // 4``) before the FFT and the map cropped back, because the FFT's periodic wrap
    otherwise makes the image borders the most "salient" places (``pad=0``: the original).
    """
    from scipy import ndimage  # noqa: PLC0415 - scipy only for spectral saliency (start-up time)

    x = images if torch.is_tensor(images) else torch.from_numpy(np.array(images))
    x = x.detach().cpu()
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if x.dim() == 2:
        x = x[None, None]
    elif x.dim() == 3:
        x = x[None] if x.shape[0] == 3 else x[:, None]
    if x.shape[1] == 3:
        x = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                      antialias=True)[:, 0].double().numpy()
    pad = size // 4 if pad is None else int(pad)
    if pad > 0:
        x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    spectrum = np.fft.fft2(x, axes=(-2, -1))
    log_amp = np.log(np.abs(spectrum) + 1e-12)
    residual = log_amp - ndimage.uniform_filter(log_amp, size=(1, avg, avg), mode="nearest")
    sal = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)), axes=(-2, -1))) ** 2
    sal = ndimage.gaussian_filter(sal, sigma=(0, sigma, sigma), mode="nearest")
    if pad > 0:
        sal = sal[:, pad:-pad, pad:-pad]
    return (sal / np.maximum(sal.max(axis=(1, 2), keepdims=True), 1e-12)).astype(np.float32)


def _to_input(full: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 / [0,1] images ``(B,3,F,F)`` -> float [0,1] at the network's input size."""
    x = full.float() / 255.0 if full.dtype == torch.uint8 else full.float()
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True).clamp_(0, 1)
    return x


@torch.no_grad()
def saliency_maps(model, full: torch.Tensor, kind: str, input_size: int,
                  grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Saliency maps ``(B,h,w)`` of whole images ``full (B,3,F,F)`` (uint8 or [0,1] float).

    ``decoder``: ``model``'s panel cross-attention over the tokens, averaged over heads and
    panel members, on the token grid; ``vit-cls``: the backbone's last-block CLS attention on
    the token grid; ``spectral``: :func:`spectral_residual` (``model`` unused). ``model`` sees
    the image resized to ``input_size`` x ``input_size``.
    """
    if kind == "spectral":
        return torch.from_numpy(spectral_residual(full)).to(full.device)
    if kind not in ("decoder", "vit-cls"):
        raise ValueError(f"no saliency map for kind {kind!r}")
    x = _to_input(full, input_size)
    if kind == "decoder":
        c, tokens = model.features(x)
        attn = model.head(c, tokens, need_attn=True).attn  # (B, Q, N)
        flat = attn.float().mean(1)
    else:
        flat = model.backbone.cls_attention(x).float()
    rows, cols = grid or model.backbone.token_grid(input_size)
    if flat.shape[-1] != rows * cols:
        raise ValueError(f"{flat.shape[-1]} tokens do not fill a {rows}x{cols} token grid")
    return flat.reshape(len(flat), rows, cols)


# ---------------------------------------------------------------------------------- networks


class Projector(nn.Module):
    """MLP ``d -> d -> out`` with GELU; the output is L2-normalised."""

    def __init__(self, width: int, out_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x).float(), dim=-1)


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``xi <- m * xi + (1 - m) * theta`` for every parameter; buffers are copied.

    Not timm's ``ModelEmaV3``: it interpolates (``lerp``), which differs from this in float32's
    last bits from the first update on (``benchmarks/ema_vs_timm.py``), so trained LML-IQA
    models would not reproduce; and it keeps the copy under ``.module``, which renames the
    teacher's checkpoint keys that resumed runs load."""
    t_named, s_named = list(teacher.named_parameters()), list(student.named_parameters())
    if [n for n, _ in t_named] != [n for n, _ in s_named]:
        raise ValueError("teacher and student have different parameters")
    t_params = [p for _, p in t_named]
    s_params = [p.detach().to(t.dtype) for (_, t), (_, p) in zip(t_named, s_named)]
    if t_params:
        torch._foreach_mul_(t_params, float(momentum))
        torch._foreach_add_(t_params, s_params, alpha=1.0 - float(momentum))
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        tb.copy_(sb)


# ------------------------------------------------------------------------------------ method


@register_method("lml", config=LMLConfig, ablations=ABLATIONS,
                 ablation_filter=_runnable_ablations)
class LMLMethod(Method):
    """LML-IQA's training additions around a DEIQT student (see the module docstring).

    Holds the projector (trained with the student: :meth:`trainable_parameters`) and, with
    ``ema``, the EMA teacher (a DEIQT and a projector, ``requires_grad=False``, always in eval
    mode). The student itself is *not* a submodule: it belongs to the engine.
    """

    name = "lml"

    def __init__(self, cfg, model, context: dict | None = None):
        super().__init__()
        lml = cfg.method.lml
        self.lml = lml
        self.crops_per_image = int(lml.crops)
        self.needs_full_image = lml.saliency != "random"
        self.seed = int(cfg.trainer.seed)
        self.ramp_epochs = float(cfg.optim.warmup_epochs if lml.ramp_epochs is None
                                 else lml.ramp_epochs)
        if lml.saliency == "vit-cls" and not getattr(model.backbone, "has_cls", False):
            raise ConfigError(f"method.lml.saliency=vit-cls needs a ViT backbone with a CLS token; "
                              f"{cfg.model.backbone} has none (use decoder or spectral)")
        self.projector = Projector(cfg.model.width, lml.proj_dim)
        if lml.ema:
            self.teacher = copy.deepcopy(model).requires_grad_(False).eval()
            self.teacher_projector = copy.deepcopy(self.projector).requires_grad_(False).eval()
        else:
            self.teacher = None
            self.teacher_projector = None
        self._grid: dict[int, tuple[int, int]] = {}
        self.best_network: str | None = None  # set by select_network for infer_with=best
        self.epochs = float(cfg.optim.epochs)
        self._epoch_float = 0.0  # of the last step, for the momentum ramp of its EMA update
        # each image's last teacher saliency map (CPU, fp16), for the between-steps agreement
        self._last_maps: dict[int, torch.Tensor] = {}
        self._agreement: torch.Tensor | None = None

    # ---------------------------------------------------------------- engine seam
    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` pairs the optimiser trains beside the model: the projector's.

        The EMA teacher and its projector are never listed (they are not optimised)."""
        return [(f"projector.{n}", p) for n, p in self.projector.named_parameters()]

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:  # the teacher is always in eval mode
            self.teacher.eval()
            self.teacher_projector.eval()
        return self

    def after_optimizer_step(self, model) -> None:
        if self.teacher is None:
            return
        m = self.momentum_at(self._epoch_float)
        ema_update_(self.teacher, model, m)
        ema_update_(self.teacher_projector, self.projector, m)

    def momentum_at(self, epoch_float: float) -> float:
        """The EMA momentum after a step at this fractional epoch: ``momentum``, or under
        ``momentum_ramp=cosine`` ``momentum - (momentum - momentum_start) (1 + cos(pi t)) / 2``
        with t = epoch_float / epochs clamped to [0, 1] (BYOL's schedule, from the start value
        up to ``momentum``)."""
        lml = self.lml
        if lml.momentum_ramp == "none":
            return float(lml.momentum)
        t = min(1.0, max(0.0, epoch_float / self.epochs)) if self.epochs > 0 else 1.0
        return float(lml.momentum - (lml.momentum - lml.momentum_start)
                     * (1.0 + math.cos(math.pi * t)) / 2.0)

    def teacher_networks(self, model) -> tuple[nn.Module, nn.Module]:
        """(DEIQT, projector) of the teacher: the EMA copies, or the student's own (``ema=False``)."""
        if self.teacher is None:
            return model, self.projector
        return self.teacher, self.teacher_projector

    def lambda_c(self, epoch_float: float) -> float:
        """The contrastive weight at a fractional epoch: a linear ramp from 0 over ``ramp_epochs``."""
        if self.ramp_epochs <= 0:
            return float(self.lml.lambda_c)
        return float(self.lml.lambda_c) * min(1.0, max(0.0, epoch_float) / self.ramp_epochs)

    # ---------------------------------------------------------------- saliency
    @torch.no_grad()
    def crop_saliency(self, ctx: StepContext) -> torch.Tensor | None:
        """``(B,K)`` box-averaged teacher saliency of each crop; None for ``random``."""
        kind = self.lml.saliency
        if kind == "random":
            return None
        batch = ctx.batch
        if "full" not in batch or "boxes" not in batch:
            raise ValueError(f"LML-IQA saliency '{kind}' needs batch['full'] and batch['boxes'] "
                             "(the data module must be built with needs_full_image=True)")
        teacher, _ = self.teacher_networks(ctx.model)
        size = int(ctx.images.shape[-1])
        grid = None
        if kind != "spectral":
            if size not in self._grid:
                self._grid[size] = tuple(teacher.backbone.token_grid(size))
            grid = self._grid[size]
        # Without EMA the "teacher" is the training student: score the full image in eval mode so
        # BatchNorm statistics are not updated from it.
        was = teacher.training
        teacher.eval()
        try:
            maps = saliency_maps(teacher, batch["full"], kind, size, grid)
        finally:
            teacher.train(was)
        if kind != "spectral":  # one teacher pass per whole image
            ctx.count(forward_crops=len(maps))
        sal = box_saliency(maps, batch["boxes"].float(), BOX_RESOLUTION)
        if kind != "spectral":  # a static map always agrees with itself
            self._agreement = self._salient_agreement(maps, batch, sal.argmax(1))
        return sal

    @torch.no_grad()
    def _salient_agreement(self, maps: torch.Tensor, batch: dict, salient: torch.Tensor):
        """Share of this batch's images, among those seen before, whose previous saliency map
        (from an earlier step's teacher) picks the same crop among today's boxes; None when no
        image was seen before. Remembers today's maps."""
        index = batch.get("index")
        if index is None:
            return None
        keys = [int(i) for i in index.tolist()]
        seen = [j for j, key in enumerate(keys) if key in self._last_maps]
        agree = None
        if seen:
            old = torch.stack([self._last_maps[keys[j]] for j in seen]).to(maps.device, maps.dtype)
            old_pick = box_saliency(old, batch["boxes"][seen].float(), BOX_RESOLUTION).argmax(1)
            agree = (old_pick == salient[seen].to(old_pick.device)).float().mean()
        for j, key in enumerate(keys):
            self._last_maps[key] = maps[j].detach().to("cpu", torch.float16)
        return agree

    def random_salient(self, ctx: StepContext, b: int, k: int) -> torch.Tensor:
        """Seeded random salient crops: from ``(seed, step, table index)`` of each image."""
        index = ctx.batch.get("index")
        keys = index.tolist() if index is not None else list(range(b))
        picks = [int(np.random.default_rng([self.seed, int(ctx.step), int(i) & (2**63 - 1)])
                     .integers(k)) for i in keys]
        return torch.tensor(picks, dtype=torch.long, device=ctx.images.device)

    # ---------------------------------------------------------------- loss
    def extra_loss(self, ctx: StepContext):
        k_crops = int(ctx.crops_per_image)
        m = ctx.images.shape[0]
        b = m // k_crops
        if k_crops < 2 or b * k_crops != m:
            raise ValueError(f"LML-IQA needs K >= 2 crops per image; got {m} crops, K={k_crops}")
        device = ctx.images.device
        logs: dict[str, torch.Tensor | float] = {}

        self._epoch_float = float(ctx.epoch_float)
        self._agreement = None
        sal = self.crop_saliency(ctx)
        if sal is None:
            salient = self.random_salient(ctx, b, k_crops)
        else:
            salient = sal.argmax(1).to(device)
            p = sal.clamp_min(0) / sal.clamp_min(0).sum(1, keepdim=True).clamp_min(1e-12)
            entropy = -(p * p.clamp_min(1e-12).log()).sum(1) / math.log(k_crops)
            logs["lml_salient_entropy"] = entropy.mean().detach()
        if self._agreement is not None:
            logs["lml_salient_agree"] = self._agreement
        salient_mask = F.one_hot(salient, k_crops).bool().reshape(-1)
        image_ids = torch.arange(b, device=device).repeat_interleave(k_crops)
        exclude = ctx.batch.get("index")
        exclude = exclude.to(device).repeat_interleave(k_crops) if exclude is not None else None

        q = self.projector(self.projector_input(ctx.c, ctx.out, student=True))
        teacher, t_proj = self.teacher_networks(ctx.model)
        with torch.no_grad():
            # Without EMA the student is its own teacher: reuse its forward pass.
            if self.teacher is None:
                t_c, t_out = ctx.c, ctx.out
            else:
                t_c, t_tokens = teacher.features(ctx.images)
                t_out = teacher.head(t_c, t_tokens)
                ctx.count(forward_crops=m)
            keys = t_proj(self.projector_input(t_c, t_out, student=False).detach())
            t_score = t_out.score.detach().float()

        labels = ctx.labels.to(device)
        loss_c = lml_infonce(q, keys, image_ids, salient_mask, self.lml.temperature,
                             self.lml.alpha, exclude_ids=exclude, labels=labels,
                             neg_mask_eps=self.lml.neg_mask_eps)
        weight = self.lambda_c(ctx.epoch_float)
        total = ctx.add_term("contrastive", loss_c, weight)
        if self.lml.beta > 0:
            mt = (ctx.out.score.float() - t_score).abs().mean()
            total = total + ctx.add_term("mutual", mt, self.lml.beta)
            logs["lml_mt_loss"] = mt.detach()
        if self.lml.neg_mask_eps is not None:
            kept = inter_class_mask(image_ids, exclude, labels, self.lml.neg_mask_eps).sum()
            possible = inter_class_mask(image_ids, exclude).sum().clamp_min(1)
            logs["lml_neg_masked"] = (1 - kept / possible).float()
        if self.teacher is not None:
            logs["lml_momentum"] = self.momentum_at(ctx.epoch_float)
        logs.update(lml_loss=loss_c.detach(), lml_weight=weight,
                    **_similarity_logs(q.detach(), keys, image_ids, salient_mask))
        return total, logs

    def projector_input(self, c: torch.Tensor, out, student: bool) -> torch.Tensor:
        """What the projector reads (``proj_input``): the score vector (the mean of the panel
        members' outputs), the global feature ``c``, or for ``detached`` the score vector
        without gradient into the student (the teacher side is always without gradient)."""
        kind = self.lml.proj_input
        if kind == "global":
            return c
        x = out.tokens.mean(1)
        return x.detach() if kind == "detached" and student else x

    # ---------------------------------------------------------------- export
    def teacher_model(self, model):
        """The EMA teacher as a standalone DEIQT (a copy); the student itself when ``ema=False``."""
        if self.teacher is None:
            return model
        return copy.deepcopy(self.teacher).requires_grad_(True).eval()

    def export_candidates(self, model) -> dict:
        """With ``infer_with=best``, the networks the engine compares on the selection part:
        ``{"student": ..., "teacher": ...}``; otherwise none (no comparison is made)."""
        if self.lml.infer_with != "best":
            return {}
        return {"student": model, "teacher": self.teacher_model(model)}

    def select_network(self, name: str) -> None:
        """Record the winner of a validation comparison, for ``infer_with=best``."""
        if name not in ("student", "teacher"):
            raise ValueError(f"select_network: 'student' or 'teacher', got {name!r}")
        self.best_network = name

    def export_model(self, model):
        """The network to export: the student (``infer_with=student``), the EMA teacher
        (``teacher``), or for ``best`` the one recorded by :meth:`select_network` (the protocol
        compares :meth:`export_candidates` on the selection part); without a recorded choice,
        ``best`` exports the student and says so."""
        choice = self.lml.infer_with
        if choice == "best":
            if self.best_network is None:
                log.warning("method.lml.infer_with=best but no validation comparison was made: "
                            "exporting the student")
            choice = self.best_network or "student"
        return self.teacher_model(model) if choice == "teacher" else model


def _similarity_logs(q, k, image_ids, salient_mask) -> dict[str, torch.Tensor]:
    """Mean cosine similarity of anchors to their positive, intra- and inter-class keys."""
    sim = q.float() @ k.float().t()
    same = image_ids[:, None] == image_ids[None, :]
    sal = salient_mask.bool()
    eye = torch.eye(len(q), dtype=torch.bool, device=q.device)
    pos = same & sal[None, :]
    intra = same & ~sal[None, :] & ~eye
    out = {"lml_pos_sim": sim[pos].mean()}
    if intra.any():
        out["lml_intra_sim"] = sim[intra].mean()
    if (~same).any():
        out["lml_inter_sim"] = sim[~same].mean()
    return out
