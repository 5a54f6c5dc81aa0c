"""The method registry: a method is one module and a ``@register_method`` line.

The engine knows methods only through this registry: :func:`build_methods` builds the ones a
config names (``method.names``, composed in order), :func:`prepare_methods` lets each prepare what
it needs before the student exists (QFM-IQM fits its teacher), and ``nriqa ablate`` takes each
method's variants from here. A method registered from outside the package (a plugin, a test)
works the same way; its settings live under ``method.options.<name>``, checked against the config
class it registered. A new method, in full::

    class ToyConfig(Section):                     # nriqa.config.Section: unknown keys are errors
        weight: Float = 0.1

    @register_method("toy", config=ToyConfig, ablations=[("toy", ["method.names=[toy]"])])
    class Toy(Method):
        def __init__(self, cfg, model, context):
            super().__init__()
            self.weight = method_config(cfg, "toy").weight   # method.options.toy.weight
        def extra_loss(self, ctx):
            loss = ctx.add_term("toy", ctx.out.score.float().mean() ** 2, self.weight)
            return loss, {}

and ``nriqa train method.names=[toy] method.options.toy.weight=0.5`` trains it (the module must
be imported first; tests/test_method_registry.py does exactly this).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from nriqa.errors import ConfigError
from nriqa.methods.base import Method

#: ``(variant name, dotted config overrides)``: one row of ``nriqa ablate``.
Variant = tuple[str, list[str]]
_NAME = re.compile(r"[a-z][a-z0-9_-]*")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    cls: type[Method]
    #: the method's settings (``method.<name>`` or ``method.options.<name>``); None: none.
    config: type[BaseModel] | None = None
    #: ``nriqa ablate <name>``'s variants.
    ablations: tuple[Variant, ...] = ()
    #: ``(cfg, variants) -> variants`` a config can run (e.g. drop the ViT-only ones).
    ablation_filter: Callable[[Any, list[Variant]], list[Variant]] | None = None
    #: ``ablation folder -> overrides`` every ablation's variants share (QFM-IQM: one teacher
    #: folder, so the variants of a split reuse one teacher).
    ablation_overrides: Callable[[Path], list[str]] | None = None


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(name: str, *, config: type[BaseModel] | None = None,
                    ablations: list[Variant] | tuple[Variant, ...] = (),
                    ablation_filter: Callable[[Any, list[Variant]], list[Variant]] | None = None,
                    ablation_overrides: Callable[[Path], list[str]] | None = None):
    """Class decorator: make a :class:`~nriqa.methods.base.Method` subclass available as
    ``method.names: [<name>]``. Registering another class under a taken name is an error;
    registering the same class again (a module reloaded) replaces it."""
    if not _NAME.fullmatch(name) or name == "deiqt":
        raise ValueError(f"method name {name!r}: lowercase letters, digits, '-' or '_', not 'deiqt'")

    def decorate(cls: type[Method]) -> type[Method]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"register_method({name!r}) decorates a Method subclass, not {cls!r}")
        old = _REGISTRY.get(name)
        if old is not None and old.cls.__qualname__ != cls.__qualname__:
            raise ValueError(f"method {name!r} is already registered by {old.cls.__module__}."
                             f"{old.cls.__qualname__}")
        cls.name = name
        _REGISTRY[name] = MethodSpec(name, cls, config, tuple((v, list(o)) for v, o in ablations),
                                     ablation_filter, ablation_overrides)
        return cls

    return decorate


def unregister_method(name: str) -> None:
    """Take a method out of the registry (tests that register a toy method clean up with it)."""
    _REGISTRY.pop(name, None)


def registered_methods() -> list[str]:
    return sorted(_REGISTRY)


def method_spec(name: str) -> MethodSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"method.names: unknown method {name!r}; registered: "
                          f"{registered_methods()}") from None


def check_methods(cfg) -> None:
    """Every named method registered, and every method's settings valid (a ConfigError naming the
    option otherwise): called before a run writes anything."""
    for name in cfg.method.names:
        method_spec(name)
    for name in cfg.method.options:
        if name not in _REGISTRY:
            raise ConfigError(f"method.options.{name}: no method {name!r} is registered; "
                              f"registered: {registered_methods()}")
    for name in {*cfg.method.names, *cfg.method.options}:
        cfg.method.section(name, _REGISTRY[name].config)


def method_config(cfg, name: str) -> BaseModel | None:
    """Method ``name``'s validated settings in ``cfg`` (None when it registered no config)."""
    return cfg.method.section(name, method_spec(name).config)


def build_methods(cfg, model, context: dict | None = None) -> list[Method]:
    """The methods ``cfg.method.names`` names, in that order, around the student ``model``.

    ``context`` carries run facts a method may need (``train_table``, ``train_size``,
    ``settings``) and what :func:`prepare_methods` gave (QFM-IQM's ``teacher``)."""
    check_methods(cfg)
    context = context or {}
    return [method_spec(name).cls(cfg, model, context) for name in cfg.method.names]


def prepare_methods(cfg, parts: dict, out_dir: Path, settings, fit_fn: Callable) -> dict:
    """Each named method's :meth:`~nriqa.methods.base.Method.prepare`, merged into one context
    (two methods giving the same key is an error: they would overwrite each other)."""
    context: dict = {}
    for name in cfg.method.names:
        extra = method_spec(name).cls.prepare(cfg, parts, Path(out_dir), settings, fit_fn) or {}
        clash = sorted(set(extra) & set(context))
        if clash:
            raise ConfigError(f"methods {cfg.method.names}: {name} prepares {clash}, already "
                              "prepared by an earlier method")
        context |= extra
    return context


def ablation_variants(name: str, cfg=None) -> list[Variant]:
    """``nriqa ablate <name>``'s variants; with ``cfg``, only those that config can run."""
    spec = method_spec(name)
    if not spec.ablations:
        raise ConfigError(f"no ablations for {name!r}; methods with ablations: "
                          f"{ablatable_methods()}")
    variants = [(v, list(o)) for v, o in spec.ablations]
    if cfg is not None and spec.ablation_filter is not None:
        variants = spec.ablation_filter(cfg, variants)
    return variants


def ablatable_methods() -> list[str]:
    return sorted(n for n, spec in _REGISTRY.items() if spec.ablations)


def ablation_defaults(folder: Path) -> list[str]:
    """The overrides every registered method wants shared by all variants of an ablation run in
    ``folder`` (they apply whichever method is ablated: composed variants share them too)."""
    return [o for spec in _REGISTRY.values() if spec.ablation_overrides
            for o in spec.ablation_overrides(Path(folder))]
