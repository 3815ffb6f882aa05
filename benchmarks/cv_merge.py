"""One cross-validated evaluation from several that score disjoint patients.

    python benchmarks/cv_merge.py EVAL_A EVAL_B [...] -o OUT

Each EVAL is a ``cardioseg evaluate`` folder (``metrics.csv``, ``clinical.csv``), e.g. the stored
evaluation of folds 0-2 (``benchmarks/results/...``) and a new one of folds 3-4 scored with the same
inference by ``cv_evaluate.py``. OUT gets both CSVs, rows in patient order, for ``cv_paired.py`` and
``qc_confidence.py``. Refuses folders whose columns differ or that score the same study twice: a
merged evaluation scores each patient once, by the model that held it out.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

FILES = ("metrics.csv", "clinical.csv")


def merge(folders: list[Path], out: Path) -> dict[str, int]:
    """Write OUT/metrics.csv and OUT/clinical.csv; returns the number of studies per input folder."""
    tables: dict[str, tuple[list[str], list[dict[str, str]]]] = {}
    owner: dict[str, Path] = {}
    counts: dict[str, int] = {}
    for name in FILES:
        header: list[str] | None = None
        rows: list[dict[str, str]] = []
        for folder in folders:
            with open(folder / name, newline="") as f:
                reader = csv.DictReader(f)
                if header is None:
                    header = list(reader.fieldnames or [])
                elif list(reader.fieldnames or []) != header:
                    raise SystemExit(f"cv_merge: {folder / name} has other columns than {folders[0] / name}")
                part = list(reader)
            if name == "clinical.csv":
                counts[str(folder)] = len(part)
                for row in part:
                    if row["study"] in owner:
                        raise SystemExit(f"cv_merge: {row['study']} is in both {owner[row['study']]} and {folder}")
                    owner[row["study"]] = folder
            rows += part
        rows.sort(key=lambda r: (r["study"], r.get("case", ""), r.get("label", "")))
        tables[name] = (header or [], rows)
    out.mkdir(parents=True, exist_ok=True)
    for name, (header, rows) in tables.items():
        with open(out / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("evals", type=Path, nargs="+")
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    counts = merge(args.evals, args.out)
    print(f"{sum(counts.values())} studies -> {args.out} ({', '.join(f'{n} from {k}' for k, n in counts.items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
