"""Leave-photos-out cross-validation of demo recipes on the embedded dataset (never its test part).

The demo chooses its epoch on 2 validation photos (astronaut, china); as an estimate of held-out
SRCC those 2 photos proved optimistic (0.86 on them, 0.55 on the 3 test photos). This script
estimates it on all 8 colour photos outside the test part: 4 folds of 2 photos, each fold's model
trained on the other 6 (as many as the demo trains on) and on the grayscale photos (training
only, in the demo too), and the out-of-fold predictions of the 8 photos pooled into one
SRCC/PLCC, the way the demo's held-out metric pools its 3 test photos. Per candidate it prints and
records:

- the decoder (the recipe, trained on cached frozen features): pooled out-of-fold SRCC/PLCC at
  every epoch, the last epoch's as the summary (no epoch is chosen by looking at a held-out fold),
  and each photo's own SRCC;
- the frozen-feature probe on the same features: ridge, its penalty chosen inside each fold
  (4 of the 6 training photos against the other 2), refitted on the 6.

    python benchmarks/demo_cv.py "" "model.stats_stages=3" --name stages

Each positional argument is one candidate: space-separated overrides on the ``demo`` recipe ("" is
the recipe itself). ``--distortions`` picks the dataset (``artefacts``, the demo's, by default;
``all``: 18 types); ``--without-grayscale`` leaves the grayscale photos out (the dataset before
they were added). Results: ``results/demo_cv_<name>.{json,md}``. ``NRIQA_EMBEDDED_ROOT`` names an
already built dataset (and overrides ``--distortions``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def photo_folds(photos: list[str], n_folds: int) -> list[list[str]]:
    """Photos dealt round-robin (sorted by name) into ``n_folds`` held-out groups."""
    photos = sorted(photos)
    return [photos[i::n_folds] for i in range(n_folds)]


def pooled(pred, label) -> dict:
    from nriqa.metrics import evaluate

    return {k: round(float(v), 4) for k, v in evaluate(pred, label).items() if k in ("srcc", "plcc")}


def run_candidate(overrides: list[str], root: Path, n_folds: int, cache_dir: Path,
                  distortions: str | None, grayscale: bool = True) -> dict:
    import numpy as np
    import pandas as pd
    import torch

    from nriqa.config import load_config
    from nriqa.data.synthetic import GRAYSCALE
    from nriqa.engine.data import resolve_data_settings
    from nriqa.engine.frozen import CachedHead, FeatureCache, _scores, train_head
    from nriqa.engine.train import split_parts
    from nriqa.models import DEIQT
    from nriqa.protocol.probe import fit_ridge
    from nriqa.protocol.runner import load_table, split_for

    # The dataset's own set (None: every type of the build at NRIQA_EMBEDDED_ROOT).
    cfg = load_config("demo", [f"data.root={root}", "trainer.progress_bar=false",
                               f"trainer.feature_cache_dir={cache_dir}",
                               f"data.options.distortions={distortions or 'null'}", *overrides])
    table = load_table(cfg.data)
    parts = split_parts(table, split_for(cfg, table, cfg.split.index), cfg.split.protocol)
    # Only the photos outside the test part; the test part is not read.
    pool = pd.concat([parts["train"], parts["select"]], ignore_index=True)
    if not grayscale:
        pool = pool[~pool["group"].isin(GRAYSCALE)].reset_index(drop=True)
    settings = resolve_data_settings(cfg)
    torch.manual_seed(cfg.trainer.seed)
    model = DEIQT.from_config(cfg.model)
    cache = FeatureCache.for_run(cfg, pool, settings, cache_dir, mirrored=cfg.data.hflip)
    t0 = time.perf_counter()
    cache.fill(model, cache.dataset(cfg, pool, settings), cfg.data.eval_batch_size,
               cfg.data.num_workers, False)
    cache_s = time.perf_counter() - t0
    glob, tokens = cache.load()
    labels = torch.tensor(pool["label"].to_numpy(), dtype=torch.float32)
    groups = pool["group"].to_numpy()
    types = pool["dist_type"].to_numpy()
    k = glob.shape[1] // 2 if cfg.data.hflip else glob.shape[1]
    epochs = cfg.optim.epochs
    oof = np.full((epochs, len(pool)), np.nan)
    probe_oof = np.full(len(pool), np.nan)
    # The grayscale photos train only (the official split): never held out, in every fold's
    # training part; the folds and the pooled metrics are over the colour photos.
    held_out = ~np.isin(groups, list(GRAYSCALE))
    folds = photo_folds(list(np.unique(groups[held_out])), n_folds)
    t0 = time.perf_counter()
    for held in folds:
        test = np.isin(groups, held)
        train = ~test
        torch.manual_seed(cfg.trainer.seed)
        head = CachedHead(DEIQT.from_config(cfg.model))
        plain = (glob[test][:, :k], tokens[test][:, :k])  # scored on the plain views

        class OutOfFold:  # the head as evaluated (the EMA when on), on the held-out fold
            def on_head_epoch_model(self, epoch, scored, rows=test, views=plain):
                oof[epoch, rows] = _scores(scored, *views)

        train_head(cfg, head, (glob[train], tokens[train], labels[train]),
                   (*plain, labels[test]), callbacks=(OutOfFold(),))
        # The probe: ridge on each image's mean global feature over its plain views.
        feats = glob[:, :k].float().mean(1).numpy()
        inner = photo_folds(sorted(set(groups[train & held_out])), 3)[0]
        fit_rows, sel_rows = train & ~np.isin(groups, inner), np.isin(groups, inner)
        _, alpha = fit_ridge(feats[fit_rows], labels.numpy()[fit_rows], feats[sel_rows],
                             labels.numpy()[sel_rows])
        predict, _ = fit_ridge(feats[train], labels.numpy()[train], feats[train],
                               labels.numpy()[train], alphas=(alpha,))
        probe_oof[test] = predict(feats[test])
    train_s = time.perf_counter() - t0
    m = held_out
    y, oof, probe_oof, groups, types = labels.numpy()[m], oof[:, m], probe_oof[m], groups[m], types[m]
    curve = [pooled(oof[e], y)["srcc"] for e in range(epochs)]
    return {"overrides": overrides, "folds": folds, "images": len(pool),
            "training_only_photos": sorted(set(pool["group"]) & GRAYSCALE),
            "decoder_last": pooled(oof[-1], y), "decoder_srcc_per_epoch": curve,
            "decoder_best_epoch_srcc": max(curve),  # for reading only: chosen on the folds
            "per_photo_srcc_last": {p: pooled(oof[-1][groups == p], y[groups == p])["srcc"]
                                    for p in sorted(set(groups))},
            # how well the levels of one type are ordered, across the pooled photos
            "per_type_srcc_last": {t: pooled(oof[-1][types == t], y[types == t])["srcc"]
                                   for t in sorted(set(types))},
            "probe": pooled(probe_oof, y), "cache_s": round(cache_s, 1),
            "train_s": round(train_s, 1), "threads": torch.get_num_threads(),
            "load": round(os.getloadavg()[0], 2)}


def write_table(rows: list[dict], path: Path, name: str) -> None:
    lines = [f"# Demo recipes, leave-photos-out CV ({name})", "",
             "The 8 colour photos outside the embedded dataset's test part, 4 folds of 2 photos, "
             "each model trained on the other 6 (and the grayscale photos, unless left out); "
             "out-of-fold predictions pooled. Decoder: the recipe's "
             "last epoch. Probe: ridge on the same features, penalty chosen inside each fold. "
             "`python benchmarks/demo_cv.py` (this file's JSON has every number).", "",
             "| candidate | decoder SRCC | decoder PLCC | probe SRCC | probe PLCC | worst photo | "
             "cache s | train s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        worst = min(r["per_photo_srcc_last"].items(), key=lambda kv: kv[1])
        lines.append(f"| `{' '.join(r['overrides']) or '(demo recipe)'}` | "
                     f"{r['decoder_last']['srcc']:.3f} | {r['decoder_last']['plcc']:.3f} | "
                     f"{r['probe']['srcc']:.3f} | {r['probe']['plcc']:.3f} | "
                     f"{worst[0]} {worst[1]:.2f} | {r['cache_s']:.0f} | {r['train_s']:.0f} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidates", nargs="*", default=[""])
    parser.add_argument("--name", default="cv")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--distortions", default="artefacts", choices=("artefacts", "all"),
                        help="the embedded dataset's distortion set (artefacts, the demo's; all); "
                             "NRIQA_EMBEDDED_ROOT, when set, names the dataset instead")
    parser.add_argument("--without-grayscale", action="store_true",
                        help="leave the grayscale photos (training only) out of every fold")
    parser.add_argument("--cache-dir", default=None,
                        help="feature cache (default: the demo's, under the nriqa cache)")
    args = parser.parse_args(argv)
    from nriqa.allocator import retain_freed_memory

    retain_freed_memory()  # as the nriqa command does
    import torch

    from nriqa.data.synthetic import build_embedded, cache_root

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    given = os.environ.get("NRIQA_EMBEDDED_ROOT")  # a built dataset, whatever its distortions
    root = Path(given or build_embedded(distortions=args.distortions))
    cache_dir = Path(args.cache_dir or cache_root() / "features")
    rows = []
    out = HERE / "results" / f"demo_cv_{args.name}"
    for candidate in args.candidates or [""]:
        distortions = None if given else args.distortions
        row = {"distortions": distortions,
               **run_candidate(candidate.split(), root, args.folds, cache_dir, distortions,
                               grayscale=not args.without_grayscale)}
        print(json.dumps(row), flush=True)
        rows.append(row)
        out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
        write_table(rows, out.with_suffix(".md"), args.name)
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
