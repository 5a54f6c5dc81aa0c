"""``nriqa datasets list | check NAME [ROOT]``: the dataset table; every problem of a dataset on
disk in one run (exit code 0 clean, 1 problems found, 2 the check could not run)."""

from __future__ import annotations

import argparse
import json

from nriqa.cli.common import add_option_argument, loader_options

HELP = "list the known datasets, or check a dataset's files"
DESCRIPTION = "List the datasets nriqa knows, or check one on disk."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="datasets_command", metavar="{list,check}", required=True)
    listing = sub.add_parser("list", help="the known datasets, their sizes and scales")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")

    check = sub.add_parser(
        "check", help="report every problem with a dataset's labels and images",
        description="Read a dataset's labels and decode its images, reporting every problem "
                    "found. Exit code 0 when clean, 1 when problems were found.")
    check.add_argument("name", help="dataset name (see `datasets list`)")
    check.add_argument("root", nargs="?", default=None,
                       help="the dataset folder (optional for the embedded dataset)")
    check.add_argument("--layout", default="auto", help="official, pyiqa, ... (default: auto)")
    check.add_argument("--label-file", default=None, help="label file, if not the default one")
    check.add_argument("--no-images", action="store_true", help="do not decode the images")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--max-examples", type=int, default=5, help="examples per kind (5)")
    check.add_argument("--workers", type=int, default=4, help="image-decoding threads (4)")
    add_option_argument(check, "-o", "--option",
                        help="reader option, e.g. images=512x384, or for a CSV: score_column=mos "
                             "low=0 high=100 higher_better=false (repeatable)")


def run(args: argparse.Namespace) -> int:
    return run_list(args) if args.datasets_command == "list" else run_check(args)


def run_list(args: argparse.Namespace) -> int:
    from nriqa.data.registry import list_datasets  # noqa: PLC0415 - start-up time

    table = list_datasets()
    if args.json:
        print(json.dumps(table.to_dict(orient="records"), indent=2, default=str))
    else:
        print(table.to_string(index=False))
    return 0


def run_check(args: argparse.Namespace) -> int:
    from nriqa.data.check import check_dataset  # noqa: PLC0415 - start-up time

    report = check_dataset(
        args.name, args.root, args.layout, not args.no_images, label_file=args.label_file,
        max_examples=args.max_examples, workers=args.workers, **loader_options(args.option),
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0 if report.ok else 1
