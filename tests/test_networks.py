"""Multi-decoder networks built the way nnU-Net builds networks (plans -> get_network_from_plans), their
perturbations, pretrained-weight mapping, scribble-preserving deep-supervision targets and dataset checks.

Everything here runs on tiny networks on the CPU (a few seconds in total).
"""
import copy
import inspect

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_scribble.dataset_checks import (ScribbleDatasetError, check_ignore_label, check_scribble_array,
                                            check_scribble_cases)
from nnunet_scribble.networks import (ChannelMeanFeatureDropout, FeatureDropout, MultiDecoderUNet,
                                      RandomFeatureDropout, build_multi_decoder_network, init_decoder)
from nnunet_scribble.pretrained import load_pretrained_multi_decoder, plain_to_multi_decoder_state_dict
from nnunet_scribble.trainers import (nnUNetTrainerDMSPS, nnUNetTrainerDMSPS_avg_tiny, nnUNetTrainerPSSeg,
                                      nnUNetTrainerPSSeg_tiny)
from nnunet_scribble.transforms import ScribblePreservingDownsampleSegForDS

REQ_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]
NUM_CLASSES = 3


def _common_kwargs(dim):
    return {
        "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
        "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }


# 2D: 4 stages, patch 32x32 -> deep-supervision outputs at 32, 16, 8
ARCH_2D = {"n_stages": 4, "features_per_stage": [4, 8, 16, 16], "kernel_sizes": [[3, 3]] * 4,
           "strides": [[1, 1], [2, 2], [2, 2], [2, 2]], "n_conv_per_stage": [2, 2, 2, 2],
           "n_conv_per_stage_decoder": [1, 1, 1], **_common_kwargs(2)}
PATCH_2D = (32, 32)
# 3D, anisotropic first pooling like nnU-Net plans for thick slices: patch 8x16x16 -> outputs at 8x16x16, 8x8x8
ARCH_3D = {"n_stages": 3, "features_per_stage": [4, 8, 16], "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
           "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]], "n_conv_per_stage": [1, 1, 1],
           "n_conv_per_stage_decoder": [1, 1], **_common_kwargs(3)}
PATCH_3D = (8, 16, 16)
# ResidualEncoderUNet (nnU-Net ResEnc presets), 2D
ARCH_RES = {"n_stages": 3, "features_per_stage": [4, 8, 16], "kernel_sizes": [[3, 3]] * 3,
            "strides": [[1, 1], [2, 2], [2, 2]], "n_blocks_per_stage": [1, 2, 2],
            "n_conv_per_stage_decoder": [1, 1], **_common_kwargs(2)}
PLAIN = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESENC = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"

ARCHS = {"2d": (PLAIN, ARCH_2D, PATCH_2D), "3d": (PLAIN, ARCH_3D, PATCH_3D), "resenc": (RESENC, ARCH_RES, PATCH_2D)}


def expected_ds_shapes(arch, patch):
    """Spatial shapes of nnU-Net's deep-supervision outputs: full, then one per pooling, n_stages-1 in total."""
    shapes, size = [], list(patch)
    for stride in arch["strides"][:-1]:
        size = [s // k for s, k in zip(size, stride)]
        shapes.append(tuple(size))
    return shapes


def plain_builder(name, deep_supervision=True, in_ch=1):
    cls, arch, _ = ARCHS[name]
    return lambda: get_network_from_plans(cls, arch, REQ_IMPORT, in_ch, NUM_CLASSES, allow_init=True,
                                          deep_supervision=deep_supervision)


def multi(name, k=3, deep_supervision=True, inference_mode="main", perturbations=None, inits=None, seed=0):
    torch.manual_seed(seed)
    perts = perturbations if perturbations is not None else [FeatureDropout(0.5) for _ in range(k - 1)]
    return build_multi_decoder_network(plain_builder(name, deep_supervision), k, perts, inits, inference_mode)


def _input(patch, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, *patch, generator=g)


def own_params(decoder):
    """Parameters of a UNetDecoder that belong to it (its shared `encoder.` submodule excluded)."""
    return {k: v for k, v in decoder.named_parameters() if not k.startswith("encoder.")}


# ------------------------------------------------------------------------------------------------------------------
# plans for the trainers' build_network_architecture (the same structure nnUNetv2_plan_and_preprocess writes)
# ------------------------------------------------------------------------------------------------------------------
def small_plans():
    def config(arch, patch):
        return {"data_identifier": "nnUNetPlans_x", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
                "patch_size": list(patch), "median_image_size_in_voxels": list(patch),
                "spacing": [1.0] * len(patch), "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [False], "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                       "force_separate_z": None},
                "batch_dice": True,
                "architecture": {"network_class_name": PLAIN, "arch_kwargs": copy.deepcopy(arch),
                                 "_kw_requires_import": REQ_IMPORT}}

    big_2d = dict(copy.deepcopy(ARCH_2D), features_per_stage=[16, 32, 64, 64])
    return {"dataset_name": "Dataset999_Toy", "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
            "original_median_shape_after_transp": [8, 32, 32], "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {},
            "configurations": {
                "2d": config(big_2d, PATCH_2D),
                # what `nnunet_scribble add-configs --preset tiny` adds: inherits everything, smaller widths
                "2d_tiny": {"inherits_from": "2d", "batch_size": 2,
                            "architecture": {"network_class_name": PLAIN, "arch_kwargs": copy.deepcopy(ARCH_2D),
                                             "_kw_requires_import": REQ_IMPORT}},
                "3d_fullres": config(ARCH_3D, PATCH_3D)}}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # tiny networks: thread start-up costs more than it gains, especially on a busy 2-core machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def plans_manager():
    return PlansManager(small_plans())


# ------------------------------------------------------------------------------------------------------------------
# forward contract
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["2d", "3d", "resenc"])
def test_train_mode_deep_supervision_returns_every_decoder_every_scale(name):
    _, arch, patch = ARCHS[name]
    net = multi(name, k=3).train()
    out = net(_input(patch))
    assert isinstance(out, list) and len(out) == 3
    shapes = expected_ds_shapes(arch, patch)
    assert shapes[0] == patch and len(shapes) == arch["n_stages"] - 1
    for decoder_out in out:
        assert isinstance(decoder_out, list) and len(decoder_out) == arch["n_stages"] - 1
        assert [tuple(t.shape) for t in decoder_out] == [(2, NUM_CLASSES, *s) for s in shapes]


def test_expected_shapes_are_what_nnunet_itself_returns():
    # the reference: the plain nnU-Net network with deep supervision
    for name in ARCHS:
        _, arch, patch = ARCHS[name]
        plain = plain_builder(name)()
        got = [tuple(t.shape[2:]) for t in plain(_input(patch))]
        assert got == expected_ds_shapes(arch, patch)


def test_train_mode_outputs_equal_each_decoder_run_alone():
    # the decoders share the encoder's skips; nothing may modify them in place (nnU-Net uses inplace LeakyReLU)
    net = multi("2d", k=3, perturbations=[None, None]).train()
    x = _input(PATCH_2D)
    with torch.no_grad():
        out = net(x)
        alone = [d(net.encoder(x)) for d in net.decoders]
    for o, a in zip(out, alone):
        assert all(torch.equal(s, t) for s, t in zip(o, a))


@pytest.mark.parametrize("name", ["2d", "3d"])
def test_train_mode_without_deep_supervision_returns_one_tensor_per_decoder(name):
    _, _, patch = ARCHS[name]
    net = multi(name, k=2, deep_supervision=False).train()
    out = net(_input(patch))
    assert isinstance(out, list) and len(out) == 2
    assert all(isinstance(o, torch.Tensor) and tuple(o.shape) == (2, NUM_CLASSES, *patch) for o in out)


@pytest.mark.parametrize("name", ["2d", "3d", "resenc"])
def test_eval_main_mode_is_the_main_decoder_only_and_aux_decoders_do_not_run(name):
    _, _, patch = ARCHS[name]
    net = multi(name, k=3, deep_supervision=False).eval()
    calls = []
    hooks = [d.register_forward_hook(lambda m, i, o, j=j: calls.append(j)) for j, d in enumerate(net.aux_decoders)]
    hooks += [p.register_forward_hook(lambda m, i, o: calls.append("perturbation")) for p in net.perturbations]
    x = _input(patch)
    with torch.no_grad():
        out = net(x)
        expected = net.decoder(net.encoder(x))
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (2, NUM_CLASSES, *patch)
    assert torch.equal(out, expected)
    assert calls == []  # neither the aux decoders nor their perturbations were executed

    net.train()  # sanity: the hooks do fire when the aux decoders run
    with torch.no_grad():
        net(x)
    assert sorted(c for c in calls if c != "perturbation") == [0, 1] and calls.count("perturbation") == 2
    for h in hooks:
        h.remove()


@pytest.mark.parametrize("name", ["2d", "3d"])
def test_eval_mean_mode_softmax_is_mean_of_decoder_softmaxes(name):
    _, _, patch = ARCHS[name]
    net = multi(name, k=3, deep_supervision=False, inference_mode="mean").eval()
    # different decoders must actually disagree for this test to mean anything
    for d in net.aux_decoders:
        init_decoder(d, "xavier")
    x = _input(patch)
    with torch.no_grad():
        out = net(x)
        skips = net.encoder(x)
        per_decoder = [torch.softmax(d(skips), 1) for d in net.decoders]
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (2, NUM_CLASSES, *patch)
    expected = torch.stack(per_decoder).mean(0)
    assert not torch.allclose(per_decoder[0], expected, atol=1e-3)
    torch.testing.assert_close(torch.softmax(out, 1), expected, atol=1e-6, rtol=1e-5)


def test_eval_mean_mode_with_deep_supervision_averages_every_scale():
    net = multi("2d", k=2, deep_supervision=True, inference_mode="mean").eval()
    init_decoder(net.aux_decoders[0], "xavier")
    x = _input(PATCH_2D)
    with torch.no_grad():
        out = net(x)
        skips = net.encoder(x)
        per_decoder = [d(skips) for d in net.decoders]
    assert isinstance(out, list) and len(out) == len(per_decoder[0]) == ARCH_2D["n_stages"] - 1
    for i, o in enumerate(out):
        expected = (torch.softmax(per_decoder[0][i], 1) + torch.softmax(per_decoder[1][i], 1)) / 2
        torch.testing.assert_close(torch.softmax(o, 1), expected, atol=1e-6, rtol=1e-5)


def test_conv_feature_map_size_counts_encoder_once_and_every_decoder():
    # nnU-Net's planners use this for their VRAM estimate
    plain = plain_builder("3d")()
    net = multi("3d", k=3)
    enc = plain.encoder.compute_conv_feature_map_size(PATCH_3D)
    dec = plain.decoder.compute_conv_feature_map_size(PATCH_3D)
    assert plain.compute_conv_feature_map_size(PATCH_3D) == enc + dec
    assert net.compute_conv_feature_map_size(PATCH_3D) == enc + 3 * dec


def test_deep_supervision_flag_propagates_to_all_decoders():
    net = multi("2d", k=3, deep_supervision=True)
    assert net.deep_supervision and all(d.deep_supervision for d in net.decoders)
    net.deep_supervision = False
    assert all(d.deep_supervision is False for d in net.decoders)
    out = net.train()(_input(PATCH_2D))
    assert all(isinstance(o, torch.Tensor) for o in out)
    net.deep_supervision = True
    assert all(d.deep_supervision is True for d in net.decoders)
    assert all(isinstance(o, list) for o in net(_input(PATCH_2D)))


def test_invalid_configurations_are_refused():
    with pytest.raises(ValueError):
        build_multi_decoder_network(plain_builder("2d"), 1, [])
    with pytest.raises(ValueError):
        build_multi_decoder_network(plain_builder("2d"), 3, [None])  # one perturbation per aux decoder
    with pytest.raises(ValueError):
        build_multi_decoder_network(plain_builder("2d"), 2, [None], inference_mode="max")


# ------------------------------------------------------------------------------------------------------------------
# state dict and parameters
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["2d", "3d", "resenc"])
def test_state_dict_keys_do_not_depend_on_deep_supervision_and_round_trip_strictly(name):
    _, _, patch = ARCHS[name]
    train_net = multi(name, k=3, deep_supervision=True, seed=0)
    predict_net = multi(name, k=3, deep_supervision=False, seed=123)
    assert list(train_net.state_dict()) == list(predict_net.state_dict())
    predict_net.load_state_dict(train_net.state_dict(), strict=True)
    train_net.deep_supervision = False
    x = _input(patch)
    with torch.no_grad():
        for mode in ("main", "mean"):
            train_net.inference_mode = predict_net.inference_mode = mode
            a, b = train_net.eval()(x), predict_net.eval()(x)
            assert isinstance(a, torch.Tensor) and torch.equal(a, b)


@pytest.mark.parametrize("name", ["2d", "3d", "resenc"])
def test_shared_encoder_is_counted_once(name):
    k = 3
    torch.manual_seed(0)
    plain = plain_builder(name)()
    net = multi(name, k=k)
    n_plain = sum(p.numel() for p in plain.parameters())
    n_decoder = sum(p.numel() for p in own_params(plain.decoder).values())
    assert n_decoder < n_plain
    assert sum(p.numel() for p in net.parameters()) == n_plain + (k - 1) * n_decoder
    for d in net.aux_decoders:
        assert d.encoder is net.encoder
    assert net.decoder.encoder is net.encoder
    # the shared encoder parameters are the same tensors, not copies
    enc_ids = {id(p) for p in net.encoder.parameters()}
    assert all(id(p) in enc_ids for d in net.aux_decoders for p in d.encoder.parameters())
    # the optimizer sees every parameter once
    assert len(list(net.parameters())) == len({id(p) for p in net.parameters()})


def test_trainer_build_network_architecture_with_a_plans_manager(plans_manager):
    # nnU-Net 2.8.1 detects the new signature by the parameter name (nnUNetTrainer.initialize)
    assert "plans_manager" in inspect.signature(nnUNetTrainerPSSeg.build_network_architecture).parameters
    cm = plans_manager.get_configuration("2d_tiny")
    assert cm.network_arch_init_kwargs["features_per_stage"] == ARCH_2D["features_per_stage"]
    net = nnUNetTrainerPSSeg_tiny.build_network_architecture(plans_manager, cm, 1, 3, True)
    assert isinstance(net, MultiDecoderUNet) and net.num_decoders == 3 and net.inference_mode == "main"
    assert [type(p) for p in net.perturbations] == [RandomFeatureDropout, ChannelMeanFeatureDropout]
    shapes = expected_ds_shapes(ARCH_2D, PATCH_2D)
    out = net.train()(_input(tuple(cm.patch_size)))
    assert len(out) == 3 and all([tuple(t.shape[2:]) for t in o] == shapes for o in out)

    # prediction build (what nnUNetv2_predict does): DS off, strict load of the training weights
    pred = nnUNetTrainerPSSeg_tiny.build_network_architecture(plans_manager, cm, 1, 3, enable_deep_supervision=False)
    pred.load_state_dict(net.state_dict(), strict=True)
    net.deep_supervision = False
    x = _input(PATCH_2D)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), pred.eval()(x))

    # 3d configuration, two decoders, decoder-average inference
    cm3 = plans_manager.get_configuration("3d_fullres")
    net3 = nnUNetTrainerDMSPS_avg_tiny.build_network_architecture(plans_manager, cm3, 1, 3, False)
    assert net3.num_decoders == 2 and net3.inference_mode == "mean"
    assert [type(p) for p in net3.perturbations] == [FeatureDropout]
    with torch.no_grad():
        assert tuple(net3.eval()(_input(PATCH_3D)).shape) == (2, 3, *PATCH_3D)
    assert nnUNetTrainerDMSPS.build_network_architecture(plans_manager, cm3, 1, 3, False).inference_mode == "main"


def test_psseg_decoders_are_initialised_differently(plans_manager):
    torch.manual_seed(0)
    net = nnUNetTrainerPSSeg.build_network_architecture(plans_manager, plans_manager.get_configuration("2d"),
                                                        1, 3, True)
    params = [{k: v.detach() for k, v in own_params(d).items()} for d in net.decoders]
    assert list(params[0]) == list(params[1]) == list(params[2])
    for i in range(3):
        for j in range(i + 1, 3):
            for key in params[i]:
                if key.endswith("weight") and params[i][key].ndim > 1:  # convolutions
                    assert not torch.equal(params[i][key], params[j][key]), (i, j, key)
    # decoder 3 is N(0, 0.02); the other two are not
    w = [torch.cat([v.flatten() for k, v in p.items() if k.endswith("weight") and v.ndim > 1]) for p in params]
    assert float(w[2].std()) == pytest.approx(0.02, rel=0.1)
    assert float(w[0].std()) > 0.04 and float(w[1].std()) > 0.04


# ------------------------------------------------------------------------------------------------------------------
# perturbations and initialisation
# ------------------------------------------------------------------------------------------------------------------
def test_channel_mean_feature_dropout_zeroes_positions_above_fraction_of_per_sample_max():
    # two samples, two channels, 3x3; channel means a are set per position
    a0 = torch.tensor([[1.0, 2.0, 3.0], [4.0, 7.0, 8.5], [9.0, 10.0, 0.0]])   # max 10 -> tau 8: zero 8.5, 9, 10
    a1 = torch.tensor([[1.0, 2.0, 3.0], [4.0, 3.8, 3.9], [4.5, 5.0, 0.5]])    # max 5 -> tau 4: zero 4, 4.5, 5
    f = torch.zeros(2, 2, 3, 3)
    for b, a in enumerate((a0, a1)):
        f[b, 0] = a - 1.0   # channel values differ, the channel mean is a
        f[b, 1] = a + 1.0
    drop = ChannelMeanFeatureDropout(0.8, 0.8).train()
    (out,) = drop([f])
    keep0 = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    keep1 = torch.tensor([[1, 1, 1], [0, 1, 1], [0, 0, 1]], dtype=torch.bool)
    for b, keep in enumerate((keep0, keep1)):
        assert torch.equal(out[b], f[b] * keep)            # zeroed across all channels, the rest unchanged
        assert torch.equal(out[b].eq(0).all(0) & f[b].ne(0).any(0), ~keep)
    # per sample: position (1, 0) has mean 4 = 0.8 * max(sample 1) -> dropped there, but kept in sample 0
    assert out[1, :, 1, 0].eq(0).all() and out[0, :, 1, 0].ne(0).all()
    # 3D maps work the same way; eval mode is the identity
    f3 = torch.rand(1, 3, 2, 4, 4)
    (o3,) = drop([f3])
    mean = f3.mean(1)
    assert torch.equal(o3[0].eq(0).all(0), mean[0] >= 0.8 * mean.max())
    drop.eval()
    (same,) = drop([f])
    assert same is f


@pytest.mark.parametrize("module", [FeatureDropout(0.5), RandomFeatureDropout(0.2, 0.5)])
@pytest.mark.parametrize("shape", [(2, 64, 6, 6), (2, 64, 3, 4, 4)])
def test_feature_dropout_is_identity_in_eval_and_drops_whole_channels_in_train(module, shape):
    torch.manual_seed(0)
    x = torch.rand(*shape) + 0.5
    skips = [x, x[:, :16]]
    module.eval()
    out = module(skips)
    assert all(o is s for o, s in zip(out, skips))
    module.train()
    for o, s in zip(module(skips), skips):
        ratio = (o / s).flatten(2)                     # (B, C, voxels)
        dropped = ratio.eq(0).all(2)
        kept = ~dropped
        assert dropped.any() and kept.any()
        assert not (ratio.eq(0).any(2) & kept).any()   # no channel partly zeroed
        # kept channels are scaled by the inverted-dropout factor 1/(1-p), the same for every voxel
        scale = ratio[kept]
        torch.testing.assert_close(scale, scale[:, :1].expand_as(scale))
        assert float(scale.min()) >= 1 / 0.8 - 1e-4 and float(scale.max()) <= 1 / 0.5 + 1e-4
    if isinstance(module, FeatureDropout):
        frac = module([x])[0].flatten(2).eq(0).all(2).float().mean()
        assert 0.25 < float(frac) < 0.75


def test_random_feature_dropout_draws_p_per_forward_rounded_and_compiles_once():
    """PS-Seg's p ~ U(0.2, 0.5), rounded to 0.01, one value per forward for every skip; under torch.compile
    (nnU-Net compiles the network on GPUs) the draw neither breaks the graph nor recompiles per value."""
    from torch._dynamo.utils import counters
    torch.manual_seed(0)
    module = RandomFeatureDropout(0.2, 0.5).train()
    x = torch.ones(2, 400, 4, 4)
    ps = []
    for _ in range(200):
        a, b = module([x, x[:, :8, :2]])
        scales = set(torch.unique(a).tolist()) - {0.0}
        assert len(scales) == 1 and set(torch.unique(b).tolist()) - {0.0} <= scales   # one p for both skips
        p = 1 - 1 / scales.pop()
        assert 0.2 - 1e-6 <= p <= 0.5 + 1e-6 and p == pytest.approx(round(p, 2), abs=1e-5)
        ps.append(round(p, 2))
        assert float(a[:, :, 0, 0].eq(0).float().mean()) == pytest.approx(p, abs=0.08)   # dropped fraction
    assert len(set(ps)) > 20 and min(ps) < 0.25 and max(ps) > 0.45
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(module, backend="eager")
    for _ in range(12):
        compiled([x, x[:, :8]])
    assert not counters["graph_break"] and not counters["recompiles"]
    assert counters["frames"]["ok"] == 1
    torch._dynamo.reset()


def test_init_decoder_normal_leaves_encoder_alone():
    net = multi("2d", k=2)
    encoder_before = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    main_before = {k: v.clone() for k, v in own_params(net.decoder).items()}
    init_decoder(net.aux_decoders[0], "normal")
    assert all(torch.equal(v, net.encoder.state_dict()[k]) for k, v in encoder_before.items())
    assert all(torch.equal(v, own_params(net.decoder)[k]) for k, v in main_before.items())
    convs = [m for name, m in net.aux_decoders[0].named_modules()
             if not name.startswith("encoder") and isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert len(convs) >= 3 * 2 + 3  # transposed convs, stage convs and seg layers
    w = torch.cat([c.weight.detach().flatten() for c in convs])
    assert float(w.std()) == pytest.approx(0.02, rel=0.1) and abs(float(w.mean())) < 0.005
    assert all(c.bias is None or torch.equal(c.bias, torch.zeros_like(c.bias)) for c in convs)
    with pytest.raises(ValueError):
        init_decoder(net.aux_decoders[0], "orthogonal")


# ------------------------------------------------------------------------------------------------------------------
# pretrained weights: plain nnU-Net checkpoint -> multi-decoder network
# ------------------------------------------------------------------------------------------------------------------
def test_plain_state_dict_maps_onto_every_decoder():
    torch.manual_seed(5)
    plain = plain_builder("2d")().state_dict()
    net = multi("2d", k=3, seed=9)
    model_state = net.state_dict()
    new = plain_to_multi_decoder_state_dict(model_state, plain)
    assert list(new) == list(model_state)
    n_aux_checked = 0
    for key, value in new.items():
        if ".seg_layers." in key:
            assert torch.equal(value, model_state[key]), key  # not transferred: keeps the model's own
            if key.endswith("weight"):  # (biases are zero-initialised in both)
                assert not torch.equal(value, plain[key.replace("aux_decoders.0.", "decoder.")
                                                    .replace("aux_decoders.1.", "decoder.")]), key
        elif key.startswith("aux_decoders."):
            source = "decoder." + key.split(".", 2)[2]
            assert torch.equal(value, plain[source]), key
            n_aux_checked += 1
        else:
            assert torch.equal(value, plain[key]), key
    assert n_aux_checked > 0
    net.load_state_dict(new, strict=True)
    # every decoder now equals the plain decoder, so in eval "mean" mode the output equals the plain network's
    # up to the (not transferred) segmentation layers: compare the last stage features instead
    x = _input(PATCH_2D)
    with torch.no_grad():
        net.eval()
        skips = net.encoder(x)
        feats = []
        for d in net.decoders:
            h = skips[-1]
            for s in range(len(d.stages)):
                h = d.stages[s](torch.cat((d.transpconvs[s](h), skips[-(s + 2)]), 1))
            feats.append(h)
    assert torch.equal(feats[0], feats[1]) and torch.equal(feats[0], feats[2])


def test_plain_state_dict_mapping_errors():
    plain = plain_builder("2d")().state_dict()
    model_state = multi("2d", k=2).state_dict()
    missing = dict(plain)
    del missing["decoder.stages.0.convs.0.conv.weight"]
    with pytest.raises(KeyError, match="decoder.stages.0.convs.0.conv.weight"):
        plain_to_multi_decoder_state_dict(model_state, missing)
    wrong = dict(plain)
    wrong["decoder.transpconvs.1.weight"] = torch.zeros(1, 2, 3, 3)
    with pytest.raises(ValueError, match="transpconvs.1.weight"):
        plain_to_multi_decoder_state_dict(model_state, wrong)
    # a checkpoint of another configuration (3d) does not fit either
    with pytest.raises((KeyError, ValueError)):
        plain_to_multi_decoder_state_dict(model_state, plain_builder("3d")().state_dict())


def test_finetune_flag_loads_the_whole_multi_decoder_checkpoint(tmp_path):
    """``pretrained_includes_seg_layers`` (set by ``nnUNetTrainerDMSPS_finetune``): a checkpoint of the same
    multi-decoder network loads completely, segmentation layers included; without it nnU-Net's own loader runs
    and the network keeps its own segmentation layers."""
    src = multi("2d", k=2, seed=1)
    src_state = src.state_dict()
    fname = tmp_path / "stage1.pth"
    torch.save({"network_weights": src_state}, fname)
    seg_keys = [k for k in src_state if ".seg_layers." in k and k.endswith("weight")]
    assert len(seg_keys) >= 2 * 2
    x = _input(PATCH_2D)
    for with_seg in (True, False):
        net = multi("2d", k=2, seed=2)
        own = {k: v.clone() for k, v in net.state_dict().items()}
        assert not any(torch.equal(own[k], src_state[k]) for k in seg_keys)   # so the checks below can fail
        net.pretrained_includes_seg_layers = with_seg
        load_pretrained_multi_decoder(net, str(fname))
        for key, value in net.state_dict().items():
            expected = own[key] if (".seg_layers." in key and not with_seg) else src_state[key]
            assert torch.equal(value, expected), (with_seg, key)
        assert getattr(net, "pretrained_from", None) == (str(fname) if with_seg else None)
        if with_seg:   # the same network: the same prediction
            src.eval()
            net.eval()
            with torch.no_grad():
                assert torch.equal(net(x)[0], src(x)[0])
    # with the flag, a checkpoint of another network is refused with a clear error
    net = multi("2d", k=2, seed=2)
    net.pretrained_includes_seg_layers = True
    torch.save({"network_weights": multi("2d", k=3).state_dict()}, tmp_path / "k3.pth")
    with pytest.raises(KeyError, match="not a checkpoint of this network.*aux_decoders.1"):
        load_pretrained_multi_decoder(net, str(tmp_path / "k3.pth"))
    other_labels = dict(src_state)
    other_labels[seg_keys[0]] = torch.zeros(NUM_CLASSES + 1, *src_state[seg_keys[0]].shape[1:])
    torch.save({"network_weights": other_labels}, tmp_path / "labels.pth")
    with pytest.raises(ValueError, match="another label set"):
        load_pretrained_multi_decoder(net, str(tmp_path / "labels.pth"))
    # a plain checkpoint with the flag: every decoder's segmentation layers come from the plain ones
    plain = plain_builder("2d")().state_dict()
    torch.save({"network_weights": plain}, tmp_path / "plain.pth")
    load_pretrained_multi_decoder(net, str(tmp_path / "plain.pth"))
    for key, value in net.state_dict().items():
        if ".seg_layers." in key:
            assert torch.equal(value, plain["decoder." + key.split(".", 2)[2]] if key.startswith("aux_") else plain[key])


# ------------------------------------------------------------------------------------------------------------------
# deep-supervision targets
# ------------------------------------------------------------------------------------------------------------------
IG = 3
_ = IG
SCRIBBLE_8x8 = np.array([
    # 1-voxel-wide scribbles on even rows/columns: nearest-exact at 1/2 samples rows/cols 1, 3, 5, 7
    [_, _, 1, 0, _, _, _, _],
    [_, _, 1, _, _, _, _, _],
    [_, _, 1, _, _, _, _, _],
    [_, _, 1, _, _, _, _, _],
    [_, _, 1, _, 2, 2, 2, 2],
    [_, _, 1, _, _, _, _, _],
    [_, _, 1, _, _, _, 0, 0],
    [_, _, 1, _, _, _, _, 2],
])
# by hand: one voxel per 2x2 block, annotated if any voxel of the block is, majority class
EXPECTED_HALF = np.array([
    [_, 1, _, _],   # block rows 0-1 cols 2-3: 1, 1, 0 -> 1
    [_, 1, _, _],
    [_, 1, 2, 2],
    [_, 1, _, 0],   # block rows 6-7 cols 6-7: 0, 0, 2 -> 0
])
EXPECTED_QUARTER = np.array([
    [1, _],         # rows 0-3 cols 0-3: four 1, one 0
    [1, 2],         # rows 4-7 cols 4-7: five 2, two 0
])


def test_scribble_preserving_ds_targets_keep_thin_scribbles():
    seg = torch.from_numpy(SCRIBBLE_8x8)[None].to(torch.int16)   # (C=1, 8, 8) as in nnU-Net's transforms
    scales = [[1.0, 1.0], [0.5, 0.5], [0.25, 0.25]]
    theirs = DownsampleSegForDSTransform(scales)(segmentation=seg.clone())["segmentation"]
    ours = ScribblePreservingDownsampleSegForDS(scales, IG)(segmentation=seg.clone())["segmentation"]

    def annotated(t):
        return int((t != IG).sum())

    assert annotated(seg) == 16
    # nnU-Net: nearest-exact keeps only voxel (7, 7) of the 16 -- and with the minority class of its block
    assert torch.equal(theirs[1][0], seg[0, 1::2, 1::2])
    assert annotated(theirs[1]) == 1 and int(theirs[1][0, 3, 3]) == 2
    # ours: full resolution untouched, every block that had an annotation keeps one with the majority class
    assert torch.equal(ours[0], seg)
    assert ours[1].dtype == seg.dtype and tuple(ours[1].shape) == (1, 4, 4)
    np.testing.assert_array_equal(ours[1][0].numpy(), EXPECTED_HALF)
    np.testing.assert_array_equal(ours[2][0].numpy(), EXPECTED_QUARTER)
    assert annotated(ours[1]) == 7 > annotated(theirs[1])
    blocks_with_annotation = (SCRIBBLE_8x8 != IG).reshape(4, 2, 4, 2).any((1, 3))
    np.testing.assert_array_equal(ours[1][0].numpy() != IG, blocks_with_annotation)


def test_scribble_preserving_ds_targets_3d_anisotropic():
    seg = torch.full((1, 2, 4, 4), IG, dtype=torch.int16)
    seg[0, 1, 0, :] = 1          # a line in the second slice, on a row nearest-exact does not sample
    scales = [[1, 1, 1], [1, 0.5, 0.5]]
    theirs = DownsampleSegForDSTransform(scales)(segmentation=seg.clone())["segmentation"]
    ours = ScribblePreservingDownsampleSegForDS(scales, IG)(segmentation=seg.clone())["segmentation"]
    assert tuple(ours[1].shape) == (1, 2, 2, 2) == tuple(theirs[1].shape)
    assert int((theirs[1] != IG).sum()) == 0
    expected = torch.full((2, 2, 2), IG, dtype=torch.int16)
    expected[1, 0, :] = 1
    assert torch.equal(ours[1][0], expected)


# ------------------------------------------------------------------------------------------------------------------
# dataset checks
# ------------------------------------------------------------------------------------------------------------------
def test_check_ignore_label_messages():
    assert check_ignore_label(LabelManager({"background": 0, "a": 1, "ignore": 2}, None), "DsX") == 2
    with pytest.raises(ScribbleDatasetError, match=r"DsX declares no 'ignore' label"):
        check_ignore_label(LabelManager({"background": 0, "a": 1}, None), "DsX")
    regions = LabelManager({"background": 0, "whole": [1, 2], "core": 2, "ignore": 3}, regions_class_order=[1, 2])
    with pytest.raises(ScribbleDatasetError, match="region-based"):
        check_ignore_label(regions, "DsR")


def test_check_scribble_array_messages():
    seg = np.array([[0, 1, 2], [2, 2, -1]])
    assert check_scribble_array(seg, 2, "c0") == 2    # -1 (outside the image) is trained as ignore by our trainers
    assert check_scribble_array(seg, 2, "c0", out_of_image_is_annotated=True) == 3
    with pytest.raises(ScribbleDatasetError, match="case c3 has no annotated voxel .*or outside the image"):
        check_scribble_array(np.array([[-1, 2], [2, -1]]), 2, "c3")
    assert check_scribble_array(np.array([[-1, 2], [2, -1]]), 2, "c3", out_of_image_is_annotated=True) == 2
    with pytest.raises(ScribbleDatasetError, match=r"case c1: label values \[4\] are outside 0\.\.2"):
        check_scribble_array(np.array([[0, 4], [2, 2]]), 2, "c1")
    with pytest.raises(ScribbleDatasetError, match=r"outside 0\.\.2"):
        check_scribble_array(np.array([[0, -2], [2, 2]]), 2, "c1b")
    with pytest.raises(ScribbleDatasetError, match="case c2 has no annotated voxel"):
        check_scribble_array(np.full((1, 3, 3), 2), 2, "c2")
    assert check_scribble_cases([("a", seg), ("b", np.array([1, 2]))], 2) == {"a": 2, "b": 1}
    with pytest.raises(ScribbleDatasetError, match="case b has no annotated voxel"):
        check_scribble_cases([("a", seg), ("b", np.array([2, 2]))], 2)
    # every class must be scribbled somewhere in the training cases, not necessarily in each case
    assert check_scribble_cases([("a", np.array([0, 3])), ("b", np.array([1, 3]))], 3, classes=[0, 1]) == \
        {"a": 1, "b": 1}
    with pytest.raises(ScribbleDatasetError, match=r"label value\(s\) \[2\] carry no scribble in any of the 2"):
        check_scribble_cases([("a", np.array([0, 3])), ("b", np.array([1, 3]))], 3, classes=np.arange(3))
    with pytest.raises(ScribbleDatasetError, match=r"\[0\] carry no scribble"):   # -1 is not background here
        check_scribble_cases([("a", np.array([-1, 1, 2]))], 2, classes=[0, 1])
    # ... but it is where out-of-image voxels are trained as background
    assert check_scribble_cases([("a", np.array([-1, 1, 2]))], 2, classes=[0, 1], out_of_image_is_annotated=True) \
        == {"a": 2}


# ----------------------------------------------------------------------------------------------------------
# out-of-image voxels: nnU-Net's real augmentation pipeline pads the segmentation with -1 and maps it to 0
# ----------------------------------------------------------------------------------------------------------
def _nnunet_training_transforms(ignore_label=4):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    return nnUNetTrainer.get_training_transforms(
        patch_size=(32, 32), rotation_for_DA=0.0, deep_supervision_scales=None, mirror_axes=(), do_dummy_2d_data_aug=False,
        foreground_labels=[1, 2, 3], ignore_label=ignore_label)


def test_out_of_image_voxels_become_ignore_in_nnunets_real_pipeline():
    import random

    from nnunet_scribble.transforms import out_of_image_to_ignore
    seg = torch.full((1, 20, 20), 4, dtype=torch.int16)   # a 20x20 image, all unannotated ...
    seg[0, 5:8, 5:15] = 1                                  # ... but one scribble
    seg[0, 0, :] = -1                                      # a row cropped away by nnU-Net's preprocessing
    image = torch.randn(1, 20, 20, generator=torch.Generator().manual_seed(0))

    def padded_target(transforms):
        random.seed(0)      # the same augmentation draws for both pipelines (python, numpy and torch generators)
        np.random.seed(0)
        torch.manual_seed(0)
        out = transforms(image=image.clone(), segmentation=seg.clone())
        return out["segmentation"]

    nn_default = padded_target(_nnunet_training_transforms())
    assert nn_default.shape[-2:] == (32, 32)               # padded to the patch size
    background_default = int((nn_default == 0).sum())
    assert background_default >= 32 * 32 - 20 * 20        # nnU-Net: every padded voxel is "background"

    transforms = _nnunet_training_transforms()
    assert out_of_image_to_ignore(transforms, 4) == 1
    ours = padded_target(transforms)
    assert int((ours == 0).sum()) == 0                     # no voxel of this image was annotated background
    assert int((ours == 1).sum()) == int((nn_default == 1).sum()) > 0
    assert set(torch.unique(ours).tolist()) == {1, 4}
    assert out_of_image_to_ignore(transforms, 4) == 0      # idempotent: nothing left to replace


def test_scribble_trainers_refuse_a_pipeline_without_the_label_mapping():
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
    t = object.__new__(nnUNetTrainerDMSPS)
    t.label_manager = LabelManager({"background": 0, "a": 1, "ignore": 2}, regions_class_order=None)
    with pytest.raises(RuntimeError, match="RemoveLabelTansform"):
        t._scribble_targets(ComposeTransforms([]))
