"""What a training run logged, as tables: ``nriqa analyze run RUN_DIR``.

Reads ``RUN_DIR/logs/metrics.csv`` (Lightning's CSV log, written by every nriqa run) and prints

1. **per epoch**: the epoch mean of every training value (losses; LML-IQA's ``lml_pos_sim``,
   ``lml_intra_sim``, ``lml_inter_sim``, ``lml_salient_entropy``, ``lml_salient_agree``, ...;
   QFM-IQM's ``qfm_*``) and the validation metrics;
2. **gradients** (runs with ``diagnostics.grad_every > 0``): per epoch, parameter group and loss
   term, the mean norm of the term's weighted gradient, its ratio to the regression term's, its
   cosine with the regression gradient, and the clip rate (share of steps whose total gradient
   norm exceeded ``optim.grad_clip``) with the mean total norm.

A folder holding several runs (a protocol's ``split_*``, a benchmark's ``method/seedN``) gets one
report per run found below it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from nriqa.errors import ConfigError

EPOCH_SUFFIX = "_epoch"
REFERENCE_TERM = "regression"


def find_logs(path: str | Path) -> list[Path]:
    """The ``metrics.csv`` files of a run folder, of every run below a folder, or the file itself."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ConfigError(f"{path}: no such run folder")
    direct = path / "logs" / "metrics.csv"
    if direct.is_file():
        return [direct]
    found = sorted(path.glob("**/logs/metrics.csv"))
    if not found:
        raise ConfigError(f"{path}: no logs/metrics.csv in this folder or below it (is it a run's "
                          "trainer.output_dir?)")
    return found


def read_metrics(csv: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(csv)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ConfigError(f"{csv}: not a readable metrics.csv ({err})") from None
    if "epoch" not in frame.columns:
        raise ConfigError(f"{csv}: no 'epoch' column; not a Lightning metrics.csv")
    return frame


def epoch_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows: logged values (``train/..`` epoch means without the gradient ones, ``select/..``,
    or ``val/..`` in runs logged before the selection part was named so); columns: epochs."""
    cols = {}
    for col in frame.columns:
        if col.startswith("train/") and col.endswith(EPOCH_SUFFIX):
            name = col[len("train/"):-len(EPOCH_SUFFIX)]
            if not name.startswith(("grad/", "gradcos/")):  # those have their own tables
                cols[name] = col
        elif col.startswith(("select/", "val/")):
            cols[col] = col
    if not cols:
        return pd.DataFrame()
    by_epoch = frame.groupby("epoch")[list(cols.values())].mean()  # one value per epoch
    by_epoch.columns = list(cols)
    by_epoch = by_epoch.dropna(how="all")
    table = by_epoch.T
    table.columns = [f"epoch {int(e)}" for e in table.columns]
    return table


def gradient_table(frame: pd.DataFrame, per_epoch: bool = True) -> pd.DataFrame:
    """One row per (epoch, group, term), means over the diagnosed steps: ``norm`` (of the
    weighted term's gradient), ``ratio`` to the regression term's, ``cos`` with the regression
    term's gradient, the term's ``weight`` and the number of diagnosed ``steps``; empty without
    gradient diagnostics. ``per_epoch=False``: one row per (group, term) over the whole run
    (``epoch`` is -1)."""
    prefix = "train/grad/"
    norm_cols = [c for c in frame.columns if c.startswith(prefix) and c.count("/") == 3
                 and not c.startswith(prefix + "weight/") and not c.endswith(("_step", "_epoch"))]
    if not norm_cols:
        return pd.DataFrame()
    diagnosed = frame.dropna(subset=norm_cols, how="all")
    if not per_epoch:
        diagnosed = diagnosed.assign(epoch=-1)
    means = diagnosed.groupby("epoch").mean(numeric_only=True)
    counts = diagnosed.groupby("epoch").size()
    rows = []
    for epoch, row in means.iterrows():
        for col in norm_cols:
            group, term = col[len(prefix):].split("/")
            norm = row.get(col, math.nan)
            if pd.isna(norm):
                continue
            ref = row.get(f"{prefix}{group}/{REFERENCE_TERM}", math.nan)
            cos = math.nan
            for a, b in ((REFERENCE_TERM, term), (term, REFERENCE_TERM)):
                key = f"train/gradcos/{group}/{a}|{b}"
                if key in row.index and not pd.isna(row[key]):
                    cos = row[key]
            if term == REFERENCE_TERM:
                cos = 1.0 if norm > 0 else math.nan
            rows.append({"epoch": int(epoch), "group": group, "term": term, "norm": norm,
                         "ratio": norm / ref if ref and not pd.isna(ref) else math.nan,
                         "cos": cos, "weight": row.get(f"{prefix}weight/{term}", math.nan),
                         "steps": int(counts[epoch])})
    return pd.DataFrame(rows)


def clip_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per epoch: the clip rate and the mean total gradient norm (before clipping)."""
    rate, norm = "train/grad/clipped" + EPOCH_SUFFIX, "train/grad/total_norm" + EPOCH_SUFFIX
    if rate not in frame.columns:
        return pd.DataFrame()
    means = frame.groupby("epoch")[[rate, norm]].mean().dropna(how="all")
    means.columns = ["clip_rate", "total_norm"]
    return means.reset_index()


def clip_rate(frame: pd.DataFrame) -> float:
    """The share of training steps at which the grad-norm clip acted (the mean of the epoch
    rates; NaN without diagnostics)."""
    table = clip_table(frame)
    return float(table["clip_rate"].mean()) if not table.empty else math.nan


def run_report(csv: Path) -> dict:
    frame = read_metrics(csv)
    return {"run": str(csv.parent.parent), "epochs": epoch_table(frame),
            "gradients": gradient_table(frame), "clip": clip_table(frame)}


def _fmt(v) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def markdown_table(frame: pd.DataFrame, index: bool = False) -> str:
    if frame.empty:
        return ""
    data = frame.reset_index() if index else frame
    cols = [str(c) for c in data.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in data.iterrows():
        lines.append("| " + " | ".join(_fmt(v) for v in r.tolist()) + " |")
    return "\n".join(lines)


def format_report(report: dict) -> str:
    parts = [f"## {report['run']}", "", "### per epoch (training means, validation)", ""]
    epochs = report["epochs"]
    parts.append(markdown_table(epochs.rename_axis("value"), index=True) if not epochs.empty
                 else "(no epoch values logged yet)")
    grads = report["gradients"]
    if grads.empty:
        parts += ["", "(no gradient diagnostics: run with diagnostics.grad_every=N)"]
    else:
        parts += ["", "### gradient norm of each loss term (weighted), ratio to and cosine with "
                  "the regression term", "", markdown_table(grads)]
    clip = report["clip"]
    if not clip.empty:
        parts += ["", "### grad-norm clip", "", markdown_table(clip)]
    return "\n".join(parts) + "\n"


def report_json(report: dict) -> dict:
    return {"run": report["run"],
            "epochs": json.loads(report["epochs"].to_json(orient="index")) if not report["epochs"].empty else {},
            "gradients": report["gradients"].to_dict(orient="records"),
            "clip": report["clip"].to_dict(orient="records")}
