"""Issue 11's experiments on BIQ2021: named sets H1..H4, the H2 gradient probe, and the final
equal-compute comparison, each one command.

Every run trains from the `cpu_biq2021` recipe (offline EfficientNet-Lite0 weights) on seeded,
disjoint train / val / test parts of the 4000 photos of BIQ2021's official training split (the
same parts for every row of a seed), selects its epoch on val (honest protocol) and is tested on
the test part, which no choice looks at. Each set's table gives, per row, the mean and std over
seeds of val PLCC (the selection value), test SRCC and PLCC and the training compute, and names
the row that validates best: choose on that column, report the test columns. Per-seed values,
configs and compute go to benchmarks/results/lml_experiments_<set>.json; each run's folder (with
its metrics.csv, readable with `nriqa analyze run`) stays under --output-dir, and a finished run
with the same config is reused, so a killed set continues where it stopped.

    python benchmarks/lml_experiments.py --list
    python benchmarks/lml_experiments.py --set H2 --seeds 0 1 2
    python benchmarks/lml_experiments.py --set final --seeds 0 1 2 --train 2000 --val 500 \\
        --test 1500 --lml method.lml.lambda_c=0.01 optim.epochs=8
    python benchmarks/lml_experiments.py --set final --quick     # a tiny version, minutes

Rows may depend on others of the same seed: ``teacher`` (QFM-IQM's frozen teacher is that row's
model, and its training compute counts in the row's total) and ``match`` (DEIQT trained for the
number of epochs that gives the named row's total compute: forward + 2 x backward crops, the
teachers' training included; the achieved ratio is in the table).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from accuracy_biq2021 import parts
from common import biq2021_root, markdown, write_results

from nriqa.config import load_config
from nriqa.data.registry import load_labels
from nriqa.engine.train import fit
from nriqa.reports.run_logs import clip_rate, gradient_table, read_metrics

LML = ["method.name=lml"]
LML_4X4 = [*LML, "data.batch_size=4"]  # 16 crops per step: DEIQT's crops and steps
DIAG = ["diagnostics.grad_every=10"]


def row(name: str, overrides: list[str], teacher: str | None = None, match: str | None = None,
        note: str = "") -> dict:
    return {"name": name, "overrides": overrides, "teacher": teacher, "match": match, "note": note}


SETS: dict[str, list[dict]] = {
    # H1: budget and batch. LML-IQA with lambda_c = 0 is DEIQT with LML-IQA's batch shape (K crops
    # of each image per step), plus its (unused) teacher passes.
    "H1": [
        row("deiqt", [], note="16 crops/step"),
        row("deiqt-64", ["data.batch_size=64"], note="64 crops/step: the steps of LML 16x4"),
        row("lml-c0-16x4", [*LML, "method.lml.lambda_c=0"], note="DEIQT in LML's batch shape"),
        row("lml-c0-4x4", [*LML_4X4, "method.lml.lambda_c=0"]),
        row("lml-16x4", LML),
        row("lml-4x4", LML_4X4),
    ],
    # H2: the contrastive gradient against the regression one (read with nriqa analyze run).
    "H2": [
        row("deiqt", DIAG),
        *[row(f"lml-c{c}", [*LML_4X4, *DIAG, f"method.lml.lambda_c={c}"])
          for c in ("0", "0.005", "0.01", "0.02", "0.05", "0.1")],
    ],
    # H3: the objective. Negatives of the same quality masked; what the projector reads.
    "H3": [
        row("deiqt", []),
        row("lml", LML_4X4),
        *[row(f"lml-negmask-{e}", [*LML_4X4, f"method.lml.neg_mask_eps={e}"])
          for e in ("0.02", "0.05", "0.1")],
        row("lml-proj-global", [*LML_4X4, "method.lml.proj_input=global"]),
        row("lml-proj-detached", [*LML_4X4, "method.lml.proj_input=detached"],
            note="null control: the contrastive loss cannot move the student"),
        row("lml-alpha-0", [*LML_4X4, "method.lml.alpha=0"]),
    ],
    # H4: the teacher. Faster EMA, a momentum ramp, no EMA, random saliency.
    "H4": [
        row("deiqt", []),
        row("lml", LML_4X4),
        row("lml-m0.99", [*LML_4X4, "method.lml.momentum=0.99"]),
        row("lml-m0.9", [*LML_4X4, "method.lml.momentum=0.9"]),
        row("lml-m-ramp", [*LML_4X4, "method.lml.momentum_ramp=cosine",
                           "method.lml.momentum_start=0.9"]),
        row("lml-no-ema", [*LML_4X4, "method.lml.ema=false"]),
        row("lml-random-saliency", [*LML_4X4, "method.lml.saliency=random"]),
    ],
    # The H2 probe: a few batches with the diagnostics on every step and the contrastive weight
    # at its full value from step 0 (no ramp); small val/test parts (see --probe-steps).
    "H2-probe": [
        row("deiqt", ["diagnostics.grad_every=1"], note="the clip rate without a contrastive term"),
        row("lml-16x4", [*LML, "diagnostics.grad_every=1", "method.lml.ramp_epochs=0"]),
        row("lml-4x4", [*LML_4X4, "diagnostics.grad_every=1", "method.lml.ramp_epochs=0"]),
    ],
    # The final comparison at equal compute.
    "final": [
        row("deiqt", []),
        row("qfm", ["method.name=qfm"], teacher="deiqt"),
        row("deiqt@qfm-compute", [], match="qfm", note="DEIQT for QFM-IQM's total compute"),
        row("deiqt-self-distilled", ["method.name=qfm", "method.qfm.matching=none"],
            teacher="deiqt", note="KD from the same teacher, no matching"),
        row("lml-alpha-0", [*LML_4X4, "method.lml.alpha=0"]),
        row("lml", LML_4X4),
        row("deiqt@lml-compute", [], match="lml", note="DEIQT for LML-IQA's compute"),
        row("qfm+lml", ["method.name=qfm+lml", "data.batch_size=4"], teacher="deiqt"),
    ],
}

QUICK = ["optim.epochs=1", "data.patch_num=4", "data.test_patch_num=1", "data.num_workers=0",
         "data.eval_batch_size=16"]


def cost(compute: dict) -> int:
    """Training cost in forward-crop units: a backward pass costs about two forward passes."""
    return int(compute["forward_crops"]) + 2 * int(compute["backward_crops"])


def ordered(rows: list[dict]) -> list[dict]:
    """Rows after the rows they depend on."""
    done, out = set(), []
    while len(out) < len(rows):
        for r in rows:
            deps = {d for d in (r["teacher"], r["match"]) if d}
            if r["name"] not in done and deps <= done:
                out.append(r)
                done.add(r["name"])
                break
        else:
            raise SystemExit("rows with missing or circular dependencies: "
                             + ", ".join(r["name"] for r in rows if r["name"] not in done))
    return out


def same_config(folder: Path, cfg) -> bool:
    try:
        saved = yaml.safe_load((folder / "config.yaml").read_text())
        return saved == cfg.model_dump(mode="json") and (folder / "results.json").is_file()
    except (OSError, yaml.YAMLError):
        return False


def run_one(base: list[str], r: dict, extra: list[str], out: Path, table, split, done: dict,
            log_path: Path) -> dict:
    overrides = [*base, *r["overrides"], *extra]
    if r["teacher"]:
        overrides.append(f"method.qfm.teacher_checkpoint={done[r['teacher']]['model']}")
    if r["match"]:
        # epochs that give the named row's total compute, from this row's per-epoch cost
        plain = load_config("cpu_biq2021", overrides)
        ref = done[r["match"]]
        per_epoch = cost(done["deiqt"]["compute"]) / done["deiqt"]["epochs"]
        epochs = max(1, math.floor(cost(ref["compute"]) / per_epoch + 0.5))  # nearest, half up
        overrides.append(f"optim.epochs={epochs}")
        if plain.optim.epochs != done["deiqt"]["epochs"]:
            raise SystemExit(f"{r['name']}: matching assumes the deiqt row's epoch count")
    cfg = load_config("cpu_biq2021", [*overrides, f"trainer.output_dir={out}"])
    t0 = time.perf_counter()
    if same_config(out, cfg):
        res = json.loads((out / "results.json").read_text())
        minutes = None
    else:
        res = fit(cfg, table, split, out).results
        minutes = (time.perf_counter() - t0) / 60
    if cfg.diagnostics.grad_every:
        res = {**res, "gradients": gradient_summary(out)}
    entry = {"row": r["name"], "model": str(out / "model.safetensors"), "epochs": cfg.optim.epochs,
             "val_plcc": res["select_plcc"], "test_srcc": res["test"]["srcc"],
             "test_plcc": res["test"]["plcc"], "selected_epoch": res["selected_epoch"],
             "compute": res.get("compute"), "minutes": minutes, "overrides": overrides,
             "gradients": res.get("gradients")}
    with open(log_path, "a") as fh:  # progress, so a long set can be watched
        fh.write(json.dumps({k: entry[k] for k in ("row", "val_plcc", "test_srcc", "epochs")}) + "\n")
    print(f"{r['name']}: val PLCC {entry['val_plcc']:.4f}, test SRCC {entry['test_srcc']:.4f}",
          flush=True)
    return entry


def gradient_summary(run_dir: Path) -> dict:
    """Over the whole run: each (group, term)'s mean weighted gradient norm, its ratio to the
    regression term's and its cosine with it, and the clip rate (``nriqa analyze run``'s values)."""
    frame = read_metrics(run_dir / "logs" / "metrics.csv")
    table = gradient_table(frame, per_epoch=False)
    out = {f"{t.group}/{t.term}": {"norm": t.norm, "ratio": t.ratio, "cos": t.cos,
                                   "weight": t.weight, "steps": t.steps}
           for t in table.itertuples()}
    return {"terms": out, "clip_rate": clip_rate(frame)}


def gradient_rows(runs: list[dict]) -> list[dict]:
    """Per run with diagnostics: the decoder's and backbone's contrastive / regression norm ratio
    and cosine, and the clip rate."""
    out = []
    for x in runs:
        g = x.get("gradients")
        if not g:
            continue
        r = {"row": x["row"], "seed": x["seed"], "clip_rate": g["clip_rate"]}
        for key, t in g["terms"].items():
            group, term = key.split("/")
            if term != "regression" and group in ("decoder", "backbone"):
                r[f"{group} {term}/reg"] = t["ratio"]
                r[f"{group} cos({term},reg)"] = t["cos"]
                r["steps"] = t["steps"]
        out.append(r)
    return out


def summarise(rows: list[dict], runs: list[dict]) -> list[dict]:
    ref_cost = {r["seed"]: cost(r["compute"]) for r in runs if r["row"] == "deiqt" and r["compute"]}
    out = []
    for r in rows:
        sel = [x for x in runs if x["row"] == r["name"]]
        if not sel:
            continue

        def stat(key, fn=np.mean, sel=sel):
            vals = [x[key] for x in sel if x[key] is not None]
            return float(fn(vals)) if vals else math.nan

        ratios = [cost(x["compute"]) / ref_cost[x["seed"]] for x in sel
                  if x["compute"] and x["seed"] in ref_cost]
        out.append({"row": r["name"], "seeds": len(sel),
                    "val_plcc": stat("val_plcc"), "val_plcc_std": stat("val_plcc", np.std),
                    "test_srcc": stat("test_srcc"), "test_srcc_std": stat("test_srcc", np.std),
                    "test_plcc": stat("test_plcc"), "test_plcc_std": stat("test_plcc", np.std),
                    "epochs": stat("epochs"),
                    "compute_vs_deiqt": float(np.mean(ratios)) if ratios else math.nan,
                    "note": r["note"]})
    best = max(out, key=lambda s: s["val_plcc"] if not math.isnan(s["val_plcc"]) else -1)
    for s in out:
        s["best_val"] = "<- best val" if s is best else ""
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=sorted(SETS), help="the experiment set")
    ap.add_argument("--list", action="store_true", help="print the sets and their rows")
    ap.add_argument("--rows", nargs="+", help="only these rows of the set (and what they need)")
    ap.add_argument("--train", type=int, default=300)
    ap.add_argument("--val", type=int, default=100)
    ap.add_argument("--test", type=int, default=400)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--lml", nargs="*", default=[], metavar="key=value",
                    help="overrides for every row that runs LML-IQA (e.g. chosen defaults)")
    ap.add_argument("--qfm", nargs="*", default=[], metavar="key=value",
                    help="overrides for every row that runs QFM-IQM")
    ap.add_argument("--quick", action="store_true",
                    help="a tiny version: 2 seeds, 24/12/12 photos, 1 epoch, 1 test crop")
    ap.add_argument("--probe-steps", type=int, default=40,
                    help="H2-probe: training batches per run")
    ap.add_argument("--output-dir", default="runs/lml_experiments")
    ap.add_argument("--name", help="results file name (default lml_experiments_<set>[_quick])")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="for every row")
    args = ap.parse_args()
    if args.list or not args.set:
        for name, rows in SETS.items():
            print(f"{name}:")
            for r in rows:
                deps = ", ".join(f"{k}={r[k]}" for k in ("teacher", "match") if r[k])
                print(f"  {r['name']:24s} {' '.join(r['overrides']) or '(cpu_biq2021)'}"
                      + (f"  [{deps}]" if deps else ""))
        return
    torch.set_num_threads(1)
    rows = SETS[args.set]
    if args.rows:
        need = set(args.rows)
        for r in rows:
            if r["name"] in need:
                need |= {d for d in (r["teacher"], r["match"]) if d}
                if r["match"]:
                    need.add("deiqt")
        rows = [r for r in rows if r["name"] in need]
    seeds, sizes, extra_all = args.seeds, (args.train, args.val, args.test), list(args.overrides)
    if args.quick:
        seeds, sizes, extra_all = seeds[:2] if len(seeds) >= 2 else [0, 1], (24, 12, 12), [*QUICK, *extra_all]
    if args.set == "H2-probe":
        sizes = (args.train, min(args.val, 50), min(args.test, 50))
        extra_all = ["optim.epochs=1", f"trainer.limit_train_batches={args.probe_steps}",
                     "data.test_patch_num=1", *extra_all]
    name = args.name or f"lml_experiments_{args.set}" + ("_quick" if args.quick else "")
    out_root = Path(args.output_dir) / name

    root = biq2021_root()
    table = load_labels("biq2021", str(root), label_file=str(root / "train_subset.csv"))
    runs = []
    for seed in seeds:
        base = [f"data.root={root}", f"data.label_file={root / 'train_subset.csv'}",
                f"trainer.seed={seed}", "trainer.progress_bar=false"]
        split = parts(len(table), sizes, seed)
        done: dict[str, dict] = {}
        for r in ordered(rows):
            method = next((o.split("=", 1)[1] for o in r["overrides"] if o.startswith("method.name=")),
                          "deiqt")
            extra = [*extra_all, *(args.lml if "lml" in method else []),
                     *(args.qfm if "qfm" in method else [])]
            entry = run_one(base, r, extra, out_root / r["name"] / f"seed{seed}", table, split, done,
                            out_root / "progress.jsonl")
            entry["seed"] = seed
            done[r["name"]] = entry
            runs.append(entry)
    summary = summarise(rows, runs)
    head = (f"Issue 11, set {args.set}{' (quick)' if args.quick else ''}: BIQ2021 train {sizes[0]}, "
            f"val {sizes[1]}, test {sizes[2]}, seeds {seeds}; recipe cpu_biq2021 "
            f"{' '.join(extra_all)}; LML overrides {' '.join(args.lml) or '-'}; QFM overrides "
            f"{' '.join(args.qfm) or '-'}. Mean ± std over seeds; choose on val_plcc (honest "
            f"selection), report test. compute_vs_deiqt: total training cost (forward + 2 x "
            f"backward crops, teachers' training included) over the deiqt row's.\n\n")
    cols = ["row", "seeds", "val_plcc", "val_plcc_std", "test_srcc", "test_srcc_std", "test_plcc",
            "test_plcc_std", "epochs", "compute_vs_deiqt", "best_val", "note"]
    text = head + markdown(summary, cols)
    grads = gradient_rows(runs)
    if grads:
        gcols = list(dict.fromkeys(k for g in grads for k in g))
        text += ("\nGradient diagnostics (means over the diagnosed steps; ratios of the weighted "
                 "gradient norms, cosines of the gradients; clip rate = share of steps clipped):"
                 "\n\n" + markdown(grads, gcols))
    write_results(name, {"args": vars(args), "set": args.set, "rows": rows, "runs": runs,
                         "summary": summary}, text)


if __name__ == "__main__":
    main()
