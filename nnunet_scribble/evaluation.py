"""Evaluation of predicted segmentations against DENSE ground truth.

Scribbles are only used for training; everything in this module compares a
prediction with the fully annotated reference segmentation.

Metrics (per class, per case)
-----------------------------
* ``Dice``, ``IoU``, ``TP``, ``FP``, ``FN``, ``TN``, ``n_pred``, ``n_ref`` exactly
  as in nnU-Net's ``nnunetv2/evaluation/evaluate_predictions.py`` (except for
  the empty rules below, where nnU-Net reports NaN).
* ``HD95`` and ``ASSD`` in millimetres.

Conventions
-----------
* **Surface.** The surface of a binary mask is the mask minus its binary
  erosion (``scipy.ndimage.binary_erosion``) with the *face* connectivity
  structuring element (``generate_binary_structure(ndim, 1)``: 6-neighbourhood
  in 3D, 4-neighbourhood in 2D; medpy's default). A foreground voxel therefore
  belongs to the surface iff at least one of its face neighbours is
  background. Voxels outside the array count as background
  (``border_value=0``), so foreground touching the image border is surface.
* **Spacing** is given per *array axis*. SimpleITK arrays are ``(z, y, x)``
  while ``image.GetSpacing()`` is ``(x, y, z)``, so the SimpleITK spacing has
  to be reversed; :func:`evaluate_folder` does that.
* **Surface distances** from ``a`` to ``b``: for every surface voxel of ``a``
  the Euclidean distance (mm, ``distance_transform_edt(..., sampling=spacing)``)
  to the nearest surface voxel of ``b``. These are *directed* distances.
* **HD95** = ``max(P95(d(pred->ref)), P95(d(ref->pred)))``: the larger of the
  two directed 95th percentiles (``np.percentile``, linear interpolation).
  This is the convention of MONAI's ``compute_hausdorff_distance(...,
  percentile=95)``. Note that medpy's ``hd95`` instead takes the 95th
  percentile of the *pooled* distances of both directions; both agree whenever
  the two directions are symmetric, and differ otherwise.
* **ASSD** = ``(mean(d(pred->ref)) + mean(d(ref->pred))) / 2``: the mean of the
  two directed mean surface distances (medpy's ``assd`` convention).
* **Empty masks.**

  - both empty: Dice = IoU = 1, HD95 = ASSD = 0;
  - exactly one empty: Dice = IoU = 0 and HD95 = ASSD = the image diagonal in
    mm, ``sqrt(sum((shape[i] * spacing[i]) ** 2))`` -- a worst-case penalty so
    that averages over cases are not optimistic (skipping such cases or
    reporting NaN would hide missed or hallucinated structures).

  Every per-class entry carries the booleans ``empty_pred`` and ``empty_ref``
  so that the penalised cases can be identified afterwards.

Summary
-------
:func:`evaluate_folder` returns (and writes as ``summary.json``) nnU-Net's
``summary.json`` schema -- ``metric_per_case`` (list of ``{"metrics": {label:
{...}}, "prediction_file", "reference_file"}``), ``mean`` (``{label: {metric:
nanmean over cases}}``) and ``foreground_mean`` (``{metric: mean over labels
!= 0 of mean[label][metric]}``) -- with HD95 and ASSD in the same metric dicts,
plus two extra entries:

* ``std``: ``{label: {metric: population std (ddof=0, NaN ignored) over cases}}``;
* ``foreground_std``: ``{metric: std over cases of the per-case average over
  the foreground labels}`` (the spread matching ``foreground_mean``).

The boolean flags are not averaged. In memory labels are ``int`` keys; in JSON
they are strings (as nnU-Net's ``save_summary_json`` writes them, so
``nnunetv2.evaluation.evaluate_predictions.load_summary_json`` can read our
file) and NaN/inf become ``null``.

Command line::

    python -m nnunet_scribble.evaluation -pred PRED_DIR -ref REF_DIR [-l 1 2 3] \
        [-o OUT] [-np N] [--file_ending .nii.gz] [--ignore_missing]
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import multiprocessing
import os
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from scipy import ndimage

#: connectivity of the structuring element used to extract surfaces (1 = face neighbours)
SURFACE_CONNECTIVITY = 1
#: relative tolerance when comparing the spacings of prediction and reference
SPACING_RTOL = 1e-3
#: per-class metrics averaged in the summary (flags are excluded)
NUMERIC_METRICS = ("Dice", "IoU", "HD95", "ASSD", "TP", "FP", "FN", "TN", "n_pred", "n_ref")
#: boolean per-class flags
FLAG_METRICS = ("empty_pred", "empty_ref")
CSV_COLUMNS = ("case", "label") + NUMERIC_METRICS + FLAG_METRICS


# ----------------------------------------------------------------------------------------------------------------------
# binary metrics
# ----------------------------------------------------------------------------------------------------------------------
def _check_pair(a_mask: np.ndarray, b_mask: np.ndarray, spacing: Sequence[float] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Cast both masks to bool and check that shapes (and the spacing length) agree."""
    a = np.asarray(a_mask).astype(bool, copy=False)
    b = np.asarray(b_mask).astype(bool, copy=False)
    if a.shape != b.shape:
        raise ValueError(f"Mask shapes differ: {a.shape} vs {b.shape}")
    if spacing is not None and len(spacing) != a.ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {len(spacing)} entries but the masks have {a.ndim} axes")
    return a, b


def image_diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length in mm of the diagonal of an image: ``sqrt(sum((shape[i] * spacing[i]) ** 2))``."""
    return float(np.sqrt(np.sum((np.asarray(shape, dtype=float) * np.asarray(spacing, dtype=float)) ** 2)))


def dice(pred_mask: np.ndarray, ref_mask: np.ndarray) -> float:
    """Dice coefficient ``2|P&R| / (|P| + |R|)``; 1.0 if both masks are empty."""
    p, r = _check_pair(pred_mask, ref_mask)
    denominator = int(np.count_nonzero(p)) + int(np.count_nonzero(r))
    if denominator == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(p & r)) / denominator


def _surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: ``mask & ~erosion(mask)`` (face connectivity, outside of the array = background)."""
    structure = ndimage.generate_binary_structure(mask.ndim, SURFACE_CONNECTIVITY)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _crop_to_union(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of ``a | b`` plus a one-voxel margin.

    Exact for surface distances: every surface voxel lies inside the box, the margin keeps the erosion
    identical (the margin is background, or the box ends at the true image border), and Euclidean
    distances do not depend on the grid around the voxels.
    """
    box = ndimage.find_objects((a | b).astype(np.uint8))[0]
    box = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, a.shape))
    return a[box], b[box]


def surface_distances(a_mask: np.ndarray, b_mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Directed surface distances (mm) from each surface voxel of ``a`` to the nearest surface voxel of ``b``.

    :param a_mask: binary mask (any dtype, non-zero = foreground)
    :param b_mask: binary mask with the same shape
    :param spacing: voxel size per array axis (for SimpleITK arrays: reversed ``GetSpacing()``)
    :return: 1D float array, one entry per surface voxel of ``a`` (in C order). Empty if ``a`` is empty;
        all ``inf`` if ``a`` is not empty but ``b`` is.
    """
    a, b = _check_pair(a_mask, b_mask, spacing)
    if not a.any():
        return np.zeros(0, dtype=float)
    if not b.any():
        return np.full(int(np.count_nonzero(_surface(a))), np.inf)
    a, b = _crop_to_union(a, b)
    # distance of every voxel to the nearest surface voxel of b (the zeros of ~surface_b)
    distance_to_b = ndimage.distance_transform_edt(~_surface(b), sampling=tuple(float(s) for s in spacing))
    return distance_to_b[_surface(a)].astype(float)


def _empty_case_distance(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> float | None:
    """Value of HD95/ASSD given by the empty rules, or None if both masks are non-empty."""
    a_empty, b_empty = not a.any(), not b.any()
    if a_empty and b_empty:
        return 0.0
    if a_empty or b_empty:
        return image_diagonal(a.shape, spacing)
    return None


def _hd95_and_assd(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
    """HD95 and ASSD (mm) from one pair of directed distance computations, empty rules included."""
    p, r = _check_pair(pred_mask, ref_mask, spacing)
    penalty = _empty_case_distance(p, r, spacing)
    if penalty is not None:
        return penalty, penalty
    d_pr = surface_distances(p, r, spacing)
    d_rp = surface_distances(r, p, spacing)
    hd95_value = max(float(np.percentile(d_pr, 95)), float(np.percentile(d_rp, 95)))
    assd_value = (float(d_pr.mean()) + float(d_rp.mean())) / 2.0
    return hd95_value, assd_value


def hd95(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile Hausdorff distance (mm): max of the two directed 95th percentiles.

    Both empty -> 0; exactly one empty -> image diagonal in mm.
    """
    return _hd95_and_assd(pred_mask, ref_mask, spacing)[0]


def assd(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Average symmetric surface distance (mm): mean of the two directed mean surface distances.

    Both empty -> 0; exactly one empty -> image diagonal in mm.
    """
    return _hd95_and_assd(pred_mask, ref_mask, spacing)[1]


def compute_case_metrics(pred: np.ndarray, ref: np.ndarray, labels: list[int],
                         spacing: tuple[float, ...]) -> dict[int, dict[str, float]]:
    """All metrics of one case for every label.

    :param pred: predicted label map
    :param ref: dense reference label map (same shape)
    :param labels: labels to evaluate
    :param spacing: voxel size per array axis (mm)
    :return: ``{label: {"Dice", "IoU", "HD95", "ASSD", "TP", "FP", "FN", "TN", "n_pred", "n_ref",
        "empty_pred", "empty_ref"}}`` with Python scalars
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"Prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if len(spacing) != ref.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match the {ref.ndim} image axes")
    results: dict[int, dict[str, float]] = {}
    for label in labels:
        p = pred == label
        r = ref == label
        # the counts of nnU-Net's compute_tp_fp_fn_tn (tests/test_evaluation.py compares them), without
        # importing nnunetv2 (and torch) into every evaluation worker
        tp = int(np.count_nonzero(p & r))
        fp = int(np.count_nonzero(p & ~r))
        fn = int(np.count_nonzero(~p & r))
        tn = int(p.size - tp - fp - fn)
        if tp + fp + fn == 0:  # both empty: 1 here, where nnU-Net reports NaN
            dice_value, iou_value = 1.0, 1.0
        else:
            dice_value, iou_value = 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)
        hd95_value, assd_value = _hd95_and_assd(p, r, spacing)
        results[int(label)] = {
            "Dice": float(dice_value), "IoU": float(iou_value), "HD95": hd95_value, "ASSD": assd_value,
            "TP": tp, "FP": fp, "FN": fn, "TN": tn, "n_pred": tp + fp, "n_ref": tp + fn,
            "empty_pred": tp + fp == 0, "empty_ref": tp + fn == 0,
        }
    return results


# ----------------------------------------------------------------------------------------------------------------------
# folder evaluation
# ----------------------------------------------------------------------------------------------------------------------
def _read_image(filename: str) -> tuple:
    """Read an image with SimpleITK: (array, spacing per array axis (reversed GetSpacing()), origin,
    direction), origin and direction in SimpleITK order."""
    import SimpleITK as sitk
    image = sitk.ReadImage(filename)
    return (sitk.GetArrayFromImage(image), tuple(float(s) for s in reversed(image.GetSpacing())),
            image.GetOrigin(), image.GetDirection())


def _case_name(filename: str, file_ending: str) -> str:
    """Case identifier: file name without directory and ``file_ending``."""
    name = os.path.basename(filename)
    return name[:-len(file_ending)] if file_ending and name.endswith(file_ending) else name


def _list_cases(folder: str, file_ending: str) -> list[str]:
    """Sorted case identifiers of the files ``<case><file_ending>`` in ``folder``."""
    return sorted(_case_name(f, file_ending) for f in os.listdir(folder)
                  if f.endswith(file_ending) and os.path.isfile(os.path.join(folder, f)))


def _labels_in_file(filename: str) -> list[int]:
    """Non-zero values present in a label map."""
    array = _read_image(filename)[0]
    return [int(v) for v in np.unique(array) if v != 0]


def labels_in_files(files: list[str], num_processes: int = 1) -> list[int]:
    """Sorted non-zero values present in any of the label maps ``files``."""
    found = _run(_labels_in_file, [(str(f),) for f in files], num_processes)
    return sorted(set().union(*found))


def _evaluate_case(prediction_file: str, reference_file: str, labels: list[int]) -> dict:
    """Read one pair, check geometry, and return a ``metric_per_case`` entry."""
    pred, pred_spacing, pred_origin, pred_direction = _read_image(prediction_file)
    ref, ref_spacing, ref_origin, ref_direction = _read_image(reference_file)
    case = os.path.basename(reference_file)
    if pred.shape != ref.shape:
        raise ValueError(f"Case {case}: prediction shape {pred.shape} != reference shape {ref.shape} "
                         f"(prediction {prediction_file})")
    sp, sr = np.asarray(pred_spacing), np.asarray(ref_spacing)
    if np.any(np.abs(sp - sr) > SPACING_RTOL * np.maximum(np.abs(sp), np.abs(sr))):
        raise ValueError(f"Case {case}: prediction spacing {pred_spacing} != reference spacing {ref_spacing} "
                         f"(per array axis, relative tolerance {SPACING_RTOL})")
    # same grid size and spacing but shifted or re-oriented: the voxels would be compared at other places
    if not np.allclose(pred_origin, ref_origin, rtol=0, atol=SPACING_RTOL * float(np.max(sr))):
        raise ValueError(f"Case {case}: prediction origin {tuple(np.round(pred_origin, 4))} != reference origin "
                         f"{tuple(np.round(ref_origin, 4))} (prediction {prediction_file})")
    if not np.allclose(pred_direction, ref_direction, rtol=0, atol=SPACING_RTOL):
        raise ValueError(f"Case {case}: prediction direction {tuple(np.round(pred_direction, 4))} != reference "
                         f"direction {tuple(np.round(ref_direction, 4))} (prediction {prediction_file})")
    return {"metrics": compute_case_metrics(pred, ref, labels, ref_spacing),
            "prediction_file": prediction_file, "reference_file": reference_file}


def _run(function: Callable, arguments: list[tuple], num_processes: int) -> list:
    """``starmap`` in a spawn pool if ``num_processes > 1`` and there is more than one job, else serially."""
    if num_processes > 1 and len(arguments) > 1:
        with multiprocessing.get_context("spawn").Pool(min(num_processes, len(arguments))) as pool:
            return pool.starmap(function, arguments)
    return [function(*a) for a in arguments]


def _nan_stat(values: Iterable[float], statistic: Callable[[np.ndarray], Any]) -> float:
    """``statistic`` over the non-NaN values (NaN if there are none), without RuntimeWarnings."""
    array = np.asarray(list(values), dtype=float)
    array = array[~np.isnan(array)]
    return float(statistic(array)) if array.size else float("nan")


def _aggregate(results: list[dict], labels: list[int]) -> dict:
    """Build the summary dict (nnU-Net schema plus ``std`` and ``foreground_std``) from per-case entries."""
    mean = {l: {m: _nan_stat((r["metrics"][l][m] for r in results), np.mean) for m in NUMERIC_METRICS}
            for l in labels}
    std = {l: {m: _nan_stat((r["metrics"][l][m] for r in results), np.std) for m in NUMERIC_METRICS}
           for l in labels}
    foreground = [l for l in labels if l != 0]
    foreground_mean = {m: _nan_stat((mean[l][m] for l in foreground), np.mean) for m in NUMERIC_METRICS}
    foreground_std = {}
    for m in NUMERIC_METRICS:
        per_case = [_nan_stat((r["metrics"][l][m] for l in foreground), np.mean) for r in results]
        foreground_std[m] = _nan_stat(per_case, np.std)
    return {"metric_per_case": results, "mean": mean, "foreground_mean": foreground_mean,
            "std": std, "foreground_std": foreground_std}


def evaluate_folder(pred_folder: str, ref_folder: str, labels: list[int] | None = None,
                    file_ending: str = ".nii.gz", output_folder: str | None = None, num_processes: int = 1,
                    ignore_missing: bool = False) -> dict:
    """Evaluate every ``<case><file_ending>`` of ``ref_folder`` against the same name in ``pred_folder``.

    :param pred_folder: folder with predicted label maps
    :param ref_folder: folder with dense reference label maps
    :param labels: labels to evaluate; default: all non-zero values found in the references
    :param file_ending: file ending that identifies images (also stripped to get case names)
    :param output_folder: if given, ``summary.json``, ``metrics_per_case.csv`` and ``summary.md`` are written there
    :param num_processes: >1 uses a spawn multiprocessing pool, else everything runs in this process
    :param ignore_missing: evaluate only cases present in both folders instead of raising
    :raises FileNotFoundError: references without prediction (unless ``ignore_missing``), or no reference files
    :raises ValueError: shape or spacing mismatch (naming the case), no label to evaluate, or a requested label
        that appears in none of the references
    :return: summary dict (int label keys, see module docstring). Predictions without reference are ignored.
    """
    ref_cases = _list_cases(ref_folder, file_ending)
    if not ref_cases:
        raise FileNotFoundError(f"No reference files ending with '{file_ending}' in {ref_folder}")
    pred_cases = set(_list_cases(pred_folder, file_ending))
    missing = [c for c in ref_cases if c not in pred_cases]
    if missing and not ignore_missing:
        raise FileNotFoundError(f"{len(missing)} reference case(s) have no prediction in {pred_folder}: "
                                f"{', '.join(missing)}")
    cases = [c for c in ref_cases if c in pred_cases]
    if not cases:
        raise FileNotFoundError(f"No case of {ref_folder} has a prediction in {pred_folder}")
    ref_files = [os.path.join(ref_folder, c + file_ending) for c in cases]
    pred_files = [os.path.join(pred_folder, c + file_ending) for c in cases]

    if labels is None:
        labels = labels_in_files(ref_files, num_processes)
        if not labels:
            raise ValueError(f"No foreground label in the references of {ref_folder}; pass labels explicitly")
    labels = [int(l) for l in labels]

    results = _run(_evaluate_case, [(p, r, labels) for p, r in zip(pred_files, ref_files)], num_processes)
    # a label in no reference is empty-in-both (Dice 1, HD95 0) wherever it is not predicted: it would only inflate
    # the foreground mean (e.g. the ignore label passed by mistake), so refuse it instead of scoring it as perfect
    absent = [l for l in labels if all(r["metrics"][l]["empty_ref"] for r in results)]
    if absent:
        raise ValueError(f"label(s) {absent} appear in none of the {len(results)} reference(s) in {ref_folder}: "
                         f"their Dice is undefined; evaluate without them")
    summary = _aggregate(results, labels)
    if output_folder is not None:
        write_outputs(summary, output_folder, file_ending)
    return summary


# ----------------------------------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------------------------------
def to_json_safe(obj: Any) -> Any:
    """Recursively convert to JSON-safe types: keys -> str, numpy scalars -> Python, NaN/inf -> None."""
    if isinstance(obj, dict):
        return {str(k): to_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [to_json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    return obj


def _atomic_write_text(filename: str, text: str) -> None:
    """Write ``text`` to a temporary file in the same folder, then ``os.replace`` it onto ``filename``."""
    tmp = _temp_name(filename)
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, filename)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _temp_name(filename: str) -> str:
    """Temporary file name next to ``filename`` (same file system, so ``os.replace`` is atomic)."""
    folder, name = os.path.split(os.path.abspath(filename))
    return os.path.join(folder, f".{name}.{os.getpid()}.tmp")


def save_summary_json(summary: dict, filename: str) -> None:
    """Write the summary as JSON (string label keys, NaN -> null, sorted keys like nnU-Net)."""
    text = json.dumps(to_json_safe(summary), sort_keys=True, indent=4, allow_nan=False)
    _atomic_write_text(filename, text + "\n")


def _label_key(key: Any) -> Any:
    """Label keys may be ints (in memory) or strings (loaded from JSON): return an int when possible."""
    try:
        return int(key)
    except (TypeError, ValueError):
        return key


def metrics_to_csv(summary: dict, file_ending: str = ".nii.gz") -> str:
    """CSV text with one row per case and label (columns :data:`CSV_COLUMNS`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for entry in summary["metric_per_case"]:
        case = _case_name(entry["reference_file"], file_ending)
        for label, metrics in entry["metrics"].items():
            writer.writerow([case, _label_key(label)] + [metrics[m] for m in NUMERIC_METRICS + FLAG_METRICS])
    return buffer.getvalue()


def _format(mean: float | None, std: float | None, digits: int) -> str:
    """``mean ± std`` with ``digits`` decimals; ``n/a`` for missing values."""
    if mean is None or not math.isfinite(mean):
        return "n/a"
    if std is None or not math.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summary_to_markdown(summary: dict, label_names: dict[int, str] | None = None) -> str:
    """Markdown table: one row per class with mean ± std of Dice, HD95 (mm), ASSD (mm), plus a mean row.

    The mean row is ``foreground_mean ± foreground_std`` (labels != 0). Works with the in-memory summary
    (int keys) and with a loaded ``summary.json`` (string keys, null values).
    """
    names = {_label_key(k): v for k, v in (label_names or {}).items()}
    columns = (("Dice", 4), ("HD95", 2), ("ASSD", 2))
    lines = ["| Class | Dice | HD95 (mm) | ASSD (mm) |", "|---|---|---|---|"]
    std_all = summary.get("std", {})
    std_by_label = {_label_key(k): v for k, v in std_all.items()}
    for key in sorted(summary["mean"], key=lambda k: (0, _label_key(k), "") if isinstance(_label_key(k), int)
                      else (1, 0, str(k))):
        label = _label_key(key)
        name = f"{label} ({names[label]})" if label in names else str(label)
        mean, std = summary["mean"][key], std_by_label.get(label, {})
        lines.append(f"| {name} | " + " | ".join(_format(mean.get(m), std.get(m), d) for m, d in columns) + " |")
    fg_mean, fg_std = summary.get("foreground_mean", {}), summary.get("foreground_std", {})
    lines.append("| **Mean** | " + " | ".join(_format(fg_mean.get(m), fg_std.get(m), d) for m, d in columns) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(summary: dict, output_folder: str, file_ending: str = ".nii.gz") -> None:
    """Write ``summary.json``, ``metrics_per_case.csv`` and ``summary.md`` to ``output_folder`` (atomically)."""
    os.makedirs(output_folder, exist_ok=True)
    save_summary_json(summary, os.path.join(output_folder, "summary.json"))
    _atomic_write_text(os.path.join(output_folder, "metrics_per_case.csv"), metrics_to_csv(summary, file_ending))
    _atomic_write_text(os.path.join(output_folder, "summary.md"), summary_to_markdown(summary))


# ----------------------------------------------------------------------------------------------------------------------
# pictures
# ----------------------------------------------------------------------------------------------------------------------
def _default_slice(ref: np.ndarray, pred: np.ndarray, axis: int) -> int:
    """Slice with most reference foreground along ``axis`` (prediction if the reference is empty, else middle)."""
    other_axes = tuple(i for i in range(ref.ndim) if i != axis)
    for seg in (ref, pred):
        counts = np.count_nonzero(seg, axis=other_axes)
        if counts.any():
            return int(np.argmax(counts))
    return ref.shape[axis] // 2


def _draw_segmentation(ax, image: np.ndarray, seg: np.ndarray, labels: list[int], title: str,
                       outline: np.ndarray | None = None) -> None:
    """Gray image + translucent label colours + label contours (+ optional dashed outline of another map)."""
    from matplotlib import colormaps
    cmap = colormaps["tab10"]
    ax.imshow(image, cmap="gray", interpolation="nearest")
    for label in labels:
        color = cmap((label - 1) % 10)
        mask = seg == label
        if mask.any():
            ax.imshow(np.ma.masked_where(~mask, np.ones(mask.shape)), cmap=_single_color_cmap(color),
                      alpha=0.35, interpolation="nearest", vmin=0, vmax=1)
            ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=1.2)
        if outline is not None and (outline == label).any():
            ax.contour((outline == label).astype(float), levels=[0.5], colors=[color], linewidths=1.0,
                       linestyles="dashed")
    ax.set_title(title)
    ax.set_axis_off()


def _single_color_cmap(color):
    """Colormap that maps every value to ``color``."""
    from matplotlib.colors import ListedColormap
    return ListedColormap([color])


def save_overlay_png(image: np.ndarray, ref: np.ndarray, pred: np.ndarray, output_png: str, axis: int = 0,
                     slice_index: int | None = None) -> None:
    """Save a side-by-side picture of one slice: reference (left) and prediction (right) over the gray image.

    Labels are filled translucently and outlined; the prediction panel also shows the reference outline
    dashed. Uses matplotlib's Agg canvas directly (no pyplot, global backend untouched).

    :param image: intensity image (2D or 3D), same shape as ``ref`` and ``pred``
    :param ref: reference label map
    :param pred: predicted label map
    :param output_png: file to write (written to a temp name, then ``os.replace``)
    :param axis: slicing axis for 3D inputs (ignored for 2D)
    :param slice_index: slice to show; default: the slice with most reference foreground along ``axis``
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    image, ref, pred = np.asarray(image), np.asarray(ref), np.asarray(pred)
    if not (image.shape == ref.shape == pred.shape):
        raise ValueError(f"Shapes differ: image {image.shape}, ref {ref.shape}, pred {pred.shape}")
    if image.ndim == 3:
        if slice_index is None:
            slice_index = _default_slice(ref, pred, axis)
        take = lambda a: np.take(a, slice_index, axis=axis)  # noqa: E731
        image, ref, pred = take(image), take(ref), take(pred)
        where = f" (axis {axis}, slice {slice_index})"
    elif image.ndim == 2:
        where = ""
    else:
        raise ValueError(f"Only 2D or 3D inputs are supported, got {image.ndim}D")

    image = image.astype(float)
    low, high = np.percentile(image, (0.5, 99.5)) if image.size else (0.0, 1.0)
    image = np.clip((image - low) / (high - low), 0, 1) if high > low else np.zeros_like(image)
    labels = sorted(int(v) for v in np.union1d(np.unique(ref), np.unique(pred)) if v != 0)

    fig = Figure(figsize=(8, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    ax_ref, ax_pred = fig.subplots(1, 2)
    _draw_segmentation(ax_ref, image, ref, labels, "Reference" + where)
    _draw_segmentation(ax_pred, image, pred, labels, "Prediction (dashed: reference)", outline=ref)
    fig.tight_layout()

    os.makedirs(os.path.dirname(os.path.abspath(output_png)), exist_ok=True)
    tmp = _temp_name(output_png)
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, output_png)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# ----------------------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """CLI: evaluate a prediction folder, print the Markdown table, write the outputs (default: pred folder)."""
    parser = argparse.ArgumentParser(
        prog="python -m nnunet_scribble.evaluation",
        description="Evaluate predictions against dense references: Dice, IoU, HD95 and ASSD (mm) per class. "
                    "Writes summary.json (nnU-Net schema + HD95/ASSD/std), metrics_per_case.csv and summary.md.")
    parser.add_argument("-pred", required=True, help="folder with predicted segmentations")
    parser.add_argument("-ref", required=True, help="folder with dense reference segmentations")
    parser.add_argument("-l", type=int, nargs="+", default=None,
                        help="labels to evaluate, each must occur in at least one reference (default: all non-zero "
                             "labels found in the references)")
    parser.add_argument("-o", default=None, help="output folder (default: the prediction folder)")
    parser.add_argument("-np", type=int, default=1, help="number of processes (default: 1)")
    parser.add_argument("--file_ending", default=".nii.gz", help="file ending of the images (default: .nii.gz)")
    parser.add_argument("--ignore_missing", action="store_true",
                        help="evaluate only cases that have a prediction instead of failing")
    args = parser.parse_args(argv)
    summary = evaluate_folder(args.pred, args.ref, labels=args.l, file_ending=args.file_ending,
                              output_folder=args.o if args.o is not None else args.pred,
                              num_processes=args.np, ignore_missing=args.ignore_missing)
    print(summary_to_markdown(summary), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
