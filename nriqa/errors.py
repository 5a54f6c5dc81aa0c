"""Errors that name the file and the problem.

Every user-facing failure in nriqa raises one of these, so a caller can catch ``NriqaError`` and a
person reading the message knows which file to look at and what is wrong with it.
"""

from __future__ import annotations

from pathlib import Path


class NriqaError(Exception):
    """Base class of nriqa's errors."""


class ConfigError(NriqaError, ValueError):
    """A configuration value or key is invalid."""


class DataError(NriqaError, ValueError):
    """A data file (image, label file, split file) is missing or malformed.

    ``path`` is the file at fault and ``problem`` says what is wrong with it; ``str(err)`` gives
    ``"<path>: <problem>"``.
    """

    def __init__(self, path: str | Path | None, problem: str | None = None):
        if problem is None:  # rebuilt from its message alone (re-raised from a DataLoader worker)
            path, problem = None, str(path)
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")


class ImageError(DataError):
    """An image cannot be decoded or used (corrupt, truncated, unsupported, too small)."""


class LabelError(DataError):
    """A label file or one of its rows is malformed (bad column, NaN score, unknown name)."""


class MetricError(NriqaError, ValueError):
    """A correlation cannot be computed meaningfully (constant input, NaN, too few samples)."""


class WeightsError(NriqaError, RuntimeError):
    """Weights or a model file cannot be used: pretrained weights that cannot be obtained (nriqa
    never falls back silently), or a model file that is missing, damaged, tampered with or would
    run code. The message names the file and the problem, on one line."""
