"""Arms against the bar (nnU-Net+pL) on the same test volumes, seed by seed and over all seeds.

    python benchmarks/paired_comparison.py --bar pL --arms DMPLS PSSeg \\
        --tables benchmarks/results/acdc_cpu3k/per_case_dice.md \\
        --predictions /work/bench/acdc_cpu3k/predictions [--out per_case_dice.md]

Per-case values are each test volume's mean Dice over the foreground classes (raw predictions, no
post-processing), read from committed per-case tables (``--tables``: markdown, one row per case, one column per
``<arm>_seed<N>``, as written by ``--out``) and/or from the benchmark's prediction folders (``--predictions``:
``<arm>_seed<N>/summary.json``; a column found in both must agree). Every arm is paired with the bar of its own
seed. Per seed: both means, the mean paired difference, the number of volumes on which the arm is better and a
two-sided Wilcoxon signed-rank p. Over the seeds both arms ran: the mean ± std of the seed means, in how many
seeds the arm is above the bar, and the exact two-sided sign-test p of that count (with 5 seeds the smallest
possible p is 0.0625: five seeds cannot show a difference at the 5 % level by seed means alone). Std over seeds
is the sample std (ddof 1). ``--out`` keeps 6 decimals; Wilcoxon p from a 3-decimal table (ties, hence scipy's
normal approximation) can differ from the p of the unrounded values.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

COLUMN = re.compile(r"^(?P<arm>.+)_seed(?P<seed>\d+)$")


def case_means_of_summary(summary: dict) -> Dict[str, float]:
    """Case name -> mean Dice over the foreground classes (NaN classes, empty in both, left out)."""
    out = {}
    for case in summary["metric_per_case"]:
        vals = [m["Dice"] for m in case["metrics"].values()]
        vals = [np.nan if v is None else float(v) for v in vals]
        name = Path(case["prediction_file"]).name.split(".")[0]
        out[name] = float(np.nanmean(vals)) if not all(np.isnan(vals)) else float("nan")
    return out


def read_predictions(folder: Path) -> Dict[str, Dict[str, float]]:
    """Column ``<arm>_seed<N>`` -> per-case values, from every ``<arm>_seed<N>/summary.json`` in ``folder``."""
    columns = {}
    for summary in sorted(folder.glob("*_seed*/summary.json")):
        if COLUMN.match(summary.parent.name):
            columns[summary.parent.name] = case_means_of_summary(json.loads(summary.read_text()))
    return columns


def read_table(path: Path) -> Dict[str, Dict[str, float]]:
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip().startswith("|")]
    if len(lines) < 3:
        raise ValueError(f"{path}: no markdown table")
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    columns = {name: {} for name in header[1:]}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != len(header):
            raise ValueError(f"{path}: row {cells[0]!r} has {len(cells)} cells, the header {len(header)}")
        for name, cell in zip(header[1:], cells[1:]):
            if cell not in ("", "—", "-"):
                columns[name][cells[0]] = float(cell)
    return columns


def merge(sources: Sequence[Dict[str, Dict[str, float]]], tol: float = 5e-4) -> Dict[str, Dict[str, float]]:
    """Union of columns; a column in several sources must hold the same cases and values (tables are rounded)."""
    merged: Dict[str, Dict[str, float]] = {}
    for columns in sources:
        for name, values in columns.items():
            if name in merged:
                old = merged[name]
                if set(old) != set(values) or any(abs(old[c] - values[c]) > tol for c in old
                                                  if not (math.isnan(old[c]) and math.isnan(values[c]))):
                    raise ValueError(f"column {name} differs between sources")
            else:
                merged[name] = dict(values)
    return merged


def sign_test_p(k: int, n: int) -> float:
    """Exact two-sided sign test: P(a count at least as far from n/2 as k) under p = 1/2."""
    if n == 0:
        return float("nan")
    dev = abs(k - n / 2)
    return min(1.0, sum(math.comb(n, i) for i in range(n + 1) if abs(i - n / 2) >= dev) / 2 ** n)


def paired_values(a: Dict[str, float], b: Dict[str, float], what: str):
    """The per-case values of ``a`` and ``b`` as two arrays in the same case order; an error where the cases differ."""
    if set(a) != set(b):
        raise ValueError(f"{what} were evaluated on different cases")
    cases = sorted(a)
    return np.array([a[c] for c in cases]), np.array([b[c] for c in cases])


def compare(columns: Dict[str, Dict[str, float]], arm: str, bar: str) -> dict:
    from scipy.stats import wilcoxon

    matches = [m for m in map(COLUMN.match, columns) if m]
    seeds = sorted(int(m["seed"]) for m in matches if m["arm"] == arm and f"{bar}_seed{m['seed']}" in columns)
    per_seed = []
    for seed in seeds:
        x, y = paired_values(columns[f"{arm}_seed{seed}"], columns[f"{bar}_seed{seed}"],
                             f"{arm} and {bar} of seed {seed}")
        d = x - y
        p = float(wilcoxon(x, y).pvalue) if np.any(d != 0) else 1.0
        per_seed.append({"seed": seed, "arm": float(np.nanmean(x)), "bar": float(np.nanmean(y)),
                         "diff": float(np.nanmean(d)), "better": int(np.sum(d > 0)), "n": len(d), "p": p})
    above = sum(r["arm"] > r["bar"] for r in per_seed)
    summary = {"seeds": seeds, "above": above,
               "arm_mean": float(np.mean([r["arm"] for r in per_seed])) if per_seed else float("nan"),
               "arm_std": float(np.std([r["arm"] for r in per_seed], ddof=1)) if len(per_seed) > 1 else float("nan"),
               "bar_mean": float(np.mean([r["bar"] for r in per_seed])) if per_seed else float("nan"),
               "bar_std": float(np.std([r["bar"] for r in per_seed], ddof=1)) if len(per_seed) > 1 else float("nan"),
               "sign_p": sign_test_p(above, len(per_seed))}
    return {"arm": arm, "bar": bar, "per_seed": per_seed, "summary": summary}


def markdown(results: List[dict]) -> str:
    lines = ["| arm | seed | arm mean Dice | bar mean Dice | mean paired difference | volumes better | Wilcoxon p |",
             "|---|---|---|---|---|---|---|"]
    for res in results:
        for r in res["per_seed"]:
            lines.append(f"| {res['arm']} vs {res['bar']} | {r['seed']} | {r['arm']:.3f} | {r['bar']:.3f} | "
                         f"{r['diff']:+.3f} | {r['better']} of {r['n']} | {r['p']:.2g} |")
        s = res["summary"]
        lines.append(f"| {res['arm']} vs {res['bar']} | all {len(s['seeds'])} ({', '.join(map(str, s['seeds']))}) | "
                     f"{s['arm_mean']:.3f} ± {s['arm_std']:.3f} | {s['bar_mean']:.3f} ± {s['bar_std']:.3f} | "
                     f"{s['arm_mean'] - s['bar_mean']:+.3f} | above the bar in {s['above']} of {len(s['seeds'])} seeds | "
                     f"sign test {s['sign_p']:.2g} |")
    return "\n".join(lines) + "\n"


def per_case_markdown(columns: Dict[str, Dict[str, float]]) -> str:
    names = sorted(columns)
    cases = sorted(set().union(*(columns[n] for n in names)))
    lines = ["| case | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for case in cases:
        cells = [f"{columns[n][case]:.6f}" if case in columns[n] else "—" for n in names]
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bar", default="pL")
    p.add_argument("--arms", nargs="+", required=True)
    p.add_argument("--tables", nargs="*", type=Path, default=[])
    p.add_argument("--predictions", nargs="*", type=Path, default=[])
    p.add_argument("--out", type=Path, help="also write the merged per-case table (markdown) here")
    args = p.parse_args(argv)
    if not args.tables and not args.predictions:
        p.error("give --tables and/or --predictions")
    columns = merge([read_table(t) for t in args.tables] + [read_predictions(f) for f in args.predictions])
    results = []
    for arm in args.arms:
        res = compare(columns, arm, args.bar)
        if not res["per_seed"]:
            print(f"error: no seed with both {arm} and {args.bar}", file=sys.stderr)
            return 1
        results.append(res)
    print(markdown(results), end="")
    if args.out:
        keep = {c: v for c, v in columns.items() if COLUMN.match(c) and COLUMN.match(c)["arm"] in {args.bar, *args.arms}}
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(per_case_markdown(keep))
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
