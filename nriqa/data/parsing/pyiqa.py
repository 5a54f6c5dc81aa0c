"""pyiqa's meta-info CSV layouts, read by position as pyiqa does."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from nriqa.data.parsing.naming import split_word
from nriqa.data.parsing.paths import label_path
from nriqa.data.parsing.problems import Problem
from nriqa.data.parsing.rows import float_or_nan, optional_column, read_csv_rows
from nriqa.data.parsing.tables import Entry, build_table
from nriqa.data.table import Scale
from nriqa.errors import LabelError

PYIQA_SPLITS = {"0": "train", "1": "val", "2": "test"}


def pyiqa_files(stem: str) -> tuple[str, ...]:
    """Where pyiqa's meta CSV usually sits: in the root, or pyiqa's ``meta_info/`` folder."""
    name = f"meta_info_{stem}Dataset.csv"
    return (name, f"meta_info/{name}", f"../meta_info/{name}")


def read_pyiqa_fr(
    root,
    label_file,
    scale: Scale,
    problems: list[Problem] | None,
    candidates: Callable[[str], tuple[str, ...]],
    group_of: Callable[[str, str], str],
    type_of: Callable[[str], str],
) -> pd.DataFrame:
    """pyiqa's full-reference meta CSV: ``ref_name,dist_name,<score>[,std]``, read by position as
    pyiqa does (the score column is called ``mos`` or ``dmos``)."""
    root = Path(root)
    path = label_path(root, label_file)
    found: list[Problem] = []
    header, rows = read_csv_rows(path, found)
    if len(header) < 3:
        raise LabelError(path, f"expected ref_name,dist_name,score columns; the header has {header}")
    std = optional_column(header, "std", path)
    entries = [
        Entry(f"line {line}", row[1].strip(), row[2], candidates(row[1].strip()),
              group=group_of(row[0].strip(), row[1].strip()),
              extra={"dist_type": type_of(row[1].strip()),
                     "std": float_or_nan(row[std]) if std is not None else math.nan})
        for line, row in rows
    ]
    return build_table(entries, root, scale, path, found, problems, ("dist_type", "std"))


def read_pyiqa_nr(
    root,
    label_file,
    scale: Scale,
    problems: list[Problem] | None,
    image_dir: str,
    drop: Callable[[str], bool] = lambda name: False,
) -> pd.DataFrame:
    """pyiqa's no-reference meta CSV: ``img_name,mos[,std][,split...]``, read by position. A
    ``split`` column (0/1/2) or ``official_split`` column (train/val/test) gives the split."""
    root = Path(root)
    path = label_path(root, label_file)
    found: list[Problem] = []
    header, rows = read_csv_rows(path, found)
    if len(header) < 2:
        raise LabelError(path, f"expected img_name,mos columns; the header has {header}")
    std = optional_column(header, "std", path)
    official = optional_column(header, "official_split", path)
    numbered = optional_column(header, "split", path)
    entries = []
    for line, row in rows:
        name = row[0].strip()
        if drop(name):
            continue
        if official is not None:
            split = split_word(row[official])
        elif numbered is not None:
            split = PYIQA_SPLITS.get(row[numbered].strip().split(".")[0], "")
        else:
            split = ""
        entries.append(Entry(f"line {line}", name, row[1], (f"{image_dir}/{name}",), split=split,
                             extra={"std": float_or_nan(row[std]) if std is not None else math.nan}))
    return build_table(entries, root, scale, path, found, problems, ("std",))
