"""The dataset table: every dataset nriqa knows, declared once.

:data:`DATASETS` maps a name to a frozen :class:`DatasetSpec` holding what the rest of nriqa needs
to know about the dataset: its kind, label scale and direction, expected size, official split,
DEIQT's training defaults (``patch_num``, ``resize``) and where its label files live in each layout.
Each dataset is one module of :mod:`nriqa.data.datasets` holding its spec and its readers side by
side; to add a dataset, write its module and add it to :data:`_MODULES` below.

:func:`load_labels` reads a dataset's label table from its folder, picking the layout whose label
file is there (official first, then pyiqa's meta-info CSV) unless told which. Its loader options
are checked against the dataset's readers before anything is read (:mod:`nriqa.data.spec`).

Label scales, as documented by each dataset (``label`` maps them to [0, 1], higher = better):

=========  =============================  ===============================================
LIVE       realigned DMOS, lower better   -3..112: the realigned values overshoot 0-100
CSIQ       DMOS 0-1, lower better
TID2013    MOS 0-9, higher better
KADID-10k  "dmos" 1-5, higher better      despite its name
LIVEC      MOS 0-100                      SPAQ, LIVEFB the same
KonIQ-10k  MOS 0-100                      1-5 when a file holds that scale (detected)
BIQ2021    MOS 0-1
=========  =============================  ===============================================
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pandas as pd

from nriqa.data.datasets import (
    biq2021,
    csiq,
    csv,
    embedded,
    kadid10k,
    koniq10k,
    live,
    livec,
    livefb,
    spaq,
    tid2013,
)
from nriqa.data.parsing.problems import Problem
from nriqa.data.spec import DatasetSpec, Layout
from nriqa.errors import ConfigError

# The datasets, in the order `nriqa datasets list` shows them.
_MODULES = (live, csiq, tid2013, kadid10k, livec, koniq10k, spaq, livefb, biq2021, csv, embedded)

DATASETS: Mapping[str, DatasetSpec] = MappingProxyType({m.SPEC.name: m.SPEC for m in _MODULES})


# Names people also use for the same datasets.
ALIASES = MappingProxyType({
    "kadid": "kadid10k", "koniq": "koniq10k", "clive": "livec", "livechallenge": "livec",
    "flive": "livefb", "paq2piq": "livefb", "tid": "tid2013", "biq": "biq2021", "liveiqa": "live",
})


def get_spec(name: str) -> DatasetSpec:
    """The spec of dataset ``name`` (case-insensitive, ``-``/``_`` ignored, common aliases)."""
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    key = ALIASES.get(key, key)
    if key in DATASETS:
        return DATASETS[key]
    close = difflib.get_close_matches(key, [*DATASETS, *ALIASES], n=1, cutoff=0.5)
    hint = f" (did you mean {ALIASES.get(close[0], close[0])!r}?)" if close else ""
    raise ConfigError(f"unknown dataset {name!r}{hint}; known datasets: {', '.join(DATASETS)}")


def list_datasets() -> pd.DataFrame:
    """One row per dataset: name, kind, images, groups, scale, direction, official split."""
    rows = []
    for s in DATASETS.values():
        rows.append({
            "name": s.name,
            "kind": s.kind,
            "images": s.n_images if s.n_images is not None else "-",
            "groups": s.n_groups if s.n_groups is not None else "-",
            "scale": f"{s.scale.low:g}..{s.scale.high:g}" if s.scale else "user",
            "direction": ("higher better" if s.scale.higher_better else "lower better")
            if s.scale else "user",
            "official split": "/".join(s.official_split) or "-",
        })
    return pd.DataFrame(rows)


def pick_layout(
    spec: DatasetSpec, root: Path, layout: str = "auto", label_file=None
) -> tuple[str, Layout, list[Path]]:
    """The layout to read and its label file(s) (:meth:`DatasetSpec.pick_layout`)."""
    return spec.pick_layout(root, layout, label_file)


def check_options(name: str, options: Mapping[str, Any], layout: str | None = None) -> dict:
    """Dataset ``name``'s loader ``options``, validated (:meth:`DatasetSpec.check_options`)."""
    return get_spec(name).check_options(options, layout if layout != "auto" else None)


def read_labels(
    name: str,
    root: str | Path | None = None,
    layout: str = "auto",
    label_file: str | Path | None = None,
    problems: list[Problem] | None = None,
    allow_outside_root: bool = False,
    **options,
) -> tuple[pd.DataFrame, str, list[Path]]:
    """:func:`load_labels` without the size warning, also returning the layout and the files
    read. With a ``problems`` list, row problems are collected there instead of raised. An image
    path outside the dataset root is a bad row unless ``allow_outside_root``."""
    return get_spec(name).read(root, layout, label_file, problems, allow_outside_root, **options)


def load_labels(
    name: str,
    root: str | Path | None = None,
    layout: str = "auto",
    label_file: str | Path | None = None,
    allow_outside_root: bool = False,
    **options,
) -> pd.DataFrame:
    """The label table of dataset ``name`` in folder ``root``; every image must be inside
    ``root`` unless ``allow_outside_root``.

    ``layout``: "official", "pyiqa" (where the dataset has it) or "auto" (the official files if
    they exist, else pyiqa's). ``label_file`` overrides the default location (absolute, under
    ``root`` or relative to the working directory). ``options`` go to the reader (e.g.
    ``images="512x384"`` for KonIQ, ``low=1, high=5`` for a CSV); an option the dataset's reader
    does not take, or a value of the wrong type, is a :class:`~nriqa.errors.ConfigError` that
    names the dataset, the option and the allowed ones. The root of the embedded
    dataset may be None: it is built (or found in the cache). Warns when the number of labelled
    images differs from the dataset's documented size. ``table.attrs`` records the dataset,
    layout, label files and the scale used.
    """
    table, _, files = read_labels(name, root, layout, label_file,
                                  allow_outside_root=allow_outside_root, **options)
    warning = get_spec(name).size_mismatch(len(table))
    if warning:
        warnings.warn(f"{', '.join(map(str, files))}: {warning}", UserWarning, stacklevel=2)
    return table


__all__: Sequence[str] = (
    "DATASETS", "DatasetSpec", "Layout", "check_options", "get_spec", "list_datasets",
    "load_labels", "pick_layout", "read_labels",
)
