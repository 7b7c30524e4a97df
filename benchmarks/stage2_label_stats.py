"""What a DMSPS stage-2 expansion gives stage 2 to learn: per label, the mean fraction of the voxels it covers, the
cases holding it, and (against ``labelsTr_dense``) the fraction of its voxels that are right.

    python benchmarks/stage2_label_stats.py <nnUNet_raw>/Dataset732_ACDCScribbleStage2

Prints one line per quantity; RESULTS.md quotes them next to the stage-2 runs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict

import numpy as np
import SimpleITK as sitk


def label_stats(raw_folder: Path) -> Dict[str, list]:
    dataset_json = json.loads((raw_folder / "dataset.json").read_text())
    ending = dataset_json["file_ending"]
    n_labels = max(dataset_json["labels"].values()) + 1          # the ignore label is the highest
    ignore = dataset_json["labels"].get("ignore")
    files = sorted((raw_folder / "labelsTr").glob(f"*{ending}"))
    if not files:
        raise FileNotFoundError(f"no training labels in {raw_folder / 'labelsTr'}")
    fractions, present = [], np.zeros(n_labels, int)
    right, labelled = np.zeros(n_labels, int), np.zeros(n_labels, int)
    for f in files:
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
        counts = np.bincount(label.ravel(), minlength=n_labels)[:n_labels]
        fractions.append(100.0 * counts / label.size)
        present += counts > 0
        dense_file = raw_folder / "labelsTr_dense" / f.name
        if dense_file.is_file():
            dense = sitk.GetArrayFromImage(sitk.ReadImage(str(dense_file)))
            if dense.shape != label.shape:
                raise ValueError(f"{f.name}: dense label {dense.shape} vs expanded label {label.shape}")
            for k in range(n_labels):
                if k == ignore:
                    continue
                mask = label == k
                labelled[k] += int(mask.sum())
                right[k] += int((dense[mask] == k).sum())
    keep = [k for k in range(n_labels) if k != ignore]
    return {"n_cases": len(files),
            "mean_fraction_percent": np.mean(fractions, axis=0).round(3).tolist(),
            "cases_with_label": present.tolist(),
            "precision": [round(float(right[k] / labelled[k]), 4) if labelled[k] else None for k in keep],
            "labelled_voxels": [int(labelled[k]) for k in keep]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("raw_folder", type=Path, help="the stage-2 raw dataset folder (with labelsTr_dense)")
    stats = label_stats(p.parse_args(argv).raw_folder)
    n = len(stats["mean_fraction_percent"])
    print(f"{stats['n_cases']} cases; mean % of the voxels per label 0..{n - 1}: {stats['mean_fraction_percent']}")
    print(f"cases holding each label: {stats['cases_with_label']}")
    print(f"precision against labelsTr_dense per class: {stats['precision']}; labelled voxels: "
          f"{stats['labelled_voxels']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
