"""Smaller networks through nnU-Net's own plans mechanism.

``add_configurations`` adds configurations such as ``2d_tiny`` / ``3d_fullres_cpu`` to a plans file.
Each one ``inherits_from`` the planned configuration (nnU-Net's shallow ``dict.update``), so it shares
its preprocessing (same ``data_identifier``, no re-preprocessing) and patch size and only changes the
feature widths of the planned architecture and the batch size. Train and predict with ``-c 2d_tiny``.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Dict, Sequence

PRESETS: Dict[str, dict] = {
    # tests and the demo: a few seconds per epoch on a laptop CPU
    "tiny": {"first_features": 8, "max_features": 64, "batch_size": 2},
    # CPU benchmark profile (benchmarks/): nnU-Net's topology at a quarter of its width
    "cpu": {"first_features": 8, "max_features": 128, "batch_size": 4},
}


def _shrunk_architecture(architecture: dict, first_features: int, max_features: int) -> dict:
    arch = copy.deepcopy(architecture)
    kwargs = arch["arch_kwargs"]
    n_stages = len(kwargs["features_per_stage"])
    kwargs["features_per_stage"] = [min(first_features * 2 ** i, max_features) for i in range(n_stages)]
    return arch


def plans_file_path(dataset: str | int, plans_identifier: str = "nnUNetPlans") -> str:
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if nnUNet_preprocessed is None:
        raise RuntimeError("nnUNet_preprocessed is not set")
    return os.path.join(nnUNet_preprocessed, maybe_convert_to_dataset_name(dataset), plans_identifier + ".json")


def add_configurations(plans_file: str, preset: str = "tiny",
                       base_configurations: Sequence[str] = ("2d", "3d_fullres", "3d_lowres")) -> list:
    """Add ``<base>_<preset>`` for every base configuration present in the plans; returns the names added."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    if not os.path.isfile(plans_file):
        raise FileNotFoundError(f"{plans_file} not found: run nnUNetv2_plan_and_preprocess first")
    with open(plans_file) as f:
        plans = json.load(f)
    settings = PRESETS[preset]
    added = []
    for base in base_configurations:
        config = plans["configurations"].get(base)
        if config is None:
            continue
        if "architecture" not in config:
            raise ValueError(f"configuration {base!r} in {plans_file} has no 'architecture' entry "
                             f"(it inherits it); pass the configuration that defines it")
        name = f"{base}_{preset}"
        plans["configurations"][name] = {
            "inherits_from": base,
            "architecture": _shrunk_architecture(config["architecture"], settings["first_features"],
                                                 settings["max_features"]),
            "batch_size": min(settings["batch_size"], config["batch_size"]),
        }
        added.append(name)
    tmp = plans_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(plans, f, indent=4)
    os.replace(tmp, plans_file)
    return added
