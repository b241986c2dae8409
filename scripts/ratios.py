#!/usr/bin/env python3
"""Ratios between a sweep's variants measured in the same runs.

usage: scripts/ratios.py SWEEP_DIR [BASE_VARIANT] [COLUMN]

For every point (offered rate or device count) and every variant, divides the
variant's value in run r by the base variant's value in the same run r (the sweep
interleaves variants run by run, so both saw the same machine state), and prints the
median of those ratios with their range. BASE_VARIANT defaults to the sweep's first
variant, COLUMN to server_hb_per_core_second. Reads each variant's runs.csv.
"""
import csv
import json
import statistics
import sys
from pathlib import Path


def runs(path):
    out = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            out[(row["x"], row["run"])] = row
    return out


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    root = Path(sys.argv[1])
    sweep = json.loads((root / "sweep.json").read_text())
    variants = [v["label"] if isinstance(v, dict) else v for v in sweep.get("variants", [])]
    if not variants:
        variants = sorted(p.parent.name for p in root.glob("*/runs.csv"))
    base = sys.argv[2] if len(sys.argv) > 2 else variants[0]
    column = sys.argv[3] if len(sys.argv) > 3 else "server_hb_per_core_second"
    if not (root / base / "runs.csv").exists():
        sys.exit(f"ratios: no {root / base / 'runs.csv'}; variants: {', '.join(variants)}")
    base_runs = runs(root / base / "runs.csv")
    xs = sorted({x for x, _ in base_runs}, key=float)
    print(f"{column}, each variant / {base} in the same run: median (min–max) over runs\n")
    print("| variant | " + " | ".join(xs) + " |")
    print("|---|" + "---|" * len(xs))
    for v in variants:
        if v == base or not (root / v / "runs.csv").exists():
            continue
        other = runs(root / v / "runs.csv")
        cells = []
        for x in xs:
            rs = []
            for (bx, r), b in base_runs.items():
                o = other.get((bx, r))
                if bx != x or o is None:
                    continue
                try:
                    rs.append(float(o[column]) / float(b[column]))
                except (ValueError, ZeroDivisionError):
                    pass
            cells.append(
                f"{statistics.median(rs):.2f}× ({min(rs):.2f}–{max(rs):.2f})" if rs else "n/a"
            )
        print(f"| {v} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
