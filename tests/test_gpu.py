"""The losses and multi-decoder networks on a CUDA GPU: same values and gradients as on the CPU, and finite
under nnU-Net's mixed precision (its train_step runs the network and the loss inside ``torch.autocast``).

Skipped where no CUDA GPU is visible (CI has none); ``benchmarks/gpu_check.sh`` runs it on a GPU machine,
together with ``NNUNET_SCRIBBLE_TEST_DEVICE=cuda`` for the real nnU-Net commands in test_nnunet_commands.py.
"""
import numpy as np
import pytest
import torch

from nnunet_scribble.losses import DMPLSLoss, DMSPSLoss, PSSegLoss
from test_losses import _ds_outputs
from test_networks import ARCHS, _input, multi

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA GPU visible (CI has none; benchmarks/gpu_check.sh runs these on one)")


def _loss(name):
    """Each method's loss with its per-iteration random draw fixed, so CPU and GPU see the same function."""
    if name == "DMPLS":
        loss = DMPLSLoss(3, ds_weights=(2 / 3, 1 / 3))
        loss.sample_iteration = lambda: {"beta": 0.3}
    elif name == "DMSPS":
        loss = DMSPSLoss(3, ds_weights=(2 / 3, 1 / 3))
        loss.sample_iteration = lambda: {"alpha": 0.25}
    else:
        loss = PSSegLoss(3, ds_weights=(2 / 3, 1 / 3), rampup_iterations=100)
        loss.iteration = 50
    return loss


def _on(outs, targets, device, dtype=torch.float64):
    outs = [[o.detach().to(device, dtype).requires_grad_(True) for o in d] for d in outs]
    return outs, [t.to(device) for t in targets]


def _scribble_ds_targets(patch, dtype=torch.int64):
    """Two scribbled lines and a background line (ignore = 3 elsewhere) at the 2d network's three
    deep-supervision scales."""
    target = torch.full((2, 1, *patch), 3, dtype=dtype)
    target[:, :, 10:12, 4:28] = 1
    target[:, :, 20:22, 4:28] = 2
    target[:, :, 2, :] = 0
    return [target, target[..., ::2, ::2], target[..., ::4, ::4]]


@pytest.mark.parametrize("name, k", [("DMPLS", 2), ("DMSPS", 2), ("PSSeg", 3)])
def test_losses_and_gradients_on_gpu_equal_cpu(name, k):
    # _ds_outputs: the low-resolution scale has no scribble at all (the empty-scale case)
    outs, targets = _ds_outputs(k)
    values, grads = {}, {}
    for device in ("cpu", "cuda"):
        o, t = _on(outs, targets, device)
        loss = _loss(name)
        value = loss(o, t)
        value.backward()
        values[device] = (value.item(), dict(loss.last_terms))
        grads[device] = [x.grad.cpu() for d in o for x in d]
    assert values["cuda"][0] == pytest.approx(values["cpu"][0], rel=1e-9)
    for term, v in values["cpu"][1].items():
        assert values["cuda"][1][term] == pytest.approx(v, rel=1e-9, abs=1e-12), term
    for g_cpu, g_gpu in zip(grads["cpu"], grads["cuda"]):
        assert torch.allclose(g_gpu, g_cpu, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("name, k", [("DMPLS", 2), ("DMSPS", 2), ("PSSeg", 3)])
def test_losses_under_autocast_are_finite_and_close_to_float32(name, k):
    # logits of the size a trained network produces, in float16 as nnU-Net's autocast gives them to the loss
    outs, targets = _ds_outputs(k, seed=3)
    outs = [[o.detach() * 8 for o in d] for d in outs]
    o32, t = _on(outs, targets, "cuda", torch.float32)
    ref = _loss(name)(o32, t).item()
    o16, t = _on(outs, targets, "cuda", torch.float16)
    with torch.autocast("cuda", dtype=torch.float16):
        value = _loss(name)(o16, t)
    value.backward()
    assert torch.isfinite(value)
    assert value.item() == pytest.approx(ref, rel=2e-2)
    assert all(torch.isfinite(x.grad).all() for d in o16 for x in d)


@pytest.mark.parametrize("name", list(ARCHS))
def test_multi_decoder_network_on_gpu_equals_cpu(name):
    _, _, patch = ARCHS[name]
    x = _input(patch)
    # "mean" inference runs every decoder; the decoders are initialised differently
    cpu = multi(name, k=3, deep_supervision=True, inference_mode="mean").eval()
    gpu = multi(name, k=3, deep_supervision=True, inference_mode="mean", seed=1).eval().cuda()
    gpu.load_state_dict(cpu.state_dict(), strict=True)
    # full float32 convolutions on the GPU too (Ampere/Hopper would otherwise use TF32)
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        a, b = cpu(x), gpu(x.cuda())
    for ya, yb in zip(a, b):
        assert yb.device.type == "cuda"
        assert torch.allclose(yb.cpu(), ya, rtol=1e-3, atol=1e-3)


def test_multi_decoder_training_step_on_gpu_with_grad_scaler():
    # nnU-Net's train_step on CUDA: autocast forward + loss, GradScaler backward, clip, step
    torch.manual_seed(0)
    net = multi("2d", k=3, deep_supervision=True).train().cuda()
    _, _, patch = ARCHS["2d"]
    x = _input(patch, batch=2).cuda()
    targets = [t.cuda() for t in _scribble_ds_targets(patch)]
    loss_fn = PSSegLoss(3, ds_weights=(4 / 7, 2 / 7, 1 / 7), rampup_iterations=10)
    loss_fn.iteration = 10
    opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    # nnU-Net's GradScaler starts at 2**16 and skips the first steps while it backs off; start lower here
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 8)
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    losses = []
    for _ in range(5):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16):
            loss = loss_fn(net(x), targets)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert scaler.get_scale() == 2.0 ** 8, "the GradScaler skipped steps: non-finite gradients"
    after = net.state_dict()
    changed = [k for k in before if before[k].dtype.is_floating_point and not torch.equal(before[k], after[k])]
    assert any(k.startswith("aux_decoders.0.") for k in changed) and any(k.startswith("aux_decoders.1.") for k in changed)
    assert any(k.startswith("encoder.") for k in changed)


@pytest.mark.parametrize("trainer_name", ["nnUNetTrainerDMPLS_tiny", "nnUNetTrainerDMSPS_tiny", "nnUNetTrainerPSSeg_tiny"])
def test_trainer_train_and_validation_step_on_gpu(trainer_name, tmp_path, monkeypatch):
    # our trainers' hooks around nnU-Net's own train_step / validation_step (autocast, GradScaler, the
    # validation-loss swap, per-term logging), on the GPU, in-process: no data loader, no subprocess
    import nnunet_scribble.trainers as trainers
    from test_networks import small_plans
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))   # nnU-Net 2.8.1 reads its paths lazily
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    monkeypatch.setenv("nnUNet_compile", "f")   # on CUDA nnU-Net would torch.compile the network (keys _orig_mod.*)
    plans = small_plans()
    plans["continue_training"] = False   # nnU-Net 2.8.1 pops this key in __init__
    # initialize() infers nnU-Net's dataset class from the file endings in the data folder; no case is loaded
    data_folder = tmp_path / "preprocessed" / plans["dataset_name"] / "nnUNetPlans_x"
    data_folder.mkdir(parents=True)
    (data_folder / "case.b2nd").touch()
    dataset_json = {"labels": {"background": 0, "a": 1, "b": 2, "ignore": 3}, "channel_names": {"0": "x"},
                    "numTraining": 2, "file_ending": ".nii.gz"}
    trainer = getattr(trainers, trainer_name)(plans, "2d_tiny", 0, dataset_json, torch.device("cuda"))
    trainer.initialize()
    trainer.on_train_epoch_start()
    _, _, patch = ARCHS["2d"]
    g = torch.Generator().manual_seed(0)
    batch = {"data": torch.randn(2, 1, *patch, generator=g),
             "target": _scribble_ds_targets(patch, torch.float32)}   # nnU-Net's batches carry float targets
    before = {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}
    out = trainer.train_step(batch)
    assert np.isfinite(out["loss"])
    terms = {k for k in out if k.startswith("loss_")}
    assert terms and all(np.isfinite(out[k]) for k in terms)
    assert trainer.loss.iteration == 0 and next(trainer.network.parameters()).device.type == "cuda"
    def aux_changed():
        after = trainer.network.state_dict()
        return any(not torch.equal(before[k], after[k]) for k in before if k.startswith("aux_decoders."))
    for _ in range(20):   # nnU-Net's GradScaler (initial scale 2**16) skips steps until it has backed off
        if aux_changed():
            break
        trainer.train_step(batch)
    assert aux_changed()
    trainer.network.eval()
    val = trainer.validation_step(batch)
    assert np.isfinite(val["loss"]) and len(val["tp_hard"]) == 2     # pCE of the main decoder; classes a, b
    assert type(trainer.loss).__name__.endswith("Loss") and trainer.loss is not trainer.validation_loss
