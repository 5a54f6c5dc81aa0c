"""Which head recipe makes the shipped model most accurate? Chosen on validation only.

The shipped biq2021-lite0 is a decoder trained on cached features of a frozen EfficientNet-Lite0
(``nriqa/recipes/zoo_biq2021_lite0.yaml``). This script fills the same feature cache the recipe
uses (``--cache``; pass the same folder to ``nriqa train`` as ``trainer.feature_cache_dir`` and the
recipe reuses it) and trains candidate heads on the training part of the saved split
(``benchmarks/results/zoo_biq2021_lite0_split.json``), each over several seeds, reporting
SRCC / PLCC on the **validation part only**. The official test part is never loaded here: the
candidate chosen goes into the recipe, and the recipe's own run scores the test part once.

Each candidate is a list of config overrides on top of the recipe, e.g. ``optim.ema_decay=0.999``.

    python benchmarks/zoo_head_search.py --root /path/to/BIQ2021 --cache runs/zoo_cache \\
        --candidate base: --candidate ema999:optim.ema_decay=0.999 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, markdown, write_results

from nriqa.config import load_config
from nriqa.data.registry import load_labels
from nriqa.data.splits import Split
from nriqa.engine.data import resolve_data_settings
from nriqa.engine.frozen import CachedHead, _scores, cached_features, train_head
from nriqa.engine.train import split_parts
from nriqa.metrics import evaluate
from nriqa.models import DEIQT

RECIPE = "zoo_biq2021_lite0"


def parse_candidate(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition(":")
    return name, [o for o in overrides.split(",") if o]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, required=True, help="the full BIQ2021 (12,000 photos)")
    ap.add_argument("--cache", type=Path, required=True, help="feature cache folder (shared with the recipe)")
    ap.add_argument("--split", type=Path, default=RESULTS / "zoo_biq2021_lite0_split.json")
    ap.add_argument("--candidate", action="append", default=[],
                    help="NAME:override,override,...  (NAME: alone is the recipe as it is)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--name", default="zoo_head_search")
    ap.add_argument("--set", nargs="*", default=[], help="overrides for every candidate (and the cache)")
    ap.add_argument("--fill-only", action="store_true", help="fill the cache and stop")
    args = ap.parse_args()

    base = [f"data.root={args.root}", f"trainer.feature_cache_dir={args.cache}",
            "trainer.progress_bar=false", *args.set]
    cfg = load_config(RECIPE, base)
    table = load_labels("biq2021", str(args.root))
    parts = split_parts(table, Split.from_json(args.split, table, args.root), "honest")
    parts.pop("test")  # never scored here
    # the recipe's own cache, filled as fit_frozen fills it (with a progress bar)
    fill_cfg = load_config(RECIPE, [*base, "trainer.progress_bar=true"])
    features = cached_features(fill_cfg, parts, args.cache, DEIQT.from_config(cfg.model),
                               resolve_data_settings(cfg))
    if args.fill_only:
        return
    g, t, y = features["train"]
    rows, log = [], []
    for text in args.candidate or ["recipe:"]:
        name, overrides = parse_candidate(text)
        per_seed = []
        for seed in args.seeds:
            run_cfg = load_config(RECIPE, base + overrides + [f"trainer.seed={seed}"])
            torch.manual_seed(seed)
            head = CachedHead(DEIQT.from_config(run_cfg.model))
            t0 = time.perf_counter()
            best, history = train_head(run_cfg, head, (g, t, y), features["select"])
            chosen = next(h for h in history if h["selected"])
            last = history[-1]
            per_seed.append({"seed": seed, "select_srcc": chosen["select_srcc"],
                             "select_plcc": chosen["select_plcc"], "selected_epoch": chosen["epoch"],
                             "last_srcc": last["select_srcc"], "last_plcc": last["select_plcc"],
                             "seconds": time.perf_counter() - t0})
            if run_cfg.data.test_flip:  # the same weights scored on the plain views alone
                head.load_state_dict(best)
                g_sel, t_sel, y_sel = features["select"]
                k = g_sel.shape[1] // 2
                plain = evaluate(_scores(head, g_sel[:, :k], t_sel[:, :k]), y_sel.numpy())
                per_seed[-1] |= {"plain_srcc": plain["srcc"], "plain_plcc": plain["plcc"]}
            log.append({"candidate": name, "seed": seed, "history": history})
            print(name, json.dumps(per_seed[-1]), flush=True)
        row = {"candidate": name, "overrides": " ".join(overrides), "n_train": len(y),
               "seeds": len(per_seed)}
        for key in ("select_srcc", "select_plcc", "last_srcc", "last_plcc", "plain_srcc", "plain_plcc"):
            if key not in per_seed[0]:
                continue
            values = np.array([s[key] for s in per_seed])
            row[key] = float(values.mean())
            row[key + "_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        row["per_seed"] = per_seed
        rows.append(row)
        write_table(args, rows, log, len(features["select"][2]), len(y))


def write_table(args, rows: list[dict], log: list[dict], n_select: int, n_train: int) -> None:
    """The results so far (rewritten after each candidate, so a stopped search keeps them)."""
    head = (f"Head candidates for {RECIPE}, BIQ2021 validation part ({n_select} "
            f"photos), training part {n_train} photos; mean over seeds {args.seeds}. "
            "select_*: the epoch of best validation PLCC; last_*: the last epoch; plain_*: the "
            "selected weights scored on the plain views only (when data.test_flip).\n\n")
    cols = ["candidate", "overrides", "n_train", "seeds", "select_srcc", "select_plcc", "select_plcc_std",
            "last_srcc", "last_plcc", "last_plcc_std", "plain_srcc", "plain_plcc"]
    write_results(args.name, {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                              "histories": log}, head + markdown(rows, cols))


if __name__ == "__main__":
    main()
