"""Readers of IQA label files: one small function per dataset and layout, each returning a label
table (:func:`nriqa.data.table.make_table`).

Every reader has the signature ``reader(root, label_file, *, scale, problems=None, **options)``:
``root`` is the dataset folder, ``label_file`` the label file (absolute, or relative to ``root``),
``scale`` the dataset's :class:`~nriqa.data.table.Scale` (the registry passes it). Readers only
list directories, never decode images, so loading labels stays fast.

Bad rows (wrong field count, non-numeric, NaN or out-of-scale score), names that match no file on
disk and entries listed twice are *problems*. With ``problems=None`` (the default) a reader raises
one :class:`~nriqa.errors.LabelError` naming the label file, the first problem's line and how many
more there are; given a list, it appends every :class:`Problem` to it, drops the offending rows
and carries on (``nriqa datasets check`` works this way). A label file that cannot be read at all
(missing, no header, a required column absent) always raises.

Image names are resolved one path component at a time against cached directory listings, exactly
first and then case-insensitively, so ``ss02 (1014).jpg`` finds ``ss02 (1014).JPG`` and TID2013's
mixed-case names find their files with one listing per folder rather than a glob per file.

Layouts covered (:mod:`nriqa.data.registry` holds where each label file sits under a root):

* official releases: LIVE R2, CSIQ (``csiq_label.txt``), TID2013, KADID-10k, LIVEC, KonIQ-10k,
  SPAQ, LIVEFB (FLIVE), BIQ2021;
* pyiqa meta-info CSVs for LIVE, CSIQ, TID2013, KADID-10k, LIVEC, KonIQ-10k and SPAQ. pyiqa's
  LIVE file holds the *original* DMOS (``dmos.mat``) while the official reader prefers the
  realigned ``dmos_realigned.mat`` (as DEIQT and HyperIQA do), so LIVE's two layouts agree on
  paths and groups but not on scores;
* a generic CSV for users' own data, and the embedded synthetic dataset's ``labels.csv``.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from nriqa.data.table import COLUMNS, Scale, make_table
from nriqa.errors import ConfigError, LabelError

log = logging.getLogger(__name__)

# Problem kinds, in the order a report lists them.
LABEL_FILE = "label file"
BAD_ROW = "bad row"
MISSING_FILE = "missing file"
DUPLICATE = "duplicate"
UNREADABLE = "unreadable image"
KINDS = (LABEL_FILE, BAD_ROW, MISSING_FILE, DUPLICATE, UNREADABLE)

LIVE_FOLDERS = (("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174))
KONIQ_IMAGE_DIRS = ("1024x768", "512x384")
_SPLIT_WORDS = {
    "training": "train", "train": "train", "validation": "val", "valid": "val", "val": "val",
    "testing": "test", "test": "test", "": "",
}
_PYIQA_SPLITS = {"0": "train", "1": "val", "2": "test"}
_LIVEC_TRAINING = re.compile(r"(?:.*/)?t[1-7]\.bmp", re.IGNORECASE)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: ``kind`` (one of :data:`KINDS`), the file at fault, where in
    it (``"line 12"``, ``"entry 7"``; empty for a whole file) and what is wrong."""

    kind: str
    source: str
    where: str
    message: str

    def __str__(self) -> str:
        where = f" {self.where}:" if self.where else ""
        return f"{self.source}:{where} {self.message}"


@dataclass
class Entry:
    """One labelled image as a label file states it, before its score and path are checked."""

    where: str
    name: str
    score: object
    candidates: tuple[str, ...]  # paths relative to the image root, first that exists wins
    group: str | None = None
    split: str = ""
    extra: dict = field(default_factory=dict)
    source: str | None = None  # the label file, where a dataset has several


# --------------------------------------------------------------------------------------------
# Finding files


# Label-file paths must stay inside the dataset root (a label file could otherwise point nriqa at
# any file on the machine); read_labels(allow_outside_root=True) lifts this for one read.
ALLOW_OUTSIDE_ROOT: ContextVar[bool] = ContextVar("nriqa_allow_outside_root", default=False)


class Resolver:
    """Finds files under ``root``, matching each path component exactly, else case-insensitively.

    Each directory is listed once (``os.scandir``, which also says which entries are folders
    without a stat per file) and cached, so resolving 40,000 names costs a handful of listings.
    """

    def __init__(self, root: str | Path):
        self.root = Path(os.path.abspath(Path(root).expanduser()))
        self._listings: dict[Path, tuple[dict[str, bool], dict[str, list[str]]] | None] = {}

    def _listing(self, folder: Path):
        if folder not in self._listings:
            try:
                with os.scandir(folder) as it:
                    kinds = {e.name: _is_dir(e) for e in it}
            except OSError:
                self._listings[folder] = None
            else:
                lower: dict[str, list[str]] = {}
                for n in kinds:
                    lower.setdefault(n.lower(), []).append(n)
                self._listings[folder] = (kinds, lower)
        return self._listings[folder]

    def _step(self, folder: Path, part: str) -> tuple[Path, bool] | None:
        """The entry ``part`` of ``folder`` and whether it is a folder, or None."""
        listing = self._listing(folder)
        if listing is None:  # unlistable (or absent) folder: fall back to a direct look-up
            path = folder / part
            return (path, path.is_dir()) if path.exists() else None
        kinds, lower = listing
        if part not in kinds:
            matches = lower.get(part.lower(), [])
            if len(matches) != 1:  # absent, or ambiguous (a.jpg and a.JPG both there)
                return None
            part = matches[0]
        return folder / part, kinds[part]

    def resolve(self, name: str, folder_ok: bool = False) -> Path | None:
        """The existing file (or, with ``folder_ok``, folder) ``name`` stands for, or None.

        ``name`` is relative to the root, or absolute; ``\\`` separators are accepted."""
        rel = PurePosixPath(name.strip().replace("\\", "/"))
        path, is_dir = (Path(rel.anchor), True) if rel.is_absolute() else (self.root, True)
        for part in rel.parts[1:] if rel.is_absolute() else rel.parts:
            if part in ("", "."):
                continue
            if part == "..":
                path = path.parent
                continue
            if not is_dir:
                return None
            step = self._step(path, part)
            if step is None:
                return None
            path, is_dir = step
        return path if folder_ok or not is_dir else None

    def first(self, candidates: Sequence[str]) -> Path | None:
        for cand in candidates:
            path = self.resolve(cand)
            if path is not None:
                return path
        return None


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def label_path(root: str | Path | None, label_file: str | Path) -> Path:
    """``label_file`` as an absolute path: as given when absolute, else under ``root``."""
    path = Path(label_file).expanduser()
    if not path.is_absolute() and root is not None:
        path = Path(root).expanduser() / path
    return Path(os.path.abspath(path))


def _require_file(path: Path, what: str = "label file") -> Path:
    if not path.is_file():
        raise LabelError(path, f"{what} not found")
    return path


def _sibling(label_file: Path, root: Path, *names: str) -> Path | None:
    """An auxiliary file next to the label file, or under the root."""
    for folder in (label_file.parent, root):
        for name in names:
            hit = Resolver(folder).resolve(name)
            if hit is not None:
                return hit
    return None


# --------------------------------------------------------------------------------------------
# Reading label files into entries


def _column_map(header: Sequence[str], wanted: Sequence[str], source: Path) -> dict[str, int]:
    """Column positions of ``wanted`` names, matched case- and space-insensitively."""
    index = {h.strip().lower(): i for i, h in reversed(list(enumerate(header)))}
    missing = [w for w in wanted if w.strip().lower() not in index]
    if missing:
        shown = [h for h in header if h]
        raise LabelError(source, f"missing column(s) {missing}; the header has {shown}")
    for w in wanted:
        _check_unique(header, w, source)
    return {w: index[w.strip().lower()] for w in wanted}


def _check_unique(header: Sequence[str], name: str, source: Path) -> None:
    """A column that is read must be named once (a duplicate elsewhere in the header is harmless:
    SPAQ's pyiqa file has two 'Brightness' columns nriqa never reads)."""
    where = [i + 1 for i, h in enumerate(header) if h.strip().lower() == name.strip().lower()]
    if len(where) > 1:
        raise LabelError(source, f"line 1: column {name!r} appears {len(where)} times in the header "
                                 f"(columns {', '.join(map(str, where))}): which one is meant?")


def read_csv_rows(path: Path, found: list[Problem]) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the (line number, fields) of each data row of a CSV file.

    Rows with too few fields, or with non-empty fields beyond the header, become bad-row problems
    in ``found``; blank lines are skipped; trailing unnamed header columns (BIQ2021's ``,,``) are
    dropped.
    """
    _require_file(path)
    rows: list[tuple[int, list[str]]] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            while header and not header[-1]:
                header.pop()
            if not header:
                raise LabelError(path, "empty label file (no header line)")
            n = len(header)
            start = reader.line_num + 1
            for row in reader:
                first, start = start, reader.line_num + 1
                if reader.line_num > first and any("\n" in c or "\r" in c for c in row):
                    found.append(Problem(BAD_ROW, str(path), f"line {first}",
                                         f"a quote opened here is closed only at line "
                                         f"{reader.line_num} (unterminated quote?): lines "
                                         f"{first}-{reader.line_num} are read as one row"))
                    continue
                if not any(c.strip() for c in row):
                    continue
                if len(row) < n or any(c.strip() for c in row[n:]):
                    found.append(Problem(BAD_ROW, str(path), f"line {reader.line_num}",
                                         f"expected {n} fields, found {len(row)}: {row!r}"))
                    continue
                rows.append((reader.line_num, row))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise LabelError(path, f"cannot read the label file ({type(err).__name__}: {err})") from None
    return header, rows


def read_whitespace_rows(path: Path, n_fields: int, found: list[Problem]) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of a whitespace-separated text file with ``n_fields`` per line."""
    _require_file(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise LabelError(path, f"cannot read the label file ({err})") from None
    for number, text in enumerate(lines, start=1):
        fields = text.split()
        if not fields:
            continue
        if len(fields) != n_fields:
            found.append(Problem(BAD_ROW, str(path), f"line {number}",
                                 f"expected {n_fields} fields, found {len(fields)}: {text.strip()!r}"))
            continue
        yield number, fields


def read_excel_rows(path: Path, wanted: Sequence[str]) -> Iterator[tuple[int, dict[str, object]]]:
    """(spreadsheet row number, {column: value}) of the first sheet of an .xlsx file."""
    _require_file(path)
    try:
        sheet = pd.read_excel(path, dtype=object, keep_default_na=False)  # "n/a" stays text
    except Exception as err:  # openpyxl raises many kinds for a damaged workbook
        raise LabelError(path, f"cannot read the spreadsheet ({type(err).__name__}: {err})") from None
    header = [str(c) for c in sheet.columns]
    cols = _column_map(header, wanted, path)
    values = sheet.to_numpy(dtype=object)
    for i, row in enumerate(values):
        if all(_blank(v) for v in row):
            continue
        yield i + 2, {w: row[j] for w, j in cols.items()}  # row 1 is the header


def load_mat(path: Path, *keys: str) -> dict[str, np.ndarray]:
    """Variables of a MATLAB file; the first of each ``a|b`` alternative that is present."""
    import scipy.io

    _require_file(path)
    try:
        mat = scipy.io.loadmat(path)
    except Exception as err:  # scipy raises ValueError, TypeError, MatReadError ...
        raise LabelError(path, f"cannot read the .mat file ({type(err).__name__}: {err})") from None
    out = {}
    for key in keys:
        options = key.split("|")
        hit = next((k for k in options if k in mat), None)
        if hit is None:
            present = sorted(k for k in mat if not k.startswith("__"))
            raise LabelError(path, f"no variable {' or '.join(options)} (it has {present})")
        out[options[0]] = mat[hit]
    return out


def mat_strings(value: np.ndarray) -> list[str]:
    """A MATLAB cell array of strings (any nesting scipy gives it) as a flat list."""

    def one(v) -> str:
        while isinstance(v, np.ndarray):
            v = v.item() if v.size == 1 else "".join(map(str, v.ravel()))
        return str(v).strip()

    return [one(v) for v in np.asarray(value, dtype=object).ravel()]


def _blank(value) -> bool:
    return value is None or str(value).strip() == ""


def _stem(name: str) -> str:
    return PurePosixPath(str(name).strip().replace("\\", "/")).stem


def _split_word(value: str) -> str:
    """training/validation/testing and friends as train/val/test; other part names kept."""
    word = str(value).strip().lower()
    return _SPLIT_WORDS.get(word, word)


# --------------------------------------------------------------------------------------------
# Entries to a table


def parse_score(value) -> tuple[float | None, str]:
    """The score as a float, or None and why not."""
    if _blank(value):
        return None, "score is missing"
    try:
        score = float(str(value).strip())
    except ValueError:
        return None, f"score {str(value).strip()!r} is not a number"
    if not math.isfinite(score):
        return None, f"score is {score}"
    return score, ""


def build_table(
    entries: Sequence[Entry],
    image_root: Path,
    scale: Scale,
    source: Path | Sequence[Path],
    found: list[Problem],
    problems: list[Problem] | None,
    extra_names: Sequence[str] = (),
) -> pd.DataFrame:
    """Check scores, resolve paths and drop duplicates, then make the label table.

    ``found`` already holds the problems met while parsing; the rows they name are not in
    ``entries``. Raises (``problems is None``) or reports (a list) everything found.
    """
    outside_ok = ALLOW_OUTSIDE_ROOT.get()
    sources = [source] if isinstance(source, (str, Path)) else list(source)
    src = str(sources[0]) if len(sources) == 1 else " + ".join(map(str, sources))
    resolver = Resolver(image_root)
    eps = 1e-6 * (scale.high - scale.low)
    kept: list[tuple[Entry, float, Path]] = []
    first_seen: dict[str, str] = {}
    for e in entries:
        origin = e.source or src
        score, why = parse_score(e.score)
        if score is not None and not (scale.low - eps <= score <= scale.high + eps):
            score, why = None, (f"score {score:g} is outside the documented scale "
                                f"[{scale.low:g}, {scale.high:g}]")
        if score is None:
            found.append(Problem(BAD_ROW, origin, e.where, f"{e.name!r}: {why}"))
            continue
        path = resolver.first(e.candidates)
        key = str(path) if path is not None else f"?{e.name.lower()}"
        if key in first_seen:
            found.append(Problem(DUPLICATE, origin, e.where,
                                 f"{e.name!r} is already listed at {first_seen[key]}"))
            continue
        first_seen[key] = e.where
        if path is None:
            found.append(Problem(MISSING_FILE, origin, e.where,
                                 f"image {e.name!r} not found under {resolver.root} (tried "
                                 f"{', '.join(e.candidates)}, ignoring case)"))
            continue
        if not (outside_ok or _inside(path, resolver.root)):
            found.append(Problem(BAD_ROW, origin, e.where,
                                 f"{e.name!r} is outside the dataset root {resolver.root} (set "
                                 "data.allow_outside_root=true to allow such paths)"))
            continue
        kept.append((e, score, path))
    found.sort(key=_file_order)  # parse problems were found first: report in file order
    settle(found, problems)
    if not kept:
        if problems is None:
            raise LabelError(src, "no labelled images")
        return pd.DataFrame({c: [] for c in COLUMNS})
    extras = {k: [e.extra.get(k) for e, _, _ in kept] for k in extra_names}
    return make_table(
        [p for _, _, p in kept],
        [s for _, s, _ in kept],
        scale,
        groups=[e.group if e.group is not None else str(p) for e, _, p in kept],
        splits=[e.split for e, _, _ in kept],
        source=src,
        **extras,
    )


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` is ``root`` or below it, by name (``..`` already resolved): a symlink inside
    the root counts as inside, wherever it points."""
    return os.path.commonpath([os.path.abspath(path), str(root)]) == str(root)


def _file_order(problem: Problem) -> tuple[str, int]:
    number = re.search(r"\d+", problem.where)
    return problem.source, int(number.group()) if number else 0


def settle(found: list[Problem], problems: list[Problem] | None) -> None:
    """Hand the problems found to the caller's list, or raise on the first one."""
    if problems is not None:
        problems.extend(found)
        found.clear()
        return
    if found:
        first = found[0]
        more = f" ({len(found) - 1} more problem(s); `nriqa datasets check` lists all)" if len(found) > 1 else ""
        where = f"{first.where}: " if first.where else ""
        raise LabelError(first.source, f"{where}{first.message}{more}")


# --------------------------------------------------------------------------------------------
# Naming rules shared by a dataset's layouts (so both give the same paths and groups)


def _csiq_candidates(name: str) -> tuple[str, ...]:
    # 1600.AWGN.1.png lives in dst_imgs/awgn/ in the release; pyiqa and HyperIQA flatten it.
    parts = name.split(".")
    typed = (f"dst_imgs/{parts[1]}/{name}",) if len(parts) >= 3 else ()
    return (f"dst_imgs/{name}", *typed, f"dst_imgs_all/{name}")


def _csiq_group(name: str) -> str:
    return name.split(".")[0]


def _csiq_type(name: str) -> str:
    parts = name.split(".")
    return parts[1].lower() if len(parts) >= 3 else ""


def _tid_group(name: str) -> str:
    # i01_01_1.bmp / I01_01_1.bmp / I01.BMP / i25.bmp: the group is the reference number.
    return _stem(name).split("_")[0].upper()


def _indexed_type(name: str) -> str:
    # TID2013 i01_17_3.bmp and KADID I01_17_03.png: the second field numbers the distortion.
    parts = _stem(name).split("_")
    return parts[1] if len(parts) >= 3 else ""


def _kadid_candidates(name: str) -> tuple[str, ...]:
    return (f"images/{name}", f"distorted_images/{name}")


# --------------------------------------------------------------------------------------------
# Official layouts


def read_live(root, label_file, *, scale: Scale, problems: list[Problem] | None = None) -> pd.DataFrame:
    """LIVE Release 2: ``dmos_realigned.mat`` (``dmos_new``, ``orgs``) or ``dmos.mat`` (``dmos``,
    ``orgs``), and ``refnames_all.mat``, 982 entries over jp2k/jpeg/wn/gblur/fastfading ``imgN.bmp``.

    Entries with ``orgs == 1`` are the reference copies and are dropped (779 remain). The group is
    the reference image.
    """
    root = Path(root)
    mat_file = label_path(root, label_file)
    mat = load_mat(mat_file, "dmos_new|dmos", "orgs")
    names_file = _sibling(mat_file, root, "refnames_all.mat")
    if names_file is None:
        raise LabelError(mat_file.parent / "refnames_all.mat", "LIVE reference names file not found")
    refs = mat_strings(load_mat(names_file, "refnames_all")["refnames_all"])
    dmos = np.asarray(mat["dmos_new"], dtype=object).ravel()
    orgs = np.asarray(mat["orgs"]).ravel()
    slots = [(folder, i) for folder, n in LIVE_FOLDERS for i in range(1, n + 1)]
    if not (len(dmos) == len(orgs) == len(refs) == len(slots)):
        raise LabelError(mat_file, f"expected {len(slots)} entries in the DMOS, orgs and reference "
                                   f"names, found {len(dmos)}, {len(orgs)} and {len(refs)}")
    entries = [
        Entry(f"entry {k + 1}", f"{folder}/img{i}.bmp", dmos[k], (f"{folder}/img{i}.bmp",),
              group=_stem(refs[k]), extra={"dist_type": folder})
        for k, (folder, i) in enumerate(slots)
        if not orgs[k]
    ]
    return build_table(entries, root, scale, mat_file, [], problems, ("dist_type",))


def read_csiq(root, label_file, *, scale: Scale, problems: list[Problem] | None = None) -> pd.DataFrame:
    """CSIQ ``csiq_label.txt`` (``<dist_name> <dmos>``, HyperIQA's file); images in
    ``dst_imgs/<type>/<ref>.<TYPE>.<lvl>.png`` (the type folder is the lower-cased TYPE, matched
    case-insensitively), or flat in ``dst_imgs/`` or ``dst_imgs_all/``. Group: the reference."""
    root = Path(root)
    path = label_path(root, label_file)
    found: list[Problem] = []
    entries = [
        Entry(f"line {line}", name, dmos, _csiq_candidates(name), group=_csiq_group(name),
              extra={"dist_type": _csiq_type(name)})
        for line, (name, dmos) in read_whitespace_rows(path, 2, found)
    ]
    return build_table(entries, root, scale, path, found, problems, ("dist_type",))


def read_tid2013(root, label_file, *, scale: Scale, problems: list[Problem] | None = None) -> pd.DataFrame:
    """TID2013 ``mos_with_names.txt`` (``<mos> <name>``); images in ``distorted_images/``, names
    matched case-insensitively; the group is the reference number ``I01``..``I25``."""
    root = Path(root)
    path = label_path(root, label_file)
    found: list[Problem] = []
    entries = [
        Entry(f"line {line}", name, mos, (f"distorted_images/{name}",), group=_tid_group(name),
              extra={"dist_type": _indexed_type(name)})
        for line, (mos, name) in read_whitespace_rows(path, 2, found)
    ]
    return build_table(entries, root, scale, path, found, problems, ("dist_type",))


def read_kadid10k(root, label_file, *, scale: Scale, problems: list[Problem] | None = None) -> pd.DataFrame:
    """KADID-10k ``dmos.csv`` (``dist_img,ref_img,dmos,var``; the "dmos" runs 1-5, higher is
    better); images in ``images/`` (or DEIQT's ``distorted_images/``). Group: the reference."""
    root = Path(root)
    path = label_path(root, label_file)
    found: list[Problem] = []
    header, rows = read_csv_rows(path, found)
    cols = _column_map(header, ("dist_img", "ref_img", "dmos"), path)
    var = _optional_column(header, "var", path)
    entries = [
        Entry(f"line {line}", row[cols["dist_img"]].strip(), row[cols["dmos"]],
              _kadid_candidates(row[cols["dist_img"]].strip()), group=_stem(row[cols["ref_img"]]),
              extra={"dist_type": _indexed_type(row[cols["dist_img"]]),
                     "var": _float_or_nan(row[var]) if var is not None else math.nan})
        for line, row in rows
    ]
    return build_table(entries, root, scale, path, found, problems, ("dist_type", "var"))


def read_livec(root, label_file, *, scale: Scale, problems: list[Problem] | None = None) -> pd.DataFrame:
    """LIVE Challenge ``Data/AllMOS_release.mat`` with ``AllImages_release.mat`` (and the optional
    ``AllStdDev_release.mat``) beside it; 1169 entries of which the 7 training images ``t1..t7``
    are dropped (1162 remain); images in ``Images/``."""
    root = Path(root)
    given = label_path(root, label_file)
    folder = given.parent
    mos_file = _require_file(Resolver(folder).resolve("AllMOS_release.mat") or folder / "AllMOS_release.mat")
    names_file = _require_file(Resolver(folder).resolve("AllImages_release.mat")
                               or folder / "AllImages_release.mat", "LIVEC image names file")
    mos = np.asarray(load_mat(mos_file, "AllMOS_release")["AllMOS_release"], dtype=object).ravel()
    names = mat_strings(load_mat(names_file, "AllImages_release")["AllImages_release"])
    std_file = Resolver(folder).resolve("AllStdDev_release.mat")
    std = (np.asarray(load_mat(std_file, "AllStdDev_release")["AllStdDev_release"], float).ravel()
           if std_file is not None else np.full(len(names), np.nan))
    if not (len(mos) == len(names) == len(std)):
        raise LabelError(mos_file, f"{len(mos)} scores but {len(names)} image names"
                                   f"{'' if std_file is None else f' and {len(std)} deviations'}")
    entries = [
        Entry(f"entry {k + 1}", name, mos[k], (f"Images/{name}",), extra={"std": float(std[k])})
        for k, name in enumerate(names)
        if not _LIVEC_TRAINING.fullmatch(name)
    ]
    return build_table(entries, root, scale, mos_file, [], problems, ("std",))


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
    cols = _column_map(header, ("image_name", column), path)
    set_col = _optional_column(header, "set", path)
    sd_col = _optional_column(header, "SD", path)
    folder = koniq_image_dir(root, images)
    entries = [
        Entry(f"line {line}", row[cols["image_name"]].strip(), row[cols[column]],
              (f"{folder}/{row[cols['image_name']].strip()}",),
              split=_split_word(row[set_col]) if set_col is not None else "",
              extra={"std": _float_or_nan(row[sd_col]) if sd_col is not None else math.nan})
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
    sets_file = _sibling(label_file, root, "koniq10k_distributions_sets.csv")
    if sets_file is None or sets_file == label_file:
        return
    ignored: list[Problem] = []
    header, rows = read_csv_rows(sets_file, ignored)
    cols = _column_map(header, ("image_name", "set"), sets_file)
    split = {row[cols["image_name"]].strip(): _split_word(row[cols["set"]]) for _, row in rows}
    for e in entries:
        e.split = split.get(e.name, "")


def read_spaq(
    root, label_file, *, scale: Scale, problems: list[Problem] | None = None, images: str = "TestImage"
) -> pd.DataFrame:
    """SPAQ ``Annotations/MOS and Image attribute scores.xlsx`` (``Image name``, ``MOS`` 0-100);
    images in ``TestImage/`` (``images`` picks another folder, e.g. a pre-resized copy)."""
    root = Path(root)
    path = label_path(root, label_file)
    entries = [
        Entry(f"row {number}", str(row["Image name"]).strip(), row["MOS"],
              (f"{images}/{str(row['Image name']).strip()}",))
        for number, row in read_excel_rows(path, ("Image name", "MOS"))
    ]
    return build_table(entries, root, scale, path, [], problems)


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
    cols = _column_map(header, ("name", "mos"), path)
    test = _livefb_test_names(path, root)
    entries = []
    for line, row in rows:
        name = row[cols["name"]].strip()
        split = "" if test is None else ("test" if name in test else "train")
        entries.append(Entry(f"line {line}", name, row[cols["mos"]], (f"{images}/{name}", name),
                             split=split))
    return build_table(entries, root, scale, path, found, problems)


def _livefb_test_names(label_file: Path, root: Path) -> set[str] | None:
    test_file = _sibling(label_file, root, "labels640.csv", "database/labels640.csv")
    if test_file is None:
        log.warning("%s: labels640.csv not found, so LIVEFB has no official test split", label_file)
        return None
    ignored: list[Problem] = []
    header, rows = read_csv_rows(test_file, ignored)
    col = _column_map(header, ("name_image",), test_file)["name_image"]
    return {row[col].strip() for _, row in rows}


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
        cols = _column_map(header, ("Image Name", "MOS"), path)
        split = _split_from_file_name(path)
        for line, row in rows:
            name = row[cols["Image Name"]].strip()
            entries.append(Entry(f"line {line}", name, row[cols["MOS"]], (f"{images}/{name}", name),
                                 split=split, source=str(path)))
    return build_table(entries, root, scale, paths, found, problems)


def _split_from_file_name(path: Path) -> str:
    name = path.name.lower()
    return "train" if name.startswith("train") else "test" if name.startswith("test") else ""


# --------------------------------------------------------------------------------------------
# pyiqa meta-info layouts


def _read_pyiqa_fr(
    root,
    label_file,
    scale: Scale,
    problems: list[Problem] | None,
    candidates: Callable[[str], tuple[str, ...]],
    group_of: Callable[[str, str], str],
    type_of: Callable[[str], str],
) -> pd.DataFrame:
    """pyiqa's full-reference meta CSV: ``ref_name,dist_name,<score>[,std]``, read by position as
    pyiqa does (the score column is called ``mos`` or ``dmos``)."""
    root = Path(root)
    path = label_path(root, label_file)
    found: list[Problem] = []
    header, rows = read_csv_rows(path, found)
    if len(header) < 3:
        raise LabelError(path, f"expected ref_name,dist_name,score columns; the header has {header}")
    std = _optional_column(header, "std", path)
    entries = [
        Entry(f"line {line}", row[1].strip(), row[2], candidates(row[1].strip()),
              group=group_of(row[0].strip(), row[1].strip()),
              extra={"dist_type": type_of(row[1].strip()),
                     "std": _float_or_nan(row[std]) if std is not None else math.nan})
        for line, row in rows
    ]
    return build_table(entries, root, scale, path, found, problems, ("dist_type", "std"))


def _read_pyiqa_nr(
    root,
    label_file,
    scale: Scale,
    problems: list[Problem] | None,
    image_dir: str,
    drop: Callable[[str], bool] = lambda name: False,
) -> pd.DataFrame:
    """pyiqa's no-reference meta CSV: ``img_name,mos[,std][,split...]``, read by position. A
    ``split`` column (0/1/2) or ``official_split`` column (train/val/test) gives the split."""
    root = Path(root)
    path = label_path(root, label_file)
    found: list[Problem] = []
    header, rows = read_csv_rows(path, found)
    if len(header) < 2:
        raise LabelError(path, f"expected img_name,mos columns; the header has {header}")
    std = _optional_column(header, "std", path)
    official = _optional_column(header, "official_split", path)
    numbered = _optional_column(header, "split", path)
    entries = []
    for line, row in rows:
        name = row[0].strip()
        if drop(name):
            continue
        if official is not None:
            split = _split_word(row[official])
        elif numbered is not None:
            split = _PYIQA_SPLITS.get(row[numbered].strip().split(".")[0], "")
        else:
            split = ""
        entries.append(Entry(f"line {line}", name, row[1], (f"{image_dir}/{name}",), split=split,
                             extra={"std": _float_or_nan(row[std]) if std is not None else math.nan}))
    return build_table(entries, root, scale, path, found, problems, ("std",))


def read_live_pyiqa(root, label_file, *, scale: Scale, problems=None) -> pd.DataFrame:
    """pyiqa ``meta_info_LIVEIQADataset.csv`` (``refimgs/x.bmp,jp2k/img2.bmp,<dmos>``). Its DMOS are
    the original ``dmos.mat`` values, not the realigned ones of the official reader."""
    return _read_pyiqa_fr(root, label_file, scale, problems, lambda d: (d,),
                          lambda ref, dist: _stem(ref), lambda d: d.split("/")[0])


def read_csiq_pyiqa(root, label_file, *, scale: Scale, problems=None) -> pd.DataFrame:
    """pyiqa ``meta_info_CSIQDataset.csv`` (``1600.png,1600.AWGN.1.png,<dmos>``); images flat in
    ``dst_imgs/`` as pyiqa ships them, or in the release's type folders."""
    return _read_pyiqa_fr(root, label_file, scale, problems, _csiq_candidates,
                          lambda ref, dist: _stem(ref), _csiq_type)


def read_tid2013_pyiqa(root, label_file, *, scale: Scale, problems=None) -> pd.DataFrame:
    """pyiqa ``meta_info_TID2013Dataset.csv`` (``I01.BMP,i01_01_2.bmp,<mos>,<std>``)."""
    return _read_pyiqa_fr(root, label_file, scale, problems,
                          lambda d: (f"distorted_images/{d}",),
                          lambda ref, dist: _tid_group(ref), _indexed_type)


def read_kadid10k_pyiqa(root, label_file, *, scale: Scale, problems=None) -> pd.DataFrame:
    """pyiqa ``meta_info_KADID10kDataset.csv`` (``I01.png,I01_01_01.png,<dmos>,<std>``)."""
    return _read_pyiqa_fr(root, label_file, scale, problems, _kadid_candidates,
                          lambda ref, dist: _stem(ref), _indexed_type)


def read_livec_pyiqa(root, label_file, *, scale: Scale, problems=None) -> pd.DataFrame:
    """pyiqa ``meta_info_LIVEChallengeDataset.csv`` (``img_name,mos,std``); ``t1..t7`` dropped."""
    return _read_pyiqa_nr(root, label_file, scale, problems, "Images",
                          drop=lambda name: bool(_LIVEC_TRAINING.fullmatch(name)))


def read_koniq10k_pyiqa(
    root, label_file, *, scale: Scale, problems=None, images: str = "auto"
) -> pd.DataFrame:
    """pyiqa ``meta_info_KonIQ10kDataset.csv`` (``img_name,mos,std,split,...``; MOS 0-100, split
    0/1/2 = train/val/test); ``images`` as for :func:`read_koniq10k`."""
    root = Path(root)
    return _read_pyiqa_nr(root, label_file, scale, problems, koniq_image_dir(root, images))


def read_spaq_pyiqa(
    root, label_file, *, scale: Scale, problems=None, images: str = "TestImage"
) -> pd.DataFrame:
    """pyiqa ``meta_info_SPAQDataset.csv`` (``Image name,MOS,...``)."""
    return _read_pyiqa_nr(root, label_file, scale, problems, images)


# --------------------------------------------------------------------------------------------
# Users' own data and the embedded dataset


def read_generic_csv(
    root,
    label_file,
    *,
    scale: Scale | None = None,
    problems: list[Problem] | None = None,
    path_column: str = "path",
    score_column: str = "score",
    group_column: str | None = None,
    split_column: str | None = None,
    low: float | None = None,
    high: float | None = None,
    higher_better: bool = True,
    extra_columns: Sequence[str] = (),
) -> pd.DataFrame:
    """A CSV of one's own: an image path column (relative to ``root``, which defaults to the
    label file's folder, or absolute), a score column, optional group and split columns.

    The scale is ``low``..``high`` with ``higher_better`` giving the direction (all three are the
    user's to state: nriqa never guesses a scale from the data); ``scale`` may be given instead.
    Split values training/validation/testing are shortened to train/val/test.
    """
    if low is not None or high is not None:
        if low is None or high is None:
            raise ConfigError("give both low and high for a CSV dataset's scale")
        scale = Scale(float(low), float(high), _as_bool(higher_better))
    if scale is None:
        raise ConfigError("a CSV dataset needs its score scale: give low=..., high=... and "
                          "higher_better=True/False")
    if not scale.high > scale.low:
        raise ConfigError(f"scale high ({scale.high}) must exceed low ({scale.low})")
    path = label_path(root, label_file)
    root = Path(root) if root is not None else path.parent
    found: list[Problem] = []
    header, rows = read_csv_rows(path, found)
    wanted = [c for c in (path_column, score_column, group_column, split_column, *extra_columns) if c]
    cols = _column_map(header, wanted, path)
    entries = []
    for line, row in rows:
        name = row[cols[path_column]].strip()
        split = _split_word(row[cols[split_column]]) if split_column else ""
        entries.append(Entry(
            f"line {line}", name, row[cols[score_column]], (name,),
            group=row[cols[group_column]].strip() if group_column else None, split=split,
            extra={c: row[cols[c]].strip() for c in extra_columns}))
    return build_table(entries, root, scale, path, found, problems, tuple(extra_columns))


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


# --------------------------------------------------------------------------------------------
# Small helpers


def _optional_column(header: Sequence[str], name: str, source: Path) -> int | None:
    lowered = [h.strip().lower() for h in header]
    if name.lower() not in lowered:
        return None
    _check_unique(header, name, source)
    return lowered.index(name.lower())


def _float_or_nan(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _as_bool(value) -> bool:
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("true", "yes", "1", "higher"):
            return True
        if word in ("false", "no", "0", "lower"):
            return False
        raise ConfigError(f"higher_better must be true or false, got {value!r}")
    return bool(value)
