"""The ``nriqa`` command: one module per verb.

Each verb module has ``HELP`` (its line in ``nriqa --help``), ``add_arguments(parser)`` and
``run(args) -> exit code``, and may have ``DESCRIPTION`` (the head of ``nriqa VERB --help``).
Verbs import the library inside ``run``, so that ``nriqa --help`` starts without torch. A
:class:`~nriqa.errors.NriqaError` ends the command with ``nriqa: error: ...`` and exit code 2.
To add a verb: a module here and a line in :data:`VERBS`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from nriqa.allocator import retain_freed_memory
from nriqa.cli import (
    ablate,
    analyze,
    datasets,
    demo,
    evaluate,
    export,
    models,
    protocol,
    recipes,
    score,
    train,
)
from nriqa.errors import NriqaError

#: verb -> module, in the order ``nriqa --help`` lists them
VERBS = {"demo": demo, "datasets": datasets, "train": train, "protocol": protocol,
         "evaluate": evaluate, "score": score, "models": models, "export": export,
         "recipes": recipes, "analyze": analyze, "ablate": ablate}

DESCRIPTION = ("nriqa: no-reference image quality assessment (DEIQT, QFM-IQM, LML-IQA). "
               "`nriqa VERB --help` tells more about each verb.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nriqa", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = parser.add_subparsers(dest="command", required=True, title="verbs", metavar="VERB")
    for name, module in VERBS.items():
        module.add_arguments(sub.add_parser(
            name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP)))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    retain_freed_memory()  # before torch allocates: CPU passes run ~3x faster (nriqa.allocator)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return VERBS[args.command].run(args)
    except NriqaError as err:
        print(f"nriqa: error: {err}", file=sys.stderr)
        return 2
