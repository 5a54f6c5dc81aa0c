"""KonIQ-10k: the release's CSVs (official split training/validation/test) and pyiqa's CSV;
the image folder (1024x768/ or 512x384/) and the MOS scale (1-5 or 0-100) are detected."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from nriqa.data.parsing.naming import split_word
from nriqa.data.parsing.paths import Resolver, label_path, sibling
from nriqa.data.parsing.problems import Problem
from nriqa.data.parsing.pyiqa import pyiqa_files, read_pyiqa_nr
from nriqa.data.parsing.rows import column_map, float_or_nan, optional_column, read_csv_rows
from nriqa.data.parsing.tables import Entry, build_table
from nriqa.data.spec import DatasetSpec, Layout
from nriqa.data.table import Scale
from nriqa.errors import LabelError

log = logging.getLogger(__name__)

KONIQ_IMAGE_DIRS = ("1024x768", "512x384")


def koniq_image_dir(root: Path, images: str = "auto") -> str:
    """KonIQ's image folder: ``images`` itself, or for "auto" the first of 1024x768 / 512x384 that
    exists (the full-size one when both do)."""
    if images != "auto":
        return images
    resolver = Resolver(root)
    for name in KONIQ_IMAGE_DIRS:
        hit = resolver.resolve(name, folder_ok=True)
        if hit is not None:
            return hit.name
    raise LabelError(root, f"no KonIQ image folder: looked for {' and '.join(KONIQ_IMAGE_DIRS)}/ "
                           "(pass images=FOLDER)")


def detect_koniq_scale(scores: Sequence, documented: Scale) -> Scale:
    """KonIQ MOS circulates on 1-5 and on 0-100: pick by the values and say which."""
    values = pd.to_numeric(pd.Series(list(scores), dtype=object), errors="coerce").dropna()
    if len(values) and values.max() <= 5.0 and values.min() >= 1.0:
        log.info("KonIQ-10k scores are on the 1-5 scale (max %.2f)", values.max())
        return Scale(1.0, 5.0, documented.higher_better)
    log.info("KonIQ-10k scores are on the 0-100 scale (max %.2f)", values.max() if len(values) else 0)
    return documented


def read_koniq10k(
    root,
    label_file,
    *,
    scale: Scale,
    problems: list[Problem] | None = None,
    images: str = "auto",
    score_column: str | None = None,
) -> pd.DataFrame:
    """KonIQ-10k ``koniq10k_distributions_sets.csv`` (``image_name,...,MOS,SD,set``; MOS 0-100,
    official split training/validation/test) or ``koniq10k_scores_and_distributions.csv``
    (``image_name,...,MOS,SD,MOS_zscore``), whose split is taken from the sets file when present.

    The score column defaults to ``MOS_zscore`` when present (0-100, what DEIQT reads), else ``MOS``;
    its scale, 1-5 or 0-100, is detected from the values and recorded in ``table.attrs["scale"]``.
    ``images``: ``"1024x768"``, ``"512x384"`` or ``"auto"`` (the folder that exists).
    """
    root = Path(root)
    path = label_path(root, label_file)
    found: list[Problem] = []
    header, rows = read_csv_rows(path, found)
    column = score_column or next((c for c in ("MOS_zscore", "MOS") if c.lower() in
                                   {h.lower() for h in header}), "MOS")
    cols = column_map(header, ("image_name", column), path)
    set_col = optional_column(header, "set", path)
    sd_col = optional_column(header, "SD", path)
    folder = koniq_image_dir(root, images)
    entries = [
        Entry(f"line {line}", row[cols["image_name"]].strip(), row[cols[column]],
              (f"{folder}/{row[cols['image_name']].strip()}",),
              split=split_word(row[set_col]) if set_col is not None else "",
              extra={"std": float_or_nan(row[sd_col]) if sd_col is not None else math.nan})
        for line, row in rows
    ]
    if set_col is None:
        _koniq_split_from_sets(entries, path, root)
    used = detect_koniq_scale([e.score for e in entries], scale)
    table = build_table(entries, root, used, path, found, problems, ("std",))
    table.attrs["scale"] = used
    table.attrs["note"] = f"KonIQ-10k column {column!r} read on the {used.low:g}-{used.high:g} scale"
    return table


def _koniq_split_from_sets(entries: list[Entry], label_file: Path, root: Path) -> None:
    sets_file = sibling(label_file, root, "koniq10k_distributions_sets.csv")
    if sets_file is None or sets_file == label_file:
        return
    ignored: list[Problem] = []
    header, rows = read_csv_rows(sets_file, ignored)
    cols = column_map(header, ("image_name", "set"), sets_file)
    split = {row[cols["image_name"]].strip(): split_word(row[cols["set"]]) for _, row in rows}
    for e in entries:
        e.split = split.get(e.name, "")


def read_koniq10k_pyiqa(
    root, label_file, *, scale: Scale, problems=None, images: str = "auto"
) -> pd.DataFrame:
    """pyiqa ``meta_info_KonIQ10kDataset.csv`` (``img_name,mos,std,split,...``; MOS 0-100, split
    0/1/2 = train/val/test); ``images`` as for :func:`read_koniq10k`."""
    root = Path(root)
    return read_pyiqa_nr(root, label_file, scale, problems, koniq_image_dir(root, images))


SPEC = DatasetSpec(
    name="koniq10k", title="KonIQ-10k", kind="authentic", scale=Scale(0.0, 100.0),
    n_images=10073, n_groups=None, official_split=("train", "val", "test"),
    resize="aspect:384x512",
    layouts={
        "official": Layout(read_koniq10k, ("koniq10k_distributions_sets.csv",
                                           "koniq10k_scores_and_distributions.csv")),
        "pyiqa": Layout(read_koniq10k_pyiqa, pyiqa_files("KonIQ10k")),
    },
    citation="V. Hosu, H. Lin, T. Sziranyi, D. Saupe, KonIQ-10k: an ecologically valid "
             "database for deep learning of blind image quality assessment, IEEE TIP 29, 2020.",
    notes="images in 1024x768/ or 512x384/ (images=... picks); a 1-5 MOS is detected and used",
)

