"""``nriqa datasets check``: everything wrong with a dataset on disk, in one run.

:func:`check_dataset` reads the labels collecting every problem instead of stopping at the first
(bad rows with their line numbers, names that match no file, entries listed twice), then decodes
each image, and returns a :class:`CheckReport` with counts per kind and a few examples of each.

The command itself (exit code 0 clean, 1 problems found, 2 the check could not run) is
:mod:`nriqa.cli.datasets`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from nriqa.data import registry
from nriqa.data.images import load_image
from nriqa.data.parsing.problems import KINDS, LABEL_FILE, UNREADABLE, Problem
from nriqa.errors import DataError


@dataclass
class CheckReport:
    """The outcome of :func:`check_dataset`."""

    dataset: str
    root: str
    layout: str = ""
    label_files: list[str] = field(default_factory=list)
    n_labelled: int = 0  # rows that made it into the label table
    n_decoded: int | None = None  # images decoded without error; None when not checked
    expected: int | None = None
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    max_examples: int = 5

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        """Problems per kind, in :data:`~nriqa.data.parsing.problems.KINDS` order."""
        tally = Counter(p.kind for p in self.problems)
        return {k: tally[k] for k in (*KINDS, *sorted(set(tally) - set(KINDS))) if tally[k]}

    def examples(self, kind: str) -> list[Problem]:
        return [p for p in self.problems if p.kind == kind][: self.max_examples]

    def summary(self) -> str:
        """A few lines for a person: what was read, then each kind of problem with examples."""
        files = ", ".join(self.label_files) or "no label file"
        lines = [f"{self.dataset} ({self.layout or 'no'} layout) in {self.root}", f"  labels: {files}"]
        expected = f" (expected {self.expected})" if self.expected is not None else ""
        lines.append(f"  labelled images: {self.n_labelled}{expected}")
        if self.n_decoded is not None:
            lines.append(f"  images decoded: {self.n_decoded} of {self.n_labelled}")
        else:
            lines.append("  images not decoded" + (" (--no-images)" if self.n_labelled else ""))
        lines += [f"  note: {n}" for n in self.notes]
        if self.ok:
            lines.append("OK: no problems found")
            return "\n".join(lines)
        lines.append(f"PROBLEMS: {len(self.problems)}")
        for kind, n in self.counts().items():
            lines.append(f"  {kind}: {n}")
            lines += [f"    {p}" for p in self.examples(kind)]
            if n > self.max_examples:
                lines.append(f"    ... and {n - self.max_examples} more")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "root": self.root,
            "layout": self.layout,
            "label_files": self.label_files,
            "ok": self.ok,
            "labelled": self.n_labelled,
            "decoded": self.n_decoded,
            "expected": self.expected,
            "counts": self.counts(),
            "examples": {
                kind: [
                    {"file": p.source, "where": p.where, "problem": p.message}
                    for p in self.examples(kind)
                ]
                for kind in self.counts()
            },
            "notes": self.notes,
        }


def check_dataset(
    name: str,
    root: str | Path | None = None,
    layout: str = "auto",
    verify_images: bool = True,
    *,
    label_file: str | Path | None = None,
    max_examples: int = 5,
    workers: int = 4,
    **options,
) -> CheckReport:
    """Check dataset ``name`` in ``root``: every bad row, missing file, duplicate entry and (with
    ``verify_images``) every image that does not decode, reported together.

    ``layout``, ``label_file`` and ``options`` are as for
    :func:`~nriqa.data.registry.load_labels`. ``workers`` threads decode images. An unknown
    dataset or a bad option raises; anything wrong with the files is reported.
    """
    spec = registry.get_spec(name)
    report = CheckReport(spec.name, str(root) if root is not None else "", expected=spec.n_images,
                         max_examples=max_examples)
    try:
        table, report.layout, files = registry.read_labels(
            spec.name, root, layout, label_file, problems=report.problems, **options
        )
    except DataError as err:  # the labels cannot be read at all
        report.problems.append(Problem(LABEL_FILE, err.path or report.root, "", err.problem))
        return report
    report.root = table.attrs.get("root", report.root)
    report.label_files = [str(f) for f in files]
    report.n_labelled = len(table)
    mismatch = spec.size_mismatch(len(table))
    if mismatch:
        report.notes.append(mismatch)
    if "note" in table.attrs:
        report.notes.append(table.attrs["note"])
    if verify_images:
        bad = decode_all(list(table["path"]), workers)
        report.problems += bad
        report.n_decoded = len(table) - len(bad)
    return report


def decode_all(paths: Sequence[str], workers: int = 4) -> list[Problem]:
    """A problem for each image that does not decode, in the order of ``paths``."""
    def one(path: str) -> Problem | None:
        try:
            load_image(path)
        except DataError as err:
            return Problem(UNREADABLE, path, "", err.problem)
        except Exception as err:  # any decoder failure is the file's problem, not the check's
            return Problem(UNREADABLE, path, "", f"{type(err).__name__}: {err}")
        return None

    with ThreadPoolExecutor(max(1, int(workers))) as pool:
        return [p for p in pool.map(one, paths) if p is not None]
