#!/usr/bin/env bash
# ACDC GPU profile inside one short device lease: nnU-Net's DEFAULT 2d plans, the real expert scribbles, the
# same training cases, fold-0 split and test patients (021-040) as the CPU benchmark, the `gpu1k` budget
# (10 epochs x 100 iterations; the full `gpu` profile's 62 500 iterations take hours), arms trained at the same
# time on the one GPU, then predicted (arms at the same time), evaluated (raw and largest-component) and timed
# one at a time.
#
# Prepare here (the GPU machine reaches nothing; a call carries at most 64 MiB):
#   python benchmarks/pack_raw.py pack <work>/nnUNet_raw/Dataset700_ACDCScribble .gpudata --parts 3
#   cp <work>/nnUNet_preprocessed/Dataset700_ACDCScribble/{nnUNetPlans,dataset_fingerprint}.json .gpudata/
#   (wheels of nnU-Net's dependencies that the machine lacks in .whl, as for gpu_check.sh)
# Call 1 (carry .whl):     SETUP=1 WHEELS=.whl bash benchmarks/gpu_acdc.sh     (installs, nothing else)
# Call 2 (carry .gpudata): OUT=$OUT DEADLINE=560 bash benchmarks/gpu_acdc.sh
# Knobs: ARMS (default "pL DMSPS_pLDice"; pL first: ratios and per-case comparisons are to it; "dense", the
# ceiling, trains on the dense twin Dataset701 preprocessed with the same plans, and adds the fraction of the gap
# closed to results.md; it is left out of the timing: it is pL's trainer), BUDGET (gpu1k),
# SEED (0), DEVICE (cuda), DEADLINE (seconds from the start after which no new stage starts; trainings are
# stopped at DEADLINE - 150 so that prediction and evaluation still fit; evaluation may run to DEADLINE + 30),
# STEPS (timed steps per arm, 10),
# KEEP_WORK=1 keeps the temporary work folder (data, checkpoints, predictions; removed at the end otherwise).
# $OUT gets steps.log, results.md (accuracy and training time), timing_2d.md (step time and peak memory of each
# arm alone on the GPU, ratio to pL) and logs.tgz (every log, summary.json per arm, nnU-Net's training logs).
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
export PYTHONUNBUFFERED=1 nnUNet_compile=f
T0=$(date +%s)
if [ "${SETUP:-0}" = 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir $(ls "$WHEELS"/*.whl) || exit 1
  SITE=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  for t in "$WHEELS"/*-site.tar.xz; do [ -e "$t" ] && tar -xJf "$t" -C "$SITE"; done
  python3 -m pip install -q --no-deps --no-build-isolation --no-compile . || exit 1
  python3 -c "import torch, nnunetv2, SimpleITK, nnunet_scribble; print('installed', torch.__version__, torch.cuda.is_available())"
  echo "setup $(( $(date +%s) - T0 ))s"
  exit 0
fi
OUT=${OUT:-gpu_acdc_out}
PACK=${PACK:-.gpudata}
ARMS=${ARMS:-"pL DMSPS_pLDice"}
BUDGET=${BUDGET:-gpu1k}
SEED=${SEED:-0}
DEVICE=${DEVICE:-cuda}
DEADLINE=${DEADLINE:-560}
STEPS=${STEPS:-10}
CONFIG=2d
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
W=$(mktemp -d)
[ "${KEEP_WORK:-0}" = 1 ] || trap 'rm -rf "$W"' EXIT   # everything worth keeping is under $OUT
L=$W/logs
mkdir -p "$L"
export nnUNet_raw=$W/nnUNet_raw nnUNet_preprocessed=$W/nnUNet_preprocessed nnUNet_results=$W/nnUNet_results
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/steps.log"; }
left() { echo $(( DEADLINE - $(date +%s) + T0 )); }
pack_logs() { tar -czf "$OUT/logs.tgz" -C "$W" logs; }
trainer() { python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from run_benchmark import ARMS; print(ARMS['$1'][0])"; }
kind() { python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from run_benchmark import ARMS; print(ARMS['$1'][1])"; }
dsid() { [ "$(kind "$1")" = dense ] && echo 701 || echo 700; }
n_arms=$(echo $ARMS | wc -w)
NDA=${NDA:-$(( ($(nproc) - 2) / n_arms ))}
for arm in $ARMS; do
  trainer "$arm" > /dev/null 2>&1 || { log "unknown arm $arm (benchmarks/run_benchmark.py ARMS)"; exit 2; }
  case "$(kind "$arm")" in scribble|dense) ;; *) log "arm $arm needs the stage-2 dataset: not run by this script"; exit 2;; esac
done
{ nvidia-smi 2>&1 || true; nproc; python3 -c "import sys, torch, nnunetv2, importlib.metadata as m
print(sys.version.split()[0], 'torch', torch.__version__, 'nnunetv2', m.version('nnunetv2'))" 2>&1; } > "$L/env.txt"

log "unpack $PACK"
python3 benchmarks/pack_raw.py unpack "$PACK"/part*.npz.xz "$nnUNet_raw/Dataset700_ACDCScribble" > "$L/unpack.log" 2>&1 \
  || { log "unpack failed: $(tail -n 3 "$L/unpack.log")"; pack_logs; exit 1; }
P=$nnUNet_preprocessed/Dataset700_ACDCScribble
mkdir -p "$P"
cp "$PACK/nnUNetPlans.json" "$PACK/dataset_fingerprint.json" "$P/"
cp "$nnUNet_raw/Dataset700_ACDCScribble/splits_final.json" "$nnUNet_raw/Dataset700_ACDCScribble/dataset.json" "$P/"
log "nnUNetv2_preprocess 2d (the plans of the CPU benchmark's work folder; its 2d configuration is nnU-Net's default)"
nnUNetv2_preprocess -d 700 -c "$CONFIG" -np "$(nproc)" > "$L/preprocess.log" 2>&1 \
  || { log "preprocess failed: $(tail -n 3 "$L/preprocess.log")"; pack_logs; exit 1; }

if echo " $ARMS " | grep -q " dense "; then
  # the dense arm (ceiling): the dense twin (same images, splits and test labels; labelsTr = labelsTr_dense) as the
  # CPU benchmark builds it, preprocessed with the SAME plans (only the dataset name changed)
  log "dense twin Dataset701 (same plans) and nnUNetv2_preprocess 2d"
  P1=$nnUNet_preprocessed/Dataset701_ACDCScribbleDense
  python3 - "$nnUNet_raw" "$P" "$P1" > "$L/dense_twin.log" 2>&1 <<'PY' || { log "dense twin failed: $(tail -n 3 "$L/dense_twin.log")"; pack_logs; exit 1; }
import json, shutil, sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from run_benchmark import make_dense_twin
raw, p0, p1 = (Path(a) for a in sys.argv[1:])
twin = make_dense_twin(raw / "Dataset700_ACDCScribble", raw, 701)
assert twin.name == p1.name, twin.name
p1.mkdir(parents=True)
plans = json.loads((p0 / "nnUNetPlans.json").read_text())
plans["dataset_name"] = twin.name
(p1 / "nnUNetPlans.json").write_text(json.dumps(plans, indent=4))
for f in ("dataset_fingerprint.json",):
    shutil.copy(p0 / f, p1 / f)
for f in ("dataset.json", "splits_final.json"):
    shutil.copy(twin / f, p1 / f)
print("twin", twin)
PY
  nnUNetv2_preprocess -d 701 -c "$CONFIG" -np "$(nproc)" > "$L/preprocess_dense.log" 2>&1 \
    || { log "preprocess dense failed: $(tail -n 3 "$L/preprocess_dense.log")"; pack_logs; exit 1; }
fi

stop=$(( $(left) - 150 ))
[ "$stop" -lt 30 ] && { log "no time left to train"; pack_logs; exit 1; }
log "train $ARMS at the same time ($NDA augmentation workers each, seed $SEED, budget $BUDGET, stopped after ${stop}s)"
( nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader -l 5 > "$L/nvidia_smi.csv" 2>&1 & 
  echo $! > "$W/smi.pid" )
for arm in $ARMS; do
  tr=$(trainer "$arm")_$BUDGET
  ( s=$(date +%s)
    NNUNET_SCRIBBLE_SEED=$SEED nnUNet_n_proc_DA=$NDA timeout -k 15 "$stop" nnUNetv2_train "$(dsid "$arm")" "$CONFIG" 0 -tr "$tr" \
      -device "$DEVICE" > "$L/train_$arm.log" 2>&1
    echo "train $arm rc=$? $(( $(date +%s) - s ))s" >> "$L/status.txt" ) &
done
wait
kill "$(cat "$W/smi.pid")" 2>/dev/null
log "$(tr '\n' ';' < "$L/status.txt")"
pack_logs

# predictions of all arms at the same time (each mostly CPU-bound pre- and post-processing; 16 cores)
: > "$L/predict_status.txt"
for arm in $ARMS; do
  tr=$(trainer "$arm")_$BUDGET
  [ "$(left)" -lt 20 ] && { log "predict $arm not started: DEADLINE"; continue; }
  d=$(dsid "$arm")
  fold=$(ls -d "$nnUNet_results"/Dataset${d}_*/"${tr}__nnUNetPlans__$CONFIG"/fold_0 2>/dev/null | head -n 1)
  chk=checkpoint_final.pth   # a training stopped at its time limit: its last epoch's checkpoint, said in the log
  [ -n "$fold" ] && [ -e "$fold/$chk" ] || chk=checkpoint_latest.pth
  [ -n "$fold" ] && [ -e "$fold/$chk" ] || { log "predict $arm: no checkpoint"; continue; }
  ( s=$(date +%s)
    timeout -k 10 "$(left)" nnUNetv2_predict -i "$nnUNet_raw/Dataset700_ACDCScribble/imagesTs" -o "$W/predictions/$arm" \
      -d "$d" -c "$CONFIG" -f 0 -tr "$tr" -device "$DEVICE" -npp 3 -nps 3 -chk "$chk" > "$L/predict_$arm.log" 2>&1
    echo "predict $arm ($chk) rc=$? $(( $(date +%s) - s ))s (arms together)" >> "$L/predict_status.txt" ) &
done
wait
log "$(tr '\n' ';' < "$L/predict_status.txt")"

t=$(( $(left) + 30 ))   # evaluation gets DEADLINE + 30 s at most (the call's limit must leave that)
[ "$t" -gt 150 ] && t=150
[ "$t" -lt 20 ] && t=20   # (timeout 0 would mean no limit)
log "evaluate (${t}s at most)"
timeout -k 10 "$t" python3 benchmarks/gpu_summary.py "$W" "$ARMS" "$BUDGET" "$OUT/results.md" > "$L/evaluate.log" 2>&1
log "evaluate rc=$?: $(tail -n 6 "$L/evaluate.log" | tr '\n' ' ')"
pack_logs

t=$(( $(left) - 5 ))
if [ "$t" -ge 60 ]; then
  log "timing (${t}s left)"
  timeout -k 10 "$t" python3 benchmarks/timing.py --work "$W" --dataset-id 700 --config "$CONFIG" --budget "$BUDGET" \
    --arms $(echo " $ARMS " | sed 's/ dense / /') --steps "$STEPS" --device "$DEVICE" --n-proc-da 4 --predict-cases 0 --out "$OUT/timing_2d.md" \
    > "$L/timing.log" 2>&1
  log "timing rc=$?"
  mv "$OUT/timing_2d.json" "$L/" 2>/dev/null
else
  log "timing not started: DEADLINE"
fi
pack_logs
log "done"
