"""Tests for nnunet_scribble.scribble_simulation (METHODS.md section 7, section 2 item 6)."""

import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from nnunet_scribble.scribble_simulation import (
    GENERATORS,
    annotated_fraction,
    interior_border_scribbles,
    keep_every_nth_slice,
    shorten_scribbles,
    simulate_scribble_file,
    simulate_scribbles,
    skeleton_scribbles,
)

IGNORE = 4  # classes 0..3
DATA_ROOT = Path(os.environ.get("NNUNET_SCRIBBLE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
BTCV_LABEL = DATA_ROOT / "btcv_abdomen_ct" / "btcv_006.nii.gz"
BTCV_IGNORE = 14  # background + 13 organs


def _synthetic_volume() -> np.ndarray:
    """(12, 96, 96) label map: a large disc (1), an ellipse (2), two small discs (3).

    Slices 0, 1 and 11 are pure background; the objects grow/shrink along z.
    """
    lab = np.zeros((12, 96, 96), dtype=np.uint8)
    yy, xx = np.mgrid[:96, :96]
    for z in range(2, 11):
        grow = min(z - 1, 11 - z)  # 1..4..1
        r1 = 12 + 3 * grow  # up to 24 px -> area > 1000 (erosion and displacement paths)
        lab[z][(yy - 40) ** 2 + (xx - 36) ** 2 <= r1 ** 2] = 1
        lab[z][((yy - 78) / 8.0) ** 2 + ((xx - 50) / (18 + 2 * grow)) ** 2 <= 1] = 2
        lab[z][(yy - 14) ** 2 + (xx - 80) ** 2 <= (4 + grow) ** 2] = 3
        if z % 2 == 0:
            lab[z][(yy - 45) ** 2 + (xx - 84) ** 2 <= 16] = 3  # second component of class 3
    return lab


@pytest.fixture(scope="module")
def synthetic() -> np.ndarray:
    return _synthetic_volume()


@pytest.fixture(scope="module")
def synthetic_scribbles(synthetic):
    """Scribbles for every (method, axis) combination, computed once."""
    return {(m, ax): simulate_scribbles(synthetic, IGNORE, method=m, axis=ax, seed=7)
            for m in GENERATORS for ax in (0, None)}


def _assert_inside_class(scribble: np.ndarray, label: np.ndarray, ignore: int) -> None:
    annotated = scribble != ignore
    assert annotated.any()
    mismatch = np.count_nonzero(scribble[annotated] != label[annotated])
    assert mismatch == 0, f"{mismatch} scribble voxels disagree with the dense label"


def _missing_classes_per_slice(scribble: np.ndarray, label: np.ndarray, axis: int = 0):
    missing = []
    for z in range(label.shape[axis]):
        lab_z, scr_z = np.take(label, z, axis=axis), np.take(scribble, z, axis=axis)
        absent = set(np.unique(lab_z).tolist()) - set(np.unique(scr_z).tolist())
        if absent:
            missing.append((z, sorted(absent)))
    return missing


# --------------------------------------------------------------------------- synthetic
@pytest.mark.parametrize("method", GENERATORS)
@pytest.mark.parametrize("axis", [0, None])
def test_scribbles_lie_inside_their_class(synthetic, synthetic_scribbles, method, axis):
    scribble = synthetic_scribbles[(method, axis)]
    assert scribble.shape == synthetic.shape and scribble.dtype == np.uint8
    assert set(np.unique(scribble).tolist()) <= set(range(IGNORE + 1))
    _assert_inside_class(scribble, synthetic, IGNORE)


@pytest.mark.parametrize("method", GENERATORS)
def test_every_present_class_annotated_in_every_slice(synthetic, synthetic_scribbles, method):
    scribble = synthetic_scribbles[(method, 0)]
    assert _missing_classes_per_slice(scribble, synthetic) == []
    # pure-background slices carry background scribbles
    for z in (0, 1, 11):
        assert np.count_nonzero(scribble[z] == 0) > 0
        assert set(np.unique(scribble[z]).tolist()) == {0, IGNORE}


@pytest.mark.parametrize("method", GENERATORS)
def test_3d_mode_annotates_every_class_of_the_volume(synthetic, synthetic_scribbles, method):
    scribble = synthetic_scribbles[(method, None)]
    for cls in range(IGNORE):
        assert np.count_nonzero(scribble == cls) > 0, f"class {cls} has no 3D scribble"
    # genuinely 3D, not a per-slice generator run again: per-slice mode annotates every class of every slice
    # (test above), whereas one 3D scribble per class of the volume leaves slices where a present class has none
    assert _missing_classes_per_slice(scribble, synthetic) != []
    assert not np.array_equal(scribble, synthetic_scribbles[(method, 0)])


@pytest.mark.parametrize("method", GENERATORS)
@pytest.mark.parametrize("axis", [0, None])
def test_annotated_fraction_in_sane_range(synthetic_scribbles, method, axis):
    fraction = annotated_fraction(synthetic_scribbles[(method, axis)], IGNORE)
    # The 3D Lee thinning keeps a medial *sheet* for plate-like objects: the background of
    # this 12-slice slab thins to its mid-plane (~1/3 of the voxels after dilation). On
    # real volumes the 3D skeleton stays at a few percent (see test_real_btcv_slab).
    upper = 0.40 if (method, axis) == ("skeleton", None) else 0.20
    assert 0.0005 < fraction < upper, fraction
    foreground = synthetic_scribbles[(method, axis)]
    foreground = np.count_nonzero((foreground != IGNORE) & (foreground > 0)) / foreground.size
    assert 0.0001 < foreground < 0.05, foreground


@pytest.mark.parametrize("method", GENERATORS)
def test_other_slicing_axis_and_2d_input(synthetic, method):
    # slicing along axis 2 (sagittal): guarantee holds per slice along that axis
    sub = synthetic[:, :, 30:54]
    scribble = simulate_scribbles(sub, IGNORE, method=method, axis=2, seed=3)
    _assert_inside_class(scribble, sub, IGNORE)
    assert _missing_classes_per_slice(scribble, sub, axis=2) == []
    # 2D input: axis is ignored
    img = synthetic[6]
    s2d = simulate_scribbles(img, IGNORE, method=method, axis=None, seed=3)
    assert s2d.shape == img.shape
    _assert_inside_class(s2d, img, IGNORE)
    assert set(np.unique(s2d).tolist()) == set(np.unique(img).tolist()) | {IGNORE}


@pytest.mark.parametrize("method", GENERATORS)
@pytest.mark.parametrize("axis", [0, None])
def test_deterministic_and_seed_dependent(synthetic, synthetic_scribbles, method, axis):
    original = synthetic.copy()
    again = simulate_scribbles(synthetic, IGNORE, method=method, axis=axis, seed=7)
    np.testing.assert_array_equal(again, synthetic_scribbles[(method, axis)])
    other = simulate_scribbles(synthetic, IGNORE, method=method, axis=axis, seed=8)
    if (method, axis) == ("skeleton", None):
        # the 3D skeleton (skeletonize + component filter + dilation) has no random step
        np.testing.assert_array_equal(other, again)
    else:
        assert not np.array_equal(other, again)
    np.testing.assert_array_equal(synthetic, original)  # input untouched


def test_generator_functions_match_dispatch(synthetic, synthetic_scribbles):
    np.testing.assert_array_equal(skeleton_scribbles(synthetic, IGNORE, axis=0, seed=7),
                                  synthetic_scribbles[("skeleton", 0)])
    np.testing.assert_array_equal(interior_border_scribbles(synthetic, IGNORE, axis=None, seed=7),
                                  synthetic_scribbles[("interior_border", None)])


def test_skeleton_foreground_scribble_is_a_single_thin_path(synthetic_scribbles):
    # foreground skeleton scribbles are one dilated branch-free path: one component per slice
    # for the single-component classes 1 and 2, and far smaller than the object
    scribble = synthetic_scribbles[("skeleton", 0)]
    label = _synthetic_volume()
    for z in range(2, 11):
        for cls in (1, 2):
            mask = scribble[z] == cls
            _, n = ndimage.label(mask, structure=np.ones((3, 3)))
            assert n == 1, (z, cls, n)
            assert mask.sum() < 0.5 * (label[z] == cls).sum()


def test_uint16_output_for_large_ignore_label(synthetic):
    scribble = simulate_scribbles(synthetic[2:5], 300, method="interior_border", seed=0)
    assert scribble.dtype == np.uint16
    assert np.count_nonzero(scribble == 300) > 0.5 * scribble.size
    _assert_inside_class(scribble, synthetic[2:5], 300)


def test_keep_every_nth_slice(synthetic_scribbles):
    scribble = synthetic_scribbles[("interior_border", 0)]
    before = scribble.copy()
    for n, offset in [(3, 0), (3, 2), (5, 1)]:
        thinned = keep_every_nth_slice(scribble, IGNORE, n, axis=0, offset=offset)
        for z in range(scribble.shape[0]):
            if z % n == offset:
                np.testing.assert_array_equal(thinned[z], scribble[z])
            else:
                assert np.all(thinned[z] == IGNORE), z
    # other axis
    thinned = keep_every_nth_slice(scribble, IGNORE, 4, axis=2, offset=1)
    assert np.all(thinned[:, :, 0] == IGNORE)
    np.testing.assert_array_equal(thinned[:, :, 5], scribble[:, :, 5])
    np.testing.assert_array_equal(keep_every_nth_slice(scribble, IGNORE, 1), scribble)
    np.testing.assert_array_equal(scribble, before)
    # dispatch: PS-Seg / DMSPS partial scribbles
    label = _synthetic_volume()
    partial = simulate_scribbles(label, IGNORE, method="skeleton", seed=7, every_nth=10)
    full = skeleton_scribbles(label, IGNORE, seed=7)
    np.testing.assert_array_equal(partial[[0, 10]], full[[0, 10]])
    assert np.all(np.delete(partial, [0, 10], axis=0) == IGNORE)


def test_shorten_straight_bar_exactly_halves():
    scribble = np.full((1, 20, 60), IGNORE, dtype=np.uint8)
    scribble[0, 5:8, 10:50] = 2  # 3 x 40 bar, longer side along x
    scribble[0, 12, 5] = 1  # single pixel: cannot be halved, must survive
    once = shorten_scribbles(scribble, IGNORE, halvings=1)
    assert np.count_nonzero(once == 2) == 60
    assert np.all(once[0, 5:8, 30:50] == 2)  # the second half is kept
    twice = shorten_scribbles(scribble, IGNORE, halvings=2)
    assert np.count_nonzero(twice == 2) == 30
    assert once[0, 12, 5] == 1 and twice[0, 12, 5] == 1
    np.testing.assert_array_equal(shorten_scribbles(scribble, IGNORE, halvings=0), scribble)


@pytest.mark.parametrize("method", GENERATORS)
def test_shorten_generated_scribbles(synthetic_scribbles, method):
    scribble = synthetic_scribbles[(method, 0)]
    before = scribble.copy()
    short = shorten_scribbles(scribble, IGNORE, halvings=1, axis=0)
    np.testing.assert_array_equal(scribble, before)
    annotated = short != IGNORE
    # subset: every kept voxel was annotated with the same class before
    np.testing.assert_array_equal(short[annotated], scribble[annotated])
    checked = 0
    for z in range(scribble.shape[0]):
        for cls in range(IGNORE):
            n_before = np.count_nonzero(scribble[z] == cls)
            n_after = np.count_nonzero(short[z] == cls)
            if n_before:
                assert n_after > 0, (z, cls)  # a class never vanishes from a slice
            if n_before > 10 and cls > 0:
                assert 0.2 * n_before <= n_after <= 0.8 * n_before, (z, cls, n_before, n_after)
                checked += 1
    assert checked >= 10
    quarter = shorten_scribbles(scribble, IGNORE, halvings=2, axis=0)
    assert np.count_nonzero(quarter != IGNORE) < np.count_nonzero(short != IGNORE)


def test_shorten_via_dispatch(synthetic, synthetic_scribbles):
    short = simulate_scribbles(synthetic, IGNORE, method="interior_border", seed=7, halvings=1)
    np.testing.assert_array_equal(short, shorten_scribbles(synthetic_scribbles[("interior_border", 0)], IGNORE))


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "label, ignore, kwargs, match",
    [
        (np.full((4, 8, 8), 4, dtype=np.uint8), 4, {}, "ignore_label"),
        (np.full((4, 8, 8), -1, dtype=np.int16), 4, {}, "negative"),
        (np.zeros((4, 8, 8), dtype=np.float32), 4, {}, "integer dtype"),
        (np.zeros((4, 8, 8), dtype=np.uint8), 4, {"method": "random_walk"}, "unknown scribble method"),
        (np.zeros((4, 8, 8), dtype=np.uint8), 1, {}, "ignore_label must be >= 2"),
        (np.zeros((0, 8, 8), dtype=np.uint8), 4, {}, "empty"),
        (np.zeros((4, 8, 8), dtype=np.uint8), 4, {"every_nth": 0}, "every_nth"),
        (np.zeros((4, 8, 8), dtype=np.uint8), 4, {"halvings": -1}, "halvings"),
        (np.zeros((4, 8, 8), dtype=np.uint8), 4, {"seed": -1}, "seed"),
    ],
)
def test_invalid_input_raises(label, ignore, kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate_scribbles(label, ignore, **kwargs)


def test_invalid_input_raises_in_helpers():
    scribble = np.full((4, 8, 8), 4, dtype=np.uint8)
    with pytest.raises(ValueError, match="every_nth"):
        keep_every_nth_slice(scribble, 4, 0)
    with pytest.raises(ValueError, match="scribble values"):
        shorten_scribbles(np.full((4, 8, 8), 5, dtype=np.uint8), 4)
    with pytest.raises(ValueError, match="integer dtype"):
        skeleton_scribbles(np.zeros((8, 8)), 4)
    with pytest.raises(ValueError, match="axis"):
        interior_border_scribbles(np.zeros((4, 8, 8), dtype=np.uint8), 4, axis=3)


# --------------------------------------------------------------------------- file round trip
def test_simulate_scribble_file_round_trip(tmp_path, synthetic):
    sitk = pytest.importorskip("SimpleITK")
    label = synthetic[:6]
    image = sitk.GetImageFromArray(label)
    image.SetSpacing((0.8, 0.7, 3.0))
    image.SetOrigin((-10.0, 20.5, 3.25))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    dense_file = tmp_path / "case_001.nii.gz"
    sitk.WriteImage(image, str(dense_file))
    out_file = tmp_path / "out" / "case_001.nii.gz"

    fraction = simulate_scribble_file(str(dense_file), str(out_file), IGNORE, method="skeleton", seed=5)

    expected = simulate_scribbles(label, IGNORE, method="skeleton", seed=5)
    written = sitk.ReadImage(str(out_file))
    np.testing.assert_allclose(written.GetSpacing(), image.GetSpacing())
    np.testing.assert_allclose(written.GetOrigin(), image.GetOrigin())
    np.testing.assert_allclose(written.GetDirection(), image.GetDirection())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), expected)
    assert fraction == pytest.approx(annotated_fraction(expected, IGNORE))
    assert sorted(p.name for p in out_file.parent.iterdir()) == ["case_001.nii.gz"]  # no temp file left


def test_axis_means_the_same_in_every_command(tmp_path, synthetic, capsys):
    """``--axis -1`` / ``none`` is 3D in the simulate command and in every converter; 0..2 slice; others refused."""
    import argparse
    from nnunet_scribble.cli import main as cli_main
    from nnunet_scribble.scribble_simulation import axis_argument
    sitk = pytest.importorskip("SimpleITK")
    assert [axis_argument(t) for t in ("0", "2", "-1", "none", "None")] == [0, 2, None, None, None]
    for bad in ("-2", "-3", "3", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match="use 0, 1 or 2"):
            axis_argument(bad)
    label = synthetic[:6]
    dense_file = tmp_path / "dense.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(label), str(dense_file))
    for axis_text, axis in (("-1", None), ("2", 2)):
        out = tmp_path / f"scribble_{axis_text}.nii.gz"
        assert cli_main(["simulate", "-i", str(dense_file), "-o", str(out), "--ignore_label", str(IGNORE),
                         "--method", "skeleton", "--axis", axis_text, "--seed", "3"]) == 0
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))),
                                      simulate_scribbles(label, IGNORE, method="skeleton", axis=axis, seed=3))
    from dataset_conversion import btcv, dense_to_scribble, word
    for module in (btcv, dense_to_scribble, word):   # the converters parse --axis with the same function
        with pytest.raises(SystemExit):
            module.main(["--axis", "-2"])
        assert "use 0, 1 or 2 (slicing axis) or 'none' / -1 (3D)" in capsys.readouterr().err


# --------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def btcv_slab() -> np.ndarray:
    if not BTCV_LABEL.is_file():
        pytest.skip(f"BTCV label volume not found: {BTCV_LABEL}")
    sitk = pytest.importorskip("SimpleITK")
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(BTCV_LABEL)))
    slab = np.ascontiguousarray(label[95:115])  # 20 axial slices with ~10 organs
    assert len(np.unique(slab)) >= 8
    return slab


@pytest.mark.parametrize("method", GENERATORS)
@pytest.mark.parametrize("axis", [0, None])
def test_real_btcv_slab(btcv_slab, method, axis):
    scribble = simulate_scribbles(btcv_slab, BTCV_IGNORE, method=method, axis=axis, seed=0)
    _assert_inside_class(scribble, btcv_slab, BTCV_IGNORE)
    fraction = annotated_fraction(scribble, BTCV_IGNORE)
    assert 0.001 < fraction < 0.10, fraction
    if axis == 0:
        assert _missing_classes_per_slice(scribble, btcv_slab) == []
    else:
        assert set(np.unique(scribble).tolist()) == set(np.unique(btcv_slab).tolist()) | {BTCV_IGNORE}
