"""Pseudo labels from trained models: DMSPS stage 2 (uncertainty-filtered scribble expansion).

``dmsps_expand`` runs a trained stage-1 multi-decoder model over the *training* images of a scribble
dataset (nnU-Net's sliding-window predictor, decoder-averaged probabilities p = mean_k softmax_k),
keeps voxels whose normalised entropy u = -sum_c p_c log(p_c + 1e-6) / log C is below ``tau``
(0.1 for 2D, 0.3 for 3D by default), keeps the largest connected component of every class
(background included; per slice for 2D, per volume for 3D), marks every other voxel ignore
("ignore" variant of PyMIC ``_seeds_expand``, METHODS.md §2), and writes a new nnU-Net raw dataset
with the same images, the expanded labels, the same dense/test labels and the same splits.
Retraining the stage-1 trainer on that dataset is stage 2.

Two fallbacks keep a case from ending up with *less* annotation than its scribbles (both are reported as
warnings, never silent): a class that was scribbled in a case but has no confident voxel there gets its
scribbles back (``restore_lost_classes``; a stage-1 model that is unsure of a class everywhere would
otherwise teach stage 2 that the class does not exist), and a case whose expansion annotates fewer voxels
than its scribbles keeps its original scribbles.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

import cc3d
import numpy as np
import SimpleITK as sitk

from nnunet_scribble.plans import planning_commands
from nnunet_scribble.raw_dataset import RawDatasetWriter, read_image


def normalized_entropy(probs: np.ndarray) -> np.ndarray:
    """u = -sum_c p_c log(p_c + 1e-6) / log C over axis 0 (as in the DMSPS reference code)."""
    return -(probs * np.log(probs + 1e-6)).sum(0) / math.log(probs.shape[0])


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest connected component (full connectivity) of a 2D or 3D boolean mask."""
    if not mask.any():
        return mask
    labels = cc3d.connected_components(mask.astype(np.uint8), connectivity=26 if mask.ndim == 3 else 8)
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return labels == counts.argmax()


def expand_scribbles(probs: np.ndarray, ignore_label: int, tau: float, lcc: str = "slice",
                     axis: int = 0) -> np.ndarray:
    """Confident, largest-component pseudo label from class probabilities (C, *spatial); rest = ignore."""
    if lcc not in ("slice", "volume"):
        raise ValueError("lcc must be 'slice' or 'volume'")
    if probs.shape[0] != ignore_label:
        raise ValueError(f"{probs.shape[0]} probability channels but ignore label {ignore_label}")
    label = probs.argmax(0)
    confident = normalized_entropy(probs) < tau
    out = np.full(label.shape, ignore_label, dtype=np.uint8 if ignore_label < 256 else np.uint16)
    for c in range(ignore_label):
        mask = confident & (label == c)
        if lcc == "volume" or mask.ndim == 2:
            keep = largest_component(mask)
        else:
            keep = np.stack([largest_component(s) for s in np.moveaxis(mask, axis, 0)], axis=0)
            keep = np.moveaxis(keep, 0, axis)
        out[keep] = c
    return out


def restore_lost_classes(expanded: np.ndarray, scribble: np.ndarray, ignore_label: int) -> List[int]:
    """Give every class that is scribbled in ``scribble`` but absent from ``expanded`` its scribble voxels back
    (in place); returns those classes."""
    lost = [int(c) for c in np.unique(scribble[scribble != ignore_label]) if not (expanded == c).any()]
    for c in lost:
        expanded[scribble == c] = c
    return lost


def report_lost_classes(lost: Dict[int, List[str]], scribbled: Dict[int, int], labels: Dict[str, int],
                        tau: float) -> None:
    """Warn once per class in ``lost`` (class -> cases where it had no confident voxel); ``scribbled`` holds, per
    class, the number of cases whose scribbles contain it."""
    names = {v: k for k, v in labels.items()}
    for c, cases in sorted(lost.items()):
        print(f"WARNING: class {c} ({names.get(c, '?')}) has no confident voxel at tau={tau} in {len(cases)} of "
              f"{scribbled[c]} cases that scribble it (e.g. {', '.join(cases[:3])}); their scribbles of that class "
              f"were kept. A stage-1 model this unsure of a class gives stage 2 little to learn: train it longer or "
              f"raise --tau.")


MIN_GROWTH = 1.2   # a foreground class whose expansion holds fewer than 1.2x its scribbled voxels gets a warning


def report_growth(expanded_voxels: np.ndarray, scribbled_voxels: np.ndarray, labels: Dict[str, int],
                  tau: float) -> Dict[int, float]:
    """Print, per class, how many times its scribbled voxels the expansion holds (summed over the cases), and warn
    for every foreground class below ``MIN_GROWTH``: next to a background grown ~150x, stage 2 then sees that class on
    its scribbles alone (ACDC benchmark, τ = 0.1: the RV at 0.97x and 1.0x, and stage 2 lost the RV both times).
    Returns class -> growth for the classes that were scribbled."""
    names = {v: k for k, v in labels.items()}
    growth = {c: float(expanded_voxels[c] / scribbled_voxels[c]) for c in range(len(scribbled_voxels))
              if scribbled_voxels[c] > 0}
    print("expansion per class, x its scribbled voxels: " +
          ", ".join(f"{names.get(c, c)} {g:.2f}" for c, g in growth.items()))
    for c, g in growth.items():
        if c != 0 and g < MIN_GROWTH:
            print(f"WARNING: class {c} ({names.get(c, '?')}) grew only {g:.2f}x its scribbles at tau={tau}: stage 2 "
                  f"on this expansion can lose it. Re-run dmsps-expand with a higher --tau (e.g. "
                  f"{min(1.0, round(tau + 0.2, 2))}) before stage 2.")
    return growth


def _dataset_paths(dataset):
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    name = maybe_convert_to_dataset_name(dataset)
    return name, Path(nnUNet_raw) / name, (Path(nnUNet_preprocessed) / name if nnUNet_preprocessed else None)


def dmsps_expand(source_dataset, target_id: int, configuration: str, fold="0", trainer: str = "nnUNetTrainerDMSPS",
                 plans_identifier: str = "nnUNetPlans", tau: Optional[float] = None, lcc: Optional[str] = None,
                 checkpoint_name: str = "checkpoint_final.pth", device: str = "cpu",
                 dataset_name: Optional[str] = None, merge_scribbles: bool = False, overwrite: bool = False) -> Path:
    """Write the DMSPS stage-2 dataset ``Dataset{target_id}_<name>``; returns its folder."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    from nnunet_scribble.networks import MultiDecoderUNet
    from nnunet_scribble.pretrained import unwrap_network

    is_2d = configuration.startswith("2d")
    tau = (0.1 if is_2d else 0.3) if tau is None else tau
    lcc = ("slice" if is_2d else "volume") if lcc is None else lcc
    name, raw, preprocessed = _dataset_paths(source_dataset)
    dataset_json = json.loads((raw / "dataset.json").read_text())
    ignore = dataset_json["labels"].get("ignore")
    if ignore is None:
        raise ValueError(f"{name} has no ignore label: it is not a scribble dataset")
    ending = dataset_json["file_ending"]

    model_folder = get_output_folder(name, trainer, plans_identifier, configuration)
    device = torch.device(device)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=device.type == "cuda", device=device,
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder, use_folds=(fold if fold == "all" else int(fold),),
                                                   checkpoint_name=checkpoint_name)
    network = unwrap_network(predictor.network)  # nnUNet_compile=t wraps it in torch.compile
    if not isinstance(network, MultiDecoderUNet):
        raise ValueError(f"{trainer} is not a multi-decoder trainer; DMSPS stage 2 needs a stage-1 model "
                         f"trained with nnUNetTrainerDMSPS (or DMPLS/PS-Seg)")
    network.inference_mode = "mean"

    cases = sorted(p.name[:-len(ending)] for p in (raw / "labelsTr").iterdir() if p.name.endswith(ending))
    print(f"DMSPS stage 2: predicting {len(cases)} training cases of {name} with {trainer} ({configuration}, "
          f"fold {fold}); tau={tau}, largest component per {lcc}")
    writer = RawDatasetWriter(nnUNet_raw, target_id, dataset_name or f"{name.split('_', 1)[1]}Stage2",
                              overwrite=overwrite)
    with tempfile.TemporaryDirectory() as tmp, writer:
        n_channels = len(dataset_json["channel_names"])
        inputs = [[str(raw / "imagesTr" / f"{c}_{i:04d}{ending}") for i in range(n_channels)] for c in cases]
        predictor.predict_from_files(inputs, [os.path.join(tmp, c) for c in cases], save_probabilities=True,
                                     overwrite=True, num_processes_preprocessing=1,
                                     num_processes_segmentation_export=1)
        fractions, lost, scribbled = [], {}, Counter()
        n_classes = ignore + 1
        expanded_voxels, scribbled_voxels = np.zeros(n_classes, np.int64), np.zeros(n_classes, np.int64)
        for c, case_inputs in zip(cases, inputs):
            probs = np.load(os.path.join(tmp, c + ".npz"))["probabilities"].astype(np.float32)
            scribble_img = read_image(raw / "labelsTr" / f"{c}{ending}")
            scribble = sitk.GetArrayFromImage(scribble_img)
            if probs.shape[1:] != scribble.shape:
                raise RuntimeError(f"{c}: probabilities {probs.shape[1:]} do not match the label {scribble.shape}")
            annotated = scribble != ignore
            scribbled.update(np.unique(scribble[annotated]).tolist())
            expanded = expand_scribbles(probs, ignore, tau, lcc)
            if merge_scribbles:
                expanded[annotated] = scribble[annotated]
            for k in restore_lost_classes(expanded, scribble, ignore):
                lost.setdefault(k, []).append(c)
            if (expanded != ignore).sum() < annotated.sum():
                # an "expansion" smaller than the scribbles (e.g. only confident background in the zero border,
                # which nnU-Net's cropping then discards) would leave the case without annotation
                print(f"WARNING: {c}: fewer confident voxels at tau={tau} than scribbled ones; keeping its "
                      f"original scribbles")
                expanded = scribble
            fractions.append(float((expanded != ignore).mean()))
            expanded_voxels += np.bincount(expanded.ravel().astype(np.int64), minlength=n_classes)[:n_classes]
            scribbled_voxels += np.bincount(scribble.ravel().astype(np.int64), minlength=n_classes)[:n_classes]
            label_img = sitk.GetImageFromArray(expanded.astype(scribble.dtype))
            label_img.CopyInformation(scribble_img)
            images = [read_image(p) for p in case_inputs]
            dense_file = raw / "labelsTr_dense" / f"{c}{ending}"
            writer.add_training_case(c, images, label_img, read_image(dense_file) if dense_file.is_file() else None)
        report_lost_classes(lost, scribbled, dataset_json["labels"], tau)
        report_growth(expanded_voxels[:ignore], scribbled_voxels[:ignore], dataset_json["labels"], tau)
        for image_file in sorted((raw / "imagesTs").glob(f"*_0000{ending}")) if (raw / "imagesTs").is_dir() else []:
            c = image_file.name[:-len(f"_0000{ending}")]
            dense_file = raw / "labelsTs" / f"{c}{ending}"
            writer.add_test_case(c, [read_image(raw / "imagesTs" / f"{c}_{i:04d}{ending}") for i in range(n_channels)],
                                 read_image(dense_file) if dense_file.is_file() else None)
        for splits in ([preprocessed / "splits_final.json"] if preprocessed else []) + [raw / "splits_final.json"]:
            if splits.is_file():
                writer.set_splits(json.loads(splits.read_text()))
                break
        writer.finalize(dataset_json["channel_names"], dataset_json["labels"],
                        description=f"DMSPS stage-2 expansion of {name} by {trainer} {configuration} fold {fold}",
                        scribble_method=f"dmsps_stage2(tau={tau}, lcc={lcc}, merge_scribbles={merge_scribbles})")
    print(f"expanded labels cover {100 * np.mean(fractions):.1f}% of the voxels on average "
          f"(source scribbles: {dataset_json.get('annotated_fraction', 'n/a')})")
    plan = " && ".join(" ".join(c) for c in planning_commands(target_id, configuration))
    train = stage2_train_command(target_id, configuration, fold, trainer, model_folder, checkpoint_name)
    print(f"wrote {writer.target}\nnext: {plan} && {train}")
    return writer.target


def stage2_train_command(target_id: int, configuration: str, fold, trainer: str, model_folder: str,
                         checkpoint_name: str = "checkpoint_final.pth") -> str:
    """The stage-2 training command ``dmsps-expand`` suggests. As the DMSPS reference code does, stage 2 starts from
    the stage-1 model (``nnUNetTrainerDMSPS_stage2``, same budget suffix) when the stage-1 trainer is
    ``nnUNetTrainerDMSPS[_<budget>]``; for any other stage-1 trainer, the same trainer from scratch."""
    from nnunet_scribble.trainers import BUDGETS

    command = f"nnUNetv2_train {target_id} {configuration} {fold}"
    suffix = trainer[len("nnUNetTrainerDMSPS"):] if trainer.startswith("nnUNetTrainerDMSPS") else None
    if suffix in [""] + [f"_{b}" for b in BUDGETS]:
        stage2 = "nnUNetTrainerDMSPS_stage2" + suffix
        checkpoint = os.path.join(model_folder, f"fold_{fold}", checkpoint_name)
        return f"{command} -tr {stage2} -pretrained_weights {checkpoint}"
    return f"{command} -tr {trainer}"
