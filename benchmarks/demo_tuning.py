"""Tune the cpu_demo recipe on the VALIDATION part of the embedded dataset (never on its test part).

Each trial trains with the demo's split and prints the selected epoch's validation SRCC/PLCC, the
frozen-feature probe's validation SRCC/PLCC (once) and the wall time; the rows are appended to
``results/demo_tuning.jsonl``. Test metrics are not computed here.

    OMP_NUM_THREADS=1 python benchmarks/demo_tuning.py "optim.lr=5e-4" "optim.epochs=3 data.crop_size=192"

Each argument is one trial: space-separated config overrides on top of ``cpu_demo``.
``NRIQA_EMBEDDED_ROOT`` names an already built dataset to use; ``NRIQA_TUNING_NO_PROBE=1`` skips
the probe (the demo prints its validation metrics too).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main(argv: list[str]) -> int:
    import pandas as pd
    import torch

    from nriqa.config import load_config
    from nriqa.data.synthetic import build_embedded
    from nriqa.engine.data import resolve_data_settings
    from nriqa.engine.train import fit_parts, split_parts
    from nriqa.protocol.probe import frozen_probe
    from nriqa.protocol.runner import load_table, split_for

    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    # A fixed build may be named (editing nriqa/data/synthetic/ changes the cache key).
    root = os.environ.get("NRIQA_EMBEDDED_ROOT") or build_embedded()
    out_file = HERE / "results" / "demo_tuning.jsonl"
    probe_done = False
    for trial in argv or [""]:
        overrides = [f"data.root={root}", "trainer.progress_bar=false", *trial.split()]
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_config("cpu_demo", overrides + [f"trainer.output_dir={tmp}"])
            table = load_table(cfg.data)
            parts = split_parts(table, split_for(cfg, table, 0), cfg.split.protocol)
            parts["test"] = parts["test"].iloc[:3]  # never looked at: fit_parts needs a test part
            settings = resolve_data_settings(cfg)
            row = {"trial": trial, "threads": threads, "load_start": os.getloadavg()[0]}
            if not probe_done and not os.environ.get("NRIQA_TUNING_NO_PROBE"):
                t = time.perf_counter()
                probe = frozen_probe(cfg, {**parts, "test": parts["select"]}, settings)
                row["probe_val"] = {k: round(probe["val"][k], 4) for k in ("srcc", "plcc")}
                row["probe_s"] = round(time.perf_counter() - t, 1)
                probe_done = True
            t = time.perf_counter()
            result = fit_parts(cfg, parts, tmp)
            row["train_s"] = round(time.perf_counter() - t, 1)
            if "history" in result.results:  # trainer.feature_cache: no Lightning logs
                row["val_per_epoch"] = [[h["epoch"], round(h["select_srcc"], 4), round(h["select_plcc"], 4)]
                                        for h in result.results["history"]]
            else:
                frame = pd.read_csv(Path(tmp) / "logs" / "metrics.csv")
                val = frame.dropna(subset=["select/srcc"])[["epoch", "select/srcc", "select/plcc"]]
                row["val_per_epoch"] = val.round(4).values.tolist()
            row["selected_epoch"] = result.results["selected_epoch"]
            row["val_selected_plcc"] = round(result.results["select_plcc"], 4)
            row["load_end"] = os.getloadavg()[0]
        print(json.dumps(row), flush=True)
        with out_file.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
