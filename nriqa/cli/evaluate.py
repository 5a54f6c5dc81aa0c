"""``nriqa evaluate``: the metrics of a trained model on a labelled dataset."""

from __future__ import annotations

import argparse
import json
import os
import sys

from nriqa.cli.common import add_option_argument, check_run_options, loader_options
from nriqa.errors import NriqaError

HELP = "metrics of a trained model on a labelled dataset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "--checkpoint", "-m", dest="model", default="default",
                        help="a shipped model name, a .safetensors file or hf:OWNER/REPO/FILE")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--root")
    parser.add_argument("--layout", default="auto")
    parser.add_argument("--label-file")
    add_option_argument(parser, "-o", "--option",
                        help="loader option, e.g. -o low=0 -o high=100 for a csv dataset")
    parser.add_argument("--split-file", help="evaluate only one part of this split")
    parser.add_argument("--part", default="test", choices=["train", "val", "test"])
    parser.add_argument("--fit", default="none", choices=["none", "logistic"])
    parser.add_argument("--device")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    from nriqa.data.registry import load_labels  # noqa: PLC0415 - start-up time
    from nriqa.data.splits import Split  # noqa: PLC0415 - start-up time
    from nriqa.inference.scoring import Scorer  # noqa: PLC0415 - start-up time (torch)
    from nriqa.metrics import evaluate  # noqa: PLC0415 - start-up time

    check_run_options(args)
    table = load_labels(args.dataset, args.root, layout=args.layout, label_file=args.label_file,
                        **loader_options(args.option))
    if args.split_file:
        root = args.root or os.path.commonpath(list(table["path"]))
        split = Split.from_json(args.split_file, table, root)
        table = table.iloc[getattr(split, args.part)].reset_index(drop=True)
    scorer = Scorer.from_pretrained(args.model, device=args.device, batch_size=args.batch_size)
    results = scorer.score_paths(list(table["path"]), progress=not args.quiet)
    bad = [r for r in results if r.error]
    if bad:
        for r in bad[:10]:
            print(f"error: {r.error}", file=sys.stderr)
        raise NriqaError(f"{len(bad)} image(s) could not be scored; see above")
    metrics = evaluate([r.score for r in results], table["label"].to_numpy(), fit=args.fit)
    print(json.dumps({"dataset": args.dataset, "model": scorer.source, "images": len(table),
                      **metrics}, indent=2))
    return 0
