"""Finding a dataset's files.

Image names are resolved one path component at a time against cached directory listings, exactly
first and then case-insensitively, so ``ss02 (1014).jpg`` finds ``ss02 (1014).JPG`` and TID2013's
mixed-case names find their files with one listing per folder rather than a glob per file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextvars import ContextVar
from pathlib import Path, PurePosixPath

from nriqa.errors import LabelError

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


def require_file(path: Path, what: str = "label file") -> Path:
    if not path.is_file():
        raise LabelError(path, f"{what} not found")
    return path


def sibling(label_file: Path, root: Path, *names: str) -> Path | None:
    """An auxiliary file next to the label file, or under the root."""
    for folder in (label_file.parent, root):
        for name in names:
            hit = Resolver(folder).resolve(name)
            if hit is not None:
                return hit
    return None


def inside(path: Path, root: Path) -> bool:
    """Whether ``path`` is ``root`` or below it, by name (``..`` already resolved): a symlink inside
    the root counts as inside, wherever it points."""
    return os.path.commonpath([os.path.abspath(path), str(root)]) == str(root)
