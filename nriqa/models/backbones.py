"""Backbones from timm, seen as a global feature ``c`` and a token sequence ``P``.

* Vision transformers: ``c`` is the CLS token and ``P`` the patch tokens, both after the final norm.
* CNNs: ``P`` is the last feature map flattened to ``h*w`` tokens and ``c`` its global average.

When the backbone's width differs from the decoder's, one linear projection (shared by ``c`` and
``P``) maps it. The backbone owns its input normalisation, so callers pass pixels in [0, 1] (float)
or uint8, and never need to know a model's mean and std.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nriqa.errors import ConfigError
from nriqa.models.weights import LITE_MEAN, LITE_STD, create_net


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float in [0, 1]; float input is taken to be in [0, 1] already."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def _bn_in_eval(module: nn.Module, _args) -> None:
    module.training = False


def freeze_bn_statistics(net: nn.Module) -> int:
    """Make every BatchNorm layer of ``net`` normalise with its running statistics and never
    update them, whatever calls ``train()``: the layer itself switches to eval before each forward.

    Setting ``eval()`` once is not enough: Lightning restores each submodule's training flag
    directly (not through ``train()``), so an overridden ``train`` never runs. Fine-tuning on small
    IQA batches would otherwise overwrite the ImageNet statistics. The affine weights still train
    unless their layer is frozen. Returns the number of layers frozen."""
    count = 0
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not getattr(m, "_nriqa_frozen_bn", False):
            m.register_forward_pre_hook(_bn_in_eval)
            m._nriqa_frozen_bn = True
            m.eval()
            count += 1
    return count


def _stage_modules(net: nn.Module) -> list[nn.Module]:
    """The stages whose outputs the ``stats`` readout summarises: every block stage of an
    EfficientNet / MobileNet (``net.blocks``), else the modules of timm's ``feature_info``."""
    blocks = getattr(net, "blocks", None)
    if isinstance(blocks, nn.Sequential) and len(blocks) > 1:
        return list(blocks)
    info = getattr(net, "feature_info", None)
    if not info:
        raise ValueError(f"{type(net).__name__} has no stage list for readout='stats'")
    return [net.get_submodule(i["module"]) for i in info][:-1]


def _spatial_std(m: torch.Tensor) -> torch.Tensor:
    """Per-channel standard deviation over the map (unbiased; 0, not NaN, for a 1 x 1 map)."""
    return m.std((2, 3), correction=1 if m.shape[2] * m.shape[3] > 1 else 0)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """The normalised 1-D Gaussian of ``sigma`` pixels, half-width ceil(3 sigma)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def blur_rgb(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``x (B,3,H,W)`` convolved with the 1-D ``kernel`` along each axis, reflected border.

    The weights have fixed shapes (3 channels, the kernel's length), so the ONNX export sees
    constants."""
    r = kernel.numel() // 2
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, kernel.to(x.dtype).view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    return F.conv2d(x, kernel.to(x.dtype).view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)


def median3(x: torch.Tensor) -> torch.Tensor:
    """``x (B,C,H,W)`` through a 3 x 3 median filter, reflected border: removes isolated noise
    and keeps edges. The median of the 9 shifted views is the 5th largest (``topk``, which ONNX
    exports; ``median`` it does not)."""
    h, w = x.shape[-2:]
    p = F.pad(x, (1, 1, 1, 1), mode="reflect")
    views = torch.stack([p[..., i:i + h, j:j + w] for i in range(3) for j in range(3)], 2)
    return views.topk(5, dim=2).values[:, :, 4]


def _channels(stage: nn.Module) -> int:
    """Output channels of a stage: those of its last convolution or norm with a channel count."""
    for m in reversed(list(stage.modules())):
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return m.num_features
        if isinstance(m, nn.Conv2d):
            return m.out_channels
    raise ValueError(f"cannot tell the output channels of {type(stage).__name__}")


class _EnoughStages(Exception):
    """Raised by a forward hook to end a pass once the maps it needs are computed."""


class Backbone(nn.Module):
    def __init__(self, name: str, weights: str = "none", width: int | None = None,
                 img_size: int | None = None, trained_with: str | None = None,
                 readout: str = "default", token_pool: int = 1, stats_stages: int | None = None,
                 stats_reblur: float = 0.0, stats_denoise: bool = False, **timm_kwargs):
        """``trained_with`` names the weights the network was trained from when they differ from
        ``weights`` (a checkpoint rebuilt with ``weights="none"``): it fixes the input
        normalisation, which belongs to the pretrained weights, not to the loading path."""
        super().__init__()
        # img_size only for transformers that take it (small inputs in tests, other resolutions).
        kwargs = {"num_classes": 0} | ({"img_size": img_size} if img_size else {}) | timm_kwargs
        self.name = name
        self.net = create_net(name, weights, **kwargs)
        self.is_vit = hasattr(self.net, "patch_embed") and hasattr(self.net, "num_prefix_tokens")
        self.num_prefix = getattr(self.net, "num_prefix_tokens", 0) if self.is_vit else 0
        self.has_cls = self.is_vit and getattr(self.net, "cls_token", None) is not None
        self._freeze_unused(img_size)
        self.feature_dim = self.net.num_features
        self.width = width or self.feature_dim
        self.proj = nn.Identity() if self.width == self.feature_dim else nn.Linear(self.feature_dim, self.width)
        self.readout = readout
        if token_pool > 1 and self.is_vit:
            raise ConfigError(f"model.token_pool={token_pool} needs a CNN backbone; {name} is a transformer")
        self.token_pool = token_pool
        if readout == "stats":
            if self.is_vit:
                raise ConfigError(f"model.readout=stats needs a CNN backbone; {name} is a transformer")
            stages = _stage_modules(self.net)
            if stats_stages is not None and not 0 < stats_stages <= len(stages):
                raise ConfigError(f"model.stats_stages={stats_stages}: {name} has {len(stages)} stages")
            # The first N stages only, without the last map: what the later, semantic stages add
            # differs from photo to photo more than from distortion to distortion
            # (docs/embedded_dataset.md measures it).
            self.stats_last = stats_stages is None
            self.stat_modules = stages if self.stats_last else stages[:stats_stages]
            stats_dim = 2 * (sum(_channels(m) for m in self.stat_modules)
                             + (self.feature_dim if self.stats_last else 0))
            self.stats_reblur = float(stats_reblur)
            if self.stats_reblur:
                self.register_buffer("reblur_kernel", gaussian_kernel(self.stats_reblur),
                                     persistent=False)
            self.stats_denoise = bool(stats_denoise)
            copies = 1 + bool(self.stats_reblur) + self.stats_denoise
            self.proj_global = nn.Linear(stats_dim * copies, self.width)
        elif stats_stages is not None or stats_reblur or stats_denoise:
            option = ("stats_stages" if stats_stages is not None
                      else "stats_reblur" if stats_reblur else "stats_denoise")
            raise ConfigError(f"model.{option} needs model.readout=stats")
        elif readout != "default":
            raise ConfigError(f"model.readout={readout!r}: unknown; allowed: default, stats")
        lite = (trained_with or weights) == "efficientnet-lite"
        cfg = self.net.pretrained_cfg
        mean = LITE_MEAN if lite else cfg.get("mean", (0.485, 0.456, 0.406))
        std = LITE_STD if lite else cfg.get("std", (0.229, 0.224, 0.225))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, cfg, weights: str | None = None, width: int | None = None) -> Backbone:
        """Build from a :class:`nriqa.config.ModelConfig`; ``weights`` overrides ``cfg.weights``
        (the input normalisation still follows ``cfg.weights``); ``width``: the projection to the
        decoder, None for none."""
        return cls(cfg.backbone, weights=weights or cfg.weights, width=width, img_size=cfg.img_size,
                   trained_with=cfg.weights, readout=cfg.readout, token_pool=cfg.token_pool,
                   stats_stages=cfg.stats_stages, stats_reblur=cfg.stats_reblur,
                   stats_denoise=cfg.stats_denoise, **cfg.backbone_kwargs)

    def _freeze_unused(self, img_size: int | None) -> None:
        """Freeze parameters that ``forward_features`` never uses (e.g. ConvNeXt's head norm when
        the classifier is dropped): DDP stops with an error on parameters that get no gradient."""
        size = img_size or (self.net.pretrained_cfg.get("input_size") or (3, 224, 224))[-1]
        if not self.is_vit:
            size = min(size, 64)  # any size reaches every CNN parameter
        if torch.is_inference_mode_enabled():
            return  # parameters made in inference mode can never be trained: nothing to find
        was = self.net.training
        self.net.eval()
        with torch.enable_grad():  # also when built under no_grad
            self.net.forward_features(torch.zeros(1, 3, size, size)).float().sum().backward()
        for p in self.net.parameters():
            if p.requires_grad and p.grad is None:
                p.requires_grad_(False)
            p.grad = None
        self.net.train(was)

    def freeze(self, prefixes: list[str], freeze_bn: bool = False) -> None:
        """Stop training the parameters under ``prefixes`` (``"*"``: all of the network); with
        ``freeze_bn``, every BatchNorm layer keeps its (ImageNet) running statistics."""
        for name, p in self.net.named_parameters():
            if any(pre == "*" or name == pre or name.startswith(pre + ".") for pre in prefixes):
                p.requires_grad_(False)
        if freeze_bn:
            freeze_bn_statistics(self.net)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (to_unit(x) - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels ``(B,3,H,W)`` -> ``c (B,width)``, ``P (B,N,width)``."""
        return self.project(*self.raw_features(x))

    def raw_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's own ``c (B,C)`` and ``P (B,N,C)``, before the projection to the decoder
        width: what a frozen network always gives for the same pixels (so it can be cached)."""
        if self.readout == "stats":
            return self._stats_features(x)
        feats = self.net.forward_features(self.normalise(x))
        if self.is_vit:
            tokens = feats[:, self.num_prefix:]
            glob = feats[:, 0] if self.has_cls else tokens.mean(1)
        else:
            tokens = feats.flatten(2).transpose(1, 2)
            glob = tokens.mean(1)
            if self.token_pool > 1:
                tokens = self._tokens(feats)
        return glob, tokens

    def project(self, glob: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.readout == "stats":
            return self.proj_global(glob), self.proj(tokens)
        return self.proj(glob), self.proj(tokens)

    def _stats_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``c`` = per-channel mean and standard deviation of every stage's map and of the last
        one: low-level statistics (noise, blur, contrast) that a last-layer mean washes out, and
        that lift a linear probe on BIQ2021 from SRCC 0.77 to 0.82 (docs/models.md).

        With ``stats_reblur`` the crop is also seen blurred by a Gaussian of that sigma, and ``c``
        adds how its statistics change: the means' differences and the standard deviations'
        log-ratios. Blurring an already blurred crop changes little, a sharp or noisy one much: a
        self-reference the crop carries, less tied to its content than the statistics themselves
        (the idea of re-blur sharpness measures). ``stats_denoise`` adds the same for the crop
        through a 3 x 3 median filter, which removes isolated noise but keeps edges: blur and
        median together tell a noisy crop from a sharp one."""
        means, stds, feats = self._stage_stats(x)
        # Per map: its channel means, then their standard deviations (the cached layout).
        parts = [t for pair in zip(means, stds) for t in pair]
        unit, references = to_unit(x), []
        if self.stats_reblur:
            references.append(blur_rgb(unit, self.reblur_kernel))
        if self.stats_denoise:
            references.append(median3(unit))
        for ref in references:
            r_means, r_stds, _ = self._stage_stats(ref, to_the_end=self.stats_last)
            parts += [m - r for m, r in zip(means, r_means)]
            parts += [torch.log((s + 1e-3) / (r + 1e-3)) for s, r in zip(stds, r_stds)]
        return torch.cat(parts, 1), self._tokens(feats)

    def _stage_stats(self, x: torch.Tensor, to_the_end: bool = True):
        """Each summarised map's channel means ``[(B,C_i)]`` and standard deviations
        ``[(B,C_i)]``, and the last map (None when not ``to_the_end``: the pass stops after the
        last summarised stage, which saves a self-reference about half the network)."""
        maps: list[torch.Tensor] = []

        def keep(_m, _i, out):
            maps.append(out)
            if not to_the_end and len(maps) == len(self.stat_modules):
                raise _EnoughStages

        # Hooks live for one call only: a deepcopy (EMA teacher) must not share them.
        handles = [m.register_forward_hook(keep) for m in self.stat_modules]
        feats = None
        try:
            feats = self.net.forward_features(self.normalise(x))
        except _EnoughStages:
            pass
        finally:
            for h in handles:
                h.remove()
        summarised = [*maps, feats] if self.stats_last else maps
        return [m.mean((2, 3)) for m in summarised], [_spatial_std(m) for m in summarised], feats

    def _tokens(self, feats: torch.Tensor) -> torch.Tensor:
        """A CNN map ``(B,C,h,w)`` -> tokens ``(B,N,C)``, average-pooled by ``token_pool`` first
        (fewer, smoother tokens: the decoder costs less, on a large input it also generalises
        better, see docs/models.md)."""
        if self.token_pool > 1:
            feats = F.avg_pool2d(feats, self.token_pool, ceil_mode=True)
        return feats.flatten(2).transpose(1, 2)

    @torch.no_grad()
    def cls_attention(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's CLS-to-patch attention, averaged over heads: ``(B, N)``.

        Only vision transformers with a CLS token have it (LML-IQA's "vit-cls" saliency variant).
        """
        if not self.has_cls:
            raise ValueError(f"{self.name} has no CLS token: CLS-attention saliency needs a ViT")
        attn = self.net.blocks[-1].attn
        captured: dict[str, torch.Tensor] = {}
        handle = attn.register_forward_pre_hook(lambda _m, args: captured.__setitem__("x", args[0]))
        try:
            self.net.forward_features(self.normalise(x))
        finally:
            handle.remove()
        inp = captured["x"]
        b, n, d = inp.shape
        heads = attn.num_heads
        qkv = attn.qkv(inp).reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        weights = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)).softmax(-1)  # (B,H,1,N)
        return weights[:, :, 0, self.num_prefix:].mean(1)

    def token_grid(self, size: int) -> tuple[int, int]:
        """The (rows, cols) layout of ``P`` for a square input of ``size`` pixels."""
        with torch.no_grad():
            was = self.training
            self.eval()
            feats = self.net.forward_features(torch.zeros(1, 3, size, size, device=self.mean.device))
            self.train(was)
        if not self.is_vit:
            return tuple(-(-n // self.token_pool) for n in feats.shape[-2:])
        grid = getattr(self.net.patch_embed, "grid_size", None)
        return tuple(grid)
