"""``nriqa ablate``: run named variants of a recipe on the same splits and seeds, one table.

Each method module lists its variants as ``ABLATIONS = [(name, [overrides...]), ...]``; the runner
applies them on top of the recipe and the user's overrides, so every variant sees the same data,
splits, seeds and budget and differs only in its own switches.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pandas as pd

from nriqa.config import load_config
from nriqa.errors import ConfigError
from nriqa.io import atomic_write, atomic_write_text

SOURCES = {"qfm": "nriqa.methods.qfm", "lml": "nriqa.methods.lml"}


def variants(method: str) -> list[tuple[str, list[str]]]:
    if method not in SOURCES:
        raise ConfigError(f"no ablations for {method!r}; known: {sorted(SOURCES)}")
    return list(importlib.import_module(SOURCES[method]).ABLATIONS)


def run_ablation(recipe: str | None, method: str, overrides: list[str], output_dir: str | Path,
                 only: list[str] | None = None) -> pd.DataFrame:
    from nriqa.protocol.runner import run_protocol

    out = Path(output_dir)
    available = variants(method)
    if method == "lml":  # CLS-attention saliency needs a ViT; skip it on other backbones
        from nriqa.methods.lml import ablations_for
        from nriqa.models.backbones import Backbone

        base = load_config(recipe, overrides).model
        available = ablations_for(
            Backbone(base.backbone, weights="none", img_size=base.img_size, **base.backbone_kwargs).has_cls)
    chosen = [(n, o) for n, o in available if not only or n in only]
    unknown = set(only or []) - {n for n, _ in chosen}
    if unknown:
        raise ConfigError(f"unknown variant(s) {sorted(unknown)}; known: {[n for n, _ in variants(method)]}")
    rows = []
    for name, extra in chosen:
        # QFM-IQM variants share one teacher per split instead of each fitting its own.
        cfg = load_config(recipe, [f"method.qfm.teacher_dir={out / 'teachers'}", *overrides, *extra,
                                   f"trainer.output_dir={out / name}"])
        summary = run_protocol(cfg)
        row = {"variant": name, "overrides": " ".join(extra) or "-", "protocol": summary["protocol"],
               "splits": summary["splits"]}
        for key in ("srcc", "plcc"):
            s = summary["test"][key]
            row |= {f"{key}_median": s["median"], f"{key}_mean": s["mean"], f"{key}_std": s["std"]}
        rows.append(row)
        table = pd.DataFrame(rows)
        atomic_write(out / "ablation.csv", lambda tmp, t=table: t.to_csv(tmp, index=False))
    table = pd.DataFrame(rows)
    atomic_write_text(out / "ablation.md", ablation_markdown(table))
    return table


def ablation_markdown(table: pd.DataFrame) -> str:
    lines = ["| variant | SRCC median | PLCC median | SRCC mean ± std | PLCC mean ± std | protocol | splits | overrides |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.variant} | {r.srcc_median:.4f} | {r.plcc_median:.4f} | "
                     f"{r.srcc_mean:.4f} ± {r.srcc_std:.4f} | {r.plcc_mean:.4f} ± {r.plcc_std:.4f} | "
                     f"{r.protocol} | {r.splits} | `{r.overrides}` |")
    return "\n".join(lines) + "\n"
