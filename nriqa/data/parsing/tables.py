"""Entries to a label table: check each score against the scale, resolve each path, drop
duplicates, and report every problem met (:mod:`nriqa.data.parsing.problems`)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from nriqa.data.parsing.paths import ALLOW_OUTSIDE_ROOT, Resolver, inside
from nriqa.data.parsing.problems import BAD_ROW, DUPLICATE, MISSING_FILE, Problem, settle
from nriqa.data.parsing.rows import blank
from nriqa.data.table import COLUMNS, Scale, make_table
from nriqa.errors import LabelError


@dataclass


class Entry:
    """One labelled image as a label file states it, before its score and path are checked."""

    where: str
    name: str
    score: object
    candidates: tuple[str, ...]  # paths relative to the image root, first that exists wins
    group: str | None = None
    split: str = ""
    extra: dict = field(default_factory=dict)
    source: str | None = None  # the label file, where a dataset has several


def parse_score(value) -> tuple[float | None, str]:
    """The score as a float, or None and why not."""
    if blank(value):
        return None, "score is missing"
    try:
        score = float(str(value).strip())
    except ValueError:
        return None, f"score {str(value).strip()!r} is not a number"
    if not math.isfinite(score):
        return None, f"score is {score}"
    return score, ""


def build_table(
    entries: Sequence[Entry],
    image_root: Path,
    scale: Scale,
    source: Path | Sequence[Path],
    found: list[Problem],
    problems: list[Problem] | None,
    extra_names: Sequence[str] = (),
) -> pd.DataFrame:
    """Check scores, resolve paths and drop duplicates, then make the label table.

    ``found`` already holds the problems met while parsing; the rows they name are not in
    ``entries``. Raises (``problems is None``) or reports (a list) everything found.
    """
    outside_ok = ALLOW_OUTSIDE_ROOT.get()
    sources = [source] if isinstance(source, (str, Path)) else list(source)
    src = str(sources[0]) if len(sources) == 1 else " + ".join(map(str, sources))
    resolver = Resolver(image_root)
    eps = 1e-6 * (scale.high - scale.low)
    kept: list[tuple[Entry, float, Path]] = []
    first_seen: dict[str, str] = {}
    for e in entries:
        origin = e.source or src
        score, why = parse_score(e.score)
        if score is not None and not (scale.low - eps <= score <= scale.high + eps):
            score, why = None, (f"score {score:g} is outside the documented scale "
                                f"[{scale.low:g}, {scale.high:g}]")
        if score is None:
            found.append(Problem(BAD_ROW, origin, e.where, f"{e.name!r}: {why}"))
            continue
        path = resolver.first(e.candidates)
        key = str(path) if path is not None else f"?{e.name.lower()}"
        if key in first_seen:
            found.append(Problem(DUPLICATE, origin, e.where,
                                 f"{e.name!r} is already listed at {first_seen[key]}"))
            continue
        first_seen[key] = e.where
        if path is None:
            found.append(Problem(MISSING_FILE, origin, e.where,
                                 f"image {e.name!r} not found under {resolver.root} (tried "
                                 f"{', '.join(e.candidates)}, ignoring case)"))
            continue
        if not (outside_ok or inside(path, resolver.root)):
            found.append(Problem(BAD_ROW, origin, e.where,
                                 f"{e.name!r} is outside the dataset root {resolver.root} (set "
                                 "data.allow_outside_root=true to allow such paths)"))
            continue
        kept.append((e, score, path))
    found.sort(key=_file_order)  # parse problems were found first: report in file order
    settle(found, problems)
    if not kept:
        if problems is None:
            raise LabelError(src, "no labelled images")
        return pd.DataFrame({c: [] for c in COLUMNS})
    extras = {k: [e.extra.get(k) for e, _, _ in kept] for k in extra_names}
    return make_table(
        [p for _, _, p in kept],
        [s for _, s, _ in kept],
        scale,
        groups=[e.group if e.group is not None else str(p) for e, _, p in kept],
        splits=[e.split for e, _, _ in kept],
        source=src,
        **extras,
    )


def _file_order(problem: Problem) -> tuple[str, int]:
    number = re.search(r"\d+", problem.where)
    return problem.source, int(number.group()) if number else 0
