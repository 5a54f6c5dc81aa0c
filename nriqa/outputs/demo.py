"""``nriqa demo``: the main job on the embedded dataset, end to end on a CPU.

Builds the synthetic dataset from photos bundled with scikit-image and scikit-learn, trains the
DEIQT baseline from the offline EfficientNet-Lite0 ImageNet weights with a split by reference image
(so test contents are unseen), evaluates on the held-out references, scores a few images with the
exported model, and writes ``report.md`` with the metrics and a scatter plot.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from nriqa.config import load_config
from nriqa.io import atomic_write_text


def run_demo(output_dir: str | Path = "runs/demo", quick: bool = False,
             overrides: list[str] | None = None) -> Path:
    from nriqa.engine.train import fit
    from nriqa.outputs.report import scatter_plot, write_scores
    from nriqa.outputs.scoring import Scorer
    from nriqa.protocol.runner import load_table, split_for

    out = Path(output_dir)
    extra = [f"trainer.output_dir={out}"] + (["optim.epochs=1", "data.patch_num=2",
                                             "trainer.limit_train_batches=4"] if quick else [])
    cfg = load_config("cpu_demo", extra + list(overrides or []))
    start = time.perf_counter()
    table = load_table(cfg.data)
    split = split_for(cfg, table, cfg.split.index)
    out.mkdir(parents=True, exist_ok=True)
    result = fit(cfg, table, split, out)
    train_seconds = time.perf_counter() - start

    preds = pd.read_csv(out / "test_predictions.csv")
    scatter_plot(preds["prediction"], preds["label"], out / "scatter.png",
                 title=f"DEIQT ({cfg.model.backbone}) on held-out references")
    sample = preds.sort_values("label")["path"].iloc[:: max(len(preds) // 5, 1)].tolist()[:6]
    scored = Scorer.from_checkpoint(result.model_path).score_paths(sample)
    write_scores(scored, out / "sample_scores.csv")

    test = result.results["test"]
    lines = [
        "# nriqa demo report",
        "",
        f"DEIQT baseline, backbone `{cfg.model.backbone}` ({cfg.model.weights} weights), trained on "
        f"the embedded synthetic dataset ({len(table)} images, {table['group'].nunique()} reference "
        f"contents; labels are SSIM-based full-reference quality, not human opinion).",
        "",
        f"Split by reference image: train {len(split.train)}, validation {len(split.val)}, "
        f"test {len(split.test)} images. Protocol: **{result.results['protocol']}** "
        f"({result.results['selection']}), selected epoch {result.results['selected_epoch']}.",
        "",
        "| metric (held-out references) | value |",
        "|---|---|",
        *(f"| {k.upper()} | {v:.4f} |" for k, v in test.items() if k != "n"),
        f"| images | {test['n']} |",
        "",
        f"Wall time (build data + train + test): {train_seconds:.0f} s.",
        "",
        "Read these numbers as a check that the whole pipeline runs, not as a quality claim: the "
        "labels are a full-reference proxy (SSIM), which is not comparable across contents, and the "
        "test part is only the held-out reference photos, so a blind model must rank distortions "
        "on contents it never saw from a few minutes of CPU training. The models for real photos "
        "are measured in BENCHMARKS.md.",
        "",
        "![predicted vs label](scatter.png)",
        "",
        "Scores of a few held-out images (`nriqa score`, [0, 1], higher = better):",
        "",
        "| image | label | score |",
        "|---|---|---|",
    ]
    labels = dict(zip(preds["path"], preds["label"]))
    lines += [f"| {Path(r.path).name} | {labels[r.path]:.3f} | {r.score:.3f} |" for r in scored]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    return report
