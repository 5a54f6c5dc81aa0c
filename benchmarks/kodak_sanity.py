"""Sanity on photos a model never saw: does it rank each Kodak original above its distorted copies,
and milder levels above stronger ones?

For each of the 24 Kodak photos (``../shared/data/kodak24``) six distortions are made at three
levels (Gaussian blur, Gaussian noise, JPEG, downscaling and back, contrast reduction, darkening);
every copy is scored with the same pipeline as ``nriqa score``. Reported per distortion: the share
of (original, distorted) pairs where the original scores higher, and the share of (milder, stronger)
level pairs in the right order. Prints a table and writes
``benchmarks/results/kodak_sanity[_NAME].{json,md}``.

    python benchmarks/kodak_sanity.py                       # the default shipped model
    python benchmarks/kodak_sanity.py --model runs/x/model.safetensors --name kodak_sanity_x
"""

from __future__ import annotations

import argparse
import io
import itertools
import tempfile
from pathlib import Path

import numpy as np
from common import SHARED, markdown, write_results
from PIL import Image, ImageEnhance, ImageFilter

from nriqa.inference.scoring import Scorer


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _noise(img: Image.Image, sigma: float, seed: int) -> Image.Image:
    arr = np.asarray(img, dtype=np.float64)
    arr = arr + np.random.default_rng(seed).normal(0, sigma, arr.shape)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def _downscale(img: Image.Image, factor: int) -> Image.Image:
    small = img.resize((img.width // factor, img.height // factor), Image.Resampling.BICUBIC)
    return small.resize(img.size, Image.Resampling.BICUBIC)


# name -> (levels, milder first; function of (image, level, seed))
DISTORTIONS = {
    "blur": ((1.0, 2.0, 4.0), lambda im, r, s: im.filter(ImageFilter.GaussianBlur(r))),
    "noise": ((10.0, 25.0, 50.0), lambda im, sigma, s: _noise(im, sigma, s)),
    "jpeg": ((30, 15, 5), lambda im, q, s: _jpeg(im, q)),
    "downscale": ((2, 4, 8), lambda im, f, s: _downscale(im, f)),
    "contrast": ((0.7, 0.5, 0.3), lambda im, c, s: ImageEnhance.Contrast(im).enhance(c)),
    "darken": ((0.7, 0.5, 0.3), lambda im, b, s: ImageEnhance.Brightness(im).enhance(b)),
}


def make_copies(kodak: Path, out: Path) -> list[dict]:
    """Write every original and distorted copy as PNG; one row per file."""
    rows = []
    for index, src in enumerate(sorted(kodak.glob("kodim*.png"))):
        img = Image.open(src).convert("RGB")
        img.save(out / src.name)
        rows.append({"photo": src.stem, "distortion": "original", "level": 0, "path": out / src.name})
        for name, (levels, distort) in DISTORTIONS.items():
            for level_index, level in enumerate(levels, start=1):
                path = out / f"{src.stem}_{name}{level_index}.png"
                distort(img, level, index).save(path)
                rows.append({"photo": src.stem, "distortion": name, "level": level_index, "path": path})
    return rows


def pair_shares(rows: list[dict]) -> list[dict]:
    by_photo: dict[str, dict] = {}
    for r in rows:
        by_photo.setdefault(r["photo"], {})[(r["distortion"], r["level"])] = r["score"]
    table = []
    for name, (levels, _) in DISTORTIONS.items():
        above = levels_ok = levels_n = 0
        for scores in by_photo.values():
            original = scores[("original", 0)]
            copies = [scores[(name, i)] for i in range(1, len(levels) + 1)]
            above += sum(original > c for c in copies)
            for a, b in itertools.combinations(copies, 2):
                levels_ok += a > b
                levels_n += 1
        n_pairs = len(by_photo) * len(levels)
        table.append({"distortion": name, "original above copy": above / n_pairs,
                      "milder above stronger": levels_ok / levels_n, "pairs": n_pairs})
    total_pairs = sum(r["pairs"] for r in table)
    table.append({"distortion": "all", "pairs": total_pairs,
                  "original above copy": sum(r["original above copy"] * r["pairs"] for r in table) / total_pairs,
                  "milder above stronger": float(np.mean([r["milder above stronger"] for r in table]))})
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="a shipped model name, a file, or hf:...")
    parser.add_argument("--name", default="kodak_sanity")
    args = parser.parse_args()
    kodak = SHARED / "kodak24"
    if not kodak.is_dir():
        raise SystemExit(f"Kodak photos not found at {kodak} (set NRIQA_SHARED_DATA)")
    scorer = Scorer.from_pretrained(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        rows = make_copies(kodak, Path(tmp))
        results = scorer.score_paths([r["path"] for r in rows])
    for r, res in zip(rows, results):
        if res.error:
            raise SystemExit(res.error)
        r["score"], r["path"] = res.score, Path(r["path"]).name
    table = pair_shares(rows)
    text = (f"Kodak sanity, model {scorer.source}\n\n"
            + markdown(table, ["distortion", "original above copy", "milder above stronger", "pairs"]))
    write_results(args.name, {"model": scorer.source, "args": vars(args), "table": table,
                              "scores": rows}, text)


if __name__ == "__main__":
    main()
