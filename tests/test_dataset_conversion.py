"""Tests for nnunet_scribble.raw_dataset and the dataset_conversion converters.

Real data (ACDC h5 + scribble NIfTIs, BTCV) is read from ``<repo>/../shared/data`` or ``$NNUNET_SCRIBBLE_DATA``; the
tests that need it are skipped where it is absent. WORD, dense-dataset and error tests use tiny synthetic trees.
"""
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import SimpleITK as sitk

from dataset_conversion.acdc import ACDC_LABELS, convert_acdc_h5, convert_acdc_nifti
from dataset_conversion.btcv import BTCV_LABELS, convert_btcv
from dataset_conversion.dense_to_scribble import convert_dense_dataset
from dataset_conversion.word import body_bounding_box, convert_word, organ_mapping
from nnunet_scribble.raw_dataset import (RawDatasetWriter, array_to_image, patient_grouped_folds,
                                         validate_scribble_labels)

DATA = Path(os.environ.get("NNUNET_SCRIBBLE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
H5_DIR = DATA / "acdc_scribble_h5"
NII_DIR = DATA / "acdc_scribble_nii"
BTCV_DIR = DATA / "btcv_abdomen_ct"


def _require(path: Path) -> None:
    if not path.is_dir():
        pytest.skip(f"data not found: {path}")


def _arr(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _assert_no_leftovers(raw: Path, allowed=()) -> None:
    names = sorted(p.name for p in raw.iterdir()) if raw.exists() else []
    assert [n for n in names if n not in allowed] == [], names


def _verify(folder: Path, capfd) -> None:
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    capfd.readouterr()
    verify_dataset_integrity(str(folder), num_processes=1)
    out = capfd.readouterr()
    text = out.out + out.err
    assert "verify_dataset_integrity Done" in text
    assert "Warning" not in text and "Error" not in text, text


@pytest.fixture(autouse=True)
def _nnunet_env(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "nnUNet_raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "nnUNet_preprocessed"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "nnUNet_results"))


# ----------------------------------------------------------------------------------------------------------------------
# ACDC
# ----------------------------------------------------------------------------------------------------------------------
ACDC_PATIENTS = [21, 41, 42]  # 21 is a test patient (default test set 21-40), 41 and 42 train


@pytest.fixture(scope="module")
def acdc_h5_dataset(tmp_path_factory):
    _require(H5_DIR)
    _require(NII_DIR)
    raw = tmp_path_factory.mktemp("acdc_raw")
    pp = tmp_path_factory.mktemp("acdc_pp")
    old = os.environ.get("nnUNet_preprocessed")
    os.environ["nnUNet_preprocessed"] = str(pp)
    try:
        folder = convert_acdc_h5(H5_DIR, NII_DIR, raw, 501, patients=ACDC_PATIENTS)
    finally:
        if old is None:
            del os.environ["nnUNet_preprocessed"]
        else:
            os.environ["nnUNet_preprocessed"] = old
    return raw, pp, folder


def _acdc_cases(patient: int):
    return sorted(p.name[:-3] for p in H5_DIR.glob(f"patient{patient:03d}_frame*.h5"))


def test_acdc_h5_conversion(acdc_h5_dataset, capfd):
    raw, pp, folder = acdc_h5_dataset
    assert folder == raw / "Dataset501_ACDCScribble"
    _assert_no_leftovers(raw, {"Dataset501_ACDCScribble"})
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "RV": 1, "MYO": 2, "LV": 3, "ignore": 4}
    assert dj["channel_names"] == {"0": "cine-MRI"}
    train = _acdc_cases(41) + _acdc_cases(42)
    test = _acdc_cases(21)
    assert dj["numTraining"] == len(train) == 4
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"{c}_0000.nii.gz" for c in train]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in train]
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == [f"{c}_0000.nii.gz" for c in test]
    assert sorted(p.name for p in (folder / "labelsTs").iterdir()) == [f"{c}.nii.gz" for c in test]
    for c in train + test:
        with h5py.File(H5_DIR / f"{c}.h5", "r") as f:
            image, label, scribble = f["image"][()], f["label"][()], f["scribble"][()]
        ref = sitk.ReadImage(str(NII_DIR / f"{c}_scribble.nii.gz"))
        sub = "Tr" if c in train else "Ts"
        img = sitk.ReadImage(str(folder / f"images{sub}" / f"{c}_0000.nii.gz"))
        assert np.allclose(img.GetSpacing(), ref.GetSpacing(), atol=1e-6)
        assert np.allclose(img.GetOrigin(), ref.GetOrigin()) and np.allclose(img.GetDirection(), ref.GetDirection())
        np.testing.assert_array_equal(sitk.GetArrayFromImage(img), image)
        if c in train:
            scr = sitk.ReadImage(str(folder / "labelsTr" / f"{c}.nii.gz"))
            assert scr.GetPixelID() == sitk.sitkUInt8
            np.testing.assert_array_equal(sitk.GetArrayFromImage(scr), scribble)
            np.testing.assert_array_equal(_arr(folder / "labelsTr_dense" / f"{c}.nii.gz"), label)
        else:
            np.testing.assert_array_equal(_arr(folder / "labelsTs" / f"{c}.nii.gz"), label)
    # splits: grouped by patient, test patient absent
    splits = json.loads((folder / "splits_final.json").read_text())
    assert len(splits) == 2  # only 2 training patients -> 2 folds
    assert sorted(c for f in splits for c in f["val"]) == train
    for f in splits:
        assert {c[:10] for c in f["train"]}.isdisjoint({c[:10] for c in f["val"]})
        assert not set(test) & set(f["train"] + f["val"])
    assert splits[0]["val"] == _acdc_cases(41)  # folds by patient number
    assert json.loads((pp / "Dataset501_ACDCScribble" / "splits_final.json").read_text()) == splits
    _verify(folder, capfd)


def test_acdc_nifti_layout_equals_h5_route(acdc_h5_dataset, tmp_path):
    _, _, h5_folder = acdc_h5_dataset
    acdc = tmp_path / "ACDC" / "database" / "training"
    for p in ACDC_PATIENTS:
        (acdc / f"patient{p:03d}").mkdir(parents=True)
        for c in _acdc_cases(p):
            with h5py.File(H5_DIR / f"{c}.h5", "r") as f:
                image, label = f["image"][()], f["label"][()]
            ref = sitk.ReadImage(str(NII_DIR / f"{c}_scribble.nii.gz"))
            sitk.WriteImage(array_to_image(image, ref), str(acdc / f"patient{p:03d}" / f"{c}.nii.gz"))
            sitk.WriteImage(array_to_image(label, ref), str(acdc / f"patient{p:03d}" / f"{c}_gt.nii.gz"))
    raw = tmp_path / "raw"
    folder = convert_acdc_nifti(tmp_path / "ACDC", NII_DIR, raw, 502, patients=ACDC_PATIENTS)
    assert json.loads((folder / "dataset.json").read_text())["labels"] == ACDC_LABELS
    files = sorted(str(p.relative_to(h5_folder)) for p in h5_folder.rglob("*.nii.gz"))
    assert files == sorted(str(p.relative_to(folder)) for p in folder.rglob("*.nii.gz"))
    assert len(files) == 4 + 4 + 4 + 2 + 2
    for rel in files:
        a, b = sitk.ReadImage(str(h5_folder / rel)), sitk.ReadImage(str(folder / rel))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
        assert a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()
    assert (json.loads((folder / "splits_final.json").read_text())
            == json.loads((h5_folder / "splits_final.json").read_text()))
    # a missing ground truth file -> FileNotFoundError naming the case, nothing left behind
    (acdc / "patient042" / "patient042_frame01_gt.nii.gz").unlink()
    raw2 = tmp_path / "raw2"
    with pytest.raises(FileNotFoundError, match="patient042_frame01"):
        convert_acdc_nifti(tmp_path / "ACDC", NII_DIR, raw2, 503, patients=ACDC_PATIENTS)
    _assert_no_leftovers(raw2)


def test_acdc_h5_scribble_mismatch_is_detected(tmp_path):
    _require(H5_DIR)
    _require(NII_DIR)
    h5, nii = tmp_path / "h5", tmp_path / "nii"
    h5.mkdir()
    nii.mkdir()
    for c in _acdc_cases(41):
        (h5 / f"{c}.h5").symlink_to(H5_DIR / f"{c}.h5")
        (nii / f"{c}_scribble.nii.gz").symlink_to(NII_DIR / f"{c}_scribble.nii.gz")
    bad = _acdc_cases(41)[1]
    (nii / f"{bad}_scribble.nii.gz").unlink()
    ref = sitk.ReadImage(str(NII_DIR / f"{bad}_scribble.nii.gz"))
    flipped = sitk.GetArrayFromImage(ref)[:, ::-1].copy()
    sitk.WriteImage(array_to_image(flipped, ref), str(nii / f"{bad}_scribble.nii.gz"))
    raw = tmp_path / "raw"
    with pytest.raises(ValueError, match=f"{bad}.*flipped along axis 1"):
        convert_acdc_h5(h5, nii, raw, 504, test_patients=())
    _assert_no_leftovers(raw)
    (nii / f"{bad}_scribble.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=bad):
        convert_acdc_h5(h5, nii, raw, 504, test_patients=())
    _assert_no_leftovers(raw)


# ----------------------------------------------------------------------------------------------------------------------
# BTCV
# ----------------------------------------------------------------------------------------------------------------------
BTCV_TRAIN, BTCV_TEST = [14, 16], [28]  # the smallest volumes; 28 is among the last 4 (default test set)


def test_btcv_flat_layout(tmp_path, capfd):
    _require(BTCV_DIR)
    raw = tmp_path / "raw"
    folder = convert_btcv(BTCV_DIR, raw, 510, cases=BTCV_TRAIN + BTCV_TEST, seed=3)
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["labels"] == BTCV_LABELS and dj["labels"]["ignore"] == 14 and dj["labels"]["spleen"] == 1
    assert dj["channel_names"] == {"0": "CT"} and dj["numTraining"] == 2
    for n in BTCV_TRAIN:
        c = f"btcv_{n:03d}"
        dense_src = _arr(BTCV_DIR / f"{c}.nii.gz")
        scr = _arr(folder / "labelsTr" / f"{c}.nii.gz")
        np.testing.assert_array_equal(_arr(folder / "labelsTr_dense" / f"{c}.nii.gz"), dense_src)
        np.testing.assert_array_equal(_arr(folder / "imagesTr" / f"{c}_0000.nii.gz"),
                                      _arr(BTCV_DIR / f"{c}_0000.nii.gz"))
        ann = scr != 14
        assert scr.max() <= 14 and 0 < ann.mean() < 0.1
        np.testing.assert_array_equal(scr[ann], dense_src[ann])  # scribble inside its dense class
        assert set(np.unique(scr[ann])) == set(np.unique(dense_src))  # every present class is scribbled
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == ["btcv_028_0000.nii.gz"]
    np.testing.assert_array_equal(_arr(folder / "labelsTs" / "btcv_028.nii.gz"), _arr(BTCV_DIR / "btcv_028.nii.gz"))
    splits = json.loads((folder / "splits_final.json").read_text())
    assert splits == [{"train": ["btcv_016"], "val": ["btcv_014"]}, {"train": ["btcv_014"], "val": ["btcv_016"]}]
    _verify(folder, capfd)

    # original img/label layout (symlinks), same seed -> identical scribbles (deterministic, layout-independent)
    src = tmp_path / "BTCV" / "RawData" / "Training"
    (src / "img").mkdir(parents=True)
    (src / "label").mkdir()
    for n in (14, 28):
        (src / "img" / f"img{n:04d}.nii.gz").symlink_to(BTCV_DIR / f"btcv_{n:03d}_0000.nii.gz")
        (src / "label" / f"label{n:04d}.nii.gz").symlink_to(BTCV_DIR / f"btcv_{n:03d}.nii.gz")
    folder2 = convert_btcv(tmp_path / "BTCV", raw, 511, test_cases=["btcv_028"], seed=3)
    assert json.loads((folder2 / "dataset.json").read_text())["source_layout"] == "btcv_original"
    np.testing.assert_array_equal(_arr(folder2 / "labelsTr" / "btcv_014.nii.gz"),
                                  _arr(folder / "labelsTr" / "btcv_014.nii.gz"))
    assert (folder2 / "labelsTs" / "btcv_028.nii.gz").is_file()
    _assert_no_leftovers(raw, {folder.name, folder2.name})


def _write_btcv_tree(root: Path, n_cases=3, shape=(6, 20, 24)) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for n in range(1, n_cases + 1):
        img = rng.integers(0, 255, size=shape).astype(np.uint8)
        lab = np.zeros(shape, np.uint8)
        lab[:, 4:12, 4:12] = 6
        lab[:, 12:18, 14:22] = 1
        for arr, name in ((img, f"btcv_{n:03d}_0000.nii.gz"), (lab, f"btcv_{n:03d}.nii.gz")):
            sitk.WriteImage(array_to_image(arr, spacing=(0.8, 0.8, 3.0)), str(root / name))
    return root


# ----------------------------------------------------------------------------------------------------------------------
# error handling: no half-written dataset ever
# ----------------------------------------------------------------------------------------------------------------------
def _assert_btcv_refused(src: Path, raw: Path, error, match: str, dataset_id: int, test_cases=(3,)) -> None:
    """convert_btcv raises ``error`` matching ``match`` and leaves nothing in ``raw``."""
    with pytest.raises(error, match=match):
        convert_btcv(src, raw, dataset_id, test_cases=list(test_cases))
    _assert_no_leftovers(raw)


def test_missing_label_file_leaves_nothing(tmp_path):
    src = _write_btcv_tree(tmp_path / "src")
    (src / "btcv_002.nii.gz").unlink()
    _assert_btcv_refused(src, tmp_path / "raw", FileNotFoundError, "btcv_002", 520)


def test_shape_mismatch_leaves_nothing(tmp_path):
    src = _write_btcv_tree(tmp_path / "src")
    sitk.WriteImage(array_to_image(np.zeros((6, 20, 23), np.uint8), spacing=(0.8, 0.8, 3.0)),
                    str(src / "btcv_002.nii.gz"))
    _assert_btcv_refused(src, tmp_path / "raw", ValueError, "btcv_002.*size", 521)
    # spacing mismatch
    src2 = _write_btcv_tree(tmp_path / "src2")
    sitk.WriteImage(array_to_image(np.zeros((6, 20, 24), np.uint8), spacing=(0.8, 0.8, 2.0)),
                    str(src2 / "btcv_001.nii.gz"))
    _assert_btcv_refused(src2, tmp_path / "raw", ValueError, "btcv_001.*spacing", 521)


@pytest.mark.parametrize("what", ["origin", "direction"])
def test_btcv_label_off_the_image_geometry_leaves_nothing(tmp_path, what):
    # the label array is written on the image's geometry, so a label with another origin or direction would be
    # silently misplaced: it must be refused, like a size or spacing mismatch
    src = _write_btcv_tree(tmp_path / "src")
    lab = sitk.ReadImage(str(src / "btcv_002.nii.gz"))
    if what == "origin":
        lab.SetOrigin((5.0, 0.0, 0.0))
    else:
        lab.SetDirection((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(lab, str(src / "btcv_002.nii.gz"))
    _assert_btcv_refused(src, tmp_path / "raw", ValueError, f"btcv_002: label does not match image: {what}", 523)


def test_btcv_unknown_test_case_is_refused(tmp_path):
    # a mistyped --test-cases (a case the folder does not have) must not silently leave no test set
    src = _write_btcv_tree(tmp_path / "src")
    _assert_btcv_refused(src, tmp_path / "raw", FileNotFoundError, r"btcv_035.*no image", 524, test_cases=(3, 35))


def test_label_value_out_of_range(tmp_path):
    src = _write_btcv_tree(tmp_path / "src")
    lab = _arr(src / "btcv_003.nii.gz")
    lab[0, 0, 0] = 20
    sitk.WriteImage(array_to_image(lab, spacing=(0.8, 0.8, 3.0)), str(src / "btcv_003.nii.gz"))
    _assert_btcv_refused(src, tmp_path / "raw", ValueError, r"btcv_003.*\[20\]", 522)


def test_existing_target_and_overwrite(tmp_path):
    src = _write_btcv_tree(tmp_path / "src")
    raw = tmp_path / "raw"
    folder = convert_btcv(src, raw, 523, test_cases=[3], seed=0, verbose=False)
    before = _arr(folder / "labelsTr" / "btcv_001.nii.gz")
    with pytest.raises(FileExistsError, match="already exists"):
        convert_btcv(src, raw, 523, test_cases=[3], seed=1, verbose=False)
    np.testing.assert_array_equal(_arr(folder / "labelsTr" / "btcv_001.nii.gz"), before)
    with pytest.raises(FileExistsError, match="ambiguous"):  # same id, other name
        convert_btcv(src, raw, 523, dataset_name="Other", test_cases=[3], verbose=False)
    folder2 = convert_btcv(src, raw, 523, test_cases=[3], seed=1, overwrite=True, verbose=False)
    assert folder2 == folder
    assert not np.array_equal(_arr(folder / "labelsTr" / "btcv_001.nii.gz"), before)  # really replaced
    _assert_no_leftovers(raw, {folder.name})


def test_writer_validation(tmp_path):
    raw = tmp_path / "raw"
    labels = {"background": 0, "a": 1, "ignore": 2}
    img = array_to_image(np.zeros((3, 4, 5), np.float32), spacing=(1.0, 1.0, 2.0))
    lab = array_to_image(np.array([[[0, 1, 2, 2, 2]] * 4] * 3, np.uint8), img)
    with pytest.raises(ValueError, match="no annotated voxel"):
        with RawDatasetWriter(raw, 530, "W", labels=labels) as w:
            w.add_training_case("c1", [img], array_to_image(np.full((3, 4, 5), 2, np.uint8), img))
    _assert_no_leftovers(raw)
    with pytest.raises(ValueError, match=r"c1.*dense label.*\[2\]"):
        with RawDatasetWriter(raw, 530, "W", labels=labels) as w:
            w.add_training_case("c1", [img], lab, lab)  # dense must not contain the ignore label
    shifted = array_to_image(np.zeros((3, 4, 5), np.float32), spacing=(1.0, 1.0, 2.0))
    shifted.SetOrigin((0.0, 0.0, 0.5))
    with pytest.raises(ValueError, match="c1.*channel 1.*origin"):
        with RawDatasetWriter(raw, 530, "W", labels=labels) as w:
            w.add_training_case("c1", [img, shifted], lab)
    with pytest.raises(RuntimeError, match="finalize"):
        with RawDatasetWriter(raw, 530, "W") as w:
            w.add_training_case("c1", [img], lab)
    with pytest.raises(ValueError, match="unexpected label values"):  # labels only known at finalize
        with RawDatasetWriter(raw, 530, "W") as w:
            w.add_training_case("c1", [img], array_to_image(np.full((3, 4, 5), 3, np.uint8), img))
            w.finalize({0: "x"}, labels)
    _assert_no_leftovers(raw)
    for bad in ({"background": 0, "a": 1}, {"background": 0, "ignore": 1, "a": 2},
                {"background": 0, "a": 2, "ignore": 3}, {"background": 0, "a": (1, 2), "ignore": 3}):
        with pytest.raises(ValueError):
            validate_scribble_labels(bad)
    with RawDatasetWriter(raw, 530, "W") as w:
        w.add_training_case("c1", [img], lab)
        w.finalize({0: "x"}, labels, description="d")
    dj = json.loads((raw / "Dataset530_W" / "dataset.json").read_text())
    assert dj["numTraining"] == 1 and dj["labels"]["ignore"] == 2 and dj["description"] == "d"
    assert dj["annotated_fraction"] == pytest.approx(2 / 5)
    assert _arr(raw / "Dataset530_W" / "labelsTr" / "c1.nii.gz").dtype == np.uint8


def test_patient_grouped_folds():
    cases = [f"p{p:02d}_f{f}" for p in range(1, 11) for f in (1, 2)]
    folds = patient_grouped_folds(cases, lambda c: c.split("_")[0], n_folds=5)
    assert [f["val"] for f in folds][0] == ["p01_f1", "p01_f2", "p02_f1", "p02_f2"]
    assert folds[4]["val"] == ["p09_f1", "p09_f2", "p10_f1", "p10_f2"]
    shuffled = patient_grouped_folds(cases, lambda c: c.split("_")[0], n_folds=5, by_number=False)
    assert shuffled == patient_grouped_folds(cases, lambda c: c.split("_")[0], n_folds=5, by_number=False)
    for folds_ in (folds, shuffled):
        assert sorted(c for f in folds_ for c in f["val"]) == sorted(cases)
        for f in folds_:
            assert sorted(f["train"] + f["val"]) == sorted(cases)
            assert {c[:3] for c in f["train"]}.isdisjoint({c[:3] for c in f["val"]})
    with pytest.raises(ValueError):
        patient_grouped_folds(cases, lambda c: c.split("_")[0], n_folds=11)


# ----------------------------------------------------------------------------------------------------------------------
# WORD (synthetic tree)
# ----------------------------------------------------------------------------------------------------------------------
WORD_SHAPE = (10, 40, 48)
BODY = (slice(2, 8), slice(8, 30), slice(6, 42))  # body voxels (z, y, x)
WORD_MARGIN = (1, 2, 3)
WORD_SPLITS = {"Tr": ["word_0001", "word_0002"], "Val": ["word_0003"], "Ts": ["word_0004"]}


def _word_volume(seed: int):
    rng = np.random.default_rng(seed)
    img = np.full(WORD_SHAPE, -1000, np.int16)
    img[BODY] = rng.integers(-400, 900, size=img[BODY].shape)  # fat (-400 .. -150), tissue, bone (> 250)
    img[9, 38, 0:20] = 300  # a "table": separate, smaller component above -500 HU
    lab = np.zeros(WORD_SHAPE, np.uint8)
    for k in range(1, 17):  # 16 organs as small boxes inside the body
        z, y, x = 2 + (k % 3) * 2, 8 + (k // 4) * 4, 6 + (k % 4) * 9
        lab[z:z + 2, y:y + 4, x:x + 7] = k
    scr = np.full(WORD_SHAPE, 255, np.uint8)
    scr[lab == 0] = 255
    scr[3, 28, 10:30] = 0  # a background stroke
    for k in range(1, 17):
        zz, yy, xx = np.nonzero(lab == k)
        scr[zz[0], yy[0] + 1, xx[0]:xx[0] + 4] = k
    return img, lab, scr


def _write_word_tree(root: Path) -> Path:
    for i, (split, cases) in enumerate(WORD_SPLITS.items()):
        for j, c in enumerate(cases):
            img, lab, scr = _word_volume(10 * i + j)
            for arr, sub in ((img, f"images{split}"), (lab, f"labels{split}"), (scr, "scribbles")):
                if sub == "scribbles" and split == "Ts":
                    continue
                (root / sub).mkdir(parents=True, exist_ok=True)
                im = array_to_image(arr, spacing=(0.7, 0.7, 2.5))
                im.SetOrigin((-100.0, -50.0, 20.0))
                sitk.WriteImage(im, str(root / sub / f"{c}.nii.gz"))
    return root


def _word_source(root: Path, case: str):
    for split, cases in WORD_SPLITS.items():
        if case in cases:
            return (_arr(root / f"images{split}" / f"{case}.nii.gz"), _arr(root / f"labels{split}" / f"{case}.nii.gz"),
                    _arr(root / "scribbles" / f"{case}.nii.gz") if split != "Ts" else None)


def test_word_dmsps7_simulated_window_and_crop(tmp_path):
    src = _write_word_tree(tmp_path / "WORD")
    raw = tmp_path / "raw"
    folder = convert_word(src, raw, 540, organs="dmsps7", margin=WORD_MARGIN, seed=1)
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "liver": 1, "spleen": 2, "left_kidney": 3, "right_kidney": 4,
                            "stomach": 5, "gallbladder": 6, "pancreas": 7, "ignore": 8}
    assert dj["numTraining"] == 3
    expected_map = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 0, 8: 7, **{v: 0 for v in range(9, 17)}}
    box = tuple(slice(max(0, b.start - m), b.stop + m) for b, m in zip(BODY, WORD_MARGIN))
    for case in WORD_SPLITS["Tr"] + WORD_SPLITS["Val"] + WORD_SPLITS["Ts"]:
        img_src, lab_src, _ = _word_source(src, case)
        sub = "Ts" if case in WORD_SPLITS["Ts"] else "Tr"
        out = sitk.ReadImage(str(folder / f"images{sub}" / f"{case}_0000.nii.gz"))
        img = sitk.GetArrayFromImage(out)
        assert img.shape == tuple(b.stop - b.start for b in box)  # body box +- margin, table ignored
        np.testing.assert_array_equal(img, np.clip(img_src[box], -150, 250))  # HU clipped, not rescaled
        assert img.min() == -150 and img.max() == 250
        # origin moved by the crop offset
        assert np.allclose(out.GetOrigin(), (-100 + 0.7 * box[2].start, -50 + 0.7 * box[1].start,
                                             20 + 2.5 * box[0].start))
        dense = _arr(folder / ("labelsTs" if sub == "Ts" else "labelsTr_dense") / f"{case}.nii.gz")
        lab_crop = lab_src[box]
        for v, target in expected_map.items():
            assert np.all(dense[lab_crop == v] == target), (case, v)
        if sub == "Tr":
            scr = _arr(folder / "labelsTr" / f"{case}.nii.gz")
            ann = scr != 8
            assert ann.any() and scr.max() == 8
            np.testing.assert_array_equal(scr[ann], dense[ann])
    assert json.loads((folder / "splits_final.json").read_text()) == [
        {"train": WORD_SPLITS["Tr"], "val": WORD_SPLITS["Val"]}]

    # the crop never looks at labels: a test label reaching far outside the body does not change the test image
    lab = _arr(src / "labelsTs" / "word_0004.nii.gz")
    lab[0, 0, 0] = 5
    lab[9, 39, 47] = 8
    ref = sitk.ReadImage(str(src / "labelsTs" / "word_0004.nii.gz"))
    sitk.WriteImage(array_to_image(lab, ref), str(src / "labelsTs" / "word_0004.nii.gz"))
    folder2 = convert_word(src, raw, 541, organs="dmsps7", margin=WORD_MARGIN, seed=1, verbose=False)
    a = sitk.ReadImage(str(folder / "imagesTs" / "word_0004_0000.nii.gz"))
    b = sitk.ReadImage(str(folder2 / "imagesTs" / "word_0004_0000.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    assert a.GetOrigin() == b.GetOrigin()
    img_src = _word_source(src, "word_0004")[0]
    assert body_bounding_box(img_src, -500, WORD_MARGIN) == box
    # seeded: same seed -> same scribbles
    np.testing.assert_array_equal(_arr(folder / "labelsTr" / "word_0001.nii.gz"),
                                  _arr(folder2 / "labelsTr" / "word_0001.nii.gz"))


@pytest.mark.parametrize("organs", ["all", "dmsps7"])
def test_word_released_scribbles(tmp_path, organs):
    src = _write_word_tree(tmp_path / "WORD")
    raw = tmp_path / "raw"
    folder = convert_word(src, raw, 542, organs=organs, source="released", window=None, crop=False,
                          verbose=False)
    lut, labels = organ_mapping(organs)
    ignore = labels["ignore"]
    assert json.loads((folder / "dataset.json").read_text())["labels"]["ignore"] == ignore == (
        17 if organs == "all" else 8)
    for case in WORD_SPLITS["Tr"] + WORD_SPLITS["Val"]:
        img_src, lab_src, scr_src = _word_source(src, case)
        np.testing.assert_array_equal(_arr(folder / "imagesTr" / f"{case}_0000.nii.gz"), img_src)  # no window
        scr = _arr(folder / "labelsTr" / f"{case}.nii.gz")
        assert np.all(scr[scr_src == 255] == ignore)
        assert np.all(scr[scr_src == 0] == 0)
        for v in range(1, 17):
            expected = v if organs == "all" else {7: 0, 8: 7}.get(v, v if v <= 6 else 0)
            assert np.all(scr[scr_src == v] == expected), (case, v)
    # every_nth on released scribbles keeps only slices 0, 2, 4, ...
    folder2 = convert_word(src, raw, 543, organs=organs, source="released", crop=False, every_nth=2, verbose=False)
    scr = _arr(folder2 / "labelsTr" / "word_0001.nii.gz")
    assert np.all(scr[1::2] == ignore) and (scr[::2] != ignore).any()
    # a released scribble missing -> FileNotFoundError, nothing left
    (src / "scribbles" / "word_0003.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="word_0003"):
        convert_word(src, raw, 544, organs=organs, source="released", verbose=False)
    _assert_no_leftovers(raw, {folder.name, folder2.name})


def test_word_label_or_scribble_off_the_image_geometry_leaves_nothing(tmp_path):
    src = _write_word_tree(tmp_path / "WORD")
    raw = tmp_path / "raw"
    case = WORD_SPLITS["Tr"][1]
    for sub, what in (("labelsTr", "label"), ("scribbles", "released scribble")):
        path = src / sub / f"{case}.nii.gz"
        good = sitk.ReadImage(str(path))
        flipped = sitk.Image(good)
        flipped.SetDirection((1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
        sitk.WriteImage(flipped, str(path))
        with pytest.raises(ValueError, match=f"{case}: {what} does not match image: direction"):
            convert_word(src, raw, 545, organs="all", source="released", verbose=False)
        _assert_no_leftovers(raw)
        sitk.WriteImage(good, str(path))


# ----------------------------------------------------------------------------------------------------------------------
# dense nnU-Net dataset -> scribble dataset
# ----------------------------------------------------------------------------------------------------------------------
def _write_dense_dataset(root: Path, labels=None) -> Path:
    folder = root / "Dataset900_Toy"
    rng = np.random.default_rng(0)
    cases = {"imagesTr": ["toy_001", "toy_002", "toy_003"], "imagesTs": ["toy_101"]}
    for sub, ids in cases.items():
        (folder / sub).mkdir(parents=True)
        (folder / sub.replace("images", "labels")).mkdir()
        for c in ids:
            lab = np.zeros((5, 16, 18), np.uint8)
            lab[:, 2:8, 3:10] = 1
            lab[:, 9:14, 8:16] = 2
            ref = array_to_image(lab, spacing=(1.0, 1.2, 4.0))
            for ch in range(2):
                sitk.WriteImage(array_to_image(rng.normal(size=lab.shape).astype(np.float32), ref),
                                str(folder / sub / f"{c}_{ch:04d}.nii.gz"))
            sitk.WriteImage(ref, str(folder / sub.replace("images", "labels") / f"{c}.nii.gz"))
    dj = {"channel_names": {"0": "T1", "1": "T2"}, "labels": labels or {"background": 0, "a": 1, "b": 2},
          "numTraining": 3, "file_ending": ".nii.gz", "description": "toy"}
    (folder / "dataset.json").write_text(json.dumps(dj))
    splits = [{"train": ["toy_001", "toy_002"], "val": ["toy_003"]}, {"train": ["toy_003"], "val": ["toy_001"]}]
    (folder / "splits_final.json").write_text(json.dumps(splits))
    return folder


def test_dense_to_scribble(tmp_path, capfd):
    src = _write_dense_dataset(tmp_path / "src")
    raw = tmp_path / "raw"
    folder = convert_dense_dataset(src, raw, 550, method="skeleton", seed=2)
    assert folder.name == "Dataset550_ToyScribble"
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "a": 1, "b": 2, "ignore": 3}
    assert dj["channel_names"] == {"0": "T1", "1": "T2"} and dj["numTraining"] == 3
    for c in ("toy_001", "toy_002", "toy_003"):
        dense = _arr(src / "labelsTr" / f"{c}.nii.gz")
        np.testing.assert_array_equal(_arr(folder / "labelsTr_dense" / f"{c}.nii.gz"), dense)
        scr = _arr(folder / "labelsTr" / f"{c}.nii.gz")
        ann = scr != 3
        assert 0 < ann.mean() < 1 and set(np.unique(scr)) == {0, 1, 2, 3}
        np.testing.assert_array_equal(scr[ann], dense[ann])
        for ch in range(2):
            np.testing.assert_array_equal(_arr(folder / "imagesTr" / f"{c}_{ch:04d}.nii.gz"),
                                          _arr(src / "imagesTr" / f"{c}_{ch:04d}.nii.gz"))
    for ch in range(2):
        np.testing.assert_array_equal(_arr(folder / "imagesTs" / f"toy_101_{ch:04d}.nii.gz"),
                                      _arr(src / "imagesTs" / f"toy_101_{ch:04d}.nii.gz"))
    np.testing.assert_array_equal(_arr(folder / "labelsTs" / "toy_101.nii.gz"), _arr(src / "labelsTs" / "toy_101.nii.gz"))
    assert (json.loads((folder / "splits_final.json").read_text())
            == json.loads((src / "splits_final.json").read_text()))
    _verify(folder, capfd)

    for bad_labels, match in (({"background": 0, "a": 1, "ignore": 2}, "ignore"),
                              ({"background": 0, "a": 1, "both": [1, 2]}, "region")):
        bad = _write_dense_dataset(tmp_path / f"bad_{match}", labels=bad_labels)
        with pytest.raises(ValueError, match=match):
            convert_dense_dataset(bad, raw, 551)
    # a label value not declared in dataset.json
    lab = _arr(src / "labelsTr" / "toy_002.nii.gz")
    lab[0, 0, 0] = 7
    sitk.WriteImage(array_to_image(lab, sitk.ReadImage(str(src / "labelsTr" / "toy_002.nii.gz"))),
                    str(src / "labelsTr" / "toy_002.nii.gz"))
    with pytest.raises(ValueError, match=r"toy_002.*\[7\]"):
        convert_dense_dataset(src, raw, 552)
    _assert_no_leftovers(raw, {folder.name})
