#!/usr/bin/env bash
# One device call for the compiled cuda backend: build lowpeft._C for sm_90, run the native-backend tests (and
# the shared op tests on the cuda backend) on the GPU, then time issue 5's acceptance cases. Everything lands
# in $OUT (build log, test logs, cuda_native.{json,md}); benchmarks/results/cuda_* hold the committed copies.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/native_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
start=$(date +%s)
if ! TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
  tail -60 "$OUT/build.log"
  exit 1
fi
echo "build: $(( $(date +%s) - start )) s"
python3 -c "import lowpeft._C as c; print('WITH_CUDA', c.WITH_CUDA)"
timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_native_backends.py 2>&1 | tee "$OUT/native_tests.log" | tail -15
timeout 70 python3 -m pytest -q -p no:cacheprovider tests/test_lora_op.py tests/test_adapter_op.py -k "cuda-cuda" 2>&1 \
  | tee "$OUT/op_tests_cuda.log" | tail -8
timeout 200 python3 benchmarks/gpu_native.py --out "$OUT" 2>&1 | tee "$OUT/bench.log" | tail -40
# the cpu backend on 2 of this host's cores (a quiet machine; the CI box is shared)
timeout 90 python3 benchmarks/bench_cpu.py --threads 2 --rounds 20 --out-dir "$OUT" --name cpu_native_gpuhost 2>&1 | grep "^|"
