"""CSIQ: HyperIQA's ``csiq_label.txt`` and pyiqa's meta CSV, with one naming rule for both."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from nriqa.data.parsing.naming import stem
from nriqa.data.parsing.paths import label_path
from nriqa.data.parsing.problems import Problem
from nriqa.data.parsing.pyiqa import pyiqa_files, read_pyiqa_fr
from nriqa.data.parsing.rows import read_whitespace_rows
from nriqa.data.parsing.tables import Entry, build_table
from nriqa.data.spec import DatasetSpec, Layout
from nriqa.data.table import Scale


def _csiq_candidates(name: str) -> tuple[str, ...]:
    # 1600.AWGN.1.png lives in dst_imgs/awgn/ in the release; pyiqa and HyperIQA flatten it.
    parts = name.split(".")
    typed = (f"dst_imgs/{parts[1]}/{name}",) if len(parts) >= 3 else ()
    return (f"dst_imgs/{name}", *typed, f"dst_imgs_all/{name}")


def _csiq_group(name: str) -> str:
    return name.split(".")[0]


def _csiq_type(name: str) -> str:
    parts = name.split(".")
    return parts[1].lower() if len(parts) >= 3 else ""


def read_csiq(root, label_file, *, scale: Scale, problems: list[Problem] | None = None) -> pd.DataFrame:
    """CSIQ ``csiq_label.txt`` (``<dist_name> <dmos>``, HyperIQA's file); images in
    ``dst_imgs/<type>/<ref>.<TYPE>.<lvl>.png`` (the type folder is the lower-cased TYPE, matched
    case-insensitively), or flat in ``dst_imgs/`` or ``dst_imgs_all/``. Group: the reference."""
    root = Path(root)
    path = label_path(root, label_file)
    found: list[Problem] = []
    entries = [
        Entry(f"line {line}", name, dmos, _csiq_candidates(name), group=_csiq_group(name),
              extra={"dist_type": _csiq_type(name)})
        for line, (name, dmos) in read_whitespace_rows(path, 2, found)
    ]
    return build_table(entries, root, scale, path, found, problems, ("dist_type",))


def read_csiq_pyiqa(root, label_file, *, scale: Scale, problems=None) -> pd.DataFrame:
    """pyiqa ``meta_info_CSIQDataset.csv`` (``1600.png,1600.AWGN.1.png,<dmos>``); images flat in
    ``dst_imgs/`` as pyiqa ships them, or in the release's type folders."""
    return read_pyiqa_fr(root, label_file, scale, problems, _csiq_candidates,
                         lambda ref, dist: stem(ref), _csiq_type)


SPEC = DatasetSpec(
    name="csiq", title="CSIQ (Categorical Subjective Image Quality)", kind="synthetic",
    scale=Scale(0.0, 1.0, higher_better=False), n_images=866, n_groups=30, official_split=(),
    layouts={
        "official": Layout(read_csiq, ("csiq_label.txt",)),
        "pyiqa": Layout(read_csiq_pyiqa, pyiqa_files("CSIQ")),
    },
    citation="E. C. Larson, D. M. Chandler, Most apparent distortion: full-reference image "
             "quality assessment and the role of strategy, J. Electron. Imaging 19(1), 2010.",
)

