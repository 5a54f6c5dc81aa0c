"""KADID-10k: ``dmos.csv`` (its "dmos" runs 1-5, higher is better) and pyiqa's meta CSV."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from nriqa.data.parsing.naming import indexed_type, stem
from nriqa.data.parsing.paths import label_path
from nriqa.data.parsing.problems import Problem
from nriqa.data.parsing.pyiqa import pyiqa_files, read_pyiqa_fr
from nriqa.data.parsing.rows import column_map, float_or_nan, optional_column, read_csv_rows
from nriqa.data.parsing.tables import Entry, build_table
from nriqa.data.spec import DatasetSpec, Layout
from nriqa.data.table import Scale


def _kadid_candidates(name: str) -> tuple[str, ...]:
    return (f"images/{name}", f"distorted_images/{name}")


def read_kadid10k(root, label_file, *, scale: Scale, problems: list[Problem] | None = None) -> pd.DataFrame:
    """KADID-10k ``dmos.csv`` (``dist_img,ref_img,dmos,var``; the "dmos" runs 1-5, higher is
    better); images in ``images/`` (or DEIQT's ``distorted_images/``). Group: the reference."""
    root = Path(root)
    path = label_path(root, label_file)
    found: list[Problem] = []
    header, rows = read_csv_rows(path, found)
    cols = column_map(header, ("dist_img", "ref_img", "dmos"), path)
    var = optional_column(header, "var", path)
    entries = [
        Entry(f"line {line}", row[cols["dist_img"]].strip(), row[cols["dmos"]],
              _kadid_candidates(row[cols["dist_img"]].strip()), group=stem(row[cols["ref_img"]]),
              extra={"dist_type": indexed_type(row[cols["dist_img"]]),
                     "var": float_or_nan(row[var]) if var is not None else math.nan})
        for line, row in rows
    ]
    return build_table(entries, root, scale, path, found, problems, ("dist_type", "var"))


def read_kadid10k_pyiqa(root, label_file, *, scale: Scale, problems=None) -> pd.DataFrame:
    """pyiqa ``meta_info_KADID10kDataset.csv`` (``I01.png,I01_01_01.png,<dmos>,<std>``)."""
    return read_pyiqa_fr(root, label_file, scale, problems, _kadid_candidates,
                         lambda ref, dist: stem(ref), indexed_type)


SPEC = DatasetSpec(
    name="kadid10k", title="KADID-10k (Konstanz Artificially Distorted Image Database)",
    kind="synthetic", scale=Scale(1.0, 5.0), n_images=10125, n_groups=81, official_split=(),
    layouts={
        "official": Layout(read_kadid10k, ("dmos.csv",)),
        "pyiqa": Layout(read_kadid10k_pyiqa, pyiqa_files("KADID10k")),
    },
    citation="H. Lin, V. Hosu, D. Saupe, KADID-10k: a large-scale artificially distorted IQA "
             "database, QoMEX 2019.",
)

