"""``nriqa protocol``: N splits (honest or paper protocol), cross-dataset tests, one summary."""

from __future__ import annotations

import argparse

from nriqa.cli.common import add_config_arguments, run_config

HELP = "N splits with a summary table"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from nriqa.protocol.runner import (  # noqa: PLC0415 - start-up time (torch)
        run_protocol,
        summary_markdown,
    )

    print(summary_markdown(run_protocol(run_config(args))))
    return 0
