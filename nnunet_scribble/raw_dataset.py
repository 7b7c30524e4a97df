"""Write nnU-Net v2 raw datasets safely (scribble labels + dense reference labels).

A dataset is written into a hidden temporary sibling folder (``.tmp_DatasetXXX_Name_<random>``) and
renamed into place only when the ``with`` block ends without an exception, so an interrupted or failed
conversion never leaves a half-written ``DatasetXXX_Name`` folder behind::

    with RawDatasetWriter(nnunet_raw, 501, "ACDCScribble", labels=labels) as w:
        w.add_training_case("patient041_frame01", [image], scribble, dense)
        w.add_test_case("patient021_frame01", [image], dense)
        w.set_splits(splits)
        w.finalize({0: "cine-MRI"}, labels, description="...")

Layout written (nnU-Net raw format plus one extra folder that nnU-Net ignores)::

    DatasetXXX_Name/
        dataset.json            labels incl. "ignore" (= highest value), numTraining, file_ending, extras
        imagesTr/{case}_{ch:04d}{file_ending}
        labelsTr/{case}{file_ending}        scribbles (unannotated voxels = ignore label)
        labelsTr_dense/{case}{file_ending}  dense ground truth of the training cases (when known)
        imagesTs/{case}_{ch:04d}{file_ending}
        labelsTs/{case}{file_ending}        dense ground truth of the test cases
        splits_final.json       (when set_splits was called; also copied to $nnUNet_preprocessed/DatasetXXX_Name/)
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import SimpleITK as sitk

GEOMETRY_TOLERANCE = 1e-3

__all__ = [
    "RawDatasetWriter",
    "read_image",
    "array_to_image",
    "patient_grouped_folds",
    "validate_scribble_labels",
    "case_seed",
    "parse_int_ranges",
    "GEOMETRY_TOLERANCE",
    "check_geometry",
]


# ----------------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------------
def read_image(path, what: Optional[str] = None) -> sitk.Image:
    """Read an image with SimpleITK; FileNotFoundError (naming ``what``, e.g. the case) if it does not exist."""
    path = Path(path)
    if not path.is_file():
        prefix = f"{what}: " if what else ""
        raise FileNotFoundError(f"{prefix}file not found: {path}")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:  # SimpleITK raises RuntimeError for unreadable files
        prefix = f"{what}: " if what else ""
        raise ValueError(f"{prefix}cannot read {path}: {e}") from e


def array_to_image(arr: np.ndarray, reference: Optional[sitk.Image] = None, spacing=None) -> sitk.Image:
    """numpy array in SimpleITK order (z, y, x) -> sitk.Image.

    ``reference``: copy spacing, origin and direction from it (its size must equal the array's shape reversed).
    ``spacing``: used when no reference is given, in SimpleITK order (x, y, z).
    """
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    img = sitk.GetImageFromArray(arr)
    if reference is not None:
        if tuple(reference.GetSize()) != tuple(img.GetSize()):
            raise ValueError(f"array shape {arr.shape} (sitk size {img.GetSize()}) does not match the reference "
                             f"image size {reference.GetSize()}")
        img.CopyInformation(reference)
    elif spacing is not None:
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != img.GetDimension():
            raise ValueError(f"spacing {spacing} has {len(spacing)} values for a {img.GetDimension()}D image")
        img.SetSpacing(spacing)
    return img


def case_seed(seed: int, case_id: str) -> int:
    """Deterministic per-case seed (independent of Python's hash randomisation and of case order)."""
    return (int(seed) * 1_000_003 + zlib.crc32(str(case_id).encode())) % (2 ** 32)


def parse_int_ranges(text) -> List[int]:
    """'21-40,45' -> [21, ..., 40, 45] (for command lines); ints and iterables of ints pass through."""
    if text is None:
        return None
    if isinstance(text, int):
        return [text]
    if not isinstance(text, str):
        return [int(t) for t in text]
    out: List[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)-(\d+)", part)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if b < a:
                raise ValueError(f"empty range {part!r}")
            out.extend(range(a, b + 1))
        elif part.isdigit():
            out.append(int(part))
        else:
            raise ValueError(f"cannot parse {part!r} as a number or a range 'a-b'")
    return out


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(s))]


def patient_grouped_folds(case_ids: Iterable[str], patient_of: Callable[[str], str], n_folds: int = 5,
                          by_number: bool = True, seed: int = 12345) -> List[Dict[str, List[str]]]:
    """Cross-validation folds in nnU-Net's ``splits_final.json`` format, grouped by patient.

    All cases of a patient land in the same fold. ``by_number=True``: patients are sorted (natural order, so
    ``patient9 < patient10``) and split into ``n_folds`` contiguous blocks (fold k validates on block k; the usual
    ACDC protocol). ``by_number=False``: the patients are shuffled with ``seed`` first.
    Returns ``[{"train": [...], "val": [...]}, ...]`` with sorted case lists.
    """
    case_ids = sorted(set(case_ids), key=_natural_key)
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    by_patient: Dict[str, List[str]] = {}
    for c in case_ids:
        by_patient.setdefault(str(patient_of(c)), []).append(c)
    patients = sorted(by_patient, key=_natural_key)
    if len(patients) < n_folds:
        raise ValueError(f"cannot make {n_folds} folds from {len(patients)} patient(s) ({patients})")
    if not by_number:
        rs = np.random.RandomState(seed)
        patients = [patients[i] for i in rs.permutation(len(patients))]
    blocks = np.array_split(np.arange(len(patients)), n_folds)
    splits = []
    for block in blocks:
        val_patients = {patients[i] for i in block}
        val = sorted((c for p in val_patients for c in by_patient[p]), key=_natural_key)
        train = sorted((c for p in patients if p not in val_patients for c in by_patient[p]), key=_natural_key)
        splits.append({"train": train, "val": val})
    return splits


def validate_scribble_labels(labels: Mapping[str, object]) -> int:
    """Check a dataset.json ``labels`` dict for a scribble dataset; returns the ignore label.

    Requirements: plain integer labels (no regions), an ``"ignore"`` entry that is the highest value, and values
    contiguous from 0 (0, 1, ..., ignore).
    """
    if not isinstance(labels, Mapping) or not labels:
        raise ValueError(f"labels must be a non-empty dict name -> int, got {labels!r}")
    values = {}
    for name, v in labels.items():
        if isinstance(v, (tuple, list)):
            raise ValueError(f"label {name!r} is a region {v}; region-based datasets are not supported")
        try:
            iv = int(v)
        except (TypeError, ValueError):
            raise ValueError(f"label {name!r} has a non-integer value {v!r}") from None
        if iv != v:
            raise ValueError(f"label {name!r} has a non-integer value {v!r}")
        if iv in values:
            raise ValueError(f"labels {values[iv]!r} and {name!r} share the value {iv}")
        values[iv] = name
    if "ignore" not in labels:
        raise ValueError(f"labels must contain an 'ignore' entry (the highest value); got {dict(labels)}")
    ignore = int(labels["ignore"])
    if ignore != max(values):
        raise ValueError(f"'ignore' ({ignore}) must be the highest label value (max is {max(values)})")
    if sorted(values) != list(range(len(values))):
        raise ValueError(f"label values must be contiguous from 0 (0, 1, ..., {len(values) - 1}); "
                         f"got {sorted(values)}")
    return ignore


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, range, set)):
        return [_jsonable(v) for v in (sorted(x) if isinstance(x, set) else x)]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    return x


def check_geometry(ref: sitk.Image, other: sitk.Image, case_id: str, ref_name: str, other_name: str) -> None:
    """ValueError naming ``case_id`` unless ``other`` has ``ref``'s dimension, size, spacing, origin and direction
    (within :data:`GEOMETRY_TOLERANCE`)."""
    problems = []
    if ref.GetDimension() != other.GetDimension():
        raise ValueError(f"case {case_id}: {other_name} is {other.GetDimension()}D but {ref_name} is "
                         f"{ref.GetDimension()}D")
    if tuple(ref.GetSize()) != tuple(other.GetSize()):
        problems.append(f"size {other.GetSize()} != {ref.GetSize()}")
    for what in ("Spacing", "Origin", "Direction"):
        a = np.asarray(getattr(ref, "Get" + what)(), dtype=float)
        b = np.asarray(getattr(other, "Get" + what)(), dtype=float)
        if not np.allclose(a, b, rtol=0, atol=GEOMETRY_TOLERANCE):
            problems.append(f"{what.lower()} {tuple(np.round(b, 6))} != {tuple(np.round(a, 6))}")
    if problems:
        raise ValueError(f"case {case_id}: {other_name} does not match {ref_name}: " + "; ".join(problems))


# ----------------------------------------------------------------------------------------------------------------------
# writer
# ----------------------------------------------------------------------------------------------------------------------
class RawDatasetWriter:
    """Context manager that writes ``<nnunet_raw_dir>/Dataset{id:03d}_{name}`` atomically (see module docstring).

    ``labels`` (optional, dataset.json style incl. ``"ignore"``): when given, label values are validated as each
    case is added (fail early); otherwise they are validated in :meth:`finalize`.
    ``file_ending``: extension of every written file (SimpleITK must be able to write it).
    ``overwrite``: replace an existing ``Dataset{id:03d}_{name}`` (the old folder is moved away, the new one moved
    in, then the old one deleted). Another folder with the same id but a different name is always refused.
    """

    def __init__(self, nnunet_raw_dir, dataset_id: int, dataset_name: str, overwrite: bool = False,
                 labels: Optional[Mapping[str, int]] = None, file_ending: str = ".nii.gz", verbose: bool = True):
        if isinstance(dataset_id, bool) or int(dataset_id) != dataset_id or not 1 <= int(dataset_id) <= 999:
            raise ValueError(f"dataset_id must be an integer in 1..999, got {dataset_id!r}")
        if not dataset_name or not re.fullmatch(r"[A-Za-z0-9_.\-]+", str(dataset_name)):
            raise ValueError(f"dataset_name must be non-empty and contain only letters, digits, '_', '-', '.'; "
                             f"got {dataset_name!r}")
        if not file_ending.startswith("."):
            raise ValueError(f"file_ending must start with '.', got {file_ending!r}")
        self.raw_dir = Path(nnunet_raw_dir)
        self.dataset_id = int(dataset_id)
        self.dataset_name = str(dataset_name)
        self.folder_name = f"Dataset{self.dataset_id:03d}_{self.dataset_name}"
        self.target = self.raw_dir / self.folder_name
        self.overwrite = bool(overwrite)
        self.file_ending = file_ending
        self.verbose = verbose
        self.labels = dict(labels) if labels is not None else None
        self.ignore_label = validate_scribble_labels(self.labels) if self.labels is not None else None
        self.tmp: Optional[Path] = None
        self._train: Dict[str, dict] = {}
        self._test: Dict[str, dict] = {}
        self._splits: Optional[list] = None
        self._finalized = False
        self._num_channels: Optional[int] = None

    # ---------------------------------------------------------------- context management
    def _check_conflicts(self) -> None:
        prefix = f"Dataset{self.dataset_id:03d}_"
        if self.raw_dir.is_dir():
            others = sorted(p.name for p in self.raw_dir.iterdir()
                            if p.is_dir() and p.name.startswith(prefix) and p.name != self.folder_name)
            if others:
                raise FileExistsError(
                    f"{self.raw_dir} already holds {others} with dataset id {self.dataset_id}; nnU-Net would find "
                    f"the id ambiguous. Choose another id or remove that folder.")
        if self.target.exists() and not self.overwrite:
            raise FileExistsError(f"{self.target} already exists; pass overwrite=True (CLI: --overwrite) to "
                                  f"replace it, or choose another dataset id/name.")

    def __enter__(self) -> "RawDatasetWriter":
        if self.tmp is not None:
            raise RuntimeError("RawDatasetWriter is not re-entrant")
        self.raw_dir.mkdir(parents=True, exist_ok=True)
        self._check_conflicts()
        self.tmp = Path(tempfile.mkdtemp(prefix=f".tmp_{self.folder_name}_", dir=str(self.raw_dir)))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the final folder should look like any other
        (self.tmp / "imagesTr").mkdir()
        (self.tmp / "labelsTr").mkdir()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        tmp, self.tmp = self.tmp, None
        try:
            if exc_type is not None:
                return False
            if not self._finalized:
                raise RuntimeError(f"{self.folder_name}: finalize() was not called; nothing was written")
            self._commit(tmp)
            tmp = None
            self._copy_splits_to_preprocessed()
            if self.verbose:
                print(f"wrote {self.target} ({len(self._train)} training, {len(self._test)} test cases)")
            return False
        finally:
            if tmp is not None and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _commit(self, tmp: Path) -> None:
        self._check_conflicts()  # again: something may have appeared meanwhile
        if self.target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old_{self.folder_name}_", dir=str(self.raw_dir)))
            old.rmdir()
            os.rename(self.target, old)
            try:
                os.rename(tmp, self.target)
            except BaseException:
                os.rename(old, self.target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, self.target)

    def _copy_splits_to_preprocessed(self) -> None:
        pp = os.environ.get("nnUNet_preprocessed")
        if not pp or self._splits is None:
            return
        dest = Path(pp) / self.folder_name
        dest.mkdir(parents=True, exist_ok=True)
        f = dest / "splits_final.json"
        if f.exists():
            try:
                same = json.loads(f.read_text()) == self._splits
            except ValueError:
                same = False
            if not same:
                print(f"WARNING: replacing the different {f}")
        stale = [p.name for p in dest.iterdir() if p.name != "splits_final.json"]
        if stale:
            print(f"WARNING: {dest} already holds {stale[:5]}: preprocessed data of an earlier version of this "
                  f"dataset may be stale; rerun nnUNetv2_plan_and_preprocess.")
        f.write_text(json.dumps(self._splits, indent=4))

    def _require_open(self) -> Path:
        if self.tmp is None:
            raise RuntimeError("use RawDatasetWriter as a context manager: `with RawDatasetWriter(...) as w:`")
        if self._finalized:
            raise RuntimeError("the dataset was already finalized")
        return self.tmp

    # ---------------------------------------------------------------- cases
    def _check_case_id(self, case_id: str) -> str:
        case_id = str(case_id)
        if not case_id or not re.fullmatch(r"[A-Za-z0-9_.\-]+", case_id):
            raise ValueError(f"invalid case id {case_id!r} (letters, digits, '_', '-', '.' only)")
        if case_id in self._train or case_id in self._test:
            raise ValueError(f"case {case_id} was already added")
        return case_id

    def _prepare_images(self, case_id: str, images: Sequence[sitk.Image]) -> List[sitk.Image]:
        if isinstance(images, sitk.Image):
            images = [images]
        images = list(images)
        if not images:
            raise ValueError(f"case {case_id}: no image channel given")
        if self._num_channels is None:
            self._num_channels = len(images)
        elif len(images) != self._num_channels:
            raise ValueError(f"case {case_id} has {len(images)} channel(s), earlier cases have {self._num_channels}")
        for ch, im in enumerate(images):
            if not isinstance(im, sitk.Image):
                raise TypeError(f"case {case_id}: channel {ch} is {type(im).__name__}, expected SimpleITK.Image")
            if im.GetNumberOfComponentsPerPixel() != 1:
                raise ValueError(f"case {case_id}: channel {ch} is a vector image; split it into channels")
            if ch:
                check_geometry(images[0], im, case_id, "channel 0", f"channel {ch}")
        out = []
        for ch, im in enumerate(images):
            arr = sitk.GetArrayViewFromImage(im)
            if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
                raise ValueError(f"case {case_id}: channel {ch} contains NaN or infinite values")
            if ch:  # make geometry bit-identical (nnU-Net compares with tight tolerances)
                im = sitk.Image(im)
                im.CopyInformation(images[0])
            out.append(im)
        return out

    def _prepare_label(self, case_id: str, label: sitk.Image, ref: sitk.Image, kind: str, max_allowed) -> tuple:
        if not isinstance(label, sitk.Image):
            raise TypeError(f"case {case_id}: {kind} is {type(label).__name__}, expected SimpleITK.Image")
        if label.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError(f"case {case_id}: {kind} is a vector image")
        check_geometry(ref, label, case_id, "image", kind)
        arr = sitk.GetArrayFromImage(label)
        if np.issubdtype(arr.dtype, np.floating):
            if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
                raise ValueError(f"case {case_id}: {kind} has non-integer values")
        values = np.unique(arr)
        if values.size and values[0] < 0:
            raise ValueError(f"case {case_id}: {kind} has unexpected negative label values "
                             f"{values[values < 0].tolist()}")
        if max_allowed is not None:
            bad = values[values > max_allowed]
            if bad.size:
                raise ValueError(f"case {case_id}: {kind} has unexpected label values {bad.tolist()} "
                                 f"(allowed 0..{max_allowed})")
        top = self.ignore_label if self.ignore_label is not None else (int(values.max()) if values.size else 0)
        dtype = np.uint8 if top <= 255 and (not values.size or values.max() <= 255) else np.uint16
        if values.size and values.max() > 65535:
            raise ValueError(f"case {case_id}: {kind} has label values above 65535")
        out = sitk.GetImageFromArray(arr.astype(dtype, copy=False))
        out.CopyInformation(ref)
        return out, arr, values

    def _write(self, img: sitk.Image, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(img, str(path), True)

    def add_training_case(self, case_id: str, images: Sequence[sitk.Image], scribble: sitk.Image,
                          dense: Optional[sitk.Image] = None) -> None:
        """Add a training case: channels -> imagesTr, scribble -> labelsTr, dense (optional) -> labelsTr_dense."""
        tmp = self._require_open()
        case_id = self._check_case_id(case_id)
        images = self._prepare_images(case_id, images)
        ig = self.ignore_label
        scr, scr_arr, scr_values = self._prepare_label(case_id, scribble, images[0], "scribble", ig)
        n_annotated = int(scr_arr.size - np.count_nonzero(scr_arr == ig)) if ig is not None else None
        if ig is not None and n_annotated == 0:
            raise ValueError(f"case {case_id} has no annotated voxel (every voxel is the ignore label {ig})")
        dense_img, dense_values = None, None
        if dense is not None:
            dense_img, _, dense_values = self._prepare_label(case_id, dense, images[0], "dense label",
                                                             None if ig is None else ig - 1)
        for ch, im in enumerate(images):
            self._write(im, tmp / "imagesTr" / f"{case_id}_{ch:04d}{self.file_ending}")
        self._write(scr, tmp / "labelsTr" / f"{case_id}{self.file_ending}")
        if dense_img is not None:
            self._write(dense_img, tmp / "labelsTr_dense" / f"{case_id}{self.file_ending}")
        counts = None
        if ig is None:  # keep what finalize needs to validate later
            counts = dict(zip(*[a.tolist() for a in np.unique(scr_arr, return_counts=True)]))
        self._train[case_id] = dict(scribble_values=scr_values, dense_values=dense_values, n_voxels=int(scr_arr.size),
                                    n_annotated=n_annotated, counts=counts)

    def add_test_case(self, case_id: str, images: Sequence[sitk.Image], dense: Optional[sitk.Image] = None) -> None:
        """Add a test case: channels -> imagesTs, dense label (optional) -> labelsTs."""
        tmp = self._require_open()
        case_id = self._check_case_id(case_id)
        images = self._prepare_images(case_id, images)
        dense_img, dense_values = None, None
        if dense is not None:
            ig = self.ignore_label
            dense_img, _, dense_values = self._prepare_label(case_id, dense, images[0], "dense label",
                                                             None if ig is None else ig - 1)
        for ch, im in enumerate(images):
            self._write(im, tmp / "imagesTs" / f"{case_id}_{ch:04d}{self.file_ending}")
        if dense_img is not None:
            self._write(dense_img, tmp / "labelsTs" / f"{case_id}{self.file_ending}")
        self._test[case_id] = dict(dense_values=dense_values)

    @property
    def training_cases(self) -> List[str]:
        return list(self._train)

    @property
    def test_cases(self) -> List[str]:
        return list(self._test)

    @property
    def annotated_fraction(self) -> Optional[float]:
        """Annotated voxels / all voxels over the training scribbles so far (None if unknown)."""
        tot = sum(v["n_voxels"] for v in self._train.values())
        ann = [v["n_annotated"] for v in self._train.values()]
        if not tot or any(a is None for a in ann):
            return None
        return float(sum(ann)) / tot

    # ---------------------------------------------------------------- splits & dataset.json
    def set_splits(self, splits: List[dict]) -> None:
        """Write ``splits_final.json`` (list of {"train": [...], "val": [...]}) into the dataset folder.

        The case ids are checked against the training cases in :meth:`finalize`; the file is copied to
        ``$nnUNet_preprocessed/DatasetXXX_Name/splits_final.json`` (when that variable is set) once the dataset
        has been written successfully.
        """
        tmp = self._require_open()
        if not isinstance(splits, (list, tuple)) or not splits:
            raise ValueError("splits must be a non-empty list of {'train': [...], 'val': [...]} dicts")
        clean = []
        for i, fold in enumerate(splits):
            if not isinstance(fold, Mapping) or set(fold) != {"train", "val"}:
                raise ValueError(f"fold {i} must be a dict with exactly the keys 'train' and 'val'")
            tr, va = [str(c) for c in fold["train"]], [str(c) for c in fold["val"]]
            overlap = set(tr) & set(va)
            if overlap:
                raise ValueError(f"fold {i}: cases in both train and val: {sorted(overlap)}")
            if not tr:
                raise ValueError(f"fold {i} has no training case")
            clean.append({"train": tr, "val": va})
        self._splits = clean
        (tmp / "splits_final.json").write_text(json.dumps(clean, indent=4))

    def _validate_values(self, ignore: int) -> None:
        for c, info in self._train.items():
            bad = info["scribble_values"][info["scribble_values"] > ignore]
            if bad.size:
                raise ValueError(f"case {c}: scribble has unexpected label values {bad.tolist()} "
                                 f"(allowed 0..{ignore})")
            if info["n_annotated"] is None:
                info["n_annotated"] = info["n_voxels"] - int(info["counts"].get(ignore, 0))
            if info["n_annotated"] == 0:
                raise ValueError(f"case {c} has no annotated voxel (every voxel is the ignore label {ignore})")
        for c, info in list(self._train.items()) + list(self._test.items()):
            dv = info["dense_values"]
            if dv is not None and dv[dv >= ignore].size:
                raise ValueError(f"case {c}: dense label has unexpected label values {dv[dv >= ignore].tolist()} "
                                 f"(allowed 0..{ignore - 1})")

    def finalize(self, channel_names: Mapping, labels: Mapping[str, int], file_ending: Optional[str] = None,
                 **extra) -> None:
        """Validate everything and write dataset.json (via nnunetv2's ``generate_dataset_json``).

        ``labels`` must include ``"ignore"`` as the highest value, contiguous from 0. ``extra`` keys go into
        dataset.json (e.g. ``description``, ``scribble_method``); ``annotated_fraction`` is added automatically
        unless given.
        """
        from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

        tmp = self._require_open()
        if file_ending is not None and file_ending != self.file_ending:
            raise ValueError(f"file_ending {file_ending!r} differs from the one the files were written with "
                             f"({self.file_ending!r}); pass file_ending to RawDatasetWriter instead")
        ignore = validate_scribble_labels(labels)
        labels = {str(k): int(v) for k, v in labels.items()}
        if self.labels is not None and {k: int(v) for k, v in self.labels.items()} != labels:
            raise ValueError(f"labels {labels} differ from those given to RawDatasetWriter ({self.labels})")
        if not self._train:
            raise ValueError(f"{self.folder_name}: no training case was added")
        channel_names = {str(k): str(v) for k, v in channel_names.items()}
        if sorted(channel_names, key=int) != [str(i) for i in range(self._num_channels)]:
            raise ValueError(f"channel_names {channel_names} must have the keys 0..{self._num_channels - 1} "
                             f"({self._num_channels} channel(s) were written)")
        self._validate_values(ignore)
        if self._splits is not None:
            for i, fold in enumerate(self._splits):
                unknown = sorted(set(fold["train"] + fold["val"]) - set(self._train))
                if unknown:
                    raise ValueError(f"splits fold {i} names cases that are not training cases: {unknown[:10]}")
        extra = _jsonable(dict(extra))
        if "annotated_fraction" not in extra and self.annotated_fraction is not None:
            extra["annotated_fraction"] = round(self.annotated_fraction, 6)
        extra.setdefault("dataset_name", self.dataset_name)
        extra.setdefault("license", "see the license of the source dataset")
        extra.setdefault("converted_by", "nnunet_scribble")
        extra.setdefault("numTest", len(self._test))
        extra.setdefault("dense_labels_folder", "labelsTr_dense" if (tmp / "labelsTr_dense").is_dir() else None)
        if extra["dense_labels_folder"] is None:
            del extra["dense_labels_folder"]
        citation = extra.pop("citation", None)  # generate_dataset_json 2.8.1 writes `release` under "citation"
        generate_dataset_json(str(tmp), channel_names, dict(labels), len(self._train), self.file_ending, **extra)
        if citation is not None:
            dj = json.loads((tmp / "dataset.json").read_text())
            dj["citation"] = citation
            (tmp / "dataset.json").write_text(json.dumps(dj, indent=4))
        self._finalized = True
