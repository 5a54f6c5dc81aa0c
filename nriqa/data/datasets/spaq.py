"""SPAQ: the release's spreadsheet and pyiqa's CSV."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from nriqa.data.parsing.paths import label_path
from nriqa.data.parsing.problems import Problem
from nriqa.data.parsing.pyiqa import pyiqa_files, read_pyiqa_nr
from nriqa.data.parsing.rows import read_excel_rows
from nriqa.data.parsing.tables import Entry, build_table
from nriqa.data.spec import DatasetSpec, Layout
from nriqa.data.table import Scale


def read_spaq(
    root, label_file, *, scale: Scale, problems: list[Problem] | None = None, images: str = "TestImage"
) -> pd.DataFrame:
    """SPAQ ``Annotations/MOS and Image attribute scores.xlsx`` (``Image name``, ``MOS`` 0-100);
    images in ``TestImage/`` (``images`` picks another folder, e.g. a pre-resized copy)."""
    root = Path(root)
    path = label_path(root, label_file)
    entries = [
        Entry(f"row {number}", str(row["Image name"]).strip(), row["MOS"],
              (f"{images}/{str(row['Image name']).strip()}",))
        for number, row in read_excel_rows(path, ("Image name", "MOS"))
    ]
    return build_table(entries, root, scale, path, [], problems)


def read_spaq_pyiqa(
    root, label_file, *, scale: Scale, problems=None, images: str = "TestImage"
) -> pd.DataFrame:
    """pyiqa ``meta_info_SPAQDataset.csv`` (``Image name,MOS,...``)."""
    return read_pyiqa_nr(root, label_file, scale, problems, images)


SPEC = DatasetSpec(
    name="spaq", title="SPAQ (Smartphone Photography Attribute and Quality)", kind="authentic",
    scale=Scale(0.0, 100.0), n_images=11125, n_groups=None, official_split=(),
    resize="aspect:384x512",
    layouts={
        "official": Layout(read_spaq, ("Annotations/MOS and Image attribute scores.xlsx",)),
        "pyiqa": Layout(read_spaq_pyiqa, pyiqa_files("SPAQ")),
    },
    citation="Y. Fang, H. Zhu, Y. Zeng, K. Ma, Z. Wang, Perceptual quality assessment of "
             "smartphone photography, CVPR 2020.",
)

