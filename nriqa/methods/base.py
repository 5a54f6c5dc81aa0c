"""The seam between the training engine and a method (QFM-IQM, LML-IQA).

A method adds losses and training-time state around the *same* DEIQT model; it never changes the
model, so every method's checkpoint scores exactly like a DEIQT checkpoint with the same weights.
The engine runs the student once per step and hands the result to each method as a
:class:`StepContext`; a method returns its extra loss and values to log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from nriqa.engine.module import IQAModule
    from nriqa.models import DEIQT, DecoderOutput


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
    module: IQAModule
    step: int  # global optimiser step
    epoch_float: float  # fractional epoch, for ramps
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
    """Base class: no extra loss. Subclasses override what they need."""

    name = "deiqt"
    #: crops per image per training item (LML-IQA samples several).
    crops_per_image = 1
    #: whether items must carry the whole image (``full``), e.g. for saliency.
    needs_full_image = False

    def extra_loss(self, ctx: StepContext) -> tuple[torch.Tensor | None, dict[str, float]]:
        return None, {}

    def on_fit_start(self, module: IQAModule) -> None:
        """Before the first step (e.g. fill a memory, load a teacher)."""

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

    def count(self, module: IQAModule | None, forward_crops: int = 0, backward_crops: int = 0) -> None:
        """Add this method's extra passes (teacher, saliency, warm fill) to the run's compute count."""
        if module is not None and hasattr(module, "count_compute"):
            module.count_compute(forward_crops, backward_crops)

    def export_model(self, model: DEIQT) -> DEIQT:
        """The network to export for inference (the student by default)."""
        return model
