"""The dataset table: every dataset nriqa knows, declared once.

:data:`DATASETS` maps a name to a frozen :class:`DatasetSpec` holding what the rest of nriqa needs
to know about the dataset: its kind, label scale and direction, expected size, official split,
DEIQT's training defaults (``patch_num``, ``resize``) and where its label files live in each layout
(the readers are in :mod:`nriqa.data.readers`).

:func:`load_labels` reads a dataset's label table from its folder, picking the layout whose label
file is there (official first, then pyiqa's meta-info CSV) unless told which.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import pandas as pd

from nriqa.data import readers
from nriqa.data.readers import ALLOW_OUTSIDE_ROOT, Problem, label_path
from nriqa.data.table import Scale
from nriqa.errors import ConfigError, DataError, LabelError

Reader = Callable[..., pd.DataFrame]


@dataclass(frozen=True)
class Layout:
    """One way a dataset's labels can sit on disk: a reader and where its label file is.

    ``files`` are candidate locations relative to the dataset root; the first that exists is read.
    With ``combine`` every existing one is read together (BIQ2021's train and test files).
    """

    reader: Reader
    files: tuple[str, ...]
    combine: bool = False

    def find(self, root: Path) -> list[Path]:
        resolver = readers.Resolver(root)
        hits = [h for h in (resolver.resolve(f) for f in self.files) if h is not None]
        return hits if self.combine else hits[:1]


@dataclass(frozen=True)
class DatasetSpec:
    """What nriqa knows about one dataset."""

    name: str
    title: str
    kind: str  # "synthetic" (distorted references) or "authentic"
    scale: Scale | None  # None: the user states it (generic CSV)
    n_images: int | None  # labelled images after the usual drops; None when unknown
    n_groups: int | None  # reference images of a synthetic set
    official_split: tuple[str, ...]  # the parts of the official split, () when there is none
    layouts: Mapping[str, Layout]
    citation: str
    patch_num: int = 25  # DEIQT's PATCH_NUM: crops per image per epoch
    resize: str = "none"  # see nriqa.data.crops.resize_image; "deiqt" is DEIQT's (h, w) quirk
    notes: str = ""

    @property
    def has_official_split(self) -> bool:
        return bool(self.official_split)


def _pyiqa(stem: str) -> tuple[str, ...]:
    """Where pyiqa's meta CSV usually sits: in the root, or pyiqa's ``meta_info/`` folder."""
    name = f"meta_info_{stem}Dataset.csv"
    return (name, f"meta_info/{name}", f"../meta_info/{name}")


def _spec(**kw) -> DatasetSpec:
    kw["layouts"] = MappingProxyType(kw["layouts"])
    return DatasetSpec(**kw)


_SPECS = [
    _spec(
        name="live", title="LIVE Image Quality Assessment Database, Release 2", kind="synthetic",
        scale=Scale(-3.0, 112.0, higher_better=False), n_images=779, n_groups=29,
        official_split=(),
        layouts={
            "official": Layout(readers.read_live, ("dmos_realigned.mat", "dmos.mat")),
            "pyiqa": Layout(readers.read_live_pyiqa, _pyiqa("LIVEIQA")),
        },
        citation="H. R. Sheikh, M. F. Sabir, A. C. Bovik, A statistical evaluation of recent full "
                 "reference image quality assessment algorithms, IEEE TIP 15(11), 2006.",
        notes="official reads the realigned DMOS (dmos_realigned.mat, as DEIQT); pyiqa's CSV holds "
              "the original dmos.mat values, so scores differ between the layouts",
    ),
    _spec(
        name="csiq", title="CSIQ (Categorical Subjective Image Quality)", kind="synthetic",
        scale=Scale(0.0, 1.0, higher_better=False), n_images=866, n_groups=30, official_split=(),
        layouts={
            "official": Layout(readers.read_csiq, ("csiq_label.txt",)),
            "pyiqa": Layout(readers.read_csiq_pyiqa, _pyiqa("CSIQ")),
        },
        citation="E. C. Larson, D. M. Chandler, Most apparent distortion: full-reference image "
                 "quality assessment and the role of strategy, J. Electron. Imaging 19(1), 2010.",
    ),
    _spec(
        name="tid2013", title="Tampere Image Database 2013", kind="synthetic",
        scale=Scale(0.0, 9.0), n_images=3000, n_groups=25, official_split=(),
        layouts={
            "official": Layout(readers.read_tid2013, ("mos_with_names.txt",)),
            "pyiqa": Layout(readers.read_tid2013_pyiqa, _pyiqa("TID2013")),
        },
        citation="N. Ponomarenko et al., Image database TID2013: peculiarities, results and "
                 "perspectives, Signal Process. Image Commun. 30, 2015.",
    ),
    _spec(
        name="kadid10k", title="KADID-10k (Konstanz Artificially Distorted Image Database)",
        kind="synthetic", scale=Scale(1.0, 5.0), n_images=10125, n_groups=81, official_split=(),
        layouts={
            "official": Layout(readers.read_kadid10k, ("dmos.csv",)),
            "pyiqa": Layout(readers.read_kadid10k_pyiqa, _pyiqa("KADID10k")),
        },
        citation="H. Lin, V. Hosu, D. Saupe, KADID-10k: a large-scale artificially distorted IQA "
                 "database, QoMEX 2019.",
    ),
    _spec(
        name="livec", title="LIVE In the Wild Image Quality Challenge (CLIVE)", kind="authentic",
        scale=Scale(0.0, 100.0), n_images=1162, n_groups=None, official_split=(), patch_num=10,
        layouts={
            "official": Layout(readers.read_livec, ("Data/AllMOS_release.mat",)),
            "pyiqa": Layout(readers.read_livec_pyiqa, _pyiqa("LIVEChallenge")),
        },
        citation="D. Ghadiyaram, A. C. Bovik, Massive online crowdsourced study of subjective and "
                 "objective picture quality, IEEE TIP 25(1), 2016.",
    ),
    _spec(
        name="koniq10k", title="KonIQ-10k", kind="authentic", scale=Scale(0.0, 100.0),
        n_images=10073, n_groups=None, official_split=("train", "val", "test"),
        resize="aspect:384x512",
        layouts={
            "official": Layout(readers.read_koniq10k, ("koniq10k_distributions_sets.csv",
                                                       "koniq10k_scores_and_distributions.csv")),
            "pyiqa": Layout(readers.read_koniq10k_pyiqa, _pyiqa("KonIQ10k")),
        },
        citation="V. Hosu, H. Lin, T. Sziranyi, D. Saupe, KonIQ-10k: an ecologically valid "
                 "database for deep learning of blind image quality assessment, IEEE TIP 29, 2020.",
        notes="images in 1024x768/ or 512x384/ (images=... picks); a 1-5 MOS is detected and used",
    ),
    _spec(
        name="spaq", title="SPAQ (Smartphone Photography Attribute and Quality)", kind="authentic",
        scale=Scale(0.0, 100.0), n_images=11125, n_groups=None, official_split=(),
        resize="aspect:384x512",
        layouts={
            "official": Layout(readers.read_spaq, ("Annotations/MOS and Image attribute scores.xlsx",)),
            "pyiqa": Layout(readers.read_spaq_pyiqa, _pyiqa("SPAQ")),
        },
        citation="Y. Fang, H. Zhu, Y. Zeng, K. Ma, Z. Wang, Perceptual quality assessment of "
                 "smartphone photography, CVPR 2020.",
    ),
    _spec(
        name="livefb", title="LIVE-FB / FLIVE (PaQ-2-PiQ) images", kind="authentic",
        scale=Scale(0.0, 100.0), n_images=39810, n_groups=None, official_split=("train", "test"),
        layouts={
            "official": Layout(readers.read_livefb, ("labels_image.csv", "database/labels_image.csv")),
        },
        citation="Z. Ying, H. Niu, P. Gupta, D. Mahajan, D. Ghadiyaram, A. Bovik, From patches to "
                 "pictures (PaQ-2-PiQ): mapping the perceptual space of picture quality, CVPR 2020.",
        notes="test split = the images of labels640.csv",
    ),
    _spec(
        name="biq2021", title="BIQ2021", kind="authentic", scale=Scale(0.0, 1.0), n_images=12000,
        n_groups=None, official_split=("train", "test"),
        layouts={
            "official": Layout(readers.read_biq2021, ("Train (Images and MOS).csv",
                                                      "Test (Images and MOS).csv"), combine=True),
        },
        citation="N. Ahmed, S. Asif, BIQ2021: a large-scale blind image quality assessment "
                 "database, J. Electron. Imaging 31(5) 053010, 2022.",
        notes="a subset file (e.g. train_subset.csv) can be passed as label_file",
    ),
    _spec(
        name="csv", title="Your own images: a CSV of paths and scores", kind="authentic",
        scale=None, n_images=None, n_groups=None, official_split=(),
        layouts={"csv": Layout(readers.read_generic_csv, ("labels.csv",))},
        citation="-",
        notes="options: path_column, score_column, group_column, split_column, low, high, "
              "higher_better",
    ),
    _spec(
        name="embedded", title="nriqa's embedded synthetic dataset (built on first use)",
        kind="synthetic", scale=Scale(0.0, 1.0), n_images=None, n_groups=None, official_split=(),
        layouts={"embedded": Layout(readers.read_embedded, ("labels.csv",))},
        citation="nriqa: KADID-10k's distortions of photos bundled in installed packages, labelled "
                 "with KADID-10k's mean human score per distortion type and level.",
    ),
]

DATASETS: Mapping[str, DatasetSpec] = MappingProxyType({s.name: s for s in _SPECS})


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


def dataset_root(spec: DatasetSpec, root: str | Path | None, label_file=None) -> Path:
    """The dataset folder: as given; for the embedded set built (or found cached) when None; for
    a CSV the label file's folder when None."""
    if root is None:
        if spec.name == "embedded":
            from nriqa.data.synthetic import build_embedded

            return Path(build_embedded())
        if label_file is not None:
            return Path(label_path(None, label_file)).parent
        raise ConfigError(f"dataset {spec.name!r} needs its root folder")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(path, f"dataset folder for {spec.name!r} does not exist")
    return path


def pick_layout(
    spec: DatasetSpec, root: Path, layout: str = "auto", label_file=None
) -> tuple[str, Layout, list[Path]]:
    """The layout to read and its label file(s).

    ``auto``: with a ``label_file``, the layout whose default file name it bears (else the first
    layout); without, the first layout (official before pyiqa) whose label file exists.
    """
    if layout != "auto" and layout not in spec.layouts:
        raise ConfigError(f"dataset {spec.name!r} has no layout {layout!r}; "
                          f"it has {', '.join(spec.layouts)}")
    if label_file is not None:
        path = _find_label_file(root, label_file)
        name = layout if layout != "auto" else _layout_by_file_name(spec, path)
        return name, spec.layouts[name], [path]
    names = list(spec.layouts) if layout == "auto" else [layout]
    for name in names:
        files = spec.layouts[name].find(root)
        if files:
            return name, spec.layouts[name], files
    looked = "; ".join(f"{n}: {', '.join(spec.layouts[n].files)}" for n in names)
    raise LabelError(root, f"no label file for {spec.name!r} found under this folder "
                           f"(looked for {looked}); pass label_file=...")


def _find_label_file(root: Path, label_file) -> Path:
    under_root = readers.Resolver(root).resolve(str(label_file))
    if under_root is not None:
        return under_root
    path = label_path(None, label_file)  # relative to the working directory
    if path.is_file():
        return path
    raise LabelError(label_file, f"label file not found (looked under {root} and the working directory)")


def _layout_by_file_name(spec: DatasetSpec, path: Path) -> str:
    for name, lay in spec.layouts.items():
        if path.name.lower() in {Path(f).name.lower() for f in lay.files}:
            return name
    return next(iter(spec.layouts))


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
    spec = get_spec(name)
    root = dataset_root(spec, root, label_file)
    layout_name, lay, files = pick_layout(spec, root, layout, label_file)
    source = files if lay.combine else files[0]
    token = ALLOW_OUTSIDE_ROOT.set(bool(allow_outside_root))
    try:
        table = lay.reader(root, source, scale=spec.scale, problems=problems, **options)
    finally:
        ALLOW_OUTSIDE_ROOT.reset(token)
    table.attrs.update(dataset=spec.name, layout=layout_name, root=str(root),
                       label_files=[str(f) for f in files])
    table.attrs.setdefault("scale", spec.scale)
    return table, layout_name, files


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
    ``images="512x384"`` for KonIQ, ``low=1, high=5`` for a CSV). The root of the embedded
    dataset may be None: it is built (or found in the cache). Warns when the number of labelled
    images differs from the dataset's documented size. ``table.attrs`` records the dataset,
    layout, label files and the scale used.
    """
    table, _, files = read_labels(name, root, layout, label_file,
                                  allow_outside_root=allow_outside_root, **options)
    warning = size_mismatch(get_spec(name), len(table))
    if warning:
        warnings.warn(f"{', '.join(map(str, files))}: {warning}", UserWarning, stacklevel=2)
    return table


def size_mismatch(spec: DatasetSpec, n: int) -> str:
    """A sentence when ``n`` labelled images differ from the documented count, else ""."""
    if spec.n_images is None or n == spec.n_images:
        return ""
    return (f"{spec.name} should have {spec.n_images} labelled images, these labels give {n} "
            "(a subset, or files from another release?)")


__all__: Sequence[str] = (
    "DATASETS", "DatasetSpec", "Layout", "get_spec", "list_datasets", "load_labels",
    "pick_layout", "read_labels",
)
