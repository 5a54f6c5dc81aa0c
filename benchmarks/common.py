"""Helpers shared by the benchmark scripts: where the real data is, result files, tables."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NRIQA_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"


def biq2021_root() -> Path:
    root = SHARED / "biq2021"
    if not (root / "train_subset.csv").is_file():
        sys.exit(f"BIQ2021 photos not found at {root} (set NRIQA_SHARED_DATA)")
    return root


def machine() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "platform": platform.platform()}


def write_results(name: str, payload: dict, table: str) -> None:
    from nriqa.io import atomic_write_json, atomic_write_text

    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / f"{name}.json", {"machine": machine(), **payload})
    atomic_write_text(RESULTS / f"{name}.md", table)
    print(table)


def markdown(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"
