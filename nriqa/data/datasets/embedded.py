"""nriqa's embedded synthetic dataset as a dataset like the others: its ``labels.csv`` reader,
and a root that is built (or found in the cache) when none is given. The images themselves are
made by :mod:`nriqa.data.synthetic`."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from nriqa.data.datasets.csv import read_generic_csv
from nriqa.data.parsing.paths import label_path
from nriqa.data.parsing.rows import read_csv_rows
from nriqa.data.spec import DatasetSpec, Layout
from nriqa.data.table import Scale
from nriqa.errors import ConfigError, DataError


def read_embedded(root, label_file, *, scale: Scale, problems=None) -> pd.DataFrame:
    """The embedded synthetic dataset's ``labels.csv`` (``path,score,group,dist_type,level[,ref_path]``;
    score = KADID-calibrated quality in [0, 1], higher is better)."""
    header, _ = read_csv_rows(label_path(root, label_file), [])
    extras = [c for c in ("dist_type", "level", "ref_path") if c in header]
    table = read_generic_csv(root, label_file, scale=scale, problems=problems, group_column="group",
                             extra_columns=extras)
    if "level" in table and len(table):
        table["level"] = pd.to_numeric(table["level"], errors="coerce")
    if "ref_path" in table and len(table):
        base = Path(os.path.abspath(Path(root)))
        table["ref_path"] = [str(base / p) if p else "" for p in table["ref_path"]]
    return table


def _build(**options) -> Path:
    """Build the embedded dataset (or find it in the cache) and return its root."""
    # Imported here, not at the top: the builder pulls in scipy.signal, scikit-image and
    # scikit-learn (about 2 s), which reading any other dataset's labels never needs.
    from nriqa.data import synthetic  # noqa: PLC0415 - start-up time, see above

    return Path(synthetic.build_embedded(**options))


SPEC = DatasetSpec(
    name="embedded", title="nriqa's embedded synthetic dataset (built on first use)",
    kind="synthetic", scale=Scale(0.0, 1.0), n_images=None, n_groups=None, official_split=(),
    layouts={"embedded": Layout(read_embedded, ("labels.csv",))},
    citation="nriqa: KADID-10k's distortions of photos bundled in installed packages, labelled "
             "with KADID-10k's mean human score per distortion type and level.",
    default_root=_build,
)


def load_embedded_table(root: str | Path | None = None, seed: int = 0, **build) -> pd.DataFrame:
    """The embedded dataset's label table (:func:`nriqa.data.table.make_table`).

    ``root`` is a built dataset; by default the dataset for ``seed`` is built (or found in the
    cache) with :func:`nriqa.data.synthetic.build_embedded` and any extra ``build`` keyword
    arguments. Labels are the KADID-calibrated scores on the scale ``Scale(0, 1, True)``;
    ``group`` is the reference name; ``split`` is "" (the dataset has no official split). Extra
    columns: ``dist_type``, ``level``, ``ref_path`` (absolute).
    """
    if root is None:
        root = _build(seed=seed, **build)
    elif build:
        raise ConfigError(f"load_embedded_table: give root or build options, not both ({build})")
    root = Path(root).expanduser().resolve()
    if not (root / "manifest.json").is_file():
        raise DataError(root, "no manifest.json: not a complete embedded dataset (rebuild it)")
    return SPEC.read(root)[0]
