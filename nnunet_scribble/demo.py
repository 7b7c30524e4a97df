"""End-to-end demo on a small synthetic 3D dataset (runs in a few minutes on a laptop CPU).

    nnunet_scribble_demo [--output DIR] [--budget SUFFIX]

1. generates a synthetic 3D dataset with dense ground truth (two blob classes in noise),
2. simulates interior+border scribbles on the training cases (``scribble_simulation``),
3. runs ``nnUNetv2_plan_and_preprocess`` and adds the small ``3d_fullres_tiny`` configuration,
4. trains ``nnUNetTrainerScribble_demo`` (ours, partial CE), ``nnUNetTrainerDMSPS_demo`` (ours, dual decoder) and ``nnUNetTrainer_demo`` (nnU-Net's default
   trainer, i.e. its ignore-label pCE + Dice) on the same scribbles with the same budget,
5. predicts the test cases with ``nnUNetv2_predict`` and evaluates all three on the dense test labels.
All nnU-Net steps run through nnU-Net's real command-line entry points.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

DEMO_DATASET_ID = 990
DEMO_LABELS = {"background": 0, "sphere": 1, "shell": 2, "ignore": 3}


def synthetic_case(rng: np.random.Generator, shape=(20, 48, 48)):
    """One synthetic volume: a bright ball (1) inside a darker shell (2), plus noise; returns (image, label)."""
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    center = [rng.uniform(0.4 * s, 0.6 * s) for s in shape]
    dist = np.sqrt(((zz - center[0]) * 2.0) ** 2 + (yy - center[1]) ** 2 + (xx - center[2]) ** 2)
    r_inner = rng.uniform(6, 9)
    r_outer = r_inner + rng.uniform(3, 5)
    label = np.zeros(shape, np.uint8)
    label[dist < r_outer] = 2
    label[dist < r_inner] = 1
    image = np.choose(label, [0.0, 1.0, 0.5]) + rng.normal(0, 0.25, shape)
    return image.astype(np.float32), label


def make_synthetic_dataset(raw_dir: str, dataset_id: int = DEMO_DATASET_ID, n_train: int = 8, n_test: int = 3,
                           shape=(20, 48, 48), spacing=(1.0, 1.0, 2.0), seed: int = 0,
                           method: str = "interior_border") -> Path:
    """Write a scribble dataset (labelsTr), its dense twin (labelsTr_dense) and dense test labels."""
    from nnunet_scribble.raw_dataset import RawDatasetWriter, array_to_image, patient_grouped_folds
    from nnunet_scribble.scribble_simulation import simulate_scribbles

    rng = np.random.default_rng(seed)
    ignore = DEMO_LABELS["ignore"]
    with RawDatasetWriter(raw_dir, dataset_id, "ScribbleDemo", overwrite=True, verbose=False) as writer:
        for i in range(n_train + n_test):
            image, label = synthetic_case(rng, shape)
            image_img = array_to_image(image, spacing=spacing)
            label_img = array_to_image(label, reference=image_img)
            case = f"demo_{i:03d}"
            if i < n_train:
                scribble = simulate_scribbles(label, ignore, method=method, axis=0, seed=seed + i)
                writer.add_training_case(case, [image_img], array_to_image(scribble, reference=image_img), label_img)
            else:
                writer.add_test_case(case, [image_img], label_img)
        cases = [f"demo_{i:03d}" for i in range(n_train)]
        writer.set_splits(patient_grouped_folds(cases, lambda c: c, n_folds=min(5, n_train)))
        writer.finalize({"0": "synthetic"}, DEMO_LABELS, description="nnunet_scribble synthetic demo",
                        scribble_method=method)
    return writer.target


def nnunet_env(root: Path) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(nnUNet_raw=str(root / "nnUNet_raw"), nnUNet_preprocessed=str(root / "nnUNet_preprocessed"),
               nnUNet_results=str(root / "nnUNet_results"), nnUNet_compile="f",
               nnUNet_def_n_proc=env.get("nnUNet_def_n_proc", "2"))
    return env


def run_command(cmd: Sequence[str], env: Dict[str, str], log_file: Path) -> None:
    """Run one command, log its output to a file; on failure print the log's tail and raise."""
    with open(log_file, "a") as log:
        log.write("\n$ " + " ".join(cmd) + "\n")
        log.flush()
        result = subprocess.run(list(cmd), env=env, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = log_file.read_text().splitlines()[-40:]
        raise RuntimeError(f"command failed ({result.returncode}): {' '.join(cmd)}\n" + "\n".join(tail))


def device_name() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


DEMO_MARKER = ".nnunet_scribble_demo"


def is_demo_folder(root: Path) -> bool:
    """A folder an earlier (possibly interrupted) demo run made: ``prepare_output`` marks it first."""
    return (root / DEMO_MARKER).is_file()


def prepare_output(root: Path) -> Path:
    """An empty working folder: a new or empty one, or an earlier demo run's (replaced). Anything else is
    refused, so that a mistyped ``--output`` never deletes user data."""
    root = root.resolve()
    if root.exists():
        if not root.is_dir() or (any(root.iterdir()) and not is_demo_folder(root)):
            raise SystemExit(f"{root} exists and is not an earlier nnunet_scribble_demo folder; the demo would "
                             f"replace its contents. Pass a new or empty folder with --output.")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / DEMO_MARKER).write_text("working folder of nnunet_scribble_demo; replaced by its next run\n")
    return root


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="nnunet_scribble_demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="nnunet_scribble_demo", help="working folder (default ./nnunet_scribble_demo)")
    parser.add_argument("--budget", default="demo", help="trainer budget suffix (see trainers.BUDGETS)")
    args = parser.parse_args(argv)

    from nnunet_scribble.evaluation import evaluate_folder

    root = prepare_output(Path(args.output))
    log = root / "demo.log"
    env = nnunet_env(root)
    device = device_name()
    start = time.time()

    def step(msg):
        print(f"[{time.time() - start:6.1f}s] {msg}", flush=True)

    step(f"1/5 synthetic dataset with dense truth + simulated scribbles -> {env['nnUNet_raw']}")
    folder = make_synthetic_dataset(env["nnUNet_raw"])
    import json
    fraction = json.loads((folder / "dataset.json").read_text())["annotated_fraction"]
    step(f"    {100 * fraction:.1f}% of the training voxels carry a scribble")
    step("2/5 nnUNetv2_plan_and_preprocess + 3d_fullres_tiny configuration")
    run_command(["nnUNetv2_plan_and_preprocess", "-d", str(DEMO_DATASET_ID), "-c", "3d_fullres", "-np", "2",
                 "-npfp", "2", "--verify_dataset_integrity"], {**env, "nnUNet_n_proc_DA": "1"}, log)
    run_command([sys.executable, "-m", "nnunet_scribble", "add-configs", "-d", str(DEMO_DATASET_ID),
                 "--preset", "tiny", "-c", "3d_fullres"], env, log)
    config = "3d_fullres_tiny"
    arms = {f"nnUNetTrainerScribble_{args.budget}": "ours: partial CE",
            f"nnUNetTrainerDMSPS_{args.budget}": "ours: DMSPS dual decoder",
            f"nnUNetTrainer_{args.budget}": "nnU-Net+pL: default trainer, ignore label"}
    summaries = {}
    for i, trainer in enumerate(arms):
        step(f"3/5 nnUNetv2_train {DEMO_DATASET_ID} {config} 0 -tr {trainer} -device {device}")
        run_command(["nnUNetv2_train", str(DEMO_DATASET_ID), config, "0", "-tr", trainer, "-device", device],
                    {**env, "nnUNet_n_proc_DA": "0"}, log)
        pred = root / f"pred_{trainer}"
        step(f"4/5 nnUNetv2_predict -tr {trainer}")
        run_command(["nnUNetv2_predict", "-i", str(folder / "imagesTs"), "-o", str(pred), "-d",
                     str(DEMO_DATASET_ID), "-c", config, "-f", "0", "-tr", trainer, "-device", device,
                     "-npp", "1", "-nps", "1", "--disable_tta"], env, log)
        step(f"5/5 evaluating {trainer} on the dense test labels")
        summaries[trainer] = evaluate_folder(str(pred), str(folder / "labelsTs"), labels=[1, 2],
                                             output_folder=str(pred))
    print()
    print(comparison_table(summaries, arms, {1: "sphere", 2: "shell"}))
    step(f"done; logs in {log}, predictions and summary.json/summary.md in {root}/pred_*")
    return 0


def comparison_table(summaries: Dict[str, dict], descriptions: Dict[str, str], label_names: Dict[int, str]) -> str:
    """Markdown table: one row per trainer, Dice and HD95 per class plus the foreground mean."""
    header = "| trainer | " + " | ".join(f"Dice {n}" for n in label_names.values()) + " | mean Dice | " + \
        " | ".join(f"HD95 {n} (mm)" for n in label_names.values()) + " |"
    lines = [header, "|" + "---|" * (2 + 2 * len(label_names))]
    for trainer, summary in summaries.items():
        mean = summary["mean"]
        dice = [mean[label]["Dice"] for label in label_names]
        hd = [mean[label]["HD95"] for label in label_names]
        lines.append(f"| {trainer} ({descriptions[trainer]}) | " + " | ".join(f"{d:.3f}" for d in dice) +
                     f" | {np.mean(dice):.3f} | " + " | ".join(f"{h:.1f}" for h in hd) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
