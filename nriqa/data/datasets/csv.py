"""A CSV of one's own images and scores: the user states the columns and the scale."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pandas as pd

from nriqa.data.parsing.naming import split_word
from nriqa.data.parsing.paths import label_path
from nriqa.data.parsing.problems import Problem
from nriqa.data.parsing.rows import as_bool, column_map, read_csv_rows
from nriqa.data.parsing.tables import Entry, build_table
from nriqa.data.spec import DatasetSpec, Layout
from nriqa.data.table import Scale
from nriqa.errors import ConfigError


def read_generic_csv(
    root,
    label_file,
    *,
    scale: Scale | None = None,
    problems: list[Problem] | None = None,
    path_column: str = "path",
    score_column: str = "score",
    group_column: str | None = None,
    split_column: str | None = None,
    low: float | None = None,
    high: float | None = None,
    higher_better: bool | Literal["higher", "lower"] = True,
    extra_columns: Sequence[str] = (),
) -> pd.DataFrame:
    """A CSV of one's own: an image path column (relative to ``root``, which defaults to the
    label file's folder, or absolute), a score column, optional group and split columns.

    The scale is ``low``..``high`` with ``higher_better`` giving the direction (all three are the
    user's to state: nriqa never guesses a scale from the data); ``scale`` may be given instead.
    Split values training/validation/testing are shortened to train/val/test.
    """
    if low is not None or high is not None:
        if low is None or high is None:
            raise ConfigError("give both low and high for a CSV dataset's scale")
        scale = Scale(float(low), float(high), as_bool(higher_better))
    if scale is None:
        raise ConfigError("a CSV dataset needs its score scale: give low=..., high=... and "
                          "higher_better=True/False")
    if not scale.high > scale.low:
        raise ConfigError(f"scale high ({scale.high}) must exceed low ({scale.low})")
    path = label_path(root, label_file)
    root = Path(root) if root is not None else path.parent
    found: list[Problem] = []
    header, rows = read_csv_rows(path, found)
    wanted = [c for c in (path_column, score_column, group_column, split_column, *extra_columns) if c]
    cols = column_map(header, wanted, path)
    entries = []
    for line, row in rows:
        name = row[cols[path_column]].strip()
        split = split_word(row[cols[split_column]]) if split_column else ""
        entries.append(Entry(
            f"line {line}", name, row[cols[score_column]], (name,),
            group=row[cols[group_column]].strip() if group_column else None, split=split,
            extra={c: row[cols[c]].strip() for c in extra_columns}))
    return build_table(entries, root, scale, path, found, problems, tuple(extra_columns))


SPEC = DatasetSpec(
    name="csv", title="Your own images: a CSV of paths and scores", kind="authentic",
    scale=None, n_images=None, n_groups=None, official_split=(),
    layouts={"csv": Layout(read_generic_csv, ("labels.csv",))},
    citation="-",
    notes="options: path_column, score_column, group_column, split_column, low, high, "
          "higher_better",
)

