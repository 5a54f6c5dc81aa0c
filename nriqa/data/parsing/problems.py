"""What can be wrong with a dataset, and how a reader reports it.

Bad rows (wrong field count, non-numeric, NaN or out-of-scale score), names that match no file on
disk and entries listed twice are *problems*. With ``problems=None`` (the default) a reader raises
one :class:`~nriqa.errors.LabelError` naming the label file, the first problem's line and how many
more there are; given a list, it appends every :class:`Problem` to it, drops the offending rows
and carries on (``nriqa datasets check`` works this way). A label file that cannot be read at all
(missing, no header, a required column absent) always raises.
"""

from __future__ import annotations

from dataclasses import dataclass

from nriqa.errors import LabelError

# Problem kinds, in the order a report lists them.
LABEL_FILE = "label file"
BAD_ROW = "bad row"
MISSING_FILE = "missing file"
DUPLICATE = "duplicate"
UNREADABLE = "unreadable image"
KINDS = (LABEL_FILE, BAD_ROW, MISSING_FILE, DUPLICATE, UNREADABLE)


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
