"""Speed: training step time per method, and scoring throughput against the bare backbone.

All timings are taken side by side in one process on the same data, and reported as ratios as well
as images per second (absolute numbers on a shared machine move; ratios much less).

* scoring: ``Scorer.score_paths`` on real photos (decode + resize + deterministic crops + model)
  against the bare backbone's forward pass on the same, pre-extracted crops;
* training: seconds per optimiser step of each method (DEIQT, QFM-IQM with and without the
  teacher's forward pass, LML-IQA), and per image, measured by a callback around each step.

    python benchmarks/speed.py --images 64 --steps 8 --methods deiqt qfm-no-teacher qfm lml
"""

from __future__ import annotations

import argparse
import time

import lightning as L
import numpy as np
import torch
from common import biq2021_root, markdown, write_results

from nriqa.config import load_config
from nriqa.data.registry import load_labels
from nriqa.data.splits import Split
from nriqa.engine.train import fit
from nriqa.outputs.scoring import Scorer

METHODS = {
    "deiqt": [],
    "qfm-no-teacher": ["method.name=qfm", "method.qfm.teacher=false", "method.qfm.kd=false"],
    "qfm": ["method.name=qfm"],
    "lml": ["method.name=lml"],
    "lml-b4": ["method.name=lml", "data.batch_size=4"],
    # the gradient diagnostics at every step (one extra backward pass per loss term): the
    # overhead at grad_every=N is about this one's / N
    "deiqt-diag1": ["diagnostics.grad_every=1"],
    "lml-b4-diag1": ["method.name=lml", "data.batch_size=4", "diagnostics.grad_every=1"],
}


class StepTimer(L.Callback):
    def __init__(self, skip: int = 2):
        self.skip, self.times, self._t = skip, [], 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx >= self.skip:
            self.times.append(time.perf_counter() - self._t)


def time_scoring(cfg, paths, device) -> list[dict]:
    from nriqa.data.crops import ensure_min_size, extract_crops, resize_image, test_boxes
    from nriqa.data.images import load_image
    from nriqa.models import DEIQT

    torch.manual_seed(0)
    model = DEIQT.from_config(cfg.model).to(device).eval()
    k, size = cfg.data.test_patch_num or 5, cfg.data.crop_size
    scorer = Scorer(model, crop_size=size, patch_num=k, device=device, batch_size=8)
    scorer.score_paths(paths[:8])  # warm-up
    t0 = time.perf_counter()
    scorer.score_paths(paths)
    t_score = time.perf_counter() - t0

    crops = []
    for p in paths:
        img = ensure_min_size(resize_image(load_image(p), "none"), size)
        crops.append(extract_crops(img, test_boxes(*img.size, size, k, "grid", p)))
    crops = torch.stack(crops)
    with torch.inference_mode():
        model.backbone(crops[:8].flatten(0, 1).to(device))
        t0 = time.perf_counter()
        for i in range(0, len(crops), 8):
            model.backbone(crops[i:i + 8].flatten(0, 1).to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        t_backbone = time.perf_counter() - t0
    n = len(paths)
    return [{"what": "score_paths (decode+crop+model)", "images_per_s": n / t_score, "crops_per_s": n * k / t_score},
            {"what": "bare backbone forward, same crops", "images_per_s": n / t_backbone, "crops_per_s": n * k / t_backbone},
            {"what": "ratio scoring / backbone", "images_per_s": t_backbone / t_score, "crops_per_s": t_backbone / t_score}]


def time_training(base, table, split, methods, steps, out) -> list[dict]:
    rows = []
    for name in methods:
        cfg = load_config("cpu_biq2021", [*base, *METHODS[name], "optim.epochs=1",
                                          f"trainer.limit_train_batches={steps + 2}",
                                          f"trainer.output_dir={out}/{name}"])
        timer = StepTimer()
        fit(cfg, table, split, cfg.trainer.output_dir, callbacks=(timer,))
        k = cfg.method.lml.crops if "lml" in cfg.method.name else 1
        step = float(np.median(timer.times))
        rows.append({"method": name, "s_per_step": step, "images_per_step": cfg.data.batch_size,
                     "crops_per_step": cfg.data.batch_size * k, "s_per_image": step / cfg.data.batch_size,
                     "s_per_crop": step / (cfg.data.batch_size * k)})
    # Per image: one step's images (LML-IQA sees K crops of each). Per crop: the cost of an epoch
    # at equal crop budget (PATCH_NUM crops per image per epoch for every method).
    for unit in ("image", "crop"):
        ref = rows[0][f"s_per_{unit}"]
        for r in rows:
            r[f"ratio_per_{unit}"] = r[f"s_per_{unit}"] / ref
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64, help="photos scored")
    ap.add_argument("--steps", type=int, default=8, help="timed training steps per method")
    ap.add_argument("--methods", nargs="+", default=["deiqt"], choices=sorted(METHODS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--name", help="results file name under benchmarks/results (default speed_<device>)")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    args = ap.parse_args()
    device = torch.device(args.device)
    root = biq2021_root()
    base = [f"data.root={root}", f"data.label_file={root / 'train_subset.csv'}",
            "trainer.progress_bar=false", f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
            *args.overrides]
    cfg = load_config("cpu_biq2021", base)
    table = load_labels("biq2021", str(root), label_file=str(root / "train_subset.csv"))
    scoring = time_scoring(cfg, list(table["path"][: args.images]), device)
    n = len(table)
    split = Split(np.arange(0, 600), np.arange(600, 640), np.arange(640, 680), mode="custom")
    training = time_training(base, table, split, args.methods, args.steps, "runs/bench_speed")
    text = (f"Device: {device}; recipe cpu_biq2021 {' '.join(args.overrides)}; {n} photos available.\n\n"
            "Scoring throughput (test crops per image: "
            f"{cfg.data.test_patch_num}):\n\n" + markdown(scoring, ["what", "images_per_s", "crops_per_s"])
            + "\nTraining step time (median over timed steps):\n\n"
            + markdown(training, list(training[0].keys())))
    write_results(args.name or f"speed_{device.type}", {"args": vars(args), "scoring": scoring, "training": training}, text)


if __name__ == "__main__":
    main()
