"""Trained models as one ``.safetensors`` file: the weights plus, in its metadata, everything
needed to score with them (model config, test-crop policy, label scale). Loading needs no hub and
runs no pickle."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from nriqa.config import ModelConfig, RunConfig
from nriqa.errors import WeightsError
from nriqa.io import atomic_write
from nriqa.models import DEIQT

FORMAT = "nriqa-deiqt-v1"


def inference_meta(cfg: RunConfig, settings) -> dict:
    """The scoring settings a checkpoint carries (so scores match the evaluation)."""
    return {
        "format": FORMAT,
        "model": cfg.model.model_dump(mode="json"),
        "crop_size": cfg.data.crop_size,
        "test_patch_num": settings.test_patch_num,
        "test_crops": cfg.data.test_crops,
        "resize": settings.resize,
        "small_image": cfg.data.small_image,
        "dataset": cfg.data.dataset,
        "method": cfg.method.name,
        "seed": cfg.trainer.seed,
    }


def save_model(model: DEIQT, meta: dict, path: str | Path) -> Path:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"nriqa": json.dumps(meta)}))


def read_meta(path: str | Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get("nriqa")
    if not raw:
        raise WeightsError(f"{path}: not an nriqa model file (no 'nriqa' metadata)")
    return json.loads(raw)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[DEIQT, dict]:
    """Load a model exported by nriqa (``.safetensors``) or a Lightning checkpoint (``.ckpt``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"{path}: checkpoint not found")
    if path.suffix == ".ckpt":
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        meta = ckpt.get("nriqa_meta")
        if meta is None:
            raise WeightsError(f"{path}: Lightning checkpoint without nriqa metadata")
        state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    else:
        from safetensors.torch import load_file

        meta = read_meta(path)
        state = load_file(str(path))
    model = DEIQT.from_config(ModelConfig.model_validate(meta["model"]), weights="none")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise WeightsError(f"{path}: weights do not fit the recorded model ({err})") from err
    return model.to(device).eval(), meta
