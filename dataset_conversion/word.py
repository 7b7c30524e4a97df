"""WORD abdominal CT (16 organs) -> nnU-Net v2 raw scribble dataset.

Console entry point ``nnunet_scribble_convert_word``: converts the official WORD layout
(``imagesTr/ labelsTr/ imagesVal/ labelsVal/ imagesTs/ labelsTs/`` holding ``word_NNNN.nii.gz``) into an nnU-Net raw
dataset whose labelsTr are scribbles (simulated from the dense labels, or the released WORD scribbles where
unlabelled = 255 and background = 0) and whose labelsTr_dense / labelsTs hold the dense labels.

* ``--organs all``: the 16 WORD organs (ignore 17). ``--organs dmsps7``: the DMSPS / PS-Seg relabelling (METHODS §1):
  keep 1-6, pancreas 8 -> 7, esophagus 7 and 9-16 -> background; labels liver, spleen, left_kidney,
  right_kidney, stomach, gallbladder, pancreas (ignore 8).
* ``--window -150 250`` (default) clips the HU values (they stay HU; channel "CT", nnU-Net CT normalisation);
  ``--no-window`` keeps the raw values.
* ROI crop (default on): each case is cropped to the bounding box (+- ``--margin`` voxels) of the body, the largest
  26-connected component of ``image > --body-threshold`` (-500 HU) computed on the image alone (before windowing,
  since every windowed value exceeds -500). The labels are never used, so test labels cannot leak into the crop
  (unlike DMSPS ``preprocess_WORD.py``, which crops to the ground-truth foreground); the same box is applied to the
  image, its dense label and its scribble.
* WORD's validation cases (imagesVal) become training cases; splits_final.json holds one fold with train = imagesTr
  cases and val = imagesVal cases (WORD's official model-selection split). imagesTs -> imagesTs with dense labelsTs.

Example::

    nnunet_scribble_convert_word -i /data/WORD -d 503 --organs dmsps7 --source simulated --every-nth 10
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

if __package__ in (None, ""):  # run as a plain script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnunet_scribble.raw_dataset import RawDatasetWriter, array_to_image, case_seed, check_geometry, read_image

WORD_ORGANS = ("liver", "spleen", "left_kidney", "right_kidney", "stomach", "gallbladder", "esophagus", "pancreas",
               "duodenum", "colon", "intestine", "adrenal", "rectum", "bladder", "Head_of_femur_L", "Head_of_femur_R")
WORD_NUM_ORGANS = len(WORD_ORGANS)
RELEASED_UNLABELLED = 255
CHANNEL_NAMES = {0: "CT"}
ORGAN_SETS = ("all", "dmsps7")
_CASE_RE = re.compile(r"(word_\d+)\.nii(\.gz)?")


def organ_mapping(organs: str = "all") -> Tuple[np.ndarray, Dict[str, int]]:
    """Look-up table WORD value (0..16) -> output label, and the dataset.json labels (incl. ignore)."""
    if organs == "all":
        lut = np.arange(WORD_NUM_ORGANS + 1)
        names = list(WORD_ORGANS)
    elif organs == "dmsps7":
        lut = np.zeros(WORD_NUM_ORGANS + 1, dtype=np.int64)
        lut[1:7] = np.arange(1, 7)  # liver, spleen, left kidney, right kidney, stomach, gallbladder
        lut[8] = 7  # pancreas; esophagus (7) and 9-16 -> background
        names = list(WORD_ORGANS[:6]) + ["pancreas"]
    else:
        raise ValueError(f"organs must be one of {ORGAN_SETS}, got {organs!r}")
    labels = {"background": 0, **{n: i + 1 for i, n in enumerate(names)}, "ignore": len(names) + 1}
    return lut.astype(np.int64), labels


def map_dense_label(label: np.ndarray, lut: np.ndarray, case_id: str) -> np.ndarray:
    """Relabel a dense WORD label (values 0..16) with ``lut``; ValueError naming unexpected values."""
    values = np.unique(label)
    bad = values[(values < 0) | (values >= len(lut))]
    if bad.size:
        raise ValueError(f"case {case_id}: unexpected label values {bad.tolist()} (WORD labels are 0..{len(lut) - 1})")
    return lut[label].astype(np.uint8)


def map_released_scribble(scribble: np.ndarray, lut: np.ndarray, ignore_label: int, case_id: str) -> np.ndarray:
    """Released WORD scribble (0 background, 1..16 organs, 255 unlabelled) -> 0..C-1 + ignore."""
    values = np.unique(scribble)
    bad = values[((values < 0) | (values >= len(lut))) & (values != RELEASED_UNLABELLED)]
    if bad.size:
        raise ValueError(f"case {case_id}: unexpected scribble values {bad.tolist()} (expected 0..{len(lut) - 1} "
                         f"and {RELEASED_UNLABELLED} = unlabelled)")
    unl = scribble == RELEASED_UNLABELLED
    out = lut[np.where(unl, 0, scribble)].astype(np.uint8)
    out[unl] = ignore_label
    return out


def body_bounding_box(image: np.ndarray, threshold: float = -500.0,
                      margin: Sequence[int] = (20, 20, 20)) -> Tuple[slice, ...]:
    """Bounding box (slices in array order z, y, x) of the body: the largest 26-connected component of
    ``image > threshold``, enlarged by ``margin`` voxels per axis and clipped to the image. Uses the image only.
    The whole image is returned if no voxel exceeds the threshold."""
    import cc3d

    image = np.asarray(image)
    margin = tuple(int(m) for m in (margin if np.ndim(margin) else [margin] * image.ndim))
    if len(margin) != image.ndim:
        raise ValueError(f"margin {margin} must have one value per axis ({image.ndim})")
    mask = image > threshold
    if not mask.any():
        print(f"WARNING: no voxel above {threshold}: no crop")
        return tuple(slice(0, s) for s in image.shape)
    body = cc3d.largest_k(mask.astype(np.uint8), k=1, connectivity=26 if image.ndim == 3 else 8) > 0
    box = []
    for ax in range(image.ndim):
        other = tuple(a for a in range(image.ndim) if a != ax)
        idx = np.flatnonzero(body.any(axis=other))
        lo = max(0, int(idx[0]) - margin[ax])
        hi = min(image.shape[ax], int(idx[-1]) + 1 + margin[ax])
        box.append(slice(lo, hi))
    return tuple(box)


def crop_image(img: sitk.Image, box: Tuple[slice, ...]) -> sitk.Image:
    """Crop a SimpleITK image with a box given in array order (z, y, x); the origin is updated."""
    return img[tuple(reversed(box))]


def _find_cases(folder: Path) -> Dict[str, Path]:
    out = {}
    if folder.is_dir():
        for f in sorted(folder.iterdir()):
            m = _CASE_RE.fullmatch(f.name)
            if m:
                out[m.group(1)] = f
    return out


def _label_path(folder: Path, case_id: str, image_path: Path) -> Path:
    ending = image_path.name[len(case_id):]
    return folder / f"{case_id}{ending}"


def _case_key(c) -> str:
    if isinstance(c, (int, np.integer)):
        return f"word_{int(c):04d}"
    m = re.fullmatch(r"(?:word_)?(\d+)", str(c).strip())
    if not m:
        raise ValueError(f"cannot read a WORD case from {c!r} (expected e.g. 1, '0001' or 'word_0001')")
    return f"word_{int(m.group(1)):04d}"


def _find_released(scribble_dir: Path, case_id: str) -> Path:
    for name in (f"{case_id}.nii.gz", f"{case_id}_scribble.nii.gz", f"{case_id}.nii", f"{case_id}_scribble.nii"):
        if (scribble_dir / name).is_file():
            return scribble_dir / name
    raise FileNotFoundError(f"case {case_id}: no released scribble ({case_id}.nii.gz or {case_id}_scribble.nii.gz) "
                            f"in {scribble_dir}")


def _integer_array(img: sitk.Image, case_id: str, what: str) -> np.ndarray:
    arr = sitk.GetArrayFromImage(img)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"case {case_id}: {what} has non-integer values")
        arr = arr.astype(np.int64)
    return arr


def prepare_word_case(image_path: Path, label_path: Optional[Path], case_id: str, lut: np.ndarray,
                      window: Optional[Tuple[float, float]], crop: bool, margin, body_threshold: float,
                      scribble_path: Optional[Path] = None, ignore_label: Optional[int] = None):
    """Read, window, crop and relabel one case -> (image, dense label array or None, released scribble array or
    None, crop box). The crop box is computed from the image alone."""
    image = read_image(image_path, f"case {case_id} (image)")
    if image.GetDimension() != 3:
        raise ValueError(f"case {case_id}: expected a 3D image, got {image.GetDimension()}D")
    raw = sitk.GetArrayFromImage(image)
    box = body_bounding_box(raw, body_threshold, margin) if crop else tuple(slice(0, s) for s in raw.shape)
    arr = raw
    if window is not None:
        lo, hi = float(window[0]), float(window[1])
        if not lo < hi:
            raise ValueError(f"window {window} must be (low, high) with low < high")
        if np.issubdtype(arr.dtype, np.integer) and lo.is_integer() and hi.is_integer() \
                and np.iinfo(arr.dtype).min <= lo and hi <= np.iinfo(arr.dtype).max:
            arr = np.clip(arr, int(lo), int(hi)).astype(arr.dtype)
        else:
            arr = np.clip(arr.astype(np.float32), lo, hi)
    out_img = crop_image(array_to_image(arr, reference=image), box)
    dense = None
    if label_path is not None:
        if not Path(label_path).is_file():
            raise FileNotFoundError(f"case {case_id}: label file not found: {label_path}")
        lab_img = read_image(label_path, f"case {case_id} (label)")
        check_geometry(image, lab_img, case_id, "image", "label")
        dense = map_dense_label(_integer_array(lab_img, case_id, "label"), lut, case_id)[box]
    released = None
    if scribble_path is not None:
        scr_img = read_image(scribble_path, f"case {case_id} (released scribble)")
        check_geometry(image, scr_img, case_id, "image", "released scribble")
        released = map_released_scribble(_integer_array(scr_img, case_id, "released scribble"), lut, ignore_label,
                                         case_id)[box]
    return out_img, dense, released, box


def convert_word(src_dir, out_raw_dir, dataset_id: int, dataset_name: Optional[str] = None, organs: str = "all",
                 window: Optional[Tuple[float, float]] = (-150, 250), crop: bool = True,
                 margin: Sequence[int] = (20, 20, 20), body_threshold: float = -500.0, source: str = "simulated",
                 scribble_dir=None, method: str = "interior_border", every_nth: Optional[int] = None,
                 axis: Optional[int] = 0, seed: int = 0, halvings: int = 0, cases: Optional[Iterable] = None,
                 overwrite: bool = False, verbose: bool = True) -> Path:
    """Convert the official WORD layout to a scribble dataset (see the module docstring); returns the folder.

    ``source="released"`` reads ``scribble_dir`` (default ``<src_dir>/scribbles``) with files ``word_NNNN.nii.gz``
    or ``word_NNNN_scribble.nii.gz`` for every training and validation case. ``cases`` restricts the conversion.
    """
    from nnunet_scribble.scribble_simulation import GENERATORS, keep_every_nth_slice, simulate_scribbles

    src = Path(src_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"WORD folder not found: {src}")
    if source not in ("simulated", "released"):
        raise ValueError(f"source must be 'simulated' or 'released', got {source!r}")
    if source == "simulated" and method not in GENERATORS:
        raise ValueError(f"unknown scribble method {method!r}; choose one of {GENERATORS}")
    lut, labels = organ_mapping(organs)
    ignore = labels["ignore"]
    if dataset_name is None:
        dataset_name = "WORDScribble" if organs == "all" else "WORD7Scribble"
    if source == "released":
        scribble_dir = Path(scribble_dir) if scribble_dir is not None else src / "scribbles"
        if not scribble_dir.is_dir():
            raise FileNotFoundError(f"released scribble folder not found: {scribble_dir}")

    groups = {}
    for split, img_dir, lab_dir in (("Tr", "imagesTr", "labelsTr"), ("Val", "imagesVal", "labelsVal"),
                                    ("Ts", "imagesTs", "labelsTs")):
        groups[split] = (_find_cases(src / img_dir), src / lab_dir)
    all_cases = {c: s for s in ("Tr", "Val", "Ts") for c in groups[s][0]}
    if not groups["Tr"][0]:
        raise FileNotFoundError(f"no word_NNNN.nii.gz in {src / 'imagesTr'}")
    dupes = [c for c in all_cases if sum(c in groups[s][0] for s in groups) > 1]
    if dupes:
        raise ValueError(f"case(s) {dupes[:5]} appear in more than one of imagesTr/imagesVal/imagesTs")
    if cases is not None:
        wanted = sorted({_case_key(c) for c in cases})
        missing = [c for c in wanted if c not in all_cases]
        if missing:
            raise FileNotFoundError(f"case(s) {missing}: no image in imagesTr/imagesVal/imagesTs of {src}")
    else:
        wanted = sorted(all_cases)
    order = [(c, s) for s in ("Tr", "Val", "Ts") for c in sorted(groups[s][0]) if c in set(wanted)]
    tr_cases = [c for c, s in order if s == "Tr"]
    val_cases = [c for c, s in order if s == "Val"]
    if not tr_cases and not val_cases:
        raise ValueError("no training case selected (only imagesTs cases)")

    with RawDatasetWriter(out_raw_dir, dataset_id, dataset_name, overwrite=overwrite, labels=labels,
                          verbose=verbose) as w:
        for i, (cid, split) in enumerate(order):
            img_path = groups[split][0][cid]
            lab_dir = groups[split][1]
            if split == "Ts" and not lab_dir.is_dir():
                lab_path = None  # test set without labels
            else:
                lab_path = _label_path(lab_dir, cid, img_path)
            scr_path = _find_released(scribble_dir, cid) if (source == "released" and split != "Ts") else None
            image, dense, released, box = prepare_word_case(img_path, lab_path, cid, lut, window, crop, margin,
                                                            body_threshold, scr_path, ignore)
            dense_img = array_to_image(dense, reference=image) if dense is not None else None
            if split == "Ts":
                w.add_test_case(cid, [image], dense_img)
                role = "test"
            else:
                if source == "released":
                    scribble = released
                    if halvings:
                        from nnunet_scribble.scribble_simulation import shorten_scribbles
                        scribble = shorten_scribbles(scribble, ignore, halvings=halvings,
                                                     axis=0 if axis is None else axis)
                    if every_nth is not None:
                        scribble = keep_every_nth_slice(scribble, ignore, every_nth, axis=0 if axis is None else axis)
                else:
                    scribble = simulate_scribbles(dense, ignore, method=method, axis=axis, seed=case_seed(seed, cid),
                                                  every_nth=every_nth, halvings=halvings)
                w.add_training_case(cid, [image], array_to_image(scribble, reference=image), dense_img)
                role = (f"{'train' if split == 'Tr' else 'val'}, "
                        f"{100.0 * np.count_nonzero(scribble != ignore) / scribble.size:.2f}% annotated")
            if verbose:
                crop_txt = "x".join(str(b.stop - b.start) for b in box)
                print(f"[{i + 1}/{len(order)}] {cid}: {role}; cropped to {crop_txt} (z,y,x)", flush=True)
        if tr_cases and val_cases:
            w.set_splits([{"train": tr_cases, "val": val_cases}])
        elif not val_cases:
            print("WARNING: no imagesVal case selected: no splits_final.json written")
        else:
            print("WARNING: no imagesTr case selected: no splits_final.json written")
        w.finalize(CHANNEL_NAMES, labels,
                   description=f"WORD abdominal CT ({'16 organs' if organs == 'all' else 'DMSPS 7-organ subset'}); "
                               f"labelsTr hold {source} scribbles ({ignore} = not annotated), labelsTr_dense and "
                               f"labelsTs the dense labels. Cases cropped to the body (image-only bounding box).",
                   reference="Luo et al., WORD, Medical Image Analysis 2022",
                   organs=organs, scribble_source=source, scribble_method=method if source == "simulated" else
                   "released", scribble_every_nth=every_nth, scribble_axis=axis, scribble_halvings=halvings,
                   scribble_seed=seed if source == "simulated" else None,
                   ct_window=list(window) if window is not None else None,
                   body_crop=dict(threshold=body_threshold, margin=list(np.broadcast_to(margin, 3).tolist()))
                   if crop else None,
                   word_val_cases=val_cases)
    return Path(out_raw_dir) / w.folder_name


def main(argv=None) -> int:
    from nnunet_scribble.scribble_simulation import AXIS_HELP, GENERATORS, axis_argument

    ap = argparse.ArgumentParser(prog="nnunet_scribble_convert_word",
                                 description="WORD abdominal CT -> nnU-Net v2 raw scribble dataset.")
    ap.add_argument("-i", "--input", required=True, help="WORD folder (imagesTr/, labelsTr/, imagesVal/, ...)")
    ap.add_argument("-d", "--dataset-id", type=int, required=True)
    ap.add_argument("-n", "--name", default=None, help="dataset name (default WORDScribble / WORD7Scribble)")
    ap.add_argument("-o", "--out", default=os.environ.get("nnUNet_raw"),
                    help="nnU-Net raw folder (default $nnUNet_raw)")
    ap.add_argument("--organs", default="all", choices=ORGAN_SETS)
    ap.add_argument("--window", nargs=2, type=float, default=(-150.0, 250.0), metavar=("LOW", "HIGH"),
                    help="clip HU values to this window (default -150 250)")
    ap.add_argument("--no-window", action="store_true", help="keep the raw HU values")
    ap.add_argument("--no-crop", action="store_true", help="do not crop to the body bounding box")
    ap.add_argument("--margin", nargs=3, type=int, default=(20, 20, 20), metavar=("Z", "Y", "X"))
    ap.add_argument("--body-threshold", type=float, default=-500.0)
    ap.add_argument("--source", default="simulated", choices=("simulated", "released"))
    ap.add_argument("--scribble-dir", default=None, help="released scribbles (default <input>/scribbles)")
    ap.add_argument("--method", default="interior_border", choices=GENERATORS)
    ap.add_argument("--every-nth", type=int, default=None)
    ap.add_argument("--axis", type=axis_argument, default=0, help=AXIS_HELP)
    ap.add_argument("--halvings", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", default=None, help="only these cases, e.g. '1,2,101' (numbers of word_NNNN)")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("-q", "--quiet", action="store_true")
    a = ap.parse_args(argv)
    if not a.out:
        ap.error("no output folder: pass -o or set nnUNet_raw")
    from nnunet_scribble.raw_dataset import parse_int_ranges
    out = convert_word(a.input, a.out, a.dataset_id, dataset_name=a.name, organs=a.organs,
                       window=None if a.no_window else tuple(a.window), crop=not a.no_crop, margin=tuple(a.margin),
                       body_threshold=a.body_threshold, source=a.source, scribble_dir=a.scribble_dir,
                       method=a.method, every_nth=a.every_nth, axis=a.axis,
                       seed=a.seed, halvings=a.halvings, cases=parse_int_ranges(a.cases), overwrite=a.overwrite,
                       verbose=not a.quiet)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
