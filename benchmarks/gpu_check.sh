#!/usr/bin/env bash
# One script for a fresh GPU machine (torch installed, not the pinned environment): builds cora._C for
# the local GPU, runs the op tests (CUDA cases included), the CUDA kernel benchmarks and the
# vocabulary-scaling benchmark (paper preset, fp16, eager), and prints short tables. Each step has its
# own time limit, so that a hang in one still leaves the others' results; about 6 minutes in all.
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
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/cora-site .wheels/*.whl \
    && export PYTHONPATH=/tmp/cora-site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())" || exit 1

# Build for the GPU in this machine (torch reads its compute capability when no arch list is set).
# The GPU image sets CXX=/opt/gcc/bin/g++, a wrapper that links libstdc++ statically: every C++ argument
# check then segfaults instead of raising (setup.py refuses such a build). Its system g++ links it dynamically.
unset TORCH_CUDA_ARCH_LIST
if [ -x /usr/bin/g++ ] && [ -x /usr/bin/gcc ]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++; fi
start=$(date +%s)
if ! CORA_BUILD_CUDA=1 MAX_JOBS=$(nproc) timeout 300 "$PY" setup.py build_ext --inplace >"$OUT_DIR/gpu_build.log" 2>&1; then
  tail -40 "$OUT_DIR/gpu_build.log"
  echo "gpu_check: build failed (log: $OUT_DIR/gpu_build.log)"
  exit 1
fi
echo "build: $(($(date +%s) - start)) s"

# Op tests: the CUDA cases run here (they are skipped on machines without a GPU). One process per file,
# so that a kernel fault (which poisons the CUDA context) does not hide the other ops' results.
for test in ops/test_roi_align ops/test_attn_pool ops/test_linear_assignment modeling/test_detector; do
  log="$OUT_DIR/gpu_tests_$(basename "$test").log"
  timeout 150 "$PY" -m pytest -q -p no:cacheprovider -p no:logging "tests/$test.py" >"$log" 2>&1 || status=1
  echo "tests $test: $(grep -E "passed|failed|error" "$log" | tail -1)"
  grep -E "^(FAILED|ERROR)" "$log" | head -8
done

for dtype in fp16 fp32; do
  timeout 120 "$PY" benchmarks/kernels.py --device cuda --dtype "$dtype" --repeat 20 \
    --json "$OUT_DIR/kernels-cuda-$dtype.json" || status=1
done

# Training on the GPU: a short bf16 run of the tiny preset on synthetic shapes (CUDA autocast, CUDA solver).
work=$(mktemp -d)
"$PY" -m cora data make-synthetic "$work/shapes" --images 24 --size 128 128 >/dev/null \
  && timeout 120 "$PY" -m cora train --data "$work/shapes" --preset tiny --random-init --batch-size 8 --epochs 2 \
    --amp bf16 --device cuda --no-progress --out "$work/run" 2>&1 | tail -1 || status=1
rm -rf "$work"
timeout 120 "$PY" benchmarks/train_step.py --device cuda --queries 1000 --image-size 800 1344 --batch 2 --repeat 5 \
  --json "$OUT_DIR/train_step-cuda.json" 2>&1 | tail -4 || status=1

# The main job on the GPU: CORA against OV-DETR-style conditional decoding, paper shapes.
timeout 180 "$PY" benchmarks/vocab_scaling.py --preset paper --device cuda --dtype fp16 --backends eager \
  --budget-s 60 --no-progress --json "$OUT_DIR/vocab_scaling-cuda-fp16.json" --plot "$OUT_DIR/vocab_scaling-cuda-fp16.png" \
  || status=1
exit $status
