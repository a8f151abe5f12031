#!/usr/bin/env bash
# The GPU checks in one go, on --backend cupy (needs CuPy and an NVIDIA GPU):
#   1. the test suite (tests/test_speed.py then compares the fused CuPy kernels with the
#      array-API code and the buffered GPU step with the plain one, bit for bit),
#   2. python run.py gradcheck --backend cupy (float64 finite differences, every model),
#   3. python run.py bench --backend cupy for every model,
#   4. the quick tour on the GPU (python run.py --quick --backend cupy),
# and prints one summary line per check and an overall PASS/FAIL.  Logs go to $LOG_DIR
# (default /tmp/scratchvae-gpu-check).  Run from anywhere:  bash scripts/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
LOG_DIR=${LOG_DIR:-/tmp/scratchvae-gpu-check}
mkdir -p "$LOG_DIR"
export MPLBACKEND=Agg CI=true
declare -a SUMMARY
status=0

check() {   # check NAME COMMAND...
  local name=$1; shift
  local t0=$(date +%s)
  if "$@" > "$LOG_DIR/$name.log" 2>&1; then r=PASS; else r=FAIL; status=1; fi
  SUMMARY+=("$(printf '%-16s %s  %4ss  %s' "$name" "$r" "$(( $(date +%s) - t0 ))" "$(tail -n 1 "$LOG_DIR/$name.log" | cut -c1-110)")")
}

if ! python -c "import cupy, sys; sys.exit(cupy.cuda.runtime.getDeviceCount() < 1)" 2>/dev/null; then
  echo "gpu_check: CuPy with a CUDA device is needed (pip install -e '.[gpu]'); nothing run"
  exit 2
fi
check pytest      python -m pytest -q -rs
check gradcheck   python run.py gradcheck --backend cupy
for m in vae fullcov gmvae vqvae; do
  check "bench-$m" python run.py bench --backend cupy --model "$m" --bench-steps 30
done
check tour-quick  python run.py --quick --backend cupy --quiet --force --out "$LOG_DIR/tour"

echo "== scratchvae GPU check ($(python -c 'import cupy; d=cupy.cuda.runtime.getDeviceProperties(0); print(d["name"].decode(), "CuPy", cupy.__version__)')) =="
printf '%s\n' "${SUMMARY[@]}"
for m in vae fullcov gmvae vqvae; do
  grep '^# ' "$LOG_DIR/bench-$m.log" | head -n 1
done
if [ $status -eq 0 ]; then echo "gpu_check: PASS"; else echo "gpu_check: FAIL (logs in $LOG_DIR)"; fi
exit $status
