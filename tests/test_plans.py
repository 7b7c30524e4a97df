"""``nnunet_scribble.plans``: the configurations ``add-configs`` writes, checked against hand-computed values."""
import copy
import json

import pytest

from nnunet_scribble.plans import PRESETS, add_configurations, needs_preprocessing, planning_commands

ARCH_2D = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
           "arch_kwargs": {"n_stages": 7, "features_per_stage": [32, 64, 128, 256, 512, 512, 512],
                           "kernel_sizes": [[3, 3]] * 7, "strides": [[1, 1]] + [[2, 2]] * 6,
                           "n_conv_per_stage": [2] * 7, "n_conv_per_stage_decoder": [2] * 6},
           "_kw_requires_import": []}
ARCH_3D = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
           "arch_kwargs": {"n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320],
                           "kernel_sizes": [[1, 3, 3]] + [[3, 3, 3]] * 5,
                           "strides": [[1, 1, 1], [1, 2, 2]] + [[2, 2, 2]] * 4,
                           "n_conv_per_stage": [2] * 6, "n_conv_per_stage_decoder": [2] * 5},
           "_kw_requires_import": []}
# the BTCV plans nnU-Net 2.8.1 writes (benchmarks/RESULTS.md), reduced to the keys the presets touch
PLANS = {"plans_name": "nnUNetPlans", "configurations": {
    "2d": {"data_identifier": "nnUNetPlans_2d", "batch_size": 47, "patch_size": [256, 256],
           "median_image_size_in_voxels": [234.0, 256.0], "spacing": [1.35, 1.35], "architecture": ARCH_2D},
    "3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres", "batch_size": 2, "patch_size": [96, 128, 160],
                   "median_image_size_in_voxels": [148.0, 234.0, 256.0], "spacing": [3.0, 1.35, 1.35],
                   "architecture": ARCH_3D}}}


@pytest.fixture
def plans_file(tmp_path):
    path = tmp_path / "nnUNetPlans.json"
    path.write_text(json.dumps(PLANS))
    return path


def test_width_presets_inherit_preprocessing_and_shrink_widths(plans_file):
    assert add_configurations(str(plans_file), "cpu", ["2d"]) == ["2d_cpu"]
    config = json.loads(plans_file.read_text())["configurations"]["2d_cpu"]
    assert set(config) == {"inherits_from", "architecture", "batch_size"}   # same spacing, patch, data
    assert config["inherits_from"] == "2d" and config["batch_size"] == 4
    assert config["architecture"]["arch_kwargs"]["features_per_stage"] == [8, 16, 32, 64, 128, 128, 128]
    assert not needs_preprocessing("cpu") and not needs_preprocessing("tiny")


def test_lowres_preset_2d_hand_values(plans_file):
    assert needs_preprocessing("cpulowres")
    assert add_configurations(str(plans_file), "cpulowres", ["2d", "3d_fullres"]) == \
        ["2d_cpulowres", "3d_fullres_cpulowres"]
    configs = json.loads(plans_file.read_text())["configurations"]
    c2 = configs["2d_cpulowres"]
    assert c2["inherits_from"] == "2d" and c2["data_identifier"] == "nnUNetPlans_2d_cpulowres"
    assert c2["spacing"] == [2.7, 2.7] and c2["patch_size"] == [128, 128]
    assert c2["median_image_size_in_voxels"] == [117.0, 128.0] and c2["batch_size"] == 4
    k = c2["architecture"]["arch_kwargs"]
    assert k["n_stages"] == 6 and k["features_per_stage"] == [8, 16, 32, 64, 128, 128]
    assert k["strides"] == [[1, 1]] + [[2, 2]] * 5 and len(k["kernel_sizes"]) == 6
    assert len(k["n_conv_per_stage"]) == 6 and len(k["n_conv_per_stage_decoder"]) == 5
    # 3D: z keeps its spacing and patch, x/y are coarsened; the planned 3d_fullres itself is untouched
    c3 = configs["3d_fullres_cpulowres"]
    assert c3["spacing"] == [3.0, 2.7, 2.7] and c3["patch_size"] == [96, 64, 80]
    assert c3["median_image_size_in_voxels"] == [148.0, 117.0, 128.0] and c3["batch_size"] == 2
    assert c3["architecture"]["arch_kwargs"]["strides"] == [[1, 1, 1], [1, 2, 2]] + [[2, 2, 2]] * 3
    assert configs["3d_fullres"] == PLANS["configurations"]["3d_fullres"]


def test_lowres_rounds_the_patch_up_to_the_total_stride_and_refuses_too_few_stages(plans_file, monkeypatch):
    plans = copy.deepcopy(PLANS)
    plans["configurations"]["2d"]["patch_size"] = [224, 256]   # 112 is not divisible by 2^5 = 32 -> 128
    plans_file.write_text(json.dumps(plans))
    add_configurations(str(plans_file), "cpulowres", ["2d"])
    assert json.loads(plans_file.read_text())["configurations"]["2d_cpulowres"]["patch_size"] == [128, 128]
    monkeypatch.setitem(PRESETS, "drop_all", dict(PRESETS["cpulowres"], stages_dropped=6))
    plans_file.write_text(json.dumps(PLANS))
    before = plans_file.read_text()
    with pytest.raises(ValueError, match="leaves 1"):
        add_configurations(str(plans_file), "drop_all", ["2d"])
    assert plans_file.read_text() == before   # nothing half-written


def test_unknown_preset_and_missing_plans_are_refused(plans_file, tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        add_configurations(str(plans_file), "huge")
    with pytest.raises(FileNotFoundError, match="nnUNetv2_plan_and_preprocess"):
        add_configurations(str(tmp_path / "missing.json"), "cpu")


def test_default_bases_skip_what_the_plans_lack_but_named_bases_must_exist(plans_file, tmp_path):
    before = plans_file.read_text()
    with pytest.raises(ValueError, match=r"\['2D'\] not in .*'2d', '3d_fullres'"):   # a typo is not a silent no-op
        add_configurations(str(plans_file), "tiny", ["2D"])
    with pytest.raises(ValueError, match=r"\['3d_lowres'\] not in"):   # named explicitly: must exist
        add_configurations(str(plans_file), "tiny", ["2d", "3d_lowres"])
    assert plans_file.read_text() == before
    # the default: the plans have no 3d_lowres (as nnU-Net plans for small images), so two are added
    assert add_configurations(str(plans_file), "tiny") == ["2d_tiny", "3d_fullres_tiny"]
    assert set(json.loads(plans_file.read_text())["configurations"]) == {"2d", "3d_fullres", "2d_tiny",
                                                                         "3d_fullres_tiny"}
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"plans_name": "x", "configurations": {"2d_custom": PLANS["configurations"]["2d"]}}))
    with pytest.raises(ValueError, match=r"none of the configurations.*'2d_custom'.*explicitly"):
        add_configurations(str(other), "tiny")
    assert add_configurations(str(other), "tiny", ["2d_custom"]) == ["2d_custom_tiny"]


def test_lowres_preset_on_resenc_plans(tmp_path):
    """ResEnc plans (nnUNetResEncUNetMPlans) list encoder blocks as n_blocks_per_stage; their lowres
    configuration is preprocessed into a folder named after that plans file."""
    resenc = copy.deepcopy(ARCH_2D)
    resenc["network_class_name"] = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    kwargs = resenc["arch_kwargs"]
    kwargs["n_blocks_per_stage"] = [1, 3, 4, 6, 6, 6, 6]
    del kwargs["n_conv_per_stage"]
    plans = {"plans_name": "nnUNetResEncUNetMPlans",
             "configurations": {"2d": dict(copy.deepcopy(PLANS["configurations"]["2d"]), architecture=resenc,
                                           data_identifier="nnUNetResEncUNetMPlans_2d")}}
    path = tmp_path / "nnUNetResEncUNetMPlans.json"
    path.write_text(json.dumps(plans))
    assert add_configurations(str(path), "cpulowres", ["2d"]) == ["2d_cpulowres"]
    config = json.loads(path.read_text())["configurations"]["2d_cpulowres"]
    assert config["data_identifier"] == "nnUNetResEncUNetMPlans_2d_cpulowres"
    k = config["architecture"]["arch_kwargs"]
    assert k["n_stages"] == 6 and k["n_blocks_per_stage"] == [1, 3, 4, 6, 6, 6] and "n_conv_per_stage" not in k
    assert k["n_conv_per_stage_decoder"] == [2] * 5 and config["patch_size"] == [128, 128]


def test_planning_commands():
    # nnU-Net's own configurations: plan and preprocess them
    assert planning_commands(7, "2d") == [["nnUNetv2_plan_and_preprocess", "-d", "7", "-c", "2d"]]
    assert planning_commands(7, "3d_fullres") == [["nnUNetv2_plan_and_preprocess", "-d", "7", "-c", "3d_fullres"]]
    # a preset sharing the base's data: preprocess the base, add the configuration
    assert planning_commands("7", "3d_lowres_cpu") == [
        ["nnUNetv2_plan_and_preprocess", "-d", "7", "-c", "3d_lowres"],
        ["nnunet_scribble", "add-configs", "-d", "7", "--preset", "cpu", "-c", "3d_lowres"]]
    # a preset with its own spacing: plan the base only, add, preprocess the added configuration
    assert planning_commands(710, "3d_fullres_cpulowres") == [
        ["nnUNetv2_plan_and_preprocess", "-d", "710", "-c", "3d_fullres", "--no_pp"],
        ["nnunet_scribble", "add-configs", "-d", "710", "--preset", "cpulowres", "-c", "3d_fullres"],
        ["nnUNetv2_preprocess", "-d", "710", "-c", "3d_fullres_cpulowres"]]
