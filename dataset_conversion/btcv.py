"""BTCV / Synapse abdominal CT (13 organs, dense labels) -> nnU-Net v2 raw dataset with simulated scribbles.

Console entry point ``nnunet_scribble_convert_btcv``: simulates scribbles from the dense labels of the training
cases (``nnunet_scribble.scribble_simulation``, seeded per case), writes them to labelsTr (ignore = 14), keeps the dense
labels in labelsTr_dense, and puts the test cases with their dense labels in imagesTs/labelsTs. Source layouts
(auto-detected):

* flat: ``btcv_NNN_0000.nii.gz`` (image) + ``btcv_NNN.nii.gz`` (label), as in ``shared/data/btcv_abdomen_ct``;
* original BTCV: ``img/imgNNNN.nii.gz`` + ``label/labelNNNN.nii.gz`` (also under ``Training/`` or
  ``RawData/Training/``).

Case ids are ``btcv_NNN`` in both layouts. Channel "CT" (nnU-Net CT normalisation). Default test cases: the last 4
cases (sorted) of the source folder. splits_final.json: ``n_folds`` folds of contiguous case numbers (one scan per
patient).

Example::

    nnunet_scribble_convert_btcv -i data/btcv_abdomen_ct -d 502 --method interior_border --every-nth 5
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

if __package__ in (None, ""):  # run as a plain script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnunet_scribble.raw_dataset import (RawDatasetWriter, array_to_image, case_seed, check_geometry, parse_int_ranges,
                                         patient_grouped_folds, read_image)

BTCV_ORGANS = ("spleen", "right_kidney", "left_kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
               "inferior_vena_cava", "portal_and_splenic_vein", "pancreas", "right_adrenal_gland",
               "left_adrenal_gland")
BTCV_LABELS = {"background": 0, **{name: i + 1 for i, name in enumerate(BTCV_ORGANS)}, "ignore": 14}
BTCV_IGNORE = 14
CHANNEL_NAMES = {0: "CT"}

_FLAT_IMG = re.compile(r"btcv_(\d+)_0000\.nii(\.gz)?")
_ORIG_IMG = re.compile(r"img(\d+)\.nii(\.gz)?")


def _case_number(c) -> int:
    if isinstance(c, (int, np.integer)):
        return int(c)
    m = re.fullmatch(r"(?:btcv_|img|label)?(\d+)", str(c).strip())
    if not m:
        raise ValueError(f"cannot read a case number from {c!r} (expected e.g. 6, '006', 'btcv_006', 'img0006')")
    return int(m.group(1))


def case_id_of(number: int) -> str:
    return f"btcv_{number:03d}"


def find_btcv_cases(src_dir) -> Tuple[str, Dict[int, Tuple[Path, Path]]]:
    """Detect the layout and list the cases: returns (layout, {number: (image path, label path)}).

    Label paths are where the label must be; their existence is checked when a case is converted.
    """
    src = Path(src_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"BTCV folder not found: {src}")
    for base in (src, src / "Training", src / "RawData" / "Training"):
        if (base / "img").is_dir():
            cases = {}
            for f in sorted((base / "img").iterdir()):
                m = _ORIG_IMG.fullmatch(f.name)
                if m:
                    n = int(m.group(1))
                    if n in cases:
                        raise ValueError(f"case {case_id_of(n)} found twice in {base / 'img'}")
                    ending = f.name[len(f"img{m.group(1)}"):]
                    cases[n] = (f, base / "label" / f"label{m.group(1)}{ending}")
            if cases:
                return "btcv_original", cases
    cases = {}
    for f in sorted(src.iterdir()):
        m = _FLAT_IMG.fullmatch(f.name)
        if m:
            n = int(m.group(1))
            if n in cases:
                raise ValueError(f"case {case_id_of(n)} found twice in {src}")
            ending = f.name[len(f"btcv_{m.group(1)}_0000"):]
            cases[n] = (f, src / f"btcv_{m.group(1)}{ending}")
    if cases:
        return "flat", cases
    raise FileNotFoundError(f"no BTCV case in {src}: expected btcv_NNN_0000.nii.gz + btcv_NNN.nii.gz or "
                            f"img/imgNNNN.nii.gz + label/labelNNNN.nii.gz")


def load_case(image_path, label_path, case_id: str, num_classes: int = BTCV_IGNORE) -> Tuple[sitk.Image, np.ndarray]:
    """Read image and label; check the label's values (0..num_classes-1) and that it has the image's size, spacing,
    origin and direction (the label array is written on the image's geometry, so any difference would misplace it)."""
    image = read_image(image_path, f"case {case_id} (image)")
    if not Path(label_path).is_file():
        raise FileNotFoundError(f"case {case_id}: label file not found: {label_path}")
    label_img = read_image(label_path, f"case {case_id} (label)")
    check_geometry(image, label_img, case_id, "image", "label")
    label = sitk.GetArrayFromImage(label_img)
    if np.issubdtype(label.dtype, np.floating):
        if not np.all(np.isfinite(label)) or not np.array_equal(label, np.round(label)):
            raise ValueError(f"case {case_id}: label has non-integer values")
    values = np.unique(label)
    bad = values[(values < 0) | (values >= num_classes)]
    if bad.size:
        raise ValueError(f"case {case_id}: unexpected label values {bad.tolist()} (allowed 0..{num_classes - 1})")
    return image, label.astype(np.uint8 if num_classes <= 255 else np.uint16)


def make_scribble(label: np.ndarray, ignore_label: int, case_id: str, method: str, every_nth: Optional[int],
                  axis, seed: int, halvings: int = 0) -> np.ndarray:
    """Simulate the scribble of one case (per-case seed) and check it lies inside the dense classes."""
    from nnunet_scribble.scribble_simulation import simulate_scribbles

    scribble = simulate_scribbles(label, ignore_label, method=method, axis=axis, seed=case_seed(seed, case_id),
                                  every_nth=every_nth, halvings=halvings)
    annotated = scribble != ignore_label
    if not np.array_equal(scribble[annotated], label[annotated]):
        raise RuntimeError(f"case {case_id}: the simulated scribble disagrees with the dense label")
    return scribble


def default_test_numbers(all_numbers: Iterable[int], n: int = 4) -> List[int]:
    return sorted(all_numbers)[-n:] if n else []


def convert_btcv(src_dir, out_raw_dir, dataset_id: int, dataset_name: str = "BTCVScribble",
                 test_cases: Optional[Iterable] = None, method: str = "interior_border",
                 every_nth: Optional[int] = None, axis: Optional[int] = 0, seed: int = 0,
                 cases: Optional[Iterable] = None, n_folds: int = 5, halvings: int = 0, overwrite: bool = False,
                 verbose: bool = True) -> Path:
    """Convert BTCV to a scribble dataset; returns the dataset folder.

    ``cases`` restricts the conversion (numbers or ids such as ``6``, ``"btcv_006"``); ``test_cases`` defaults to
    the last 4 cases of the *source folder* (so a subset keeps the same test set); ``method``/``every_nth``/
    ``axis``/``halvings``/``seed`` are passed to ``simulate_scribbles`` (seed combined with the case id).
    """
    from nnunet_scribble.scribble_simulation import GENERATORS

    if method not in GENERATORS:
        raise ValueError(f"unknown scribble method {method!r}; choose one of {GENERATORS}")
    layout, found = find_btcv_cases(src_dir)
    test_numbers = set(default_test_numbers(found) if test_cases is None else (_case_number(c) for c in test_cases))
    unknown = sorted(n for n in test_numbers if n not in found)
    if unknown:
        raise FileNotFoundError(f"test case(s) {[case_id_of(n) for n in unknown]}: no image in {src_dir}")
    if cases is None:
        selected = sorted(found)
    else:
        selected = sorted({_case_number(c) for c in cases})
        missing = [n for n in selected if n not in found]
        if missing:
            raise FileNotFoundError(f"case(s) {[case_id_of(n) for n in missing]}: no image in {src_dir}")
    train = [n for n in selected if n not in test_numbers]
    if not train:
        raise ValueError(f"no training case: all selected cases {[case_id_of(n) for n in selected]} are test cases")
    train_ids = [case_id_of(n) for n in train]
    splits = None
    if len(train_ids) >= 2:
        k = min(n_folds, len(train_ids))
        if k < n_folds:
            print(f"WARNING: only {len(train_ids)} training cases: using {k} folds instead of {n_folds}")
        splits = patient_grouped_folds(train_ids, lambda c: c, n_folds=k, by_number=True)
    else:
        print("WARNING: a single training case: no splits_final.json written")

    with RawDatasetWriter(out_raw_dir, dataset_id, dataset_name, overwrite=overwrite, labels=BTCV_LABELS,
                          verbose=verbose) as w:
        for i, n in enumerate(selected):
            cid = case_id_of(n)
            image, label = load_case(*found[n], cid)
            dense = array_to_image(label, reference=image)
            if n in test_numbers:
                w.add_test_case(cid, [image], dense)
                role = "test"
            else:
                scribble = make_scribble(label, BTCV_IGNORE, cid, method, every_nth, axis, seed, halvings)
                w.add_training_case(cid, [image], array_to_image(scribble, reference=image), dense)
                role = f"train, {100.0 * np.count_nonzero(scribble != BTCV_IGNORE) / scribble.size:.2f}% annotated"
            if verbose:
                print(f"[{i + 1}/{len(selected)}] {cid}: {role}; size {image.GetSize()}", flush=True)
        if splits is not None:
            w.set_splits(splits)
        w.finalize(CHANNEL_NAMES, BTCV_LABELS,
                   description="BTCV / Synapse multi-atlas abdominal CT (13 organs); labelsTr hold simulated "
                               "scribbles (14 = not annotated), labelsTr_dense and labelsTs the dense labels.",
                   reference="Landman et al., MICCAI 2015 Multi-Atlas Labeling Beyond the Cranial Vault",
                   scribble_method=method, scribble_every_nth=every_nth, scribble_axis=axis,
                   scribble_halvings=halvings, scribble_seed=seed, source_layout=layout,
                   test_cases=[case_id_of(n) for n in selected if n in test_numbers])
    return Path(out_raw_dir) / w.folder_name


def main(argv=None) -> int:
    from nnunet_scribble.scribble_simulation import AXIS_HELP, GENERATORS, axis_argument

    ap = argparse.ArgumentParser(prog="nnunet_scribble_convert_btcv",
                                 description="BTCV abdominal CT -> nnU-Net v2 raw dataset with simulated scribbles "
                                             "(13 organs, ignore 14).")
    ap.add_argument("-i", "--input", required=True,
                    help="BTCV folder (btcv_NNN_0000.nii.gz + btcv_NNN.nii.gz, or img/ + label/)")
    ap.add_argument("-d", "--dataset-id", type=int, required=True)
    ap.add_argument("-n", "--name", default="BTCVScribble", help="dataset name (default %(default)s)")
    ap.add_argument("-o", "--out", default=os.environ.get("nnUNet_raw"),
                    help="nnU-Net raw folder (default $nnUNet_raw)")
    ap.add_argument("--test-cases", default=None, help="test case numbers, e.g. '26-29' (default: last 4)")
    ap.add_argument("--cases", default=None, help="only convert these case numbers, e.g. '6-9,26'")
    ap.add_argument("--method", default="interior_border", choices=GENERATORS)
    ap.add_argument("--every-nth", type=int, default=None, help="keep scribbles on every n-th slice only")
    ap.add_argument("--axis", type=axis_argument, default=0, help=AXIS_HELP)
    ap.add_argument("--halvings", type=int, default=0, help="DMSPS scribble halvings (default 0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    ap.add_argument("-q", "--quiet", action="store_true")
    a = ap.parse_args(argv)
    if not a.out:
        ap.error("no output folder: pass -o or set nnUNet_raw")
    out = convert_btcv(a.input, a.out, a.dataset_id, dataset_name=a.name,
                       test_cases=parse_int_ranges(a.test_cases) if a.test_cases is not None else None,
                       method=a.method, every_nth=a.every_nth, axis=a.axis, seed=a.seed,
                       cases=parse_int_ranges(a.cases), n_folds=a.folds, halvings=a.halvings,
                       overwrite=a.overwrite, verbose=not a.quiet)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
