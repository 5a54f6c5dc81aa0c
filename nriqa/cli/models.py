"""``nriqa models list | show NAME``: the shipped pretrained models and their cards."""

from __future__ import annotations

import argparse
import json

HELP = "the shipped pretrained models and their cards"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="every shipped model with its headline metrics")
    show = sub.add_parser("show", help="one model's card: data, licence, recipe, metrics")
    show.add_argument("name")


def run(args: argparse.Namespace) -> int:
    from nriqa.inference.zoo import (  # noqa: PLC0415 - start-up time (torch)
        DEFAULT_MODEL,
        card,
        registry,
        verified_file,
    )

    if args.action == "list":
        models = registry()
        if not models:
            print("no pretrained models are installed")
            return 0
        width = max(len(n) for n in models)
        for name, model in models.items():
            mark = "*" if name == DEFAULT_MODEL else " "
            print(f"{mark} {name:<{width}}  {model.headline()}  -  {model.summary}")
        print(f"(* the default: `nriqa score PATH` uses {DEFAULT_MODEL})")
        return 0
    model = card(args.name)
    verified_file(model)  # the card is only worth showing for the file it describes
    print(json.dumps({"name": model.name, "default": model.name == DEFAULT_MODEL,
                      "file": str(model.path()), **{k: v for k, v in vars(model).items()
                                                    if k not in {"name", "file"}}}, indent=2))
    return 0
