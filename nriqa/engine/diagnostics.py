"""Training diagnostics: each loss term's gradient, and how often the grad-norm clip acts.

Every ``diagnostics.grad_every`` optimiser steps (steps 0, N, 2N, ...) the engine takes the gradient of each loss term
that the step registered (``regression`` from the engine, the methods' own through
:meth:`nriqa.methods.StepContext.add_term`) on each parameter group, with one extra
``torch.autograd.grad`` call per term (the graph is kept for the ordinary backward pass). Logged:

- ``grad/<group>/<term>``: the norm of the term's gradient *as it enters the loss* (its weight
  applied), so ``grad/decoder/contrastive / grad/decoder/regression`` is the share the optimiser
  sees;
- ``gradcos/<group>/<a>|<b>``: the cosine of two terms' gradients (of the unweighted terms, so it is
  defined while a ramped weight is still 0; left out where either gradient is zero);
- ``grad/weight/<term>``: the term's weight at that step.

Groups: ``decoder`` (the attention-panel decoder), ``backbone`` (its trainable parameters) and
one group per method parameter prefix (LML-IQA's ``projector``), so the engine never needs to
know a method's name. These rows go straight to the loggers (one row per diagnosed step in
``metrics.csv``, with its epoch). Separately, every step while diagnostics are on, ``grad/total_norm`` (all
optimised parameters, before clipping) and ``grad/clipped`` (1 when the clip scaled the step): the
epoch mean of ``grad/clipped`` is the clip rate.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn


def diagnostic_groups(model: nn.Module, methods) -> dict[str, list[nn.Parameter]]:
    """``{group: trainable parameters}``: decoder, backbone, and each method parameter prefix."""
    groups = {
        "decoder": [p for p in model.decoder.parameters() if p.requires_grad],
        "backbone": [p for p in model.backbone.parameters() if p.requires_grad],
    }
    for method in methods:
        for name, p in method.trainable_parameters():
            if p.requires_grad:
                groups.setdefault(name.split(".")[0], []).append(p)
    return {k: v for k, v in groups.items() if v}


def term_gradients(terms: dict[str, tuple[torch.Tensor, float]],
                   groups: dict[str, list[nn.Parameter]]) -> dict[str, dict[str, torch.Tensor]]:
    """``{term: {group: flat gradient of the unweighted term}}``; the graph is retained.

    A parameter a term does not reach contributes zeros."""
    params = [p for ps in groups.values() for p in ps]
    sizes = [sum(p.numel() for p in ps) for ps in groups.values()]
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, (loss, _) in terms.items():
        if not loss.requires_grad:
            grads = [None] * len(params)
        else:
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        flat = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).float()
                          for p, g in zip(params, grads)])
        out[name] = dict(zip(groups, flat.split(sizes)))
    return out


def gradient_logs(terms: dict[str, tuple[torch.Tensor, float]],
                  groups: dict[str, list[nn.Parameter]]) -> dict[str, float]:
    """The ``grad/...`` and ``gradcos/...`` values of one step (see the module docstring)."""
    grads = term_gradients(terms, groups)
    logs: dict[str, float] = {}
    for name, (_, weight) in terms.items():
        logs[f"grad/weight/{name}"] = float(weight)
        for group, g in grads[name].items():
            logs[f"grad/{group}/{name}"] = abs(float(weight)) * float(g.norm())
    for a, b in itertools.combinations(terms, 2):
        for group in groups:
            ga, gb = grads[a][group], grads[b][group]
            na, nb = float(ga.norm()), float(gb.norm())
            if na > 0 and nb > 0:
                logs[f"gradcos/{group}/{a}|{b}"] = float(ga @ gb) / (na * nb)
    return logs


def total_grad_norm(parameters) -> float:
    """The 2-norm of all gradients together (what a norm clip compares with its threshold)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads])))
