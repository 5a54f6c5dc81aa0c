"""What QFM-IQM and LML-IQA add to DEIQT's training, one module per method."""

from __future__ import annotations

from nriqa.methods.base import Method, StepContext

__all__ = ["Method", "StepContext", "build_methods"]


def build_methods(cfg, model, context: dict | None = None) -> list[Method]:
    """The methods named by ``cfg.method.name`` (``deiqt``, ``qfm``, ``lml``, ``qfm+lml``).

    ``context`` carries run facts a method may need (``train_size``, ``steps_per_epoch``,
    ``teacher`` model, ...).
    """
    context = context or {}
    names = [] if cfg.method.name == "deiqt" else cfg.method.name.split("+")
    methods: list[Method] = []
    for name in names:
        if name == "qfm":
            from nriqa.methods.qfm import QFMMethod

            methods.append(QFMMethod(cfg, model, context))
        elif name == "lml":
            from nriqa.methods.lml import LMLMethod

            methods.append(LMLMethod(cfg, model, context))
    return methods
