"""The embedded default dataset: synthetic distortions of photos bundled in installed dependencies.

``nriqa demo`` and ``nriqa train`` with no dataset named train on this dataset. It needs no
download: it is generated on the user's machine, in a few seconds, from natural colour photos that
ship inside the scikit-image and scikit-learn wheels.

References (content groups)
    Ten colour photos: scikit-image's ``astronaut``, ``coffee``, ``chelsea`` (a cat),
    ``rocket``, ``motorcycle`` (the left view of ``stereo_motorcycle``), ``immunohistochemistry``
    (a stained tissue micrograph), ``retina`` (the central square of the fundus photo, without its
    black surround) and ``hubble_deep_field``, and scikit-learn's ``china`` and ``flower``
    (``sklearn.datasets.load_sample_image``). Grayscale photos are left out: colour distortions
    would leave them unchanged. Each reference is resized (PIL bicubic, deterministic) so that its
    short side is ``size`` pixels (default 320), aspect ratio kept, so images differ in size.
    A reference that an installed version no longer bundles is skipped with a warning; the
    manifest records which references were used.

Distortions (:data:`DISTORTIONS`, five levels each, level 1 mildest)
    ``gaussian_blur``, ``motion_blur`` (a line kernel at a random angle), ``gaussian_noise``
    (white, per channel), ``impulse_noise`` (salt and pepper), ``jpeg``, ``jpeg2000`` and
    ``webp`` (PIL codecs, encoded and decoded in memory), ``contrast`` (blend towards the mean
    luminance), ``darken`` and ``brighten`` (an additive brightness shift, clipped as an over- or
    under-exposure clips), ``desaturate`` (blend towards the luminance image), ``pixelate`` (box
    down-sampling, nearest-neighbour up-sampling) and ``quantize`` (octree palette, no dither).
    Parameters are in pixels and grey levels, tuned for the default 320 px size. Each function
    maps ``(uint8 HxWx3 image, level 1..5, numpy Generator) -> uint8 HxWx3 image`` and draws all
    its randomness from the generator. The builder seeds it from ``(seed, reference,
    distortion)`` and restarts it for every level (common random numbers: the same noise pattern
    and motion-blur angle at every level of one image, so severity is the only thing that
    changes); every image is reproducible on its own, independent of build order and threads.

Label
    ``score`` is SSIM (Wang et al. 2004) between the distorted image and its reference, computed
    by :func:`skimage.metrics.structural_similarity` on the three RGB channels
    (``channel_axis=-1``, the mean of the per-channel SSIMs), ``data_range=255``, with the paper's
    settings (11x11 Gaussian window, sigma 1.5, population covariances; computed in float32),
    clipped to [0, 1] and written with 6 decimals; higher is better. SSIM on RGB, unlike SSIM on
    luminance only, sees desaturation (each channel changes) and sees brightness shifts through
    its luminance term and through clipping. At the default size the mean label falls strictly
    with the level for every distortion type, and so does each image's label (each step by at
    least 0.005 with scikit-image 0.26 and Pillow 13; the tests check a small build). At tiny
    sizes (under about 128 px) the JPEG 2000 codec reaches its minimum file size, so its two
    strongest levels can coincide.

    Honest limitation: the label is a full-reference *proxy*, not human opinion. SSIM
    over-penalises some changes people barely notice (a brightness shift of near-black regions,
    such as the Hubble sky, costs a lot; noise on flat areas costs more than on texture) and
    under-penalises others (a fully grey image keeps SSIM near 0.9, so ``desaturate`` spans only
    about 0.97..0.88; mild brightening keeps SSIM high). The dataset is for demonstrations, smoke
    tests and pipelines, never for claims about agreement with people.

Layout of a built dataset (``build_embedded``)::

    <root>/refs/<ref>.png                       the resized references
    <root>/images/<ref>_<dist>_<level>.png      the distorted images
    <root>/labels.csv                           path,score,group,dist_type,level,ref_path
    <root>/manifest.json                        parameters, references, versions, hashes

``path`` and ``ref_path`` are relative to the root; ``group`` is the reference name. The build
happens in a temporary sibling directory that is renamed into place once complete (manifest
last), so concurrent builders never see a half-written dataset and an interrupted build leaves
nothing that passes for complete. A cached build is reused only when its manifest matches the
parameters, the hash of this module's source (so a changed recipe rebuilds) and the hash of
labels.csv, and every listed image exists. Builds are deterministic for a seed in a given environment:
the same bytes twice. (Other versions of Pillow, its codecs or scikit-image may change pixels;
the manifest records the versions.)
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage, signal

from nriqa.data.table import Scale
from nriqa.errors import ConfigError, DataError

FORMAT_VERSION = 1
N_LEVELS = 5
LABEL_SCALE = Scale(0.0, 1.0, True)
LABEL_COLUMNS = ("path", "score", "group", "dist_type", "level", "ref_path")

Distortion = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _param(values: Sequence, level: int):
    if not 1 <= int(level) <= N_LEVELS:
        raise ConfigError(f"distortion level must be in 1..{N_LEVELS}, got {level}")
    return values[int(level) - 1]


def _luminance(img: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an RGB image, float32 HxWx1."""
    x = img.astype(np.float32)
    return (0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2])[..., None]


def _codec_roundtrip(img: np.ndarray, fmt: str, **params) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **params)
    buf.seek(0)
    with Image.open(buf) as out:
        return np.asarray(out.convert("RGB"))


# --------------------------------------------------------------------------------------------
# Distortions: (uint8 HxWx3, level 1..5, rng) -> uint8 HxWx3
# --------------------------------------------------------------------------------------------


def gaussian_blur(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    sigma = _param((0.8, 1.5, 2.5, 4.0, 6.0), level)
    out = ndimage.gaussian_filter(img.astype(np.float32), sigma=(sigma, sigma, 0), mode="reflect")
    return _to_uint8(out)


def _line_kernel(length: float, angle: float) -> np.ndarray:
    """A normalised, anti-aliased line of ``length`` pixels at ``angle`` radians."""
    half = int(np.ceil(length / 2)) + 1
    k = np.zeros((2 * half + 1, 2 * half + 1), np.float64)
    t = np.linspace(-(length - 1) / 2, (length - 1) / 2, max(2, int(4 * length)))
    xs, ys = half + t * np.cos(angle), half - t * np.sin(angle)
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    for dx, dy, w in (
        (0, 0, (1 - fx) * (1 - fy)),
        (1, 0, fx * (1 - fy)),
        (0, 1, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        np.add.at(k, (y0 + dy, x0 + dx), w)
    return k / k.sum()


def motion_blur(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    length = _param((4, 8, 13, 19, 27), level)
    kernel = _line_kernel(length, rng.uniform(0, np.pi)).astype(np.float32)
    r = kernel.shape[0] // 2
    padded = np.pad(img.astype(np.float32), ((r, r), (r, r), (0, 0)), mode="reflect")
    out = signal.fftconvolve(padded, kernel[:, :, None], mode="valid", axes=(0, 1))
    return _to_uint8(out)


def gaussian_noise(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    sigma = _param((5.0, 10.0, 17.0, 27.0, 42.0), level)
    noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
    return _to_uint8(img.astype(np.float32) + noise)


def impulse_noise(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    fraction = _param((0.01, 0.03, 0.06, 0.11, 0.18), level)
    hit = rng.random(img.shape[:2]) < fraction
    salt = rng.random(img.shape[:2]) < 0.5
    out = img.copy()
    out[hit & salt] = 255
    out[hit & ~salt] = 0
    return out


def jpeg(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    quality = _param((50, 28, 15, 8, 3), level)
    return _codec_roundtrip(img, "JPEG", quality=quality)


def jpeg2000(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    ratio = _param((30, 60, 120, 240, 480), level)
    return _codec_roundtrip(
        img, "JPEG2000", quality_mode="rates", quality_layers=[ratio], irreversible=True
    )


def webp(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    quality = _param((30, 15, 8, 3, 0), level)
    return _codec_roundtrip(img, "WEBP", quality=quality, method=4)


def contrast(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    keep = _param((0.75, 0.6, 0.45, 0.3, 0.18), level)
    mean = _luminance(img).mean()
    return _to_uint8(mean + (img.astype(np.float32) - mean) * keep)


def darken(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    shift = _param((15, 30, 50, 75, 100), level)
    return _to_uint8(img.astype(np.float32) - shift)


def brighten(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    shift = _param((15, 30, 50, 75, 100), level)
    return _to_uint8(img.astype(np.float32) + shift)


def desaturate(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    keep = _param((0.7, 0.5, 0.3, 0.15, 0.0), level)
    y = _luminance(img)
    return _to_uint8(y + (img.astype(np.float32) - y) * keep)


def pixelate(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    factor = _param((2, 3, 4, 6, 8), level)
    h, w = img.shape[:2]
    small = Image.fromarray(img).resize(
        (max(1, round(w / factor)), max(1, round(h / factor))), Image.Resampling.BOX
    )
    return np.asarray(small.resize((w, h), Image.Resampling.NEAREST))


def quantize(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    colors = _param((64, 32, 16, 8, 4), level)
    # Fast octree rather than median cut: about twenty times faster, a similar look.
    pal = Image.fromarray(img).quantize(
        colors=colors, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE
    )
    return np.asarray(pal.convert("RGB"))


#: name -> distortion function (uint8 HxWx3 image, level 1..5, numpy Generator) -> uint8 image.
DISTORTIONS: dict[str, Distortion] = {
    "gaussian_blur": gaussian_blur,
    "motion_blur": motion_blur,
    "gaussian_noise": gaussian_noise,
    "impulse_noise": impulse_noise,
    "jpeg": jpeg,
    "jpeg2000": jpeg2000,
    "webp": webp,
    "contrast": contrast,
    "darken": darken,
    "brighten": brighten,
    "desaturate": desaturate,
    "pixelate": pixelate,
    "quantize": quantize,
}


# --------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _motorcycle() -> np.ndarray:
    import skimage.data

    return skimage.data.stereo_motorcycle()[0]


def _retina() -> np.ndarray:
    """The central square of the fundus photo, inside its circular field of view."""
    import skimage.data

    img = skimage.data.retina()
    h, w = img.shape[:2]
    side = int(0.6 * min(h, w))
    y0, x0 = (h - side) // 2, (w - side) // 2
    return img[y0 : y0 + side, x0 : x0 + side]


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)

    return load


#: name -> loader of a natural colour photo bundled in an installed wheel (uint8 HxWx3).
REFERENCES: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "coffee": _skimage("coffee"),
    "chelsea": _skimage("chelsea"),
    "rocket": _skimage("rocket"),
    "motorcycle": _motorcycle,
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "retina": _retina,
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "china": _sklearn("china.jpg"),
    "flower": _sklearn("flower.jpg"),
}


def load_reference(name: str, size: int = 320) -> np.ndarray:
    """Reference ``name`` as uint8 RGB, resized (bicubic) so its short side is ``size``."""
    if name not in REFERENCES:
        raise ConfigError(f"unknown embedded reference {name!r}; known: {sorted(REFERENCES)}")
    img = np.asarray(REFERENCES[name]())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = np.ascontiguousarray(img[..., :3]).astype(np.uint8)
    h, w = img.shape[:2]
    scale = size / min(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    if new != (w, h):
        img = np.asarray(Image.fromarray(img).resize(new, Image.Resampling.BICUBIC))
    return img


# --------------------------------------------------------------------------------------------
# Label
# --------------------------------------------------------------------------------------------


def quality_label(reference: np.ndarray, distorted: np.ndarray) -> float:
    """The full-reference label: SSIM on RGB (Wang et al. settings), clipped to [0, 1]."""
    from skimage.metrics import structural_similarity

    # float32 input makes scikit-image compute in float32: twice as fast as its float64 default
    # for uint8 input, and within 1e-6 of it (far below the 6 decimals labels.csv keeps).
    ssim = structural_similarity(
        reference.astype(np.float32),
        distorted.astype(np.float32),
        data_range=255,
        channel_axis=-1,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    return float(np.clip(ssim, 0.0, 1.0))


# --------------------------------------------------------------------------------------------
# Build and cache
# --------------------------------------------------------------------------------------------


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


def _short_hash(names: Sequence[str]) -> str:
    return hashlib.sha256(",".join(names).encode()).hexdigest()[:8]


def cache_root() -> Path:
    """``$NRIQA_CACHE``, default ``~/.cache/nriqa``."""
    return Path(os.environ.get("NRIQA_CACHE") or "~/.cache/nriqa").expanduser()


def embedded_dir(
    seed: int = 0, size: int = 320, levels: int = N_LEVELS, distortions=None, references=None
) -> Path:
    """Default location of a built dataset: ``$NRIQA_CACHE/embedded-v1-s{seed}-{size}-{code}``.

    ``code`` is the hash of the generating code, so a new nriqa version builds beside an old build
    instead of replacing it under a run that is reading it. Non-default ``levels``, distortions or
    references add a suffix, so datasets never collide.
    """
    name = f"embedded-v{FORMAT_VERSION}-s{int(seed)}-{int(size)}-{_code_hash()[:8]}"
    if int(levels) != N_LEVELS:
        name += f"-l{int(levels)}"
    dists = _resolve_names(distortions, DISTORTIONS, "distortion(s)")
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


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _code_hash() -> str:
    """Hash of this module's source: a cached build made by other code is rebuilt, not reused."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


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
        if _sha256(labels) != manifest.get("labels_sha256"):
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
        score = quality_label(reference, out)
        rows.append((path, f"{score:.6f}", ref, dist, level, f"refs/{ref}.png"))
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
            tasks += [(ref, reference, dist) for dist in dists]
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
    import PIL
    import scipy
    import skimage

    manifest = {
        **_params(seed, size, sev, dists, refs),
        "references": used,
        "n_images": len(rows),
        "label": "SSIM on RGB (skimage.metrics.structural_similarity, Wang et al. settings), "
        "clipped to [0, 1], higher = better",
        "labels_sha256": _sha256(tmp / "labels.csv"),
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


def build_embedded(
    cache_dir: str | Path | None = None,
    seed: int = 0,
    size: int = 320,
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
    :data:`DISTORTIONS` and :data:`REFERENCES` (default: all). A complete dataset with the same
    parameters is returned at once unless ``force``. The build is written into a temporary
    sibling directory and renamed into place, so it is safe against interruption and against
    several processes building at once (the first rename wins; the result is the same).
    """
    if int(size) < 16:
        raise ConfigError(f"embedded dataset size must be at least 16 px, got {size}")
    sev = severities(levels)
    dists = _resolve_names(distortions, DISTORTIONS, "distortion(s)")
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


def load_embedded_table(root: str | Path | None = None, seed: int = 0, **build) -> pd.DataFrame:
    """The embedded dataset's label table (:func:`nriqa.data.table.make_table`).

    ``root`` is a built dataset; by default the dataset for ``seed`` is built (or found in the
    cache) with :func:`build_embedded` and any extra ``build`` keyword arguments. Labels are the
    SSIM scores on the scale ``Scale(0, 1, True)``; ``group`` is the reference name; ``split``
    is "" (the dataset has no official split). Extra columns: ``dist_type``, ``level``,
    ``ref_path`` (absolute).
    """
    if root is None:
        root = build_embedded(seed=seed, **build)
    elif build:
        raise ConfigError(f"load_embedded_table: give root or build options, not both ({build})")
    root = Path(root).expanduser().resolve()
    if not (root / "manifest.json").is_file():
        raise DataError(root, "no manifest.json: not a complete embedded dataset (rebuild it)")
    from nriqa.data.registry import load_labels  # one reader for labels.csv: the registry's

    return load_labels("embedded", root)
