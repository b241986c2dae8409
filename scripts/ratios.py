#!/usr/bin/env python3
"""Ratios between a sweep's variants measured in the same runs.

usage: scripts/ratios.py SWEEP_DIR [BASE_VARIANT] [COLUMN]

For every point (offered rate or device count) and every variant, divides the
variant's value in run r by the base variant's value in the same run r (the sweep
interleaves variants run by run, so both saw the same machine state), and prints the
median of those ratios with their range, how many runs the variant took at least as
much as the base, and a distribution-free 95% confidence interval of the median
ratio (from the order statistics, sign test; from 6 runs on): an interval that holds
1 means the runs cannot tell the two apart. BASE_VARIANT defaults to the sweep's first
variant, COLUMN to server_hb_per_core_second. Reads each variant's runs.csv.
"""
import csv
import json
import math
import statistics
import sys
from pathlib import Path


def runs(path):
    out = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            out[(row["x"], row["run"])] = row
    return out


def median_interval(values, confidence=0.95):
    """The order-statistic interval that holds the median with at least `confidence`
    (sign test), or None below 6 values, where no such interval exists at 95%."""
    xs = sorted(values)
    n = len(xs)
    # The largest k with P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2.
    tail, k = 0.0, 0
    while k < n:
        p = math.comb(n, k) / 2**n
        if tail + p > (1 - confidence) / 2:
            break
        tail += p
        k += 1
    if k == 0:
        return None
    return xs[k - 1], xs[n - k]


def cell(rs):
    if not rs:
        return "n/a"
    text = f"{statistics.median(rs):.2f}× ({min(rs):.2f}–{max(rs):.2f}), ≥ in {sum(r >= 1 for r in rs)}/{len(rs)}"
    ci = median_interval(rs)
    return text + (f", 95% CI {ci[0]:.2f}–{ci[1]:.2f}" if ci else "")


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
    print(
        f"{column}, each variant / {base} in the same run: median (min–max) over runs, "
        "runs with the variant ≥ the base, 95% confidence interval of the median\n"
    )
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
            cells.append(cell(rs))
        print(f"| {v} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
