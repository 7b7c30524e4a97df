"""ACDC with expert scribbles -> nnU-Net v2 raw scribble dataset.

Console entry point ``nnunet_scribble_convert_acdc``: converts the ACDC cine-MRI volumes with the expert scribbles of
Valvano et al. (2021) into an nnU-Net raw dataset whose labelsTr are the scribbles (4 = ignore) and whose
labelsTr_dense / labelsTs hold the dense ground truth. Two source layouts:

* ``--h5-dir`` (WSL4MIS ``patientNNN_frameMM.h5`` with keys image/label/scribble) together with ``--scribble-dir``
  (``patientNNN_frameMM_scribble.nii.gz``), which supplies the voxel geometry (spacing, origin, direction) that the
  h5 files lack; the h5 scribble must equal the NIfTI scribble voxel for voxel.
* ``--acdc-dir`` (original ACDC: ``patientNNN/patientNNN_frameMM.nii.gz`` + ``..._gt.nii.gz``, possibly under
  ``training/``/``testing/``) together with ``--scribble-dir``.

Labels: background 0, RV 1, MYO 2, LV 3, ignore 4. Case id ``patientNNN_frameMM``; one channel "cine-MRI" (nnU-Net's
default z-score normalisation). Patients in ``--test-patients`` (default 21-40) go to imagesTs/labelsTs (dense);
the others are training cases, with splits_final.json made of folds of contiguous patient numbers.

Example::

    nnunet_scribble_convert_acdc --h5-dir data/acdc_scribble_h5 --scribble-dir data/acdc_scribble_nii \\
        -d 501 -o $nnUNet_raw
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

if __package__ in (None, ""):  # run as a plain script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnunet_scribble.raw_dataset import (RawDatasetWriter, array_to_image, parse_int_ranges,
                                         patient_grouped_folds, read_image, GEOMETRY_TOLERANCE)

ACDC_LABELS = {"background": 0, "RV": 1, "MYO": 2, "LV": 3, "ignore": 4}
ACDC_IGNORE = 4
CHANNEL_NAMES = {0: "cine-MRI"}
DEFAULT_TEST_PATIENTS = tuple(range(21, 41))

_H5_RE = re.compile(r"patient(\d{3})_frame(\d{2})\.h5")
_NII_RE = re.compile(r"patient(\d{3})_frame(\d{2})\.nii(\.gz)?")


def _patient_number(p) -> int:
    if isinstance(p, (int, np.integer)):
        return int(p)
    m = re.fullmatch(r"(?:patient)?(\d+)", str(p).strip())
    if not m:
        raise ValueError(f"cannot read a patient number from {p!r} (expected e.g. 41, '041' or 'patient041')")
    return int(m.group(1))


def _patient_of(case_id: str) -> str:
    return case_id.split("_")[0]


def _select_patients(found: Dict[int, List[str]], patients, source: str) -> List[int]:
    if patients is None:
        return sorted(found)
    wanted = sorted({_patient_number(p) for p in patients})
    missing = [p for p in wanted if p not in found]
    if missing:
        raise FileNotFoundError(f"patient(s) {', '.join(f'patient{p:03d}' for p in missing)}: no file in {source}")
    return wanted


def _describe_mismatch(a: np.ndarray, b: np.ndarray) -> str:
    """Explain how array b (NIfTI) differs from a (h5)."""
    if a.shape != b.shape:
        hint = ""
        if sorted(a.shape) == sorted(b.shape):
            for perm in ((0, 2, 1), (2, 1, 0), (1, 0, 2), (1, 2, 0), (2, 0, 1)):
                if np.transpose(b, perm).shape == a.shape and np.array_equal(np.transpose(b, perm), a):
                    hint = f" (the NIfTI array equals the h5 array with its axes permuted as {perm})"
                    break
        return f"shape {b.shape} (NIfTI, SimpleITK z,y,x) != {a.shape} (h5){hint}"
    n = int(np.count_nonzero(a != b))
    hint = ""
    for ax in range(a.ndim):
        if np.array_equal(np.flip(b, ax), a):
            hint = f" (the NIfTI array equals the h5 array flipped along axis {ax})"
            break
    return f"{n} of {a.size} voxels differ{hint}"


def _folds(train_cases: List[str], n_folds: int, verbose: bool) -> Optional[list]:
    n_pat = len({_patient_of(c) for c in train_cases})
    if n_pat < 2:
        print(f"WARNING: only {n_pat} training patient(s): no splits_final.json written")
        return None
    k = min(n_folds, n_pat)
    if k < n_folds:
        print(f"WARNING: only {n_pat} training patients: using {k} folds instead of {n_folds}")
    return patient_grouped_folds(train_cases, _patient_of, n_folds=k, by_number=True)


def _write_acdc(cases: List[Tuple[str, int, Callable[[], tuple]]], out_raw_dir, dataset_id: int, dataset_name: str,
                test_patients, n_folds: int, overwrite: bool, verbose: bool, extra: dict) -> Path:
    """cases: (case_id, patient number, loader) with loader() -> (image, scribble or None, dense) sitk images."""
    test_set = {_patient_number(p) for p in (test_patients or ())}
    train_cases = [c for c, p, _ in cases if p not in test_set]
    if not train_cases:
        raise ValueError("no training case: every selected patient is a test patient")
    splits = _folds(train_cases, n_folds, verbose)
    with RawDatasetWriter(out_raw_dir, dataset_id, dataset_name, overwrite=overwrite, labels=ACDC_LABELS,
                          verbose=verbose) as w:
        for i, (case_id, pat, loader) in enumerate(cases):
            image, scribble, dense = loader()
            if pat in test_set:
                w.add_test_case(case_id, [image], dense)
                role = "test"
            else:
                w.add_training_case(case_id, [image], scribble, dense)
                arr = sitk.GetArrayViewFromImage(scribble)
                role = f"train, {100.0 * np.count_nonzero(arr != ACDC_IGNORE) / arr.size:.2f}% annotated"
            if verbose:
                sp = ", ".join(f"{s:.3g}" for s in image.GetSpacing())
                print(f"[{i + 1}/{len(cases)}] {case_id}: {role}; size {image.GetSize()}, spacing ({sp})",
                      flush=True)
        if splits is not None:
            w.set_splits(splits)
        w.finalize(CHANNEL_NAMES, ACDC_LABELS,
                   test_patients=sorted(p for p in test_set if p in {c[1] for c in cases}),
                   splits_protocol=(f"{len(splits)} folds of contiguous training patient numbers"
                                    if splits else "none"),
                   **extra)
    return Path(out_raw_dir) / w.folder_name


# ----------------------------------------------------------------------------------------------------------------------
# h5 (WSL4MIS) layout
# ----------------------------------------------------------------------------------------------------------------------
def load_acdc_h5_case(h5_path, nii_scribble_path, case_id: str) -> Tuple[sitk.Image, sitk.Image, sitk.Image]:
    """Read one WSL4MIS h5 case, check its scribble against the NIfTI scribble, return (image, scribble, dense)."""
    import h5py

    h5_path, nii_scribble_path = Path(h5_path), Path(nii_scribble_path)
    if not h5_path.is_file():
        raise FileNotFoundError(f"case {case_id}: h5 file not found: {h5_path}")
    if not nii_scribble_path.is_file():
        raise FileNotFoundError(f"case {case_id}: scribble NIfTI not found: {nii_scribble_path}")
    with h5py.File(h5_path, "r") as f:
        missing = [k for k in ("image", "label", "scribble") if k not in f]
        if missing:
            raise ValueError(f"case {case_id}: {h5_path} lacks the dataset(s) {missing} (has {list(f.keys())})")
        image = np.asarray(f["image"][()])
        label = np.asarray(f["label"][()])
        scribble = np.asarray(f["scribble"][()])
    if not (image.shape == label.shape == scribble.shape) or image.ndim != 3:
        raise ValueError(f"case {case_id}: h5 arrays must be 3D and of equal shape; image {image.shape}, "
                         f"label {label.shape}, scribble {scribble.shape}")
    ref = read_image(nii_scribble_path, f"case {case_id}")
    nii = sitk.GetArrayFromImage(ref)
    if nii.shape != scribble.shape or not np.array_equal(nii, scribble):
        raise ValueError(f"case {case_id}: the h5 scribble does not equal the NIfTI scribble {nii_scribble_path.name}"
                         f" voxel for voxel: {_describe_mismatch(scribble, nii)}")
    img = array_to_image(image.astype(np.float32, copy=False), reference=ref)
    scr = array_to_image(scribble, reference=ref)
    dense = array_to_image(label, reference=ref)
    return img, scr, dense


def convert_acdc_h5(h5_dir, nii_scribble_dir, out_raw_dir, dataset_id: int, dataset_name: str = "ACDCScribble",
                    test_patients: Iterable = DEFAULT_TEST_PATIENTS, n_folds: int = 5, patients: Iterable = None,
                    overwrite: bool = False, verbose: bool = True) -> Path:
    """Convert the WSL4MIS ACDC h5 volumes (+ Valvano scribble NIfTIs for the geometry) into a raw dataset.

    ``patients`` restricts the conversion to these patient numbers (e.g. ``[41, 42, 21]``); ``test_patients`` go to
    imagesTs/labelsTs. Returns the dataset folder.
    """
    h5_dir, nii_scribble_dir = Path(h5_dir), Path(nii_scribble_dir)
    if not h5_dir.is_dir():
        raise FileNotFoundError(f"h5 folder not found: {h5_dir}")
    if not nii_scribble_dir.is_dir():
        raise FileNotFoundError(f"scribble NIfTI folder not found: {nii_scribble_dir}")
    found: Dict[int, List[str]] = {}
    for f in sorted(h5_dir.iterdir()):
        m = _H5_RE.fullmatch(f.name)
        if m:
            found.setdefault(int(m.group(1)), []).append(f.name[:-3])
    if not found:
        raise FileNotFoundError(f"no patientNNN_frameMM.h5 file in {h5_dir}")
    cases = []
    for p in _select_patients(found, patients, str(h5_dir)):
        for case_id in found[p]:
            cases.append((case_id, p, lambda c=case_id: load_acdc_h5_case(
                h5_dir / f"{c}.h5", nii_scribble_dir / f"{c}_scribble.nii.gz", c)))
    extra = dict(description="ACDC cine-MRI (WSL4MIS h5: intensities clipped at the 99th percentile and scaled to "
                             "[0, 1]) with the expert scribbles of Valvano et al. (TMI 2021) in labelsTr "
                             "(4 = not annotated); dense ground truth in labelsTr_dense and labelsTs.",
                 reference="Bernard et al., IEEE TMI 2018; Valvano et al., IEEE TMI 2021",
                 scribble_method="expert (manual)", source_layout="wsl4mis_h5")
    return _write_acdc(cases, out_raw_dir, dataset_id, dataset_name, test_patients, n_folds, overwrite, verbose,
                       extra)


# ----------------------------------------------------------------------------------------------------------------------
# original ACDC NIfTI layout
# ----------------------------------------------------------------------------------------------------------------------
def _find_acdc_frames(acdc_dir: Path) -> Dict[str, Path]:
    frames: Dict[str, Path] = {}
    for f in sorted(acdc_dir.rglob("patient*_frame*.nii*")):
        if _NII_RE.fullmatch(f.name):
            case_id = f.name.split(".")[0]
            if case_id in frames:
                raise ValueError(f"case {case_id} found twice: {frames[case_id]} and {f}")
            frames[case_id] = f
    return frames


def load_acdc_nifti_case(image_path, gt_path, scribble_path, case_id: str):
    """Read one original-layout ACDC frame -> (image, scribble or None, dense), all on the image's geometry.

    The scribble must have the image's size and spacing (ValueError otherwise); an origin/direction difference only
    warns (scribble files are often saved with a simplified header) and the image geometry is used.
    """
    image = read_image(image_path, f"case {case_id} (image)")
    if not Path(gt_path).is_file():
        raise FileNotFoundError(f"case {case_id}: ground truth not found: {gt_path}")
    dense = read_image(gt_path, f"case {case_id} (ground truth)")
    if image.GetDimension() != 3:
        raise ValueError(f"case {case_id}: expected a 3D image, got {image.GetDimension()}D ({image_path})")
    scribble = None
    if scribble_path is not None:
        if not Path(scribble_path).is_file():
            raise FileNotFoundError(f"case {case_id}: scribble not found: {scribble_path}")
        scribble = read_image(scribble_path, f"case {case_id} (scribble)")
        if tuple(scribble.GetSize()) != tuple(image.GetSize()):
            raise ValueError(f"case {case_id}: scribble size {scribble.GetSize()} != image size {image.GetSize()}")
        if not np.allclose(scribble.GetSpacing(), image.GetSpacing(), rtol=0, atol=GEOMETRY_TOLERANCE):
            raise ValueError(f"case {case_id}: scribble spacing {scribble.GetSpacing()} != image spacing "
                             f"{image.GetSpacing()}")
        if not (np.allclose(scribble.GetOrigin(), image.GetOrigin(), rtol=0, atol=GEOMETRY_TOLERANCE)
                and np.allclose(scribble.GetDirection(), image.GetDirection(), rtol=0, atol=GEOMETRY_TOLERANCE)):
            print(f"WARNING: case {case_id}: scribble origin/direction differ from the image's; using the image "
                  f"geometry (same voxel grid)")
        scribble = sitk.Image(scribble)
        scribble.CopyInformation(image)
    return image, scribble, dense


def convert_acdc_nifti(acdc_dir, scribble_dir, out_raw_dir, dataset_id: int, dataset_name: str = "ACDCScribble",
                       test_patients: Iterable = DEFAULT_TEST_PATIENTS, n_folds: int = 5, patients: Iterable = None,
                       overwrite: bool = False, verbose: bool = True) -> Path:
    """Convert the original ACDC layout (``patientNNN/patientNNN_frameMM.nii.gz`` + ``_gt``) plus the scribble
    NIfTIs (``<scribble_dir>/patientNNN_frameMM_scribble.nii.gz``, needed for training patients only)."""
    acdc_dir, scribble_dir = Path(acdc_dir), Path(scribble_dir)
    if not acdc_dir.is_dir():
        raise FileNotFoundError(f"ACDC folder not found: {acdc_dir}")
    if not scribble_dir.is_dir():
        raise FileNotFoundError(f"scribble folder not found: {scribble_dir}")
    frames = _find_acdc_frames(acdc_dir)
    if not frames:
        raise FileNotFoundError(f"no patientNNN/patientNNN_frameMM.nii.gz file under {acdc_dir}")
    found: Dict[int, List[str]] = {}
    for c in frames:
        found.setdefault(int(c[7:10]), []).append(c)
    test_set = {_patient_number(p) for p in (test_patients or ())}
    cases = []
    for p in _select_patients(found, patients, str(acdc_dir)):
        for case_id in sorted(found[p]):
            img_path = frames[case_id]
            ending = ".nii.gz" if img_path.name.endswith(".nii.gz") else ".nii"
            gt_path = img_path.with_name(f"{case_id}_gt{ending}")
            scr_path = None if p in test_set else scribble_dir / f"{case_id}_scribble.nii.gz"
            cases.append((case_id, p, lambda a=img_path, b=gt_path, s=scr_path, c=case_id:
                          load_acdc_nifti_case(a, b, s, c)))
    extra = dict(description="ACDC cine-MRI (original NIfTI intensities) with the expert scribbles of Valvano et "
                             "al. (TMI 2021) in labelsTr (4 = not annotated); dense ground truth in labelsTr_dense "
                             "and labelsTs.",
                 reference="Bernard et al., IEEE TMI 2018; Valvano et al., IEEE TMI 2021",
                 scribble_method="expert (manual)", source_layout="acdc_nifti")
    return _write_acdc(cases, out_raw_dir, dataset_id, dataset_name, test_patients, n_folds, overwrite, verbose,
                       extra)


# ----------------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="nnunet_scribble_convert_acdc",
                                 description="ACDC + expert scribbles -> nnU-Net v2 raw scribble dataset "
                                             "(labels: background 0, RV 1, MYO 2, LV 3, ignore 4).")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--h5-dir", help="WSL4MIS folder of patientNNN_frameMM.h5 (image/label/scribble)")
    src.add_argument("--acdc-dir", help="original ACDC folder (patientNNN/patientNNN_frameMM[_gt].nii.gz)")
    ap.add_argument("--scribble-dir", required=True, help="folder of patientNNN_frameMM_scribble.nii.gz")
    ap.add_argument("-d", "--dataset-id", type=int, required=True)
    ap.add_argument("-n", "--name", default="ACDCScribble", help="dataset name (default %(default)s)")
    ap.add_argument("-o", "--out", default=os.environ.get("nnUNet_raw"),
                    help="nnU-Net raw folder (default $nnUNet_raw)")
    ap.add_argument("--test-patients", default="21-40", help="patients for imagesTs, e.g. '21-40' ('' for none)")
    ap.add_argument("--patients", default=None, help="only convert these patients, e.g. '21,22,41-44'")
    ap.add_argument("--folds", type=int, default=5, help="number of folds by patient number (default 5)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    ap.add_argument("-q", "--quiet", action="store_true")
    a = ap.parse_args(argv)
    if not a.out:
        ap.error("no output folder: pass -o or set nnUNet_raw")
    kw = dict(test_patients=parse_int_ranges(a.test_patients) or (), n_folds=a.folds,
              patients=parse_int_ranges(a.patients), overwrite=a.overwrite, verbose=not a.quiet,
              dataset_name=a.name)
    if a.h5_dir:
        out = convert_acdc_h5(a.h5_dir, a.scribble_dir, a.out, a.dataset_id, **kw)
    else:
        out = convert_acdc_nifti(a.acdc_dir, a.scribble_dir, a.out, a.dataset_id, **kw)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
