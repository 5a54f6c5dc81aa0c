"""``nriqa analyze ...``: pictures that explain models, and a run's logs as tables.

Each sub-command is a module with the verbs' interface (``HELP``, ``add_arguments``, ``run``).
"""

from __future__ import annotations

import argparse

from nriqa.cli.analyze import embeddings, run_logs, saliency, semantic_noise

HELP = "pictures: semantic noise, saliency, embeddings; a run's logs as tables"

#: sub-command name -> module, in the order ``nriqa analyze --help`` lists them
ANALYSES = {"semantic-noise": semantic_noise, "saliency": saliency, "embeddings": embeddings,
            "run": run_logs}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    inner = parser.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    for name, module in ANALYSES.items():
        module.add_arguments(inner.add_parser(
            name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP)))


def run(args: argparse.Namespace) -> int:
    return ANALYSES[args.analysis].run(args)
