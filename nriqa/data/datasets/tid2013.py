"""Tampere Image Database 2013: ``mos_with_names.txt`` and pyiqa's meta CSV."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from nriqa.data.parsing.naming import indexed_type, stem
from nriqa.data.parsing.paths import label_path
from nriqa.data.parsing.problems import Problem
from nriqa.data.parsing.pyiqa import pyiqa_files, read_pyiqa_fr
from nriqa.data.parsing.rows import read_whitespace_rows
from nriqa.data.parsing.tables import Entry, build_table
from nriqa.data.spec import DatasetSpec, Layout
from nriqa.data.table import Scale


def _tid_group(name: str) -> str:
    # i01_01_1.bmp / I01_01_1.bmp / I01.BMP / i25.bmp: the group is the reference number.
    return stem(name).split("_")[0].upper()


def read_tid2013(root, label_file, *, scale: Scale, problems: list[Problem] | None = None) -> pd.DataFrame:
    """TID2013 ``mos_with_names.txt`` (``<mos> <name>``); images in ``distorted_images/``, names
    matched case-insensitively; the group is the reference number ``I01``..``I25``."""
    root = Path(root)
    path = label_path(root, label_file)
    found: list[Problem] = []
    entries = [
        Entry(f"line {line}", name, mos, (f"distorted_images/{name}",), group=_tid_group(name),
              extra={"dist_type": indexed_type(name)})
        for line, (mos, name) in read_whitespace_rows(path, 2, found)
    ]
    return build_table(entries, root, scale, path, found, problems, ("dist_type",))


def read_tid2013_pyiqa(root, label_file, *, scale: Scale, problems=None) -> pd.DataFrame:
    """pyiqa ``meta_info_TID2013Dataset.csv`` (``I01.BMP,i01_01_2.bmp,<mos>,<std>``)."""
    return read_pyiqa_fr(root, label_file, scale, problems,
                         lambda d: (f"distorted_images/{d}",),
                         lambda ref, dist: _tid_group(ref), indexed_type)


SPEC = DatasetSpec(
    name="tid2013", title="Tampere Image Database 2013", kind="synthetic",
    scale=Scale(0.0, 9.0), n_images=3000, n_groups=25, official_split=(),
    layouts={
        "official": Layout(read_tid2013, ("mos_with_names.txt",)),
        "pyiqa": Layout(read_tid2013_pyiqa, pyiqa_files("TID2013")),
    },
    citation="N. Ponomarenko et al., Image database TID2013: peculiarities, results and "
             "perspectives, Signal Process. Image Commun. 30, 2015.",
)

