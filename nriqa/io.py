"""The one atomic file writer: a reader never sees half a file, and a crash never leaves one behind.

:func:`atomic_write` writes a temporary file beside the target, flushes it to disk (``fsync``),
gives it the permissions a plain ``open(path, "w")`` would (``0666`` less the umask for a new file;
an existing file keeps its mode), renames it into place and ``fsync``\\ s the folder, so the rename
survives a power cut. The temporary file is removed on any exception, on Ctrl-C and on SIGTERM
(handled as an exit while the write runs, in the main thread); only SIGKILL can leave one behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import tempfile
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _mode_for(path)
    with _sigterm_as_exit():
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            write(Path(tmp))
            _fsync_file(tmp)
            os.chmod(tmp, mode)
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (``os.umask`` must
    set one to read it, which races with other threads creating files)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)  # overwriting keeps the file's own permissions
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def _fsync_file(name: str) -> None:
    fd = os.open(name, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. not possible on this platform
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def _sigterm_as_exit():
    """While the block runs, SIGTERM (default action: die at once, skipping ``finally``) raises
    ``SystemExit(143)``, so the temporary file is removed before the process ends. A handler set
    by someone else (Lightning, a cluster) is left alone."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _jsonable(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def sha256_file(path: str | Path) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MiB chunks (model files can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(facts) -> str:
    """A short stable key of JSON-able ``facts`` (16 hex digits of their sorted-key SHA-256): the
    same facts give the same key in every process and release."""
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
