"""LIVE Image Quality Assessment Database, Release 2: the official .mat files (realigned DMOS, as
DEIQT and HyperIQA read) and pyiqa's meta CSV, which holds the *original* DMOS (``dmos.mat``), so
the two layouts agree on paths and groups but not on scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from nriqa.data.parsing.naming import stem
from nriqa.data.parsing.paths import label_path, sibling
from nriqa.data.parsing.problems import Problem
from nriqa.data.parsing.pyiqa import pyiqa_files, read_pyiqa_fr
from nriqa.data.parsing.rows import load_mat, mat_strings
from nriqa.data.parsing.tables import Entry, build_table
from nriqa.data.spec import DatasetSpec, Layout
from nriqa.data.table import Scale
from nriqa.errors import LabelError

LIVE_FOLDERS = (("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174))


def read_live(root, label_file, *, scale: Scale, problems: list[Problem] | None = None) -> pd.DataFrame:
    """LIVE Release 2: ``dmos_realigned.mat`` (``dmos_new``, ``orgs``) or ``dmos.mat`` (``dmos``,
    ``orgs``), and ``refnames_all.mat``, 982 entries over jp2k/jpeg/wn/gblur/fastfading ``imgN.bmp``.

    Entries with ``orgs == 1`` are the reference copies and are dropped (779 remain). The group is
    the reference image.
    """
    root = Path(root)
    mat_file = label_path(root, label_file)
    mat = load_mat(mat_file, "dmos_new|dmos", "orgs")
    names_file = sibling(mat_file, root, "refnames_all.mat")
    if names_file is None:
        raise LabelError(mat_file.parent / "refnames_all.mat", "LIVE reference names file not found")
    refs = mat_strings(load_mat(names_file, "refnames_all")["refnames_all"])
    dmos = np.asarray(mat["dmos_new"], dtype=object).ravel()
    orgs = np.asarray(mat["orgs"]).ravel()
    slots = [(folder, i) for folder, n in LIVE_FOLDERS for i in range(1, n + 1)]
    if not (len(dmos) == len(orgs) == len(refs) == len(slots)):
        raise LabelError(mat_file, f"expected {len(slots)} entries in the DMOS, orgs and reference "
                                   f"names, found {len(dmos)}, {len(orgs)} and {len(refs)}")
    entries = [
        Entry(f"entry {k + 1}", f"{folder}/img{i}.bmp", dmos[k], (f"{folder}/img{i}.bmp",),
              group=stem(refs[k]), extra={"dist_type": folder})
        for k, (folder, i) in enumerate(slots)
        if not orgs[k]
    ]
    return build_table(entries, root, scale, mat_file, [], problems, ("dist_type",))


def read_live_pyiqa(root, label_file, *, scale: Scale, problems=None) -> pd.DataFrame:
    """pyiqa ``meta_info_LIVEIQADataset.csv`` (``refimgs/x.bmp,jp2k/img2.bmp,<dmos>``). Its DMOS are
    the original ``dmos.mat`` values, not the realigned ones of the official reader."""
    return read_pyiqa_fr(root, label_file, scale, problems, lambda d: (d,),
                         lambda ref, dist: stem(ref), lambda d: d.split("/")[0])


SPEC = DatasetSpec(
    name="live", title="LIVE Image Quality Assessment Database, Release 2", kind="synthetic",
    scale=Scale(-3.0, 112.0, higher_better=False), n_images=779, n_groups=29,
    official_split=(),
    layouts={
        "official": Layout(read_live, ("dmos_realigned.mat", "dmos.mat")),
        "pyiqa": Layout(read_live_pyiqa, pyiqa_files("LIVEIQA")),
    },
    citation="H. R. Sheikh, M. F. Sabir, A. C. Bovik, A statistical evaluation of recent full "
             "reference image quality assessment algorithms, IEEE TIP 15(11), 2006.",
    notes="official reads the realigned DMOS (dmos_realigned.mat, as DEIQT); pyiqa's CSV holds "
          "the original dmos.mat values, so scores differ between the layouts",
)

