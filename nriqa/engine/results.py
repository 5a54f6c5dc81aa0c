"""What a fit hands back and writes: the result record, the test predictions, and metrics of a
model computed in this process (no trainer)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from nriqa.config import RunConfig
from nriqa.data.splits import Split
from nriqa.engine.data import eval_dataset, eval_loader
from nriqa.io import atomic_write
from nriqa.metrics import evaluate


@dataclass
class FitResult:
    out_dir: Path
    model_path: Path  # the exported best model (.safetensors)
    results: dict  # what results.json holds


def run_results(cfg: RunConfig, parts: dict[str, pd.DataFrame], split: Split | None, *,
                selected_epoch: int, select_plcc: float | None, test: dict | None, exported: str,
                **extra) -> dict:
    """What ``results.json`` holds: the selection and test, the part sizes, the method and
    dataset, then ``extra`` (per-trainer facts: compute, history, ...) and the split."""
    results = {
        "protocol": cfg.split.protocol,
        "selection": "best val PLCC" if cfg.split.protocol == "honest"
        else "best test PLCC (paper protocol: optimistic)",
        "selected_epoch": selected_epoch,
        "select_plcc": select_plcc,
        "test": test,
        "exported": exported,
        "sizes": {k: len(v) for k, v in parts.items()},
        "method": cfg.method.name,
        "dataset": cfg.data.dataset,
        **extra,
    }
    if split is not None:
        results["split"] = {"index": split.index, "seed": split.seed, "mode": split.mode,
                            "fraction": split.fraction}
    return results


@torch.no_grad()
def predict_metrics(model, table: pd.DataFrame, cfg: RunConfig, settings,
                    return_predictions: bool = False) -> dict:
    """Metrics of ``model`` on ``table`` in this process (no trainer); with
    ``return_predictions`` also the scores, in table order, under ``"predictions"``."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    preds = [model.score_crops(b["image"].to(device)).float().cpu()
             for b in eval_loader(cfg, eval_dataset(cfg, table, settings), 0, 1)]
    model.train(was)
    scores = torch.cat(preds).numpy()
    metrics = evaluate(scores, table["label"].to_numpy())
    return {**metrics, "predictions": scores} if return_predictions else metrics


def write_predictions(path: Path, table: pd.DataFrame, arr) -> None:
    rows = arr[:, 0].astype(int)
    frame = pd.DataFrame({"path": table["path"].to_numpy()[rows], "prediction": arr[:, 1],
                          "label": arr[:, 2], "score": table["score"].to_numpy()[rows]})
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))
