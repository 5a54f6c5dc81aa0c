"""``nriqa recipes``: the bundled recipes, each with what it is for."""

from __future__ import annotations

import argparse

from nriqa.config import list_recipes, recipe_summary

HELP = "the bundled recipes and what each is for"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No arguments."""


def run(args: argparse.Namespace) -> int:
    names = list_recipes()
    width = max((len(n) for n in names), default=0)
    for name in names:
        print(f"{name:<{width}}  {recipe_summary(name)}".rstrip())
    return 0
