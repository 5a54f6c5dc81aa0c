"""``nriqa ablate``: run named variants of a recipe on the same splits and seeds, one table.

Each method registers its variants (``register_method(..., ablations=[(name, [overrides...]),
...])``, :mod:`nriqa.methods.registry`); the runner applies them on top of the recipe and the
user's overrides, so every variant sees the same data, splits, seeds and budget and differs only
in its own switches.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from nriqa.config import load_config, merge, parse_overrides
from nriqa.errors import ConfigError
from nriqa.io import atomic_write, atomic_write_text
from nriqa.methods import ablation_variants
from nriqa.methods.registry import ablation_defaults
from nriqa.protocol.runner import run_protocol


def variants(method: str) -> list[tuple[str, list[str]]]:
    """The variants ``method`` registered: ``[(name, [overrides...]), ...]``."""
    return ablation_variants(method)


def run_ablation(recipe: str | None, method: str, overrides: list[str], output_dir: str | Path,
                 only: list[str] | None = None) -> pd.DataFrame:
    out = Path(output_dir)
    # What every variant shares (e.g. QFM-IQM's teacher folder: one teacher per split instead of
    # one per variant), then the user's overrides; each variant's own switches go on top.
    base = load_config(recipe, [*ablation_defaults(out), *overrides])
    available = ablation_variants(method, base)  # without those this config cannot run
    chosen = [(n, o) for n, o in available if not only or n in only]
    unknown = set(only or []) - {n for n, _ in chosen}
    if unknown:
        raise ConfigError(f"unknown variant(s) {sorted(unknown)}; known: {[n for n, _ in variants(method)]}")
    rows = []
    for name, extra in chosen:
        # On the resolved base (which spells the methods as method.names), so that a variant's
        # method.names replaces a recipe's old-style method.name instead of disagreeing with it.
        cfg = load_config(None, merge(base.model_dump(mode="json"),
                                      parse_overrides([*extra, f"trainer.output_dir={out / name}"])))
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
