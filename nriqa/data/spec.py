"""What nriqa knows about one dataset (:class:`DatasetSpec`) and how its labels are read.

Each dataset module in :mod:`nriqa.data.datasets` declares one spec beside its readers;
:mod:`nriqa.data.registry` collects them by name.

A reader has the signature ``reader(root, label_file, *, scale, problems=None, **options)``:
``root`` is the dataset folder, ``label_file`` the label file (absolute, or relative to ``root``),
``scale`` the dataset's :class:`~nriqa.data.table.Scale`. Its other keyword-only parameters are the
layout's *loader options* (``data.options`` in a config, ``-o key=value`` on the command line),
typed by their annotations: an option the reader does not take, or a value of the wrong type, is a
:class:`~nriqa.errors.ConfigError` naming the dataset, the option and the allowed ones, raised
before any file is read. Readers only list directories, never decode images, so loading labels
stays fast.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from nriqa.data.parsing.paths import ALLOW_OUTSIDE_ROOT, Resolver, label_path
from nriqa.data.parsing.problems import Problem
from nriqa.data.table import Scale
from nriqa.errors import ConfigError, DataError, LabelError

Reader = Callable[..., pd.DataFrame]

# Keyword-only reader parameters that the registry passes itself: not loader options.
_NOT_OPTIONS = ("scale", "problems")


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
        resolver = Resolver(root)
        hits = [h for h in (resolver.resolve(f) for f in self.files) if h is not None]
        return hits if self.combine else hits[:1]

    @cached_property
    def options(self) -> type[BaseModel]:
        """The reader's loader options as a pydantic model (its keyword-only parameters, typed by
        their annotations, with their defaults)."""
        hints = typing.get_type_hints(self.reader)
        fields = {
            name: (hints.get(name, Any), p.default)
            for name, p in inspect.signature(self.reader).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in _NOT_OPTIONS
        }
        config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
        return create_model(f"{self.reader.__name__}_options", __config__=config, **fields)


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
    resize: str = "none"  # see nriqa.data.resize.resize_image; "deiqt" is DEIQT's (h, w) quirk
    notes: str = ""
    # The dataset folder when none is given (the embedded set builds itself, given the loader
    # options); None: required.
    default_root: Callable[..., Path] | None = field(default=None, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "layouts", MappingProxyType(dict(self.layouts)))

    @property
    def has_official_split(self) -> bool:
        return bool(self.official_split)

    @property
    def option_names(self) -> list[str]:
        """Every loader option of any of the dataset's layouts, in declaration order."""
        names = (n for lay in self.layouts.values() for n in lay.options.model_fields)
        return list(dict.fromkeys(names))

    def check_options(self, options: Mapping[str, Any], layout: str | None = None) -> dict:
        """``options`` validated for ``layout`` (None: for whichever layout takes each one).

        Raises a :class:`~nriqa.errors.ConfigError` naming the dataset and the option for an
        unknown option (with the closest allowed name), an option the layout does not take, or a
        value of the wrong type. Returns the options as the reader will get them.
        """
        allowed = self.option_names
        for key in options:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                known = ", ".join(allowed) if allowed else "none"
                raise ConfigError(f"dataset {self.name!r} has no loader option {key!r}{hint}; "
                                  f"its options: {known}")
        if layout is not None:
            model = self.layouts[layout].options
            for key in options:
                if key not in model.model_fields:
                    takers = [n for n, lay in self.layouts.items() if key in lay.options.model_fields]
                    raise ConfigError(f"dataset {self.name!r}: loader option {key!r} applies to "
                                      f"its {'/'.join(takers)} layout only, not to its {layout} "
                                      "layout")
            return _validate(self.name, model, options)
        checked = {}
        for lay in self.layouts.values():
            mine = {k: v for k, v in options.items() if k in lay.options.model_fields}
            checked.update(_validate(self.name, lay.options, mine))
        return checked

    def root(self, root: str | Path | None, label_file=None, options: Mapping[str, Any] | None = None
             ) -> Path:
        """The dataset folder: as given; when None, the dataset's default (the embedded set is
        built or found cached, for the loader ``options``) or the label file's folder."""
        if root is None:
            if self.default_root is not None:
                return Path(self.default_root(**dict(options or {})))
            if label_file is not None:
                return Path(label_path(None, label_file)).parent
            raise ConfigError(f"dataset {self.name!r} needs its root folder")
        path = Path(root).expanduser()
        if not path.is_dir():
            raise DataError(path, f"dataset folder for {self.name!r} does not exist")
        return path

    def pick_layout(
        self, root: Path, layout: str = "auto", label_file=None
    ) -> tuple[str, Layout, list[Path]]:
        """The layout to read and its label file(s).

        ``auto``: with a ``label_file``, the layout whose default file name it bears (else the
        first layout); without, the first layout (official before pyiqa) whose label file exists.
        """
        if layout != "auto" and layout not in self.layouts:
            raise ConfigError(f"dataset {self.name!r} has no layout {layout!r}; "
                              f"it has {', '.join(self.layouts)}")
        if label_file is not None:
            path = _find_label_file(root, label_file)
            name = layout if layout != "auto" else self._layout_by_file_name(path)
            return name, self.layouts[name], [path]
        names = list(self.layouts) if layout == "auto" else [layout]
        for name in names:
            files = self.layouts[name].find(root)
            if files:
                return name, self.layouts[name], files
        looked = "; ".join(f"{n}: {', '.join(self.layouts[n].files)}" for n in names)
        raise LabelError(root, f"no label file for {self.name!r} found under this folder "
                               f"(looked for {looked}); pass label_file=...")

    def _layout_by_file_name(self, path: Path) -> str:
        for name, lay in self.layouts.items():
            if path.name.lower() in {Path(f).name.lower() for f in lay.files}:
                return name
        return next(iter(self.layouts))

    def read(
        self,
        root: str | Path | None = None,
        layout: str = "auto",
        label_file: str | Path | None = None,
        problems: list[Problem] | None = None,
        allow_outside_root: bool = False,
        **options,
    ) -> tuple[pd.DataFrame, str, list[Path]]:
        """The label table, the layout read and its files (see
        :func:`nriqa.data.registry.read_labels`)."""
        # A misspelt option fails before the disk is searched (or the embedded set is built).
        root = self.root(root, label_file, self.check_options(options))
        layout_name, lay, files = self.pick_layout(root, layout, label_file)
        options = self.check_options(options, layout_name)
        source = files if lay.combine else files[0]
        token = ALLOW_OUTSIDE_ROOT.set(bool(allow_outside_root))
        try:
            table = lay.reader(root, source, scale=self.scale, problems=problems, **options)
        finally:
            ALLOW_OUTSIDE_ROOT.reset(token)
        table.attrs.update(dataset=self.name, layout=layout_name, root=str(root),
                           label_files=[str(f) for f in files])
        table.attrs.setdefault("scale", self.scale)
        return table, layout_name, files

    def size_mismatch(self, n: int) -> str:
        """A sentence when ``n`` labelled images differ from the documented count, else ""."""
        if self.n_images is None or n == self.n_images:
            return ""
        return (f"{self.name} should have {self.n_images} labelled images, these labels give {n} "
                "(a subset, or files from another release?)")


def _validate(dataset: str, model: type[BaseModel], options: Mapping[str, Any]) -> dict:
    try:
        valid = model.model_validate(dict(options))
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"][:1])
        raise ConfigError(f"dataset {dataset!r}: loader option {key}={options.get(key)!r}: "
                          f"{first['msg']}") from None
    return {k: getattr(valid, k) for k in options}


def _find_label_file(root: Path, label_file) -> Path:
    under_root = Resolver(root).resolve(str(label_file))
    if under_root is not None:
        return under_root
    path = label_path(None, label_file)  # relative to the working directory
    if path.is_file():
        return path
    raise LabelError(label_file,
                     f"label file not found (looked under {root} and the working directory)")
