"""Outputs for people: score files, plots, and the demo's report (Markdown and a standalone HTML)."""

from __future__ import annotations

import base64
import csv
import html
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nriqa.io import atomic_write, atomic_write_text
from nriqa.reports.plotting import save_figure, subplots


def write_scores(results: Sequence, path: str | Path) -> Path:
    """``path,score,error,backend`` rows as CSV, JSON Lines or a JSON list, chosen by the file's
    suffix, written whole and atomically (``nriqa score`` streams instead: outputs/stream.py)."""
    from nriqa.inference.stream import COLUMNS, FORMATS, row

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


# ------------------------------------------------------------------------------ plots


def sound_logistic(pred, label) -> np.ndarray | None:
    """The VQEG 4-parameter logistic mapping ``pred`` to ``label``, or None when the fit is not
    sound: the ranking is too weak for a curve to mean anything (SRCC under 0.5), the fit failed,
    its midpoint lies outside the predictions, it collapsed into a step (slope width under 2 % of
    the prediction range), it is not increasing, it spans under half of the labels' range, or it
    fits worse than a straight line."""
    from scipy import stats

    from nriqa.errors import MetricError
    from nriqa.metrics import fit_logistic, logistic4

    pred, label = np.asarray(pred, float), np.asarray(label, float)
    if not stats.spearmanr(pred, label)[0] >= 0.5:
        return None
    try:
        b1, b2, b3, b4 = params = fit_logistic(pred, label)
    except MetricError:
        return None
    lo, hi = pred.min(), pred.max()
    if not (lo <= b3 <= hi) or abs(b4) < 0.02 * (hi - lo) or b1 <= b2:
        return None
    span = logistic4(hi, *params) - logistic4(lo, *params)
    if span < 0.5 * np.ptp(label):
        return None
    fitted = logistic4(pred, *params)
    line = np.polyval(np.polyfit(pred, label, 1), pred)
    if np.mean((fitted - label) ** 2) > np.mean((line - label) ** 2):
        return None
    return params


def scatter_plot(pred, label, path: str | Path, title: str = "", fit_logistic: bool = True,
                 groups=None) -> Path:
    """Predicted score against label, SRCC/PLCC written on it; the logistic drawn only when
    :func:`sound_logistic` accepts it (else the plot says so). ``groups`` colours the points."""
    from nriqa.metrics import evaluate, logistic4

    pred, label = np.asarray(pred, float), np.asarray(label, float)
    fig, ax = subplots(figsize=(5.2, 4.6), dpi=120)
    if groups is None:
        ax.scatter(pred, label, s=12, alpha=0.65, edgecolors="none")
    else:
        groups = np.asarray(groups)
        for i, g in enumerate(dict.fromkeys(groups)):
            m = groups == g
            ax.scatter(pred[m], label[m], s=12, alpha=0.7, edgecolors="none", color=f"C{i}",
                       label=str(g))
    m = evaluate(pred, label)
    ax.text(0.03, 0.97, f"SRCC {m['srcc']:.3f}\nPLCC {m['plcc']:.3f}\nn = {m['n']}",
            transform=ax.transAxes, va="top", ha="left", fontsize=10,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85, "edgecolor": "0.8"})
    params = sound_logistic(pred, label) if fit_logistic else None
    if params is not None:
        xs = np.linspace(pred.min(), pred.max(), 200)
        ax.plot(xs, logistic4(xs, *params), color="0.2", lw=1.5, label="logistic fit")
    elif fit_logistic:
        ax.text(0.97, 0.97, "no logistic drawn:\nthe fit is not sound", transform=ax.transAxes,
                va="top", ha="right", fontsize=7, color="0.4")
    if groups is not None or params is not None:
        ax.legend(loc="lower right", fontsize=7, framealpha=0.85)
    ax.set_xlabel("predicted quality")
    ax.set_ylabel("label (KADID-10k human score)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def per_type_plot(frame, path: str | Path, title: str = "", probe=None) -> Path:
    """SRCC within each distortion type (bars), for the model and, as a lighter bar, the probe.

    ``frame`` has columns ``dist_type``, ``prediction``, ``label`` (``probe``: same rows' probe
    predictions)."""
    from scipy import stats

    frame = frame.assign(probe=probe) if probe is not None else frame
    rows = []
    for name, part in frame.groupby("dist_type"):
        model = stats.spearmanr(part["prediction"], part["label"])[0]
        base = stats.spearmanr(part["probe"], part["label"])[0] if probe is not None else np.nan
        rows.append((name, np.nan_to_num(model), np.nan_to_num(base)))
    rows.sort(key=lambda r: r[1])
    names = [r[0] for r in rows]
    y = np.arange(len(rows))
    fig, ax = subplots(figsize=(6.0, 0.28 * len(rows) + 1.2), dpi=120)
    h = 0.4 if probe is not None else 0.7
    ax.barh(y + (h / 2 if probe is not None else 0), [r[1] for r in rows], height=h,
            color="C0", label="trained model")
    if probe is not None:
        ax.barh(y - h / 2, [r[2] for r in rows], height=h, color="C7", alpha=0.7,
                label="frozen-feature probe")
        ax.legend(loc="lower right", fontsize=7)
    for i, r in enumerate(rows):
        ax.text(max(r[1], 0) + 0.01, i + (h / 2 if probe is not None else 0), f"{r[1]:.2f}",
                va="center", fontsize=7)
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlim(min(-0.2, min(min(r[1], r[2]) for r in rows) - 0.05), 1.08)
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_xlabel("SRCC within the type (held-out photos, 5 levels each)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def gallery_plot(items: Sequence[dict], path: str | Path, columns: int = 4, title: str = "") -> Path:
    """Thumbnails in rows; each item: ``path``, ``caption``, optional ``row`` (a row heading)."""
    from PIL import Image

    rows = -(-len(items) // columns)
    fig, axes = subplots(rows, columns, figsize=(2.6 * columns, 2.45 * rows), dpi=110,
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, item in zip(axes.flat, items):
        with Image.open(item["path"]) as im:
            im = im.convert("RGB")
            im.thumbnail((320, 320))
            ax.imshow(np.asarray(im))
        ax.set_title(item["caption"], fontsize=7.5)
    for r in range(rows):
        heading = items[r * columns].get("row") if r * columns < len(items) else None
        if heading:
            axes[r, 0].text(-0.06, 0.5, heading, transform=axes[r, 0].transAxes, rotation=90,
                            va="center", ha="right", fontsize=9, weight="bold")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


# ------------------------------------------------------------------------------ the demo report


def gallery_items(preds, per_row: int = 4) -> list[dict]:
    """Held-out images: the lowest-labelled, the highest-labelled and the biggest misses (the
    largest gaps between prediction and label, after the least-squares line from prediction to
    label, so a shift or scale of the scores is not counted as a miss)."""
    preds = preds.copy()
    fit = np.polyfit(preds["prediction"], preds["label"], 1)
    preds["mapped"] = np.polyval(fit, preds["prediction"])
    preds["miss"] = (preds["mapped"] - preds["label"]).abs()

    def pick(frame, heading):
        return [{"path": r.path, "row": heading if i == 0 else None,
                 "caption": f"{r.group} · {r.dist_type} L{int(r.level)}\n"
                            f"label {r.label:.2f} · predicted {r.prediction:.2f}"}
                for i, r in enumerate(frame.head(per_row).itertuples())]

    lowest = preds.sort_values(["label", "miss"], ascending=[True, True])
    highest = preds.sort_values(["label", "miss"], ascending=[False, True])
    misses = preds.sort_values("miss", ascending=False)
    return (pick(lowest, "worst quality") + pick(highest, "best quality")
            + pick(misses, "biggest misses"))


def shipped_model_section(scorer, images: Sequence[tuple[str, str]], out_dir: Path,
                          name: str = "the shipped model") -> list[str]:
    """Report lines: ``scorer``'s scores of ``images`` ((caption, path) pairs, e.g. a few bundled
    photos and distorted copies of them), with a gallery picture. The hook for a pretrained model
    shipped with nriqa: the demo calls it when one is registered."""
    results = scorer.score_paths([p for _, p in images])
    items = [{"path": p, "caption": f"{c}\nscore {r.score:.2f}" if not r.error else f"{c}\n{r.error}"}
             for (c, p), r in zip(images, results)]
    gallery_plot(items, out_dir / "shipped_model.png", columns=min(4, len(items)))
    lines = [f"## Scores of {name}", "", "| image | score |", "|---|---|"]
    lines += [f"| {c} | {r.score:.3f} |" for (c, _), r in zip(images, results)]
    return lines + ["", "![shipped model](shipped_model.png)", ""]


def _shipped_model_lines(out_dir: Path, facts: dict) -> list[str]:
    """Scores of nriqa's shipped pretrained model, when one is registered (nriqa.inference.zoo)."""
    from nriqa.inference import zoo
    from nriqa.inference.scoring import Scorer

    if zoo.DEFAULT_MODEL not in zoo.registry():
        return []
    root, test = Path(facts["dataset"]), facts["parts"]["test"]
    ref = sorted(test["group"].unique())[0]
    chosen = test[(test["group"] == ref) & test["level"].isin([1, 3, 5])
                  & test["dist_type"].isin(["gaussian_blur", "jpeg", "white_noise"])]
    images = [(f"{ref} (reference)", str(root / "refs" / f"{ref}.png"))]
    images += [(f"{r.dist_type} L{int(r.level)}", r.path) for r in chosen.itertuples()]
    return shipped_model_section(Scorer.from_pretrained(), images, out_dir,
                                 name=f"`{zoo.DEFAULT_MODEL}`")


def write_demo_report(out_dir: Path, facts: dict, model_path: Path) -> Path:
    """report.md and a self-contained report.html, with scatter.png, per_type.png, gallery.png."""
    import pandas as pd

    from nriqa.metrics import evaluate

    out_dir = Path(out_dir)
    cfg, parts, results, probe = facts["cfg"], facts["parts"], facts["results"], facts["probe"]
    preds = pd.read_csv(out_dir / "test_predictions.csv")
    info = parts["test"].set_index("path")[["group", "dist_type", "level"]]
    preds = preds.join(info, on="path")
    test_probe = pd.Series(probe["test_predictions"], index=parts["test"]["path"])
    preds["probe"] = test_probe.reindex(preds["path"]).to_numpy()

    scatter_plot(preds["prediction"], preds["label"], out_dir / "scatter.png",
                 title=f"trained DEIQT ({cfg.model.backbone}) on held-out photos",
                 groups=preds["group"])
    scatter_plot(preds["probe"], preds["label"], out_dir / "scatter_probe.png",
                 title="frozen-feature probe (ridge on ImageNet features), same photos",
                 groups=preds["group"])
    per_type_plot(preds, out_dir / "per_type.png", probe=preds["probe"],
                  title="SRCC per distortion type, held-out photos")
    gallery_plot(gallery_items(preds), out_dir / "gallery.png",
                 title="held-out images: label (KADID human score, 0..1) and predicted score")

    test, t, load, refs = results["test"], facts["timing"], facts["load"], facts["refs"]
    probe_test = probe["test"]
    per_photo = [(g, evaluate(p["prediction"], p["label"])) for g, p in preds.groupby("group")]
    lines = [
        "# nriqa demo report" + (" (--quick)" if facts["quick"] else ""),
        "",
        f"A blind (no-reference) quality model, DEIQT on `{cfg.model.backbone}` "
        f"({_weights(cfg.model.weights)}), trained on a CPU on nriqa's embedded dataset: "
        f"{len(facts['refs']['train'])} + {len(refs['select'])} + {len(refs['test'])} photos "
        f"bundled with scikit-image, scikit-learn and matplotlib, each distorted with "
        f"{parts['train']['dist_type'].nunique()} of KADID-10k's distortion types"
        f"{_distortion_set(facts.get('distortions'))} at its 5 levels, "
        "each image labelled with the mean score KADID-10k's human raters gave that distortion at "
        "that level (docs/embedded_dataset.md).",
        "",
        f"**Held-out photos** ({', '.join(refs['test'])}): never seen in training, nor used to "
        "choose anything. The epoch was chosen on the validation photos "
        f"({', '.join(refs['select'])}); the training photos were {', '.join(refs['train'])}.",
        "",
        "| held-out photos | SRCC | PLCC | KRCC | RMSE | images |",
        "|---|---|---|---|---|---|",
        f"| **trained model** | **{test['srcc']:.3f}** | **{test['plcc']:.3f}** | "
        f"{test['krcc']:.3f} | {test['rmse']:.3f} | {test['n']} |",
        f"| frozen-feature probe (ridge on the untrained backbone, alpha {probe['alpha']:g} chosen "
        f"on validation) | {probe_test['srcc']:.3f} | {probe_test['plcc']:.3f} | "
        f"{probe_test['krcc']:.3f} | {probe_test['rmse']:.3f} | {probe_test['n']} |",
        *(f"| trained model, {g} only | {m['srcc']:.3f} | {m['plcc']:.3f} | {m['krcc']:.3f} | "
          f"{m['rmse']:.3f} | {m['n']} |" for g, m in (per_photo if len(per_photo) > 1 else [])),
        "",
        "![predicted vs label](scatter.png) ![probe](scatter_probe.png)",
        "",
        "The probe shows what ImageNet features already tell about quality; the gap between the "
        "two rows is what training added. SRCC per distortion type (how well the model orders the "
        "five levels of one distortion, across the held-out photos):",
        "",
        "![SRCC per type](per_type.png)",
        "",
        "## Held-out images",
        "",
        "The lowest- and highest-quality held-out images and the model's biggest misses (after a "
        "straight-line mapping from prediction to label):",
        "",
        "![gallery](gallery.png)",
        "",
    ]
    lines += _shipped_model_lines(out_dir, facts)
    built = "from the cache" if t["cached"] else f"built in {t['build_s']:.0f} s"
    lines += [
        "## How this was run",
        "",
        f"- Training: {results['sizes']['train']} images, {cfg.optim.epochs} epoch(s), epoch "
        f"{results['selected_epoch'] + 1} selected by validation PLCC "
        f"({results['select_plcc']:.3f}); batch {cfg.data.batch_size}, crops "
        f"{cfg.data.crop_size} px, lr {cfg.optim.lr:g}; frozen: {', '.join(cfg.model.freeze) or 'nothing'}.",
        f"- Wall time: {t['wall_s']:.0f} s in all (dataset {built}, "
        f"probe {t['probe_s']:.0f} s, training and testing {t['train_s']:.0f} s), "
        f"{facts['threads']} torch thread(s).",
        f"- Machine load (1/5/15-minute load averages): {_fmt_load(load['start'])} at the start, "
        f"{_fmt_load(load['end'])} at the end; other programs running at the same time slow a run.",
        f"- Files: the model `{Path(model_path).name}`, `config.yaml`, `results.json`, "
        f"`test_predictions.csv`{', `logs/`' if (Path(out_dir) / 'logs').is_dir() else ''}; "
        f"the dataset is cached at `{facts['dataset']}`.",
        f"- Training: {_training_kind(cfg)}.",
        "- Limits: the labels are KADID-10k's averages per distortion type and level, not ratings "
        "of these very images, and the distortions are reconstructions of KADID's; the numbers "
        "measure how well the model recognises distortions and their strength on unseen photos, "
        "not agreement with people on real-world pictures (see BENCHMARKS.md for those).",
        "",
    ]
    text = "\n".join(lines)
    report = atomic_write_text(out_dir / "report.md", text)
    atomic_write_text(out_dir / "report.html", _html(text, out_dir))
    return report


def _distortion_set(name: str | None) -> str:
    if name == "artefacts":
        return (" (its blur, noise and compression categories: artefacts one sees without the "
                "original; `nriqa demo --distortions all` adds its tone and colour changes)")
    return ""


def _weights(weights: str) -> str:
    return "random initial weights" if weights == "none" else f"{weights} ImageNet weights"


def _training_kind(cfg) -> str:
    if cfg.trainer.feature_cache:
        return ("the backbone frozen with its ImageNet weights, its features (model.readout="
                f"{cfg.model.readout}) computed once and cached, the decoder trained on them")
    return "the backbone's unfrozen layers and the decoder trained together"


def _fmt_load(load) -> str:
    return " / ".join(f"{v:.2f}" for v in load)


def _html(markdown: str, folder: Path) -> str:
    """A small, self-contained HTML rendering of the report (images inlined)."""
    import re

    def inline(text: str) -> str:
        text = html.escape(text)
        text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", text)

    def image(match) -> str:
        data = base64.b64encode((folder / match.group(2)).read_bytes()).decode()
        return f'<img alt="{html.escape(match.group(1))}" src="data:image/png;base64,{data}">'

    body, table = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(set(c) <= {"-"} for c in cells):
                table.append(cells)
            continue
        if table:
            head, *rest = table
            body.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>"
                                  for r in rest) + "</table>")
            table = []
        if line.startswith("# "):
            body.append(f"<h1>{inline(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{inline(line[3:])}</h2>")
        elif line.startswith("!["):
            body.append("<p>" + re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", image, line) + "</p>")
        elif line.startswith("- "):
            body.append(f"<ul><li>{inline(line[2:])}</li></ul>")
        elif line:
            body.append(f"<p>{inline(line)}</p>")
    style = ("body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;"
             "line-height:1.45}img{max-width:100%;vertical-align:top}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:.25em .6em}ul{margin:.2em 0}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>nriqa demo report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")

