#!/usr/bin/env bash
# GPU check: the trainers through nnU-Net's real commands on a CUDA GPU, and the cost of every method on
# nnU-Net's DEFAULT plans (the GPU profile's plans) relative to nnU-Net's own trainer, measured in the same run.
#
#   OUT=/path/for/results [WHEELS=dir] [DEVICE=cuda] bash benchmarks/gpu_check.sh
#
# WHEELS (optional): a folder of wheels for an offline machine that already has torch (installed with --no-deps;
# a *-site.tar.xz in it is unpacked into site-packages: a wheel too large to travel, repacked). The package
# itself is installed from this checkout with --no-deps.
# Stages (each time-boxed; one failing stage does not stop the others; logs and tables go to $OUT):
#   1. tests/test_gpu.py: losses and networks on the GPU against the CPU, mixed precision.
#   2. tests/test_nnunet_commands.py with NNUNET_SCRIBBLE_TEST_DEVICE=cuda: nnUNetv2_train / nnUNetv2_predict /
#      --c / --val / dmsps-expand / 3d_fullres / 3d_lowres on the GPU, every trainer, tiny synthetic data
#      (multi-decoder tests first, then the rest; CMD_TIMEOUT per part, CMD_K for one selection of your own).
#      Meanwhile (CPU only) two synthetic datasets shaped like the benchmark data are planned and preprocessed
#      with nnU-Net's default plans, shaped like the converted benchmark datasets (median shape and spacing of
#      Dataset700 ACDC and Dataset710 BTCV; ACDC has ~140 volumes, which sets its 2d batch size of 56): ACDC-like
#      (130 cases of 9 x 256 x 216 at 10 x 1.5625 x 1.5625 mm) for 2d
#      and BTCV-like (8 cases of 148 x 234 x 256 at 3 x 1.35 x 1.35 mm) for 3d_fullres.
#   3. benchmarks/timing.py on both: seconds per training step and peak GPU memory of each arm, ratio to pL.
# Knobs: TIMING=0 skips the default-plans data and stage 3 (a short device budget spent on stage 2 alone);
# DEADLINE (seconds from the start): no stage-2 part runs past it;
# CMD_NPROC_DA (default 2) is nnU-Net's augmentation worker count (nnUNet_n_proc_DA) in stage 2's tiny trainings:
# nnU-Net's default of 12 workers per training costs more start-up than the tiny trainings themselves.
# Synthetic data: step time and memory depend on the plans (patch, batch, network), not on the image content.
# $OUT gets steps.log, env.txt, the timing tables (timing_*.md) and logs.tgz (every log, timing json, plans).
set -u
OUT=${OUT:-gpu_check_out}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-15}
ARMS=${ARMS:-"pL pCE DMPLS DMSPS PSSeg"}
NPROC=${NPROC:-$(( $(nproc) > 12 ? 12 : $(nproc) ))}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
export PYTHONUNBUFFERED=1 nnUNet_compile=f
T0=$(date +%s)
W=$(mktemp -d)
L=$W/logs
mkdir -p "$L"
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/steps.log"; tar -czf "$OUT/logs.tgz" -C "$W" logs; }

{ nvidia-smi 2>&1 || true; nproc; free -g; } > "$OUT/env.txt"
if [ -n "${WHEELS:-}" ]; then
  log "install wheels from $WHEELS"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir $(ls "$WHEELS"/*.whl | grep -vi simpleitk) \
    >> "$L/install.log" 2>&1 || log "wheel install failed"
  SITE=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  for t in "$WHEELS"/*-site.tar.xz; do [ -e "$t" ] && tar -xJf "$t" -C "$SITE"; done
fi
python3 -m pip install -q --no-deps --no-build-isolation --no-compile . >> "$L/install.log" 2>&1 || log "package install failed"
python3 - >> "$OUT/env.txt" 2>&1 <<'EOF'
import torch, nnunetv2, SimpleITK, dynamic_network_architectures, nnunet_scribble, importlib.metadata as md
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
for p in ("nnunetv2", "dynamic-network-architectures", "SimpleITK", "nnunet_scribble", "numpy"):
    print(p, md.version(p))
EOF
log "installed: $(tail -n 7 "$OUT/env.txt" | tr '\n' ' ')"

prepare() {   # $1 dataset id, $2 config, $3 n_train, $4 shape, $5 spacing (x, y, z)
  local root="$W/d$1"
  mkdir -p "$root"
  ( export nnUNet_raw=$root/nnUNet_raw nnUNet_preprocessed=$root/nnUNet_preprocessed nnUNet_results=$root/nnUNet_results
    python3 -c "from nnunet_scribble.demo import make_synthetic_dataset as m; m('$root/nnUNet_raw', dataset_id=$1, n_train=$3, n_test=2, shape=$4, spacing=$5)" &&
    nnUNetv2_plan_and_preprocess -d "$1" -c "$2" -np "$NPROC" ) > "$L/prepare_$1.log" 2>&1
}

log "stage 1: tests/test_gpu.py"
timeout 150 python3 -m pytest -v -rA -p no:cacheprovider tests/test_gpu.py > "$L/test_gpu.log" 2>&1
rc=$?; log "stage 1 rc=$rc $(grep -c " PASSED" "$L/test_gpu.log") passed: $(tail -n 1 "$L/test_gpu.log")"

TIMING=${TIMING:-1}
log "stage 2: nnU-Net commands on $DEVICE$([ "$TIMING" = 1 ] && echo " (+ preparing the default-plans data on the CPU)")"
[ "$TIMING" = 1 ] && ( prepare 810 2d 130 "(9, 256, 216)" "(1.5625, 1.5625, 10.0)"; prepare 811 3d_fullres 8 "(148, 234, 256)" "(1.35, 1.35, 3.0)" ) &
# the multi-decoder trainers first (the longest tests; on the H200 leases of 2026-11-26 the partial-CE trainers
# passed on the first, the multi-decoder ones on the second), then the rest; each part has its own time box. CMD_K replaces both with one selection.
if [ -n "${CMD_K:-}" ]; then PARTS=("$CMD_K"); else
  FIRST="(DMPLS or DMSPS or PSSeg or 3d_multi_decoder or continue_and_validation or 3d_lowres) and not compile"
  PARTS=("$FIRST" "not ($FIRST)"); fi
i=0
for k in "${PARTS[@]}"; do
  i=$((i + 1))
  t=${CMD_TIMEOUT:-300}
  if [ -n "${DEADLINE:-}" ]; then left=$(( DEADLINE - $(date +%s) + T0 )); [ "$left" -lt "$t" ] && t=$left; fi
  [ "$t" -lt 30 ] && { log "stage 2.$i ($k) not started: DEADLINE"; continue; }
  nnUNet_n_proc_DA=${CMD_NPROC_DA:-2} NNUNET_SCRIBBLE_TEST_DEVICE=$DEVICE timeout "$t" python3 -m pytest -v -rA -p no:cacheprovider \
    --durations=0 tests/test_nnunet_commands.py -k "$k" > "$L/test_commands_$i.log" 2>&1
  rc=$?   # timeout signals its whole process group: the part's nnU-Net children end with it
  log "stage 2.$i ($k) rc=$rc $(grep -c " PASSED" "$L/test_commands_$i.log") passed: $(tail -n 1 "$L/test_commands_$i.log")"
done
wait
[ "$TIMING" = 1 ] || { log "done (TIMING=0: no stage 3)"; exit 0; }
for d in 810 811; do cp "$W"/d$d/nnUNet_preprocessed/*/nnUNetPlans.json "$L/plans_$d.json" 2>/dev/null; done
log "prepared: $(python3 -c "
import json, sys
for f in sys.argv[1:]:
    c = json.load(open(f))['configurations']
    print(f.split('/')[-1], {k: (v.get('patch_size'), v.get('batch_size')) for k, v in c.items() if 'patch_size' in v})
" "$L"/plans_81*.json 2>&1 | tr '\n' ' ')"

for spec in "810 2d" "811 3d_fullres"; do
  set -- $spec
  log "stage 3: timing $2 on Dataset$1"
  timeout "${TIMING_TIMEOUT:-200}" python3 benchmarks/timing.py --work "$W/d$1" --dataset-id "$1" --config "$2" \
    --budget gpu --arms $ARMS --steps "$STEPS" --device "$DEVICE" --n-proc-da "$NPROC" --predict-cases 0 \
    --out "$OUT/timing_$2.md" > "$L/timing_$2.log" 2>&1
  rc=$?   # (and the measuring child of a time-boxed timing.py with it)
  log "timing $2 rc=$rc"
  mv "$OUT/timing_$2.json" "$L/" 2>/dev/null
done
log "done"
