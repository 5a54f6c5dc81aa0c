"""Fault suite, label files and folders of images: paths confined to the dataset root, malformed
headers and quotes reported where they are, links under ``score -r`` given rows of their own."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from nriqa.data.check import check_dataset
from nriqa.data.registry import load_labels
from nriqa.errors import ImageError, LabelError
from nriqa.inference.scoring import find_images

CSV = {"low": 0, "high": 1}


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(path)
    return path


@pytest.fixture()
def root(tmp_path):
    data = tmp_path / "data"
    for name in ("a.png", "b.png", "c.png"):
        _image(data / name)
    _image(tmp_path / "secret.png")  # beside the dataset, not in it
    return data


def _labels(root, text):
    (root / "labels.csv").write_text(text)
    return root / "labels.csv"


@pytest.mark.parametrize("outside", ["../secret.png", "{tmp}/secret.png", "../" * 30 + "etc/passwd"])
def test_a_path_outside_the_dataset_root_is_refused(root, outside):
    name = outside.format(tmp=root.parent)
    _labels(root, f"path,score\na.png,0.5\n{name},0.7\nb.png,0.1\n")
    if "passwd" in name and not os.path.exists("/etc/passwd"):
        pytest.skip("no /etc/passwd here")
    with pytest.raises(LabelError, match=r"labels.csv: line 3: .* is outside the dataset root"):
        load_labels("csv", root, **CSV)


def test_paths_outside_the_root_load_when_allowed(root):
    _labels(root, "path,score\na.png,0.5\n../secret.png,0.7\nb.png,0.1\n")
    table = load_labels("csv", root, allow_outside_root=True, **CSV)
    assert len(table) == 3 and str(root.parent / "secret.png") in set(table["path"])


def test_a_link_inside_the_root_counts_as_inside(root):
    (root / "linked.png").symlink_to(root.parent / "secret.png")
    _labels(root, "path,score\na.png,0.5\nlinked.png,0.7\nb.png,0.1\n")
    assert len(load_labels("csv", root, **CSV)) == 3


def test_a_duplicate_header_name_is_refused_where_it_is_read(root):
    _labels(root, "path,score,Score\na.png,0.5,0.4\n")
    with pytest.raises(LabelError, match=r"labels.csv: line 1: column 'score' appears 2 times in "
                                         r"the header \(columns 2, 3\)"):
        load_labels("csv", root, **CSV)
    # a duplicate among columns nothing reads is harmless (SPAQ's pyiqa file has one)
    _labels(root, "path,score,note,note\na.png,0.5,x,y\nb.png,0.1,x,y\nc.png,0.2,,\n")
    assert len(load_labels("csv", root, **CSV)) == 3


def test_an_unterminated_quote_is_reported_where_it_opens(root):
    _labels(root, 'path,score\na.png,0.5\n"b.png,0.2\nc.png,0.3\n')
    with pytest.raises(LabelError, match=r"labels.csv: line 3: a quote opened here is closed only "
                                         r"at line 4"):
        load_labels("csv", root, **CSV)
    report = check_dataset("csv", root, **CSV)
    assert [p.where for p in report.problems] == ["line 3"]


def test_links_under_a_recursive_folder_get_rows_of_their_own(tmp_path):
    folder = tmp_path / "photos"
    _image(folder / "ok.png")
    _image(folder / "sub" / "deep.png")
    (folder / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (folder / "self.png").symlink_to(folder / "self.png")
    (folder / "sub" / "up").symlink_to(folder)  # a folder loop
    found = find_images([folder], recursive=True)
    assert found == sorted([folder / "dangling.jpg", folder / "ok.png", folder / "self.png",
                            folder / "sub" / "deep.png", folder / "sub" / "up"])
    from nriqa.data.images import load_image

    messages = {}
    for path in found:
        try:
            load_image(path)
        except ImageError as err:
            messages[path.name] = err.problem
    assert messages == {
        "dangling.jpg": f"dangling symbolic link (to {str(tmp_path / 'gone.jpg')!r}, which does "
                        "not exist)",
        "self.png": "symbolic link loop",
        "up": "not a file but a folder (a symbolic link to a folder: a loop?)",
    }
