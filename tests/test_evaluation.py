"""Tests for nnunet_scribble.evaluation: metric values are checked against hand-computed numbers."""
import csv
import json
import math
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_scribble.evaluation import (
    assd,
    compute_case_metrics,
    dice,
    evaluate_folder,
    hd95,
    main,
    save_overlay_png,
    summary_to_markdown,
    surface_distances,
    to_json_safe,
)


# ----------------------------------------------------------------------------------------------------------------------
# binary metrics
# ----------------------------------------------------------------------------------------------------------------------
def test_dice_overlapping_boxes():
    a = np.zeros((1, 1, 8), bool)
    b = np.zeros((1, 1, 8), bool)
    a[0, 0, 0:4] = True  # 4 voxels
    b[0, 0, 2:6] = True  # 4 voxels, overlap = 2
    assert dice(a, b) == pytest.approx(2 * 2 / (4 + 4))  # 0.5
    # 3D boxes: a = 2x2x2 = 8, b = 2x2x3 = 12, overlap 2x2x1 = 4 -> 2*4/20 = 0.4
    a = np.zeros((4, 4, 6), bool)
    b = np.zeros((4, 4, 6), bool)
    a[0:2, 0:2, 0:2] = True
    b[0:2, 0:2, 1:4] = True
    assert dice(a, b) == pytest.approx(0.4)


@pytest.mark.parametrize("axis, expected", [(0, 6.0), (2, 3.0)])
def test_single_voxels_spacing_per_axis(axis, expected):
    a = np.zeros((8, 8, 8), bool)
    b = np.zeros((8, 8, 8), bool)
    a[2, 2, 2] = True
    index = [2, 2, 2]
    index[axis] += 3
    b[tuple(index)] = True
    spacing = (2.0, 1.0, 1.0)  # 3 voxels along axis 0 = 6 mm, along axis 2 = 3 mm
    assert surface_distances(a, b, spacing).tolist() == [expected]
    assert hd95(a, b, spacing) == pytest.approx(expected)
    assert assd(a, b, spacing) == pytest.approx(expected)


def test_offset_cubes_anisotropic():
    """Cube A = 4x4x4 voxels, B = A shifted by k = 2 voxels along axis 0, spacing (s0, s1, s2) = (1.5, 2, 2.5).

    Hand derivation (coordinates relative to A; A has z in 0..3, B has z in 2..5; both have y, x in 0..3):
    the surface of a 4^3 cube is its 4^3 - 2^3 = 56 boundary voxels: per z layer the 12 voxels with y or x in
    {0, 3} ("rim"), plus the 4 "inner" voxels (y, x in {1, 2}) of the two end layers.
    Directed distances A -> B (nearest surface voxel of B):
      z = 0: rim (12) -> B rim at z = 2: 2*s0;  inner (4) -> B end face z = 2: 2*s0     -> 16 x 2*s0
      z = 1: rim (12) -> B rim at z = 2: s0                                            -> 12 x s0
      z = 2: rim (12) is B's end face / rim: 0                                         -> 12 x 0
      z = 3: rim (12) is B's rim: 0; inner (4) lies inside B, nearest B surface is the end face z = 2 (s0) or
             the rim one step in y or x (s1 = 2, s2 = 2.5); s0 = 1.5 is smallest      ->  4 x s0, 12 x 0
    So 24 zeros, 16 x s0, 16 x 2*s0; the situation B -> A is the mirror image and gives the same list.
      mean = (16*s0 + 32*s0) / 56 = 6/7 * s0 = 9/7 mm         -> ASSD = 9/7
      95th percentile: sorted index 0.95 * 55 = 52.25 lies in the last 16 values (indices 40..55) = 2*s0 = 3 mm
                                                                -> HD95 = 3.0
    """
    a = np.zeros((12, 8, 8), bool)
    b = np.zeros((12, 8, 8), bool)
    a[2:6, 2:6, 2:6] = True
    b[4:8, 2:6, 2:6] = True
    spacing = (1.5, 2.0, 2.5)
    d = np.sort(surface_distances(a, b, spacing))
    assert d.size == 56
    np.testing.assert_allclose(d, [0.0] * 24 + [1.5] * 16 + [3.0] * 16)
    assert hd95(a, b, spacing) == pytest.approx(3.0, abs=1e-6)
    assert assd(a, b, spacing) == pytest.approx(9 / 7, abs=1e-6)
    assert dice(a, b) == pytest.approx(0.5)  # overlap 2 layers of 16 = 32 of 64 + 64
    # the spacing is per array axis: with the reversed spacing the offset axis would be 2.5 mm -> HD95 = 5
    assert hd95(a, b, spacing[::-1]) == pytest.approx(5.0)


def test_hd95_is_max_of_directed_percentiles():
    """Line masks (every voxel is surface because the array is 1 voxel thick).

    pred = {x = 0}, ref = {x = 0..19}, spacing 0.5 mm along x.
    pred -> ref: [0]; ref -> pred: [0, 1, ..., 19] voxels. P95 of 0..19 (linear) = 0.95 * 19 = 18.05 voxels.
    HD95 = max(0, 18.05) * 0.5 = 9.025 mm (the pooled medpy variant would give 18 * 0.5 = 9.0).
    ASSD = (0 + mean(0..19) = 9.5) / 2 voxels = 4.75 * 0.5 = 2.375 mm.
    """
    pred = np.zeros((1, 1, 24), bool)
    ref = np.zeros((1, 1, 24), bool)
    pred[0, 0, 0] = True
    ref[0, 0, :20] = True
    spacing = (1.0, 1.0, 0.5)
    assert hd95(pred, ref, spacing) == pytest.approx(9.025)
    assert hd95(ref, pred, spacing) == pytest.approx(9.025)
    assert assd(pred, ref, spacing) == pytest.approx(2.375)


def test_hd95_ignores_small_outlier():
    """4^3 reference cube (56 surface voxels); prediction = cube + 1 isolated voxel at distance d.

    pred -> ref: 56 zeros + d; P95 index 0.95 * 56 = 53.2 -> 0. ref -> pred: all 0. So HD95 = 0 while
    ASSD = (d / 57 + 0) / 2 = d / 114.
    """
    ref = np.zeros((12, 12, 12), bool)
    ref[1:5, 1:5, 1:5] = True
    pred = ref.copy()
    pred[10, 10, 10] = True
    d = math.sqrt(3 * 6 ** 2)  # nearest cube surface voxel is the corner (4, 4, 4)
    assert hd95(pred, ref, (1.0, 1.0, 1.0)) == 0.0
    assert assd(pred, ref, (1.0, 1.0, 1.0)) == pytest.approx(d / 114)


def test_identical_and_empty_masks():
    spacing = (2.0, 1.0, 0.5)
    m = np.zeros((4, 6, 8), bool)
    m[1:3, 2:5, 3:7] = True
    assert dice(m, m) == 1.0
    assert hd95(m, m, spacing) == 0.0
    assert assd(m, m, spacing) == 0.0

    empty = np.zeros_like(m)
    assert dice(empty, empty) == 1.0
    assert hd95(empty, empty, spacing) == 0.0
    assert assd(empty, empty, spacing) == 0.0

    diagonal = math.sqrt((4 * 2.0) ** 2 + (6 * 1.0) ** 2 + (8 * 0.5) ** 2)
    for p, r in ((m, empty), (empty, m)):
        assert dice(p, r) == 0.0
        assert hd95(p, r, spacing) == pytest.approx(diagonal)
        assert assd(p, r, spacing) == pytest.approx(diagonal)
    assert surface_distances(empty, m, spacing).size == 0


def test_compute_case_metrics_counts_and_flags():
    ref = np.zeros((3, 4, 5), np.uint8)
    pred = np.zeros_like(ref)
    ref[0, 0, 0:4] = 1   # 4 voxels of label 1
    pred[0, 0, 2:5] = 1  # voxels 2..4 -> TP 2, FP 1, FN 2
    ref[2, 3, 4] = 2     # label 2 only in the reference
    pred[1, 1, 1] = 3    # label 3 only in the prediction
    res = compute_case_metrics(pred, ref, [1, 2, 3, 4], (1.0, 1.0, 1.0))
    m1 = res[1]
    assert (m1["TP"], m1["FP"], m1["FN"], m1["TN"]) == (2, 1, 2, 60 - 5)
    assert (m1["n_pred"], m1["n_ref"]) == (3, 4)
    assert m1["Dice"] == pytest.approx(4 / 7) and m1["IoU"] == pytest.approx(2 / 5)
    assert not m1["empty_pred"] and not m1["empty_ref"]
    diagonal = math.sqrt(3 ** 2 + 4 ** 2 + 5 ** 2)
    assert res[2]["empty_pred"] and not res[2]["empty_ref"] and res[2]["HD95"] == pytest.approx(diagonal)
    assert res[3]["empty_ref"] and not res[3]["empty_pred"] and res[3]["ASSD"] == pytest.approx(diagonal)
    assert res[4]["empty_pred"] and res[4]["empty_ref"] and res[4]["Dice"] == 1.0 and res[4]["HD95"] == 0.0
    with pytest.raises(ValueError):
        compute_case_metrics(pred, ref[:2], [1], (1.0, 1.0, 1.0))


# ----------------------------------------------------------------------------------------------------------------------
# folder evaluation
# ----------------------------------------------------------------------------------------------------------------------
SITK_SPACING = (0.8, 0.9, 2.5)        # (x, y, z) as SimpleITK reports it
ARRAY_SPACING = SITK_SPACING[::-1]    # (z, y, x) for the numpy arrays
SHAPE = (6, 10, 12)


def _write(array: np.ndarray, filename: str, spacing=SITK_SPACING, origin=None, direction=None) -> None:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    if origin is not None:
        image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, filename)


def _make_cases():
    """Two cases with labels 1 and 2; case_b has label 2 missing in the prediction."""
    ref_a = np.zeros(SHAPE, np.uint8)
    ref_a[1:4, 2:6, 2:7] = 1
    ref_a[2:5, 6:9, 7:11] = 2
    pred_a = ref_a.copy()
    pred_a[pred_a == 2] = 0
    pred_a[3:6, 6:9, 7:11] = 2  # label 2 shifted by one slice
    ref_b = np.zeros(SHAPE, np.uint8)
    ref_b[0:3, 1:5, 1:5] = 1
    ref_b[3:5, 5:8, 5:9] = 2
    pred_b = np.zeros(SHAPE, np.uint8)
    pred_b[0:3, 1:5, 2:6] = 1
    return {"case_a": (pred_a, ref_a), "case_b": (pred_b, ref_b)}


@pytest.fixture
def folders(tmp_path):
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    cases = _make_cases()
    for name, (pred, ref) in cases.items():
        _write(pred, str(pred_dir / f"{name}.nii.gz"))
        _write(ref, str(ref_dir / f"{name}.nii.gz"))
    return str(pred_dir), str(ref_dir), cases


def test_evaluate_folder_outputs(folders, tmp_path):
    pred_dir, ref_dir, cases = folders
    out = str(tmp_path / "out")
    summary = evaluate_folder(pred_dir, ref_dir, output_folder=out)  # labels found in the references: 1, 2

    with open(os.path.join(out, "summary.json")) as f:
        loaded = json.load(f)
    assert {"metric_per_case", "mean", "foreground_mean", "std"} <= set(loaded)
    assert set(loaded["mean"]) == {"1", "2"}
    for key in ("Dice", "IoU", "HD95", "ASSD", "TP", "FP", "FN", "TN", "n_pred", "n_ref"):
        assert key in loaded["mean"]["1"] and key in loaded["foreground_mean"] and key in loaded["std"]["2"]

    # per case values equal compute_case_metrics with the reversed SimpleITK spacing
    assert [os.path.basename(e["reference_file"]) for e in loaded["metric_per_case"]] == \
        ["case_a.nii.gz", "case_b.nii.gz"]
    per_case = []
    for entry, (name, (pred, ref)) in zip(loaded["metric_per_case"], sorted(cases.items())):
        assert os.path.basename(entry["prediction_file"]) == f"{name}.nii.gz"
        expected = compute_case_metrics(pred, ref, [1, 2], ARRAY_SPACING)
        per_case.append(expected)
        for label in (1, 2):
            for metric, value in expected[label].items():
                assert entry["metrics"][str(label)][metric] == pytest.approx(value), (name, label, metric)

    # label 2 of case_b: empty prediction -> Dice 0 and HD95 = ASSD = diagonal in mm (spacing reversed!)
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(SHAPE, ARRAY_SPACING)))
    m = loaded["metric_per_case"][1]["metrics"]["2"]
    assert m["empty_pred"] and not m["empty_ref"] and m["Dice"] == 0.0
    assert m["HD95"] == pytest.approx(diagonal) and m["ASSD"] == pytest.approx(diagonal)
    # label 2 of case_a: shift by one slice of 2.5 mm (3 slices thick -> every surface voxel within 2.5 mm)
    assert loaded["metric_per_case"][0]["metrics"]["2"]["HD95"] == pytest.approx(2.5)

    # mean, std (population) and foreground mean
    for label in (1, 2):
        for metric in ("Dice", "HD95", "ASSD", "TP"):
            values = [c[label][metric] for c in per_case]
            assert loaded["mean"][str(label)][metric] == pytest.approx(np.mean(values))
            assert loaded["std"][str(label)][metric] == pytest.approx(np.std(values))
            assert summary["mean"][label][metric] == pytest.approx(np.mean(values))
    assert loaded["foreground_mean"]["Dice"] == pytest.approx(
        (loaded["mean"]["1"]["Dice"] + loaded["mean"]["2"]["Dice"]) / 2)
    fg_per_case = [(c[1]["Dice"] + c[2]["Dice"]) / 2 for c in per_case]
    assert loaded["foreground_std"]["Dice"] == pytest.approx(np.std(fg_per_case))

    with open(os.path.join(out, "metrics_per_case.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2
    assert {r["case"] for r in rows} == {"case_a", "case_b"}
    assert {"case", "label", "Dice", "HD95", "ASSD"} <= set(rows[0])
    row = next(r for r in rows if r["case"] == "case_b" and r["label"] == "2")
    assert float(row["HD95"]) == pytest.approx(diagonal)

    with open(os.path.join(out, "summary.md")) as f:
        md = f.read()
    assert md == summary_to_markdown(summary)
    assert "| 1 |" in md and "| 2 |" in md and "Mean" in md and "HD95 (mm)" in md
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_evaluate_folder_explicit_labels_and_pool(folders):
    pred_dir, ref_dir, _ = folders
    serial = evaluate_folder(pred_dir, ref_dir, labels=[2])
    assert list(serial["mean"]) == [2]
    pooled = evaluate_folder(pred_dir, ref_dir, labels=[2], num_processes=2)
    assert to_json_safe(pooled) == to_json_safe(serial)


def test_evaluate_folder_missing_prediction(folders):
    pred_dir, ref_dir, cases = folders
    os.remove(os.path.join(pred_dir, "case_b.nii.gz"))
    with pytest.raises(FileNotFoundError, match="case_b"):
        evaluate_folder(pred_dir, ref_dir)
    summary = evaluate_folder(pred_dir, ref_dir, ignore_missing=True)
    assert len(summary["metric_per_case"]) == 1


def test_evaluate_folder_shape_mismatch(folders):
    pred_dir, ref_dir, cases = folders
    _write(np.zeros((6, 10, 11), np.uint8), os.path.join(pred_dir, "case_b.nii.gz"))
    with pytest.raises(ValueError, match="case_b"):
        evaluate_folder(pred_dir, ref_dir)


def test_evaluate_folder_spacing_mismatch(folders):
    pred_dir, ref_dir, cases = folders
    _write(cases["case_a"][0], os.path.join(pred_dir, "case_a.nii.gz"), spacing=(0.8, 0.9, 2.6))
    with pytest.raises(ValueError, match="case_a"):
        evaluate_folder(pred_dir, ref_dir)
    # differences below the relative tolerance of 1e-3 are accepted
    _write(cases["case_a"][0], os.path.join(pred_dir, "case_a.nii.gz"), spacing=(0.8, 0.9, 2.5001))
    evaluate_folder(pred_dir, ref_dir)


def test_evaluate_folder_origin_and_direction_mismatch(folders):
    """Same grid size and spacing, but shifted or flipped: refused, not scored at the wrong voxels."""
    pred_dir, ref_dir, cases = folders
    path = os.path.join(pred_dir, "case_a.nii.gz")
    _write(cases["case_a"][0], path, origin=(0.0, 0.0, 5.0))       # 2 slices of 2.5 mm away
    with pytest.raises(ValueError, match="case_a.*origin"):
        evaluate_folder(pred_dir, ref_dir)
    _write(cases["case_a"][0], path, direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1))   # x flipped
    with pytest.raises(ValueError, match="case_a.*direction"):
        evaluate_folder(pred_dir, ref_dir)
    _write(cases["case_a"][0], path, origin=(0.0, 0.0, 0.0001))     # below the tolerance: accepted
    evaluate_folder(pred_dir, ref_dir)


def test_label_in_no_reference_is_refused(folders):
    """Label 4 (e.g. ACDC's ignore label passed with -l) is in no reference: it would score Dice 1 everywhere it is
    not predicted and lift the foreground mean, so it is refused; predicting it does not make it valid."""
    pred_dir, ref_dir, cases = folders
    with pytest.raises(ValueError, match=r"label\(s\) \[4\] appear in none of the 2 reference"):
        evaluate_folder(pred_dir, ref_dir, labels=[1, 4])
    pred = cases["case_a"][0].copy()
    pred[0, 0, 0] = 4
    _write(pred, os.path.join(pred_dir, "case_a.nii.gz"))
    with pytest.raises(ValueError, match=r"\[4\]"):
        evaluate_folder(pred_dir, ref_dir, labels=[4])
    assert main(["-pred", pred_dir, "-ref", ref_dir, "-l", "1", "2"]) == 0  # present labels still evaluate


def test_cli_prints_markdown_and_writes_to_pred_folder(folders, capsys):
    pred_dir, ref_dir, _ = folders
    assert main(["-pred", pred_dir, "-ref", ref_dir, "-l", "1", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| Class | Dice | HD95 (mm) | ASSD (mm) |")
    for name in ("summary.json", "metrics_per_case.csv", "summary.md"):
        assert os.path.isfile(os.path.join(pred_dir, name))


# ----------------------------------------------------------------------------------------------------------------------
# summary formatting and pictures
# ----------------------------------------------------------------------------------------------------------------------
def test_summary_to_markdown_values_and_names():
    summary = {
        "mean": {1: {"Dice": 0.9, "HD95": 2.0, "ASSD": 0.5}, 2: {"Dice": 0.5, "HD95": 10.0, "ASSD": 3.25}},
        "std": {1: {"Dice": 0.05, "HD95": 1.0, "ASSD": 0.25}, 2: {"Dice": 0.1, "HD95": 4.0, "ASSD": 1.0}},
        "foreground_mean": {"Dice": 0.7, "HD95": 6.0, "ASSD": 1.875},
        "foreground_std": {"Dice": 0.2, "HD95": 3.0, "ASSD": 1.5},
    }
    md = summary_to_markdown(summary, label_names={1: "liver", 2: "tumour"})
    lines = md.strip().splitlines()
    assert len(lines) == 2 + 2 + 1
    assert lines[2] == "| 1 (liver) | 0.9000 ± 0.0500 | 2.00 ± 1.00 | 0.50 ± 0.25 |"
    assert lines[3].startswith("| 2 (tumour) | 0.5000 ± 0.1000 |")
    assert lines[4] == "| **Mean** | 0.7000 ± 0.2000 | 6.00 ± 3.00 | 1.88 ± 1.50 |"
    # a loaded summary.json (string keys, null) works too
    loaded = json.loads(json.dumps(to_json_safe(summary)))
    loaded["std"]["2"]["HD95"] = None
    assert "| 2 | 0.5000 ± 0.1000 | 10.00 | 3.25 ± 1.00 |" in summary_to_markdown(loaded)


def test_to_json_safe_nan_and_numpy():
    converted = to_json_safe({1: {"Dice": float("nan"), "TP": np.int64(3), "x": np.float32(0.5),
                                  "flag": np.bool_(True)}})
    assert converted == {"1": {"Dice": None, "TP": 3, "x": 0.5, "flag": True}}
    json.dumps(converted, allow_nan=False)


def test_save_overlay_png(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(size=SHAPE)
    ref = np.zeros(SHAPE, np.uint8)
    ref[2:4, 2:7, 2:8] = 1
    ref[3, 6:9, 7:11] = 2
    pred = np.roll(ref, 1, axis=2)
    out = tmp_path / "pics" / "overlay.png"
    save_overlay_png(image, ref, pred, str(out))
    data = out.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
    save_overlay_png(image, ref, pred, str(out), axis=2, slice_index=0)  # other axis, empty slice
    assert out.stat().st_size > 1000


def test_counts_match_nnunet():
    """TP/FP/FN/TN as nnU-Net's own compute_tp_fp_fn_tn counts them, on random label maps."""
    from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn
    rng = np.random.default_rng(0)
    pred, ref = rng.integers(0, 3, (4, 5, 6)), rng.integers(0, 3, (4, 5, 6))
    ours = compute_case_metrics(pred, ref, [1, 2], (1.0, 1.0, 1.0))
    for label in (1, 2):
        expected = [int(v) for v in compute_tp_fp_fn_tn(ref == label, pred == label)]
        assert [ours[label][k] for k in ("TP", "FP", "FN", "TN")] == expected
