"""Pretrained models: a registry of named, shipped model files, and one way to name any model.

Each shipped model is two files in ``nriqa/pretrained/``: its weights (``NAME.safetensors``, the
same format ``nriqa train`` exports) and its card (``NAME.json``): the file's sha256, the
architecture and input policy, the training data and its licence, the recipe and the command that
reproduces it, and the metrics with their protocol. The card is written by the command that trained
the model, so its numbers are measurements, not prose. The sha256 is checked on every load.

A model is named by one string (:func:`resolve_model`), the same in the API and the CLI:

- a registered name (``nriqa models list``), or ``default``;
- a path to a ``.safetensors`` model file;
- ``hf:OWNER/REPO/FILE[@REVISION]``: a file on the Hugging Face hub, through ``huggingface_hub``'s
  cache. Only this form ever reaches the network, and only because the user named it; with
  ``HF_HUB_OFFLINE=1`` it is served from the cache or fails with a clear error.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

from nriqa.errors import WeightsError
from nriqa.io import sha256_file as sha256_of

DEFAULT_MODEL = "biq2021-lite0"
PACKAGE = "nriqa.pretrained"


@dataclass(frozen=True)
class ModelCard:
    """What the registry knows of a shipped model (``nriqa models show NAME``)."""

    name: str
    file: str
    sha256: str
    summary: str
    architecture: dict
    input_policy: dict
    training_data: dict
    recipe: dict
    metrics: dict
    limits: list[str] = field(default_factory=list)
    dtype: str = "float32"
    check: dict = field(default_factory=dict)  # a bundled photo and the score it must get

    @classmethod
    def from_json(cls, path: Path) -> ModelCard:
        try:
            raw = json.loads(path.read_text())
            return cls(**raw)
        except (ValueError, TypeError) as err:
            raise WeightsError(f"{path}: invalid model card ({err})") from err

    def path(self) -> Path:
        return Path(str(resources.files(PACKAGE).joinpath(self.file)))

    def headline(self) -> str:
        """One line of the card's main test metrics, e.g. ``BIQ2021 official test SRCC 0.86``."""
        test = self.metrics.get("test", {})
        numbers = ", ".join(f"{k.upper()} {test[k]:.3f}" for k in ("srcc", "plcc") if k in test)
        return f"{self.metrics.get('protocol', '')}: {numbers}".strip(": ")


@cache
def registry() -> dict[str, ModelCard]:
    """Every shipped model, by name (read once from the package's cards)."""
    folder = resources.files(PACKAGE)
    cards = (ModelCard.from_json(Path(str(p))) for p in folder.iterdir() if p.name.endswith(".json"))
    return {card.name: card for card in sorted(cards, key=lambda c: c.name)}


def card(name: str) -> ModelCard:
    """The card of a registered model; an unknown name suggests the close ones."""
    models = registry()
    if name == "default":
        name = DEFAULT_MODEL
    if name not in models:
        close = difflib.get_close_matches(name, list(models), n=3, cutoff=0.4)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        known = ", ".join(models) or "none"
        raise WeightsError(f"unknown model {name!r}{hint} (registered: {known}; or give a "
                           f"path to a .safetensors file, or hf:OWNER/REPO/FILE)")
    return models[name]


def verified_file(model: ModelCard) -> Path:
    """The shipped weights file of ``model``, after checking it is the file its card describes."""
    path = model.path()
    if not path.is_file():
        raise WeightsError(f"{path}: the weights file of model {model.name!r} is missing "
                           f"(a broken install? reinstall nriqa)")
    actual = sha256_of(path)
    if actual != model.sha256:
        raise WeightsError(f"{path}: sha256 {actual[:16]}... does not match model "
                           f"{model.name!r}'s card ({model.sha256[:16]}...): the file is damaged "
                           f"or was replaced; reinstall nriqa")
    return path


def resolve_model(spec: str | Path | None) -> tuple[Path, str]:
    """A model spec -> ``(file, label)``; ``label`` says in words which model it is.

    ``None`` and ``"default"`` give the default shipped model."""
    text = str(spec) if spec is not None else "default"
    if text.startswith("hf:"):
        return _from_hub(text[3:]), text
    path = Path(text).expanduser()
    if path.suffix.lower() in {".safetensors", ".ckpt", ".onnx"} or "/" in text or path.is_file():
        if not path.is_file():
            raise WeightsError(f"{path}: model file not found")
        return path, str(path)
    model = card(text)  # an unknown name raises, suggesting the close ones
    return verified_file(model), f"{model.name} (nriqa pretrained, {model.headline()})"


def _from_hub(ref: str) -> Path:
    """``OWNER/REPO/FILE[@REVISION]`` through huggingface_hub (its cache, its offline switch)."""
    ref, _, revision = ref.partition("@")
    parts = ref.split("/")
    if len(parts) < 3 or not all(parts):
        raise WeightsError(f"hf:{ref}: expected hf:OWNER/REPO/FILE[@REVISION]")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as err:  # pragma: no cover - huggingface_hub comes with timm
        raise WeightsError("hf: models need the huggingface_hub package (pip install huggingface_hub)") from err
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision or None))
    except LocalEntryNotFoundError as err:
        raise WeightsError(f"hf:{ref}: not in the local Hugging Face cache and the hub cannot be "
                           f"reached (offline?): {err}") from err
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise WeightsError(f"hf:{ref}: cannot be downloaded: {err}") from err
