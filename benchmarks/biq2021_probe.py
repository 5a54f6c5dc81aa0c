"""Frozen-feature probes on BIQ2021's official split, beside the shipped model: same backbone,
same photos, same input policy (the zoo recipe's), the features taken from its feature cache.

Two probes, each with its hyperparameter chosen on the validation part and the official test
split scored once: an SVR (RBF) on the last map's mean (the usual "frozen ImageNet features"
probe), and a ridge regression on the multi-level statistics that the model's ``stats`` readout
sees. Prints a table and writes benchmarks/results/biq2021_probe.{json,md}.

    python benchmarks/biq2021_probe.py --root /path/to/BIQ2021 --cache-dir runs/zoo_biq2021_lite0/features
"""

from __future__ import annotations

import argparse
import time

from common import markdown, write_results
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVR

from nriqa.config import load_config
from nriqa.engine.data import eval_dataset, resolve_data_settings
from nriqa.engine.frozen import FeatureCache
from nriqa.engine.train import split_parts
from nriqa.metrics import evaluate
from nriqa.models import DEIQT
from nriqa.protocol.runner import load_table, split_for

PROBES = {
    "SVR (RBF) on the last map's mean": ("last", lambda c: make_pipeline(StandardScaler(), SVR(C=c, epsilon=0.02)), (0.3, 1.0, 3.0)),
    "ridge on multi-level mean + std": ("stats", lambda a: make_pipeline(StandardScaler(), Ridge(alpha=a)), (100.0, 1000.0, 3000.0)),
}


def features(cfg, parts, folder):
    settings = resolve_data_settings(cfg)
    model = DEIQT.from_config(cfg.model)
    out = {}
    for name in ("train", "select", "test"):
        cache = FeatureCache.for_run(cfg, parts[name], settings, folder)
        cache.fill(model, eval_dataset(cfg, parts[name], settings), cfg.data.eval_batch_size,
                   cfg.data.num_workers, True)
        glob = cache.load()[0][:, 0].float().numpy()
        out[name] = (glob, parts[name]["label"].to_numpy())
    last = model.backbone.feature_dim  # the stats readout ends with the last map's [mean, std]
    return out, slice(glob.shape[1] - 2 * last, glob.shape[1] - last)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--recipe", default="zoo_biq2021_lite0")
    args = parser.parse_args()
    cfg = load_config(args.recipe, [f"data.root={args.root}"])
    table = load_table(cfg.data)
    parts = split_parts(table, split_for(cfg, table, 0), "honest")
    feats, last = features(cfg, parts, args.cache_dir)
    rows = []
    for name, (kind, make, grid) in PROBES.items():
        cols = last if kind == "last" else slice(None)
        (x_tr, y_tr), (x_val, y_val), (x_te, y_te) = (
            (feats[p][0][:, cols], feats[p][1]) for p in ("train", "select", "test"))
        t0 = time.time()
        val = {h: evaluate(make(h).fit(x_tr, y_tr).predict(x_val), y_val) for h in grid}
        chosen = max(val, key=lambda h: val[h]["plcc"])
        test = evaluate(make(chosen).fit(x_tr, y_tr).predict(x_te), y_te)  # the one test touch
        rows.append({"probe": name, "chosen": chosen, "val SRCC": val[chosen]["srcc"],
                     "val PLCC": val[chosen]["plcc"], "test SRCC": test["srcc"],
                     "test PLCC": test["plcc"], "seconds": time.time() - t0})
    text = markdown(rows, ["probe", "chosen", "val SRCC", "val PLCC", "test SRCC", "test PLCC"])
    write_results("biq2021_probe", {"args": vars(args), "rows": rows,
                                    "sizes": {k: len(v) for k, v in parts.items()}}, text)


if __name__ == "__main__":
    main()
