"""LCC post-processing through nnU-Net's own functions: hand-built volumes, outputs loaded back."""
import json
import pickle

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_scribble.cli import main as cli_main
from nnunet_scribble.postprocessing import apply_lcc_to_folder, foreground_labels, lcc_postprocessing

DATASET = {"labels": {"background": 0, "a": 1, "b": 2, "ignore": 3}, "file_ending": ".nii.gz",
           "channel_names": {"0": "x"}, "numTraining": 1}
PLANS = {"dataset_name": "Dataset999_X", "plans_name": "nnUNetPlans", "image_reader_writer": "SimpleITKIO",
         "configurations": {}, "original_median_spacing_after_transp": [1, 1, 1],
         "original_median_shape_after_transp": [1, 1, 1], "transpose_forward": [0, 1, 2],
         "transpose_backward": [0, 1, 2], "experiment_planner_used": "x", "label_manager": "LabelManager",
         "foreground_intensity_properties_per_channel": {}}


def _volume():
    seg = np.zeros((6, 10, 10), np.uint8)
    seg[1:4, 1:4, 1:4] = 1          # class 1: 27 voxels (kept)
    seg[5, 8, 8] = 1                # class 1: stray voxel (removed)
    seg[0:2, 6:9, 0:2] = 2          # class 2: 12 voxels (kept)
    seg[4:6, 0:2, 7:9] = 2          # class 2: 8 voxels, not touching (removed)
    expected = seg.copy()
    expected[5, 8, 8] = 0
    expected[4:6, 0:2, 7:9] = 0
    return seg, expected


@pytest.fixture()
def pred_folder(tmp_path):
    folder = tmp_path / "pred"
    folder.mkdir()
    seg, expected = _volume()
    img = sitk.GetImageFromArray(seg)
    img.SetSpacing((0.7, 0.8, 5.0))
    img.SetOrigin((1.0, 2.0, 3.0))
    sitk.WriteImage(img, str(folder / "case_001.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros_like(seg)), str(folder / "case_002.nii.gz"))
    (folder / "dataset.json").write_text(json.dumps(DATASET))
    (folder / "plans.json").write_text(json.dumps(PLANS))
    return folder, expected


def test_foreground_labels_and_pp_functions():
    assert foreground_labels(DATASET) == [1, 2]
    fns, kwargs = lcc_postprocessing([1, 2])
    assert len(fns) == 2 and kwargs == [{"labels_or_regions": 1}, {"labels_or_regions": 2}]
    with pytest.raises(ValueError, match="no foreground"):
        lcc_postprocessing([])
    with pytest.raises(ValueError, match="region"):
        foreground_labels({"labels": {"background": 0, "r": [1, 2]}})


def test_apply_lcc_to_folder_keeps_largest_component_and_geometry(pred_folder, tmp_path):
    folder, expected = pred_folder
    out = tmp_path / "pred_lcc"
    assert apply_lcc_to_folder(folder, out, num_processes=1) == ["case_001.nii.gz", "case_002.nii.gz"]
    img = sitk.ReadImage(str(out / "case_001.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), expected)
    assert img.GetSpacing() == pytest.approx((0.7, 0.8, 5.0)) and img.GetOrigin() == pytest.approx((1.0, 2.0, 3.0))
    assert not sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case_002.nii.gz"))).any()
    fns, kwargs = pickle.loads((out / "postprocessing.pkl").read_bytes())  # nnUNetv2_apply_postprocessing format
    assert kwargs == [{"labels_or_regions": 1}, {"labels_or_regions": 2}]
    seg, _ = _volume()
    for fn, kw in zip(fns, kwargs):
        seg = fn(seg, **kw)
    np.testing.assert_array_equal(seg, expected)
    # the input is untouched, and the output folder is never overwritten
    assert (sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "case_001.nii.gz"))) == 1).sum() == 28
    with pytest.raises(FileExistsError):
        apply_lcc_to_folder(folder, out, num_processes=1)


def test_apply_lcc_errors_leave_nothing_behind(pred_folder, tmp_path):
    folder, _ = pred_folder
    (folder / "plans.json").unlink()
    with pytest.raises(FileNotFoundError, match="plans.json"):
        apply_lcc_to_folder(folder, tmp_path / "o1", num_processes=1)
    (folder / "plans.json").write_text(json.dumps(PLANS))
    (folder / "case_002.nii.gz").write_bytes(b"not a nifti")  # unreadable prediction
    with pytest.raises(Exception):
        apply_lcc_to_folder(folder, tmp_path / "o2", num_processes=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred"]


def test_cli_lcc(pred_folder, tmp_path, capsys):
    folder, expected = pred_folder
    assert cli_main(["lcc", "-i", str(folder), "-o", str(tmp_path / "cli_out"), "-np", "1"]) == 0
    assert "2 predictions" in capsys.readouterr().out
    out = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cli_out" / "case_001.nii.gz")))
    np.testing.assert_array_equal(out, expected)
