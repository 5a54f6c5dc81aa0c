"""BIQ2021: its train and test CSVs, read together (or a subset file)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from nriqa.data.parsing.paths import label_path
from nriqa.data.parsing.problems import Problem
from nriqa.data.parsing.rows import column_map, read_csv_rows
from nriqa.data.parsing.tables import Entry, build_table
from nriqa.data.spec import DatasetSpec, Layout
from nriqa.data.table import Scale


def read_biq2021(
    root,
    label_file,
    *,
    scale: Scale,
    problems: list[Problem] | None = None,
    images: str = "Images",
) -> pd.DataFrame:
    """BIQ2021 ``Train (Images and MOS).csv`` and/or ``Test (Images and MOS).csv`` (``Image
    Name,MOS``, MOS in [0, 1], trailing empty columns), or a subset file such as
    ``train_subset.csv``; ``label_file`` may be one path or several. Images in ``Images/``
    (matched case-insensitively, extensions included). Split: "train" / "test" from the file
    name, "" for a file named otherwise."""
    root = Path(root)
    files = [label_file] if isinstance(label_file, (str, Path)) else list(label_file)
    paths = [label_path(root, f) for f in files]
    found: list[Problem] = []
    entries = []
    for path in paths:
        header, rows = read_csv_rows(path, found)
        cols = column_map(header, ("Image Name", "MOS"), path)
        split = _split_from_file_name(path)
        for line, row in rows:
            name = row[cols["Image Name"]].strip()
            entries.append(Entry(f"line {line}", name, row[cols["MOS"]], (f"{images}/{name}", name),
                                 split=split, source=str(path)))
    return build_table(entries, root, scale, paths, found, problems)


def _split_from_file_name(path: Path) -> str:
    name = path.name.lower()
    return "train" if name.startswith("train") else "test" if name.startswith("test") else ""


SPEC = DatasetSpec(
    name="biq2021", title="BIQ2021", kind="authentic", scale=Scale(0.0, 1.0), n_images=12000,
    n_groups=None, official_split=("train", "test"),
    layouts={
        "official": Layout(read_biq2021, ("Train (Images and MOS).csv",
                                          "Test (Images and MOS).csv"), combine=True),
    },
    citation="N. Ahmed, S. Asif, BIQ2021: a large-scale blind image quality assessment "
             "database, J. Electron. Imaging 31(5) 053010, 2022.",
    notes="a subset file (e.g. train_subset.csv) can be passed as label_file",
)

