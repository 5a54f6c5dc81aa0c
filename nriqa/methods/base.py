"""The seam between the training engine and a method (QFM-IQM, LML-IQA).

A method adds losses and training-time state around the *same* DEIQT model; it never changes the
model, so every method's checkpoint scores exactly like a DEIQT checkpoint with the same weights.
The engine runs the student once per step and hands the result to each method as a
:class:`StepContext`; a method returns its extra loss and values to log. What a method needs from
the trainer (the compute count, the precision context) comes through public callables of
:class:`EngineHooks` and :class:`StepContext`: a method never touches the trainer itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nriqa.models import DEIQT, DecoderOutput


def _not_counted(forward_crops: int = 0, backward_crops: int = 0) -> None:
    """The compute count outside an engine run (a hand-built context): nothing is counted."""


@dataclass
class EngineHooks:
    """What the engine lends a method at fit start (:meth:`Method.on_fit_start`)."""

    model: DEIQT  # the student
    device: torch.device
    #: ``count(forward_crops=0, backward_crops=0)``: add passes to the run's compute count.
    count: Callable[..., None] = _not_counted
    #: the trainer's precision context (autocast under mixed precision) for extra forward passes.
    forward_context: Callable[[], AbstractContextManager] = contextlib.nullcontext


@dataclass
class StepContext:
    batch: dict[str, Any]  # the collated batch: image (B,K,3,S,S), label, index, group, boxes, ...
    images: torch.Tensor  # (B*K,3,S,S) the crops the student saw
    labels: torch.Tensor  # (B*K,) each crop's [0,1] label (its image's)
    groups: torch.Tensor  # (B*K,) content group of each crop
    crops_per_image: int  # K
    c: torch.Tensor  # (B*K,d) student's global feature (decoder input)
    tokens: torch.Tensor  # (B*K,N,d) student's tokens (decoder input)
    out: DecoderOutput  # student's decoder output on the clean input
    model: DEIQT
    step: int  # global optimiser step
    epoch_float: float  # fractional epoch, for ramps
    #: ``count(forward_crops=0, backward_crops=0)``: a method's extra passes (teacher, saliency).
    count: Callable[..., None] = _not_counted
    #: the trainer's precision context, for passes a method makes outside the student's forward.
    forward_context: Callable[[], AbstractContextManager] = contextlib.nullcontext
    extras: dict[str, Any] = field(default_factory=dict)  # shared between composed methods
    #: named loss terms of this step, ``{name: (unweighted loss, weight)}``, for the gradient
    #: diagnostics (``nriqa.engine.diagnostics``); the engine registers ``regression``.
    terms: dict[str, tuple[torch.Tensor, float]] = field(default_factory=dict)

    def add_term(self, name: str, loss: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        """Register a loss term (for the diagnostics) and return it weighted, ``weight * loss``.

        Names must be unique within a step (composed methods use distinct names)."""
        if name in self.terms:
            raise ValueError(f"loss term {name!r} registered twice in one step")
        self.terms[name] = (loss, float(weight))
        return float(weight) * loss


class Method(nn.Module):
    """Base class: no extra loss. Subclasses override what they need and register themselves
    with :func:`nriqa.methods.registry.register_method` (which sets :attr:`name`).

    The constructor is called as ``cls(cfg, model, context)``: the run's config, the student and
    the context (run facts and what :meth:`prepare` returned)."""

    name = "deiqt"
    #: crops per image per training item (LML-IQA samples several).
    crops_per_image = 1
    #: whether items must carry the whole image (``full``), e.g. for saliency.
    needs_full_image = False

    def __init__(self, cfg=None, model: DEIQT | None = None, context: dict | None = None):
        super().__init__()

    @classmethod
    def prepare(cls, cfg, parts: dict, out_dir: Path, settings, fit_fn: Callable) -> dict:
        """Before the student is built (and seeded): what the method needs from outside, as
        entries of the method context (QFM-IQM: its frozen ``teacher``).

        ``parts``: the ``train`` / ``select`` / ``test`` tables; ``settings``: the resolved data
        settings; ``fit_fn(cfg, parts, out_dir)``: the engine's fit, for a model this run builds
        on (it returns an object with ``model_path`` and ``results``). A teacher's training
        compute goes under ``teacher_compute`` (its ``results.json`` ``compute``, or
        ``"unknown"``): the engine adds it to the run's totals."""
        return {}

    def extra_loss(self, ctx: StepContext) -> tuple[torch.Tensor | None, dict[str, float]]:
        return None, {}

    def on_fit_start(self, hooks: EngineHooks) -> None:
        """Before the first step (e.g. fill a memory)."""

    def unsynced_modules(self) -> list[nn.Module]:
        """Submodules whose buffers DDP must not broadcast from rank 0 before each forward: the
        method keeps them identical on all ranks itself (e.g. a large feature memory)."""
        return []

    def after_optimizer_step(self, model: DEIQT) -> None:
        """After each optimiser step (e.g. an EMA update)."""

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` pairs the optimiser trains beside the model (e.g. a projector).

        Frozen teachers and memories are not listed here and so never get optimised."""
        return []

    def export_candidates(self, model: DEIQT) -> dict[str, DEIQT]:
        """Networks the engine may compare on the selection part before exporting one (LML-IQA's
        ``infer_with=best``: student or EMA teacher). Empty: no comparison wanted."""
        return {}

    def select_network(self, name: str) -> None:
        """Told which candidate of :meth:`export_candidates` validated best."""

    def export_model(self, model: DEIQT) -> DEIQT:
        """The network to export for inference (the student by default)."""
        return model
