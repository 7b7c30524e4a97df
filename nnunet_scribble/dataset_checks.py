"""Checks that a dataset really is a scribble dataset, with messages that say what to fix."""
from __future__ import annotations

from typing import Iterable, Optional, Sequence, Tuple

import numpy as np


class ScribbleDatasetError(ValueError):
    """A dataset or case cannot be used for scribble-supervised training."""


def check_ignore_label(label_manager, dataset_name: str = "this dataset") -> int:
    """The dataset must declare an ``ignore`` label and must not be region-based; returns the ignore label."""
    if label_manager.has_regions:
        raise ScribbleDatasetError(
            f"{dataset_name} is region-based; nnunet_scribble trainers support plain label maps only. "
            f"Remove 'regions_class_order' and use one integer per class in dataset.json 'labels'.")
    if not label_manager.has_ignore_label:
        raise ScribbleDatasetError(
            f"{dataset_name} declares no 'ignore' label in dataset.json. Scribble trainers need every "
            f"unannotated voxel marked with an ignore label, the highest label value "
            f"(e.g. \"labels\": {{\"background\": 0, ..., \"ignore\": N}}). Convert a dense dataset with "
            f"`nnunet_scribble_convert_dense` or add the ignore label to dataset.json and the label files.")
    return int(label_manager.ignore_label)


def check_scribble_array(seg: np.ndarray, ignore_label: int, case: str, out_of_image_is_annotated: bool = False) -> int:
    """Validate one (preprocessed or raw) scribble map; returns its number of annotated voxels.

    Values allowed: 0..ignore_label, plus -1 (nnU-Net's preprocessing marks annotated background outside
    the nonzero crop with -1). Our trainers train -1 as ignore, so by default it does not count as
    annotated; ``out_of_image_is_annotated`` counts it (for training that maps -1 to background).
    """
    return _check_scribble_values(seg, np.unique(seg), ignore_label, case, out_of_image_is_annotated)


def _check_scribble_values(seg: np.ndarray, values: np.ndarray, ignore_label: int, case: str,
                           out_of_image_is_annotated: bool) -> int:
    """``check_scribble_array`` with the map's unique ``values`` already computed."""
    bad = values[(values > ignore_label) | (values < -1)]
    if bad.size:
        raise ScribbleDatasetError(
            f"case {case}: label values {bad.tolist()} are outside 0..{ignore_label} (ignore = {ignore_label}). "
            f"The ignore label must be the highest value; fix the label file or dataset.json.")
    annotated_mask = (seg != ignore_label) if out_of_image_is_annotated else (seg >= 0) & (seg != ignore_label)
    annotated = int(np.count_nonzero(annotated_mask))
    if annotated == 0:
        raise ScribbleDatasetError(
            f"case {case} has no annotated voxel (every voxel is the ignore label {ignore_label}"
            f"{'' if out_of_image_is_annotated else ' or outside the image'}). "
            f"Add scribbles to it or remove it from the training split.")
    return annotated


def check_scribble_cases(cases: Iterable[Tuple[str, np.ndarray]], ignore_label: int,
                         classes: Optional[Sequence[int]] = None, out_of_image_is_annotated: bool = False) -> dict:
    """Check every (case, seg) pair; returns {case: annotated voxel count}.

    With ``classes``, every one of them must be scribbled in at least one case: a class without a single
    annotated voxel gets no supervision and can never be learned.
    """
    counts, seen = {}, set()
    for case, seg in cases:
        seg = np.asarray(seg)
        unique = np.unique(seg)   # once per case: a full-resolution 3D map is large
        counts[case] = _check_scribble_values(seg, unique, ignore_label, case, out_of_image_is_annotated)
        if classes is not None:
            values = {int(v) for v in unique}
            seen.update(values | ({0} if out_of_image_is_annotated and -1 in values else set()))  # -1 = background
    missing = [int(c) for c in (classes if classes is not None else []) if int(c) not in seen]
    if missing:
        raise ScribbleDatasetError(
            f"label value(s) {missing} carry no scribble in any of the {len(counts)} training cases: these classes "
            f"would never be learned. Scribble them in at least one training case (or remove them from "
            f"dataset.json 'labels').")
    return counts
