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


def read_embedded(root, label_file, *, scale: Scale, problems=None,
                  distortions: str | None = None) -> pd.DataFrame:
    """The embedded synthetic dataset's ``labels.csv`` (``path,score,group,dist_type,level,ref_path,
    split``; score = KADID-calibrated quality in [0, 1], higher is better; split: the official
    part of the image's photo, :func:`nriqa.data.synthetic.official_part`).

    ``distortions`` (loader option): a set of :data:`nriqa.data.synthetic.DISTORTION_SETS`
    (``artefacts``: KADID's blur, noise and compression types; ``all``). Without a root the set
    alone is built; with one, its rows are kept, and a build lacking a type of the set is refused.
    """
    header, _ = read_csv_rows(label_path(root, label_file), [])
    extras = [c for c in ("dist_type", "level", "ref_path") if c in header]
    # the official split by photo (format 3 on; older builds have none)
    table = read_generic_csv(root, label_file, scale=scale, problems=problems, group_column="group",
                             split_column="split" if "split" in header else None,
                             extra_columns=extras)
    if "level" in table and len(table):
        table["level"] = pd.to_numeric(table["level"], errors="coerce")
    if "ref_path" in table and len(table):
        base = Path(os.path.abspath(Path(root)))
        table["ref_path"] = [str(base / p) if p else "" for p in table["ref_path"]]
    return table if distortions is None else _keep_set(table, distortions, root)


def _set_types(distortions: str) -> list[str]:
    # Imported here, not at the top: the builder pulls in scipy.signal, scikit-image and
    # scikit-learn (about 2 s), which reading any other dataset's labels never needs.
    from nriqa.data import synthetic  # noqa: PLC0415 - start-up time, see above

    if distortions not in synthetic.DISTORTION_SETS:
        raise ConfigError(f"dataset 'embedded': loader option distortions={distortions!r}: unknown "
                          f"set; allowed: {', '.join(synthetic.DISTORTION_SETS)}")
    return list(synthetic.DISTORTION_SETS[distortions])


def _keep_set(table: pd.DataFrame, distortions: str, root) -> pd.DataFrame:
    """The rows of the set's types; a build that lacks one of them is refused (a silently
    smaller task would train and report something else)."""
    types = _set_types(distortions)
    present = set(table["dist_type"]) if "dist_type" in table else set()
    missing = [t for t in types if t not in present]
    if missing:
        raise DataError(root, f"the embedded dataset here lacks {len(missing)} of the "
                              f"{distortions!r} distortions ({', '.join(missing)}); leave data.root "
                              "unset to build them, or drop data.options.distortions")
    kept = table[table["dist_type"].isin(types)].reset_index(drop=True)
    kept.attrs = dict(table.attrs)
    return kept


def _build(distortions: str | None = None) -> Path:
    """Build the embedded dataset (only the ``distortions`` set's types when one is named), or
    find it in the cache, and return its root."""
    from nriqa.data import synthetic  # noqa: PLC0415 - start-up time, see _set_types

    return Path(synthetic.build_embedded(
        distortions=None if distortions is None else _set_types(distortions)))


SPEC = DatasetSpec(
    name="embedded", title="nriqa's embedded synthetic dataset (built on first use)",
    kind="synthetic", scale=Scale(0.0, 1.0), n_images=None, n_groups=None,
    official_split=("train", "val", "test"),
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
    ``group`` is the reference name; ``split`` the official part of its photo (``split.mode=
    official``: the demo's test and validation photos). Extra columns: ``dist_type``, ``level``,
    ``ref_path`` (absolute).
    """
    if root is None:
        from nriqa.data import synthetic  # noqa: PLC0415 - start-up time, see _set_types

        root = synthetic.build_embedded(seed=seed, **build)
    elif build:
        raise ConfigError(f"load_embedded_table: give root or build options, not both ({build})")
    root = Path(root).expanduser().resolve()
    if not (root / "manifest.json").is_file():
        raise DataError(root, "no manifest.json: not a complete embedded dataset (rebuild it)")
    return SPEC.read(root)[0]
