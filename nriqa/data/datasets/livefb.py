"""LIVE-FB / FLIVE (PaQ-2-PiQ) images: ``labels_image.csv``, the test split from
``labels640.csv``."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from nriqa.data.parsing.paths import label_path, sibling
from nriqa.data.parsing.problems import Problem
from nriqa.data.parsing.rows import column_map, read_csv_rows
from nriqa.data.parsing.tables import Entry, build_table
from nriqa.data.spec import DatasetSpec, Layout
from nriqa.data.table import Scale

log = logging.getLogger(__name__)


def read_livefb(
    root, label_file, *, scale: Scale, problems: list[Problem] | None = None, images: str = "database"
) -> pd.DataFrame:
    """LIVEFB / FLIVE ``labels_image.csv`` (``name,mos``; names carry their subfolder, e.g.
    ``voc_emotic_ava/...``); images under ``database/``. The official test set is the
    ``name_image`` column of ``labels640.csv`` (beside the label file, under the root or in
    ``database/``): those images get split "test", the rest "train"."""
    root = Path(root)
    path = label_path(root, label_file)
    found: list[Problem] = []
    header, rows = read_csv_rows(path, found)
    cols = column_map(header, ("name", "mos"), path)
    test = _livefb_test_names(path, root)
    entries = []
    for line, row in rows:
        name = row[cols["name"]].strip()
        split = "" if test is None else ("test" if name in test else "train")
        entries.append(Entry(f"line {line}", name, row[cols["mos"]], (f"{images}/{name}", name),
                             split=split))
    return build_table(entries, root, scale, path, found, problems)


def _livefb_test_names(label_file: Path, root: Path) -> set[str] | None:
    test_file = sibling(label_file, root, "labels640.csv", "database/labels640.csv")
    if test_file is None:
        log.warning("%s: labels640.csv not found, so LIVEFB has no official test split", label_file)
        return None
    ignored: list[Problem] = []
    header, rows = read_csv_rows(test_file, ignored)
    col = column_map(header, ("name_image",), test_file)["name_image"]
    return {row[col].strip() for _, row in rows}


SPEC = DatasetSpec(
    name="livefb", title="LIVE-FB / FLIVE (PaQ-2-PiQ) images", kind="authentic",
    scale=Scale(0.0, 100.0), n_images=39810, n_groups=None, official_split=("train", "test"),
    layouts={
        "official": Layout(read_livefb, ("labels_image.csv", "database/labels_image.csv")),
    },
    citation="Z. Ying, H. Niu, P. Gupta, D. Mahajan, D. Ghadiyaram, A. Bovik, From patches to "
             "pictures (PaQ-2-PiQ): mapping the perceptual space of picture quality, CVPR 2020.",
    notes="test split = the images of labels640.csv",
)

