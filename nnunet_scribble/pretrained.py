"""``-pretrained_weights`` for multi-decoder networks.

nnU-Net's ``load_pretrained_weights`` requires every key of the network (except ``.seg_layers.``) to
exist in the checkpoint, which a plain nnU-Net checkpoint cannot satisfy for the auxiliary decoders.
``install_pretrained_weights_hook`` (called by the multi-decoder trainers' ``initialize``) wraps the
function that ``nnUNetv2_train -pretrained_weights`` calls: for a ``MultiDecoderUNet`` and a plain
checkpoint, the encoder and the main decoder load from their own keys and every auxiliary decoder
loads the plain decoder's weights (``aux_decoders.i.X`` <- ``decoder.X``). A multi-decoder checkpoint goes to
nnU-Net's own function (which, like the plain mapping, does not transfer the segmentation layers), unless the
network's ``pretrained_includes_seg_layers`` is set (trainers with ``PRETRAINED_INCLUDES_SEG_LAYERS``, e.g.
``nnUNetTrainerDMSPS_finetune``): then the checkpoint must hold exactly the network's keys and shapes and loads
completely, segmentation layers included (fine-tuning on the same label set). Anything else is passed to nnU-Net's
original function unchanged.
"""
from __future__ import annotations

import torch
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel as DDP

SKIP = (".seg_layers.",)


def unwrap_network(network):
    """The module under DDP's ``.module`` and torch.compile's ``._orig_mod`` wrappers."""
    mod = network.module if isinstance(network, DDP) else network
    return mod._orig_mod if isinstance(mod, OptimizedModule) else mod


def plain_to_multi_decoder_state_dict(model_state: dict, pretrained: dict, skip=SKIP) -> dict:
    """Return ``model_state`` updated from a plain nnU-Net state dict (keys containing a ``skip`` string, by
    default the seg layers, are not transferred)."""
    new_state = dict(model_state)
    for key, value in model_state.items():
        if any(s in key for s in skip):
            continue
        source = key
        if key.startswith("aux_decoders."):
            source = "decoder." + key.split(".", 2)[2]
        if source not in pretrained:
            raise KeyError(f"pretrained checkpoint has no key {source!r} (needed for {key!r}); it does not come "
                           f"from a network with the same plans configuration")
        if pretrained[source].shape != value.shape:
            raise ValueError(f"shape of {source!r} in the pretrained checkpoint {tuple(pretrained[source].shape)} "
                             f"differs from {key!r} {tuple(value.shape)}")
        new_state[key] = pretrained[source]
    return new_state


def load_pretrained_multi_decoder(network, fname: str, verbose: bool = False) -> None:
    from nnunet_scribble.networks import MultiDecoderUNet

    mod = unwrap_network(network)
    if not isinstance(mod, MultiDecoderUNet):
        raise TypeError("load_pretrained_multi_decoder needs a MultiDecoderUNet")
    pretrained = torch.load(fname, map_location="cpu", weights_only=False)["network_weights"]
    with_seg = bool(getattr(mod, "pretrained_includes_seg_layers", False))
    if any(k.startswith("aux_decoders.") for k in pretrained):
        if with_seg:
            mod.load_state_dict(same_network_state_dict(mod.state_dict(), pretrained))
            mod.pretrained_from = fname
            print(f"Loaded the complete network (segmentation layers included) from {fname}")
            return
        from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
        return load_pretrained_weights(network, fname, verbose)
    mod.load_state_dict(plain_to_multi_decoder_state_dict(mod.state_dict(), pretrained, () if with_seg else SKIP))
    mod.pretrained_from = fname
    print(f"Loaded pretrained weights from {fname} into the encoder and all {mod.num_decoders} decoders"
          + (" (segmentation layers included)" if with_seg else ""))


def same_network_state_dict(model_state: dict, pretrained: dict) -> dict:
    """``pretrained`` if it has exactly the keys and shapes of ``model_state`` (else a clear error)."""
    missing = sorted(set(model_state) - set(pretrained))
    unexpected = sorted(set(pretrained) - set(model_state))
    if missing or unexpected:
        raise KeyError(f"the pretrained checkpoint is not a checkpoint of this network: missing keys {missing[:3]}, "
                       f"unexpected keys {unexpected[:3]} (same trainer family, plans configuration and decoders?)")
    for key, value in model_state.items():
        if pretrained[key].shape != value.shape:
            raise ValueError(f"shape of {key!r} in the pretrained checkpoint {tuple(pretrained[key].shape)} differs "
                             f"from the network's {tuple(value.shape)} (another label set or plans configuration?)")
    return pretrained


def install_pretrained_weights_hook() -> None:
    """Route ``nnUNetv2_train -pretrained_weights`` through ``load_pretrained_multi_decoder`` for our networks."""
    import nnunetv2.run.run_training as run_training
    from nnunet_scribble.networks import MultiDecoderUNet

    original = run_training.load_pretrained_weights
    if getattr(original, "_nnunet_scribble", False):
        return

    def load_pretrained_weights(network, fname, verbose=False):
        if isinstance(unwrap_network(network), MultiDecoderUNet):
            return load_pretrained_multi_decoder(network, fname, verbose)
        return original(network, fname, verbose)

    load_pretrained_weights._nnunet_scribble = True
    run_training.load_pretrained_weights = load_pretrained_weights
