"""Multi-decoder U-Nets over one shared nnU-Net encoder.

`MultiDecoderUNet` wraps a network built by nnU-Net's own plans mechanism (`PlainConvUNet`,
`ResidualEncoderUNet`, anything with ``.encoder`` and a ``UNetDecoder`` as ``.decoder``) and adds
auxiliary decoders that read the *same* encoder features, each optionally perturbed first
(DMPLS/DMSPS: feature dropout, PS-Seg: random-p dropout and channel-mean feature dropout).

Contract with nnU-Net (see NNUNET_NOTES §2):

* ``.encoder`` and ``.decoder`` (the main decoder) exist, so nnU-Net's plotting, checkpointing and
  ``set_deep_supervision_enabled`` keep working; auxiliary decoders live in ``.aux_decoders``.
* In ``train()`` mode the forward returns one output per decoder: ``[main, aux1, ...]``, each the
  usual nnU-Net output (a list over deep-supervision scales, or one tensor without deep supervision).
* In ``eval()`` mode (validation, final validation, ``nnUNetv2_predict``) it returns exactly what a
  plain nnU-Net network returns. With ``inference_mode="main"`` only the main decoder runs, so the
  auxiliary decoders cost nothing at inference; with ``"mean"`` it returns ``log(mean_k softmax_k)``,
  whose softmax is the decoder-averaged probability (nnU-Net applies softmax after sliding windows).
* The state-dict keys do not depend on the mode or on deep supervision, so checkpoints load strictly.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

Output = Union[torch.Tensor, List[torch.Tensor]]


def _dropout_nd(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Channel dropout matching the dimensionality of ``x`` (dropout2d for 2D maps, dropout3d for 3D)."""
    if p <= 0 or not training:
        return x
    return F.dropout2d(x, p, training) if x.ndim == 4 else F.dropout3d(x, p, training)


class FeatureDropout(nn.Module):
    """Channel dropout with a fixed probability on every encoder feature map (UNet-CCT aux decoder, p=0.5)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def forward(self, skips: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        return [_dropout_nd(s, self.p, self.training) for s in skips]


def _channel_dropout(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Channel dropout (as dropout2d/3d: whole channels zeroed, the rest scaled by 1/(1-p)) with ``p`` a 0-d
    tensor, so that ``torch.compile`` traces it in one graph whatever the value of ``p``."""
    keep = torch.rand(x.shape[:2] + (1,) * (x.ndim - 2), device=x.device) >= p
    return x * (keep.to(x.dtype) / (1 - p).to(x.dtype))


class RandomFeatureDropout(nn.Module):
    """PS-Seg aux1: channel dropout with p ~ U(low, high), drawn once per forward, rounded to 0.01.

    ``p`` stays a tensor on the features' device: a Python float would break nnU-Net's compiled graph
    (``Tensor.item()``) and make torch.compile recompile for every new value of ``p``.
    """

    def __init__(self, low: float = 0.2, high: float = 0.5):
        super().__init__()
        self.low, self.high = low, high

    def forward(self, skips: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        if not self.training:
            return list(skips)
        p = torch.round(torch.empty((), device=skips[0].device).uniform_(self.low, self.high) * 100) / 100
        return [_channel_dropout(s, p) for s in skips]


class ChannelMeanFeatureDropout(nn.Module):
    """PS-Seg aux2 ("FeatureDropout" of the reference code).

    a = channel mean of f, tau = max(a) * U(low, high) per sample, f <- f * 1[a < tau].
    Only active in training mode.
    """

    def __init__(self, low: float = 0.7, high: float = 0.9):
        super().__init__()
        self.low, self.high = low, high

    def _drop(self, f: torch.Tensor) -> torch.Tensor:
        a = f.mean(dim=1, keepdim=True)
        a_max = a.flatten(1).max(dim=1).values.view(-1, *([1] * (f.ndim - 1)))
        tau = a_max * torch.empty_like(a_max).uniform_(self.low, self.high)
        return f * (a < tau).to(f.dtype)

    def forward(self, skips: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        if not self.training:
            return list(skips)
        return [self._drop(s) for s in skips]


def _decoder_own_modules(decoder: nn.Module):
    """Modules of a UNetDecoder that belong to it, excluding the (shared) encoder it references."""
    for name, module in decoder.named_modules():
        if name != "encoder" and not name.startswith("encoder."):
            yield module


def init_decoder(decoder: nn.Module, scheme: str) -> None:
    """Re-initialise the convolutions of one decoder (never touches the shared encoder).

    ``scheme``: "kaiming" (nnU-Net's default He init, as already applied), "xavier" (xavier_normal) or
    "normal" (N(0, 0.02)); biases are zeroed. PS-Seg initialises its three decoders with these three.
    """
    if scheme == "kaiming":
        return
    for m in _decoder_own_modules(decoder):
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            if scheme == "xavier":
                nn.init.xavier_normal_(m.weight)
            elif scheme == "normal":
                nn.init.normal_(m.weight, 0.0, 0.02)
            else:
                raise ValueError(f"unknown decoder init scheme {scheme!r}")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class MultiDecoderUNet(nn.Module):
    """One encoder, a main decoder and ``len(aux_decoders)`` auxiliary decoders (see module docstring)."""

    INFERENCE_MODES = ("main", "mean")

    def __init__(self, base: nn.Module, aux_decoders: Sequence[nn.Module],
                 perturbations: Sequence[Optional[nn.Module]], inference_mode: str = "main"):
        super().__init__()
        if len(perturbations) != len(aux_decoders):
            raise ValueError("need one perturbation (or None) per auxiliary decoder")
        if inference_mode not in self.INFERENCE_MODES:
            raise ValueError(f"inference_mode must be one of {self.INFERENCE_MODES}, got {inference_mode!r}")
        self.encoder = base.encoder
        self.decoder = base.decoder
        for d in aux_decoders:
            d.encoder = self.encoder  # share, so parameters() counts the encoder once
        self.aux_decoders = nn.ModuleList(aux_decoders)
        self.perturbations = nn.ModuleList([p if p is not None else nn.Identity() for p in perturbations])
        self.inference_mode = inference_mode

    @property
    def num_decoders(self) -> int:
        return 1 + len(self.aux_decoders)

    @property
    def decoders(self) -> List[nn.Module]:
        return [self.decoder, *self.aux_decoders]

    @property
    def deep_supervision(self) -> bool:
        return self.decoder.deep_supervision

    @deep_supervision.setter
    def deep_supervision(self, enabled: bool) -> None:
        for d in self.decoders:
            d.deep_supervision = enabled

    def forward(self, x: torch.Tensor) -> Union[Output, List[Output]]:
        skips = self.encoder(x)
        main = self.decoder(skips)
        if self.training:
            return [main] + [dec(pert(skips)) for dec, pert in zip(self.aux_decoders, self.perturbations)]
        if self.inference_mode == "main":
            return main
        return mean_probability_logits([main] + [dec(skips) for dec in self.aux_decoders])

    def compute_conv_feature_map_size(self, input_size):
        """Used by nnU-Net's planners for VRAM estimates: encoder once, every decoder."""
        size = self.encoder.compute_conv_feature_map_size(input_size)
        return size + sum(d.compute_conv_feature_map_size(input_size) for d in self.decoders)


def mean_probability_logits(outputs: List[Output]) -> Output:
    """log(mean_k softmax(z_k)) per scale: logits whose softmax is the decoder-averaged probability."""
    if isinstance(outputs[0], (list, tuple)):
        return [mean_probability_logits(list(scale)) for scale in zip(*outputs)]
    log_p = torch.stack([F.log_softmax(o, dim=1) for o in outputs])
    return torch.logsumexp(log_p, dim=0) - math.log(len(outputs))


def build_multi_decoder_network(build_base: Callable[[], nn.Module], num_decoders: int,
                                perturbations: Sequence[Optional[nn.Module]],
                                decoder_inits: Sequence[str] | None = None,
                                inference_mode: str = "main") -> MultiDecoderUNet:
    """Build ``num_decoders`` decoders on one encoder.

    ``build_base`` returns a fresh nnU-Net network from the plans (e.g. ``get_network_from_plans``);
    the first one provides the encoder and main decoder, the others donate only their decoder,
    which is re-pointed at the shared encoder. This works for every architecture whose decoder is
    dynamic-network-architectures' ``UNetDecoder`` (PlainConvUNet, ResidualEncoderUNet) without
    duplicating its constructor arguments here.
    """
    if num_decoders < 2:
        raise ValueError("a multi-decoder network needs at least 2 decoders")
    base = build_base()
    if not hasattr(base, "encoder") or not hasattr(base, "decoder"):
        raise TypeError(f"{type(base).__name__} has no .encoder/.decoder; multi-decoder trainers need a "
                        f"U-Net from dynamic-network-architectures (PlainConvUNet, ResidualEncoderUNet)")
    aux = [build_base().decoder for _ in range(num_decoders - 1)]
    net = MultiDecoderUNet(base, aux, perturbations, inference_mode)
    for decoder, scheme in zip(net.decoders, decoder_inits or ["kaiming"] * num_decoders):
        init_decoder(decoder, scheme)
    return net
