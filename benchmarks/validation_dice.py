"""Dice of nnU-Net's own validation predictions (``fold_<f>/validation``, the held-out training cases of
the fold) against the DENSE labels of those cases, for choosing among variants without touching the
test cases.

The benchmark's scribble dataset keeps the dense training labels in ``labelsTr_dense`` (ACDC, BTCV);
nnU-Net's validation itself only sees the scribbles. Example (the weight study in RESULTS.md)::

    python benchmarks/validation_dice.py --work /work/bench/acdc_cpu3k --results nnUNet_results_seed1 \\
        --dataset Dataset700_ACDCScribble --trainers nnUNetTrainer_cpu3k nnUNetTrainerDMPLS_cpu3k \\
        nnUNetTrainerDMPLS_pw2_cpu3k nnUNetTrainerDMPLS_pw5_cpu3k --config 2d_cpu
"""
import argparse
from pathlib import Path

from nnunet_scribble.evaluation import evaluate_folder


def validation_dice(work: Path, results: str, dataset: str, trainer: str, config: str, fold: str = "0",
                    plans: str = "nnUNetPlans") -> tuple:
    """(mean foreground Dice, number of validation cases) of one trained model's validation predictions."""
    pred = work / results / dataset / f"{trainer}__{plans}__{config}" / f"fold_{fold}" / "validation"
    ref = work / "nnUNet_raw" / dataset / "labelsTr_dense"
    if not pred.is_dir():
        raise FileNotFoundError(f"no validation predictions in {pred} (training not finished, or run with --npz?)")
    if not ref.is_dir():
        raise FileNotFoundError(f"no dense training labels in {ref}")
    summary = evaluate_folder(str(pred), str(ref), ignore_missing=True)
    return summary["foreground_mean"]["Dice"], len(summary["metric_per_case"])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, type=Path, help="benchmark work folder")
    p.add_argument("--results", default="nnUNet_results", help="results folder in it (seed N: nnUNet_results_seedN)")
    p.add_argument("--dataset", required=True, help="scribble dataset folder name, e.g. Dataset700_ACDCScribble")
    p.add_argument("--trainers", nargs="+", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--fold", default="0")
    args = p.parse_args(argv)
    print("| trainer | validation cases | mean Dice vs dense labels |\n|---|---|---|")
    for trainer in args.trainers:
        dice, n = validation_dice(args.work, args.results, args.dataset, trainer, args.config, args.fold)
        print(f"| {trainer} | {n} | {dice:.4f} |")


if __name__ == "__main__":
    main()
