#!/bin/bash
# Issue 19's converged study on a lent GPU machine (one H200, no network there), in one call:
# installs the wheels carried in .whl/ (what the machine's image lacks: gymnasium, mujoco, tyro,
# tensorboardX; flax and optax at the project's versions), generates the 1M-transition datasets
# there (walker2d-medium-replay is carried in .gpu-data/), runs converged-gpu.toml and
# converged-more-gpu.toml side by side with `o2o sweep`, stops them at DEADLINE seconds after its
# start, and packs their run directories into $OUT (unfinished ones with their checkpoints, to
# finish here or in the next call: at most 8 files of 16 MiB come back).
#   DEADLINE=535 bash benchmarks/converged_gpu.sh      (device run, carry .whl and .gpu-data)
#   SWEEPS="rebrac-hopper-base:1 rebrac-hopper-td3bc:1" DEADLINE=180 bash ...  (other sweeps)
#   tar xzf runs.tgz -C runs/bench_offline; cat ckpt.tgz.* | tar xz -C runs/bench_offline (here)
#   python benchmarks/offline.py benchmarks/sweeps/offline/converged-gpu.toml --no-train
# The datasets are drawn by 16 processes on the machine's CPU cores (`o2o dataset make
# --workers`, the same data as one process draws). The machine's JAX (0.11.2) draws a
# hopper-medium 1M that differs from JAX 0.10.2's in 232 transitions; to finish its runs here,
# draw that file here with the same JAX (Python 3.12), then point O2O_DATA_DIR at it:
#   python3.12 -m venv /tmp/v312 && /tmp/v312/bin/pip install jax==0.11.2 -e .
#   O2O_DATA_DIR=DIR /tmp/v312/bin/o2o dataset make hopper-medium    (sha256 f1d1f4e8...)
#   O2O_DATA_DIR=DIR o2o sweep FILE    (a copy of converged-gpu.toml with the unfinished algos)
# Measured in its first call (2026-12-04): drawing hopper-medium's 1M transitions there took
# 7.3 min and halfcheetah-medium's 3.9 min (one process each, the policy then on the GPU);
# seven runs at once under MPS made 2,000-7,000 updates/s each (one seed), 940 for three
# vmapped seeds in the first interval; halfcheetah-medium's bc and cql finished,
# hopper-medium's runs had barely begun. Second call (evaluations on the CPU, data drawn by 16
# processes): hopper-medium 1M in 2:45 beside halfcheetah's draw; 21 runs at once made 680
# (ReBRAC, three vmapped seeds) to 3,400 (BC) updates/s; in 525 s 16 of 35 runs finished.
set -u
START=$(date +%s)
DEADLINE=${DEADLINE:-520}
OUT=${OUT:-/tmp/o2o-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false O2O_DATA_DIR=$PWD/.gpu-data
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
[ -L runs ] && rm runs  # a link to this checkout's state elsewhere: not here
mkdir -p runs/bench_offline
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if nvidia-cuda-mps-control -d 2>/dev/null; then MPS=1; else MPS=0; fi
echo "MPS: $MPS"
python3 -c "import jax, flax, optax, mujoco, gymnasium, o2o.train.pipeline; print('jax', jax.__version__, \
jax.devices(), 'flax', flax.__version__, 'mujoco', mujoco.__version__)" || exit 1
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 20 \
  > "$OUT/smi.csv" 2>&1 &

# Several runs share the GPU: many under MPS (kernels of different processes run at once),
# fewer without it (the GPU time-slices between processes).
if [ "$MPS" = 1 ]; then HOP=7 MORE=14; else HOP=4 MORE=4; fi
sweep() {  # $1: sweep file stem, $2: workers; in a process group of its own
  setsid python3 -c "import sys; from o2o.cli import main; sys.argv = ['o2o', 'sweep', \
'benchmarks/sweeps/offline/$1.toml', '--workers', '$2', '--debug']; main()" > "$OUT/$1.log" 2>&1 &
  PIDS="$PIDS $!"
}
PIDS=""
# SWEEPS: "FILE_STEM:WORKERS ..." (benchmarks/sweeps/offline/); default the converged study.
for spec in ${SWEEPS:-converged-gpu:$HOP converged-more-gpu:$MORE}; do
  sweep "${spec%%:*}" "${spec##*:}"
done
while [ $(( $(date +%s) - START )) -lt "$DEADLINE" ]; do
  alive=0; for p in $PIDS; do kill -0 "$p" 2>/dev/null && alive=1; done
  [ $alive = 0 ] && break
  sleep 5
done
for p in $PIDS; do kill -9 -- "-$p" 2>/dev/null; done; sleep 1
python3 - <<'EOF' > "$OUT/data.txt" 2>&1
import hashlib, pathlib, numpy as np
for path in sorted(pathlib.Path(".gpu-data").glob("*.npz")):
    data = np.load(path)
    digest = hashlib.sha256(data["observations"].tobytes()).hexdigest()[:16]
    print(path.name, len(data["rewards"]), "observations sha256", digest)
print("drawn on the 2-core CPU (JAX 0.10.2): hopper-medium 84819240523b414e, "
      "halfcheetah-medium b47ba52f0a7b6cbb, walker2d-medium-replay b755be81476568e6")
EOF
# Back come at most 8 files of 16 MiB, 64 MiB in all: runs.tgz holds the logs and every run
# without checkpoints; ckpt.tgz.N the unfinished runs with theirs (hopper-medium's first, then
# the furthest), as many as fit in 56 MiB, cut into pieces of 15 MiB (`cat ckpt.tgz.* | tar xz`).
cd runs/bench_offline || exit 1
for run in *-gpu-*; do
  [ -f "$run/summary.json" ] && continue
  updates=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["updates"])' \
    "$run/checkpoints/offline/progress.json" 2>/dev/null || echo 0)
  case $run in hopper-*) first=1 ;; *) first=0 ;; esac
  echo "$first $updates $run"
done | sort -k1,1nr -k2,2nr | cut -d' ' -f3 > /tmp/unfinished
: > /tmp/resumable; total=0
while read -r run; do
  size=$(du -sk --exclude=tb "$run" | cut -f1)
  [ $(( total + size )) -gt $(( 56 * 1024 )) ] && continue
  total=$(( total + size )); echo "$run" >> /tmp/resumable
done < /tmp/unfinished
mv "$OUT"/*.log "$OUT/data.txt" .
tar czf "$OUT/runs.tgz" --exclude=checkpoints --exclude=tb --exclude=lock *-gpu-* *.log data.txt
[ -s /tmp/resumable ] && tar czf - --exclude=tb --exclude=lock -T /tmp/resumable \
  | split -b 15M -d -a 1 - "$OUT/ckpt.tgz."
echo "finished $(ls *-gpu-*/summary.json 2>/dev/null | wc -l) runs in $(( $(date +%s) - START )) s;" \
  "checkpoints back for $(wc -l < /tmp/resumable) of $(wc -l < /tmp/unfinished) unfinished"
