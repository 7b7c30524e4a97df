"""nnU-Net's real command-line entry points with our trainers, on tiny synthetic data, on the CPU.

``NNUNET_SCRIBBLE_TEST_DEVICE=cuda`` runs every training, prediction and ``dmsps-expand`` of this module on the
GPU instead (``-device cuda``: nnU-Net's mixed precision, pinned memory, CUDA inference), as
``benchmarks/gpu_check.sh`` does on a GPU machine (benchmarks/RESULTS.md, "GPU check", says which tests have run
there). CI has no GPU and runs them on the CPU.

One module-scoped nnU-Net tree: ``make_synthetic_dataset`` (5 training, 2 test cases of 16x40x40) ->
``nnUNetv2_plan_and_preprocess`` -> ``nnunet_scribble add-configs --preset tiny``. Every training uses a ``*_tiny``
trainer (2 epochs x 4 iterations) on a ``*_tiny`` configuration and is run at most once per module
(``NnUNet.train`` caches), so tests that need a trained model share it. No mocks: every step is a subprocess of
the installed console scripts, run outside the source tree so that the installed package is what runs.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_scribble.demo import make_synthetic_dataset

BIN = Path(sys.executable).parent
DATASET = 991
STAGE2 = 992
CASE_SHAPE = (16, 40, 40)
LABELS = {0, 1, 2}          # make_synthetic_dataset: background, sphere, shell (+ ignore 3)
IGNORE = 3
LOSS_TERMS = {
    "nnUNetTrainerDMPLS_tiny": {"pce", "pseudo_dice"},
    "nnUNetTrainerDMSPS_tiny": {"pce", "pseudo_ce"},
    "nnUNetTrainerPSSeg_tiny": {"pce", "uspc", "ccac"},
}
TRAINERS_2D = ["nnUNetTrainerScribble_tiny", "nnUNetTrainerScribblePreserveDS_tiny", "nnUNetTrainerScribble_pLDice_tiny", "nnUNetTrainerDMPLS_tiny",
               "nnUNetTrainerDMSPS_tiny", "nnUNetTrainerPSSeg_tiny", "nnUNetTrainer_tiny"]
TIMEOUT = 600
DEVICE = os.environ.get("NNUNET_SCRIBBLE_TEST_DEVICE", "cpu")


def _tail(text: str, n: int = 60) -> str:
    return "\n".join(text.splitlines()[-n:])


def read(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def load_checkpoint(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


class NnUNet:
    """An nnU-Net folder tree plus helpers that run nnU-Net's console scripts in it."""

    def __init__(self, root: Path):
        self.root = root
        self.raw = root / "nnUNet_raw"
        self.preprocessed = root / "nnUNet_preprocessed"
        self.results = root / "nnUNet_results"
        self.env = dict(os.environ, nnUNet_raw=str(self.raw), nnUNet_preprocessed=str(self.preprocessed),
                        nnUNet_results=str(self.results), nnUNet_compile="f", nnUNet_def_n_proc="2",
                        NNUNET_SCRIBBLE_SEED="0")   # seeds our *_tiny trainers (and nnUNetTrainer_tiny)
        self.env.pop("nnUNet_extTrainer", None)
        self._trained = {}

    def run(self, *cmd, ok: bool = True, env_extra=None, results=None) -> str:
        env = dict(self.env, **(env_extra or {}))
        if results is not None:
            env["nnUNet_results"] = str(results)
        cmd = [str(c) for c in cmd]
        proc = subprocess.run(cmd, env=env, cwd=self.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=TIMEOUT)
        if ok and proc.returncode != 0:
            pytest.fail(f"`{' '.join(cmd)}` exited with {proc.returncode}:\n{_tail(proc.stdout)}", pytrace=False)
        if not ok and proc.returncode == 0:
            pytest.fail(f"`{' '.join(cmd)}` was expected to fail but succeeded:\n{_tail(proc.stdout)}", pytrace=False)
        return proc.stdout

    def script(self, name: str) -> str:
        return str(BIN / name)

    def plan(self, *dataset_ids, configs=("2d",), np_=("1",), verify=True) -> str:
        args = [self.script("nnUNetv2_plan_and_preprocess"), "-d", *dataset_ids, "-c", *configs, "-np", *np_,
                "-npfp", "2"]
        if verify:
            args.append("--verify_dataset_integrity")
        # nnUNet_n_proc_DA=0 crashes planning (torch.set_num_threads(0))
        return self.run(*args, env_extra={"nnUNet_n_proc_DA": "1"})

    def add_configs(self, dataset_id, *configs) -> str:
        extra = ["-c", *configs] if configs else []
        return self.run(sys.executable, "-m", "nnunet_scribble", "add-configs", "-d", dataset_id, "--preset", "tiny",
                        *extra)

    def train_command(self, dataset_id, config, trainer, *extra):
        return [self.script("nnUNetv2_train"), dataset_id, config, "0", "-tr", trainer, "-device", DEVICE, *extra]

    def train(self, dataset_id, config, trainer, *extra, ok=True, results=None):
        return self.run(*self.train_command(dataset_id, config, trainer, *extra), ok=ok, results=results,
                        env_extra={"nnUNet_n_proc_DA": "0"})

    def dataset_name(self, dataset_id) -> str:
        (folder,) = self.raw.glob(f"Dataset{int(dataset_id):03d}_*")
        return folder.name

    def model_folder(self, dataset_id, config, trainer, results=None) -> Path:
        return Path(results or self.results) / self.dataset_name(dataset_id) / f"{trainer}__nnUNetPlans__{config}"

    def trained(self, dataset_id, config, trainer, *extra):
        """Train once per module; returns (fold_0 folder, console output)."""
        key = (dataset_id, config, trainer, extra)
        if key not in self._trained:
            out = self.train(dataset_id, config, trainer, *extra)
            self._trained[key] = (self.model_folder(dataset_id, config, trainer) / "fold_0", out)
        return self._trained[key]

    def predict(self, dataset_id, config, trainer, out_dir: Path, results=None) -> str:
        images = self.raw / self.dataset_name(dataset_id) / "imagesTs"
        return self.run(self.script("nnUNetv2_predict"), "-i", images, "-o", out_dir, "-d", dataset_id, "-c", config,
                        "-f", "0", "-tr", trainer, "-device", DEVICE, "-npp", "1", "-nps", "1", "--disable_tta",
                        results=results)


@pytest.fixture(scope="module")
def nn(tmp_path_factory) -> NnUNet:
    n = NnUNet(tmp_path_factory.mktemp("nnunet"))
    # the writer copies splits_final.json to $nnUNet_preprocessed when that is set
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("nnUNet_preprocessed", str(n.preprocessed))
        make_synthetic_dataset(str(n.raw), dataset_id=DATASET, n_train=5, n_test=2, shape=CASE_SHAPE)
    n.plan(DATASET, configs=("2d", "3d_fullres"), np_=("2", "2"))
    out = n.add_configs(DATASET)
    assert "2d_tiny" in out and "3d_fullres_tiny" in out
    return n


def preprocessed_seg_shapes(nn: NnUNet, *data_identifiers: str) -> list:
    """Shape of the first case's preprocessed segmentation in each of the given data identifiers."""
    import blosc2
    pre = nn.preprocessed / nn.dataset_name(DATASET)
    case = sorted(p.name for p in (pre / data_identifiers[0]).glob("*_seg.b2nd"))[0]
    return [blosc2.open(urlpath=str(pre / ident / case), mode="r").shape for ident in data_identifiers]


def check_predictions(nn: NnUNet, pred: Path, dataset_id=DATASET):
    from nnunet_scribble.evaluation import evaluate_folder

    folder = nn.raw / nn.dataset_name(dataset_id)
    images = sorted((folder / "imagesTs").glob("*_0000.nii.gz"))
    assert len(images) == 2
    dice = {1: [], 2: []}
    for image_file in images:
        case = image_file.name[:-len("_0000.nii.gz")]
        image = sitk.ReadImage(str(image_file))
        seg = sitk.ReadImage(str(pred / f"{case}.nii.gz"))
        assert seg.GetSize() == image.GetSize()
        assert np.allclose(seg.GetSpacing(), image.GetSpacing())
        assert np.allclose(seg.GetOrigin(), image.GetOrigin())
        p, r = sitk.GetArrayFromImage(seg), read(folder / "labelsTs" / f"{case}.nii.gz")
        values = set(np.unique(p).tolist())
        assert values <= LABELS, values
        # Dice by hand from the written prediction and the dense test label
        for label in (1, 2):
            assert (r == label).any()
            dice[label].append(2 * np.sum((p == label) & (r == label)) / (np.sum(p == label) + np.sum(r == label)))
    summary = evaluate_folder(str(pred), str(folder / "labelsTs"), labels=[1, 2])
    assert len(summary["metric_per_case"]) == 2
    for label in (1, 2):
        assert summary["mean"][label]["Dice"] == pytest.approx(np.mean(dice[label]))
    return summary


# ------------------------------------------------------------------------------------------------------------------
# train + predict + evaluate, 2d
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("trainer", TRAINERS_2D)
def test_train_predict_evaluate_2d(nn, trainer):
    fold, out = nn.trained(DATASET, "2d_tiny", trainer)
    ckpt_file = fold / "checkpoint_final.pth"
    assert ckpt_file.is_file()
    ckpt = load_checkpoint(ckpt_file)
    assert ckpt["trainer_name"] == trainer
    assert ckpt["current_epoch"] == 2
    # final validation (nnU-Net's, on the scribbles of the validation case) ran to the end
    assert (fold / "validation" / "summary.json").is_file()
    if trainer != "nnUNetTrainer_tiny":
        assert "Scribble check passed: 4 training cases" in out

    if trainer in LOSS_TERMS:
        logs = sorted(fold.glob("training_log_*.txt"))
        assert logs and "loss terms" in logs[-1].read_text()
        assert (fold / "progress_loss_terms.png").stat().st_size > 0
        logging = ckpt["logging"]
        for term in LOSS_TERMS[trainer]:
            values = logging[f"loss_{term}"]
            assert len(values) == 2 == len(logging["train_losses"]), (term, values)
            assert all(np.isfinite(v) for v in values), (term, values)
        assert not set(k for k in logging if k.startswith("loss_")) - {f"loss_{t}" for t in LOSS_TERMS[trainer]}
        assert any(k.startswith("aux_decoders.") for k in ckpt["network_weights"])

    pred = nn.root / f"pred_2d_{trainer}"
    nn.predict(DATASET, "2d_tiny", trainer, pred)
    check_predictions(nn, pred)


DS_TARGETS_SNIPPET = """
import json
import torch
import torch.nn.functional as F
from batchgenerators.utilities.file_and_folder_operations import join, load_json
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from nnunetv2.paths import nnUNet_preprocessed
from nnunet_scribble.trainers import (nnUNetTrainerScribble_tiny, nnUNetTrainerScribblePreserveDS_tiny,
                                      nnUNetTrainerScribble_pLDice_tiny)

base = join(nnUNet_preprocessed, "Dataset991_ScribbleDemo")
result = {}
for cls in (nnUNetTrainerScribble_tiny, nnUNetTrainerScribblePreserveDS_tiny, nnUNetTrainerScribble_pLDice_tiny):
    plans = load_json(join(base, "nnUNetPlans.json"))
    plans["continue_training"] = False
    t = cls(plans=plans, configuration="2d_tiny", fold=0, dataset_json=load_json(join(base, "dataset.json")),
            device=torch.device("cpu"))
    t.initialize()
    tr, val = t.get_dataloaders()   # nnUNet_n_proc_DA=0: SingleThreadedAugmenter around nnU-Net's data loader
    kinds = [[type(x).__name__ for x in g.data_loader.transforms.transforms
              if isinstance(x, DownsampleSegForDSTransform)] for g in (tr, val)]
    ig = t.label_manager.ignore_label
    full, half = next(tr)["target"][:2]
    result[cls.__name__] = {
        "loss": [type(t.loss).__name__, type(getattr(t.loss, "loss", None)).__name__,
                 getattr(getattr(t.loss, "loss", None), "ignore_label", None)],
        "kinds": kinds,
        "annotated": [int((full != ig).sum()), int((half != ig).sum())],
        "half_is_any_annotated": bool(torch.equal(half != ig, F.max_pool2d((full != ig).float(), 2).bool())),
        "half_is_nearest_exact": bool(torch.equal(half, full[..., 1::2, 1::2])),
    }
print("RESULT " + json.dumps(result))
"""


def test_preserve_ds_trainer_targets_in_a_real_batch(nn):
    """The deep-supervision targets of a real training batch (nnU-Net's data loader and transforms)."""
    out = nn.run(sys.executable, "-c", DS_TARGETS_SNIPPET,
                 env_extra={"nnUNet_n_proc_DA": "0", "nnUNet_results": str(nn.root / "results_ds_targets")})
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    plain, ours = result["nnUNetTrainerScribble_tiny"], result["nnUNetTrainerScribblePreserveDS_tiny"]
    assert plain["kinds"] == [["DownsampleSegForDSTransform"]] * 2
    assert ours["kinds"] == [["ScribblePreservingDownsampleSegForDS"]] * 2      # training and validation
    assert plain["half_is_nearest_exact"] and not plain["half_is_any_annotated"]
    assert ours["half_is_any_annotated"]
    assert ours["annotated"][1] > 0 and plain["annotated"][0] > 0
    # losses: our pCE at every scale, or nnU-Net's own ignore-label CE + Dice (the nnU-Net+pL objective)
    assert plain["loss"][:2] == ["DeepSupervisionWrapper", "PartialCELoss"]
    assert result["nnUNetTrainerScribble_pLDice_tiny"]["loss"] == ["DeepSupervisionWrapper", "DC_and_CE_loss", IGNORE]


# ------------------------------------------------------------------------------------------------------------------
# 3d_fullres with -pretrained_weights from a plain nnU-Net checkpoint
# ------------------------------------------------------------------------------------------------------------------
def test_3d_multi_decoder_from_plain_pretrained_weights(nn):
    baseline, _ = nn.trained(DATASET, "3d_fullres_tiny", "nnUNetTrainer_tiny")
    pretrained = baseline / "checkpoint_final.pth"
    assert pretrained.is_file()
    trainer = "nnUNetTrainerDMSPS_avg_tiny"
    fold, out = nn.trained(DATASET, "3d_fullres_tiny", trainer, "-pretrained_weights", str(pretrained))
    assert f"Loaded pretrained weights from {pretrained} into the encoder and all 2 decoders" in out
    ckpt = load_checkpoint(fold / "checkpoint_final.pth")
    assert ckpt["trainer_name"] == trainer
    assert set(LOSS_TERMS["nnUNetTrainerDMSPS_tiny"]) == {k[5:] for k in ckpt["logging"] if k.startswith("loss_")}
    pred = nn.root / "pred_3d_dmsps_avg"
    nn.predict(DATASET, "3d_fullres_tiny", trainer, pred)
    check_predictions(nn, pred)


# ------------------------------------------------------------------------------------------------------------------
# --c and --val
# ------------------------------------------------------------------------------------------------------------------
def test_continue_and_validation_only(nn):
    trainer = "nnUNetTrainerPSSeg_tiny"
    fold, _ = nn.trained(DATASET, "2d_tiny", trainer)
    # work on a copy in another nnUNet_results tree, so the shared trained model stays untouched
    results = nn.root / "results_continue"
    copy_fold = nn.model_folder(DATASET, "2d_tiny", trainer, results=results) / "fold_0"
    shutil.copytree(fold.parent, copy_fold.parent)
    # turn the finished run into one interrupted after epoch 0: checkpoint_latest at epoch 1, no checkpoint_final
    ckpt = load_checkpoint(copy_fold / "checkpoint_final.pth")
    ckpt["current_epoch"] = 1
    ckpt["logging"] = {k: v[:1] for k, v in ckpt["logging"].items()}
    assert len(ckpt["logging"]["loss_uspc"]) == 1
    torch.save(ckpt, copy_fold / "checkpoint_latest.pth")
    (copy_fold / "checkpoint_final.pth").unlink()
    shutil.rmtree(copy_fold / "validation")
    logs_before = set(copy_fold.glob("training_log_*.txt"))

    out = nn.train(DATASET, "2d_tiny", trainer, "--c", results=results)
    assert "Epoch 1" in out and "Epoch 0" not in out        # resumed, not restarted
    assert not (copy_fold / "checkpoint_latest.pth").exists()
    final = load_checkpoint(copy_fold / "checkpoint_final.pth")
    assert final["current_epoch"] == 2 and final["trainer_name"] == trainer
    for key, values in final["logging"].items():       # nnU-Net's keys and our loss terms: one entry per epoch
        assert len(values) == 2, (key, values)
    assert (copy_fold / "validation" / "summary.json").is_file()
    new_logs = set(copy_fold.glob("training_log_*.txt")) - logs_before
    assert new_logs and "loss terms" in max(new_logs).read_text()

    # --val: only the final validation runs again
    shutil.rmtree(copy_fold / "validation")
    out = nn.train(DATASET, "2d_tiny", trainer, "--val", results=results)
    assert "Epoch" not in out
    summary = json.loads((copy_fold / "validation" / "summary.json").read_text())
    assert summary["metric_per_case"] and "foreground_mean" in summary
    assert load_checkpoint(copy_fold / "checkpoint_final.pth")["current_epoch"] == 2


# ------------------------------------------------------------------------------------------------------------------
# DMSPS stage 2
# ------------------------------------------------------------------------------------------------------------------
# tau: an 8-iteration stage-1 model is nowhere confident at the paper's thresholds -- at --tau 0.5 every case
# falls back to its original scribbles ("fewer confident voxels"), which would test nothing of the expansion itself.
# At 0.9 a few percent of the voxels pass the entropy filter.
TAU = "0.9"


def expand(nn: NnUNet, target_id: int, *python_prefix: str, env_extra=None) -> str:
    nn.trained(DATASET, "2d_tiny", "nnUNetTrainerDMSPS_tiny")
    args = ["dmsps-expand", "-d", str(DATASET), "-o", str(target_id), "-c", "2d_tiny", "-f", "0",
            "-tr", "nnUNetTrainerDMSPS_tiny", "--tau", TAU, "-device", DEVICE]
    if python_prefix:
        return nn.run(sys.executable, "-c", "".join(python_prefix) +
                      f"from nnunet_scribble.cli import main; raise SystemExit(main({args!r}))", env_extra=env_extra)
    return nn.run(sys.executable, "-m", "nnunet_scribble", *args, env_extra=env_extra)


@pytest.fixture(scope="module")
def stage2(nn):
    return expand(nn, STAGE2)


@pytest.fixture(scope="module")
def stage2_planned(nn, stage2):
    """The stage-2 dataset, planned and preprocessed (2d) with the tiny configurations; the planner's output."""
    return nn.plan(STAGE2, configs=("2d",)) + nn.add_configs(STAGE2, "2d")


def test_dmsps_stage2_expand_plan_and_train(nn, stage2, stage2_planned):
    out = stage2
    src = nn.raw / nn.dataset_name(DATASET)
    dst = nn.raw / nn.dataset_name(STAGE2)
    cases = sorted(p.name[:-len(".nii.gz")] for p in (src / "labelsTr").glob("*.nii.gz"))
    assert len(cases) == 5
    assert sorted(p.name for p in (dst / "labelsTr").glob("*.nii.gz")) == [c + ".nii.gz" for c in cases]
    dataset_json = json.loads((dst / "dataset.json").read_text())
    assert dataset_json["labels"] == json.loads((src / "dataset.json").read_text())["labels"]
    assert dataset_json["numTraining"] == 5

    agree = annotated = 0
    expanded_cases = []
    grown, scribbled = np.zeros(IGNORE, int), np.zeros(IGNORE, int)
    for c in cases:
        src_image = sitk.ReadImage(str(src / "imagesTr" / f"{c}_0000.nii.gz"))
        dst_image = sitk.ReadImage(str(dst / "imagesTr" / f"{c}_0000.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(dst_image), sitk.GetArrayFromImage(src_image))
        label_img = sitk.ReadImage(str(dst / "labelsTr" / f"{c}.nii.gz"))
        assert np.allclose(label_img.GetSpacing(), src_image.GetSpacing())
        label = sitk.GetArrayFromImage(label_img)
        assert label.shape == CASE_SHAPE
        assert set(np.unique(label).tolist()) <= {0, 1, 2, IGNORE}
        mask = label != IGNORE
        assert mask.sum() >= 1, c
        scribble = read(src / "labelsTr" / f"{c}.nii.gz")
        grown += np.bincount(label.ravel(), minlength=IGNORE + 1)[:IGNORE]
        scribbled += np.bincount(scribble.ravel(), minlength=IGNORE + 1)[:IGNORE]
        # no class the case was scribbled with disappears (restore_lost_classes)
        assert set(np.unique(scribble[scribble != IGNORE]).tolist()) <= set(np.unique(label[mask]).tolist()), c
        dense = read(src / "labelsTr_dense" / f"{c}.nii.gz")
        np.testing.assert_array_equal(read(dst / "labelsTr_dense" / f"{c}.nii.gz"), dense)
        if np.array_equal(label, read(src / "labelsTr" / f"{c}.nii.gz")):
            assert f"WARNING: {c}: fewer confident voxels" in out   # the documented fallback
        else:
            expanded_cases.append(c)
            agree += int((label[mask] == dense[mask]).sum())
            annotated += int(mask.sum())
    assert expanded_cases, "no case was expanded: " + _tail(out, 20)
    # the per-class growth line: the written labels' voxels over the scribbled ones, summed over the cases
    names = {v: k for k, v in dataset_json["labels"].items()}
    growth = ", ".join(f"{names[k]} {grown[k] / scribbled[k]:.2f}" for k in range(IGNORE) if scribbled[k])
    assert f"expansion per class, x its scribbled voxels: {growth}\n" in out, _tail(out, 10)
    # a model trained for 8 iterations is poor; its confident voxels still agree with the truth well above chance
    assert agree / annotated > 0.3, agree / annotated
    for c in ("demo_005", "demo_006"):
        np.testing.assert_array_equal(read(dst / "labelsTs" / f"{c}.nii.gz"), read(src / "labelsTs" / f"{c}.nii.gz"))
    src_splits = json.loads((nn.preprocessed / src.name / "splits_final.json").read_text())
    assert json.loads((dst / "splits_final.json").read_text()) == src_splits
    assert json.loads((nn.preprocessed / dst.name / "splits_final.json").read_text()) == src_splits

    # the suggested next step is the reference code's stage 2: the stage-1 checkpoint as the starting point
    stage1 = nn.trained(DATASET, "2d_tiny", "nnUNetTrainerDMSPS_tiny")[0] / "checkpoint_final.pth"
    assert (f" && nnUNetv2_train {STAGE2} 2d_tiny 0 -tr nnUNetTrainerDMSPS_stage2_tiny -pretrained_weights {stage1}\n"
            in out), _tail(out, 5)

    # stage 2 retrained from scratch = the same trainer on the expanded dataset
    fold, out = nn.trained(STAGE2, "2d_tiny", "nnUNetTrainerDMSPS_tiny")
    assert load_checkpoint(fold / "checkpoint_final.pth")["trainer_name"] == "nnUNetTrainerDMSPS_tiny"
    assert "Using splits from existing split file" in out


def test_dmsps_stage2_finetuned_from_stage1(nn, stage2_planned):
    """PyMIC's stage 2: nnUNetTrainerDMSPS_finetune -pretrained_weights <stage-1 checkpoint> loads the whole stage-1
    network (segmentation layers included) and trains at a 10x lower learning rate."""
    stage1 = nn.trained(DATASET, "2d_tiny", "nnUNetTrainerDMSPS_tiny")[0] / "checkpoint_final.pth"
    trainer = "nnUNetTrainerDMSPS_finetune_tiny"
    fold, out = nn.trained(STAGE2, "2d_tiny", trainer, "-pretrained_weights", str(stage1))
    assert f"Loaded the complete network (segmentation layers included) from {stage1}" in out
    assert "Current learning rate: 0.001" in out and "Current learning rate: 0.01\n" not in out
    ckpt = load_checkpoint(fold / "checkpoint_final.pth")
    assert ckpt["trainer_name"] == trainer and ckpt["init_args"]["plans"]["dataset_name"] == nn.dataset_name(STAGE2)
    # it trained: every weight set came from stage 1, and the run moved them (the LR is small, not zero)
    before = load_checkpoint(stage1)["network_weights"]
    after = ckpt["network_weights"]
    assert set(before) == set(after)
    assert any(not torch.equal(before[k], after[k]) for k in after if ".seg_layers." in k)
    # a checkpoint of another network is refused before training starts
    other = nn.trained(DATASET, "2d_tiny", "nnUNetTrainerPSSeg_tiny")[0] / "checkpoint_final.pth"
    out = nn.train(STAGE2, "2d_tiny", trainer, "-pretrained_weights", other, ok=False, results=nn.root / "refused")
    assert "not a checkpoint of this network" in out and "aux_decoders.1" in out
    assert not list((nn.root / "refused").rglob("checkpoint_*.pth"))
    # ... and so is a fresh start without -pretrained_weights (it would train from scratch at 1/10 of the LR)
    out = nn.train(STAGE2, "2d_tiny", trainer, ok=False, results=nn.root / "refused")
    assert "fine-tunes a stage-1 model: pass -pretrained_weights" in out
    assert not list((nn.root / "refused").rglob("checkpoint_*.pth"))


def test_dmsps_stage2_as_the_reference_code_runs_it(nn, stage2_planned):
    """nnUNetTrainerDMSPS_stage2 (what dmsps-expand suggests): the whole stage-1 network as the starting point, trained
    on the expanded labels at the stage-1 learning rate (nnU-Net's 1e-2), with the DMSPS loss."""
    stage1 = nn.trained(DATASET, "2d_tiny", "nnUNetTrainerDMSPS_tiny")[0] / "checkpoint_final.pth"
    trainer = "nnUNetTrainerDMSPS_stage2_tiny"
    fold, out = nn.trained(STAGE2, "2d_tiny", trainer, "-pretrained_weights", str(stage1))
    assert f"Loaded the complete network (segmentation layers included) from {stage1}" in out
    assert "Current learning rate: 0.01\n" in out and "Current learning rate: 0.001\n" not in out
    logging = load_checkpoint(fold / "checkpoint_final.pth")["logging"]
    assert LOSS_TERMS["nnUNetTrainerDMSPS_tiny"] == {k[5:] for k in logging if k.startswith("loss_")}
    out = nn.train(STAGE2, "2d_tiny", trainer, ok=False, results=nn.root / "refused_stage2")
    assert "fine-tunes a stage-1 model: pass -pretrained_weights" in out
    assert not list((nn.root / "refused_stage2").rglob("checkpoint_*.pth"))


def test_dmsps_expand_with_nnunet_compile(nn, stage2):
    """With nnUNet_compile=t, nnUNetPredictor wraps the network in torch.compile (an OptimizedModule), as nnU-Net's
    own predictor and our trainers/pretrained loader anticipate. dmsps-expand must unwrap it, and must still
    predict with the decoder average. (Compile backend 'eager' keeps this cheap on the CPU; nothing else is patched.)
    """
    compiled_id = 995
    expand(nn, compiled_id, "import functools, torch\n",
           "torch.compile = functools.partial(torch.compile, backend='eager')\n",
           env_extra={"nnUNet_compile": "t"})
    reference = nn.raw / nn.dataset_name(STAGE2)
    compiled = nn.raw / nn.dataset_name(compiled_id)
    for f in sorted((reference / "labelsTr").glob("*.nii.gz")):
        if DEVICE == "cpu":
            np.testing.assert_array_equal(read(compiled / "labelsTr" / f.name), read(f))
        else:   # two GPU runs (cuDNN autotuning, fp16): voxels at the entropy threshold may flip
            assert np.mean(read(compiled / "labelsTr" / f.name) == read(f)) >= 0.999, f.name


# ------------------------------------------------------------------------------------------------------------------
# refusals before the first training step
# ------------------------------------------------------------------------------------------------------------------
def _write_dataset(raw: Path, dataset_id: int, name: str, labels: dict, cases: dict, splits: list, preprocessed: Path):
    """Write a raw dataset by hand (bypassing RawDatasetWriter, which refuses the broken ones)."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    folder = raw / f"Dataset{dataset_id:03d}_{name}"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(dataset_id)
    for case, label in cases.items():
        image = (rng.normal(0, 0.2, label.shape) + 1.0 + (label == 1)).astype(np.float32)  # no zeros: no crop
        sitk.WriteImage(sitk.GetImageFromArray(image), str(folder / "imagesTr" / f"{case}_0000.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(label.astype(np.uint8)), str(folder / "labelsTr" / f"{case}.nii.gz"))
    generate_dataset_json(str(folder), {0: "synthetic"}, labels, len(cases), ".nii.gz")
    (preprocessed / folder.name).mkdir(parents=True)
    (preprocessed / folder.name / "splits_final.json").write_text(json.dumps(splits))


def _square_label(value_inside, value_outside, shape=(2, 24, 24)):
    label = np.full(shape, value_outside, np.uint8)
    label[:, 8:16, 8:16] = value_inside
    return label


def test_training_refuses_non_scribble_datasets(nn):
    dense_id, scribble_id = 993, 994
    # 993: a dense dataset (no ignore label)
    _write_dataset(nn.raw, dense_id, "Dense", {"background": 0, "blob": 1},
                   {"d0": _square_label(1, 0), "d1": _square_label(1, 0)},
                   [{"train": ["d0"], "val": ["d1"]}], nn.preprocessed)
    # 994: scribbles with ignore 2; fold 0 trains on a case without any annotation,
    # fold 1 on a case with a label value above the ignore label, fold 2 on cases where the blob is never scribbled
    good = np.full((2, 24, 24), 2, np.uint8)
    good[:, 12, 4:20] = 1
    good[:, 2, 2:22] = 0
    empty = np.full((2, 24, 24), 2, np.uint8)
    above = good.copy()
    above[:, 20, 4:8] = 3
    background_only = np.where(good == 1, 2, good).astype(np.uint8)
    _write_dataset(nn.raw, scribble_id, "Broken", {"background": 0, "blob": 1, "ignore": 2},
                   {"g0": good, "g1": good, "empty": empty, "above": above, "bg": background_only},
                   [{"train": ["g0", "empty"], "val": ["g1"]}, {"train": ["g0", "above"], "val": ["g1"]},
                    {"train": ["bg"], "val": ["g1"]}],
                   nn.preprocessed)
    # without --verify_dataset_integrity: nnU-Net's verification would already reject the value 3 in 994
    # ("Unexpected labels found"), so our trainer is the safety net for datasets planned without it
    nn.plan(dense_id, scribble_id, configs=("2d",), verify=False)

    def refused(dataset_id, fold, message):
        cmd = nn.train_command(dataset_id, "2d", "nnUNetTrainerScribble_tiny")
        cmd[3] = str(fold)
        out = nn.run(*cmd, ok=False, env_extra={"nnUNet_n_proc_DA": "0"})
        assert message in out, _tail(out)
        assert "Epoch 0" not in out
        folder = nn.model_folder(dataset_id, "2d", "nnUNetTrainerScribble_tiny") / f"fold_{fold}"
        assert not list(folder.glob("checkpoint_*.pth"))

    refused(dense_id, 0, "declares no 'ignore' label")
    refused(scribble_id, 0, "case empty has no annotated voxel")
    refused(scribble_id, 1, "case above: label values [3] are outside 0..2")
    refused(scribble_id, 2, "label value(s) [1] carry no scribble in any of the 1 training cases")


# ------------------------------------------------------------------------------------------------------------------
# trainer discovery
# ------------------------------------------------------------------------------------------------------------------
def test_nnunet_finds_our_trainers(nn):
    code = ("import os, nnunetv2\n"
            "from nnunetv2.utilities.find_class_by_name import recursive_find_python_class\n"
            "c = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], 'training', 'nnUNetTrainer'),"
            " 'nnUNetTrainerPSSeg_tiny', 'nnunetv2.training.nnUNetTrainer')\n"
            "import nnunet_scribble.trainers as t\n"
            "assert c is t.nnUNetTrainerPSSeg_tiny, c\n"
            "print('FOUND', c.__module__, c.__name__)\n")
    out = nn.run(sys.executable, "-c", code)
    assert "FOUND nnunet_scribble.trainers nnUNetTrainerPSSeg_tiny" in out

    out = nn.run(sys.executable, "-m", "nnunet_scribble", "ext-trainer-dir")
    folder = Path(out.strip().splitlines()[-1])
    assert folder.is_dir() and (folder / "nnunet_scribble_trainers.py").is_file()
    assert "from nnunet_scribble.trainers import *" in (folder / "nnunet_scribble_trainers.py").read_text()


# ------------------------------------------------------------------------------------------------------------------
# 3d_lowres: nnU-Net plans it only for large images, so the test adds one to the plans the way the planner writes
# it (a full configuration at twice the spacing with its own data identifier), preprocesses it with
# nnUNetv2_preprocess, shrinks it with add-configs and trains/predicts a multi-decoder trainer on it
# ------------------------------------------------------------------------------------------------------------------
def test_3d_lowres_multi_decoder(nn):
    import copy

    plans_file = nn.preprocessed / nn.dataset_name(DATASET) / "nnUNetPlans.json"
    plans = json.loads(plans_file.read_text())
    full = plans["configurations"]["3d_fullres"]
    low = copy.deepcopy(full)
    low["data_identifier"] = "nnUNetPlans_3d_lowres"
    low["spacing"] = [2 * s for s in full["spacing"]]
    low["median_image_size_in_voxels"] = [max(1, m // 2) for m in full["median_image_size_in_voxels"]]
    plans["configurations"]["3d_lowres"] = low
    plans_file.write_text(json.dumps(plans, indent=4))
    nn.run(nn.script("nnUNetv2_preprocess"), "-d", DATASET, "-c", "3d_lowres", "-np", "2",
           env_extra={"nnUNet_n_proc_DA": "1"})
    assert "3d_lowres_tiny" in nn.add_configs(DATASET, "3d_lowres")
    trainer = "nnUNetTrainerPSSeg_tiny"
    fold, out = nn.trained(DATASET, "3d_lowres_tiny", trainer)
    ckpt = load_checkpoint(fold / "checkpoint_final.pth")
    assert ckpt["init_args"]["configuration"] == "3d_lowres_tiny"
    assert set(LOSS_TERMS[trainer]) == {k[5:] for k in ckpt["logging"] if k.startswith("loss_")}
    # the preprocessed training data really is at the lowres spacing: half the voxels per axis (rounded)
    shape_low, shape_full = preprocessed_seg_shapes(nn, "nnUNetPlans_3d_lowres", full["data_identifier"])
    assert [abs(2 * lo - fu) <= 1 for lo, fu in zip(shape_low[1:], shape_full[1:])] == [True] * 3, (shape_low, shape_full)
    pred = nn.root / "pred_3d_lowres_psseg"
    nn.predict(DATASET, "3d_lowres_tiny", trainer, pred)
    check_predictions(nn, pred)   # back at the original geometry of the test images


# ------------------------------------------------------------------------------------------------------------------
# the cpulowres preset (BTCV benchmark profile): its own spacing, so nnUNetv2_preprocess runs for it; then a
# multi-decoder trainer trains and predicts on it back at the test images' geometry
# ------------------------------------------------------------------------------------------------------------------
def test_cpulowres_preset_preprocess_train_predict(nn):
    out = nn.run(sys.executable, "-m", "nnunet_scribble", "add-configs", "-d", DATASET, "--preset", "cpulowres",
                 "-c", "2d")
    assert "2d_cpulowres" in out and f"nnUNetv2_preprocess -d {DATASET} -c 2d_cpulowres" in out
    plans = json.loads((nn.preprocessed / nn.dataset_name(DATASET) / "nnUNetPlans.json").read_text())
    full, low = plans["configurations"]["2d"], plans["configurations"]["2d_cpulowres"]
    assert low["spacing"] == [2 * s for s in full["spacing"]]
    assert low["patch_size"] == [p // 2 for p in full["patch_size"]]
    nn.run(nn.script("nnUNetv2_preprocess"), "-d", DATASET, "-c", "2d_cpulowres", "-np", "2",
           env_extra={"nnUNet_n_proc_DA": "1"})
    shape_low, shape_full = preprocessed_seg_shapes(nn, "nnUNetPlans_2d_cpulowres", full["data_identifier"])
    assert shape_low[1] == shape_full[1]   # slices are kept
    assert [abs(2 * lo - fu) <= 1 for lo, fu in zip(shape_low[2:], shape_full[2:])] == [True] * 2, (shape_low, shape_full)
    trainer = "nnUNetTrainerDMSPS_pLDice_tiny"
    fold, _ = nn.trained(DATASET, "2d_cpulowres", trainer)
    ckpt = load_checkpoint(fold / "checkpoint_final.pth")
    assert ckpt["init_args"]["configuration"] == "2d_cpulowres"
    stages = {int(k.split(".")[2]) for k in ckpt["network_weights"] if k.startswith("encoder.stages.")}
    assert len(stages) == low["architecture"]["arch_kwargs"]["n_stages"] == \
        full["architecture"]["arch_kwargs"]["n_stages"] - 1
    pred = nn.root / "pred_2d_cpulowres"
    nn.predict(DATASET, "2d_cpulowres", trainer, pred)
    check_predictions(nn, pred)
