"""Accuracy on real photos: BIQ2021 (the 4000 photos of ../shared/data/biq2021).

Seeded train / val / test parts are carved out of the 4000 photos; every method trains from the
offline EfficientNet-Lite0 ImageNet weights with the `cpu_biq2021` recipe and the same budget, and
is tested on the held-out part beside a frozen-feature ridge probe of the same backbone on the same
parts. Prints a table and writes benchmarks/results/accuracy_biq2021.{json,md}.

    python benchmarks/accuracy_biq2021.py --train 800 --val 200 --test 600 --seeds 0 \
        --methods deiqt
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import biq2021_root, markdown, write_results

from nriqa.config import load_config
from nriqa.data.registry import load_labels
from nriqa.data.splits import Split
from nriqa.engine.data import eval_dataset, eval_loader, resolve_data_settings, subset
from nriqa.engine.train import fit
from nriqa.metrics import evaluate

METHODS = {
    "deiqt": [],
    "qfm": ["method.name=qfm"],
    "qfm-no-teacher": ["method.name=qfm", "method.qfm.teacher=false", "method.qfm.kd=false"],
    "lml": ["method.name=lml"],
    "lml-alpha-0": ["method.name=lml", "method.lml.alpha=0"],
    # LML-IQA's batch is B images x K crops: with B = 4 and K = 4 a step sees the 16 crops of a
    # DEIQT step, so both take the same number of optimiser steps for the same crop budget.
    "lml-b4": ["method.name=lml", "data.batch_size=4"],
    "lml-alpha-0-b4": ["method.name=lml", "method.lml.alpha=0", "data.batch_size=4"],
}


def parts(n_images: int, sizes: tuple[int, int, int], seed: int) -> Split:
    order = np.random.default_rng([seed, 2021]).permutation(n_images)
    a, b, c = sizes
    return Split(np.sort(order[:a]), np.sort(order[a:a + b]), np.sort(order[a + b:a + b + c]),
                 mode="custom", seed=seed, dataset="biq2021")


@torch.no_grad()
def probe(cfg, table, split: Split) -> dict:
    """Ridge regression on the backbone's pooled ImageNet features (mean over the test crops)."""
    from sklearn.linear_model import RidgeCV

    from nriqa.models import Backbone

    net = Backbone(cfg.model.backbone, weights=cfg.model.weights).eval()
    settings = resolve_data_settings(cfg)

    def features(rows):
        loader = eval_loader(cfg, eval_dataset(cfg, subset(table, rows), settings), 0, 1)
        out = []
        for batch in loader:
            b, k = batch["image"].shape[:2]
            c, _ = net(batch["image"].flatten(0, 1))
            out.append(c.view(b, k, -1).mean(1))
        return torch.cat(out).numpy()

    xtr, xva, xte = features(split.train), features(split.val), features(split.test)
    y = table["label"].to_numpy()
    ridge = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(np.vstack([xtr, xva]), np.r_[y[split.train], y[split.val]])
    return evaluate(ridge.predict(xte), y[split.test])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=800)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--test", type=int, default=600)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--methods", nargs="+", default=["deiqt"], choices=sorted(METHODS))
    ap.add_argument("--no-probe", action="store_true")
    ap.add_argument("--output-dir", default="runs/bench_biq2021")
    ap.add_argument("--name", default="accuracy_biq2021", help="results file name under benchmarks/results")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    args = ap.parse_args()

    root = biq2021_root()
    rows = []
    for seed in args.seeds:
        base = [f"data.root={root}", f"data.label_file={root / 'train_subset.csv'}", f"trainer.seed={seed}",
                "trainer.progress_bar=false", *args.overrides]
        cfg = load_config("cpu_biq2021", base)
        table = load_labels("biq2021", str(root), label_file=str(root / "train_subset.csv"))
        split = parts(len(table), (args.train, args.val, args.test), seed)
        if not args.no_probe:
            t0 = time.perf_counter()
            m = probe(cfg, table, split)
            rows.append({"method": "ridge probe (frozen)", "seed": seed, "srcc": m["srcc"], "plcc": m["plcc"],
                         "minutes": (time.perf_counter() - t0) / 60})
        baseline_model = None
        for name in args.methods:
            extra = list(METHODS[name])
            if name == "qfm" and baseline_model is not None:
                # QFM-IQM's teacher is a DEIQT baseline fitted on the same training part: reuse
                # the one this seed just trained instead of fitting an identical one again.
                extra.append(f"method.qfm.teacher_checkpoint={baseline_model}")
            run_cfg = load_config("cpu_biq2021", [*base, *extra,
                                                  f"trainer.output_dir={args.output_dir}/{name}/seed{seed}"])
            t0 = time.perf_counter()
            result = fit(run_cfg, table, split, run_cfg.trainer.output_dir)
            res = result.results
            if name == "deiqt":
                baseline_model = result.model_path
            rows.append({"method": name, "seed": seed, "srcc": res["test"]["srcc"], "plcc": res["test"]["plcc"],
                         "minutes": (time.perf_counter() - t0) / 60})
            print(rows[-1], flush=True)
    summary = []
    for name in dict.fromkeys(r["method"] for r in rows):
        sel = [r for r in rows if r["method"] == name]
        summary.append({"method": name, "seeds": len(sel),
                        "srcc": float(np.mean([r["srcc"] for r in sel])),
                        "srcc_std": float(np.std([r["srcc"] for r in sel])),
                        "plcc": float(np.mean([r["plcc"] for r in sel])),
                        "plcc_std": float(np.std([r["plcc"] for r in sel])),
                        "minutes": float(np.mean([r["minutes"] for r in sel]))})
    head = (f"BIQ2021 (4000-photo subset): train {args.train}, val {args.val}, test {args.test}; "
            f"recipe cpu_biq2021 {' '.join(args.overrides)}; honest selection on val; "
            f"mean over seeds {args.seeds}\n\n")
    write_results(args.name, {"args": vars(args), "runs": rows, "summary": summary},
                  head + markdown(summary, ["method", "seeds", "srcc", "srcc_std", "plcc", "plcc_std", "minutes"]))


if __name__ == "__main__":
    main()
