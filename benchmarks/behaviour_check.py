"""Behaviour unchanged? Three small fixed runs whose numbers a refactor must not move.

A short ``cpu_demo`` (DEIQT), ``qfm_cpu`` (QFM-IQM, with its teacher) and ``lml_cpu`` (LML-IQA) run,
each for a few optimiser steps on the embedded dataset, through ``python -m nriqa.cli train`` of
the source tree named by ``--source`` (so the same script runs an older checkout). For each run it
records the selected epoch's test metrics, the training losses logged and the sha256 of the exported
model file, and writes them to ``--out`` (JSON). ``--compare A.json B.json`` prints the runs side by
side and exits 1 when any number differs (bit for bit: the model files' hashes must match).

    git worktree add /tmp/before <old commit>
    OMP_NUM_THREADS=1 python benchmarks/behaviour_check.py --source /tmp/before --out before.json
    OMP_NUM_THREADS=1 python benchmarks/behaviour_check.py --source . --out after.json
    python benchmarks/behaviour_check.py --compare before.json after.json

One thread and no loader workers, so that the runs are deterministic on one machine.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

BUDGET = ["optim.epochs=2", "trainer.limit_train_batches=3", "data.num_workers=0",
          "trainer.progress_bar=false", "trainer.seed=0", "trainer.deterministic=true"]
RUNS = {
    "deiqt": ("cpu_demo", []),
    "qfm": ("qfm_cpu", []),
    "lml": ("lml_cpu", []),
}


def run_one(source: Path, recipe: str, extra: list[str], root: str, out_dir: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "nriqa.cli", "train", "-c", recipe, f"data.root={root}",
           f"trainer.output_dir={out_dir}", *BUDGET, *extra]
    done = subprocess.run(cmd, cwd=source, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    results = json.loads((out_dir / "results.json").read_text())
    return {"command": " ".join(cmd[1:]), "test": results["test"],
            "selected_epoch": results["selected_epoch"], "select_plcc": results["select_plcc"],
            "losses": _losses(out_dir), "model_sha256": _sha256(out_dir / "model.safetensors")}


def _losses(out_dir: Path) -> list[float]:
    with open(out_dir / "logs" / "metrics.csv", newline="") as f:
        return [float(r[k]) for r in csv.DictReader(f) for k in r
                if k.startswith("train/loss") and r[k] not in ("", None)]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _shown(value):
    return f"{len(value)} values" if isinstance(value, list) else value


def compare(a_path: str, b_path: str) -> int:
    a, b = (json.loads(Path(p).read_text()) for p in (a_path, b_path))
    same = True
    print(f"| run | value | {Path(a_path).name} | {Path(b_path).name} | same |")
    print("|---|---|---|---|---|")
    for run in sorted(a["runs"].keys() | b["runs"].keys()):
        ra, rb = a["runs"].get(run, {}), b["runs"].get(run, {})
        keys = [("srcc", lambda r: r["test"]["srcc"]), ("plcc", lambda r: r["test"]["plcc"]),
                ("selected epoch", lambda r: r["selected_epoch"]),
                ("losses", lambda r: r["losses"]), ("model sha256", lambda r: r["model_sha256"][:16])]
        for name, get in keys:
            va, vb = (get(r) if r else None for r in (ra, rb))
            ok = va == vb
            same &= ok
            print(f"| {run} | {name} | {_shown(va)} | {_shown(vb)} | {'yes' if ok else 'NO'} |")
    print("identical" if same else "DIFFERENT")
    return 0 if same else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=".", help="the nriqa source tree to run")
    p.add_argument("--out", help="write the runs' numbers here (JSON)")
    p.add_argument("--root", default=os.environ.get("NRIQA_EMBEDDED_ROOT"),
                   help="an already built embedded dataset (so both trees read the same images)")
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"))
    args = p.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    if not (args.out and args.root):
        p.error("--out and --root (or NRIQA_EMBEDDED_ROOT) are needed to run")
    source = Path(args.source).resolve()
    commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.runs:
            recipe, extra = RUNS[name]
            runs[name] = run_one(source, recipe, extra, args.root, Path(tmp) / name)
            print(f"{name}: test SRCC {runs[name]['test']['srcc']:.6f} "
                  f"model {runs[name]['model_sha256'][:16]}", flush=True)
    Path(args.out).write_text(json.dumps({"source_commit": commit, "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
