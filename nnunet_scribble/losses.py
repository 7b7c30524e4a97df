"""Scribble-supervised losses (METHODS.md §1-2).

Conventions: logits ``z`` are (B, C, *spatial); targets are nnU-Net targets (B, 1, *spatial) holding
class indices with ``ignore_label`` on unannotated voxels. Every partial term returns an exact zero
(with a graph, so ``backward`` works) when a batch / deep-supervision scale holds no annotated
voxel: thin scribbles often vanish under nnU-Net's nearest-exact target downsampling, and
``nn.CrossEntropyLoss`` would return NaN there.

Multi-decoder losses take the network's training output ``[decoder][scale]`` and the target list
``[scale]``, compute each term at every deep-supervision scale with nnU-Net's scale weights, and keep
the (detached) value of every term of the last call in ``last_terms`` for logging.
"""
from __future__ import annotations

import math
from itertools import permutations
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------------------------
# elementary terms
# ----------------------------------------------------------------------------------------------
def _class_index_target(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    if target.ndim == logits.ndim:
        target = target[:, 0]
    return target.long()


def partial_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_label: int) -> torch.Tensor:
    """pCE: mean over annotated voxels of -log softmax(z)_s; 0 if nothing is annotated."""
    t = _class_index_target(target, logits)
    if not bool((t != ignore_label).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, t, ignore_index=ignore_label)


def soft_cross_entropy(logits: torch.Tensor, soft_target: torch.Tensor, double_softmax: bool = False) -> torch.Tensor:
    """Mean over voxels of -sum_c q_c log softmax(z)_c.

    ``double_softmax=True`` reproduces the DMSPS/PyMIC reference code, which feeds softmax outputs into
    a cross-entropy that applies log-softmax again: -sum_c q_c log softmax(softmax(z))_c.
    """
    x = torch.softmax(logits, 1) if double_softmax else logits
    return -(soft_target * F.log_softmax(x, 1)).sum(1).mean()


def dice_to_hard_label(probs: torch.Tensor, hard_label: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """WSL4MIS ``pDLoss`` against a dense hard label: mean over all C classes (background included) of
    1 - (2 sum p t + s) / (sum p^2 + sum t^2 + s), sums over batch and space."""
    num_classes = probs.shape[1]
    onehot = F.one_hot(hard_label.long(), num_classes).movedim(-1, 1).to(probs.dtype)
    axes = [0] + list(range(2, probs.ndim))
    intersect = (probs * onehot).sum(axes)
    denom = (probs * probs).sum(axes) + (onehot * onehot).sum(axes)
    return (1 - (2 * intersect + smooth) / (denom + smooth)).mean()


def uncertainty_weighted_consistency(probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """PS-Seg USPC: uncertainty-weighted KL of each decoder to the decoder mixture.

    p~_k = 5e-4 + p_k (1 - 1e-3); m = mean_k p~_k; w = exp(-H(m) / log C);
    L = mean_k [sum_x w KL(p~_k || m)] / sum_x w.  Neither m nor w is detached (as in PyMIC).
    """
    num_classes = probs[0].shape[1]
    clamped = [5e-4 + p * (1 - 1e-3) for p in probs]
    mix = torch.stack(clamped).mean(0)
    entropy = -(mix * torch.log(mix)).sum(1)
    w = torch.exp(-entropy / math.log(num_classes))
    terms = [(w * (p * (torch.log(p) - torch.log(mix))).sum(1)).sum() / w.sum() for p in clamped]
    return torch.stack(terms).mean()


def class_affinity_consistency(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """PS-Seg CCAC for one resolution: maps Z_k (B, C, *spatial) are L2-normalised along space,
    A_ij = Z_i Z_j^T (B, C, C) for every ordered pair i != j, loss = mean_pairs mean((A_ij - I)^2)."""
    flat = [F.normalize(z.flatten(2).to(torch.promote_types(z.dtype, torch.float32)), dim=2) for z in maps]
    eye = torch.eye(flat[0].shape[1], device=flat[0].device, dtype=flat[0].dtype)
    losses = [((a @ b.transpose(1, 2) - eye) ** 2).mean() for a, b in permutations(flat, 2)]
    return torch.stack(losses).mean()


def sigmoid_rampup(t: float, start: float, end: float) -> float:
    """sig(t; a, b) = exp(-5 (1 - r)^2), r = clip((t - a) / (b - a), 0, 1) (PyMIC/WSL4MIS)."""
    if end <= start:
        return 1.0
    r = min(max((t - start) / (end - start), 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - r) ** 2))


class PartialCELoss(nn.Module):
    """pCE as an nn.Module (wrap it in nnU-Net's DeepSupervisionWrapper for deep supervision)."""

    def __init__(self, ignore_label: int):
        super().__init__()
        self.ignore_label = ignore_label

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return partial_cross_entropy(logits, target, self.ignore_label)


# ----------------------------------------------------------------------------------------------
# multi-decoder method losses
# ----------------------------------------------------------------------------------------------
class MultiDecoderScribbleLoss(nn.Module):
    """Base class: per-scale terms summed with nnU-Net's deep-supervision weights, then weighted.

    Subclasses define ``TERM_WEIGHTS`` (term name -> weight), ``scale_terms`` (terms of one scale) and
    optionally ``sample_iteration`` (randomness drawn once per iteration, shared by all scales),
    ``global_terms`` (terms over all scales at once) and ``term_weight``.

    ``supervised_reduction``: how the decoders' supervised terms combine, ``"mean"`` (the methods: each of
    K decoders gets 1/K of a single network's supervised gradient) or ``"sum"`` (each gets all of it).

    ``rampup = (a, b)`` (iterations) multiplies every unsupervised term by sig(t; a, b), t = ``iteration``
    (set by the trainer before each step); ``None`` = constant weights. ``term_weights`` replaces the
    method's weight of the named unsupervised terms (e.g. ``{"pseudo_dice": 2.0}``).
    """

    TERM_WEIGHTS: Dict[str, float] = {"pce": 1.0}
    num_decoders: int = 2

    def __init__(self, ignore_label: int, ds_weights: Optional[Sequence[float]] = None,
                 supervised_loss: Optional[nn.Module] = None, rampup: Optional[Sequence[float]] = None,
                 term_weights: Optional[Dict[str, float]] = None, supervised_reduction: str = "mean"):
        super().__init__()
        if supervised_reduction not in ("mean", "sum"):
            raise ValueError(f"supervised_reduction must be 'mean' or 'sum', got {supervised_reduction!r}")
        self.supervised_reduction = supervised_reduction
        self.ignore_label = ignore_label
        unsupervised = set(self.TERM_WEIGHTS) - {"pce"}
        unknown = set(term_weights or {}) - unsupervised
        if unknown:
            raise ValueError(f"{type(self).__name__} has no unsupervised term {sorted(unknown)}; "
                             f"its terms: {sorted(unsupervised)}")
        self.term_weights = {**self.TERM_WEIGHTS, **{k: float(v) for k, v in (term_weights or {}).items()}}
        self.rampup = None if rampup is None else (float(rampup[0]), float(rampup[1]))
        self.ds_weights = None if ds_weights is None else tuple(float(w) for w in ds_weights)
        # supervised term per decoder: pCE (the methods) or e.g. nnU-Net's ignore-label CE + Dice ("pl")
        self.supervised_loss = supervised_loss
        self.supervised_name = "pce" if supervised_loss is None else "pl"
        self.iteration = 0          # set by the trainer before each step (ramp-ups)
        self.last_terms: Dict[str, float] = {}

    # --- hooks -------------------------------------------------------------------------------
    def sample_iteration(self) -> dict:
        return {}

    def scale_terms(self, logits: List[torch.Tensor], target: torch.Tensor, params: dict) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def global_terms(self, outputs: List[List[torch.Tensor]]) -> Dict[str, torch.Tensor]:
        return {}

    def term_weight(self, name: str) -> float:
        if name in ("pce", "pl"):
            return 1.0
        ramp = 1.0 if self.rampup is None else sigmoid_rampup(self.iteration, *self.rampup)
        return self.term_weights[name] * ramp

    # --- shared machinery --------------------------------------------------------------------
    def supervised(self, logits: List[torch.Tensor], target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The supervised term averaged (or summed) over decoders: {"pce": ...} or {"pl": ...}."""
        if self.supervised_loss is None:
            losses = [partial_cross_entropy(z, target, self.ignore_label) for z in logits]
        else:
            losses = [self.supervised_loss(z, target) for z in logits]
        stacked = torch.stack(losses)
        return {self.supervised_name: stacked.sum() if self.supervised_reduction == "sum" else stacked.mean()}

    def _as_scales(self, outputs, targets):
        if len(outputs) != self.num_decoders:
            raise ValueError(f"{type(self).__name__} expects {self.num_decoders} decoder outputs, got {len(outputs)}")
        if isinstance(targets, torch.Tensor):  # deep supervision off
            return [[o] for o in outputs], [targets], (1.0,)
        weights = self.ds_weights if self.ds_weights is not None else (1.0,) * len(targets)
        if len(weights) != len(targets) or any(len(o) != len(targets) for o in outputs):
            raise ValueError("number of deep-supervision outputs, targets and weights differ")
        return [list(o) for o in outputs], list(targets), weights

    def forward(self, outputs, targets) -> torch.Tensor:
        outputs, targets, weights = self._as_scales(outputs, targets)
        params = self.sample_iteration()
        terms: Dict[str, torch.Tensor] = {}
        for i, (w, target) in enumerate(zip(weights, targets)):
            if w == 0:
                continue
            for name, value in self.scale_terms([o[i] for o in outputs], target, params).items():
                terms[name] = terms.get(name, 0.0) + w * value
        terms.update(self.global_terms(outputs))
        total = sum(self.term_weight(name) * value for name, value in terms.items())
        self.last_terms = {name: float(value.detach()) for name, value in terms.items()}
        return total


class DMPLSLoss(MultiDecoderScribbleLoss):
    """DMPLS (Luo et al., MICCAI 2022): 1/2 sum_k pCE(z_k) + lambda 1/2 sum_k Dice(p_k, y^),
    y^ = argmax(beta p1 + (1 - beta) p2) (detached), beta ~ U(0,1) once per iteration, lambda = 0.5."""

    TERM_WEIGHTS = {"pce": 1.0, "pseudo_dice": 0.5}

    def sample_iteration(self) -> dict:
        return {"beta": float(torch.rand(())) + 1e-10}

    def scale_terms(self, logits, target, params):
        probs = [torch.softmax(z, 1) for z in logits]
        beta = params["beta"]
        with torch.no_grad():
            pseudo = (beta * probs[0] + (1 - beta) * probs[1]).argmax(1)
        dice = torch.stack([dice_to_hard_label(p, pseudo) for p in probs]).mean()
        return {**self.supervised(logits, target), "pseudo_dice": dice}


class DMSPSLoss(MultiDecoderScribbleLoss):
    """DMSPS stage 1 (Han et al., MedIA 2024): 1/2 sum_k pCE(z_k) + lambda 1/2 sum_k CE(p_k, q),
    q = alpha p1 + (1 - alpha) p2 (detached), alpha ~ U(0,1) once per iteration, lambda = 8.
    ``double_softmax`` reproduces the reference code's CE on softmax outputs; ``options`` are the base class's
    (``supervised_loss``, ``rampup``, ``term_weights``, ``supervised_reduction``)."""

    TERM_WEIGHTS = {"pce": 1.0, "pseudo_ce": 8.0}

    def __init__(self, ignore_label: int, ds_weights=None, double_softmax: bool = False, **options):
        super().__init__(ignore_label, ds_weights, **options)
        self.double_softmax = double_softmax

    def sample_iteration(self) -> dict:
        return {"alpha": float(torch.rand(()))}

    def scale_terms(self, logits, target, params):
        alpha = params["alpha"]
        with torch.no_grad():
            probs = [torch.softmax(z, 1) for z in logits]
            q = alpha * probs[0] + (1 - alpha) * probs[1]
        ce = torch.stack([soft_cross_entropy(z, q, self.double_softmax) for z in logits]).mean()
        return {**self.supervised(logits, target), "pseudo_ce": ce}


class PSSegLoss(MultiDecoderScribbleLoss):
    """PS-Seg (Han et al., Neurocomputing 2026): mean_k pCE + w_u sig(t) USPC + w_c sig(t) CCAC.

    USPC is computed at every deep-supervision scale; CCAC, as in the paper, averages the class
    affinity consistency of the full-resolution logits and of the side outputs at 1/2, 1/4, 1/8
    (the deep-supervision heads), with equal weights. ``rampup_iterations``: sigmoid ramp-up 0 -> L;
    ``options`` are the base class's other switches (``supervised_loss``, ``term_weights``, ``supervised_reduction``).
    """

    TERM_WEIGHTS = {"pce": 1.0, "uspc": 10.0, "ccac": 0.01}
    num_decoders = 3
    num_side_outputs = 3

    def __init__(self, ignore_label: int, ds_weights=None, rampup_iterations: int = 20000, **options):
        super().__init__(ignore_label, ds_weights, rampup=(0, rampup_iterations), **options)

    def scale_terms(self, logits, target, params):
        probs = [torch.softmax(z, 1) for z in logits]
        return {**self.supervised(logits, target), "uspc": uncertainty_weighted_consistency(probs)}

    def global_terms(self, outputs):
        n_maps = min(len(outputs[0]), 1 + self.num_side_outputs)
        per_resolution = [class_affinity_consistency([o[i] for o in outputs]) for i in range(n_maps)]
        return {"ccac": torch.stack(per_resolution).mean()}
