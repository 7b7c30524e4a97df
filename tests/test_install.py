"""The installed distribution: trainer re-export inside nnU-Net, entry points, no CUDA packages."""
import importlib.metadata as md
import subprocess
import sys
from pathlib import Path

import nnunetv2

import nnunet_scribble.trainers as trainers


def installed_distribution() -> md.Distribution:
    """The installed dist-info next to nnunetv2 (not a build's egg-info in the source tree on sys.path)."""
    site = Path(nnunetv2.__path__[0]).parent
    found = sorted(site.glob("nnunet_scribble-*.dist-info"))
    assert found, f"nnunet_scribble is not installed in {site}"
    return md.PathDistribution(found[-1])


def test_only_the_reexport_file_is_installed_into_nnunet():
    files = [str(f) for f in installed_distribution().files or []]
    inside_nnunet = sorted(f for f in files if f.startswith("nnunetv2/") and "__pycache__" not in f)
    # uninstalling removes exactly what RECORD lists: nothing of nnU-Net's own files may be in it
    assert inside_nnunet == ["nnunetv2/training/nnUNetTrainer/nnunet_scribble_trainers.py"]
    shim = Path(nnunetv2.__path__[0]) / "training" / "nnUNetTrainer" / "nnunet_scribble_trainers.py"
    assert "from nnunet_scribble.trainers import *" in shim.read_text()
    assert not (Path(nnunetv2.__path__[0]) / "training" / "nnUNetTrainer" / "__init__.py").read_text().count(
        "nnunet_scribble")


def test_nnunet_lookup_finds_our_classes_without_timm():
    code = ("import os, sys, nnunetv2\n"
            "from nnunetv2.utilities.find_class_by_name import recursive_find_python_class\n"
            "c = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], 'training', 'nnUNetTrainer'),"
            " 'nnUNetTrainerDMSPS_tiny', 'nnunetv2.training.nnUNetTrainer')\n"
            "import nnunet_scribble.trainers as t\n"
            "assert c is t.nnUNetTrainerDMSPS_tiny, c\n"
            "print('timm' in sys.modules, 'torchvision' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_console_scripts_are_installed():
    names = {ep.name for ep in installed_distribution().entry_points if ep.group == "console_scripts"}
    assert {"nnunet_scribble", "nnunet_scribble_demo", "nnunet_scribble_evaluate", "nnunet_scribble_convert_acdc",
            "nnunet_scribble_convert_btcv", "nnunet_scribble_convert_word", "nnunet_scribble_convert_dense"} <= names


def test_torch_is_the_pinned_build_and_no_cuda_packages_on_cpu():
    import torch
    if torch.cuda.is_available():  # GPU machines install CUDA torch on purpose
        return
    installed = {d.metadata["Name"].lower() for d in md.distributions()}
    assert not any(n.startswith("nvidia-") for n in installed), sorted(n for n in installed if "nvidia" in n)
    assert md.version("torch").startswith("2.13.0")


def test_budget_variants_exist_for_every_trainer():
    for base in trainers.BASE_TRAINERS:
        for budget, values in trainers.BUDGETS.items():
            cls = getattr(trainers, f"{base.__name__}_{budget}")
            assert issubclass(cls, base) and cls.BUDGET == values


def test_budget_variants_set_run_length_and_checkpoint_interval(tmp_path, monkeypatch):
    # nnU-Net writes checkpoint_latest every 50 epochs; the budget variants every tenth of their run (at least
    # every epoch), so that a stopped run resumes (--c) or predicts (-chk checkpoint_latest.pth) from near its end
    import torch
    from test_networks import small_plans
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    dataset_json = {"labels": {"background": 0, "a": 1, "b": 2, "ignore": 3}, "channel_names": {"0": "x"},
                    "numTraining": 2, "file_ending": ".nii.gz"}
    expected = {"tiny": 1, "demo": 1, "cpu": 4, "cpulong": 10, "cpu3k": 12, "gpu": 25, "gpu1k": 1}
    assert set(expected) == set(trainers.BUDGETS)
    for budget, every in expected.items():
        for name in (f"nnUNetTrainer_{budget}", f"nnUNetTrainerDMSPS_pLDice_{budget}"):
            plans = small_plans()
            plans["continue_training"] = False   # nnU-Net 2.8.1 pops this key in __init__
            t = getattr(trainers, name)(plans, "2d_tiny", 0, dataset_json, torch.device("cpu"))
            assert (t.num_epochs, t.num_iterations_per_epoch, t.num_val_iterations_per_epoch) == trainers.BUDGETS[budget]
            assert t.save_every == every, (name, t.save_every)
