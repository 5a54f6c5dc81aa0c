"""DEIQT's optimiser (AdamW with its weight-decay groups) and learning-rate schedule, stepped per
iteration.

Linear warm-up from ``warmup_lr`` to ``lr`` over ``warmup_epochs``, then (``step``) ``lr *
decay_rate ** floor(epoch / decay_epochs)``: the timm ``StepLRScheduler`` that DEIQT steps every
iteration. With DEIQT's numbers (warm-up 3, decay 3, x0.1) the peak is reached only at the end of
warm-up and the rate drops straight to 0.1x at epoch 3 and 0.01x at epoch 6.
"""

from __future__ import annotations

import math

import torch

from nriqa.config import OptimConfig

#: Parameters DEIQT keeps out of weight decay, beside every 1-D tensor (biases, norms).
NO_DECAY_NAMES = ("pos_embed", "cls_token", "dist_token", "reg_token", "queries")


def param_groups(named_params, weight_decay: float,
                 no_decay_names: tuple[str, ...] = NO_DECAY_NAMES) -> list[dict]:
    """AdamW groups: no decay on biases, norms (all 1-D tensors) and parameters whose name holds
    one of ``no_decay_names`` (DEIQT's embeddings and tokens); frozen parameters left out."""
    decay, no_decay = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith(".bias") or any(k in name for k in no_decay_names)
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def adamw(named_params, cfg: OptimConfig,
          no_decay_names: tuple[str, ...] = NO_DECAY_NAMES) -> torch.optim.AdamW:
    """DEIQT's optimiser over ``(name, parameter)`` pairs (``lr``, ``betas``, ``weight_decay``)."""
    return torch.optim.AdamW(param_groups(named_params, cfg.weight_decay, no_decay_names),
                             lr=cfg.lr, betas=cfg.betas)


def lr_at(step: int, steps_per_epoch: int, cfg: OptimConfig) -> float:
    """Learning rate at optimiser step ``step`` (0-based)."""
    epoch = step / steps_per_epoch
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr + (cfg.lr - cfg.warmup_lr) * epoch / cfg.warmup_epochs
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        span = max(cfg.epochs - cfg.warmup_epochs, 1e-9)
        progress = min((epoch - cfg.warmup_epochs) / span, 1.0)
        return cfg.warmup_lr + 0.5 * (cfg.lr - cfg.warmup_lr) * (1 + math.cos(math.pi * progress))
    return cfg.lr * cfg.decay_rate ** math.floor(epoch / cfg.decay_epochs + 1e-9)
