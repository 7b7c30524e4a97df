"""Loss terms against hand computations, masked cases and gradient checks."""
import math

import pytest
import torch
from nnunetv2.training.loss.robust_ce_loss import RobustCrossEntropyLoss

from nnunet_scribble.losses import (DMPLSLoss, DMSPSLoss, PSSegLoss, class_affinity_consistency,
                                    dice_to_hard_label, partial_cross_entropy, sigmoid_rampup, soft_cross_entropy,
                                    uncertainty_weighted_consistency)

LN3 = math.log(3.0)


def _two_class_logits():
    # voxels: a -> logits (0, ln3): p = (1/4, 3/4); b -> (0, 0): p = (1/2, 1/2); c -> (0, 0)
    return torch.tensor([[[[0.0, 0.0, 0.0]], [[LN3, 0.0, 0.0]]]], dtype=torch.float64)  # (1, 2, 1, 3)


def test_partial_ce_hand_computed():
    z = _two_class_logits()
    target = torch.tensor([[[[1, 0, 2]]]])  # (1, 1, 1, 3); 2 = ignore
    expected = (math.log(4 / 3) + math.log(2)) / 2
    assert partial_cross_entropy(z, target, ignore_label=2).item() == pytest.approx(expected, abs=1e-12)


def test_partial_ce_matches_nnunet_robust_ce():
    torch.manual_seed(0)
    z = torch.randn(2, 4, 6, 7)
    target = torch.randint(0, 5, (2, 1, 6, 7))  # 4 = ignore
    ours = partial_cross_entropy(z, target, 4)
    theirs = RobustCrossEntropyLoss(ignore_index=4)(z, target)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)


def test_partial_ce_all_ignored_is_zero_with_zero_gradient():
    z = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 1, 4, 4), 3)
    loss = partial_cross_entropy(z, target, 3)
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))
    # plain nn.CrossEntropyLoss returns NaN here, which is why the guard exists
    assert torch.isnan(torch.nn.functional.cross_entropy(z, target[:, 0], ignore_index=3))


def test_soft_cross_entropy_and_double_softmax():
    z = torch.tensor([[[0.0], [LN3]]], dtype=torch.float64)  # (1, 2, 1): p = (1/4, 3/4)
    q = torch.tensor([[[0.5], [0.5]]], dtype=torch.float64)
    assert soft_cross_entropy(z, q).item() == pytest.approx(-(0.5 * math.log(0.25) + 0.5 * math.log(0.75)))
    lse = math.log(math.exp(0.25) + math.exp(0.75))
    expected_double = -(0.5 * (0.25 - lse) + 0.5 * (0.75 - lse))
    assert soft_cross_entropy(z, q, double_softmax=True).item() == pytest.approx(expected_double)


def test_dice_to_hard_label_hand_computed():
    p = torch.tensor([[[[0.8, 0.4]], [[0.2, 0.6]]]], dtype=torch.float64)  # (1, 2, 1, 2)
    hard = torch.tensor([[[0, 1]]])
    s = 1e-5
    class0 = 1 - (2 * 0.8 + s) / ((0.64 + 0.16) + 1 + s)
    class1 = 1 - (2 * 0.6 + s) / ((0.04 + 0.36) + 1 + s)
    assert dice_to_hard_label(p, hard).item() == pytest.approx((class0 + class1) / 2, abs=1e-12)


def test_uspc_hand_computed_and_zero_for_agreement():
    p1 = torch.tensor([[[1.0], [0.0]]], dtype=torch.float64)  # one voxel, certain class 0
    p2 = torch.tensor([[[0.0], [1.0]]], dtype=torch.float64)  # certain class 1
    a, b = 5e-4 + 0.999, 5e-4  # clamped probabilities
    kl = a * math.log(a / 0.5) + b * math.log(b / 0.5)  # both decoders have the same KL to m = (0.5, 0.5)
    assert uncertainty_weighted_consistency([p1, p2]).item() == pytest.approx(kl, rel=1e-10)
    same = torch.softmax(torch.randn(2, 3, 5, 5, dtype=torch.float64), 1)
    assert uncertainty_weighted_consistency([same, same, same]).item() == pytest.approx(0.0, abs=1e-12)


def test_uspc_weights_confident_voxels_more():
    # voxel 0: decoders disagree mildly around a confident mixture; voxel 1: uncertain mixture
    p1 = torch.tensor([[[0.9, 0.6]], [[0.1, 0.4]]], dtype=torch.float64)[None, :, 0]  # (1, 2, 2)
    p2 = torch.tensor([[[0.99, 0.4]], [[0.01, 0.6]]], dtype=torch.float64)[None, :, 0]
    value = uncertainty_weighted_consistency([p1, p2]).item()
    # by hand (probabilities clamped to 5e-4 + p (1 - 1e-3)): voxel 1's mixture is (0.5, 0.5), normalised
    # entropy 1, weight exp(-1) = 0.36788; voxel 0's mixture (0.94456, 0.05544), weight 0.73411.
    # KL(decoder 1 || mixture) = 0.015747 (voxel 0), 0.020095 (voxel 1); decoder 2: 0.028543, 0.020095.
    # loss = mean over decoders of sum_v w_v KL_v / sum_v w_v
    w = (0.7341136915192613, math.exp(-1))
    kl = ((0.01574675330486089, 0.020094987872632808), (0.028542685406712016, 0.020094987872632808))
    expected = sum(w[0] * k[0] + w[1] * k[1] for k in kl) / (w[0] + w[1]) / 2
    assert expected == pytest.approx(0.02146045549768697, rel=1e-12)
    assert value == pytest.approx(expected, rel=1e-10)
    # the confident voxel weighs more: the loss lies nearer the loss of voxel 0 alone than the plain midpoint of
    # the two single-voxel losses (which equal weights would give), all three computed by the function
    alone = [uncertainty_weighted_consistency([p1[..., v:v + 1], p2[..., v:v + 1]]).item() for v in (0, 1)]
    assert alone == pytest.approx([(kl[0][0] + kl[1][0]) / 2, (kl[0][1] + kl[1][1]) / 2], rel=1e-10)
    assert alone[1] < (alone[0] + alone[1]) / 2 + 1e-4 < value < alone[0]
    # decoders that agree cost nothing
    assert uncertainty_weighted_consistency([p1, p1]).item() == pytest.approx(0.0, abs=1e-12)


def test_ccac_identity_and_swapped_classes():
    z1 = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]])  # (1, 2, 4): spatially orthogonal classes
    z2 = z1[:, [1, 0]]  # classes swapped -> affinity [[0, 1], [1, 0]]
    assert class_affinity_consistency([z1, z1, z1]).item() == pytest.approx(0.0, abs=1e-7)
    assert class_affinity_consistency([z1, z2]).item() == pytest.approx(1.0, abs=1e-7)
    # 3 decoders, z3 = z1: pairs (1,2),(2,1),(2,3),(3,2) give 1, pairs (1,3),(3,1) give 0 -> 4/6
    assert class_affinity_consistency([z1, z2, z1]).item() == pytest.approx(4 / 6, abs=1e-7)


def test_sigmoid_rampup_values():
    assert sigmoid_rampup(0, 0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 0, 100) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(100, 0, 100) == 1.0 and sigmoid_rampup(500, 0, 100) == 1.0
    assert sigmoid_rampup(3, 0, 0) == 1.0


@pytest.mark.parametrize("fn", [
    lambda z: partial_cross_entropy(z, torch.tensor([[[[1, 0, 2, 0]]]]), 3),
    lambda z: soft_cross_entropy(z, torch.softmax(torch.ones_like(z), 1)),
    lambda z: soft_cross_entropy(z, torch.softmax(torch.ones_like(z), 1), double_softmax=True),
    lambda z: dice_to_hard_label(torch.softmax(z, 1), torch.tensor([[[0, 1, 2, 1]]])),
    lambda z: uncertainty_weighted_consistency([torch.softmax(z, 1), torch.softmax(z.flip(3), 1),
                                                torch.softmax(2 * z, 1)]),
    lambda z: class_affinity_consistency([z, z.flip(3), z * z]),
], ids=["pce", "soft_ce", "soft_ce_double", "dice", "uspc", "ccac"])
def test_gradcheck(fn):
    torch.manual_seed(0)
    z = torch.randn(1, 3, 1, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (z,), eps=1e-6, atol=1e-5)


def _ds_outputs(num_decoders, seed=0):
    torch.manual_seed(seed)
    outs = [[torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True),
             torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)] for _ in range(num_decoders)]
    t0 = torch.full((2, 1, 8, 8), 3)
    t0[:, :, 2, 1:6] = 1
    t0[:, :, 6, :] = 0
    t1 = torch.full((2, 1, 4, 4), 3)  # scribbles vanished at the low scale
    return outs, [t0, t1]


def test_dmpls_loss_matches_hand_assembly_and_survives_empty_scale():
    outs, targets = _ds_outputs(2)
    loss = DMPLSLoss(3, ds_weights=(2 / 3, 1 / 3))
    loss.sample_iteration = lambda: {"beta": 0.3}
    value = loss(outs, targets)
    expected = 0
    for w, i in ((2 / 3, 0), (1 / 3, 1)):
        p = [torch.softmax(o[i], 1) for o in outs]
        pseudo = (0.3 * p[0] + 0.7 * p[1]).argmax(1)
        pce = (partial_cross_entropy(outs[0][i], targets[i], 3) + partial_cross_entropy(outs[1][i], targets[i], 3)) / 2
        dice = (dice_to_hard_label(p[0], pseudo) + dice_to_hard_label(p[1], pseudo)) / 2
        expected = expected + w * (pce + 0.5 * dice)
    assert torch.isfinite(value)
    assert value.item() == pytest.approx(expected.item(), rel=1e-10)
    assert set(loss.last_terms) == {"pce", "pseudo_dice"}
    value.backward()
    assert all(torch.isfinite(o.grad).all() for d in outs for o in d)


def test_dmsps_loss_lambda_and_double_softmax():
    outs, targets = _ds_outputs(2)
    for double in (False, True):
        loss = DMSPSLoss(3, ds_weights=(1.0, 0.0), double_softmax=double)
        loss.sample_iteration = lambda: {"alpha": 0.25}
        value = loss(outs, targets)
        p = [torch.softmax(o[0], 1).detach() for o in outs]
        q = 0.25 * p[0] + 0.75 * p[1]
        pce = (partial_cross_entropy(outs[0][0], targets[0], 3) + partial_cross_entropy(outs[1][0], targets[0], 3)) / 2
        ce = (soft_cross_entropy(outs[0][0], q, double) + soft_cross_entropy(outs[1][0], q, double)) / 2
        assert value.item() == pytest.approx((pce + 8 * ce).item(), rel=1e-10)
        # the mixture is a target: no gradient flows through q (stop-gradient), so the gradients equal those of
        # the hand assembly with q detached, and differ from those with q attached
        leaves = [o[0] for o in outs]
        got = torch.autograd.grad(value, leaves)
        want = torch.autograd.grad(pce + 8 * ce, leaves, retain_graph=True)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
        p_att = [torch.softmax(o[0], 1) for o in outs]
        q_att = 0.25 * p_att[0] + 0.75 * p_att[1]
        ce_att = (soft_cross_entropy(outs[0][0], q_att, double) + soft_cross_entropy(outs[1][0], q_att, double)) / 2
        attached = torch.autograd.grad(pce + 8 * ce_att, leaves)
        assert not torch.allclose(got[0], attached[0], rtol=1e-6, atol=1e-9)


def test_psseg_rampup_and_terms():
    outs, targets = _ds_outputs(3)
    loss = PSSegLoss(3, ds_weights=(2 / 3, 1 / 3), rampup_iterations=100)
    loss.iteration = 0
    v0 = loss(outs, targets)
    terms = loss.last_terms
    ramp0 = math.exp(-5)
    assert v0.item() == pytest.approx(terms["pce"] + ramp0 * (10 * terms["uspc"] + 0.01 * terms["ccac"]), rel=1e-9)
    ccac = (class_affinity_consistency([o[0] for o in outs]) + class_affinity_consistency([o[1] for o in outs])) / 2
    assert terms["ccac"] == pytest.approx(ccac.item(), rel=1e-10)
    # pCE (mean over the 3 decoders) and USPC at each deep-supervision scale, with the weights 2/3 and 1/3;
    # the low scale has no scribble: its pCE is 0 (not NaN), its USPC still counts
    pce = sum(partial_cross_entropy(o[0], targets[0], 3) for o in outs) / 3
    assert partial_cross_entropy(outs[0][1], targets[1], 3).item() == 0.0
    assert terms["pce"] == pytest.approx(2 / 3 * pce.item(), rel=1e-10)
    uspc = [uncertainty_weighted_consistency([torch.softmax(o[i], 1) for o in outs]) for i in (0, 1)]
    assert terms["uspc"] == pytest.approx((2 / 3 * uspc[0] + 1 / 3 * uspc[1]).item(), rel=1e-10)
    loss.iteration = 100
    v1 = loss(outs, targets)
    assert v1.item() == pytest.approx(terms["pce"] + 10 * terms["uspc"] + 0.01 * terms["ccac"], rel=1e-9)


def test_multi_decoder_loss_rejects_wrong_decoder_count():
    outs, targets = _ds_outputs(2)
    with pytest.raises(ValueError, match="expects 3 decoder outputs"):
        PSSegLoss(3, ds_weights=(0.5, 0.5))(outs, targets)


def test_multi_decoder_loss_without_deep_supervision():
    outs, targets = _ds_outputs(2)
    loss = DMSPSLoss(3)
    loss.sample_iteration = lambda: {"alpha": 0.6}
    value = loss([o[0] for o in outs], targets[0])
    # without deep supervision the loss is the full-resolution term alone, weight 1
    q = 0.6 * torch.softmax(outs[0][0], 1).detach() + 0.4 * torch.softmax(outs[1][0], 1).detach()
    pce = sum(partial_cross_entropy(o[0], targets[0], 3) for o in outs) / 2
    ce = sum(soft_cross_entropy(o[0], q, False) for o in outs) / 2
    assert value.item() == pytest.approx((pce + 8 * ce).item(), rel=1e-10)


@pytest.mark.parametrize("make", [lambda r: DMPLSLoss(3, ds_weights=(2 / 3, 1 / 3), rampup=r),
                                  lambda r: DMSPSLoss(3, ds_weights=(2 / 3, 1 / 3), double_softmax=True, rampup=r)])
def test_pseudo_term_rampup(make):
    """rampup=(a, b): the pseudo-label term gets sig(t; a, b) (exp(-5) before a, exp(-1.25) half way, 1 after b);
    the supervised term is never ramped."""
    outs, targets = _ds_outputs(2)
    values = {}
    for t in (0, 20, 30, 40, 1000):
        loss = make((20, 40))
        loss.sample_iteration = lambda: {"beta": 0.3, "alpha": 0.3}
        loss.iteration = t
        values[t] = (loss(outs, targets).item(), dict(loss.last_terms))
    (name, lam), = [(k, w) for k, w in type(loss).TERM_WEIGHTS.items() if k != "pce"]
    for t, ramp in ((0, math.exp(-5)), (20, math.exp(-5)), (30, math.exp(-1.25)), (40, 1.0), (1000, 1.0)):
        value, terms = values[t]
        assert value == pytest.approx(terms["pce"] + ramp * lam * terms[name], rel=1e-10)
    constant = make(None)
    constant.sample_iteration = lambda: {"beta": 0.3, "alpha": 0.3}
    constant.iteration = 0
    assert constant(outs, targets).item() == pytest.approx(values[1000][0], rel=1e-10)


def test_trainer_pseudo_rampup_scales_with_run_length():
    from nnunet_scribble.trainers import (PYMIC_RAMPUP, nnUNetTrainerDMSPS_cpu, nnUNetTrainerDMSPS_pLDice_ramp_cpu,
                                          nnUNetTrainerDMPLS_ramp_tiny)
    assert PYMIC_RAMPUP == pytest.approx((1 / 30, 1 / 4))
    t = object.__new__(nnUNetTrainerDMSPS_pLDice_ramp_cpu)
    t.num_epochs, t.num_iterations_per_epoch = 40, 25
    assert t.pseudo_rampup() == pytest.approx((1000 / 30, 250))
    assert t.SUPERVISED == "pl" and t.double_softmax
    t = object.__new__(nnUNetTrainerDMPLS_ramp_tiny)
    t.num_epochs, t.num_iterations_per_epoch = 2, 4
    assert t.pseudo_rampup() == pytest.approx((8 / 30, 2))
    assert object.__new__(nnUNetTrainerDMSPS_cpu).pseudo_rampup() is None


def test_term_weights_override_only_the_named_unsupervised_term():
    """term_weights={"pseudo_dice": 2}: same terms, total = pce + 2 * pseudo_dice (published: 0.5); PS-Seg keeps
    the weights it is not given; an unknown or supervised term name is refused."""
    outs, targets = _ds_outputs(2)
    default, heavy = DMPLSLoss(3, ds_weights=(2 / 3, 1 / 3)), DMPLSLoss(3, ds_weights=(2 / 3, 1 / 3),
                                                                         term_weights={"pseudo_dice": 2})
    for loss in (default, heavy):
        loss.sample_iteration = lambda: {"beta": 0.3}
    d, h = default(outs, targets).item(), heavy(outs, targets).item()
    assert heavy.last_terms == pytest.approx(default.last_terms, rel=1e-12)
    t = default.last_terms
    assert d == pytest.approx(t["pce"] + 0.5 * t["pseudo_dice"], rel=1e-10)
    assert h == pytest.approx(t["pce"] + 2.0 * t["pseudo_dice"], rel=1e-10)
    assert DMPLSLoss.TERM_WEIGHTS["pseudo_dice"] == 0.5  # the class default is untouched
    ps = PSSegLoss(3, rampup_iterations=1, term_weights={"uspc": 3})
    ps.iteration = 10 ** 6
    assert ps.term_weight("uspc") == pytest.approx(3.0) and ps.term_weight("ccac") == pytest.approx(0.01)
    with pytest.raises(ValueError, match="no unsupervised term"):
        DMSPSLoss(3, term_weights={"pseudo_dice": 1.0})
    with pytest.raises(ValueError, match="no unsupervised term"):
        DMPLSLoss(3, term_weights={"pce": 1.0})


def test_dmpls_pseudo_weight_trainers_build_their_weight():
    from types import SimpleNamespace
    from nnunet_scribble.trainers import nnUNetTrainerDMPLS, nnUNetTrainerDMPLS_pw2_cpu3k, nnUNetTrainerDMPLS_pw5
    for cls, w in ((nnUNetTrainerDMPLS, 0.5), (nnUNetTrainerDMPLS_pw2_cpu3k, 2.0), (nnUNetTrainerDMPLS_pw5, 5.0)):
        t = object.__new__(cls)
        t.label_manager = SimpleNamespace(ignore_label=3)
        loss = t.build_method_loss((1.0,))
        assert isinstance(loss, DMPLSLoss) and loss.term_weight("pseudo_dice") == w and loss.term_weight("pce") == 1


def test_summed_supervised_term_gives_every_decoder_the_full_pce_gradient():
    # pCE-only check on two decoders: "mean" (published) = (pCE1 + pCE2) / 2, "sum" = pCE1 + pCE2; with the
    # pseudo-label weight 0 each decoder's gradient is 1/2 resp. all of its own pCE gradient
    outs, targets = _ds_outputs(2)
    grads = {}
    for reduction in ("mean", "sum"):
        leaves = [[o.detach().clone().requires_grad_(True) for o in d] for d in outs]
        loss = DMPLSLoss(3, ds_weights=(1.0, 0.0), term_weights={"pseudo_dice": 0.0}, supervised_reduction=reduction)
        value = loss(leaves, targets)
        pce = [partial_cross_entropy(d[0].detach(), targets[0], 3) for d in leaves]
        assert value.item() == pytest.approx(((pce[0] + pce[1]) / (2 if reduction == "mean" else 1)).item(), rel=1e-10)
        assert loss.last_terms["pce"] == pytest.approx(value.item(), rel=1e-10)
        value.backward()
        grads[reduction] = [d[0].grad for d in leaves]
    for k in range(2):
        own = outs[k][0].detach().clone().requires_grad_(True)
        partial_cross_entropy(own, targets[0], 3).backward()
        assert torch.allclose(grads["sum"][k], own.grad, atol=1e-12)
        assert torch.allclose(grads["mean"][k], own.grad / 2, atol=1e-12)
        assert own.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="'mean' or 'sum'"):
        DMPLSLoss(3, supervised_reduction="max")


def test_sumsup_trainers_build_summed_losses():
    from types import SimpleNamespace
    from nnunet_scribble.trainers import (nnUNetTrainerDMPLS, nnUNetTrainerDMPLS_sumSup_cpu3k, nnUNetTrainerPSSeg,
                                          nnUNetTrainerPSSeg_sumSup)
    for cls, reduction, loss_cls in ((nnUNetTrainerDMPLS, "mean", DMPLSLoss),
                                     (nnUNetTrainerDMPLS_sumSup_cpu3k, "sum", DMPLSLoss),
                                     (nnUNetTrainerPSSeg, "mean", PSSegLoss), (nnUNetTrainerPSSeg_sumSup, "sum", PSSegLoss)):
        t = object.__new__(cls)
        t.label_manager = SimpleNamespace(ignore_label=3)
        t.num_epochs, t.num_iterations_per_epoch = 10, 10
        loss = t.build_method_loss((1.0,))
        assert isinstance(loss, loss_cls) and loss.supervised_reduction == reduction
        # the method's own weights are untouched
        assert loss.term_weights == loss_cls.TERM_WEIGHTS


def test_every_method_trainer_passes_its_switches_to_its_loss():
    """SUPERVISED, PSEUDO_WEIGHTS and SUPERVISED_REDUCTION reach DMPLS's, DMSPS's and PS-Seg's loss alike (one
    trainer helper gathers them); the method's own arguments (double softmax, PS-Seg's ramp) stay its own."""
    from types import SimpleNamespace
    from nnunet_scribble.trainers import nnUNetTrainerDMPLS, nnUNetTrainerDMSPS, nnUNetTrainerPSSeg
    sentinel = torch.nn.Identity()
    for base, loss_cls, term in ((nnUNetTrainerDMPLS, DMPLSLoss, "pseudo_dice"),
                                 (nnUNetTrainerDMSPS, DMSPSLoss, "pseudo_ce"), (nnUNetTrainerPSSeg, PSSegLoss, "uspc")):
        variant = type("Variant", (base,), {"PSEUDO_WEIGHTS": {term: 0.25}, "SUPERVISED_REDUCTION": "sum"})
        t = object.__new__(variant)
        t.label_manager = SimpleNamespace(ignore_label=3)
        t.num_epochs, t.num_iterations_per_epoch = 3, 10
        t.supervised_loss = lambda: sentinel
        loss = t.build_method_loss((0.5, 0.5))
        assert type(loss) is loss_cls and loss.supervised_loss is sentinel and loss.supervised_name == "pl"
        assert loss.supervised_reduction == "sum" and loss.term_weights[term] == 0.25
        assert loss.ds_weights == (0.5, 0.5) and loss.ignore_label == 3
    assert t.build_method_loss(None).rampup == (0.0, 10.0)  # PS-Seg: a third of the 30 iterations
    dmsps = object.__new__(nnUNetTrainerDMSPS)
    dmsps.label_manager = SimpleNamespace(ignore_label=3)
    loss = dmsps.build_method_loss(None)
    assert loss.double_softmax is True and loss.supervised_loss is None and loss.supervised_reduction == "mean"
