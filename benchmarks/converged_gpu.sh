#!/bin/bash
# Issue 19's converged study on a lent GPU machine (one H200, no network there), in one call:
# installs the wheels carried in .whl/ (what the machine's image lacks: gymnasium, mujoco, tyro,
# tensorboardX; flax and optax at the project's versions), generates the 1M-transition datasets
# there (walker2d-medium-replay is carried in .gpu-data/), runs converged-gpu.toml and
# converged-more-gpu.toml side by side with `o2o sweep`, stops them at DEADLINE seconds after its
# start, and packs their run directories into $OUT/runs-*.tgz (unfinished ones with their
# checkpoints, to finish here or in the next call: at most 8 files of 16 MiB come back).
#   DEADLINE=535 bash benchmarks/converged_gpu.sh      (device run, carry .whl and .gpu-data)
#   for f in runs-*.tgz; do tar xzf $f -C runs/bench_offline; done   (here)
#   python benchmarks/offline.py benchmarks/sweeps/offline/converged-gpu.toml --no-train
# Measured in its first call (2026-12-04): drawing hopper-medium's 1M transitions there took
# 7.3 min and halfcheetah-medium's 3.9 min (one process each), seven runs at once under MPS
# made 2,000-7,000 updates/s each (one seed), 940 for three vmapped seeds in the first
# interval; halfcheetah-medium's bc and cql finished, hopper-medium's runs had barely begun.
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
if [ "$MPS" = 1 ]; then HOP=7 MORE=7; else HOP=4 MORE=3; fi
sweep() {  # $1: sweep file stem, $2: workers; in a process group of its own
  setsid python3 -c "import sys; from o2o.cli import main; sys.argv = ['o2o', 'sweep', \
'benchmarks/sweeps/offline/$1.toml', '--workers', '$2', '--debug']; main()" > "$OUT/$1.log" 2>&1 &
  PIDS="$PIDS $!"
}
PIDS=""
sweep converged-gpu $HOP
sweep converged-more-gpu $MORE
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
EOF
# Back come at most 8 files, 64 MiB in all: runs-0.tgz holds the logs and every run without
# checkpoints; runs-1N.tgz the 15 furthest unfinished runs with theirs (about 3 MB each).
cd runs/bench_offline || exit 1
for run in *-gpu-*; do
  [ -f "$run/summary.json" ] || echo "$(cat "$run/checkpoints/offline/progress.json" 2>/dev/null \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["updates"])' 2>/dev/null || echo 0) $run"
done | sort -rn | head -15 | cut -d' ' -f2 > /tmp/resumable
mv "$OUT"/*.log "$OUT/data.txt" .
tar czf "$OUT/runs-0.tgz" --exclude=checkpoints --exclude=tb --exclude=lock *-gpu-* *.log data.txt
[ -s /tmp/resumable ] && split -l 3 -d /tmp/resumable /tmp/part- && for part in /tmp/part-*; do
  tar czf "$OUT/runs-1${part#/tmp/part-}.tgz" --exclude=tb --exclude=lock -T "$part"
done
echo "finished $(ls *-gpu-*/summary.json 2>/dev/null | wc -l) runs in $(( $(date +%s) - START )) s"
