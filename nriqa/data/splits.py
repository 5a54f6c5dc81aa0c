"""Train / validation / test splits of a label table: content-disjoint, seeded, saved as JSON.

A :class:`Split` holds sorted *positional* row indices (``table.iloc``) of the table it was made
from. On disk it is keyed by image paths relative to the dataset root instead, so a split file
stays valid when the label table is rebuilt in another row order or the data is moved.

Modes (:func:`make_split`):

- ``"paper"``: 80 / 20 train / test, as DEIQT (which then selects epochs on the test part);
- ``"honest"``: 70 / 10 / 20 train / val / test; with the same seed and index its test part is the
  paper split's test part, and val is carved out of the paper split's training part;
- ``"official"``: the table's ``split`` column; if it has no ``val`` rows, a val part is carved out
  of the official training part (1/8 of it, i.e. 10 % of a 80 / 20 set, unless ``ratios`` say
  otherwise; ``ratios=(1, 0, 0)`` keeps the official training part whole).

Parts never share a ``group`` (a reference image for synthetic sets, the image itself for authentic
ones) except where an official split itself does. Randomness comes from
``np.random.default_rng([seed, index, stream])``: the same arguments always give the same split, and
each ``index`` of :func:`make_splits` a different one. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nriqa.errors import DataError
from nriqa.io import atomic_write_text

PARTS = ("train", "val", "test")
MODES = ("paper", "honest", "official")
DEFAULT_RATIOS = {"paper": (0.8, 0.0, 0.2), "honest": (0.7, 0.1, 0.2)}
OFFICIAL_VAL_SHARE = 0.1 / 0.8  # of the official training part, when the dataset has no val part
FORMAT = "nriqa-split"
VERSION = 1

# Independent random streams, so carving val never changes which images are in test, etc.
_STREAM_PARTS, _STREAM_OFFICIAL_VAL, _STREAM_FRACTION = 0, 1, 2


@dataclass(eq=False)
class Split:
    """Row indices (positions in the label table) of each part, plus how they were made."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    mode: str = "custom"
    seed: int = 0
    fraction: float = 1.0
    index: int = 0
    dataset: str = ""

    def __post_init__(self):
        for part in PARTS:
            rows = np.asarray(getattr(self, part), dtype=np.int64).reshape(-1)
            if len(np.unique(rows)) != len(rows):
                raise ValueError(f"split part {part!r} lists a row twice")
            setattr(self, part, np.sort(rows))
        for i, a in enumerate(PARTS):
            for b in PARTS[i + 1 :]:
                shared = np.intersect1d(getattr(self, a), getattr(self, b))
                if shared.size:
                    raise ValueError(f"parts {a!r} and {b!r} share {shared.size} row(s)")

    def __eq__(self, other) -> bool:
        if not isinstance(other, Split):
            return NotImplemented
        return self._provenance() == other._provenance() and all(
            np.array_equal(getattr(self, p), getattr(other, p)) for p in PARTS
        )

    def _provenance(self) -> dict:
        return {
            "dataset": self.dataset,
            "mode": self.mode,
            "seed": int(self.seed),
            "index": int(self.index),
            "fraction": float(self.fraction),
        }

    def sizes(self) -> dict[str, int]:
        return {p: len(getattr(self, p)) for p in PARTS}

    def to_json(self, path: str | Path, table: pd.DataFrame, root: str | Path) -> None:
        """Write the split as image paths relative to ``root``; atomic (temp file + rename)."""
        names = _relative_paths(table, root)
        doc = {"format": FORMAT, "version": VERSION, **self._provenance(), "sizes": self.sizes()}
        for part in PARTS:
            rows = getattr(self, part)
            if rows.size and (rows.min() < 0 or rows.max() >= len(table)):
                raise ValueError(f"split part {part!r} has rows outside a table of {len(table)}")
            doc[part] = [names[r] for r in rows]
        atomic_write_text(path, json.dumps(doc, indent=1) + "\n")

    @classmethod
    def from_json(cls, path: str | Path, table: pd.DataFrame, root: str | Path) -> Split:
        """Read a split file written by :meth:`to_json` against ``table`` (rows matched by path).

        Raises :class:`DataError` naming the file when it is missing, malformed, or lists images
        that are not in ``table`` under ``root`` (a split of another dataset or label file).
        """
        doc = _read_json(Path(path))
        position = {name: i for i, name in enumerate(_relative_paths(table, root))}
        parts = {}
        for part in PARTS:
            names = doc[part]
            unknown = [n for n in names if n not in position]
            if unknown:
                raise DataError(
                    path,
                    f"{len(unknown)} image(s) of split part {part!r} are not in the label table "
                    f"under root {str(root)!r} (first: {unknown[0]!r}); was this split written "
                    f"for another dataset, root or label file?",
                )
            parts[part] = [position[n] for n in names]
        try:
            return cls(
                **parts,
                mode=str(doc.get("mode", "custom")),
                seed=int(doc.get("seed", 0)),
                fraction=float(doc.get("fraction", 1.0)),
                index=int(doc.get("index", 0)),
                dataset=str(doc.get("dataset", "")),
            )
        except (TypeError, ValueError) as err:
            raise DataError(path, f"invalid split: {err}") from None


def make_split(
    table: pd.DataFrame,
    mode: str = "honest",
    seed: int = 0,
    index: int = 0,
    fraction: float = 1.0,
    ratios=None,
    by_group: bool = True,
    dataset: str | None = None,
) -> Split:
    """Split ``table`` into content-disjoint train / val / test parts (see the module docstring).

    ``ratios`` is ``(train, test)`` or ``(train, val, test)``, normalised to sum to 1 (in
    ``official`` mode only its train : val proportion is used). Part sizes are as close to the
    ratios as whole groups allow, every part with a positive ratio gets at least one group, and
    the split does not depend on the table's row order. ``fraction`` keeps a seeded subset of the
    training part's groups (nested: a smaller fraction keeps a subset of a larger one); val and
    test are untouched. ``by_group=False`` treats every image as its own group. ``dataset``
    defaults to ``table.attrs["dataset"]`` when set.
    """
    if mode not in MODES:
        raise ValueError(f"unknown split mode {mode!r}; allowed: {', '.join(MODES)}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got {seed}, {index}")
    if len(table) == 0:
        raise ValueError("cannot split an empty table")
    codes = _group_codes(table, by_group)
    if mode == "official":
        train, val, test = _official_parts(table, codes, seed, index, ratios)
    else:
        train, val, test = _random_parts(codes, _ratios(mode, ratios), seed, index)
    if fraction < 1:
        train = _keep_fraction(train, codes, fraction, seed, index)
    name = dataset if dataset is not None else str(table.attrs.get("dataset", ""))
    return Split(
        train, val, test, mode=mode, seed=seed, fraction=fraction, index=index, dataset=name
    )


def make_splits(table: pd.DataFrame, n: int = 10, seed: int = 0, **kw) -> list[Split]:
    """``n`` splits, ``index`` 0..n-1, each from its own ``(seed, index)`` random stream."""
    if n < 1:
        raise ValueError(f"need at least one split, got n={n}")
    return [make_split(table, seed=seed, index=i, **kw) for i in range(n)]


def _ratios(mode: str, ratios) -> tuple[float, float, float]:
    if ratios is None:
        return DEFAULT_RATIOS[mode]
    values = [float(r) for r in ratios]
    if len(values) == 2:
        values.insert(1, 0.0)
    if len(values) != 3 or min(values) < 0 or not sum(values) > 0:
        raise ValueError(
            f"ratios must be 2 or 3 non-negative numbers (train[, val], test), got {ratios!r}"
        )
    total = sum(values)
    return tuple(v / total for v in values)


def _group_codes(table: pd.DataFrame, by_group: bool) -> np.ndarray:
    """Integer group of each row, numbered in sorted order of the group names (row-order free)."""
    names = table["group" if by_group else "path"].astype(str).to_numpy()
    return np.unique(names, return_inverse=True)[1].astype(np.int64)


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, stream])


def _random_parts(codes, ratios, seed, index):
    """Shuffle the groups; the order is [test | val | train], cut where sizes best match ``ratios``."""
    r_train, r_val, r_test = ratios
    n_groups = int(codes.max()) + 1
    order = _rng(seed, index, _STREAM_PARTS).permutation(n_groups)
    cumulative = np.cumsum(np.bincount(codes, minlength=n_groups)[order])
    need = [r > 0 for r in (r_test, r_val, r_train)]
    if sum(need) > n_groups:
        raise DataError(None, f"cannot split {n_groups} group(s) into {sum(need)} non-empty parts")
    n = len(codes)
    end_test = _cut(cumulative, r_test * n, low=int(need[0]), high=n_groups - need[1] - need[2])
    end_val = _cut(
        cumulative, (r_test + r_val) * n, low=end_test + need[1], high=n_groups - need[2]
    )
    test, val, train = order[:end_test], order[end_test:end_val], order[end_val:]
    return tuple(np.flatnonzero(np.isin(codes, part)) for part in (train, val, test))


def _cut(cumulative: np.ndarray, target: float, low: int, high: int) -> int:
    """How many leading groups, in ``[low, high]``, hold closest to ``target`` rows."""
    counts = np.concatenate([[0], cumulative])
    best = int(np.argmin(np.abs(counts - target)))
    return min(max(best, low), high)


def _official_parts(table, codes, seed, index, ratios):
    if "split" not in table.columns:
        raise DataError(None, "official split requested but the table has no 'split' column")
    labels = table["split"].astype(str).str.strip().str.lower().to_numpy()
    unknown = sorted(set(labels) - set(PARTS))
    if unknown:
        raise DataError(
            None,
            f"official split needs every row's 'split' in {PARTS}; found {unknown} "
            f"(does this dataset have an official split?)",
        )
    train, val, test = (np.flatnonzero(labels == p) for p in PARTS)
    if train.size == 0 or test.size == 0:
        raise DataError(None, "the official split has an empty train or test part")
    if val.size == 0:
        share = OFFICIAL_VAL_SHARE
        if ratios is not None:
            r_train, r_val, _ = _ratios("honest", ratios)
            share = r_val / (r_train + r_val) if r_train + r_val > 0 else 0.0
        if share > 0:
            train, val = _carve_val(train, codes, share, seed, index)
    return train, val, test


def _carve_val(train, codes, share, seed, index):
    groups = np.unique(codes[train])
    if len(groups) < 2:
        raise DataError(None, "the official training part has too few groups to carve out val")
    order = _rng(seed, index, _STREAM_OFFICIAL_VAL).permutation(groups)
    cumulative = np.cumsum(np.bincount(codes[train], minlength=int(codes.max()) + 1)[order])
    end = _cut(cumulative, share * len(train), low=1, high=len(groups) - 1)
    in_val = np.isin(codes[train], order[:end])
    return train[~in_val], train[in_val]


def _keep_fraction(train, codes, fraction, seed, index):
    groups = np.unique(codes[train])
    order = _rng(seed, index, _STREAM_FRACTION).permutation(groups)
    cumulative = np.cumsum(np.bincount(codes[train], minlength=int(codes.max()) + 1)[order])
    end = _cut(cumulative, fraction * len(train), low=1, high=len(groups))
    return train[np.isin(codes[train], order[:end])]


def _relative_paths(table: pd.DataFrame, root: str | Path) -> list[str]:
    """Each row's image path relative to ``root``, in POSIX form."""
    root = Path(os.path.abspath(root))
    names = []
    for p in table["path"].astype(str):
        try:
            names.append(Path(os.path.abspath(p)).relative_to(root).as_posix())
        except ValueError:
            raise DataError(p, f"image is not under the dataset root {str(root)!r}") from None
    return names


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, "split file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(path, f"cannot read split file: {err}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DataError(path, f'not an nriqa split file (expected "format": {FORMAT!r})')
    if doc.get("version") != VERSION:
        raise DataError(path, f"unsupported split file version {doc.get('version')!r}")
    bad = [p for p in PARTS if not _is_name_list(doc.get(p))]
    if bad:
        raise DataError(path, f"split file lacks the list(s) of image paths {bad}")
    return doc


def _is_name_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
