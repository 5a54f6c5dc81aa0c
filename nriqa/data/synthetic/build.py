"""Building and caching the embedded dataset: a deterministic build in a temporary sibling
directory, renamed into place once complete (manifest last), and reused only while its manifest
matches the parameters and the generating code."""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import PIL
import scipy
import skimage
from PIL import Image

from nriqa.data.synthetic.calibration import N_LEVELS
from nriqa.data.synthetic.distortions import (
    COLOUR_ONLY,
    DISTORTIONS,
    KADID_TYPES,
    kadid_label,
    resolve_distortions,
)
from nriqa.data.synthetic.references import (
    DEFAULT_SIZE,
    GRAYSCALE,
    REFERENCES,
    load_reference,
    official_part,
)
from nriqa.errors import ConfigError, DataError
from nriqa.io import sha256_file

FORMAT_VERSION = 3  # 3: the split column, grayscale photos
LABEL_COLUMNS = ("path", "score", "group", "dist_type", "level", "ref_path", "split")


def severities(levels: int = N_LEVELS) -> list[int]:
    """The severities (1..5) a dataset with ``levels`` levels uses: evenly spread over 1..5.

    5 -> [1, 2, 3, 4, 5], 3 -> [1, 3, 5], 2 -> [1, 5], 1 -> [3].
    """
    if not 1 <= int(levels) <= N_LEVELS:
        raise ConfigError(f"levels must be in 1..{N_LEVELS}, got {levels}")
    if int(levels) == 1:
        return [3]
    return sorted({int(round(v)) for v in np.linspace(1, N_LEVELS, int(levels))})


def _resolve_names(names, table: dict, what: str) -> list[str]:
    if names is None:
        return list(table)
    if isinstance(names, str):
        names = [names]
    names = list(dict.fromkeys(str(n) for n in names))
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ConfigError(f"unknown {what} {unknown}; known: {sorted(table)}")
    if not names:
        raise ConfigError(f"no {what} selected")
    return names


def applies(distortion: str, reference: str) -> bool:
    """False for a colour-only distortion of a grayscale photo (it would not change it)."""
    return not (reference in GRAYSCALE and distortion in COLOUR_ONLY)


def image_count(distortions=None, references=None, levels: int = N_LEVELS) -> int:
    """How many distorted images a build with these parameters holds (references aside)."""
    dists = _distortion_names(distortions)
    refs = _resolve_names(references, REFERENCES, "reference(s)")
    return len(severities(levels)) * sum(applies(d, r) for r in refs for d in dists)


def _distortion_names(distortions) -> list[str]:
    """The distortions selected by a list of names, a set name of ``DISTORTION_SETS`` or None."""
    return _resolve_names(resolve_distortions(distortions), DISTORTIONS, "distortion(s)")


def _short_hash(names: Sequence[str]) -> str:
    return hashlib.sha256(",".join(names).encode()).hexdigest()[:8]


def cache_root() -> Path:
    """``$NRIQA_CACHE``, default ``~/.cache/nriqa``."""
    return Path(os.environ.get("NRIQA_CACHE") or "~/.cache/nriqa").expanduser()


def embedded_dir(
    seed: int = 0, size: int = DEFAULT_SIZE, levels: int = N_LEVELS, distortions=None, references=None
) -> Path:
    """Default location of a built dataset: ``$NRIQA_CACHE/embedded-v2-s{seed}-{size}-{code}``.

    ``code`` is the hash of the generating code, so a new nriqa version builds beside an old build
    instead of replacing it under a run that is reading it. Non-default ``levels``, distortions or
    references add a suffix, so datasets never collide.
    """
    name = f"embedded-v{FORMAT_VERSION}-s{int(seed)}-{int(size)}-{_code_hash()[:8]}"
    if int(levels) != N_LEVELS:
        name += f"-l{int(levels)}"
    dists = _distortion_names(distortions)
    if dists != list(DISTORTIONS):
        name += f"-d{_short_hash(dists)}"
    refs = _resolve_names(references, REFERENCES, "reference(s)")
    if refs != list(REFERENCES):
        name += f"-r{_short_hash(refs)}"
    return cache_root() / name


def _rng(seed: int, *key) -> np.random.Generator:
    """A generator for one image, from the seed and a stable hash of its key."""
    crc = zlib.crc32("/".join(str(k) for k in key).encode())
    return np.random.default_rng(np.random.SeedSequence([int(seed), crc]))


def _save_png(img: np.ndarray, path: Path) -> None:
    Image.fromarray(img).save(path, format="PNG", compress_level=1)


def _code_hash() -> str:
    """Hash of the generating code (every module of this package, by name): a cached build made
    by other code is rebuilt, not reused."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _params(seed, size, sev, dists, refs) -> dict:
    return {
        "format": "nriqa-embedded",
        "version": FORMAT_VERSION,
        "code": _code_hash(),
        "seed": int(seed),
        "size": int(size),
        "levels": sev,
        "distortions": dists,
        "requested_references": refs,
    }


def _is_complete(root: Path, params: dict) -> bool:
    """True when ``root`` holds a finished build with these parameters (manifest last)."""
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if any(manifest.get(k) != v for k, v in params.items()):
        return False
    labels = root / "labels.csv"
    try:
        if sha256_file(labels) != manifest.get("labels_sha256"):
            return False
        table = pd.read_csv(labels, dtype={"path": str, "ref_path": str})
    except (OSError, ValueError):
        return False
    if len(table) != manifest.get("n_images"):
        return False
    files = set(table["path"]) | set(table["ref_path"])
    return all((root / f).is_file() for f in files)


def _distort_one(tmp: Path, seed: int, ref: str, reference: np.ndarray, dist: str, sev) -> list:
    """All levels of one distortion of one reference: write the images, return label rows."""
    rows = []
    rng = _rng(seed, ref, dist)
    for level in sev:
        # The same generator state for every level (common random numbers): noise patterns and
        # the motion-blur angle are shared across levels, so labels fall with the level per image.
        out = DISTORTIONS[dist](reference, level, copy.deepcopy(rng))
        if out.shape != reference.shape or out.dtype != np.uint8:
            raise RuntimeError(
                f"distortion {dist!r} returned {out.dtype} {out.shape}, "
                f"expected uint8 {reference.shape}"
            )
        path = f"images/{ref}_{dist}_{level}.png"
        _save_png(out, tmp / path)
        rows.append((path, f"{kadid_label(dist, level):.6f}", ref, dist, level,
                     f"refs/{ref}.png", official_part(ref)))
    return rows


def _load_ref(name: str, size: int):
    try:
        return load_reference(name, size)
    except Exception as err:  # a wheel that no longer bundles the photo, or needs a download
        return err


def _write_dataset(tmp: Path, seed, size, sev, dists, refs, workers: int) -> None:
    (tmp / "refs").mkdir()
    (tmp / "images").mkdir()
    used, tasks = [], []
    with ThreadPoolExecutor(max_workers=workers) as pool:  # numpy, scipy, PIL release the GIL
        for ref, reference in zip(refs, pool.map(lambda r: _load_ref(r, size), refs)):
            if isinstance(reference, Exception):
                warnings.warn(
                    f"embedded dataset: skipping reference {ref!r}, it could not be loaded "
                    f"offline ({type(reference).__name__}: {reference})",
                    stacklevel=3,
                )
                continue
            _save_png(reference, tmp / f"refs/{ref}.png")
            used.append({"name": ref, "height": reference.shape[0], "width": reference.shape[1]})
            tasks += [(ref, reference, dist) for dist in dists if applies(dist, ref)]
        results = pool.map(lambda t: _distort_one(tmp, seed, *t, sev), tasks)
        rows = [row for rows in results for row in rows]  # in task order, whatever the timing
    if len(used) < 2:
        raise DataError(
            tmp, f"only {len(used)} embedded reference photo(s) could be loaded offline; need 2"
        )
    with open(tmp / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(LABEL_COLUMNS)
        writer.writerows(rows)
    manifest = {
        **_params(seed, size, sev, dists, refs),
        "references": used,
        "n_images": len(rows),
        "label": "KADID-10k mean score of the distortion type at the level, (mean - 1) / 4, "
        "higher = better",
        "kadid_types": {d: KADID_TYPES[d].kadid_type for d in dists},
        "grayscale": sorted(GRAYSCALE & {u["name"] for u in used}),
        "colour_only_types": sorted(COLOUR_ONLY & set(dists)),
        "split": {u["name"]: official_part(u["name"]) for u in used},
        "labels_sha256": sha256_file(tmp / "labels.csv"),
        "versions": {
            "numpy": np.__version__,
            "pillow": PIL.__version__,
            "scipy": scipy.__version__,
            "scikit-image": skimage.__version__,
        },
    }
    part = tmp / "manifest.json.part"
    part.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(part, tmp / "manifest.json")


def _looks_like_ours(root: Path) -> bool:
    """Only ever remove a directory holding nothing but an (old or partial) embedded build."""
    allowed = {"refs", "images", "labels.csv", "manifest.json", "manifest.json.part"}
    try:
        return all(p.name in allowed for p in root.iterdir())
    except OSError:
        return False


def _default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def is_built(root: str | Path | None = None, seed: int = 0, size: int = DEFAULT_SIZE,
             levels: int = N_LEVELS, distortions=None, references=None) -> bool:
    """True when a complete build with these parameters is at ``root`` (default: its cache)."""
    dists = _distortion_names(distortions)
    refs = _resolve_names(references, REFERENCES, "reference(s)")
    if root is None:
        root = embedded_dir(seed, size, levels, dists, refs)
    return _is_complete(Path(root), _params(seed, size, severities(levels), dists, refs))


def build_embedded(
    cache_dir: str | Path | None = None,
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    levels: int = N_LEVELS,
    distortions: Sequence[str] | None = None,
    force: bool = False,
    *,
    references: Sequence[str] | None = None,
    workers: int | None = None,
) -> Path:
    """Generate the embedded dataset (or find it already built) and return its root.

    ``cache_dir`` defaults to :func:`embedded_dir`. ``levels`` is how many severities to use,
    spread over 1..5 (:func:`severities`); ``distortions`` and ``references`` select names from
    :data:`DISTORTIONS` and :data:`REFERENCES` (default: all; ``distortions`` may also name a set
    of :data:`DISTORTION_SETS`, e.g. ``"artefacts"``). A complete dataset with the same
    parameters is returned at once unless ``force``. The build is written into a temporary
    sibling directory and renamed into place, so it is safe against interruption and against
    several processes building at once (the first rename wins; the result is the same).
    """
    if int(size) < 16:
        raise ConfigError(f"embedded dataset size must be at least 16 px, got {size}")
    sev = severities(levels)
    dists = _distortion_names(distortions)
    refs = _resolve_names(references, REFERENCES, "reference(s)")
    root = (
        Path(cache_dir).expanduser()
        if cache_dir is not None
        else embedded_dir(seed, size, levels, dists, refs)
    )
    params = _params(seed, size, sev, dists, refs)
    if not force and _is_complete(root, params):
        return root
    if root.exists() and not (root.is_dir() and _looks_like_ours(root)):
        raise DataError(
            root,
            "exists and is not an embedded nriqa dataset; refusing to overwrite it "
            "(choose another cache_dir)",
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        _write_dataset(tmp, seed, size, sev, dists, refs, workers or _default_workers())
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset is ordinary readable data
        _install(tmp, root, params, replace=force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _remove_stale(root: Path, age_s: float = 3600.0) -> None:
    """Remove temporary builds of ``root`` left by killed processes (older than ``age_s``)."""
    now = time.time()
    for pattern in (f".{root.name}.tmp-*", f".{root.name}.old-*"):
        for path in root.parent.glob(pattern):
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > age_s:
                    shutil.rmtree(path, ignore_errors=True)


def _install(tmp: Path, root: Path, params: dict, replace: bool) -> None:
    """Rename the finished build ``tmp`` to ``root``, moving any old or partial build aside.

    Without ``replace`` a complete build with the same parameters that another process installed
    meanwhile is accepted as is (builds are deterministic, so it is the same dataset).
    """
    for _ in range(5):
        try:
            os.rename(tmp, root)  # atomic; fails when root exists and is not empty
            return
        except OSError:
            if not root.exists():
                continue
        if not replace and _is_complete(root, params):
            return
        if not _looks_like_ours(root):
            raise DataError(root, "appeared while building and is not an embedded dataset")
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        with contextlib.suppress(OSError):  # another process may have moved it first
            os.rename(root, old / "d")
        shutil.rmtree(old, ignore_errors=True)
        replace = False
    raise DataError(root, "could not install the embedded dataset (concurrent builds?)")
