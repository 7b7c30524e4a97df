"""Smaller networks through nnU-Net's own plans mechanism.

``add_configurations`` adds configurations such as ``2d_tiny`` / ``3d_fullres_cpu`` to a plans file.
Each one ``inherits_from`` the planned configuration (nnU-Net's shallow ``dict.update``), so it shares
its preprocessing (same ``data_identifier``, no re-preprocessing) and patch size and only changes the
feature widths of the planned architecture and the batch size. Train and predict with ``-c 2d_tiny``.

Presets with a ``spacing_factor`` (``cpulowres``) also coarsen the in-plane target spacing by that factor,
shrink the patch (rounded up to a multiple of the network's total stride, as nnU-Net's planner does) and
the median image size to match, and drop the deepest ``stages_dropped`` stages, in the spirit of
nnU-Net's own ``3d_lowres``. Such a configuration gets its own ``data_identifier`` and is preprocessed
once: ``nnUNetv2_preprocess -d ID -c 2d_cpulowres`` (``needs_preprocessing`` says so).
"""
from __future__ import annotations

import copy
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

PRESETS: Dict[str, dict] = {
    # tests and the demo: a few seconds per epoch on a laptop CPU
    "tiny": {"first_features": 8, "max_features": 64, "batch_size": 2},
    "tinylowres": {"first_features": 8, "max_features": 64, "batch_size": 2, "spacing_factor": 2,
                   "stages_dropped": 1},
    # CPU benchmark profile (benchmarks/): nnU-Net's topology at a quarter of its width
    "cpu": {"first_features": 8, "max_features": 128, "batch_size": 4},
    # CPU benchmark profile for large images (BTCV): half the in-plane resolution, one stage fewer
    "cpulowres": {"first_features": 8, "max_features": 128, "batch_size": 4, "spacing_factor": 2,
                  "stages_dropped": 1},
}


def needs_preprocessing(preset: str) -> bool:
    """Whether configurations of ``preset`` have their own spacing (run ``nnUNetv2_preprocess -c ...``)."""
    return PRESETS[preset].get("spacing_factor", 1) != 1


def planning_commands(dataset_id: int | str, configuration: str) -> List[List[str]]:
    """The commands, in order, that make ``configuration`` of dataset ``dataset_id`` trainable.

    A configuration nnU-Net plans itself (``2d``, ``3d_fullres``): ``nnUNetv2_plan_and_preprocess -c`` it.
    ``<base>_<preset>`` (``2d_cpu``, ``3d_fullres_cpulowres``): plan the base, add the preset's configurations
    (``nnunet_scribble add-configs``), and, when the preset has its own spacing, preprocess the added
    configuration; the base is then planned with ``--no_pp``, since only the preset's data is trained on.
    """
    d = str(dataset_id)
    base, _, preset = configuration.rpartition("_")
    if not base or preset not in PRESETS:
        return [["nnUNetv2_plan_and_preprocess", "-d", d, "-c", configuration]]
    own_spacing = needs_preprocessing(preset)
    commands = [["nnUNetv2_plan_and_preprocess", "-d", d, "-c", base] + (["--no_pp"] if own_spacing else []),
                ["nnunet_scribble", "add-configs", "-d", d, "--preset", preset, "-c", base]]
    if own_spacing:
        commands.append(["nnUNetv2_preprocess", "-d", d, "-c", configuration])
    return commands


def _shrunk_architecture(architecture: dict, first_features: int, max_features: int) -> dict:
    arch = copy.deepcopy(architecture)
    kwargs = arch["arch_kwargs"]
    n_stages = len(kwargs["features_per_stage"])
    kwargs["features_per_stage"] = [min(first_features * 2 ** i, max_features) for i in range(n_stages)]
    return arch


def _lowres(config: dict, architecture: dict, factor: int, stages_dropped: int, name: str,
            plans_name: str = "nnUNetPlans") -> dict:
    """Keys that coarsen ``config`` in plane by ``factor`` and drop its deepest ``stages_dropped`` stages."""
    spacing, patch, median = config["spacing"], config["patch_size"], config["median_image_size_in_voxels"]
    in_plane = range(len(spacing) - 2, len(spacing))  # the last two axes (x, y); 3D keeps z
    new_patch = [p // factor if i in in_plane else p for i, p in enumerate(patch)]
    kwargs = architecture["arch_kwargs"]
    n_stages = kwargs["n_stages"] - stages_dropped
    if n_stages < 2:
        raise ValueError(f"configuration {name!r}: dropping {stages_dropped} stage(s) leaves {n_stages}")
    # per-stage encoder lists: PlainConvUNet has n_conv_per_stage, the ResEnc presets n_blocks_per_stage
    for key in ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage", "n_blocks_per_stage"):
        if key in kwargs:
            kwargs[key] = kwargs[key][:n_stages]
    kwargs["n_conv_per_stage_decoder"] = kwargs["n_conv_per_stage_decoder"][:n_stages - 1]
    kwargs["n_stages"] = n_stages
    # like nnU-Net's planner (pad_shape), round the patch up to what the network can divide
    total_stride = [int(s) for s in np.prod(kwargs["strides"], axis=0)]
    new_patch = [int(np.ceil(p / s)) * s for p, s in zip(new_patch, total_stride)]
    return {"data_identifier": f"{plans_name}_{name}",
            "spacing": [s * factor if i in in_plane else s for i, s in enumerate(spacing)],
            "patch_size": new_patch,
            "median_image_size_in_voxels": [m / factor if i in in_plane else m for i, m in enumerate(median)]}


def plans_file_path(dataset: str | int, plans_identifier: str = "nnUNetPlans") -> str:
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if nnUNet_preprocessed is None:
        raise RuntimeError("nnUNet_preprocessed is not set")
    return os.path.join(nnUNet_preprocessed, maybe_convert_to_dataset_name(dataset), plans_identifier + ".json")


DEFAULT_BASE_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")


def add_configurations(plans_file: str, preset: str = "tiny",
                       base_configurations: Optional[Sequence[str]] = None) -> list:
    """Add ``<base>_<preset>`` for base configurations of the plans; returns the names added.

    ``base_configurations=None`` means those of :data:`DEFAULT_BASE_CONFIGURATIONS` that the plans have (nnU-Net
    plans no ``3d_lowres`` for small images, no 3D ones for 2D data); named ones must all exist (ValueError, naming
    those the plans have), so that a mistyped ``-c`` is not a silent no-op.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    if not os.path.isfile(plans_file):
        raise FileNotFoundError(f"{plans_file} not found: run nnUNetv2_plan_and_preprocess first")
    with open(plans_file) as f:
        plans = json.load(f)
    settings = PRESETS[preset]
    available = plans["configurations"]
    if base_configurations is None:
        base_configurations = [b for b in DEFAULT_BASE_CONFIGURATIONS if b in available]
        if not base_configurations:
            raise ValueError(f"{plans_file} has none of the configurations {list(DEFAULT_BASE_CONFIGURATIONS)}; "
                             f"it has {sorted(available)}: pass the base configuration(s) explicitly")
    unknown = [b for b in base_configurations if b not in available]
    if unknown:
        raise ValueError(f"configuration(s) {unknown} not in {plans_file}; it has {sorted(available)}")
    added = []
    for base in base_configurations:
        config = available[base]
        if "architecture" not in config:
            raise ValueError(f"configuration {base!r} in {plans_file} has no 'architecture' entry "
                             f"(it inherits it); pass the configuration that defines it")
        name = f"{base}_{preset}"
        architecture = _shrunk_architecture(config["architecture"], settings["first_features"],
                                            settings["max_features"])
        new = {"inherits_from": base, "architecture": architecture,
               "batch_size": min(settings["batch_size"], config["batch_size"])}
        if needs_preprocessing(preset):
            new.update(_lowres(config, architecture, settings["spacing_factor"], settings.get("stages_dropped", 0),
                               name, plans.get("plans_name", "nnUNetPlans")))
        plans["configurations"][name] = new
        added.append(name)
    tmp = plans_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(plans, f, indent=4)
    os.replace(tmp, plans_file)
    return added
