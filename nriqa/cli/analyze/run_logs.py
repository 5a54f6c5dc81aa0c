"""``nriqa analyze run RUN_DIR``: what a training run logged, as tables."""

from __future__ import annotations

import argparse
import sys

from nriqa.io import atomic_write_json

HELP = ("a run's logged losses, LML/QFM statistics, gradient diagnostics and clip rate, "
        "as tables")
DESCRIPTION = "What a training run logged, as tables: ``nriqa analyze run RUN_DIR``."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run's output folder (or its logs/metrics.csv, or a "
                        "folder of runs)")
    parser.add_argument("--json", help="also write the tables here as JSON")


def run(args: argparse.Namespace) -> int:
    from nriqa.reports.run_logs import (  # noqa: PLC0415 - start-up time (pandas)
        find_logs,
        format_report,
        report_json,
        run_report,
    )

    reports = [run_report(csv) for csv in find_logs(args.run_dir)]
    sys.stdout.write("\n".join(format_report(r) for r in reports))
    if args.json:
        atomic_write_json(args.json, [report_json(r) for r in reports])
    return 0
