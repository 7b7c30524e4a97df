"""nnU-Net trainers for scribble supervision.

Use them like any nnU-Net trainer::

    nnUNetv2_train DATASET 2d 0 -tr nnUNetTrainerDMSPS
    nnUNetv2_predict -i IN -o OUT -d DATASET -c 2d -f 0 -tr nnUNetTrainerDMSPS

Class names are part of every checkpoint (nnU-Net resolves the network builder from
``checkpoint['trainer_name']``): never rename them.

| trainer | method |
|---|---|
| ``nnUNetTrainerScribble`` | partial cross-entropy (pCE) on scribbled voxels, every deep-supervision scale |
| ``nnUNetTrainerScribblePreserveDS`` | pCE with scribble-preserving deep-supervision targets |
| ``nnUNetTrainerDMPLS`` | two decoders, Dice to argmax of a randomly mixed pseudo label (Luo et al. 2022) |
| ``nnUNetTrainerDMSPS`` | two decoders, CE to a randomly mixed soft pseudo label (Han et al. 2024, stage 1; stage 2 = the DMSPS loss on a dataset expanded by ``nnunet_scribble dmsps-expand``, from the stage-1 model: ``nnUNetTrainerDMSPS_stage2``) |
| ``nnUNetTrainerDMSPS_paperCE`` | DMSPS with the paper's pseudo-label CE (the default follows the reference code's double softmax) |
| ``nnUNetTrainerDMSPS_finetune`` | DMSPS stage 2 fine-tuned from stage 1 (PyMIC's variant): ``-pretrained_weights`` loads the whole stage-1 network, initial learning rate 1e-3 |
| ``nnUNetTrainerDMSPS_stage2`` | DMSPS stage 2 as the reference code runs it: ``-pretrained_weights`` loads the whole stage-1 network, the stage-1 learning rate (1e-2) |
| ``nnUNetTrainerPSSeg`` | three decoders, USPC + CCAC consistency (Han et al. 2026) |
| ``..._avg`` | the same training; inference averages the decoders' probabilities |
| ``..._pLDice`` (DMPLS, DMSPS, PSSeg) | supervised term = nnU-Net's ignore-label CE + Dice per decoder, plus the method's terms |
| ``..._sumSup`` (DMPLS, PSSeg) | the decoders' partial CEs summed instead of averaged (every decoder gets the full supervised gradient) |

Every trainer also exists with a training budget suffix (``BUDGETS``), e.g. ``nnUNetTrainerDMPLS_tiny``
(2 epochs x 4 iterations, for tests) or ``nnUNetTrainer_tiny`` (nnU-Net's own trainer, same budget).
"""
from __future__ import annotations

import math
import os
import random
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_scribble.dataset_checks import check_ignore_label, check_scribble_cases
from nnunet_scribble.losses import DMPLSLoss, DMSPSLoss, MultiDecoderScribbleLoss, PartialCELoss, PSSegLoss
from nnunet_scribble.networks import (ChannelMeanFeatureDropout, FeatureDropout, MultiDecoderUNet,
                                      RandomFeatureDropout, build_multi_decoder_network)
from nnunet_scribble.pretrained import install_pretrained_weights_hook, unwrap_network
from nnunet_scribble.transforms import ScribblePreservingDownsampleSegForDS, out_of_image_to_ignore


class nnUNetTrainerScribble(nnUNetTrainer):
    """Partial cross-entropy on annotated voxels only, at every deep-supervision scale.

    Refuses to train (before the first step) on a dataset without an ignore label, with label values
    above it, with a training case that has no annotated voxel, or with a class that is scribbled in no
    training case of the fold.
    """

    preserve_scribbles_in_ds: bool = False
    #: voxels outside the image (nnU-Net's -1: cropping, augmentation padding) become ignore, not background
    out_of_image_as_ignore: bool = True

    def initialize(self):
        if not self.was_initialized:
            check_ignore_label(self.label_manager, self.plans_manager.dataset_name)
        super().initialize()

    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        self.check_training_scribbles()
        super().on_train_start()

    def check_training_scribbles(self) -> dict:
        """Load every training case of this fold from the preprocessed folder and validate its labels."""
        tr_keys, _ = self.do_split()
        dataset = self.dataset_class(self.preprocessed_dataset_folder, tr_keys)
        ignore = self.label_manager.ignore_label
        counts = check_scribble_cases(((k, dataset.load_case(k)[1][:]) for k in tr_keys), ignore,
                                      classes=[c for c in self.label_manager.all_labels if c != ignore],
                                      out_of_image_is_annotated=not self.out_of_image_as_ignore)
        self.print_to_log_file(f"Scribble check passed: {len(counts)} training cases, annotated voxels per case "
                               f"{min(counts.values())}..{max(counts.values())}")
        return counts

    # ---------------------------------------------------------------- loss
    def _deep_supervision_weights(self) -> Sequence[float]:
        """nnU-Net's own scale weights (1/2^i, lowest scale 0, normalised), taken from its loss builder."""
        return nnUNetTrainer._build_loss(self).weight_factors

    def _build_loss(self):
        loss = PartialCELoss(self.label_manager.ignore_label)
        if self.enable_deep_supervision:
            loss = DeepSupervisionWrapper(loss, self._deep_supervision_weights())
        return loss

    # ---------------------------------------------------------------- targets
    def _with_scribble_preserving_ds(self, transforms):
        if not self.preserve_scribbles_in_ds:
            return transforms
        transforms.transforms = [
            ScribblePreservingDownsampleSegForDS(t.ds_scales, self.label_manager.ignore_label)
            if isinstance(t, DownsampleSegForDSTransform) else t for t in transforms.transforms]
        return transforms

    def _scribble_targets(self, transforms):
        if self.out_of_image_as_ignore and out_of_image_to_ignore(transforms, self.label_manager.ignore_label) == 0:
            raise RuntimeError("nnU-Net's RemoveLabelTansform(-1, 0) was not found in the transforms; cannot map "
                               "out-of-image voxels to the ignore label (nnU-Net version change?)")
        return self._with_scribble_preserving_ds(transforms)

    def get_training_transforms(self, *args, **kwargs):
        return self._scribble_targets(super().get_training_transforms(*args, **kwargs))

    def get_validation_transforms(self, *args, **kwargs):
        return self._scribble_targets(super().get_validation_transforms(*args, **kwargs))


class nnUNetTrainerScribble_pLDice(nnUNetTrainerScribble):
    """nnU-Net's own ignore-label loss (partial CE + masked Dice, "nnU-Net+pL"), with our scribble checks and
    out-of-image voxels as ignore: the only difference from ``nnUNetTrainer`` on a scribble dataset."""

    def _build_loss(self):
        return nnUNetTrainer._build_loss(self)


class nnUNetTrainerScribblePreserveDS(nnUNetTrainerScribble):
    """pCE with deep-supervision targets downsampled so that scribbles survive (any-annotated vote)."""

    preserve_scribbles_in_ds = True


class nnUNetTrainerMultiDecoder(nnUNetTrainerScribble):
    """Shared machinery of the multi-decoder trainers; subclasses set the class attributes and the loss.

    The network returns every decoder's output in ``train()`` mode and the main decoder (or the decoder
    average, ``INFERENCE_MODE = "mean"``) in ``eval()`` mode, so nnU-Net's validation, final validation
    and ``nnUNetv2_predict`` work unchanged. Loss terms are logged per epoch in the training log,
    nnU-Net's logger (checkpointed) and ``progress_loss_terms.png``.
    """

    NUM_DECODERS: int = 2
    INFERENCE_MODE: str = "main"
    DECODER_INITS: Optional[Sequence[str]] = None
    #: ``-pretrained_weights`` also loads the segmentation layers (fine-tuning on the same label set;
    #: nnU-Net re-initialises them by default, for transfer to other label sets)
    PRETRAINED_INCLUDES_SEG_LAYERS: bool = False

    @classmethod
    def build_perturbations(cls) -> List[torch.nn.Module]:
        return [FeatureDropout(0.5) for _ in range(cls.NUM_DECODERS - 1)]

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        def build_base():
            return super(nnUNetTrainerMultiDecoder, cls).build_network_architecture(
                plans_manager, configuration_manager, num_input_channels, num_output_channels,
                enable_deep_supervision)

        return build_multi_decoder_network(build_base, cls.NUM_DECODERS, cls.build_perturbations(),
                                           cls.DECODER_INITS, cls.INFERENCE_MODE)

    def initialize(self):
        install_pretrained_weights_hook()
        super().initialize()
        self.unwrapped_network().pretrained_includes_seg_layers = self.PRETRAINED_INCLUDES_SEG_LAYERS

    def unwrapped_network(self) -> MultiDecoderUNet:
        return unwrap_network(self.network)

    def set_deep_supervision_enabled(self, enabled: bool):
        super().set_deep_supervision_enabled(enabled)
        self.unwrapped_network().deep_supervision = enabled

    # ---------------------------------------------------------------- loss
    @property
    def total_iterations(self) -> int:
        return self.num_epochs * self.num_iterations_per_epoch

    #: supervised term of every decoder: "pce" (partial CE, as the methods specify) or "pl" (nnU-Net's own
    #: ignore-label loss, partial CE + masked Dice, i.e. the nnU-Net+pL objective, per decoder)
    SUPERVISED: str = "pce"

    #: optional sigmoid ramp-up of the unsupervised (pseudo-label) terms, as fractions (start, end) of the
    #: run: weight * sig(t; start * T, end * T) with T = epochs x iterations per epoch; None = constant
    PSEUDO_RAMPUP: Optional[Sequence[float]] = None

    #: replaces the method's weights of the named unsupervised terms (e.g. ``{"pseudo_dice": 2.0}``); None = as published
    PSEUDO_WEIGHTS: Optional[Dict[str, float]] = None

    #: how the decoders' supervised terms combine: "mean" (as published: 1/K of a single network's gradient per
    #: decoder) or "sum" (every decoder gets the whole supervised gradient)
    SUPERVISED_REDUCTION: str = "mean"

    def pseudo_rampup(self) -> Optional[tuple]:
        if self.PSEUDO_RAMPUP is None:
            return None
        return tuple(f * self.total_iterations for f in self.PSEUDO_RAMPUP)

    def build_method_loss(self, ds_weights) -> MultiDecoderScribbleLoss:
        raise NotImplementedError

    def loss_options(self) -> dict:
        """The switches every method loss takes from the trainer: supervised term, weight overrides, reduction."""
        return {"supervised_loss": self.supervised_loss(), "term_weights": self.PSEUDO_WEIGHTS,
                "supervised_reduction": self.SUPERVISED_REDUCTION}

    def supervised_loss(self):
        """None for pCE, else nnU-Net's own DC_and_CE_loss with the ignore label (without its DS wrapper)."""
        if self.SUPERVISED == "pce":
            return None
        loss = nnUNetTrainer._build_loss(self)
        return loss.loss if isinstance(loss, DeepSupervisionWrapper) else loss

    def _build_loss(self):
        self.validation_loss = super()._build_loss()  # pCE on the main decoder
        return self.build_method_loss(self._deep_supervision_weights() if self.enable_deep_supervision else None)

    # ---------------------------------------------------------------- steps and logging
    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._iteration_in_epoch = 0

    def train_step(self, batch: dict) -> dict:
        self.loss.iteration = self.current_epoch * self.num_iterations_per_epoch + self._iteration_in_epoch
        self._iteration_in_epoch += 1
        result = super().train_step(batch)
        result.update({f"loss_{k}": np.array(v) for k, v in self.loss.last_terms.items()})
        return result

    def validation_step(self, batch: dict) -> dict:
        method_loss, self.loss = self.loss, self.validation_loss
        try:
            return super().validation_step(batch)
        finally:
            self.loss = method_loss

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        local = self.logger.local_logger.my_fantastic_logging
        terms = {}
        for key in train_outputs[0]:
            if key.startswith("loss_"):
                local.setdefault(key, [])
                terms[key] = float(np.mean([o[key] for o in train_outputs]))
                self.logger.log(key, terms[key], self.current_epoch)
        self.print_to_log_file("loss terms (DS-weighted, before method weights): " +
                               ", ".join(f"{k[5:]} {v:.4f}" for k, v in terms.items()))
        self._plot_loss_terms(local)

    def _plot_loss_terms(self, logged: dict) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from os.path import join

        keys = [k for k in logged if k.startswith("loss_")]
        fig, ax = plt.subplots(figsize=(8, 4))
        for k in keys:
            ax.plot(range(len(logged[k])), logged[k], label=k[5:])
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss term")
        ax.set_yscale("log")
        ax.legend()
        fig.tight_layout()
        fig.savefig(join(self.output_folder, "progress_loss_terms.png"))
        plt.close(fig)


class nnUNetTrainerDMPLS(nnUNetTrainerMultiDecoder):
    """DMPLS: dual decoder (aux decoder on 0.5-dropout features), Dice to the dynamically mixed hard pseudo label."""

    def build_method_loss(self, ds_weights):
        return DMPLSLoss(self.label_manager.ignore_label, ds_weights, rampup=self.pseudo_rampup(),
                         **self.loss_options())


class nnUNetTrainerDMSPS(nnUNetTrainerMultiDecoder):
    """DMSPS stage 1 (and stage 2 retrained from scratch on an expanded dataset): CE to the mixed soft pseudo label.

    As in the reference code (DMSPS and PyMIC), the pseudo-label CE receives softmax outputs and applies
    log-softmax again (``double_softmax``); this damps the self-training term. The paper's formula
    (``nnUNetTrainerDMSPS_paperCE``) with lambda = 8 collapsed to all-background on ACDC in our CPU
    benchmark, in a run made before out-of-image voxels were mapped to ignore (benchmarks/RESULTS.md).
    """

    double_softmax: bool = True

    def build_method_loss(self, ds_weights):
        return DMSPSLoss(self.label_manager.ignore_label, ds_weights, double_softmax=self.double_softmax,
                         rampup=self.pseudo_rampup(), **self.loss_options())


class nnUNetTrainerDMSPS_paperCE(nnUNetTrainerDMSPS):
    """DMSPS with the paper's pseudo-label CE, -sum_c q_c log p_c (no double softmax)."""

    double_softmax = False


class nnUNetTrainerDMSPS_finetune(nnUNetTrainerDMSPS):
    """DMSPS stage 2 as PyMIC runs it: fine-tuned from the stage-1 model rather than retrained from scratch.

    Train it on the expanded dataset with ``-pretrained_weights <stage-1 checkpoint_final.pth>``: the checkpoint
    loads completely (segmentation layers included), and the initial learning rate is 10x lower than nnU-Net's
    (1e-3; PyMIC fine-tunes with Adam 1e-4). The loss is DMSPS's, unchanged.
    """

    PRETRAINED_INCLUDES_SEG_LAYERS = True
    FINETUNE_LR_SCALE: float = 0.1

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = self.initial_lr * self.FINETUNE_LR_SCALE

    def on_train_start(self):
        # a fresh start (not --c) must have loaded -pretrained_weights: training from scratch at 1/10 of the
        # learning rate would be neither stage 2 variant
        resumed = self.was_initialized and self.current_epoch > 0
        loaded = self.was_initialized and getattr(self.unwrapped_network(), "pretrained_from", None) is not None
        if not (resumed or loaded):
            raise RuntimeError(f"{self.__class__.__name__} fine-tunes a stage-1 model: pass -pretrained_weights "
                               "<stage-1 checkpoint_final.pth> (to retrain stage 2 from scratch, use nnUNetTrainerDMSPS)")
        super().on_train_start()


class nnUNetTrainerDMSPS_stage2(nnUNetTrainerDMSPS_finetune):
    """DMSPS stage 2 as the reference code runs it: its retrain scripts (``*_retrainUncertainty.py``, 2D and 3D) load
    the stage-1 model and train it on the expanded labels with the stage-1 loss and learning rate. Here:
    ``-pretrained_weights <stage-1 checkpoint_final.pth>`` loads the whole network, and the learning rate is
    nnU-Net's (1e-2, poly schedule restarted)."""

    FINETUNE_LR_SCALE = 1.0


class nnUNetTrainerPSSeg(nnUNetTrainerMultiDecoder):
    """PS-Seg: three decoders (clean / random-p dropout / channel-mean feature dropout; kaiming / xavier /
    N(0, 0.02) init), pCE + 10 sig(t) USPC + 0.01 sig(t) CCAC; ramp-up over the first third of training
    (20k of 60k iterations in the reference config), scaled to the run length."""

    NUM_DECODERS = 3
    DECODER_INITS = ("kaiming", "xavier", "normal")
    RAMPUP_FRACTION = 1 / 3

    @classmethod
    def build_perturbations(cls):
        return [RandomFeatureDropout(0.2, 0.5), ChannelMeanFeatureDropout(0.7, 0.9)]

    def build_method_loss(self, ds_weights):
        rampup = max(1, math.ceil(self.RAMPUP_FRACTION * self.total_iterations))
        return PSSegLoss(self.label_manager.ignore_label, ds_weights, rampup_iterations=rampup,
                         **self.loss_options())


class nnUNetTrainerDMPLS_pLDice(nnUNetTrainerDMPLS):
    """DMPLS whose supervised term is nnU-Net's ignore-label CE + Dice (nnU-Net+pL) on each decoder."""

    SUPERVISED = "pl"


class nnUNetTrainerDMSPS_pLDice(nnUNetTrainerDMSPS):
    """DMSPS whose supervised term is nnU-Net's ignore-label CE + Dice (nnU-Net+pL) on each decoder."""

    SUPERVISED = "pl"


class nnUNetTrainerPSSeg_pLDice(nnUNetTrainerPSSeg):
    """PS-Seg whose supervised term is nnU-Net's ignore-label CE + Dice (nnU-Net+pL) on each decoder."""

    SUPERVISED = "pl"


#: PyMIC's ACDC schedule for the pseudo-label term, sig(2000 -> 15000) of 60k iterations, as run fractions
PYMIC_RAMPUP = (2000 / 60000, 15000 / 60000)


class nnUNetTrainerDMPLS_ramp(nnUNetTrainerDMPLS):
    """DMPLS with the pseudo-label Dice ramped up as in PyMIC (sig over 1/30 -> 1/4 of the run)."""

    PSEUDO_RAMPUP = PYMIC_RAMPUP


class nnUNetTrainerDMSPS_ramp(nnUNetTrainerDMSPS):
    """DMSPS with the pseudo-label CE ramped up (sig over 1/30 -> 1/4 of the run, PyMIC's DMPLS schedule)."""

    PSEUDO_RAMPUP = PYMIC_RAMPUP


class nnUNetTrainerDMPLS_pLDice_ramp(nnUNetTrainerDMPLS_pLDice):
    """DMPLS with nnU-Net's ignore-label CE + Dice per decoder and the ramped pseudo-label term."""

    PSEUDO_RAMPUP = PYMIC_RAMPUP


class nnUNetTrainerDMSPS_pLDice_ramp(nnUNetTrainerDMSPS_pLDice):
    """DMSPS with nnU-Net's ignore-label CE + Dice per decoder and the ramped pseudo-label term."""

    PSEUDO_RAMPUP = PYMIC_RAMPUP


class nnUNetTrainerDMPLS_pw2(nnUNetTrainerDMPLS):
    """DMPLS with the pseudo-label Dice weighted 2 (published: 0.5); a pseudo-label weight study."""

    PSEUDO_WEIGHTS = {"pseudo_dice": 2.0}


class nnUNetTrainerDMPLS_pw5(nnUNetTrainerDMPLS):
    """DMPLS with the pseudo-label Dice weighted 5 (published: 0.5); a pseudo-label weight study."""

    PSEUDO_WEIGHTS = {"pseudo_dice": 5.0}


class nnUNetTrainerDMPLS_sumSup(nnUNetTrainerDMPLS):
    """DMPLS with the decoders' partial CEs summed, not averaged (published: 1/2 sum_k): each decoder gets a
    single network's supervised gradient. Tests whether the methods' short-budget deficit is 1/K supervision."""

    SUPERVISED_REDUCTION = "sum"


class nnUNetTrainerPSSeg_sumSup(nnUNetTrainerPSSeg):
    """PS-Seg with the three decoders' partial CEs summed, not averaged (published: 1/3 sum_k)."""

    SUPERVISED_REDUCTION = "sum"


class nnUNetTrainerDMPLS_avg(nnUNetTrainerDMPLS):
    INFERENCE_MODE = "mean"


class nnUNetTrainerDMSPS_avg(nnUNetTrainerDMSPS):
    INFERENCE_MODE = "mean"


class nnUNetTrainerPSSeg_avg(nnUNetTrainerPSSeg):
    INFERENCE_MODE = "mean"


# ------------------------------------------------------------------------------------------------
# training budgets: thin subclasses "<trainer>_<budget>" (epochs, iterations/epoch, val iterations/epoch)
# ------------------------------------------------------------------------------------------------
BUDGETS = {
    "tiny": (2, 4, 2),        # tests
    "demo": (6, 12, 3),       # README demo on a laptop CPU
    "cpu": (40, 25, 5),       # CPU benchmark profile (benchmarks/)
    "cpulong": (100, 40, 5),  # CPU benchmark profile for large images (BTCV; benchmarks/)
    "cpu3k": (120, 25, 5),    # CPU benchmark profile, 3x longer (ACDC budget study; benchmarks/)
    "gpu": (250, 250, 50),    # GPU benchmark profile (benchmarks/)
    "gpu1k": (10, 100, 10),   # GPU profile within one 15-minute device lease (benchmarks/gpu_acdc.sh)
}

BASE_TRAINERS = (nnUNetTrainer, nnUNetTrainerScribble, nnUNetTrainerScribblePreserveDS, nnUNetTrainerScribble_pLDice,
                 nnUNetTrainerDMPLS, nnUNetTrainerDMPLS_avg, nnUNetTrainerDMSPS, nnUNetTrainerDMSPS_avg,
                 nnUNetTrainerDMSPS_paperCE, nnUNetTrainerDMSPS_finetune, nnUNetTrainerDMSPS_stage2,
                 nnUNetTrainerPSSeg, nnUNetTrainerPSSeg_avg,
                 nnUNetTrainerDMPLS_pLDice, nnUNetTrainerDMSPS_pLDice, nnUNetTrainerPSSeg_pLDice,
                 nnUNetTrainerDMPLS_ramp, nnUNetTrainerDMSPS_ramp, nnUNetTrainerDMPLS_pLDice_ramp,
                 nnUNetTrainerDMSPS_pLDice_ramp, nnUNetTrainerDMPLS_pw2, nnUNetTrainerDMPLS_pw5,
                 nnUNetTrainerDMPLS_sumSup, nnUNetTrainerPSSeg_sumSup)


class TrainingBudget:
    """Mixin that sets nnU-Net's run-length attributes from ``BUDGET`` after construction.

    If the environment variable ``NNUNET_SCRIBBLE_SEED`` is set, Python's, NumPy's and torch's random
    generators are seeded with it (benchmarks repeat arms with several seeds; with ``nnUNet_n_proc_DA=0``
    the data augmentation runs in the seeded main process).
    """

    BUDGET: Sequence[int] = BUDGETS["tiny"]

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = self.BUDGET
        # nnU-Net writes checkpoint_latest every 50 epochs: with these shorter runs, every tenth of the run and
        # at least every epoch (a stopped run resumes with --c, or predicts with -chk checkpoint_latest.pth)
        self.save_every = max(1, min(self.save_every, self.num_epochs // 10))
        seed = os.environ.get("NNUNET_SCRIBBLE_SEED")
        if seed is not None:
            random.seed(int(seed))
            np.random.seed(int(seed))
            torch.manual_seed(int(seed))
            self.print_to_log_file(f"random seed {seed} (NNUNET_SCRIBBLE_SEED)")


def _budget_variant(base: type, budget: str) -> type:
    name = f"{base.__name__}_{budget}"
    doc = f"{base.__name__} with the '{budget}' budget: epochs, iterations/epoch, val iterations = {BUDGETS[budget]}."
    return type(name, (TrainingBudget, base), {"BUDGET": BUDGETS[budget], "__doc__": doc, "__module__": __name__})


BUDGET_TRAINERS = {}
for _base in BASE_TRAINERS:
    for _budget in BUDGETS:
        _cls = _budget_variant(_base, _budget)
        BUDGET_TRAINERS[_cls.__name__] = _cls
globals().update(BUDGET_TRAINERS)

__all__ = [c.__name__ for c in BASE_TRAINERS if c is not nnUNetTrainer] + \
    ["nnUNetTrainerMultiDecoder", "TrainingBudget", "BUDGETS"] + list(BUDGET_TRAINERS)
