"""LIVE In the Wild Image Quality Challenge (CLIVE): the release's .mat files and pyiqa's CSV."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from nriqa.data.parsing.paths import Resolver, label_path, require_file
from nriqa.data.parsing.problems import Problem
from nriqa.data.parsing.pyiqa import pyiqa_files, read_pyiqa_nr
from nriqa.data.parsing.rows import load_mat, mat_strings
from nriqa.data.parsing.tables import Entry, build_table
from nriqa.data.spec import DatasetSpec, Layout
from nriqa.data.table import Scale
from nriqa.errors import LabelError

_LIVEC_TRAINING = re.compile(r"(?:.*/)?t[1-7]\.bmp", re.IGNORECASE)  # the 7 training images


def read_livec(root, label_file, *, scale: Scale, problems: list[Problem] | None = None) -> pd.DataFrame:
    """LIVE Challenge ``Data/AllMOS_release.mat`` with ``AllImages_release.mat`` (and the optional
    ``AllStdDev_release.mat``) beside it; 1169 entries of which the 7 training images ``t1..t7``
    are dropped (1162 remain); images in ``Images/``."""
    root = Path(root)
    given = label_path(root, label_file)
    folder = given.parent
    mos_file = require_file(Resolver(folder).resolve("AllMOS_release.mat") or folder / "AllMOS_release.mat")
    names_file = require_file(Resolver(folder).resolve("AllImages_release.mat")
                              or folder / "AllImages_release.mat", "LIVEC image names file")
    mos = np.asarray(load_mat(mos_file, "AllMOS_release")["AllMOS_release"], dtype=object).ravel()
    names = mat_strings(load_mat(names_file, "AllImages_release")["AllImages_release"])
    std_file = Resolver(folder).resolve("AllStdDev_release.mat")
    std = (np.asarray(load_mat(std_file, "AllStdDev_release")["AllStdDev_release"], float).ravel()
           if std_file is not None else np.full(len(names), np.nan))
    if not (len(mos) == len(names) == len(std)):
        raise LabelError(mos_file, f"{len(mos)} scores but {len(names)} image names"
                                   f"{'' if std_file is None else f' and {len(std)} deviations'}")
    entries = [
        Entry(f"entry {k + 1}", name, mos[k], (f"Images/{name}",), extra={"std": float(std[k])})
        for k, name in enumerate(names)
        if not _LIVEC_TRAINING.fullmatch(name)
    ]
    return build_table(entries, root, scale, mos_file, [], problems, ("std",))


def read_livec_pyiqa(root, label_file, *, scale: Scale, problems=None) -> pd.DataFrame:
    """pyiqa ``meta_info_LIVEChallengeDataset.csv`` (``img_name,mos,std``); ``t1..t7`` dropped."""
    return read_pyiqa_nr(root, label_file, scale, problems, "Images",
                         drop=lambda name: bool(_LIVEC_TRAINING.fullmatch(name)))


SPEC = DatasetSpec(
    name="livec", title="LIVE In the Wild Image Quality Challenge (CLIVE)", kind="authentic",
    scale=Scale(0.0, 100.0), n_images=1162, n_groups=None, official_split=(), patch_num=10,
    layouts={
        "official": Layout(read_livec, ("Data/AllMOS_release.mat",)),
        "pyiqa": Layout(read_livec_pyiqa, pyiqa_files("LIVEChallenge")),
    },
    citation="D. Ghadiyaram, A. C. Bovik, Massive online crowdsourced study of subjective and "
             "objective picture quality, IEEE TIP 25(1), 2016.",
)

