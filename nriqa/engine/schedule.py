"""DEIQT's learning-rate schedule, stepped per iteration.

Linear warm-up from ``warmup_lr`` to ``lr`` over ``warmup_epochs``, then (``step``) ``lr *
decay_rate ** floor(epoch / decay_epochs)``: the timm ``StepLRScheduler`` that DEIQT steps every
iteration. With DEIQT's numbers (warm-up 3, decay 3, x0.1) the peak is reached only at the end of
warm-up and the rate drops straight to 0.1x at epoch 3 and 0.01x at epoch 6.
"""

from __future__ import annotations

import math

from nriqa.config import OptimConfig


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
