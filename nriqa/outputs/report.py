"""Outputs for people: score files, a predicted-vs-label scatter plot, a short Markdown report."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nriqa.io import atomic_write, atomic_write_text


def write_scores(results: Sequence, path: str | Path) -> Path:
    """``path,score,error,backend`` rows as CSV, JSON Lines or a JSON list, chosen by the file's
    suffix, written whole and atomically (``nriqa score`` streams instead: outputs/stream.py)."""
    from nriqa.outputs.stream import COLUMNS, FORMATS, row

    path = Path(path)
    rows = [row(r) for r in results]
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: output must end in {', '.join(FORMATS)}")
    if suffix == ".json":
        return atomic_write_text(path, json.dumps(rows, indent=2) + "\n")
    if suffix == ".jsonl":
        return atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
            w.writeheader()
            w.writerows({**r, "score": "" if r["score"] is None else r["score"]} for r in rows)

    return atomic_write(path, write)


def scatter_plot(pred, label, path: str | Path, title: str = "", fit_logistic: bool = True) -> Path:
    """Predicted score against label, with the VQEG logistic fit drawn when it converges."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nriqa.errors import MetricError
    from nriqa.metrics import fit_logistic as fit
    from nriqa.metrics import logistic4

    pred, label = np.asarray(pred, float), np.asarray(label, float)
    fig, ax = plt.subplots(figsize=(4.5, 4.2), dpi=120)
    ax.scatter(pred, label, s=10, alpha=0.6, edgecolors="none")
    if fit_logistic:
        try:
            params = fit(pred, label)
            xs = np.linspace(pred.min(), pred.max(), 200)
            ax.plot(xs, logistic4(xs, *params), color="C3", lw=1.5, label="4-parameter logistic")
            ax.legend(loc="lower right", fontsize=8)
        except MetricError:
            pass
    ax.set_xlabel("predicted quality")
    ax.set_ylabel("label (normalised, higher = better)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".") or "png"))
    plt.close(fig)
    return path
