"""A gallery of scored images: one self-contained HTML page to look at instead of a CSV.

Thumbnails are embedded as small base64 JPEGs and the page's script and style are inline, so the
file works opened from disk with no network and can be mailed as it is. The page sorts the images
by score, shows the score (or the error) under each, draws a histogram of the scores (inline SVG)
and filters by a threshold slider. Its state lives in the URL fragment, e.g.
``report.html#min=0.5&order=asc&errors=0``, so a filtered view can be bookmarked (and tested).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nriqa.io import atomic_write_text

THUMB_PX = 176  # the long side of a thumbnail
JPEG_QUALITY = 72


def _entry(item) -> dict:
    """A result (ScoreResult or a row read back from a score file) as the page's data."""
    get = item.get if isinstance(item, dict) else lambda k, d=None: getattr(item, k, d)
    raw, error = get("score"), str(get("error", "") or "")
    try:
        score = None if error or raw in (None, "") else float(raw)
    except ValueError:
        score = None
    if score is not None:
        score = round(score, 6) if math.isfinite(score) else None
    path = str(get("path"))
    return {"path": path, "name": Path(path).name, "score": score, "error": error,
            "backend": str(get("backend", "") or "")}


def thumbnail(path: str, size: int = THUMB_PX) -> str:
    """A ``data:`` URL of a small JPEG of ``path`` ("" when it cannot be decoded)."""
    from nriqa.data.images import load_image
    from nriqa.errors import DataError

    try:
        img = load_image(path)
    except DataError:
        return ""
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def gallery_html(entries: list[dict], title: str = "Image quality scores") -> str:
    """The page for ``entries`` (dicts with path, name, score, error, backend, thumb)."""
    # "</" inside a script element would end it: escape it inside the JSON.
    data = json.dumps(entries, ensure_ascii=False).replace("</", "<\\/")
    return (_PAGE.replace("__TITLE__", html.escape(title)).replace("__DATA__", data))


def write_gallery(results: Iterable, path: str | Path, progress: bool = False,
                  threads: int = 4) -> Path:
    """Write the gallery of ``results`` to ``path`` (atomically)."""
    entries = [_entry(r) for r in results]
    from nriqa.inference.scoring import progress_bar

    bar = progress_bar(len(entries), disable=not progress, desc="thumbnails")
    with ThreadPoolExecutor(max_workers=threads) as pool:  # decoding releases the GIL
        for entry, thumb in zip(entries, pool.map(thumbnail, [e["path"] for e in entries])):
            entry["thumb"] = thumb
            bar.update(1)
    bar.close()
    return atomic_write_text(path, gallery_html(entries))


_PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
:root { --bg: #f6f7f9; --card: #fff; --ink: #1d232b; --muted: #66707c; --accent: #2f6fde;
        --bad: #c23b22; --line: #dde1e6; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       background: var(--bg); color: var(--ink); }
header { position: sticky; top: 0; z-index: 1; background: #fffffff2; border-bottom: 1px solid var(--line);
         padding: 12px 20px; display: flex; flex-wrap: wrap; gap: 12px 28px; align-items: center; }
h1 { font-size: 18px; margin: 0; font-weight: 600; }
#summary { color: var(--muted); margin: 2px 0 0; }
.controls { display: flex; flex-wrap: wrap; align-items: center; gap: 8px 16px; }
.controls label { display: flex; align-items: center; gap: 8px; }
#min { width: 220px; accent-color: var(--accent); }
#minval { font-variant-numeric: tabular-nums; min-width: 4.5em; font-weight: 600; }
#count { color: var(--muted); }
#hist { display: block; }
#hist .bar { fill: var(--accent); }
#hist .bar.out { fill: #c9d3e3; }
#hist .axis { fill: var(--muted); font-size: 10px; }
#hist .cut { stroke: var(--bad); stroke-width: 1.5; }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: 14px;
       padding: 18px 20px 40px; }
.card { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 8px;
        overflow: hidden; display: flex; flex-direction: column; }
.card[hidden] { display: none; }
.thumb { height: 150px; display: flex; align-items: center; justify-content: center;
         background: #eef0f3; }
.thumb img { max-width: 100%; max-height: 150px; display: block; }
.thumb .none { color: var(--bad); font-size: 28px; }
figcaption { padding: 8px 10px 10px; display: grid; gap: 2px; }
.score { font-size: 17px; font-weight: 650; font-variant-numeric: tabular-nums; }
.meter { height: 4px; border-radius: 2px; background: #e5e8ec; overflow: hidden; }
.meter i { display: block; height: 100%; background: var(--accent); }
.name { color: var(--muted); overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.error { color: var(--bad); font-size: 12px; word-break: break-word; }
.card.failed { border-color: #f0c4bb; }
</style>
</head>
<body>
<header>
  <div><h1>__TITLE__</h1><p id="summary"></p></div>
  <div class="controls">
    <label for="min">score &ge; <input type="range" id="min"></label>
    <output id="minval" for="min"></output>
    <label><select id="order"><option value="desc">best first</option>
      <option value="asc">worst first</option></select></label>
    <label><input type="checkbox" id="errors" checked> unscored files</label>
    <span id="count"></span>
  </div>
  <svg id="hist" width="360" height="74" role="img" aria-label="histogram of scores"></svg>
</header>
<main id="grid"></main>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const items = JSON.parse(document.getElementById("data").textContent);
const scored = items.filter(d => d.score !== null);
const scores = scored.map(d => d.score);
const lo = scores.length ? Math.min(...scores) : 0, hi = scores.length ? Math.max(...scores) : 1;
const state = { min: -Infinity, order: "desc", errors: true };
const grid = document.getElementById("grid"), slider = document.getElementById("min");
const fmt = v => v.toFixed(4);
const NS = "http://www.w3.org/2000/svg";

function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(NS, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function card(d) {
  const fig = el("figure", { class: "card" + (d.score === null ? " failed" : ""), title: d.path });
  if (d.score !== null) fig.dataset.score = d.score;
  const box = el("div", { class: "thumb" });
  if (d.thumb) box.append(el("img", { src: d.thumb, alt: d.name }));
  else box.append(el("span", { class: "none" }, "\u2715"));
  const cap = el("figcaption");
  cap.append(el("span", { class: "score" }, d.score === null ? "no score" : fmt(d.score)));
  if (d.score !== null) {
    const meter = el("div", { class: "meter" }), bar = el("i");
    bar.style.width = (hi > lo ? 100 * (d.score - lo) / (hi - lo) : 100).toFixed(1) + "%";
    meter.append(bar); cap.append(meter);
  }
  cap.append(el("span", { class: "name" }, d.name));
  if (d.error) cap.append(el("span", { class: "error" }, d.error));
  fig.append(box, cap);
  d.node = fig;
  return fig;
}

function histogram() {
  const svg = document.getElementById("hist"), w = 360, h = 74, pad = 14, bins = 24;
  svg.replaceChildren();
  if (!scores.length) return;
  const counts = new Array(bins).fill(0), span = hi - lo || 1;
  for (const s of scores) counts[Math.min(bins - 1, Math.floor((s - lo) / span * bins))]++;
  const top = Math.max(...counts), bw = (w - 2) / bins;
  counts.forEach((c, i) => {
    const bh = c ? Math.max(1, (h - pad - 4) * c / top) : 0;
    const upper = lo + span * (i + 1) / bins;
    svg.append(el("svg:rect", { class: "bar" + (upper <= state.min ? " out" : ""),
      x: 1 + i * bw, y: h - pad - bh, width: Math.max(1, bw - 1), height: bh,
      "data-count": c }));
  });
  svg.append(el("svg:text", { class: "axis", x: 1, y: h - 2 }, fmt(lo)));
  svg.append(el("svg:text", { class: "axis", x: w - 1, y: h - 2, "text-anchor": "end" }, fmt(hi)));
  if (state.min > lo && state.min <= hi) {
    const x = 1 + (state.min - lo) / span * (w - 2);
    svg.append(el("svg:line", { class: "cut", x1: x, x2: x, y1: 0, y2: h - pad }));
  }
}

function render() {
  const sorted = scored.slice().sort((a, b) => state.order === "asc" ? a.score - b.score : b.score - a.score);
  const failed = items.filter(d => d.score === null);
  grid.replaceChildren(...sorted.concat(failed).map(d => d.node || card(d)));
  let shown = 0;
  for (const d of sorted) { d.node.hidden = d.score < state.min; shown += !d.node.hidden; }
  for (const d of failed) { d.node.hidden = !state.errors; shown += state.errors; }
  document.getElementById("count").textContent = `${shown} of ${items.length} shown`;
  document.getElementById("minval").textContent = isFinite(state.min) ? fmt(state.min) : "all";
  histogram();
}

function fromHash() {
  const q = new URLSearchParams(location.hash.replace(/^#/, ""));
  const m = parseFloat(q.get("min"));
  state.min = isFinite(m) ? m : -Infinity;
  state.order = q.get("order") === "asc" ? "asc" : "desc";
  state.errors = q.get("errors") !== "0";
  slider.value = isFinite(state.min) ? Math.min(hi, Math.max(lo, state.min)) : lo;
  document.getElementById("order").value = state.order;
  document.getElementById("errors").checked = state.errors;
  render();
}

function toHash() {
  const q = new URLSearchParams();
  if (isFinite(state.min)) q.set("min", state.min);
  if (state.order !== "desc") q.set("order", state.order);
  if (!state.errors) q.set("errors", "0");
  history.replaceState(null, "", "#" + q.toString());
  render();
}

slider.min = lo; slider.max = hi; slider.step = (hi > lo ? (hi - lo) / 500 : 0.001);
slider.addEventListener("input", () => {
  state.min = parseFloat(slider.value) <= lo ? -Infinity : parseFloat(slider.value); toHash();
});
document.getElementById("order").addEventListener("change", e => { state.order = e.target.value; toHash(); });
document.getElementById("errors").addEventListener("change", e => { state.errors = e.target.checked; toHash(); });
window.addEventListener("hashchange", fromHash);
const failedCount = items.length - scored.length;
document.getElementById("summary").textContent =
  `${items.length} image(s), ${scored.length} scored` + (failedCount ? `, ${failedCount} could not be` : "") +
  (scores.length ? `; scores ${fmt(lo)} to ${fmt(hi)}, median ${fmt(scores.slice().sort((a, b) => a - b)[Math.floor(scores.length / 2)])}` : "") +
  (items.length && items[0].backend ? ` (backend ${items[0].backend})` : "");
fromHash();
</script>
</body>
</html>
"""
