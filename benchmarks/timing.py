"""Training-step time, peak memory and inference time of every arm, relative to nnU-Net's own trainer.

    python benchmarks/timing.py --work /path/to/benchmark/work --dataset-id 700 --config 2d_cpu \\
        [--steps 20] [--predict-cases 5] [--out benchmarks/results/acdc_cpu_timing.md]

Run it on an otherwise idle machine, after ``run_benchmark.py`` has preprocessed the data (and, for the
inference column, trained the arms). Each arm runs in its own process (so peak RSS is its own): the real
nnU-Net trainer is built from the plans, ``on_train_start`` builds nnU-Net's data loaders, then
``--steps`` training iterations (``train_step``: forward, loss, backward, optimizer step) are timed after
3 warm-up steps; the median is reported. Inference: ``nnUNetv2_predict`` of the first ``--predict-cases``
test images with the arm's trained checkpoint (same settings as the benchmark), wall time.
On CUDA the peak is ``torch.cuda.max_memory_allocated``; on CPU it is the process's peak RSS.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from run_benchmark import ARMS  # noqa: E402

MEASURE = r"""
import json, resource, sys, time
t0 = time.time()
def phase(what):   # progress on stderr, which timing.py passes through: a stalled run shows where it stalled
    print(f"  [{time.time() - t0:.1f}s] {what}", file=sys.stderr, flush=True)
import numpy as np, torch
phase("torch imported")
from batchgenerators.utilities.file_and_folder_operations import load_json, join
from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
import nnunetv2, os
pre, config, trainer_name, steps, device, fold = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
cls = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer"), trainer_name,
                                  "nnunetv2.training.nnUNetTrainer")
plans = load_json(join(pre, "nnUNetPlans.json"))
plans["continue_training"] = False  # nnU-Net 2.8.1 pops this key in __init__
trainer = cls(plans, config, fold, load_json(join(pre, "dataset.json")), torch.device(device))
phase("trainer built")
trainer.on_train_start()
phase("on_train_start (network, data loaders)")
trainer.on_epoch_start()
trainer.on_train_epoch_start()
times = []
for i in range(steps + 3):
    batch = next(trainer.dataloader_train)
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    trainer.train_step(batch)
    if device == "cuda":
        torch.cuda.synchronize()
    times.append(time.perf_counter() - t)
    phase(f"step {i}: {times[-1]:.3f} s")
peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
n_params = sum(p.numel() for p in trainer.network.parameters())
name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
print("RESULT " + json.dumps({"s_per_step": float(np.median(times[3:])), "peak_mib": peak, "n_parameters": n_params,
                              "device_name": name, "batch_size": trainer.batch_size,
                              "patch_size": list(trainer.configuration_manager.patch_size)}))
os._exit(0)
"""


def measure_training(pre: Path, config: str, trainer: str, steps: int, device: str, env: dict, fold: str = "0",
                     n_proc_da: int = 0) -> dict:
    """Run MEASURE in its own process group and read its RESULT line; then end the whole group, since
    augmentation workers that outlive it would hold its stdout open (and the GPU) forever."""
    proc = subprocess.Popen([sys.executable, "-c", MEASURE, str(pre), config, trainer, str(steps), device, str(fold)],
                            env=dict(env, nnUNet_n_proc_DA=str(n_proc_da)), stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    result, tail = None, collections.deque(maxlen=40)
    try:
        for line in proc.stdout:
            if line.startswith("RESULT "):
                result = json.loads(line[7:])
                break
            tail.append(line)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    if result is None:
        raise RuntimeError(f"timing of {trainer} failed (exit {proc.returncode}; its stderr is above):\n"
                           + "".join(tail)[-2000:])
    return result


def measure_inference(work: Path, dataset: str, config: str, trainer: str, n_cases: int, device: str,
                      env: dict, fold: str = "0") -> float | None:
    if n_cases <= 0:
        return None
    if not (work / "nnUNet_results" / dataset / f"{trainer}__nnUNetPlans__{config}" / f"fold_{fold}" /
            "checkpoint_final.pth").exists():
        return None
    images = sorted((work / "nnUNet_raw" / dataset / "imagesTs").glob("*_0000.nii.gz"))[:n_cases]
    with tempfile.TemporaryDirectory() as tmp:
        for f in images:
            shutil.copy(f, tmp)
        start = time.time()
        subprocess.run([str(Path(sys.executable).parent / "nnUNetv2_predict"), "-i", tmp, "-o", tmp + "/pred",
                        "-d", dataset, "-c", config, "-f", str(fold), "-tr", trainer, "-device", device, "-npp", "1",
                        "-nps", "1"], env=env, check=True, capture_output=True)
        return time.time() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True)
    p.add_argument("--dataset-id", type=int, default=700)
    p.add_argument("--config", default="2d_cpu")
    p.add_argument("--budget", default="cpu", help="trainer suffix whose checkpoints are used for inference")
    p.add_argument("--arms", nargs="+", default=["pL", "pCE", "pCE_keepDS", "DMPLS", "DMSPS", "PSSeg",
                                                  "DMPLS_avg", "DMSPS_avg", "PSSeg_avg"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--predict-cases", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--fold", default="0", help="nnU-Net fold whose split (training) and checkpoint (inference) are used")
    p.add_argument("--n-proc-da", type=int, default=0,
                   help="nnU-Net's data-augmentation workers (0: in the main process; loading is never timed)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    # a time limit's SIGTERM must run measure_training's cleanup (its child is in a process group of its own)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if "pL" not in args.arms:
        p.error("--arms must include pL: ratios are to nnU-Net's own trainer measured in the same run")
    work = Path(args.work).resolve()
    dataset = next((work / "nnUNet_raw").glob(f"Dataset{args.dataset_id:03d}_*")).name
    env = dict(os.environ, nnUNet_raw=str(work / "nnUNet_raw"), nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
               nnUNet_results=str(work / "nnUNet_results"), nnUNet_compile="f", nnUNet_def_n_proc="2")
    pre = work / "nnUNet_preprocessed" / dataset
    rows = {}
    for arm in args.arms:
        trainer = f"{ARMS[arm][0]}_{args.budget}"
        print(f"[{time.strftime('%H:%M:%S')}] {arm}: {trainer}", flush=True)
        try:
            rows[arm] = measure_training(pre, args.config, trainer, args.steps, args.device, env, args.fold,
                                         args.n_proc_da)
        except RuntimeError as e:   # one failing arm (e.g. out of memory) must not lose the others' numbers
            print(e, file=sys.stderr, flush=True)
            rows[arm] = {"error": str(e)[-3000:]}
            continue
        rows[arm]["inference_s"] = measure_inference(work, dataset, args.config, trainer, args.predict_cases,
                                                     args.device, env, args.fold)
    ref = rows["pL"]
    if "error" in ref:
        print("nnU-Net's own trainer (pL) failed: no ratios", file=sys.stderr)
        Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=2))
        return 1
    lines = [f"`{args.config}` on {dataset}, {args.steps} timed training steps per arm (median, after 3 warm-up "
             f"steps), device `{args.device}` ({ref.get('device_name', '?')}), batch size {ref.get('batch_size', '?')}, "
             f"patch {ref.get('patch_size', '?')}; "
             + (f"inference: nnUNetv2_predict of {args.predict_cases} test cases (with test-time mirroring). "
                if args.predict_cases > 0 else "inference not measured (--predict-cases 0). ")
             + f"Ratios are to nnU-Net's own trainer (pL) measured in the same run.", "",
             "| arm | trainer | parameters | s / training step | ratio | peak memory (MiB) | ratio | inference (s) | ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for arm, r in rows.items():
        if "error" in r:
            first = r["error"].strip().splitlines()[0].replace("|", "/")   # "timing of X failed (exit N; ...)"
            lines.append(f"| {arm} | {ARMS[arm][0]} | {first} | | | | | | |")
            continue
        inf = r["inference_s"]
        inf_text = (f"{inf:.1f} | {inf / ref['inference_s']:.2f}" if inf and ref["inference_s"] else "n/a | n/a")
        lines.append(f"| {arm} | {ARMS[arm][0]} | {r['n_parameters'] / 1e6:.2f} M | {r['s_per_step']:.3f} | "
                     f"{r['s_per_step'] / ref['s_per_step']:.2f} | {r['peak_mib']:.0f} | "
                     f"{r['peak_mib'] / ref['peak_mib']:.2f} | {inf_text} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
