"""Evaluate the predictions of ``gpu_acdc.sh`` and write its results table.

    python benchmarks/gpu_summary.py WORK "pL DMSPS_pLDice" gpu1k OUT.md

For each arm with a complete prediction folder (``WORK/predictions/<arm>``): the raw predictions and their
largest-component post-processing (``nnunet_scribble.postprocessing``) are evaluated on the dense test labels
(``summary.json`` per arm under ``WORK/logs``); the table gives per-class and mean Dice, HD95, ASSD, the number
of test volumes on which the arm's mean Dice is higher than pL's, and the training epochs and median epoch
time from the arm's checkpoint (the arms trained at the same time on one GPU, so the epoch times are not
cost ratios: ``timing.py`` measures those, one arm at a time).
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CLASSES = ("1", "2", "3")


def cases_better(summary: dict, bar: dict) -> int:
    """Test volumes on which ``summary``'s mean foreground Dice is above ``bar``'s, paired by case name."""
    from paired_comparison import case_means_of_summary, paired_values

    x, y = paired_values(case_means_of_summary(summary), case_means_of_summary(bar), "the two summaries")
    return int((x > y).sum())


def gap_closed(res: dict, arm: str) -> str:
    """run_benchmark's rule, (arm - pL) / (dense - pL) of the mean Dice; empty where pL or dense did not run."""
    from run_benchmark import _gap

    if arm in ("pL", "dense") or "pL" not in res or "dense" not in res:
        return ""
    row = {a: {"arm": a, "Dice": (res[a][""]["foreground_mean"]["Dice"], None)} for a in ("pL", "dense", arm)}
    return _gap(row[arm], row["pL"], row["dense"])


def main(argv=None) -> int:
    import torch

    from nnunet_scribble.evaluation import evaluate_folder
    from nnunet_scribble.postprocessing import apply_lcc_to_folder
    from run_benchmark import ARMS, median_epoch_seconds

    work, arms, budget, out = argv or sys.argv[1:]
    work, arms, out = Path(work), arms.split(), Path(out)
    raw = next((work / "nnUNet_raw").glob("Dataset700_*"))
    n_test = len(list((raw / "labelsTs").glob("*.nii.gz")))
    res = {}
    for arm in arms:
        pred = work / "predictions" / arm
        if len(list(pred.glob("*.nii.gz"))) != n_test:
            print(f"{arm}: predictions incomplete, not evaluated", flush=True)
            continue
        shutil.rmtree(work / "predictions" / f"{arm}_lcc", ignore_errors=True)   # a rerun redoes it
        apply_lcc_to_folder(pred, work / "predictions" / f"{arm}_lcc", num_processes=8)
        r = {}
        for suffix in ("", "_lcc"):
            summary = work / "logs" / f"summary_{arm}{suffix}"
            evaluate_folder(str(work / "predictions" / f"{arm}{suffix}"), str(raw / "labelsTs"),
                            labels=[int(k) for k in CLASSES], num_processes=8, output_folder=str(summary))
            r[suffix] = json.loads((summary / "summary.json").read_text())   # the class keys as strings
        dataset = raw.name if ARMS[arm][1] != "dense" else next((work / "nnUNet_raw").glob("Dataset701_*")).name
        fold = work / "nnUNet_results" / dataset / f"{ARMS[arm][0]}_{budget}__nnUNetPlans__2d" / "fold_0"
        ckpt_file = fold / "checkpoint_final.pth"
        ckpt_file = ckpt_file if ckpt_file.exists() else fold / "checkpoint_latest.pth"
        logging = torch.load(ckpt_file, map_location="cpu", weights_only=False)["logging"]
        r["epoch_s"] = median_epoch_seconds(logging)
        r["epochs"] = len(logging["epoch_end_timestamps"])
        r["checkpoint"] = ckpt_file.name
        res[arm] = r
    lines = ["| arm | trainer | Dice RV / MYO / LV | mean Dice | HD95 (mm) | ASSD (mm) | better than pL (cases) | "
             "mean Dice after LCC | HD95 after LCC | checkpoint (epochs) | s / epoch (arms together) | gap closed |",
             "|" + "---|" * 12]
    for arm, r in res.items():
        m, f = r[""]["mean"], r[""]["foreground_mean"]
        better = ("" if arm == "pL" or "pL" not in res else
                  f"{cases_better(r[''], res['pL'][''])} of {n_test}")
        lines.append(f"| {arm} | {ARMS[arm][0]}_{budget} | " + " / ".join(f"{m[k]['Dice']:.3f}" for k in CLASSES)
                     + f" | {f['Dice']:.3f} | {f['HD95']:.1f} | {f['ASSD']:.1f} | {better} | "
                     f"{r['_lcc']['foreground_mean']['Dice']:.3f} | {r['_lcc']['foreground_mean']['HD95']:.1f} | "
                     f"{r['checkpoint']} ({r['epochs']}) | {r['epoch_s']:.1f} | {gap_closed(res, arm)} |")
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())
    return 0 if len(res) == len(arms) else 1


if __name__ == "__main__":
    raise SystemExit(main())
