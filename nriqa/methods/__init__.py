"""What QFM-IQM and LML-IQA add to DEIQT's training, one module per method, behind one registry
(:mod:`nriqa.methods.registry`). Importing this package registers the bundled methods."""

from nriqa.methods import lml, qfm  # noqa: F401 - importing registers the bundled methods
from nriqa.methods.base import EngineHooks, Method, StepContext
from nriqa.methods.registry import (
    ablatable_methods,
    ablation_variants,
    build_methods,
    check_methods,
    method_config,
    prepare_methods,
    register_method,
    registered_methods,
    unregister_method,
)

__all__ = ["EngineHooks", "Method", "StepContext", "ablatable_methods", "ablation_variants",
           "build_methods", "check_methods", "method_config", "prepare_methods", "register_method",
           "registered_methods", "unregister_method"]
