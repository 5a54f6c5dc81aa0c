"""``nriqa analyze ...`` and ``nriqa ablate``: each analysis module registers its own sub-command."""

from __future__ import annotations

import importlib

ANALYSES = ("nriqa.reports.semantic_noise", "nriqa.reports.saliency", "nriqa.reports.run_logs")


def add_parsers(sub) -> None:
    analyze = sub.add_parser("analyze", help="pictures: semantic noise, saliency, embeddings; a run's logs as tables")
    inner = analyze.add_subparsers(dest="analysis", required=True)
    for name in ANALYSES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        module.add_parser(inner)
    from nriqa.protocol.ablation import add_parser

    add_parser(sub)
