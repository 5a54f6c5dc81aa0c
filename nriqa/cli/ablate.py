"""``nriqa ablate METHOD``: a method's named variants of a recipe on the same splits and seeds,
one table (the runner is :mod:`nriqa.protocol.ablation`)."""

from __future__ import annotations

import argparse

HELP = "run a method's ablation variants on the same splits; one table"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # The method names come from the method registry (torch): checked in run(), not here.
    parser.add_argument("method", help="a method with ablation variants, e.g. qfm or lml")
    parser.add_argument("--config", "-c", help="recipe (YAML file or bundled name)")
    parser.add_argument("--output-dir", default="runs/ablation")
    parser.add_argument("--only", nargs="+", help="run only these variants")
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value")


def run(args: argparse.Namespace) -> int:
    from nriqa.protocol.ablation import (  # noqa: PLC0415 - start-up time (torch)
        ablation_markdown,
        run_ablation,
        variants,
    )

    if args.list:
        for name, extra in variants(args.method):
            print(f"{name:24s} {' '.join(extra) or '-'}")
        return 0
    table = run_ablation(args.config, args.method, args.overrides, args.output_dir, args.only)
    print(ablation_markdown(table))
    return 0
