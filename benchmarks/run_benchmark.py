"""Scribble benchmark: convert -> plan/preprocess -> train every arm -> predict test cases -> evaluate -> tables.

    python benchmarks/run_benchmark.py --dataset acdc --data ../shared/data --work benchmarks/runs/acdc_cpu \\
        --profile cpu --test-cases 21-40 [--arms pL dense pCE DMPLS ...] [--seeds 0 1 --seed-arms pL DMSPS]

Every arm trains on the same scribbles, fold, plans configuration and budget (profile):

* ``cpu``: nnU-Net's planned topology shrunk through its own plans mechanism (``<config>_cpu`` from
  ``nnunet_scribble.plans.PRESETS``) and the trainers' ``_cpu`` budget (``trainers.BUDGETS``);
* ``gpu``: nnU-Net's default plans and the ``_gpu`` budget;
* ``cpulowres``: for large images (BTCV): the ``cpu`` widths at half the in-plane resolution with one stage
  fewer (``<config>_cpulowres``, preprocessed once with ``nnUNetv2_preprocess``) and the longer ``_cpulong``
  budget; ``cpulowres1k``: the same plans with the ``cpu`` budget (1000 iterations; BTCV ``--config 3d_fullres``);
* ``cpu3k``: the ``cpu`` plans with the ``_cpu3k`` budget (3000 iterations; ACDC budget study);
* ``gpu1k``: nnU-Net's default plans with the ``_gpu1k`` budget (1000 iterations; what one 15-minute GPU lease
  holds: ``benchmarks/gpu_acdc.sh`` runs it there, arms side by side on the one GPU);
* ``tiny``, ``tinylowres``: plumbing tests only (``tests/test_benchmark.py``).

Arms: ``dense`` (nnU-Net default trainer on the dense twin dataset: the ceiling), ``pL`` (nnU-Net default
trainer on the scribbles, i.e. its ignore-label pCE + Dice: the bar), ``pCE``, ``pCE_keepDS``, ``DMPLS``,
``DMSPS``, ``DMSPS_stage2`` (DMSPS retrained on the dataset expanded by the DMSPS model; ``DMSPS_stage2_pLDice``:
retrained there with ``nnUNetTrainerDMSPS_pLDice``; ``DMSPS_stage2_ft``: fine-tuned there from the DMSPS model
with ``nnUNetTrainerDMSPS_finetune`` at 1/10 of the learning rate; ``DMSPS_stage2_warm``: started there from the
DMSPS model at its own learning rate, ``nnUNetTrainerDMSPS_stage2``, as the DMSPS reference code does), ``PSSeg``,
and the ``*_avg`` arms, which reuse the trained weights of their parent arm with decoder-averaged inference.
``--stage2-tau`` sets the entropy threshold of the stage-2 expansion (one value per work folder). Each seed's
DMSPS model expands its own stage-2 dataset (id + 2 for seed 0, id + 2 + 10 x seed for the others).
The run resumes: finished trainings, predictions and evaluations are kept; an interrupted training
continues from its latest checkpoint (``--c``). Results go to ``<work>/results/`` (results.json, results.md,
PNG figures); ``benchmarks/RESULTS.md`` is written by hand from them.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROFILES = {
    "cpu": {"budget": "cpu", "preset": "cpu"},
    "gpu": {"budget": "gpu", "preset": None},
    # nnU-Net's default plans, 1000 iterations: what fits one 15-minute GPU lease (benchmarks/gpu_acdc.sh)
    "gpu1k": {"budget": "gpu1k", "preset": None},
    "tiny": {"budget": "tiny", "preset": "tiny"},
    "tinylowres": {"budget": "tiny", "preset": "tinylowres"},
    "cpulowres": {"budget": "cpulong", "preset": "cpulowres"},
    # the same plans with the 1000-iteration budget: BTCV 3d_fullres on CPU
    "cpulowres1k": {"budget": "cpu", "preset": "cpulowres"},
    # the cpu plans with a 3x longer budget (3000 iterations): does the ranking hold with more training?
    "cpu3k": {"budget": "cpu3k", "preset": "cpu"},
}

# arm -> trainer base name, dataset kind ("scribble" | "dense" | "stage2"), parent arm for *_avg arms
ARMS = {
    "dense": ("nnUNetTrainer", "dense", None),
    "pL": ("nnUNetTrainer", "scribble", None),
    "pCE": ("nnUNetTrainerScribble", "scribble", None),
    "pCE_keepDS": ("nnUNetTrainerScribblePreserveDS", "scribble", None),
    "pLDice": ("nnUNetTrainerScribble_pLDice", "scribble", None),
    "DMPLS": ("nnUNetTrainerDMPLS", "scribble", None),
    "DMPLS_avg": ("nnUNetTrainerDMPLS_avg", "scribble", "DMPLS"),
    "DMSPS": ("nnUNetTrainerDMSPS", "scribble", None),
    "DMSPS_avg": ("nnUNetTrainerDMSPS_avg", "scribble", "DMSPS"),
    "DMSPS_paperCE": ("nnUNetTrainerDMSPS_paperCE", "scribble", None),
    "DMSPS_stage2": ("nnUNetTrainerDMSPS", "stage2", None),
    # stage 2 on the same expanded dataset, retrained with nnU-Net's CE + Dice as the supervised term
    "DMSPS_stage2_pLDice": ("nnUNetTrainerDMSPS_pLDice", "stage2", None),
    # stage 2 fine-tuned from the stage-1 DMSPS model (PyMIC's variant; FINETUNE_FROM)
    "DMSPS_stage2_ft": ("nnUNetTrainerDMSPS_finetune", "stage2", None),
    # stage 2 as the DMSPS reference code runs it: from the stage-1 model at the stage-1 learning rate
    "DMSPS_stage2_warm": ("nnUNetTrainerDMSPS_stage2", "stage2", None),
    "PSSeg": ("nnUNetTrainerPSSeg", "scribble", None),
    "PSSeg_avg": ("nnUNetTrainerPSSeg_avg", "scribble", "PSSeg"),
    "DMPLS_pLDice": ("nnUNetTrainerDMPLS_pLDice", "scribble", None),
    "DMSPS_pLDice": ("nnUNetTrainerDMSPS_pLDice", "scribble", None),
    "PSSeg_pLDice": ("nnUNetTrainerPSSeg_pLDice", "scribble", None),
    "DMPLS_ramp": ("nnUNetTrainerDMPLS_ramp", "scribble", None),
    "DMSPS_ramp": ("nnUNetTrainerDMSPS_ramp", "scribble", None),
    "DMPLS_pLDice_ramp": ("nnUNetTrainerDMPLS_pLDice_ramp", "scribble", None),
    "DMSPS_pLDice_ramp": ("nnUNetTrainerDMSPS_pLDice_ramp", "scribble", None),
    "DMPLS_pw2": ("nnUNetTrainerDMPLS_pw2", "scribble", None),
    "DMPLS_pw5": ("nnUNetTrainerDMPLS_pw5", "scribble", None),
    # the decoders' partial CEs summed instead of averaged (a study of the methods' 1/K supervision)
    "DMPLS_sumSup": ("nnUNetTrainerDMPLS_sumSup", "scribble", None),
    "PSSeg_sumSup": ("nnUNetTrainerPSSeg_sumSup", "scribble", None),
}
# arm -> the arm (same seed) whose final checkpoint it trains from (nnUNetv2_train -pretrained_weights)
FINETUNE_FROM = {"DMSPS_stage2_ft": "DMSPS", "DMSPS_stage2_warm": "DMSPS"}
DEFAULT_ARMS = ["pL", "dense", "pCE", "pLDice", "DMPLS", "DMSPS", "PSSeg", "DMSPS_stage2", "pCE_keepDS",
                "DMPLS_avg", "DMSPS_avg", "PSSeg_avg", "DMSPS_paperCE", "DMPLS_pLDice", "DMSPS_pLDice",
                "PSSeg_pLDice", "DMPLS_ramp", "DMSPS_ramp", "DMPLS_pLDice_ramp", "DMSPS_pLDice_ramp"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Benchmark:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.work).resolve()
        self.profile = PROFILES[args.profile]
        self.config = args.config + (f"_{self.profile['preset']}" if self.profile["preset"] else "")
        self.ids = {"scribble": args.id, "dense": args.id + 1}   # stage 2: stage2_dataset_id
        self.bin = Path(sys.executable).parent
        self.device = args.device
        self.env = dict(os.environ, nnUNet_raw=str(self.work / "nnUNet_raw"),
                        nnUNet_preprocessed=str(self.work / "nnUNet_preprocessed"),
                        nnUNet_compile=os.environ.get("nnUNet_compile", "f"),
                        nnUNet_def_n_proc=os.environ.get("nnUNet_def_n_proc", "2"))
        self.results_dir = self.work / "results"
        self.results_dir.mkdir(parents=True, exist_ok=True)
        # predictions and results are named by arm and seed only: one work folder per dataset/configuration
        setup = {"dataset": args.dataset, "configuration": self.config, "fold": args.fold}
        if args.stage2_tau is not None:   # the stage-2 dataset is expanded once per work folder
            setup["stage2_tau"] = args.stage2_tau
        setup_file = self.work / "benchmark_setup.json"
        previous = json.loads(setup_file.read_text()) if setup_file.exists() else setup
        if previous != setup:
            raise SystemExit(f"{self.work} holds a benchmark of {previous}, not {setup}: use another --work folder")
        setup_file.write_text(json.dumps(setup) + "\n")
        self.logfile = self.work / "commands.log"

    # ------------------------------------------------------------------ helpers
    def run(self, cmd: List[str], extra_env: Optional[dict] = None, measure: bool = False) -> dict:
        """Run a command (logged); with ``measure`` return wall seconds and peak RSS (MiB) via /usr/bin/time."""
        env = dict(self.env, **(extra_env or {}))
        timing_file = self.work / ".time.txt"
        full = (["/usr/bin/time", "-f", "%M", "-o", str(timing_file)] if measure and Path("/usr/bin/time").exists()
                else []) + [str(c) for c in cmd]
        start = time.time()
        with open(self.logfile, "a") as f:
            f.write(f"\n$ {' '.join(full)}\n")
            f.flush()
            rc = subprocess.run(full, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            tail = "\n".join(self.logfile.read_text().splitlines()[-30:])
            raise RuntimeError(f"command failed ({rc}): {' '.join(full)}\n{tail}")
        out = {"wall_s": time.time() - start}
        if measure and timing_file.exists():
            out["peak_rss_mib"] = int(timing_file.read_text().split()[-1]) / 1024
        return out

    def dataset_id(self, kind: str, seed: int = 0) -> int:
        return stage2_dataset_id(self.args.id, seed) if kind == "stage2" else self.ids[kind]

    def raw_folder(self, kind: str, seed: int = 0) -> Path:
        matches = sorted((self.work / "nnUNet_raw").glob(f"Dataset{self.dataset_id(kind, seed):03d}_*"))
        return matches[0] if matches else None

    def dataset_name(self, kind: str, seed: int = 0) -> str:
        return self.raw_folder(kind, seed).name

    def trainer(self, arm: str) -> str:
        return f"{ARMS[arm][0]}_{self.profile['budget']}"

    def results_root(self, seed: int) -> Path:
        return self.work / ("nnUNet_results" if seed == 0 else f"nnUNet_results_seed{seed}")

    def fold_dir(self, arm: str, seed: int) -> Path:
        kind = ARMS[arm][1]
        return (self.results_root(seed) / self.dataset_name(kind, seed) /
                f"{self.trainer(arm)}__nnUNetPlans__{self.config}" / f"fold_{self.args.fold}")

    def state_file(self) -> Path:
        return self.results_dir / "state.json"

    def load_state(self) -> dict:
        return json.loads(self.state_file().read_text()) if self.state_file().exists() else {}

    def save_state(self, state: dict) -> None:
        tmp = self.state_file().with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_file())

    # ------------------------------------------------------------------ data
    def convert(self) -> None:
        raw = self.work / "nnUNet_raw"
        if self.raw_folder("scribble") is None:
            log(f"converting {self.args.dataset} -> Dataset{self.ids['scribble']:03d}")
            data = Path(self.args.data)
            if self.args.dataset == "acdc":
                from dataset_conversion.acdc import convert_acdc_h5
                convert_acdc_h5(data / "acdc_scribble_h5", data / "acdc_scribble_nii", raw, self.ids["scribble"],
                                "ACDCScribble", test_patients=self.args.test_cases, patients=self.args.cases,
                                verbose=False)
            else:
                from dataset_conversion.btcv import convert_btcv
                name = "BTCVScribble" + (f"Every{self.args.every_nth}" if self.args.every_nth else "")
                convert_btcv(data / "btcv_abdomen_ct", raw, self.ids["scribble"], name,
                             test_cases=self.args.test_cases, cases=self.args.cases, method=self.args.method,
                             every_nth=self.args.every_nth, seed=0, verbose=False)
        if self.raw_folder("dense") is None:
            make_dense_twin(self.raw_folder("scribble"), raw, self.ids["dense"])
        # the dense twin is always written (cheap), planned and preprocessed only when the dense arm runs
        dense_arm = "dense" in self.args.arms or ("dense" in self.args.seed_arms and any(self.args.seeds))
        for kind in ("scribble", "dense") if dense_arm else ("scribble",):
            self.plan(kind)

    def plan(self, kind: str, seed: int = 0) -> None:
        """``nnunet_scribble.plans.planning_commands``, each step run once (resumable)."""
        from nnunet_scribble.plans import planning_commands
        name = self.dataset_name(kind, seed)
        preprocessed = self.work / "nnUNet_preprocessed" / name
        plans = preprocessed / "nnUNetPlans.json"
        configurations = json.loads(plans.read_text())["configurations"] if plans.exists() else {}
        commands = planning_commands(self.dataset_id(kind, seed), self.config)
        plan_cmd = commands[0]                  # nnUNetv2_plan_and_preprocess of the planned base configuration
        base = plan_cmd[plan_cmd.index("-c") + 1]
        no_pp = "--no_pp" in plan_cmd
        # nnU-Net writes the plans before it preprocesses: an interrupted run leaves plans without data.
        # Finished = our marker, or (work folders from before the marker) one properties file per training case
        # (nnU-Net writes a case's .pkl after its arrays)
        done_base = preprocessed / f".preprocessed_{base}"
        if not done_base.exists() and base in configurations:
            n_training = json.loads((self.raw_folder(kind, seed) / "dataset.json").read_text())["numTraining"]
            if len(list((preprocessed / configurations[base]["data_identifier"]).glob("*.pkl"))) == n_training:
                done_base.write_text("nnUNetv2_plan_and_preprocess finished\n")
        if not done_base.exists():
            log(f"plan {'' if no_pp else 'and preprocess '}{name} ({base})")
            self.run(self.command(plan_cmd) + ["-np", "2", "-npfp", "2", "--verify_dataset_integrity"],
                     {"nnUNet_n_proc_DA": "1"})
            splits = self.raw_folder(kind, seed) / "splits_final.json"
            if splits.exists():
                shutil.copy(splits, preprocessed / "splits_final.json")
            configurations = json.loads(plans.read_text())["configurations"]
            done_base.write_text(f"nnUNetv2_plan_and_preprocess{' --no_pp' if no_pp else ''} finished\n")
        for cmd in commands[1:]:
            if cmd[:2] == ["nnunet_scribble", "add-configs"]:
                if self.config not in configurations:
                    self.run(self.command(cmd))
            else:                               # nnUNetv2_preprocess of a configuration with its own spacing
                done = preprocessed / f".preprocessed_{self.config}"
                if not done.exists():
                    log(f"preprocess {name} ({self.config}: own spacing)")
                    self.run(self.command(cmd) + ["-np", "2"])
                    done.write_text("nnUNetv2_preprocess finished\n")

    def command(self, cmd: List[str]) -> List[str]:
        """A console-script command line with this environment's executables."""
        if cmd[0] == "nnunet_scribble":
            return [sys.executable, "-m", "nnunet_scribble", *cmd[1:]]
        return [str(self.bin / cmd[0]), *cmd[1:]]

    # ------------------------------------------------------------------ arms
    def train(self, arm: str, seed: int) -> dict:
        fold_dir = self.fold_dir(arm, seed)
        kind = ARMS[arm][1]
        if (fold_dir / "checkpoint_final.pth").exists() and (fold_dir / "validation" / "summary.json").exists():
            return {}
        cmd = [self.bin / "nnUNetv2_train", self.dataset_id(kind, seed), self.config, self.args.fold,
               "-tr", self.trainer(arm), "-device", self.device]
        if (fold_dir / "checkpoint_latest.pth").exists() or (fold_dir / "checkpoint_final.pth").exists():
            cmd.append("--c")
        elif arm in FINETUNE_FROM:   # nnU-Net refuses -pretrained_weights with --c; a continuation has them already
            cmd += ["-pretrained_weights", self.fold_dir(FINETUNE_FROM[arm], seed) / "checkpoint_final.pth"]
        log(f"train {arm} (seed {seed}): {self.trainer(arm)} on {self.dataset_name(kind, seed)} {self.config}")
        return self.run(cmd, {"nnUNet_results": str(self.results_root(seed)),
                              "nnUNet_n_proc_DA": str(self.args.n_proc_da),
                              "NNUNET_SCRIBBLE_SEED": str(seed)}, measure=True)

    def reuse_weights(self, arm: str, seed: int) -> None:
        """*_avg arms: the parent arm's checkpoint, re-labelled with the _avg trainer (decoder-mean inference)."""
        import torch
        src = self.fold_dir(ARMS[arm][2], seed)
        dst = self.fold_dir(arm, seed)
        if (dst / "checkpoint_final.pth").exists():
            return
        dst.mkdir(parents=True, exist_ok=True)
        for f in ("dataset.json", "plans.json"):
            shutil.copy(src.parent / f, dst.parent / f)
        ckpt = torch.load(src / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        ckpt["trainer_name"] = self.trainer(arm)
        torch.save(ckpt, dst / "checkpoint_final.pth.tmp")
        os.replace(dst / "checkpoint_final.pth.tmp", dst / "checkpoint_final.pth")

    def expand_stage2(self, seed: int) -> None:
        """The stage-2 dataset of ``seed``, expanded by that seed's DMSPS model (``dataset_id``), then planned and
        preprocessed (again after an interruption: ``plan`` keeps its own markers)."""
        if self.raw_folder("stage2", seed) is None:   # dmsps-expand writes the dataset atomically
            log(f"DMSPS stage 2: expanding the scribbles with the DMSPS model of seed {seed}")
            self.run([sys.executable, "-m", "nnunet_scribble", "dmsps-expand", "-d", self.ids["scribble"], "-o",
                      self.dataset_id("stage2", seed), "-c", self.config, "-f", self.args.fold,
                      "-tr", self.trainer("DMSPS"), "-device", self.device]
                     + ([] if self.args.stage2_tau is None else ["--tau", self.args.stage2_tau]),
                     {"nnUNet_results": str(self.results_root(seed))})
        self.plan("stage2", seed)

    def predict(self, arm: str, seed: int) -> dict:
        out = self.work / "predictions" / f"{arm}_seed{seed}"
        images = self.raw_folder("scribble") / "imagesTs"
        n_expected = len(list(images.glob("*_0000.nii.gz")))
        if out.exists() and len(list(out.glob("*.nii.gz"))) == n_expected:
            return {}
        log(f"predict {arm} (seed {seed})")
        kind = ARMS[arm][1]
        return self.run([self.bin / "nnUNetv2_predict", "-i", images, "-o", out, "-d", self.dataset_id(kind, seed),
                         "-c", self.config, "-f", self.args.fold, "-tr", self.trainer(arm), "-device", self.device,
                         "-npp", "1", "-nps", "1"], {"nnUNet_results": str(self.results_root(seed))}, measure=True)

    def evaluate(self, arm: str, seed: int, suffix: str = "") -> dict:
        from nnunet_scribble.evaluation import evaluate_folder
        out = self.work / "predictions" / f"{arm}_seed{seed}{suffix}"
        if (out / "summary.json").exists():
            return json.loads((out / "summary.json").read_text())
        evaluate_folder(str(out), str(self.raw_folder("scribble") / "labelsTs"),
                        labels=list(self.test_labels().values()), output_folder=str(out), num_processes=2)
        return json.loads((out / "summary.json").read_text())

    def test_labels(self) -> Dict[str, int]:
        """Foreground labels of dataset.json that occur in the dense test labels. One that occurs in none (a
        ``--test-cases`` set whose volumes all lack, e.g., the gallbladder) has no defined Dice: it is left out of
        the evaluation of every arm, with a warning, instead of failing after the training."""
        if getattr(self, "_test_labels", None) is None:
            from nnunet_scribble.evaluation import labels_in_files
            labels = {k: v for k, v in self.label_dict().items() if k not in ("background", "ignore")}
            present = labels_in_files(sorted((self.raw_folder("scribble") / "labelsTs").glob("*.nii.gz")), 2)
            absent = [k for k, v in labels.items() if v not in present]
            if absent:
                log(f"WARNING: {absent} occur in none of the test labels: left out of the evaluation")
            self._test_labels = {k: v for k, v in labels.items() if v in present}
        return self._test_labels

    def postprocess_lcc(self, arm: str, seed: int) -> None:
        """Largest component per class (nnU-Net's function, ``nnunet_scribble lcc``), as PyMIC's ACDC
        examples post-process; applied to every arm alike and reported next to the raw predictions."""
        from nnunet_scribble.postprocessing import apply_lcc_to_folder
        out = self.work / "predictions" / f"{arm}_seed{seed}_lcc"
        if not out.exists():
            log(f"largest-component post-processing {arm} (seed {seed})")
            apply_lcc_to_folder(self.work / "predictions" / f"{arm}_seed{seed}", out, num_processes=2)
        self.evaluate(arm, seed, "_lcc")

    def label_dict(self) -> Dict[str, int]:
        return json.loads((self.raw_folder("scribble") / "dataset.json").read_text())["labels"]

    def training_stats(self, arm: str, seed: int) -> dict:
        import torch
        ckpt = torch.load(self.fold_dir(arm, seed) / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        logging = ckpt["logging"]
        epoch_s = median_epoch_seconds(logging)
        from nnunet_scribble.trainers import BUDGETS
        _, iters, val_iters = BUDGETS[self.profile["budget"]]
        return {"epoch_s_median": epoch_s,
                "s_per_iteration": epoch_s / iters,
                "train_losses": [float(x) for x in logging["train_losses"]],
                "ema_fg_dice": [float(x) for x in logging["ema_fg_dice"]],
                "n_parameters": int(sum(v.numel() for k, v in ckpt["network_weights"].items()
                                        if not _shared_encoder_copy(k)))}

    # ------------------------------------------------------------------ main loop
    def run_arm(self, arm: str, seed: int, state: dict) -> None:
        key = f"{arm}_seed{seed}"
        entry = state.setdefault(key, {"arm": arm, "seed": seed})
        if ARMS[arm][2] is not None:
            if f"{ARMS[arm][2]}_seed{seed}" not in state:
                self.run_arm(ARMS[arm][2], seed, state)
            self.reuse_weights(arm, seed)
        else:
            if ARMS[arm][1] == "stage2":
                if f"DMSPS_seed{seed}" not in state:
                    self.run_arm("DMSPS", seed, state)
                self.expand_stage2(seed)
            measured = self.train(arm, seed)
            if measured:
                entry["train"] = measured
            entry["stats"] = self.training_stats(arm, seed)
        measured = self.predict(arm, seed)
        if measured:
            entry["predict"] = measured
        entry["summary_file"] = str(self.work / "predictions" / key / "summary.json")
        self.evaluate(arm, seed)
        if not self.args.no_lcc:
            self.postprocess_lcc(arm, seed)
            entry["summary_file_lcc"] = str(self.work / "predictions" / f"{key}_lcc" / "summary.json")
        self.save_state(state)

    def main(self) -> None:
        self.convert()
        state = self.load_state()
        for arm in self.args.arms:
            self.run_arm(arm, 0, state)
            self.save_state(state)
            write_results(self, state)
        for seed in self.args.seeds:
            if seed == 0:
                continue
            for arm in self.args.seed_arms:
                self.run_arm(arm, seed, state)
                write_results(self, state)
        write_results(self, state)
        log(f"results in {self.results_dir}")


def stage2_dataset_id(scribble_id: int, seed: int) -> int:
    """Each seed's DMSPS model expands its own stage-2 dataset: id + 2 for seed 0, id + 2 + 10 * seed else."""
    return scribble_id + 2 + 10 * seed


def _shared_encoder_copy(key: str) -> bool:
    """State-dict keys that repeat the encoder under a decoder (UNetDecoder registers its encoder)."""
    return key.startswith("decoder.encoder.") or (key.startswith("aux_decoders.") and ".encoder." in key)


def make_dense_twin(scribble_folder: Path, raw_dir: Path, dataset_id: int) -> Path:
    """Same images and splits, labelsTr = the dense labels (labelsTr_dense), no ignore label."""
    dj = json.loads((scribble_folder / "dataset.json").read_text())
    name = scribble_folder.name.split("_", 1)[1] + "Dense"
    target = raw_dir / f"Dataset{dataset_id:03d}_{name}"
    tmp = raw_dir / f".tmp_{target.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    shutil.copytree(scribble_folder / "imagesTr", tmp / "imagesTr")
    shutil.copytree(scribble_folder / "labelsTr_dense", tmp / "labelsTr")
    for extra in ("imagesTs", "labelsTs", "splits_final.json"):
        src = scribble_folder / extra
        if src.is_dir():
            shutil.copytree(src, tmp / extra)
        elif src.exists():
            shutil.copy(src, tmp / extra)
    dj["labels"] = {k: v for k, v in dj["labels"].items() if k != "ignore"}
    dj["description"] = f"dense twin of {scribble_folder.name} (fully supervised ceiling)"
    dj.pop("annotated_fraction", None)
    (tmp / "dataset.json").write_text(json.dumps(dj, indent=4))
    os.replace(tmp, target)
    return target


# ---------------------------------------------------------------------- tables and figures
def _mean_std(summary: dict, label: str, metric: str):
    per_case = [c["metrics"][label][metric] for c in summary["metric_per_case"]]
    vals = np.array([np.nan if v is None else v for v in per_case], dtype=float)
    return float(np.nanmean(vals)), float(np.nanstd(vals))


def collect(bench: Benchmark, state: dict) -> dict:
    labels = {str(v): k for k, v in bench.label_dict().items() if k not in ("background", "ignore")}
    rows = {}
    for key, entry in state.items():
        f = Path(entry.get("summary_file", ""))
        if not f.exists():
            continue
        summary = json.loads(f.read_text())
        # the labels that were evaluated (see Benchmark.test_labels), in dataset.json's order
        evaluated = {k: v for k, v in labels.items() if k in summary["metric_per_case"][0]["metrics"]}
        row = {"arm": entry["arm"], "seed": entry["seed"], **_metrics(summary, evaluated)}
        f_lcc = Path(entry.get("summary_file_lcc", ""))
        if f_lcc.is_file():
            row["lcc"] = _metrics(json.loads(f_lcc.read_text()), evaluated)
        row["summary_file"] = str(f)
        row["stats"] = entry.get("stats", state.get(f"{ARMS[entry['arm']][2]}_seed{entry['seed']}", {}).get("stats"))
        row["train"] = entry.get("train")
        row["predict"] = entry.get("predict")
        rows[key] = row
    return rows


def median_epoch_seconds(logging: dict) -> float:
    """Median epoch time of nnU-Net's checkpoint ``logging``, without the first epoch (start-up) when there are more."""
    durations = np.subtract(logging["epoch_end_timestamps"], logging["epoch_start_timestamps"])
    return float(np.median(durations[1:] if len(durations) > 1 else durations))


def _metrics(summary: dict, labels: Dict[str, str]) -> dict:
    """Mean ± std over cases of the per-case foreground mean, and per-class mean ± std, of one summary.json."""
    out = {"per_class": {}}
    case_means = {m: [] for m in ("Dice", "HD95", "ASSD")}
    for case in summary["metric_per_case"]:
        for m in case_means:
            vals = [case["metrics"][lab][m] for lab in labels]
            case_means[m].append(np.nanmean([np.nan if v is None else v for v in vals]))
    for m, v in case_means.items():
        out[m] = (float(np.nanmean(v)), float(np.nanstd(v)))
    for lab, name in labels.items():
        out["per_class"][name] = {m: _mean_std(summary, lab, m) for m in ("Dice", "HD95", "ASSD")}
    return out


def write_results(bench: Benchmark, state: dict) -> None:
    rows = collect(bench, state)
    if not rows:
        return
    out = bench.results_dir
    for name, text in (("results.json", json.dumps(rows, indent=2)), ("results.md", results_markdown(bench, rows))):
        (out / f"{name}.tmp").write_text(text)
        os.replace(out / f"{name}.tmp", out / name)
    try:
        plot_results(bench, rows)
    except Exception as e:  # figures must never lose the tables
        log(f"plotting failed: {e}")


def _gap(row, ref, dense, arm=None) -> str:
    """Fraction of the pL -> dense Dice gap closed: (arm - pL) / (dense - pL)."""
    arm = arm or (row or {}).get("arm")
    if not (row and ref and dense) or arm in ("pL", "dense"):
        return "n/a"
    if dense["Dice"][0] <= ref["Dice"][0]:
        return "n/a (dense ≤ pL)"  # the ratio is meaningless when the ceiling is not above the bar
    return f"{(row['Dice'][0] - ref['Dice'][0]) / (dense['Dice'][0] - ref['Dice'][0]):+.2f}"


def _ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b not in (None, 0) else "n/a"


def _references(rows: dict, seed: int):
    """The bar and the ceiling a row is compared with: pL and dense of the same seed (seed 0 where that arm
    was not repeated with this seed)."""
    return (rows.get(f"pL_seed{seed}") or rows.get("pL_seed0"),
            rows.get(f"dense_seed{seed}") or rows.get("dense_seed0"))


def _row_order(row: dict):
    return row["seed"], DEFAULT_ARMS.index(row["arm"]) if row["arm"] in DEFAULT_ARMS else 99


def _lowest_seed_rows(rows: dict) -> Dict[str, dict]:
    """One row per arm for the figures: its lowest seed (seed 0 unless only extra seeds were run), labelled
    with the seed where that is not 0."""
    shown = {}
    for r in sorted(rows.values(), key=_row_order):
        shown.setdefault(r["arm"], r)
    return {(arm if r["seed"] == 0 else f"{arm} (seed {r['seed']})"): r for arm, r in shown.items()}


def results_markdown(bench: Benchmark, rows: dict) -> str:
    n_cases = len(json.loads(Path(state_file_of(rows)).read_text())["metric_per_case"])
    lines = [f"Profile `{bench.args.profile}`, configuration `{bench.config}`, fold {bench.args.fold}, "
             f"{n_cases} test cases; mean ± std over test cases of the per-case foreground-class mean. "
             f"Gap closed and ratios: against pL (and dense) of the same seed, seed 0 where not repeated.",
             "",
             "| arm | seed | mean Dice | HD95 (mm) | ASSD (mm) | gap closed | mean Dice, LCC | HD95, LCC (mm) | "
             "gap closed, LCC | s/iter (ratio to pL) | train peak RSS ratio | inference time ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ordered = sorted(rows.values(), key=_row_order)
    for r in ordered:
        ref, dense = _references(rows, r["seed"])
        gap = _gap(r, ref, dense)
        gap_lcc = _gap(r.get("lcc"), (ref or {}).get("lcc"), (dense or {}).get("lcc"), r["arm"])
        lcc = r.get("lcc")
        lcc_text = (f"{lcc['Dice'][0]:.4f} ± {lcc['Dice'][1]:.4f} | {lcc['HD95'][0]:.2f} ± {lcc['HD95'][1]:.2f}"
                    if lcc else "n/a | n/a")
        s_it = r["stats"]["s_per_iteration"] if r.get("stats") else None
        ref_s_it = ref["stats"]["s_per_iteration"] if ref and ref.get("stats") else None
        rss = (r.get("train") or {}).get("peak_rss_mib")
        ref_rss = ((ref or {}).get("train") or {}).get("peak_rss_mib")
        inf = (r.get("predict") or {}).get("wall_s")
        ref_inf = ((ref or {}).get("predict") or {}).get("wall_s")
        s_it_text = f"{s_it:.3f} ({_ratio(s_it, ref_s_it)})" if s_it else "n/a"
        lines.append(f"| {r['arm']} | {r['seed']} | {r['Dice'][0]:.4f} ± {r['Dice'][1]:.4f} | "
                     f"{r['HD95'][0]:.2f} ± {r['HD95'][1]:.2f} | {r['ASSD'][0]:.2f} ± {r['ASSD'][1]:.2f} | {gap} | "
                     f"{lcc_text} | {gap_lcc} | {s_it_text} | {_ratio(rss, ref_rss)} | {_ratio(inf, ref_inf)} |")
    names = list(next(iter(rows.values()))["per_class"])
    lines += ["", "Per class Dice (mean ± std over test cases):", "",
              "| arm | seed | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for r in ordered:
        lines.append(f"| {r['arm']} | {r['seed']} | " + " | ".join(f"{r['per_class'][n]['Dice'][0]:.3f} ± "
                                                                   f"{r['per_class'][n]['Dice'][1]:.3f}" for n in names) + " |")
    lines += ["", "Per class HD95 (mm):", "", "| arm | seed | " + " | ".join(names) + " |",
              "|---|---|" + "---|" * len(names)]
    for r in ordered:
        lines.append(f"| {r['arm']} | {r['seed']} | " + " | ".join(f"{r['per_class'][n]['HD95'][0]:.1f}" for n in names) + " |")
    lcc_rows = [r for r in ordered if r.get("lcc")]
    if lcc_rows:
        lines += ["", "After largest-component post-processing: per class Dice / HD95 (mm):", "",
                  "| arm | seed | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for r in lcc_rows:
            lines.append(f"| {r['arm']} | {r['seed']} | " + " | ".join(
                f"{r['lcc']['per_class'][n]['Dice'][0]:.3f} / {r['lcc']['per_class'][n]['HD95'][0]:.1f}"
                for n in names) + " |")
    return "\n".join(lines) + "\n"


def state_file_of(rows: dict) -> str:
    return next(iter(rows.values()))["summary_file"]


def plot_results(bench: Benchmark, rows: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = _lowest_seed_rows(rows)
    names = list(next(iter(shown.values()))["per_class"])
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(names) * len(shown) / 4), 4.5))
    width = 0.8 / len(shown)
    for i, (arm, r) in enumerate(shown.items()):
        ax.bar(np.arange(len(names)) + i * width, [r["per_class"][n]["Dice"][0] for n in names], width, label=arm)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("Dice (test cases)")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(bench.results_dir / "per_class_dice.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm, r in shown.items():
        if r.get("stats") and not r["arm"].endswith("_avg"):
            axes[0].plot(r["stats"]["train_losses"], label=arm)
            axes[1].plot(r["stats"]["ema_fg_dice"], label=arm)
    axes[0].set_title("training loss")
    axes[1].set_title("EMA pseudo Dice on scribbles (validation fold)")
    for a in axes:
        a.set_xlabel("epoch")
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(bench.results_dir / "training_curves.png", dpi=120)
    plt.close(fig)


def parse_args(argv=None):
    from nnunet_scribble.raw_dataset import parse_int_ranges

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("acdc", "btcv"), required=True)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="folder with the shared data")
    p.add_argument("--work", required=True, help="working folder (nnU-Net folders, predictions, results)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    p.add_argument("--config", default="2d", help="planned configuration: 2d or 3d_fullres")
    p.add_argument("--test-cases", type=parse_int_ranges, default=None,
                   help="test patients (ACDC, default 21-40) or case numbers (BTCV, default: last 4)")
    p.add_argument("--cases", type=parse_int_ranges, default=None, help="restrict the conversion to these patients/cases")
    p.add_argument("--method", default="interior_border", help="BTCV scribble simulator")
    p.add_argument("--every-nth", type=int, default=None, help="BTCV: scribbles on every N-th slice only")
    p.add_argument("--id", type=int, default=700, help="dataset id of the scribble dataset (+1 dense twin, +2 stage 2)")
    p.add_argument("--fold", default="0")
    p.add_argument("--stage2-tau", type=float, default=None,
                   help="entropy threshold of the DMSPS stage-2 expansion (default: dmsps-expand's, 0.1 for 2d, "
                        "0.3 for 3d); a work folder holds one stage-2 dataset, so another value needs another --work")
    p.add_argument("--arms", nargs="*", default=DEFAULT_ARMS, choices=sorted(ARMS),
                   help="arms trained with seed 0 (an empty --arms with --seeds 1 --seed-arms ... runs extra seeds only)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--seed-arms", nargs="+", default=["pL"], choices=sorted(ARMS),
                   help="arms repeated with every extra seed")
    p.add_argument("--device", default="cpu")
    p.add_argument("--n-proc-da", type=int, default=0,
                   help="nnU-Net's augmentation workers per training (0: in the seeded main process, reproducible; "
                        "on a GPU use several: the workers are not seeded)")
    p.add_argument("--no-lcc", dest="no_lcc", action="store_true",
                   help="skip the largest-component post-processed evaluation (reported next to the raw one)")
    args = p.parse_args(argv)
    extra_seeds = any(seed != 0 for seed in args.seeds)
    if not args.arms and not extra_seeds:
        p.error("--arms is empty and --seeds has no seed but 0: nothing to run")
    if any(ARMS[arm][1] == "stage2" for arm in args.arms + args.seed_arms):
        last = stage2_dataset_id(args.id, max(args.seeds + [0]))
        if last > 999:
            p.error(f"the stage-2 dataset of seed {max(args.seeds)} would get id {last} (id + 2 + 10 x seed): "
                    "nnU-Net's ids have 3 digits; use a smaller --id or seed")
    if args.stage2_tau is not None and not 0.0 < args.stage2_tau <= 1.0:
        p.error(f"--stage2-tau must be in (0, 1] (a normalised entropy), got {args.stage2_tau}")
    if args.test_cases is None and args.dataset == "acdc":
        args.test_cases = list(range(21, 41))
    return args


def main(argv=None) -> int:
    Benchmark(parse_args(argv)).main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
