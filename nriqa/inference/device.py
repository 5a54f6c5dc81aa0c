"""The one place a user's device choice becomes a :class:`torch.device`."""

from __future__ import annotations

import torch

from nriqa.errors import NriqaError


def resolve_device(name: str | torch.device | None, option: str = "device") -> torch.device:
    """``name`` (``cpu``, ``cuda``, ``cuda:N``, ``mps``) as a device this machine has; None: the
    first CUDA GPU when there is one, else the CPU. A bad or missing device raises
    :class:`~nriqa.errors.NriqaError` naming ``option`` (the CLI passes ``--device``)."""
    if name is None or name == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise NriqaError(f"{option} {name}: not a device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise NriqaError(f"{option} {name}: no CUDA GPU is available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise NriqaError(f"{option} {name}: there are {torch.cuda.device_count()} CUDA GPU(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise NriqaError(f"{option} {name}: MPS is not available on this machine")
    elif device.type != "cpu":
        raise NriqaError(f"{option} {name}: not supported; use cpu, cuda, cuda:N or mps")
    return device
