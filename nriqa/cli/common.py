"""What several verbs share: recipe arguments, KEY=VALUE options, the checks of run options.

Everything here is light to import (no torch): ``nriqa --help`` builds every verb's parser.
"""

from __future__ import annotations

import argparse

from nriqa.config import load_config, parse_overrides
from nriqa.errors import NriqaError


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config RECIPE``, ``--resume`` and the dotted ``key=value`` overrides of a run."""
    parser.add_argument("--config", "-c",
                        help="recipe: a YAML file or a bundled name (nriqa recipes)")
    parser.add_argument("--resume", action="store_true",
                        help="continue a killed run from its output_dir (same as "
                             "trainer.resume=true)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. optim.lr=1e-4")


def run_config(args: argparse.Namespace):
    """The :class:`~nriqa.config.RunConfig` of ``--config`` with the overrides applied."""
    resume = ["trainer.resume=true"] if args.resume else []
    return load_config(args.config, [*args.overrides, *resume])


def key_value(text: str) -> str:
    """An argparse ``type`` for ``KEY=VALUE`` options: refuses a missing ``=`` or key."""
    key, sep, _ = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return text


def add_option_argument(parser: argparse.ArgumentParser, *flags: str, help: str) -> None:
    """A repeatable ``KEY=VALUE`` loader option (``-o low=0 -o high=100``)."""
    parser.add_argument(*flags, dest="option", action="append", default=[], type=key_value,
                        metavar="KEY=VALUE", help=help)


def loader_options(items: list[str] | None) -> dict:
    """``["low=0", "score-column=mos"]`` -> ``{"low": 0, "score_column": "mos"}``: the values
    parsed as config overrides are (YAML, ``1e-4`` a float), ``-`` in keys read as ``_``."""
    normalised = []
    for item in items or []:
        key, _, value = item.partition("=")
        normalised.append(f"{key.strip().replace('-', '_')}={value}")
    return parse_overrides(normalised)


def check_run_options(args: argparse.Namespace) -> None:
    """One clear line for a bad ``--batch-size`` / ``--workers`` / ``--device``, before any work."""
    if getattr(args, "batch_size", 1) < 1:
        raise NriqaError(f"--batch-size {args.batch_size}: must be at least 1")
    if getattr(args, "workers", 0) < 0:
        raise NriqaError(f"--workers {args.workers}: must be 0 (decode in a thread) or more")
    if getattr(args, "device", None):
        device(args)


def device(args: argparse.Namespace):
    """``--device`` as a :class:`torch.device` (None: a CUDA GPU when there is one, else cpu)."""
    from nriqa.inference.device import resolve_device  # noqa: PLC0415 - start-up time (torch)

    return resolve_device(args.device, "--device")
