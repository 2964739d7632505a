#!/usr/bin/env bash
# One device call for the fused LoRA kernels: probe (correctness in every dtype, Triton GEMM vs cuBLAS,
# per-kernel timings), or the final run (GPU test file + full benchmark). Usage:
#   benchmarks/gpu_lora.sh probe | tune | check | final | bench
# Results land in $OUT (the device tool copies them back).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/lora_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv
case "${1:-probe}" in
  probe)
    LOWPEFT_AUTOTUNE=0 timeout 150 python3 benchmarks/gpu_probe_lora.py correctness 2>&1 | tee "$OUT/probe_correctness.log"
    timeout 400 python3 benchmarks/gpu_probe_lora.py gemm lora_timings 2>&1 | tee "$OUT/probe_timings.log"
    ;;
  tune)
    LOWPEFT_AUTOTUNE=0 timeout 120 python3 benchmarks/gpu_probe_lora.py correctness 2>&1 | tee "$OUT/probe_correctness.log"
    timeout 200 python3 benchmarks/gpu_probe_lora.py lora_timings 2>&1 | tee "$OUT/probe_timings.log"
    timeout 200 python3 benchmarks/bench_lora.py --cases 8192x4096x4096:16:0,8192x4096x4096:16:0.1,2048x1024x1024:16:0 \
      --modes forward,backward,forward+backward --json "$OUT/bench_tune.json" --md "$OUT/bench_tune.md" 2>&1 | tail -30
    ;;
  check)
    LOWPEFT_AUTOTUNE=0 timeout 260 python3 -m pytest -q -x -p no:cacheprovider tests/test_triton_lora.py 2>&1 | tee "$OUT/lora_gpu_tests.log"
    timeout 240 python3 benchmarks/gpu_probe_lora.py lora_timings 2>&1 | tee "$OUT/probe_timings.log"
    ;;
  final)
    # Inside one ~7-minute device slot: few hypothesis examples on the GPU (each new shape compiles kernels) and
    # the six acceptance cases with each kernel's default config (LOWPEFT_AUTOTUNE=0: autotuning every case
    # costs ~50 s of compilation; the default is what autotune picked at the big shapes in the probe).
    LOWPEFT_AUTOTUNE=0 LOWPEFT_TRITON_EXAMPLES=3 timeout 170 python3 -m pytest -q -p no:cacheprovider \
      --durations=5 tests/test_triton_lora.py 2>&1 | tee "$OUT/lora_gpu_tests.log"
    LOWPEFT_AUTOTUNE=0 timeout 300 python3 benchmarks/bench_lora.py --cases \
      8192x4096x4096:16:0,8192x4096x4096:64:0,8192x4096x4096:16:0.1,8192x4096x11008:16:0,4096x2048x2048:16:0,2048x1024x1024:16:0 \
      --json "$OUT/lora_h100.json" --md "$OUT/lora_h100.md" 2>&1 | tee "$OUT/bench.log"
    ;;
  bench)
    timeout 570 python3 benchmarks/bench_lora.py --json "$OUT/lora_h100.json" --md "$OUT/lora_h100.md" 2>&1 | tee "$OUT/bench.log"
    ;;
esac
