"""nriqa: no-reference image quality assessment (DEIQT, QFM-IQM, LML-IQA)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Scorer", "load_model", "load_config", "__version__"]


def __getattr__(name: str):
    # Lazy, so that `import nriqa` (and the CLI's start-up) does not import torch and timm.
    if name == "Scorer":
        from nriqa.inference.scoring import Scorer

        return Scorer
    if name == "load_model":
        from nriqa.inference.model_files import load_model

        return load_model
    if name == "load_config":
        from nriqa.config import load_config

        return load_config
    raise AttributeError(f"module 'nriqa' has no attribute {name!r}")
