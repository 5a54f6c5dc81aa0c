"""``nriqa demo``: the main job on the embedded dataset, with its report."""

from __future__ import annotations

import argparse

HELP = "the main job on the embedded dataset: train, evaluate, score, report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default="runs/demo")
    parser.add_argument("--quick", action="store_true",
                        help="about 2 minutes: a 2 x 2 grid of crops instead of 4 x 3 and 12 epochs "
                             "(lower scores)")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep the Lightning training checkpoints (about 70 MB each)")
    parser.add_argument("--distortions", choices=("artefacts", "all"), default="artefacts",
                        help="artefacts (default): KADID-10k's 9 blur, noise and compression "
                             "types; all: its 18 types, tone and colour changes included (harder: "
                             "docs/embedded_dataset.md)")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: seconds
    parser.add_argument("overrides", nargs="*", metavar="key=value")


def run(args: argparse.Namespace) -> int:
    from nriqa.reports.demo import run_demo  # noqa: PLC0415 - start-up time (torch)

    run_demo(args.output_dir, quick=args.quick, overrides=args.overrides,
             keep_checkpoints=args.keep_checkpoints, tiny=args.tiny,
             distortions=args.distortions)
    return 0
