"""``nriqa score --html``: a self-contained gallery page, checked in a real headless Chromium."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from helpers import photo_folder, tiny_model_file
from PIL import Image

from nriqa.cli import main

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium on PATH (Debian: apt-get install -y chromium); the gallery page is "
           "checked in a real headless browser")


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gallery")
    model = tiny_model_file(tmp / "m.safetensors")
    folder = tmp / "photos"
    photo_folder(folder, n=9)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out, page = tmp / "scores.csv", tmp / "report.html"
    assert main(["score", str(folder), "--checkpoint", str(model), "-o", str(out),
                 "--html", str(page), "--backend", "torch", "--quiet"]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text(), newline="")))
    return page, rows


def _page_data(page: Path) -> list[dict]:
    text = page.read_text()
    match = re.search(r'<script id="data" type="application/json">(.*?)</script>', text, re.S)
    return json.loads(match[1])


def test_page_is_self_contained_with_small_embedded_thumbnails(gallery):
    page, rows = gallery
    text = page.read_text()
    # nothing to fetch: no external script, style, image or link (the SVG namespace is a name)
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:|//)', text)
    assert "@import" not in text and "url(http" not in text
    data = _page_data(page)
    assert [d["path"] for d in data] == [r["path"] for r in rows]
    for d, r in zip(data, rows):
        if r["error"]:
            assert d["score"] is None and d["thumb"] == "" and d["error"] == r["error"]
            continue
        assert d["score"] == float(r["score"])
        raw = base64.b64decode(d["thumb"].removeprefix("data:image/jpeg;base64,"))
        thumb = Image.open(io.BytesIO(raw))
        assert thumb.format == "JPEG" and max(thumb.size) <= 176 and len(raw) < 20_000


class _Cards(HTMLParser):
    """Collects the gallery's cards and the text of #count from a dumped DOM."""

    def __init__(self):
        super().__init__()
        self.cards: list[dict] = []
        self.count, self._in_count, self._in_error = "", False, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "figure" and "card" in attrs.get("class", ""):
            self.cards.append({"score": attrs.get("data-score"), "hidden": "hidden" in attrs,
                               "title": attrs.get("title"), "error": ""})
        self._in_count = attrs.get("id") == "count"
        self._in_error = tag == "span" and attrs.get("class") == "error"

    def handle_data(self, data):
        if self._in_count:
            self.count += data
        if self._in_error and self.cards:
            self.cards[-1]["error"] += data

    def handle_endtag(self, tag):
        self._in_count = self._in_error = False


def _dump_dom(page: Path, fragment: str, tmp_path: Path) -> _Cards:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
           page.resolve().as_uri() + fragment]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    parser = _Cards()
    parser.feed(done.stdout)
    return parser


@needs_chromium
def test_chromium_shows_every_image_sorted_by_score(gallery, tmp_path):
    page, rows = gallery
    dom = _dump_dom(page, "", tmp_path)
    scores = sorted((float(r["score"]) for r in rows if not r["error"]), reverse=True)
    assert len(dom.cards) == len(rows) == 10
    shown = [c for c in dom.cards if not c["hidden"]]
    assert len(shown) == 10 and dom.count == "10 of 10 shown"
    assert [float(c["score"]) for c in dom.cards[:9]] == scores  # best first
    broken = dom.cards[-1]
    assert broken["score"] is None and broken["title"].endswith("broken.jpg")
    assert "broken.jpg" in broken["error"]

    worst_first = _dump_dom(page, "#order=asc", tmp_path)
    assert [float(c["score"]) for c in worst_first.cards[:9]] == scores[::-1]


@needs_chromium
def test_chromium_threshold_filter_from_the_url(gallery, tmp_path):
    page, rows = gallery
    scores = sorted(float(r["score"]) for r in rows if not r["error"])
    threshold = scores[4]  # five of nine scores are >= it
    dom = _dump_dom(page, f"#min={threshold}&errors=0", tmp_path)
    shown = [float(c["score"]) for c in dom.cards if not c["hidden"]]
    assert shown == sorted((s for s in scores if s >= threshold), reverse=True) and len(shown) == 5
    assert dom.count == "5 of 10 shown"
    with_errors = _dump_dom(page, f"#min={threshold}", tmp_path)
    assert sum(not c["hidden"] for c in with_errors.cards) == 6
