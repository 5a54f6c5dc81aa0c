"""The evaluation protocol: N seeded splits, train and test on each, cross-dataset tests, a summary.

``honest`` (default) selects each split's epoch on a validation part carved out of the training
part; ``paper`` selects on the test part as DEIQT's code does, which is optimistic. Every result
file and table names the protocol that produced it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from nriqa.config import DataConfig, RunConfig, save_config
from nriqa.data.splits import Split, make_split
from nriqa.engine.train import check_resumable, check_trainer_settings, fit
from nriqa.errors import ConfigError, DataError
from nriqa.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)
METRICS = ("srcc", "plcc", "krcc")


def load_table(data: DataConfig) -> pd.DataFrame:
    from nriqa.data.registry import load_labels

    table = load_labels(data.dataset, data.root, layout=data.layout, label_file=data.label_file,
                        allow_outside_root=data.allow_outside_root, **data.options)
    table.attrs["dataset"] = data.dataset
    return table


def split_for(cfg: RunConfig, table: pd.DataFrame, index: int) -> Split:
    s = cfg.split
    if s.file:
        return Split.from_json(s.file, table, dataset_root(cfg.data, table))
    if s.mode == "official":
        ratios = (1.0, 0.0) if s.protocol == "paper" else s.ratios
        return make_split(table, mode="official", seed=s.seed, index=index, fraction=s.fraction,
                          ratios=ratios, dataset=cfg.data.dataset)
    return make_split(table, mode=s.protocol, seed=s.seed, index=index, fraction=s.fraction,
                      ratios=s.ratios, dataset=cfg.data.dataset)


def dataset_root(data: DataConfig, table: pd.DataFrame) -> str:
    """The folder split files are relative to: the dataset root, else the images' common folder."""
    return data.root or os.path.commonpath(list(table["path"]))


def run_protocol(cfg: RunConfig, n_splits: int | None = None) -> dict:
    """Train and test on ``n_splits`` splits; write per-split results and ``summary.json/.md``."""
    n = n_splits or cfg.protocol.n_splits
    if cfg.split.file and n > 1:
        raise ConfigError("split.file gives one split: set protocol.n_splits=1")
    check_trainer_settings(cfg)  # before anything is written
    out = Path(cfg.trainer.output_dir)
    if cfg.trainer.resume and (out / "config.yaml").is_file():
        check_resumable(cfg, out / "config.yaml")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    table = load_table(cfg.data)
    cross = [(d, load_table(d)) for d in cfg.protocol.cross_datasets]
    per_split = []
    for i in range(n):
        split_dir = out / f"split_{i:02d}"
        done = split_dir / "results.json"
        if cfg.trainer.resume and done.is_file():
            log.info("split %d already finished: %s", i, done)
            results = json.loads(done.read_text())
            if cross and set(results.get("cross", {})) != {d.dataset for d, _ in cross}:
                results["cross"] = {d.dataset: cross_evaluate(split_dir / "model.safetensors", d, t, cfg)
                                    for d, t in cross}
                atomic_write_json(done, results)
            per_split.append(results)
            continue
        split = split_for(cfg, table, cfg.split.index + i)
        split_dir.mkdir(parents=True, exist_ok=True)
        split.to_json(split_dir / "split.json", table, dataset_root(cfg.data, table))
        split_cfg = cfg.model_copy(deep=True)
        split_cfg.trainer.output_dir = str(split_dir)
        result = fit(split_cfg, table, split, split_dir)
        results = result.results
        if cross:
            results["cross"] = {d.dataset: cross_evaluate(result.model_path, d, t, cfg) for d, t in cross}
            atomic_write_json(done, results)
        per_split.append(results)
    summary = summarise(per_split, cfg)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", summary_markdown(summary))
    return summary


def cross_evaluate(model_path: Path, data: DataConfig, table: pd.DataFrame, cfg: RunConfig) -> dict:
    """Test a trained model on a whole other dataset (no training on it)."""
    from nriqa.data.registry import get_spec
    from nriqa.inference.scoring import Scorer
    from nriqa.metrics import evaluate

    scorer = Scorer.from_checkpoint(model_path, batch_size=cfg.data.eval_batch_size,
                                    num_workers=cfg.data.num_workers,
                                    resize=data.resize or get_spec(data.dataset).resize)  # the target dataset's convention
    results = scorer.score_paths(list(table["path"]))
    bad = [r.error for r in results if r.error]
    if bad:
        raise DataError(None, f"{len(bad)} image(s) of {data.dataset} could not be scored, e.g. {bad[0]}")
    pred = np.array([r.score for r in results])
    y = table["label"].to_numpy()
    metrics = evaluate(pred, y)
    if cfg.protocol.fit != "none":
        metrics |= evaluate(pred, y, fit=cfg.protocol.fit)
    return metrics


def summarise(per_split: list[dict], cfg: RunConfig) -> dict:
    def stats(key: str, part: str = "test") -> dict:
        values = np.array([r[part][key] for r in per_split if r.get(part)], dtype=float)
        return {"median": float(np.median(values)), "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0, "n": len(values)}

    summary = {
        "dataset": cfg.data.dataset, "method": cfg.method.name, "protocol": cfg.split.protocol,
        "selection": per_split[0]["selection"] if per_split else None,
        "splits": len(per_split), "fraction": cfg.split.fraction,
        "test": {k: stats(k) for k in METRICS},
        "test_last_epoch": {k: stats(k, "test_last_epoch") for k in METRICS},
        "per_split": per_split,
    }
    cross_names = sorted({name for r in per_split for name in r.get("cross", {})})
    summary["cross"] = {
        name: {k: float(np.median([r["cross"][name][k] for r in per_split])) for k in METRICS}
        for name in cross_names
    }
    return summary


def summary_markdown(summary: dict) -> str:
    lines = [
        f"# {summary['method']} on {summary['dataset']}",
        "",
        f"Protocol: **{summary['protocol']}** ({summary['selection']}); {summary['splits']} split(s); "
        f"training fraction {summary['fraction']}.",
        "",
        "| metric | median | mean | std |",
        "|---|---|---|---|",
    ]
    for key, s in summary["test"].items():
        lines.append(f"| {key.upper()} | {s['median']:.4f} | {s['mean']:.4f} | {s['std']:.4f} |")
    if summary["cross"]:
        lines += ["", "Cross-dataset (median over splits):", "", "| dataset | SRCC | PLCC | KRCC |", "|---|---|---|---|"]
        for name, m in summary["cross"].items():
            lines.append(f"| {name} | {m['srcc']:.4f} | {m['plcc']:.4f} | {m['krcc']:.4f} |")
    return "\n".join(lines) + "\n"
