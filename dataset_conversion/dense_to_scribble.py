"""Any dense nnU-Net v2 raw dataset -> scribble dataset with simulated scribbles.

Console entry point ``nnunet_scribble_convert_dense``: reads the source dataset's dataset.json (channel_names, labels,
file_ending), simulates scribbles from every training label (``nnunet_scribble.scribble_simulation``, seeded per
case), and writes a new raw dataset whose labelsTr are the scribbles with ``"ignore"`` = highest source label + 1,
whose labelsTr_dense are the source labels, with imagesTs (and labelsTs when present) copied, and with the source's
``splits_final.json`` (raw folder, else ``$nnUNet_preprocessed/<source>/``) copied when there is one.
Region-based datasets and datasets that already have an ignore label are refused. Files must be readable and
writable by SimpleITK (.nii.gz, .nii, .nrrd, .mha, ...).

Example::

    nnunet_scribble_convert_dense -i $nnUNet_raw/Dataset004_Hippocampus -d 504 --method skeleton
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

if __package__ in (None, ""):  # run as a plain script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnunet_scribble.raw_dataset import RawDatasetWriter, array_to_image, case_seed, read_image

_SITK_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".mha.gz")


def _identifiers(folder: Path, file_ending: str):
    """{case id: [channel files]} of an nnU-Net images folder (files ``{case}_{ch:04d}{file_ending}``)."""
    out = {}
    if not folder.is_dir():
        return out
    pat = re.compile(r"(.+)_(\d{4})" + re.escape(file_ending))
    for f in sorted(folder.iterdir()):
        m = pat.fullmatch(f.name)
        if m:
            out.setdefault(m.group(1), {})[int(m.group(2))] = f
    return out


def _read_label_array(path: Path, case_id: str, what: str) -> tuple:
    img = read_image(path, f"case {case_id} ({what})")
    arr = sitk.GetArrayFromImage(img)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"case {case_id}: {what} has non-integer values")
    if arr.size and arr.min() < 0:
        raise ValueError(f"case {case_id}: {what} has negative values {np.unique(arr[arr < 0]).tolist()}")
    return img, arr.astype(np.int64)


def _images(channel_files: dict, n_channels: int, case_id: str):
    missing = [c for c in range(n_channels) if c not in channel_files]
    if missing:
        raise FileNotFoundError(f"case {case_id}: missing channel file(s) {missing}")
    return [read_image(channel_files[c], f"case {case_id} (channel {c})") for c in range(n_channels)]


def _source_splits(src: Path) -> Optional[list]:
    cands = [src / "splits_final.json"]
    pp = os.environ.get("nnUNet_preprocessed")
    if pp:
        cands.append(Path(pp) / src.name / "splits_final.json")
    for f in cands:
        if f.is_file():
            return json.loads(f.read_text())
    return None


def convert_dense_dataset(src_dataset_folder, out_raw_dir, dataset_id: int, dataset_name: Optional[str] = None,
                          method: str = "interior_border", every_nth: Optional[int] = None, axis: Optional[int] = 0,
                          seed: int = 0, halvings: int = 0, overwrite: bool = False, verbose: bool = True) -> Path:
    """Convert a dense raw dataset folder into a scribble dataset; returns the new dataset folder."""
    from nnunet_scribble.scribble_simulation import GENERATORS, simulate_scribbles

    if method not in GENERATORS:
        raise ValueError(f"unknown scribble method {method!r}; choose one of {GENERATORS}")
    src = Path(src_dataset_folder)
    if not (src / "dataset.json").is_file():
        raise FileNotFoundError(f"no dataset.json in {src}")
    dj = json.loads((src / "dataset.json").read_text())
    for key in ("channel_names", "labels", "file_ending"):
        if key not in dj and not (key == "channel_names" and "modality" in dj):
            raise ValueError(f"{src / 'dataset.json'} lacks the key {key!r}")
    channel_names = {str(k): v for k, v in (dj.get("channel_names") or dj["modality"]).items()}
    n_channels = len(channel_names)
    file_ending = dj["file_ending"]
    if not file_ending.lower().endswith(_SITK_ENDINGS):
        raise ValueError(f"file_ending {file_ending!r} is not supported (SimpleITK formats only: {_SITK_ENDINGS})")
    if "dataset" in dj:
        raise ValueError(f"{src}: datasets listing their files in dataset.json['dataset'] are not supported")
    src_labels = dj["labels"]
    if "regions_class_order" in dj or any(isinstance(v, (list, tuple)) for v in src_labels.values()):
        raise ValueError(f"{src} is region-based; only plain integer label maps can be converted")
    if "ignore" in src_labels:
        raise ValueError(f"{src} already has an ignore label ({src_labels['ignore']}); it is not a dense dataset")
    values = sorted(int(v) for v in src_labels.values())
    if values != list(range(len(values))):
        raise ValueError(f"{src}: label values {values} are not contiguous from 0")
    ignore = len(values)
    labels = {str(k): int(v) for k, v in sorted(src_labels.items(), key=lambda kv: int(kv[1]))}
    labels["ignore"] = ignore
    if dataset_name is None:
        dataset_name = re.sub(r"^Dataset\d{3}_", "", src.name) + "Scribble"

    train = _identifiers(src / "imagesTr", file_ending)
    test = _identifiers(src / "imagesTs", file_ending)
    if not train:
        raise FileNotFoundError(f"no training image ({{case}}_0000{file_ending}) in {src / 'imagesTr'}")
    if "numTraining" in dj and int(dj["numTraining"]) != len(train):
        print(f"WARNING: dataset.json says numTraining={dj['numTraining']} but imagesTr holds {len(train)} cases")
    splits = _source_splits(src)
    if splits is not None:
        unknown = sorted({c for f in splits for c in list(f.get("train", [])) + list(f.get("val", []))} - set(train))
        if unknown:
            raise ValueError(f"the source splits_final.json names cases that are not in imagesTr: {unknown[:10]}")

    total = len(train) + len(test)
    with RawDatasetWriter(out_raw_dir, dataset_id, dataset_name, overwrite=overwrite, labels=labels,
                          file_ending=file_ending, verbose=verbose) as w:
        for i, cid in enumerate(sorted(train)):
            images = _images(train[cid], n_channels, cid)
            lab_path = src / "labelsTr" / f"{cid}{file_ending}"
            if not lab_path.is_file():
                raise FileNotFoundError(f"case {cid}: label file not found: {lab_path}")
            lab_img, label = _read_label_array(lab_path, cid, "label")
            bad = np.unique(label[label >= ignore]) if label.size else []
            if len(bad):
                raise ValueError(f"case {cid}: unexpected label values {list(map(int, bad))} "
                                 f"(dataset.json labels 0..{ignore - 1})")
            if tuple(lab_img.GetSize()) != tuple(images[0].GetSize()):
                raise ValueError(f"case {cid}: label size {lab_img.GetSize()} != image size {images[0].GetSize()}")
            label = label.astype(np.uint8 if ignore <= 255 else np.uint16)
            lab3 = label[None] if label.ndim == 2 else label
            scribble = simulate_scribbles(lab3, ignore, method=method, axis=axis, seed=case_seed(seed, cid),
                                          every_nth=every_nth, halvings=halvings)
            scribble = scribble[0] if label.ndim == 2 else scribble
            w.add_training_case(cid, images, array_to_image(scribble, reference=lab_img),
                                array_to_image(label, reference=lab_img))
            if verbose:
                frac = 100.0 * np.count_nonzero(scribble != ignore) / scribble.size
                print(f"[{i + 1}/{total}] {cid}: train, {frac:.2f}% annotated", flush=True)
        for j, cid in enumerate(sorted(test)):
            images = _images(test[cid], n_channels, cid)
            lab_path = src / "labelsTs" / f"{cid}{file_ending}"
            dense = None
            if lab_path.is_file():
                dense, _ = _read_label_array(lab_path, cid, "test label")
            w.add_test_case(cid, images, dense)
            if verbose:
                print(f"[{len(train) + j + 1}/{total}] {cid}: test{'' if dense is not None else ' (no label)'}",
                      flush=True)
        if splits is not None:
            w.set_splits([{"train": list(f["train"]), "val": list(f["val"])} for f in splits])
        keep = {k: v for k, v in dj.items() if k in ("description", "reference", "licence", "release", "citation",
                                                       "tensorImageSize")}
        if "licence" in keep:
            keep["license"] = keep.pop("licence")
        keep["description"] = (f"Scribbles simulated ({method}) from the dense dataset {src.name}"
                               + (f": {dj['description']}" if dj.get("description") else ""))
        w.finalize(channel_names, labels, source_dataset=src.name, scribble_method=method,
                   scribble_every_nth=every_nth, scribble_axis=axis, scribble_halvings=halvings, scribble_seed=seed,
                   **keep)
    return Path(out_raw_dir) / w.folder_name


def main(argv=None) -> int:
    from nnunet_scribble.scribble_simulation import AXIS_HELP, GENERATORS, axis_argument

    ap = argparse.ArgumentParser(prog="nnunet_scribble_convert_dense",
                                 description="Dense nnU-Net v2 raw dataset -> scribble dataset (simulated scribbles, "
                                             "ignore = highest label + 1).")
    ap.add_argument("-i", "--input", required=True, help="source dataset folder (DatasetXXX_Name with dataset.json)")
    ap.add_argument("-d", "--dataset-id", type=int, required=True)
    ap.add_argument("-n", "--name", default=None, help="dataset name (default <source name>Scribble)")
    ap.add_argument("-o", "--out", default=os.environ.get("nnUNet_raw"),
                    help="nnU-Net raw folder (default $nnUNet_raw)")
    ap.add_argument("--method", default="interior_border", choices=GENERATORS)
    ap.add_argument("--every-nth", type=int, default=None)
    ap.add_argument("--axis", type=axis_argument, default=0, help=AXIS_HELP)
    ap.add_argument("--halvings", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("-q", "--quiet", action="store_true")
    a = ap.parse_args(argv)
    if not a.out:
        ap.error("no output folder: pass -o or set nnUNet_raw")
    out = convert_dense_dataset(a.input, a.out, a.dataset_id, dataset_name=a.name, method=a.method,
                                every_nth=a.every_nth, axis=a.axis,
                                seed=a.seed, halvings=a.halvings, overwrite=a.overwrite, verbose=not a.quiet)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
