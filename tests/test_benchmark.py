"""Plumbing of benchmarks/run_benchmark.py on tiny real data (not its results)."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NNUNET_SCRIBBLE_DATA", REPO.parent / "shared" / "data"))
sys.path.insert(0, str(REPO / "benchmarks"))


@pytest.fixture(scope="module")
def acdc_data():
    if not (DATA / "acdc_scribble_h5").is_dir():
        pytest.skip(f"ACDC data not found: {DATA / 'acdc_scribble_h5'}")
    return DATA


def test_benchmark_end_to_end_tiny_and_resume(acdc_data, tmp_path, capsys):
    import run_benchmark

    work = tmp_path / "bench"
    argv = ["--dataset", "acdc", "--data", str(acdc_data), "--work", str(work), "--profile", "tiny",
            "--cases", "41,42,43,21", "--test-cases", "21", "--arms", "pL", "DMSPS_avg", "DMSPS_stage2",
            "--stage2-tau", "0.2"]
    assert run_benchmark.main(argv) == 0
    results = json.loads((work / "results" / "results.json").read_text())
    # DMSPS_avg pulls in its parent arm DMSPS, stage 2 runs on the expanded dataset (extra seeds: the tests below)
    assert set(results) == {"pL_seed0", "DMSPS_seed0", "DMSPS_avg_seed0", "DMSPS_stage2_seed0"}
    for key, row in results.items():
        assert set(row["per_class"]) == {"RV", "MYO", "LV"}
        summary = json.loads(Path(row["summary_file"]).read_text())
        assert len(summary["metric_per_case"]) == 2  # patient 021: two frames
        # the table's mean Dice: mean and std over cases of each case's mean over the 3 classes
        per_case = [np.mean([c["metrics"][k]["Dice"] for k in ("1", "2", "3")]) for c in summary["metric_per_case"]]
        assert row["Dice"] == pytest.approx([np.mean(per_case), np.std(per_case)])
        # every arm is also evaluated after largest-component post-processing (nnU-Net's function)
        assert 0.0 <= row["lcc"]["Dice"][0] <= 1.0 and set(row["lcc"]["per_class"]) == {"RV", "MYO", "LV"}
        lcc_dir = work / "predictions" / f"{key}_lcc"
        assert len(list(lcc_dir.glob("*.nii.gz"))) == 2 and (lcc_dir / "summary.json").is_file()
    # no dense arm: the dense twin is written but not planned
    assert next((work / "nnUNet_raw").glob("Dataset701_*")).is_dir()
    assert not list((work / "nnUNet_preprocessed").glob("Dataset701_*"))
    stage2 = next((work / "nnUNet_raw").glob("Dataset702_*"))  # the stage-2 dataset, from seed 0's DMSPS
    assert len(list((stage2 / "labelsTr").glob("*.nii.gz"))) == 6
    # expanded with the requested threshold (2d default: 0.1); the work folder is tied to it
    assert "dmsps_stage2(tau=0.2," in json.loads((stage2 / "dataset.json").read_text())["scribble_method"]
    for other in (["--stage2-tau", "0.3"], []):
        with pytest.raises(SystemExit, match="another --work folder"):
            run_benchmark.main(argv[:-2] + other)
    # the *_avg arm reuses DMSPS's weights with the _avg trainer name (decoder-mean inference)
    import torch
    ckpt = torch.load(next(work.glob("nnUNet_results/Dataset700_*/nnUNetTrainerDMSPS_avg_tiny__*/fold_0/"
                                     "checkpoint_final.pth")), map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == "nnUNetTrainerDMSPS_avg_tiny"
    assert results["pL_seed0"]["stats"]["s_per_iteration"] > 0
    assert results["pL_seed0"]["train"]["peak_rss_mib"] > 0
    table = (work / "results" / "results.md").read_text()
    assert "| DMSPS_stage2 | 0 |" in table and "gap closed" in table and "mean Dice, LCC" in table
    assert (work / "results" / "per_class_dice.png").stat().st_size > 0
    assert (work / "results" / "training_curves.png").stat().st_size > 0

    # resume: a second run redoes nothing (no training, prediction or conversion command)
    log_before = (work / "commands.log").read_text()
    assert run_benchmark.main(argv) == 0
    assert (work / "commands.log").read_text() == log_before

    # an interrupted nnUNetv2_plan_and_preprocess (plans written, a case missing, no marker) is run again
    pre = next((work / "nnUNet_preprocessed").glob("Dataset700_*"))
    (pre / ".preprocessed_2d").unlink()
    plans = json.loads((pre / "nnUNetPlans.json").read_text())["configurations"]
    missing = sorted((pre / plans["2d"]["data_identifier"]).glob("*.pkl"))[0]
    missing.unlink()
    assert run_benchmark.main(argv) == 0
    log_after = (work / "commands.log").read_text()[len(log_before):]
    assert "nnUNetv2_plan_and_preprocess -d 700" in log_after and "--no_pp" not in log_after
    assert "nnUNetv2_train" not in log_after
    assert missing.is_file() and (pre / ".preprocessed_2d").is_file()

    # cost measurement script on the same work folder (plumbing only)
    import timing
    out = tmp_path / "timing.md"
    assert timing.main(["--work", str(work), "--config", "2d_tiny", "--budget", "tiny", "--arms", "pL", "DMSPS_avg",
                        "--steps", "2", "--predict-cases", "1", "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())
    assert rows["pL"]["s_per_step"] > 0 and rows["DMSPS_avg"]["peak_mib"] > 0
    # two decoders share one encoder: more parameters than the plain network, fewer than two networks
    assert rows["pL"]["n_parameters"] < rows["DMSPS_avg"]["n_parameters"] < 2 * rows["pL"]["n_parameters"]
    assert rows["DMSPS_avg"]["inference_s"] > 0
    assert "| DMSPS_avg |" in out.read_text()


def test_benchmark_lowres_profile_preprocesses_its_own_spacing(acdc_data, tmp_path):
    """A profile whose preset has its own spacing (``cpulowres`` for BTCV; ``tinylowres`` here) runs
    nnUNetv2_preprocess for that configuration once, trains and predicts on it; a work folder used for
    another configuration is refused."""
    import run_benchmark

    work = tmp_path / "bench"
    argv = ["--dataset", "acdc", "--data", str(acdc_data), "--work", str(work), "--profile", "tinylowres",
            "--cases", "41,42,43,21", "--test-cases", "21", "--arms", "pL", "--no-lcc"]
    assert run_benchmark.main(argv) == 0
    pre = next((work / "nnUNet_preprocessed").glob("Dataset700_*"))
    plans = json.loads((pre / "nnUNetPlans.json").read_text())["configurations"]
    assert plans["2d_tinylowres"]["spacing"] == [2 * s for s in plans["2d"]["spacing"]]
    assert (pre / ".preprocessed_2d_tinylowres").is_file()
    n_train = len(list(next((work / "nnUNet_raw").glob("Dataset700_*")).glob("labelsTr/*.nii.gz")))
    assert n_train == 6 and len(list((pre / "nnUNetPlans_2d_tinylowres").glob("*_seg.b2nd"))) == n_train
    results = json.loads((work / "results" / "results.json").read_text())
    assert set(results) == {"pL_seed0"} and 0.0 <= results["pL_seed0"]["Dice"][0] <= 1.0
    assert (next(work.glob("nnUNet_results/Dataset700_*/nnUNetTrainer_tiny__nnUNetPlans__2d_tinylowres/fold_0"))
            / "checkpoint_final.pth").is_file()
    log_before = (work / "commands.log").read_text()
    assert run_benchmark.main(argv) == 0   # resume: nothing redone, not even the preprocessing
    assert (work / "commands.log").read_text() == log_before
    with pytest.raises(SystemExit, match="another --work folder"):
        run_benchmark.main([a if a != "tinylowres" else "tiny" for a in argv])
    # the base configuration was planned, not preprocessed: only the lowres configuration is trained on
    assert not (pre / plans["2d"]["data_identifier"]).exists()
    assert "nnUNetv2_plan_and_preprocess -d 700 -c 2d --no_pp -np 2 -npfp 2 --verify_dataset_integrity" in log_before
    # an interrupted planning (no marker) is run again; nnU-Net's planner keeps configurations it did not
    # plan, so the lowres configuration and its preprocessed data are kept
    (pre / ".preprocessed_2d").unlink()
    assert run_benchmark.main(argv) == 0
    log_after = (work / "commands.log").read_text()[len(log_before):]
    assert "nnUNetv2_plan_and_preprocess -d 700" in log_after
    assert "nnUNetv2_preprocess" not in log_after and "nnUNetv2_train" not in log_after
    assert (pre / ".preprocessed_2d").is_file()
    assert "2d_tinylowres" in json.loads((pre / "nnUNetPlans.json").read_text())["configurations"]


def test_stage2_arms_share_their_seeds_dataset_and_tau_is_checked(tmp_path, capsys):
    import run_benchmark
    # the _pLDice trainer trains on the stage-2 dataset (the one DMSPS_stage2 trains on)
    (tmp_path / "nnUNet_raw" / "Dataset702_XStage2").mkdir(parents=True)
    bench = run_benchmark.Benchmark(run_benchmark.parse_args(["--dataset", "acdc", "--work", str(tmp_path),
                                                              "--profile", "cpu3k"]))
    assert bench.fold_dir("DMSPS_stage2_pLDice", 0) == (tmp_path / "nnUNet_results" / "Dataset702_XStage2" /
                                                        "nnUNetTrainerDMSPS_pLDice_cpu3k__nnUNetPlans__2d_cpu" / "fold_0")
    assert bench.fold_dir("DMSPS_stage2", 0).parent.parent == bench.fold_dir("DMSPS_stage2_pLDice", 0).parent.parent
    args = run_benchmark.parse_args(["--dataset", "acdc", "--data", str(tmp_path), "--work", str(tmp_path),
                                     "--arms", "DMSPS_stage2", "--seeds", "0", "1", "--seed-arms", "pL"])
    assert args.seed_arms == ["pL"]
    for tau in ("0", "1.5"):
        with pytest.raises(SystemExit):
            run_benchmark.parse_args(["--dataset", "acdc", "--work", str(tmp_path), "--stage2-tau", tau])
        assert "--stage2-tau must be in (0, 1]" in capsys.readouterr().err
    assert run_benchmark.parse_args(["--dataset", "acdc", "--work", str(tmp_path), "--stage2-tau", "1"]).stage2_tau == 1.0


def test_empty_arms_run_the_extra_seeds_only(tmp_path, monkeypatch, capsys):
    """``--arms`` with no value: only the ``--seed-arms`` of the non-zero seeds are trained (seed 0 is not redone)."""
    import run_benchmark
    args = run_benchmark.parse_args(["--dataset", "btcv", "--work", str(tmp_path), "--arms", "--seeds", "0", "1",
                                     "--seed-arms", "pL", "pCE"])
    assert args.arms == []
    with pytest.raises(SystemExit):   # nothing to run
        run_benchmark.parse_args(["--dataset", "btcv", "--work", str(tmp_path), "--arms", "--seed-arms", "pL"])
    assert "nothing to run" in capsys.readouterr().err
    bench = run_benchmark.Benchmark(args)
    calls = []
    monkeypatch.setattr(bench, "convert", lambda: None)
    monkeypatch.setattr(bench, "load_state", lambda: {})
    monkeypatch.setattr(bench, "run_arm", lambda arm, seed, state: calls.append((arm, seed)))
    monkeypatch.setattr(run_benchmark, "write_results", lambda *a: None)
    bench.main()
    assert calls == [("pL", 1), ("pCE", 1)]
    # each seed trains into its own nnUNet_results tree (a finished seed-0 model is not mistaken for seed 1's)
    (tmp_path / "nnUNet_raw" / "Dataset700_X").mkdir(parents=True)
    assert bench.fold_dir("pL", 0) == (tmp_path / "nnUNet_results" / "Dataset700_X" /
                                       "nnUNetTrainer_cpu__nnUNetPlans__2d_cpu" / "fold_0")
    assert bench.fold_dir("pL", 1) == (tmp_path / "nnUNet_results_seed1" / "Dataset700_X" /
                                       "nnUNetTrainer_cpu__nnUNetPlans__2d_cpu" / "fold_0")


def test_results_of_extra_seeds_only_have_per_class_tables_and_figures(tmp_path):
    """A work folder with only seed-1 rows (``--arms`` empty): every row appears in the per-class tables with
    its seed, and the figures are drawn (they used to cover seed 0 only: empty tables, failed plots)."""
    import run_benchmark
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"metric_per_case": [{}, {}]}))

    def row(arm, dice):
        metric = {"Dice": (dice, 0.01), "HD95": (700.0, 40.0), "ASSD": (690.0, 40.0)}
        return {"arm": arm, "seed": 1, **metric, "per_class": {"liver": metric, "spleen": dict(metric, Dice=(0.0, 0.0))},
                "lcc": {**metric, "per_class": {"liver": metric, "spleen": metric}}, "summary_file": str(summary),
                "stats": {"s_per_iteration": 2.0, "train_losses": [1.0, 0.5], "ema_fg_dice": [0.1, 0.2]},
                "train": {"peak_rss_mib": 100.0}, "predict": {"wall_s": 10.0}}
    rows = {"pCE_seed1": row("pCE", 0.07), "pL_seed1": row("pL", 0.025)}
    bench = run_benchmark.Benchmark(run_benchmark.parse_args(["--dataset", "btcv", "--work", str(tmp_path / "w"),
                                                              "--arms", "--seeds", "0", "1", "--seed-arms", "pL", "pCE"]))
    table = run_benchmark.results_markdown(bench, rows)
    assert "| pL | 1 | 0.0250 ± 0.0100 |" in table                          # main table: pL first
    assert table.index("| pL | 1 |") < table.index("| pCE | 1 |")
    assert "| pL | 1 | 0.025 ± 0.010 | 0.000 ± 0.000 |" in table           # per-class Dice
    assert "| pCE | 1 | 0.070 ± 0.010 | 0.000 ± 0.000 |" in table
    assert "| pCE | 1 | 700.0 | 700.0 |" in table                            # per-class HD95
    assert "| pCE | 1 | 0.070 / 700.0 | 0.070 / 700.0 |" in table            # after LCC
    assert run_benchmark._lowest_seed_rows(rows).keys() == {"pL (seed 1)", "pCE (seed 1)"}
    both = {**rows, "pL_seed0": dict(rows["pL_seed1"], seed=0)}
    assert run_benchmark._lowest_seed_rows(both) == {"pL": both["pL_seed0"], "pCE (seed 1)": rows["pCE_seed1"]}
    run_benchmark.plot_results(bench, rows)
    for png in ("per_class_dice.png", "training_curves.png"):
        assert (bench.results_dir / png).stat().st_size > 0


def test_a_label_in_no_test_volume_is_left_out_of_the_evaluation(tmp_path, capsys):
    """A --test-cases set whose volumes all lack an organ: that label has no defined Dice (evaluate refuses it), so
    the benchmark evaluates the others, says so, and its tables cover what was evaluated."""
    import SimpleITK as sitk
    import run_benchmark
    from nnunet_scribble.evaluation import labels_in_files
    from nnunet_scribble.raw_dataset import array_to_image

    bench = run_benchmark.Benchmark(run_benchmark.parse_args(["--dataset", "btcv", "--work", str(tmp_path / "w"),
                                                              "--arms", "pL"]))
    raw = bench.work / "nnUNet_raw" / f"Dataset{bench.ids['scribble']:03d}_X"
    (raw / "labelsTs").mkdir(parents=True)
    (raw / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "spleen": 1, "gallbladder": 2,
                                                             "liver": 3, "ignore": 4}}))
    ref = np.zeros((2, 6, 6), np.uint8)
    ref[0, :3] = 1
    ref[1, 3:] = 3
    pred = ref.copy()
    pred[1, 3:, :2] = 0
    for case in ("c1", "c2"):
        sitk.WriteImage(array_to_image(ref), str(raw / "labelsTs" / f"{case}.nii.gz"))
    assert labels_in_files(sorted((raw / "labelsTs").glob("*.nii.gz"))) == [1, 3]
    assert bench.test_labels() == {"spleen": 1, "liver": 3}
    assert "WARNING: ['gallbladder'] occur in none of the test labels" in capsys.readouterr().out
    out = bench.work / "predictions" / "pL_seed0"
    out.mkdir(parents=True)
    for case in ("c1", "c2"):
        sitk.WriteImage(array_to_image(pred), str(out / f"{case}.nii.gz"))
    summary = bench.evaluate("pL", 0)
    assert set(summary["mean"]) == {"1", "3"}
    liver = 2 * 12 / (2 * 12 + 6)                        # 12 of each case's 18 liver voxels, no false positive
    assert summary["foreground_mean"]["Dice"] == pytest.approx((1 + liver) / 2)
    rows = run_benchmark.collect(bench, {"pL_seed0": {"arm": "pL", "seed": 0,
                                                      "summary_file": str(out / "summary.json")}})
    assert list(rows["pL_seed0"]["per_class"]) == ["spleen", "liver"]
    assert rows["pL_seed0"]["Dice"][0] == pytest.approx((1 + liver) / 2)


def test_rows_are_compared_with_pl_and_dense_of_their_own_seed():
    from run_benchmark import _references
    rows = {"pL_seed0": "pL0", "pL_seed1": "pL1", "dense_seed0": "dense0", "DMSPS_seed1": "x"}
    assert _references(rows, 0) == ("pL0", "dense0")
    assert _references(rows, 1) == ("pL1", "dense0")   # dense not repeated with seed 1
    assert _references(rows, 2) == ("pL0", "dense0")
    assert _references({}, 1) == (None, None)


def test_gap_closed_rule():
    """(arm - pL) / (dense - pL) on mean Dice; undefined where the ceiling is not above the bar."""
    from run_benchmark import _gap
    row = lambda arm, d: {"arm": arm, "Dice": (d, 0.1)}  # noqa: E731
    assert _gap(row("DMSPS", 0.6), row("pL", 0.4), row("dense", 0.8)) == "+0.50"
    assert _gap(row("pCE", 0.3), row("pL", 0.4), row("dense", 0.8)) == "-0.25"
    assert _gap(row("pCE", 0.3), row("pL", 0.4), row("dense", 0.35)) == "n/a (dense ≤ pL)"
    assert _gap(row("pL", 0.4), row("pL", 0.4), row("dense", 0.8)) == "n/a"
    assert _gap(row("pCE", 0.3), None, row("dense", 0.8)) == "n/a"


def test_timing_refuses_arms_without_the_reference(tmp_path, capsys):
    """Cost ratios are to nnU-Net's own trainer measured in the same run: without pL there is nothing to divide by."""
    import timing

    with pytest.raises(SystemExit):
        timing.main(["--work", str(tmp_path), "--arms", "DMSPS", "--out", str(tmp_path / "t.md")])
    assert "--arms must include pL" in capsys.readouterr().err


def test_pack_raw_round_trip_is_exact(tmp_path):
    # pack -> unpack gives back every image's voxels, dtype and geometry exactly and every other file byte for
    # byte: a table of few values (uint8 index), more than 256 (uint16), more than 65536 (kept as is)
    import io
    import lzma

    import SimpleITK as sitk
    import pack_raw

    raw = tmp_path / "Dataset999_X"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    (raw / "dataset.json").write_text('{"labels": {"background": 0}}\n')
    rng = np.random.default_rng(0)
    arrays = {"few": (rng.integers(0, 200, (3, 20, 30)) / 199).astype(np.float32),
              "many": (rng.integers(0, 3000, (3, 20, 30)) / 2999).astype(np.float32),
              "all": rng.random((4, 150, 120)).astype(np.float32)}
    for i, (name, a) in enumerate(arrays.items()):
        img = sitk.GetImageFromArray(a)
        img.SetSpacing((1.5625 + i, 1.25, 10.0))
        img.SetOrigin((-3.0, 7.5, i * 2.0))
        img.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0))
        sitk.WriteImage(img, str(raw / "imagesTr" / f"{name}_0000.nii.gz"), True)
        (raw / "labelsTr" / f"{name}.nii.gz").write_bytes(bytes(range(i, 256)))
    parts = pack_raw.pack(raw, tmp_path / "pack", parts=2)
    assert len(parts) == 2 and all(p.stat().st_size > 0 for p in parts)
    back = pack_raw.unpack(parts, tmp_path / "back" / raw.name)
    files = sorted(p.relative_to(raw) for p in raw.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(back) for p in back.rglob("*") if p.is_file())
    for rel in files:
        if rel.parts[0] == "imagesTr":
            a, b = sitk.ReadImage(str(raw / rel)), sitk.ReadImage(str(back / rel))
            assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
            assert (a.GetPixelID(), a.GetSpacing(), a.GetOrigin(), a.GetDirection()) == \
                (b.GetPixelID(), b.GetSpacing(), b.GetOrigin(), b.GetDirection())
        else:
            assert (raw / rel).read_bytes() == (back / rel).read_bytes()
    with pytest.raises(SystemExit, match="exists"):
        pack_raw.unpack(parts, back)
    # a missing part (no dataset.json), a part given twice, a damaged part: refused, nothing left behind
    target = tmp_path / "again" / raw.name
    def names(part):
        return str(np.load(io.BytesIO(lzma.decompress(part.read_bytes())))["names"])
    dataset_part = next(p for p in parts if "dataset.json" in names(p))
    damaged = tmp_path / "damaged.npz.xz"
    damaged.write_bytes(parts[0].read_bytes()[:-100])
    for bad, message in (([p for p in parts if p != dataset_part], "dataset.json"),
                         (parts + parts[:1], "more than one"), ([damaged], None)):
        with pytest.raises((SystemExit, Exception), match=message):
            pack_raw.unpack(bad, target)
        assert not (tmp_path / "again").exists() or not any((tmp_path / "again").iterdir())
    # packing again with fewer parts removes the earlier pack's extra parts
    assert [p.name for p in pack_raw.pack(raw, tmp_path / "pack", parts=1)] == ["part0.npz.xz"]
    assert sorted(p.name for p in (tmp_path / "pack").iterdir()) == ["part0.npz.xz"]


def test_training_gets_the_augmentation_worker_count(tmp_path):
    # --n-proc-da reaches nnUNetv2_train as nnUNet_n_proc_DA (default 0: augmentation in the seeded process)
    import run_benchmark
    for extra, expected in (([], "0"), (["--n-proc-da", "7"], "7")):
        work = tmp_path / f"w{expected}"
        (work / "nnUNet_raw" / "Dataset700_X").mkdir(parents=True)
        bench = run_benchmark.Benchmark(run_benchmark.parse_args(
            ["--dataset", "acdc", "--work", str(work), "--profile", "gpu1k", "--device", "cuda", *extra]))
        calls = []
        bench.run = lambda cmd, env=None, measure=False: calls.append((cmd, env)) or {}
        bench.train("DMSPS_pLDice", 1)
        (cmd, env), = calls
        assert [str(c) for c in cmd[1:]] == ["700", "2d", "0", "-tr", "nnUNetTrainerDMSPS_pLDice_gpu1k",
                                             "-device", "cuda"]
        assert env["nnUNet_n_proc_DA"] == expected and env["NNUNET_SCRIBBLE_SEED"] == "1"


def test_finetune_arm_trains_from_the_stage1_checkpoint_once(tmp_path):
    # DMSPS_stage2_ft: the fine-tune trainer on the stage-2 dataset, from the same seed's DMSPS checkpoint; a
    # continuation (--c) does not pass -pretrained_weights again (nnU-Net refuses both together)
    import run_benchmark
    for d in ("Dataset700_X", "Dataset702_XStage2"):
        (tmp_path / "nnUNet_raw" / d).mkdir(parents=True)
    bench = run_benchmark.Benchmark(run_benchmark.parse_args(["--dataset", "acdc", "--work", str(tmp_path),
                                                              "--profile", "cpu3k"]))
    calls = []
    bench.run = lambda cmd, env=None, measure=False: calls.append(cmd) or {}
    bench.train("DMSPS_stage2_ft", 0)
    stage1 = (tmp_path / "nnUNet_results" / "Dataset700_X" / "nnUNetTrainerDMSPS_cpu3k__nnUNetPlans__2d_cpu" / "fold_0"
              / "checkpoint_final.pth")
    assert [str(c) for c in calls[0][1:]] == ["702", "2d_cpu", "0", "-tr", "nnUNetTrainerDMSPS_finetune_cpu3k",
                                              "-device", "cpu", "-pretrained_weights", str(stage1)]
    fold = bench.fold_dir("DMSPS_stage2_ft", 0)
    fold.mkdir(parents=True)
    (fold / "checkpoint_latest.pth").touch()
    bench.train("DMSPS_stage2_ft", 0)
    assert [str(c) for c in calls[1][1:]] == ["702", "2d_cpu", "0", "-tr", "nnUNetTrainerDMSPS_finetune_cpu3k",
                                              "-device", "cpu", "--c"]


def test_each_seed_expands_and_trains_its_own_stage2_dataset(tmp_path, capsys):
    """A stage-2 arm with seed 3: dmsps-expand with seed 3's DMSPS model into dataset id + 2 + 10 x 3 (732), then the
    warm-start arm (the reference code's stage 2) trains there from seed 3's DMSPS checkpoint."""
    import run_benchmark
    args = ["--dataset", "acdc", "--work", str(tmp_path), "--profile", "cpu3k", "--arms", "--seeds", "3",
            "--seed-arms", "DMSPS_stage2_warm"]
    (tmp_path / "nnUNet_raw" / "Dataset700_X").mkdir(parents=True)
    bench = run_benchmark.Benchmark(run_benchmark.parse_args(args))
    calls, planned = [], []
    bench.run = lambda cmd, env=None, measure=False: calls.append((cmd, env)) or {}
    bench.plan = lambda kind, seed=0: planned.append((kind, seed))
    bench.expand_stage2(3)
    (cmd, env), = calls
    assert [str(c) for c in cmd[3:]] == ["dmsps-expand", "-d", "700", "-o", "732", "-c", "2d_cpu", "-f", "0", "-tr",
                                         "nnUNetTrainerDMSPS_cpu3k", "-device", "cpu"]
    assert env == {"nnUNet_results": str(tmp_path / "nnUNet_results_seed3")} and planned == [("stage2", 3)]
    (tmp_path / "nnUNet_raw" / "Dataset732_XStage2").mkdir()
    bench.expand_stage2(3)          # already expanded: not again
    assert len(calls) == 1
    bench.train("DMSPS_stage2_warm", 3)
    stage1 = (tmp_path / "nnUNet_results_seed3" / "Dataset700_X" / "nnUNetTrainerDMSPS_cpu3k__nnUNetPlans__2d_cpu"
              / "fold_0" / "checkpoint_final.pth")
    assert [str(c) for c in calls[1][0][1:]] == ["732", "2d_cpu", "0", "-tr", "nnUNetTrainerDMSPS_stage2_cpu3k",
                                                 "-device", "cpu", "-pretrained_weights", str(stage1)]
    assert bench.fold_dir("DMSPS_stage2_warm", 3).parent.parent.name == "Dataset732_XStage2"
    assert bench.dataset_id("stage2", 0) == 702 and bench.dataset_id("scribble", 3) == 700
    # ids have three digits in nnU-Net: a seed that would need more is refused before anything runs
    base = args[:args.index("--seeds")]
    assert run_benchmark.parse_args(base + ["--id", "900", "--seeds", "9", "--seed-arms", "DMSPS_stage2"]).id == 900
    with pytest.raises(SystemExit):
        run_benchmark.parse_args(base + ["--id", "950", "--seeds", "5", "--seed-arms", "DMSPS_stage2"])
    assert "the stage-2 dataset of seed 5 would get id 1002" in capsys.readouterr().err


def test_validation_dice_uses_dense_labels_of_the_validation_cases_only(tmp_path):
    """benchmarks/validation_dice.py: nnU-Net's fold_0/validation predictions against labelsTr_dense; training
    cases without a validation prediction are left out; Dice checked by hand."""
    import SimpleITK as sitk
    import validation_dice

    def write(a, f):
        f.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(sitk.GetImageFromArray(np.asarray(a, np.uint8)), str(f))

    ref = tmp_path / "nnUNet_raw" / "Dataset9_X" / "labelsTr_dense"
    val = tmp_path / "nnUNet_results" / "Dataset9_X" / "T__nnUNetPlans__2d" / "fold_0" / "validation"
    r = np.zeros((1, 4, 4)); r[0, :2, :2] = 1; r[0, 2:, 2:] = 2          # 4 voxels each
    p = np.zeros((1, 4, 4)); p[0, :2, :1] = 1; p[0, 2:, 2:] = 2; p[0, 0, 3] = 2  # class 1: 2 of 4; class 2: 4 + 1 extra
    write(r, ref / "a.nii.gz"); write(p, val / "a.nii.gz")
    write(np.ones((1, 4, 4)), ref / "b.nii.gz")  # a training case of another fold: no prediction
    dice, n = validation_dice.validation_dice(tmp_path, "nnUNet_results", "Dataset9_X", "T", "2d")
    assert n == 1
    assert dice == pytest.approx(np.mean([2 * 2 / (2 + 4), 2 * 4 / (5 + 4)]))
    with pytest.raises(FileNotFoundError, match="no validation predictions"):
        validation_dice.validation_dice(tmp_path, "nnUNet_results", "Dataset9_X", "T", "3d_fullres")


def test_gpu_summary_gap_closed_uses_the_benchmark_rule():
    """gpu_acdc.sh's table: the gap column from the evaluated arms, blank without pL or the dense ceiling."""
    from gpu_summary import gap_closed

    res = {a: {"": {"foreground_mean": {"Dice": d}}} for a, d in (("pL", 0.627), ("dense", 0.788), ("DMSPS", 0.753))}
    assert gap_closed(res, "DMSPS") == f"{(0.753 - 0.627) / (0.788 - 0.627):+.2f}" == "+0.78"
    assert gap_closed(res, "pL") == gap_closed(res, "dense") == ""
    assert gap_closed({k: v for k, v in res.items() if k != "dense"}, "DMSPS") == ""
    res["dense"][""]["foreground_mean"]["Dice"] = 0.5   # ceiling below the bar: no ratio
    assert gap_closed(res, "DMSPS") == "n/a (dense ≤ pL)"


def test_gpu_summary_counts_better_volumes_by_case_name():
    """The 'better than pL' column pairs volumes by name, not by their order in summary.json; classes that are
    empty in both (Dice None) are left out of a case's mean; different case sets are an error."""
    from gpu_summary import cases_better

    def summary(values):
        return {"metric_per_case": [{"prediction_file": f"/p/{c}.nii.gz",
                                     "metrics": {"1": {"Dice": a}, "2": {"Dice": b}, "3": {"Dice": None}}}
                                    for c, (a, b) in values.items()]}

    bar = summary({"p1": (0.5, 0.7), "p2": (0.2, 0.2), "p3": (0.9, 0.9)})            # means 0.6, 0.2, 0.9
    arm = summary({"p2": (0.1, 0.4), "p3": (0.8, 0.9), "p1": (0.6, 0.7)})            # means 0.25, 0.85, 0.65
    assert cases_better(arm, bar) == 2           # p1 and p2; pairing by position would give 1 (only 0.85 > 0.2)
    assert cases_better(bar, arm) == 1           # p3
    with pytest.raises(ValueError, match="different cases"):
        cases_better(summary({"p1": (0.5, 0.5)}), bar)


def test_paired_comparison_against_hand_computed_values(tmp_path, capsys):
    """Two seeds, 6 cases: seed 0 the arm is better on all 6 (+0.1 each; exact Wilcoxon p = 2/2**6), seed 1
    worse on 4 of 6; summary over seeds by hand; summary.json columns merge with table columns and must agree."""
    import paired_comparison as pc

    cases = [f"c{i}" for i in range(6)]
    bar0 = [0.5, 0.6, 0.4, 0.7, 0.55, 0.45]
    arm0 = [v + 0.1 for v in bar0]
    bar1 = [0.6] * 6
    arm1 = [0.5, 0.5, 0.5, 0.5, 0.7, 0.8]
    table = ["| case | pL_seed0 | DMPLS_seed0 | pL_seed1 |", "|---|---|---|---|"]
    table += [f"| {c} | {b0} | {a0:.3f} | {b1} |" for c, b0, a0, b1 in zip(cases, bar0, arm0, bar1)]
    (tmp_path / "t.md").write_text("\n".join(table) + "\n")
    # DMPLS seed 1 as the benchmark writes it: nnU-Net's summary.json, the case mean over the classes
    folder = tmp_path / "predictions" / "DMPLS_seed1"
    folder.mkdir(parents=True)
    per_case = [{"prediction_file": f"/x/{c}.nii.gz", "metrics": {"1": {"Dice": v - 0.05}, "2": {"Dice": v + 0.05},
                                                                  "3": {"Dice": None}}} for c, v in zip(cases, arm1)]
    (folder / "summary.json").write_text(json.dumps({"metric_per_case": per_case}))
    out = tmp_path / "merged.md"
    assert pc.main(["--arms", "DMPLS", "--tables", str(tmp_path / "t.md"), "--predictions",
                    str(tmp_path / "predictions"), "--out", str(out)]) == 0
    columns = pc.merge([pc.read_table(tmp_path / "t.md"), pc.read_predictions(tmp_path / "predictions")])
    res = pc.compare(columns, "DMPLS", "pL")
    s0, s1 = res["per_seed"]
    assert (s0["better"], s0["n"]) == (6, 6) and s0["diff"] == pytest.approx(0.1)
    assert s0["p"] == pytest.approx(2 / 2 ** 6)
    assert s1["better"] == 2 and s1["diff"] == pytest.approx((sum(arm1) - 3.6) / 6)
    assert s1["arm"] == pytest.approx(np.mean(arm1))
    summ = res["summary"]
    m0, m1 = np.mean(arm0), np.mean(arm1)
    assert summ["arm_mean"] == pytest.approx((m0 + m1) / 2)
    assert summ["arm_std"] == pytest.approx(abs(m0 - m1) / np.sqrt(2))  # sample std of two values
    assert summ["above"] == 1 and summ["sign_p"] == 1.0  # arm 0.6083 > 0.533; 0.5833 < 0.6
    assert pc.sign_test_p(5, 5) == pytest.approx(0.0625) and pc.sign_test_p(4, 5) == pytest.approx(0.375)
    # the written per-case table reads back to the same columns
    back = pc.read_table(out)
    assert set(back) == {"pL_seed0", "DMPLS_seed0", "pL_seed1", "DMPLS_seed1"}
    assert back["DMPLS_seed1"]["c4"] == pytest.approx(0.7, abs=1e-6)
    assert "above the bar in 1 of 2 seeds" in capsys.readouterr().out
    # a column present in two sources with different values is refused
    with pytest.raises(ValueError, match="differs"):
        pc.merge([{"pL_seed0": {"c0": 0.5}}, {"pL_seed0": {"c0": 0.6}}])
    # an arm without a paired bar seed is an error, not an empty table
    assert pc.main(["--arms", "PSSeg", "--tables", str(tmp_path / "t.md")]) == 1


def test_stage2_label_stats_by_hand(tmp_path):
    """benchmarks/stage2_label_stats.py: label fractions, cases per label and precision against the dense labels."""
    import SimpleITK as sitk
    import stage2_label_stats

    folder = tmp_path / "Dataset732_XStage2"
    for sub in ("labelsTr", "labelsTr_dense"):
        (folder / sub).mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "A": 1, "ignore": 2},
                                                     "file_ending": ".nii.gz"}))
    expanded = {"a": [[0, 0, 1, 2]], "b": [[0, 2, 2, 2]]}
    dense = {"a": [[0, 1, 1, 1]], "b": [[0, 0, 1, 1]]}
    for case in expanded:
        for sub, arrays in (("labelsTr", expanded), ("labelsTr_dense", dense)):
            sitk.WriteImage(sitk.GetImageFromArray(np.asarray([arrays[case]], np.uint8)),
                            str(folder / sub / f"{case}.nii.gz"))
    stats = stage2_label_stats.label_stats(folder)
    assert stats["n_cases"] == 2
    assert stats["mean_fraction_percent"] == [pytest.approx(37.5), pytest.approx(12.5), pytest.approx(50.0)]
    assert stats["cases_with_label"] == [2, 1, 2]
    # background: 3 labelled voxels, a[0,1] is A in the dense label -> 2 of 3 right; A: 1 of 1
    assert stats["precision"] == [pytest.approx(2 / 3, abs=1e-4), 1.0] and stats["labelled_voxels"] == [3, 1]
    (folder / "labelsTr_dense" / "b.nii.gz").unlink()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((1, 1, 3), np.uint8)), str(folder / "labelsTr_dense" / "b.nii.gz"))
    with pytest.raises(ValueError, match="b.nii.gz: dense label"):
        stage2_label_stats.label_stats(folder)
