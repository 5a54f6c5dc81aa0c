"""The label table: the one shape every dataset loader produces.

A label table is a ``pandas.DataFrame`` with one row per image and these columns:

========== ======= ==========================================================================
column     dtype   meaning
========== ======= ==========================================================================
path       str     absolute path of the image file on disk
score      float   the label exactly as the dataset publishes it (MOS or DMOS, its own scale)
label      float   ``score`` mapped to [0, 1] with higher = better (DMOS inverted)
group      str     content group: the reference image for synthetic sets, else the image itself
split      str     official split ("train", "val", "test") or "" where the dataset has none
========== ======= ==========================================================================

Loaders may add extra columns (``dist_type``, ``std`` ...); nothing downstream relies on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from nriqa.errors import LabelError

COLUMNS = ("path", "score", "label", "group", "split")


@dataclass(frozen=True)
class Scale:
    """A dataset's label scale: its documented range and direction."""

    low: float
    high: float
    higher_better: bool = True

    def normalise(self, score: np.ndarray | pd.Series) -> np.ndarray:
        """Map raw scores to [0, 1], higher = better."""
        x = (np.asarray(score, dtype=np.float64) - self.low) / (self.high - self.low)
        return x if self.higher_better else 1.0 - x

    def denormalise(self, label: np.ndarray | float) -> np.ndarray:
        """Inverse of :meth:`normalise`: [0, 1] back to the dataset's own scale."""
        x = np.asarray(label, dtype=np.float64)
        x = x if self.higher_better else 1.0 - x
        return self.low + x * (self.high - self.low)


def make_table(
    paths,
    scores,
    scale: Scale,
    groups=None,
    splits=None,
    source: str = "labels",
    **extra,
) -> pd.DataFrame:
    """Build and validate a label table.

    ``source`` names the label file in error messages. NaN or non-numeric scores are an error that
    names the first offending image, never a silent drop.
    """
    paths = [str(p) for p in paths]
    scores = pd.to_numeric(pd.Series(list(scores), dtype=object), errors="coerce").to_numpy(float)
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise LabelError(
            source,
            f"{bad.size} row(s) have a missing or non-numeric score, first: {paths[bad[0]]!r}",
        )
    table = pd.DataFrame(
        {
            "path": paths,
            "score": scores,
            "label": scale.normalise(scores),
            "group": [str(g) for g in groups] if groups is not None else paths,
            "split": [str(s) for s in splits] if splits is not None else [""] * len(paths),
        }
    )
    for key, value in extra.items():
        table[key] = list(value)
    validate_table(table, source)
    return table


def validate_table(table: pd.DataFrame, source: str = "labels") -> pd.DataFrame:
    """Check a label table's columns and values; return it unchanged."""
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise LabelError(source, f"label table lacks column(s) {missing}")
    if table.empty:
        raise LabelError(source, "no labelled images")
    labels = table["label"].to_numpy(float)
    if not np.all(np.isfinite(labels)):
        raise LabelError(source, "label column has NaN values")
    if labels.min() < -1e-6 or labels.max() > 1 + 1e-6:
        raise LabelError(
            source,
            f"scores fall outside the dataset's documented scale (normalised range "
            f"{labels.min():.3f}..{labels.max():.3f}); is the scale right?",
        )
    dup = table["path"].duplicated()
    if dup.any():
        raise LabelError(source, f"image listed twice: {table['path'][dup].iloc[0]!r}")
    return table
