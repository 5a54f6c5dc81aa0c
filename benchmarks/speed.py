"""Speed: training step time per method, and scoring throughput against the bare backbone.

All timings are taken side by side in one process on the same data, and reported as ratios as well
as images per second (absolute numbers on a shared machine move; ratios much less).

* scoring: ``Scorer.score_paths`` on real photos (decode + resize + deterministic crops + model)
  against the bare backbone's forward pass on the same, pre-extracted crops;
* training: seconds per optimiser step of each method (DEIQT, QFM-IQM with and without the
  teacher's forward pass, LML-IQA), and per image, measured by a callback around each step;
* backends: photos/s and crops/s of eager PyTorch (the torch backend), PyTorch with the best
  settings found (inference mode, channels-last), and onnxruntime, each as the model alone on
  pre-cut crops and as the whole ``Scorer.score_paths`` pipeline; the model's forward FLOPs per
  crop (counted by ``torch.utils.flop_counter``) against this machine's measured float32 FLOP rate
  (a large matrix product on the same cores and thread count) as the fraction of peak reached.
  Every timing is the best of ``--rounds`` rounds taken in turn (the machine is shared).

    python benchmarks/speed.py --images 64 --steps 8 --methods deiqt qfm-no-teacher qfm lml
    python benchmarks/speed.py --sections backends --images 24 --threads 1
"""

from __future__ import annotations

import argparse
import os
import time

import lightning as L
import numpy as np
import torch
from common import biq2021_root, markdown, write_results

from nriqa.config import load_config
from nriqa.data.registry import load_labels
from nriqa.data.splits import Split
from nriqa.engine.train import fit
from nriqa.inference.scoring import Scorer

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
    from nriqa.data.crops import eval_boxes, extract_crops
    from nriqa.data.images import load_image
    from nriqa.data.resize import ensure_min_size, resize_image
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
        crops.append(extract_crops(img, eval_boxes(*img.size, size, k, "grid", p)))
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


def _best(fn, rounds: int) -> float:
    """Best wall time of ``rounds`` calls of ``fn`` (after one warm-up call)."""
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def forward_flops(model, size: int) -> int:
    """FLOPs (2 per multiply-add) of one crop's forward pass, counted by PyTorch."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(1, 3, size, size, dtype=torch.uint8))
    return counter.get_total_flops()


def peak_flops(n: int = 2048, rounds: int = 5) -> float:
    """float32 FLOP/s of an n x n matrix product on this process's threads (its practical peak)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / _best(lambda: a @ b, rounds)


def time_backends(cfg, paths, batch_size: int, rounds: int) -> tuple[list[dict], dict]:
    from nriqa.data.crops import eval_boxes, extract_crops
    from nriqa.data.images import load_image
    from nriqa.data.resize import ensure_min_size, resize_image
    from nriqa.inference.export import onnx_bytes, onnx_session
    from nriqa.models import DEIQT

    torch.manual_seed(0)
    model = DEIQT.from_config(cfg.model).eval()  # the shipped model's cost: same backbone + head
    k, size = cfg.data.test_patch_num or 5, cfg.data.crop_size
    crops = []
    for p in paths:
        img = ensure_min_size(resize_image(load_image(p), "none"), size)
        crops.append(extract_crops(img, eval_boxes(*img.size, size, k, "grid", p)))
    crops = torch.stack(crops)  # (n, k, 3, S, S) uint8
    n = len(paths)
    t0 = time.perf_counter()
    session = onnx_session(onnx_bytes(model, size))
    export_s = time.perf_counter() - t0
    tuned = DEIQT.from_config(cfg.model).eval()
    tuned.load_state_dict(model.state_dict())
    tuned = tuned.to(memory_format=torch.channels_last)

    def eager():
        with torch.no_grad():  # today's scoring path without inference mode: plain eager
            for i in range(0, n, batch_size):
                model(crops[i:i + batch_size])

    def best_torch():
        with torch.inference_mode():
            for i in range(0, n, batch_size):
                x = crops[i:i + batch_size].flatten(0, 1).contiguous(memory_format=torch.channels_last)
                tuned(x)

    flat = crops.flatten(0, 1).numpy()

    def ort():
        for i in range(0, n * k, batch_size * k):
            session.run(None, {"crops": flat[i:i + batch_size * k]})

    scorers = {b: Scorer(model, crop_size=size, patch_num=k, device="cpu", batch_size=batch_size,
                         backend=b, session=session if b == "onnxruntime" else None)
               for b in ("torch", "onnxruntime")}

    timings, waits = {}, {}
    # Rounds in turn, so a change of the machine's load touches every variant alike.
    runs = {"model: eager PyTorch": eager, "model: PyTorch inference_mode + channels_last": best_torch,
            "model: onnxruntime": ort,
            "score_paths: backend torch": lambda: scorers["torch"].score_paths(paths),
            "score_paths: backend onnxruntime": lambda: scorers["onnxruntime"].score_paths(paths)}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(rounds):
        for name, fn in runs.items():
            for sc in scorers.values():
                sc.timing = {"wait_s": 0.0, "model_s": 0.0, "batches": 0}
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if dt < timings.get(name, float("inf")):
                timings[name] = dt
                if name.startswith("score_paths"):
                    t = scorers[name.rsplit(" ", 1)[1]].timing
                    waits[name] = t["wait_s"] / dt
    flops = forward_flops(model, size)
    peak = peak_flops()
    eager_rate = n / timings["score_paths: backend torch"]
    rows = []
    for name, dt in timings.items():
        rate = flops * n * k / dt
        rows.append({"what": name, "photos_per_s": n / dt, "crops_per_s": n * k / dt,
                     "gflop_per_s": rate / 1e9, "fraction_of_peak": rate / peak,
                     "x_eager_score_paths": (n / dt) / eager_rate,
                     "model_waits": waits.get(name, float("nan"))})
    info = {"photos": n, "crops_per_photo": k, "crop_size": size, "batch_size": batch_size,
            "threads": torch.get_num_threads(), "forward_gflop_per_crop": flops / 1e9,
            "peak_gflop_per_s": peak / 1e9, "onnx_export_s": export_s, "rounds": rounds}
    return rows, info


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
    ap.add_argument("--sections", nargs="+", default=["scoring", "training", "backends"],
                    choices=["scoring", "training", "backends"])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="intra-op threads of PyTorch and onnxruntime (backends section)")
    ap.add_argument("--batch-size", type=int, default=8, help="photos per batch (backends)")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds per variant (backends)")
    ap.add_argument("--name", help="results file name under benchmarks/results (default speed_<device>)")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    root = biq2021_root()
    base = [f"data.root={root}", f"data.label_file={root / 'train_subset.csv'}",
            "trainer.progress_bar=false", f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
            *args.overrides]
    cfg = load_config("cpu_biq2021", base)
    table = load_labels("biq2021", str(root), label_file=str(root / "train_subset.csv"))
    paths = list(table["path"][: args.images])
    n = len(table)
    if "backends" in args.sections:
        load_start = os.getloadavg()
        rows, info = time_backends(cfg, paths, args.batch_size, args.rounds)
        load = os.getloadavg()
        text = (f"CPU backends, {info['threads']} thread(s), 1-min load average {load_start[0]:.2f} "
                f"at the start, {load[0]:.2f} at the end ({os.cpu_count()} cores); "
                f"{cfg.model.backbone} ({cfg.model.weights}) DEIQT, {info['photos']} photos x "
                f"{info['crops_per_photo']} crops of {info['crop_size']} px, batch "
                f"{info['batch_size']} photos, best of {info['rounds']} rounds.\n"
                f"Forward: {info['forward_gflop_per_crop']:.3f} GFLOP per crop; measured peak "
                f"(float32 2048^3 matmul): {info['peak_gflop_per_s']:.1f} GFLOP/s; ONNX export "
                f"{info['onnx_export_s']:.1f} s.\n\n"
                + markdown(rows, ["what", "photos_per_s", "crops_per_s", "gflop_per_s",
                                  "fraction_of_peak", "x_eager_score_paths", "model_waits"]))
        write_results(f"speed_backends_{device.type}", {"args": vars(args), "info": info,
                                                         "load_average_start": load_start,
                                                         "load_average": load, "backends": rows}, text)
    if not {"scoring", "training"} & set(args.sections):
        return
    scoring = time_scoring(cfg, paths, device) if "scoring" in args.sections else []
    split = Split(np.arange(0, 600), np.arange(600, 640), np.arange(640, 680), mode="custom")
    training = (time_training(base, table, split, args.methods, args.steps, "runs/bench_speed")
                if "training" in args.sections else [])
    text = (f"Device: {device}; recipe cpu_biq2021 {' '.join(args.overrides)}; {n} photos available.\n\n"
            "Scoring throughput (test crops per image: "
            f"{cfg.data.test_patch_num}):\n\n" + (markdown(scoring, ["what", "images_per_s", "crops_per_s"]) if scoring else "(not run)\n")
            + "\nTraining step time (median over timed steps):\n\n"
            + (markdown(training, list(training[0].keys())) if training else "(not run)\n"))
    write_results(args.name or f"speed_{device.type}", {"args": vars(args), "scoring": scoring, "training": training}, text)


if __name__ == "__main__":
    main()
