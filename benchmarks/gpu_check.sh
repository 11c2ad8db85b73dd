#!/usr/bin/env bash
# One script for a fresh GPU machine (torch installed, not the pinned environment): builds cora._C for
# the local GPU, runs the op tests (CUDA cases included) and the CUDA kernel benchmarks, and prints
# short tables. About 3 minutes on an H100 (mostly the build).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # logs and JSON go to OUT_DIR (default: $OUT, else benchmarks/results)
#
# Needs python with torch (CUDA), torchvision, pytest, scipy; nvcc matching torch's CUDA. A machine
# without internet gets open_clip from wheels carried in .wheels/ (installed here when present), made with
#   pip download --no-deps -d .wheels open_clip_torch==3.3.0 ftfy wcwidth
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${1:-${OUT:-benchmarks/results}}
mkdir -p "$OUT_DIR"
status=0

if compgen -G ".wheels/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps .wheels/*.whl || true
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())" || exit 1

# Build for the GPU in this machine (torch reads its compute capability when no arch list is set).
unset TORCH_CUDA_ARCH_LIST
start=$(date +%s)
if ! CORA_BUILD_CUDA=1 MAX_JOBS=$(nproc) "$PY" setup.py build_ext --inplace >"$OUT_DIR/gpu_build.log" 2>&1; then
  tail -40 "$OUT_DIR/gpu_build.log"
  echo "gpu_check: build failed (log: $OUT_DIR/gpu_build.log)"
  exit 1
fi
echo "build: $(($(date +%s) - start)) s"

# Op tests: the CUDA cases run here (they are skipped on machines without a GPU).
"$PY" -m pytest -q -p no:cacheprovider -p no:logging tests/ops/test_roi_align.py tests/ops/test_attn_pool.py \
  tests/ops/test_linear_assignment.py >"$OUT_DIR/gpu_tests.log" 2>&1 || status=1
grep -E "passed|failed|error" "$OUT_DIR/gpu_tests.log" | tail -15

for dtype in fp16 fp32; do
  "$PY" benchmarks/kernels.py --device cuda --dtype "$dtype" --repeat 20 --json "$OUT_DIR/kernels-cuda-$dtype.json" || status=1
done
exit $status
