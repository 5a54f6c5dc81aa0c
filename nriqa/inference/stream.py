"""Score files written as the scores are computed, so a folder of any size can be scored, and a
killed run resumed.

* ``.csv`` (quoted by the csv module) and ``.jsonl`` (one JSON object a line) are streamed: each
  batch's rows are one ``write`` call, flushed and fsynced, so a killed run loses at most the
  batch in flight and never leaves half a row behind; ``--resume`` drops a trailing partial line
  (should the disk have filled mid-write), skips the files already listed and appends.
* ``.json`` (one JSON list) cannot be appended to: it is written whole, atomically, at the end.

The output is checked before any work starts (format, folder, permissions, an existing file
without ``--resume`` / ``--overwrite``), so no score is lost to a bad ``-o``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from nriqa.errors import NriqaError
from nriqa.io import atomic_write_text

COLUMNS = ["path", "score", "error", "backend"]
STREAMED = (".csv", ".jsonl")
FORMATS = (*STREAMED, ".json")


def row(result) -> dict:
    """A result as written: score rounded to 6 decimals, None when the file failed."""
    score = None if result.error or math.isnan(result.score) else round(float(result.score), 6)
    return {"path": str(result.path), "score": score, "error": result.error,
            "backend": getattr(result, "backend", "")}


def check_output(path: str | Path, resume: bool = False, overwrite: bool = False,
                 formats: Sequence[str] = FORMATS, option: str = "--output") -> Path:
    """Check that ``path`` can be written, before any work starts; one clear error if not."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in formats:
        raise NriqaError(f"{option} {path}: unknown output format {path.suffix or '(none)'!r}; "
                         f"allowed: {', '.join(formats)}")
    if path.is_dir():
        raise NriqaError(f"{option} {path}: is a folder, not a file")
    parent = path.parent
    for up in (parent, *parent.parents):
        if up.exists():
            if not up.is_dir():
                raise NriqaError(f"{option} {path}: {up} is a file, not a folder")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise NriqaError(f"{option} {path}: cannot write in {parent} ({err.strerror})") from None
    if path.exists():
        if not os.access(path, os.W_OK):
            raise NriqaError(f"{option} {path}: the file is not writable")
        if not (resume or overwrite):
            raise NriqaError(f"{option} {path}: already exists; pass --resume to continue it "
                             f"or --overwrite to replace it")
    return path


def read_done(path: str | Path) -> list[dict]:
    """The rows of an existing score file (for ``--resume``). A trailing partial line, the mark
    of a write cut short, is removed from the file first."""
    path = Path(path)
    if not path.exists():
        return []
    if path.suffix.lower() == ".json":
        try:
            rows = json.loads(path.read_text() or "[]")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise NriqaError(f"{path}: cannot resume: not a JSON list of scores ({err})") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "path" in r for r in rows):
            raise NriqaError(f"{path}: cannot resume: not a JSON list of scores")
        return rows
    _drop_partial_line(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise NriqaError(f"{path}: cannot resume: not a UTF-8 score file") from None
    if path.suffix.lower() == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                item = None
            if not isinstance(item, dict) or "path" not in item:
                raise NriqaError(f"{path}:{n}: cannot resume: not a JSON score row")
            rows.append(item)
        return rows
    if not text:
        return []
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames != COLUMNS:
        raise NriqaError(f"{path}: cannot resume: its columns are {reader.fieldnames}, "
                         f"not {COLUMNS}")
    return list(reader)


def _drop_partial_line(path: Path) -> None:
    with path.open("rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)
            f.flush()
            os.fsync(f.fileno())


class ScoreWriter:
    """Writes score rows to ``path`` (``None``: CSV on stdout), one batch at a time."""

    def __init__(self, path: Path | None, append: bool = False, previous: Iterable[dict] = ()):
        self.path = path
        self.suffix = ".csv" if path is None else path.suffix.lower()
        self.fd: int | None = None
        self.kept: list[dict] = list(previous) if self.suffix == ".json" else []
        if path is None or self.suffix == ".json":
            if path is None:
                self._emit(self._csv([COLUMNS]))
            return
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        self.fd = os.open(path, flags, 0o666)  # the umask decides the permissions
        if self.suffix == ".csv" and os.fstat(self.fd).st_size == 0:
            self._emit(self._csv([COLUMNS]))

    @staticmethod
    def _csv(rows: Iterable[list]) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        return buf.getvalue()

    def _format(self, rows: list[dict]) -> str:
        if self.suffix == ".jsonl":
            return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        return self._csv([["" if r[c] is None else r[c] for c in COLUMNS] for r in rows])

    def _emit(self, text: str) -> None:
        if self.fd is None:
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        data = text.encode("utf-8")
        while data:  # one call in practice; a short write (full disk) is continued
            data = data[os.write(self.fd, data):]
        os.fsync(self.fd)

    def write(self, results: Sequence) -> None:
        rows = [row(r) for r in results]
        if self.suffix == ".json":
            self.kept += rows
        elif rows:
            self._emit(self._format(rows))

    def close(self) -> None:
        if self.suffix == ".json" and self.path is not None:
            atomic_write_text(self.path, json.dumps(self.kept, indent=2) + "\n")
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
