"""DMSPS stage-2 expansion rules (nnunet_scribble.pseudo_labels) on hand-made probabilities.

The end-to-end run through a trained model and nnU-Net's predictor is in test_nnunet_commands.py.
"""
import math

import numpy as np
import pytest

from nnunet_scribble.pseudo_labels import (expand_scribbles, largest_component, normalized_entropy,
                                           report_growth, report_lost_classes, restore_lost_classes)

IGNORE = 3  # classes 0, 1, 2


def one_hot_probs(label: np.ndarray, confident: float = 0.98) -> np.ndarray:
    """(3, *shape) probabilities: `confident` on the labelled class, the rest shared; label -1 = uniform."""
    probs = np.full((3,) + label.shape, (1 - confident) / 2, dtype=np.float64)
    for c in range(3):
        probs[c][label == c] = confident
    probs[:, label == -1] = 1 / 3
    return probs


def test_normalized_entropy_hand_values():
    p = np.array([0.9, 0.1]).reshape(2, 1)
    expected = -(0.9 * math.log(0.9 + 1e-6) + 0.1 * math.log(0.1 + 1e-6)) / math.log(2)
    assert normalized_entropy(p)[0] == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.4690, abs=1e-4)
    uniform = np.full((4, 2), 0.25)
    np.testing.assert_allclose(normalized_entropy(uniform), 1.0, atol=1e-5)
    one_hot = np.array([1.0, 0.0, 0.0]).reshape(3, 1)
    assert abs(normalized_entropy(one_hot)[0]) < 1e-5


def test_largest_component_keeps_biggest_8_connected_blob():
    mask = np.zeros((5, 5), bool)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = True      # diagonal: one blob under 8-connectivity (3 voxels)
    mask[4, 3:5] = True                               # 2 voxels
    keep = largest_component(mask)
    assert keep.sum() == 3 and keep[0, 0] and keep[2, 2] and not keep[4, 4]
    assert not largest_component(np.zeros((3, 3), bool)).any()


def test_expand_scribbles_threshold_and_largest_component_per_slice():
    label = np.zeros((2, 4, 6), int)
    label[0, 0:2, 0:2] = 1          # slice 0: class 1 blob of 4 voxels ...
    label[0, 3, 5] = 1              # ... and an isolated voxel of 1 voxel -> dropped (not the LCC)
    label[1, 3, 5] = 1              # slice 1: the same single voxel is that slice's largest component -> kept
    label[0, 2:4, 0:3] = -1         # uncertain (uniform) region -> ignore
    label[1, 0, 0] = 2              # class 2, confident
    probs = one_hot_probs(label)
    # u of the confident voxels: -(0.98 ln 0.98 + 2 * 0.01 ln 0.01) / ln 3 = 0.102 -> tau 0.2 keeps them
    u = -(0.98 * math.log(0.98 + 1e-6) + 0.02 * math.log(0.01 + 1e-6)) / math.log(3)
    assert u == pytest.approx(0.1022, abs=1e-3)

    out = expand_scribbles(probs, IGNORE, tau=0.2, lcc="slice")
    expected = label.copy()
    expected[label == -1] = IGNORE
    expected[0, 3, 5] = IGNORE
    np.testing.assert_array_equal(out, expected)

    # tau below the confident voxels' entropy: nothing is kept
    assert (expand_scribbles(probs, IGNORE, tau=0.1, lcc="slice") == IGNORE).all()
    # per volume the isolated class-1 voxels of both slices are smaller than the 4-voxel blob -> both dropped
    vol = expand_scribbles(probs, IGNORE, tau=0.2, lcc="volume")
    assert vol[0, 3, 5] == IGNORE and vol[1, 3, 5] == IGNORE
    assert (vol[0, 0:2, 0:2] == 1).all()
    with pytest.raises(ValueError, match="probability channels"):
        expand_scribbles(probs, 4, tau=0.2)
    with pytest.raises(ValueError, match="lcc"):
        expand_scribbles(probs, IGNORE, tau=0.2, lcc="case")


def test_restore_lost_classes_puts_back_only_the_lost_class():
    scribble = np.full((4, 4), IGNORE)
    scribble[0, :] = 0
    scribble[1, 1] = 1
    scribble[3, 2:4] = 2
    expanded = np.full((4, 4), IGNORE)
    expanded[0:2, :] = 0               # confident background, also over the class-1 scribble voxel
    expanded[2, 0] = 1                 # class 1 present elsewhere -> not lost
    expanded[3, 3] = 0                 # confident background over a class-2 scribble; class 2 absent -> lost
    before = expanded.copy()
    assert restore_lost_classes(expanded, scribble, IGNORE) == [2]
    expected = before.copy()
    expected[3, 2:4] = 2
    np.testing.assert_array_equal(expanded, expected)
    assert expanded[1, 1] == 0         # class 1 was not lost: its scribble voxel keeps the expansion's label
    assert restore_lost_classes(expanded, scribble, IGNORE) == []


def test_report_lost_classes_names_class_and_counts(capsys):
    # the denominator is the number of cases that scribble that class, not the number of cases
    report_lost_classes({1: ["case_a", "case_b"]}, {0: 7, 1: 5}, {"background": 0, "RV": 1, "ignore": 2}, 0.1)
    out = capsys.readouterr().out
    assert "class 1 (RV)" in out and "2 of 5 cases" in out and "case_a, case_b" in out and "tau=0.1" in out
    report_lost_classes({}, {0: 7}, {"background": 0}, 0.1)
    assert capsys.readouterr().out == ""


def test_report_growth_hand_computed_and_warns_below_1_2(capsys):
    # summed voxels per class 0..3 of the expansion and of the scribbles: growth = expanded / scribbled
    expanded = np.array([1500, 97, 30, 12])
    scribbled = np.array([10, 100, 6, 0])       # class 3 not scribbled: no growth, no warning
    growth = report_growth(expanded, scribbled, {"background": 0, "RV": 1, "MYO": 2, "LV": 3, "ignore": 4}, 0.1)
    assert growth == {0: 150.0, 1: 0.97, 2: 5.0}
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "expansion per class, x its scribbled voxels: background 150.00, RV 0.97, MYO 5.00"
    assert len(out) == 2 and "class 1 (RV) grew only 0.97x" in out[1] and "--tau (e.g. 0.3)" in out[1]
    # background is never warned about; the suggested tau stays a normalised entropy (<= 1)
    report_growth(np.array([1, 11, 12]), np.array([10, 10, 10]), {"background": 0, "a": 1, "b": 2}, 0.9)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "class 1 (a) grew only 1.10x" in out[1] and "--tau (e.g. 1.0)" in out[1]


def test_stage2_command_starts_from_the_stage1_model_for_dmsps_only():
    """dmsps-expand's suggested training: DMSPS (any budget suffix) -> nnUNetTrainerDMSPS_stage2 with the same suffix
    and the stage-1 checkpoint, as the reference code's retrain scripts load it; other stage-1 trainers (which have
    no warm-start variant) are suggested unchanged, from scratch."""
    from nnunet_scribble.pseudo_labels import stage2_train_command

    folder = "/r/Dataset700_X/nnUNetTrainerDMSPS_cpu3k__nnUNetPlans__2d"
    assert stage2_train_command(702, "2d", "0", "nnUNetTrainerDMSPS_cpu3k", folder) == (
        f"nnUNetv2_train 702 2d 0 -tr nnUNetTrainerDMSPS_stage2_cpu3k -pretrained_weights {folder}/fold_0/"
        "checkpoint_final.pth")
    assert stage2_train_command(702, "2d", "all", "nnUNetTrainerDMSPS", "/m", "checkpoint_best.pth") == (
        "nnUNetv2_train 702 2d all -tr nnUNetTrainerDMSPS_stage2 -pretrained_weights /m/fold_all/checkpoint_best.pth")
    for trainer in ("nnUNetTrainerDMSPS_pLDice_cpu3k", "nnUNetTrainerDMPLS", "nnUNetTrainerDMSPS_avg"):
        assert stage2_train_command(702, "2d", "0", trainer, folder) == f"nnUNetv2_train 702 2d 0 -tr {trainer}"
