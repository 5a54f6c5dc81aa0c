"""Reading label files into rows: CSV, whitespace-separated text, spreadsheets, MATLAB files, and
the small conversions of their fields."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from nriqa.data.parsing.paths import require_file
from nriqa.data.parsing.problems import BAD_ROW, Problem
from nriqa.errors import ConfigError, LabelError


def column_map(header: Sequence[str], wanted: Sequence[str], source: Path) -> dict[str, int]:
    """Column positions of ``wanted`` names, matched case- and space-insensitively."""
    index = {h.strip().lower(): i for i, h in reversed(list(enumerate(header)))}
    missing = [w for w in wanted if w.strip().lower() not in index]
    if missing:
        shown = [h for h in header if h]
        raise LabelError(source, f"missing column(s) {missing}; the header has {shown}")
    for w in wanted:
        check_unique(header, w, source)
    return {w: index[w.strip().lower()] for w in wanted}


def check_unique(header: Sequence[str], name: str, source: Path) -> None:
    """A column that is read must be named once (a duplicate elsewhere in the header is harmless:
    SPAQ's pyiqa file has two 'Brightness' columns nriqa never reads)."""
    where = [i + 1 for i, h in enumerate(header) if h.strip().lower() == name.strip().lower()]
    if len(where) > 1:
        raise LabelError(source, f"line 1: column {name!r} appears {len(where)} times in the header "
                                 f"(columns {', '.join(map(str, where))}): which one is meant?")


def optional_column(header: Sequence[str], name: str, source: Path) -> int | None:
    lowered = [h.strip().lower() for h in header]
    if name.lower() not in lowered:
        return None
    check_unique(header, name, source)
    return lowered.index(name.lower())


def read_csv_rows(path: Path, found: list[Problem]) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the (line number, fields) of each data row of a CSV file.

    Rows with too few fields, or with non-empty fields beyond the header, become bad-row problems
    in ``found``; blank lines are skipped; trailing unnamed header columns (BIQ2021's ``,,``) are
    dropped.
    """
    require_file(path)
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
    require_file(path)
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
    require_file(path)
    try:
        sheet = pd.read_excel(path, dtype=object, keep_default_na=False)  # "n/a" stays text
    except Exception as err:  # openpyxl raises many kinds for a damaged workbook
        raise LabelError(path, f"cannot read the spreadsheet ({type(err).__name__}: {err})") from None
    header = [str(c) for c in sheet.columns]
    cols = column_map(header, wanted, path)
    values = sheet.to_numpy(dtype=object)
    for i, row in enumerate(values):
        if all(blank(v) for v in row):
            continue
        yield i + 2, {w: row[j] for w, j in cols.items()}  # row 1 is the header


def load_mat(path: Path, *keys: str) -> dict[str, np.ndarray]:
    """Variables of a MATLAB file; the first of each ``a|b`` alternative that is present."""
    import scipy.io  # noqa: PLC0415 - scipy costs start-up; only .mat label files need it

    require_file(path)
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


def blank(value) -> bool:
    return value is None or str(value).strip() == ""


def float_or_nan(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def as_bool(value) -> bool:
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("true", "yes", "1", "higher"):
            return True
        if word in ("false", "no", "0", "lower"):
            return False
        raise ConfigError(f"higher_better must be true or false, got {value!r}")
    return bool(value)
