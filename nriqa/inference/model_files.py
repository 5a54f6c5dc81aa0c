"""Model files: one loader for all of them, one validated schema for what they record.

An exported model is one ``.safetensors`` file: the weights plus, in its ``nriqa`` metadata, a
:class:`ModelMeta` (model config, test-crop policy, input normalisation). A Lightning checkpoint
(``.ckpt``) carries the same record as ``nriqa_meta``.

No model file may run code: ``.safetensors`` holds no code at all, and a ``.ckpt`` is read with
``torch.load(weights_only=True)``, which builds only tensors and plain containers and refuses a
pickle that would call anything else. Every problem with a file, from an empty one to a tampered
record, is a :class:`~nriqa.errors.WeightsError` of one line naming the file and the problem.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nriqa.config import ModelConfig, RunConfig
from nriqa.data.crops import TEST_CROP_POLICIES
from nriqa.data.resize import SMALL_IMAGE_POLICIES, resized_size
from nriqa.errors import WeightsError
from nriqa.io import atomic_write
from nriqa.models import DEIQT

FORMAT = "nriqa-deiqt-v1"
_ZIP, _PICKLE = b"PK\x03\x04", b"\x80"  # torch.save's zip container; a legacy raw pickle


class Normalisation(BaseModel):
    """``(pixel / 255 - mean) / std``, per RGB channel: what the backbone's weights expect."""

    model_config = ConfigDict(extra="forbid", strict=True)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @field_validator("std")
    @classmethod
    def _positive(cls, value):
        if min(value) <= 0:
            raise ValueError("every std must be > 0")
        return value


class ModelMeta(BaseModel):
    """What a model file must record to score exactly as it was evaluated."""

    model_config = ConfigDict(extra="forbid", strict=True)
    format: Literal["nriqa-deiqt-v1"]
    model: ModelConfig
    crop_size: int = Field(gt=0)
    test_patch_num: int = Field(ge=1)
    test_crops: Literal[TEST_CROP_POLICIES] = "grid"  # type: ignore[valid-type]
    test_flip: bool = False  # absent in files written before nriqa had it
    resize: str = "none"
    small_image: Literal[SMALL_IMAGE_POLICIES] = "upscale"  # type: ignore[valid-type]
    # Absent only in files written before nriqa recorded it; then model.weights decides it.
    normalise: Normalisation | None = None
    dataset: str | None = None
    method: str | None = None
    seed: int | None = None

    @field_validator("resize")
    @classmethod
    def _resize(cls, value):
        resized_size(64, 48, value)  # ValueError naming the allowed policies
        return value

    @field_validator("model")
    @classmethod
    def _known_backbone(cls, value: ModelConfig):
        import timm

        if not timm.is_model(value.backbone):
            raise ValueError(f"unknown backbone {value.backbone!r} (not a timm model name)")
        return value


def inference_meta(cfg: RunConfig, settings) -> dict:
    """The scoring settings a checkpoint carries (so scores match the evaluation)."""
    return {
        "format": FORMAT,
        "model": cfg.model.model_dump(mode="json"),
        "crop_size": cfg.data.crop_size,
        "test_patch_num": settings.test_patch_num,
        "test_crops": cfg.data.test_crops,
        "test_flip": cfg.data.test_flip,
        "resize": settings.resize,
        "small_image": cfg.data.small_image,
        "dataset": cfg.data.dataset,
        "method": cfg.method.name,
        "seed": cfg.trainer.seed,
    }


def normalisation_of(model: DEIQT) -> dict:
    b = model.backbone
    return {"mean": b.mean.flatten().tolist(), "std": b.std.flatten().tolist()}


def complete_meta(model: DEIQT, meta: dict, source: str = "model metadata") -> dict:
    """``meta`` with the model's input normalisation recorded, checked against the schema."""
    full = dict(meta) | {"normalise": normalisation_of(model)}
    validate_meta(json.dumps(full), source)
    return full


def save_model(model: DEIQT, meta: dict, path: str | Path, dtype: torch.dtype | None = None,
               keep: tuple[str, ...] = ()) -> Path:
    """Write ``model`` and its metadata as one ``.safetensors`` file; ``dtype`` (e.g.
    ``torch.float16``) stores the floating-point weights in that precision, except those whose
    names start with a prefix in ``keep``. The model itself is left as it is, and the recorded
    input normalisation is always the float32 one the loader rebuilds (a half-precision copy of
    127/255 would not match it). Loading always computes in float32."""
    from safetensors.torch import save_file

    meta = complete_meta(model, meta, str(path))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() and not k.startswith(keep) else v
                 for k, v in state.items()}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"nriqa": json.dumps(meta)}))


# ------------------------------------------------------------------------------------ reading


def _one_line(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_file(path: Path) -> bytes:
    """The file's first bytes; a missing, unreadable or empty file is a named error."""
    if not path.exists():
        raise WeightsError(f"{path}: checkpoint not found")
    if not path.is_file():
        raise WeightsError(f"{path}: not a file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as err:
        raise WeightsError(f"{path}: cannot read ({err.strerror})") from None
    if not head:
        raise WeightsError(f"{path}: empty file (0 bytes)")
    return head


def read_checkpoint(path: str | Path) -> dict:
    """A Lightning / PyTorch checkpoint as a dict, unpickled with ``weights_only=True``: a file
    whose pickle would run code (or build anything but tensors and plain data) is refused."""
    path = Path(path).expanduser()
    _check_file(path)
    try:
        with open(path, "rb") as fh:  # a file object: torch.load must not guess by the suffix
            ckpt = torch.load(fh, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        if found:
            raise WeightsError(
                f"{path}: refused: its pickle would call {found.group(1)}, and nriqa loads model "
                "files without running code (export a .safetensors with nriqa train)") from None
        raise WeightsError(f"{path}: not a readable checkpoint ({_one_line(err)})") from None
    except Exception as err:  # noqa: BLE001 - truncated zip, bad header ...: the file's problem
        raise WeightsError(f"{path}: damaged or truncated checkpoint ({_one_line(err)})") from None
    if not isinstance(ckpt, dict):
        raise WeightsError(f"{path}: not a checkpoint (holds a {type(ckpt).__name__}, not a dict)")
    return ckpt


def validate_meta(raw, source: str | Path) -> ModelMeta:
    """``raw`` (JSON text or a dict) as a :class:`ModelMeta`; any problem names ``source``."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as err:
            raise WeightsError(f"{source}: nriqa metadata is not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise WeightsError(f"{source}: nriqa metadata must be a JSON object, "
                           f"not a {type(raw).__name__}")
    try:
        return ModelMeta.model_validate_json(json.dumps(raw))
    except ValidationError as err:
        problems = []
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"]) or "metadata"
            problems.append(f"{where}: {'missing' if e['type'] == 'missing' else e['msg']}")
        raise WeightsError(f"{source}: bad nriqa metadata: {'; '.join(problems)}") from None


def read_meta(path: str | Path) -> dict:
    """The validated metadata of a model file (``.safetensors`` or ``.ckpt``), as a dict."""
    return _read(Path(path).expanduser(), state=False)[0].model_dump(mode="json")


def _read(path: Path, state: bool = True) -> tuple[ModelMeta, dict | None]:
    head = _check_file(path)
    if head.startswith(_ZIP):
        return _read_torch(path)
    try:
        return _read_safetensors(path, state)
    except _NotSafetensors:
        if head.startswith(_PICKLE):  # a legacy (pre-zip) torch file
            return _read_torch(path)
        raise


class _NotSafetensors(WeightsError):
    pass


def _read_torch(path: Path) -> tuple[ModelMeta, dict]:
    ckpt = read_checkpoint(path)
    raw = ckpt.get("nriqa_meta")
    if raw is None:
        raise WeightsError(f"{path}: Lightning checkpoint without nriqa metadata")
    weights = ckpt.get("state_dict")
    if not isinstance(weights, dict):
        raise WeightsError(f"{path}: checkpoint has no state_dict")
    weights = {k[len("model."):]: v for k, v in weights.items() if k.startswith("model.")}
    return validate_meta(raw, path), weights


def _read_safetensors(path: Path, state: bool) -> tuple[ModelMeta, dict | None]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("nriqa")
        weights = load_file(str(path)) if state else None
    except (SafetensorError, OSError, ValueError) as err:
        raise _NotSafetensors(f"{path}: not a model file, or damaged ({_one_line(err)}); nriqa reads "
                           ".safetensors files it exported and Lightning .ckpt files") from None
    if not raw:
        raise WeightsError(f"{path}: not an nriqa model file (no 'nriqa' metadata)")
    return validate_meta(raw, path), weights


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[DEIQT, dict]:
    """Load a model exported by nriqa (``.safetensors``) or a Lightning checkpoint (``.ckpt``);
    returns the model in eval mode and its validated metadata (a dict)."""
    path = Path(path).expanduser()
    meta, state = _read(path)
    try:
        model = DEIQT.from_config(meta.model, weights="none")
    except Exception as err:  # noqa: BLE001 - timm rejects the recorded architecture
        raise WeightsError(f"{path}: cannot build the recorded model ({_one_line(err)})") from None
    _check_normalisation(model, meta, path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise WeightsError(f"{path}: weights do not fit the recorded model "
                           f"({_one_line(err, 300)})") from None
    return model.to(device).eval(), meta.model_dump(mode="json")


def _check_normalisation(model: DEIQT, meta: ModelMeta, path: Path) -> None:
    """The recorded normalisation must be the one ``model.weights`` implies: a tampered or
    damaged record is refused rather than silently changing every score."""
    if meta.normalise is None:
        return
    own = normalisation_of(model)
    for name in ("mean", "std"):
        recorded = torch.tensor(getattr(meta.normalise, name), dtype=torch.float32)
        if not torch.allclose(recorded, torch.tensor(own[name]), rtol=0, atol=1e-6):
            raise WeightsError(
                f"{path}: metadata disagree: model.weights={meta.model.weights!r} normalises with "
                f"{name}={[round(v, 4) for v in own[name]]}, the file records "
                f"{[round(v, 4) for v in recorded.tolist()]}")
