"""Semantic Noisy Matching: for each anchor crop, a memory entry of similar quality and other
content, whose features QFM-IQM adds to the anchor's as semantic noise."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

RULES = ("least-similar", "adversarial", "random-quality", "random")
# Labels are float32: a difference that equals tau_q up to rounding counts as within tau_q.
_TAU_EPS = 1e-6


class Match(NamedTuple):
    index: torch.Tensor  # (B,) long: the partner's row in the pool; -1 when there is none at all
    fallback: torch.Tensor  # (B,) bool: the anchor had no candidate (fallback or none)


def _uniform(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Uniform [0, 1) draws from a CPU generator (the same on every device), moved to ``device``."""
    return torch.rand(shape, generator=generator).to(device)


def match(anchor_c: torch.Tensor, anchor_labels: torch.Tensor, anchor_groups: torch.Tensor,
          mem_c: torch.Tensor, mem_labels: torch.Tensor, mem_groups: torch.Tensor,
          rule: str = "least-similar", tau_q: float = 0.05, m: int = 8,
          generator: torch.Generator | None = None, perturbed_loss=None) -> Match:
    """Semantic Noisy Matching: for each anchor, the index of a pool entry to add as noise.

    Candidates of anchor i: ``|y_i - y_k| <= tau_q`` and ``g_k != g_i``.

    - ``least-similar``: among the candidates, the ``m`` with the lowest cosine similarity of ``c``;
      one drawn uniformly;
    - ``adversarial``: among those ``m``, the one with the largest ``perturbed_loss``, a callable
      ``(indices (B,k), valid (B,k)) -> losses (B,k)`` (one batched decoder pass);
    - ``random-quality``: any candidate, uniformly;
    - ``random``: any entry of another group, uniformly (quality ignored: the unmatched ablation).

    An anchor without candidates falls back to the nearest-quality entry of another group
    (``fallback`` is True for it); with no other-group entry at all its index is -1. Vectorised
    over anchors; deterministic given a seeded (CPU) ``generator``: the same number of draws is
    made whatever the data.
    """
    if rule not in RULES:
        raise ValueError(f"unknown matching rule {rule!r}; allowed: {', '.join(RULES)}")
    device = anchor_c.device
    b, size = anchor_c.shape[0], mem_c.shape[0]
    if size == 0 or b == 0:
        return Match(torch.full((b,), -1, dtype=torch.long, device=device),
                     torch.ones(b, dtype=torch.bool, device=device))
    a_groups, m_groups = anchor_groups.to(device).long(), mem_groups.to(device).long()
    other = a_groups[:, None] != m_groups[None, :]  # (B, M)
    dq = (anchor_labels.to(device).double()[:, None] - mem_labels.to(device).double()[None, :]).abs()
    cand = other if rule == "random" else other & (dq <= tau_q + _TAU_EPS)
    n_cand = cand.sum(1)
    has = n_cand > 0
    # fallback: the nearest-quality entry of another group
    nearest = dq.masked_fill(~other, math.inf).argmin(1)
    fallback_index = torch.where(other.any(1), nearest, torch.full_like(nearest, -1))

    if rule in ("random", "random-quality"):
        keys = _uniform((b, size), generator, device).masked_fill(~cand, -1.0)
        pick = keys.argmax(1)
    else:
        sim = F.normalize(anchor_c.detach().float(), dim=1) @ F.normalize(
            mem_c.detach().to(device).float(), dim=1).T
        k = min(int(m), size)
        top = sim.masked_fill(~cand, math.inf).topk(k, dim=1, largest=False).indices  # (B, k)
        avail = n_cand.clamp(max=k)
        if rule == "least-similar":
            u = _uniform((b,), generator, device)
            j = (u * avail.clamp(min=1)).floor().long().clamp(max=k - 1)
        else:
            if perturbed_loss is None:
                raise ValueError("the adversarial rule needs perturbed_loss")
            valid = torch.arange(k, device=device)[None, :] < avail[:, None]
            losses = perturbed_loss(top, valid).float().masked_fill(~valid, -math.inf)
            j = losses.argmax(1)
        pick = top.gather(1, j[:, None]).squeeze(1)
    return Match(torch.where(has, pick, fallback_index), ~has)
