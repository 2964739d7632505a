#!/usr/bin/env bash
# The lead's integrated device calls (one H100 each, results in $OUT, committed under benchmarks/results/):
#   benchmarks/gpu_final.sh layers   build lowpeft._C (sm_90); LoRA layer benchmark with both Triton GEMM strategies
#                                    and the cuda backend; adapter benchmark
#   benchmarks/gpu_final.sh model    build; the native-backend GPU tests (stop at the first failure); the bad-input
#                                    tests with a native stack on a crash; the ~1B Llama training benchmark, 50 steps
#   benchmarks/gpu_final.sh checks   build; GPU correctness at fixed shapes (every backend, dtype, dropout, strategy),
#                                    the adapter op on the GPU, the ~1B Llama benchmark with dropout 0.05
#   benchmarks/gpu_final.sh probe    build; GPU correctness at fixed shapes and the native-backend tests; the
#                                    building-block timings of benchmarks/gpu_probe_components.py
#   benchmarks/gpu_final.sh stacks   build; issue 6's stack tests (PEFT, Trainer, checkpointing, compile, prompt
#                                    tuning, selective, named adapters) on cuda; the cuda backend's own timings
#   benchmarks/gpu_final.sh final    build; the autotuning in-place test; LoRA layer benchmark; ~1B model, dropout 0.05
#   benchmarks/gpu_final.sh verify   build; the native-backend, op and Triton-kernel test files on the GPU
#   benchmarks/gpu_final.sh native   build; the native-backend tests (cuda included); host time per layer call;
#                                    the LoRA layer benchmark with the triton and cuda backends side by side
#   benchmarks/gpu_final.sh graphs   build; session 3's GPU tests (graph capture, the one-pass dropout backward,
#                                    --timing); LoRA and adapter benchmarks timed as launches and as graph replays
#   benchmarks/gpu_final.sh grid     build; the hypothesis test files (LOWPEFT_AUTOTUNE=0); the full LoRA grid
#   benchmarks/gpu_final.sh model_dropout  build; the ~1B Llama benchmark with dropout 0.05; the p = 0.1 layer case
#   benchmarks/gpu_final.sh profile  build; kernel and host profiles (gpu_profile_lora.py); the op hypothesis tests
#   benchmarks/gpu_final.sh adapter_search  build; native adapter tests; the fused-strategy crash search; adapter bench
#   benchmarks/gpu_final.sh sanitize build; compute-sanitizer on the fused strategy's failing cases; its op tests
#   benchmarks/gpu_final.sh fused_tests  build; the op hypothesis tests of the fused GEMM strategy (three dtypes)
#   benchmarks/gpu_final.sh fullgrid build; bench_lora.py's default grid, every provider and mode, launch timing
#   benchmarks/gpu_final.sh next     build; what changed after session 3's last device run: the adapter view and
#                                    split tests, the native adapter tests, test_triton_lora, p = 0.1 at r = 16 / 128,
#                                    the adapter benchmark
#   benchmarks/gpu_final.sh profile_model  build; the adapter view tests, the one-pass dropout kernel's tests, p = 0.1
#                                    at r = 16 / 128; where the ~1B model's step time goes (gpu_profile_model.py)
#   benchmarks/gpu_final.sh host_model  build; the native-backend tests; host time per layer call by call-stack layer
#                                    (gpu_host_layers.py); the ~1B Llama benchmark, dropout 0, 50 steps
#   benchmarks/gpu_final.sh confirm  build; the native-backend tests; the six LoRA layer cases (both timings, every
#                                    provider); the ~1B Llama benchmark, dropout 0, repeated
#   benchmarks/gpu_final.sh dropout_host  build; the launch-path tests; host time per layer call (dropout too); p = 0.1
#                                    layer cases; the ~1B Llama benchmark at dropout 0.05
#   benchmarks/gpu_final.sh epilogue_probe  build; can a persistent TMA GEMM carry the LoRA term at cuBLAS speed
#                                    (benchmarks/diag/fused_epilogue_probe.py)
#   benchmarks/gpu_final.sh adapter_split  build; the adapter op and native adapter tests on the GPU; per-kernel
#                                    times and the column-tile sweep (adapter_tuning.py); the adapter benchmark
#   benchmarks/gpu_final.sh adapter_specialized  the adapter kernel probe; per-kernel times; the adapter benchmark;
#                                    the adapter op tests (stop at the first failure)
#   benchmarks/gpu_final.sh adapter_final  the adapter benchmark at M = 16, 64, 256 (torch.compile too); the native
#                                    adapter tests
#   benchmarks/gpu_final.sh adapter_tests  tests/test_adapter_op.py on the GPU (stop at the first failure); then the
#                                    dispatch and adapter-module tests
#   benchmarks/gpu_final.sh adapter_check  per-kernel adapter times at M = 64 / 256; the adapter benchmark; its tests
#   benchmarks/gpu_final.sh adapter_small  per-kernel adapter times and the backward column-tile / split sweep (graph
#                                    timing) at 4096 x 1024 and 8192 x 4096, M = 16 / 64
#   benchmarks/gpu_final.sh adapter_narrow  per-kernel adapter times at 4096 x 1024 and 8192 x 4096; the adapter
#                                    benchmark (M = 16, 64, 256, both timings); the native adapter and dispatch tests
#   benchmarks/gpu_final.sh merged_check  the native tests; the LoRA layer at the ~1B model's shapes (graph timing);
#                                    the ~1B Llama benchmark, dropout 0, 50 steps (run 61 timed the merged-weight
#                                    path with it; since that was reverted it times the folded path)
#   benchmarks/gpu_final.sh merged_probe  the LoRA layer with its low-rank term merged into a transient weight, timed
#                                    against today's path (benchmarks/diag/merged_weight_probe.py)
#   benchmarks/gpu_final.sh adapter_survey  per-kernel adapter times at M = 64; where the adapter's host time goes
#                                    (diag/adapter_host_probe.py); triton against cuda at M = 64 ... 256 (graph timing)
#   benchmarks/gpu_final.sh suite    build; the whole test suite on the GPU (one kernel config per family, 3
#                                    hypothesis examples), files listed in $SUITE_FILES or all of tests/
#   benchmarks/gpu_final.sh lora_acc  build; the LoRA op, Triton-kernel and dispatch tests; the main LoRA shape with
#                                    and without dropout (graph timing), after the kernels took an ACC constexpr
#   benchmarks/gpu_final.sh adapter_wide  per-kernel times of the cuda and triton adapter backends at M = 256 (where the
#                                    cuBLAS GEMMs' time goes against the 2x-eager target)
#   benchmarks/gpu_final.sh adapter_cuda  build; the native adapter tests and the adapter op's cuda cases; the cuda
#                                    backend's per-kernel times; the adapter benchmark (graph timing)
#   benchmarks/gpu_final.sh adapter_gemm  build; the wide-bottleneck path of the triton adapter backend against the
#                                    floor, eager and cuda (benchmarks/diag/adapter_wide_probe.py); the adapter op tests
#   benchmarks/gpu_final.sh adapter_sweep  the triton adapter kernels' tiles at wide bottlenecks, each kernel alone,
#                                    next to cuBLAS doing the same GEMM (benchmarks/diag/adapter_wide_sweep.py); then
#                                    the wide path's probe (adapter_wide_probe.py)
#   benchmarks/gpu_final.sh adapter_wide_final  build; the adapter benchmark at M = 16, 64, 128, 256 (graph timing,
#                                    floor / triton / cuda / eager); the adapter op tests on the GPU
#   benchmarks/gpu_final.sh adapter_wide_check  build; the adapter op's GPU-only tests (benchmark sizes with wide
#                                    float32 / float16 bottlenecks, matmul precision, auto, 64-bit offsets), the
#                                    refused second-order gradients and non-finite weights on every backend
#   benchmarks/gpu_final.sh int8     build; the int8-base tests on the GPU; the LoRA layer over a bf16 base and over
#                                    its int8 quantization (lowpeft_int8), six DESIGN cases and p = 0.1, both timings
#   benchmarks/gpu_final.sh int8_model  build; the LoRA layer over an int8 base at four cases (both timings); the ~1B
#                                    Llama, frozen / lowpeft / lowpeft_int8, dropout 0, 30 steps; the int8-base and
#                                    torch.compile tests on the GPU
# Every step has its own time limit so one slow step cannot starve the rest.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/final_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,memory.used --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
start=$(date +%s)
TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python3 -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; echo "BUILD FAILED"; }
echo "build: $(( $(date +%s) - start )) s"
# The native ops' bad-input tests with a SIGSEGV handler preloaded, so a crash (as on the H100 build of
# 2026-11-24, inside the std::ostream code linked into lowpeft._C) prints its native stack; there is no gdb there.
bad_input_tests_with_native_stack() {
  gcc -shared -fPIC -O0 -o /tmp/segv_backtrace.so benchmarks/diag/segv_backtrace.c || return
  LD_PRELOAD=/tmp/segv_backtrace.so timeout 90 python3 -m pytest -q -p no:cacheprovider -rfE \
    tests/test_native_backends.py -k bad_input > "$OUT/gpu_bad_input_tests.log" 2>&1
  echo "bad-input pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed|\+0x" "$OUT/gpu_bad_input_tests.log" | tail -40
}
# The adapter benchmark at M = 16 and 64, launched and graph-replayed, into $OUT/$1.{json,md} (log $OUT/$1.log).
adapter_bench_both_timings() {
  timeout 150 python3 benchmarks/bench_adapter.py --bottlenecks 16,64 --timing launch,graph \
    --providers floor,triton,cuda,eager --json "$OUT/$1.json" --md "$OUT/$1.md" > "$OUT/$1.log" 2>&1
  echo "adapter bench exit $?"; grep "^| " "$OUT/$1.md" | cut -c1-300
}
# The ~1B Llama benchmark: dropout $1, $2 steps, at most $3 s, into $OUT/$4.{json,md} (log $OUT/$4.log).
model_bench_1b() {
  timeout "$3" python3 -m lowpeft bench model --preset 1b --steps "$2" --dropout "$1" --no-progress \
    --json "$OUT/$4.json" --md "$OUT/$4.md" > "$OUT/$4.log" 2>&1
  echo "model bench exit $?"; tail -16 "$OUT/$4.md"
}
# The six DESIGN §5 LoRA cases, forward + backward, launched and graph-replayed, every provider, into
# $OUT/lora_h100_graphs.{json,md} (log $OUT/lora_bench.log).
lora_cases_both_timings() {
  LOWPEFT_AUTOTUNE=0 timeout 240 python3 benchmarks/bench_lora.py --cases "$CASES" --modes forward+backward \
    --timing launch,graph --providers frozen,lowpeft,lowpeft_cuda,eager,compile,peft \
    --json "$OUT/lora_h100_graphs.json" --md "$OUT/lora_h100_graphs.md" > "$OUT/lora_bench.log" 2>&1
  echo "lora bench exit $?"; grep -A16 "^| timing" "$OUT/lora_h100_graphs.md" | head -18
}
# tests/test_triton_lora.py in full with one kernel config per family (a new shape costs a compile, not a tuning
# sweep) and 3 hypothesis examples, into $OUT/$1.log.
triton_lora_tests_untuned() {
  LOWPEFT_AUTOTUNE=0 LOWPEFT_HYPOTHESIS_EXAMPLES=3 timeout 150 python3 -m pytest -q -p no:cacheprovider -rfE \
    tests/test_triton_lora.py > "$OUT/$1.log" 2>&1
  echo "triton_lora pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/$1.log" | tail -8
}
CASES=8192x4096x4096:16:0,8192x4096x4096:64:0,8192x4096x4096:16:0.1,8192x4096x11008:16:0,4096x2048x2048:16:0,2048x1024x1024:16:0
case "${1:-layers}" in
  layers)
    LOWPEFT_AUTOTUNE=0 timeout 300 python3 benchmarks/bench_lora.py --cases "$CASES" \
      --providers frozen,lowpeft,lowpeft_cuda,eager,peft,compile \
      --json "$OUT/lora_h100.json" --md "$OUT/lora_h100.md" > "$OUT/lora_bench.log" 2>&1
    echo "lora bench exit $?"; grep -A12 "^| case" "$OUT/lora_h100.md" | head -14
    LOWPEFT_TRITON_GEMM=fused LOWPEFT_AUTOTUNE=0 timeout 100 python3 benchmarks/bench_lora.py --cases "$CASES" \
      --providers frozen,lowpeft --modes forward+backward \
      --json "$OUT/lora_h100_fused.json" --md "$OUT/lora_h100_fused.md" > "$OUT/lora_fused.log" 2>&1
    echo "fused bench exit $?"; grep -A8 "^| case" "$OUT/lora_h100_fused.md" | head -10
    timeout 120 python3 benchmarks/bench_adapter.py --json "$OUT/adapter_h100.json" --md "$OUT/adapter_h100.md" \
      > "$OUT/adapter_bench.log" 2>&1
    echo "adapter bench exit $?"; tail -14 "$OUT/adapter_h100.md"
    ;;
  model)
    timeout 120 python3 -m pytest -x -q --tb=short -p no:cacheprovider tests/test_native_backends.py \
      tests/test_lora_op.py -k "(native or cuda) and not bad_input and not gpu_fixed" > "$OUT/gpu_native_tests.log" 2>&1
    echo "native pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed|^E |Error" "$OUT/gpu_native_tests.log" | head -30
    bad_input_tests_with_native_stack
    model_bench_1b 0 50 330 model_1b_h100
    ;;
  checks)
    LOWPEFT_AUTOTUNE=0 timeout 170 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_lora_op.py \
      -k "gpu_fixed" > "$OUT/gpu_lora_tests.log" 2>&1
    echo "lora pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_lora_tests.log" | tail -12
    LOWPEFT_HYPOTHESIS_EXAMPLES=2 timeout 90 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_adapter_op.py \
      -k "cuda" > "$OUT/gpu_adapter_tests.log" 2>&1
    echo "adapter pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_adapter_tests.log" | tail -12
    model_bench_1b 0.05 30 170 model_1b_h100_dropout
    ;;
  stacks)
    timeout 240 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_peft_interop.py \
      tests/test_trainer.py tests/test_checkpointing.py tests/test_compile_model.py tests/test_prompt_tuning.py \
      tests/test_selective.py tests/test_multi_adapter.py > "$OUT/gpu_stack_tests.log" 2>&1
    echo "stack pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_stack_tests.log" | tail -12
    timeout 150 python3 benchmarks/gpu_native.py --out "$OUT" > "$OUT/native_bench.log" 2>&1
    echo "native bench exit $?"; tail -20 "$OUT/native_bench.log"
    ;;
  final)
    timeout 120 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_triton_lora.py -k "in_place or gpu_aligned" \
      > "$OUT/gpu_triton_lora_tests.log" 2>&1
    echo "triton_lora pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_triton_lora_tests.log" | tail -8
    LOWPEFT_AUTOTUNE=0 timeout 200 python3 benchmarks/bench_lora.py --cases "$CASES" \
      --providers frozen,lowpeft,lowpeft_cuda,eager,peft,compile \
      --json "$OUT/lora_h100.json" --md "$OUT/lora_h100.md" > "$OUT/lora_bench.log" 2>&1
    echo "lora bench exit $?"; grep -A9 "^| case" "$OUT/lora_h100.md" | head -10
    model_bench_1b 0.05 50 320 model_1b_h100_dropout
    ;;
  verify)
    timeout 90 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_native_backends.py > "$OUT/gpu_native_tests.log" 2>&1
    echo "native pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_native_tests.log" | tail -8
    # LOWPEFT_AUTOTUNE=0: one config per kernel, so a new shape costs a compile at most, not a tuning sweep
    # (with tuning on, run 15 did not finish these files in 200 s each); the autotuning-specific test runs in
    # `final` mode with tuning on.
    LOWPEFT_AUTOTUNE=0 LOWPEFT_HYPOTHESIS_EXAMPLES=8 timeout 200 python3 -m pytest -q -p no:cacheprovider -rfE \
      tests/test_lora_op.py -k "not gpu_fixed" > "$OUT/gpu_lora_op_tests.log" 2>&1
    echo "lora_op pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_lora_op_tests.log" | tail -8
    LOWPEFT_AUTOTUNE=0 LOWPEFT_HYPOTHESIS_EXAMPLES=3 timeout 200 python3 -m pytest -q -p no:cacheprovider -rfE \
      tests/test_triton_lora.py > "$OUT/gpu_triton_lora_tests.log" 2>&1
    echo "triton_lora pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_triton_lora_tests.log" | tail -8
    ;;
  native)
    timeout 150 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_native_backends.py tests/test_lora_op.py \
      -k "(native or cuda or gpu_fixed) and not bad_input" > "$OUT/gpu_native_tests.log" 2>&1
    echo "native pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_native_tests.log" | tail -12
    bad_input_tests_with_native_stack
    timeout 60 python3 benchmarks/gpu_probe_components.py --host-only 2>&1 | grep host
    LOWPEFT_AUTOTUNE=0 timeout 280 python3 benchmarks/bench_lora.py --cases "$CASES" \
      --providers frozen,lowpeft,lowpeft_cuda,eager,peft,compile \
      --json "$OUT/lora_h100.json" --md "$OUT/lora_h100.md" > "$OUT/lora_bench.log" 2>&1
    echo "lora bench exit $?"; grep -B2 -A14 "^| case" "$OUT/lora_h100.md" | head -40
    ;;
  graphs)
    timeout 120 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_triton_lora.py \
      -k "in_place or subset or restore" > "$OUT/gpu_s3_tests.log" 2>&1
    echo "triton pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_s3_tests.log" | tail -8
    timeout 100 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_lora_op.py tests/test_cli.py \
      -k "cuda_graph or timing" >> "$OUT/gpu_s3_tests.log" 2>&1
    echo "graph pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_s3_tests.log" | tail -4
    lora_cases_both_timings
    adapter_bench_both_timings adapter_h100_graphs
    ;;
  grid)
    LOWPEFT_AUTOTUNE=0 LOWPEFT_HYPOTHESIS_EXAMPLES=8 timeout 150 python3 -m pytest -q -p no:cacheprovider -rfE \
      tests/test_lora_op.py -k "not gpu_fixed" > "$OUT/gpu_lora_op_tests.log" 2>&1
    echo "lora_op pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_lora_op_tests.log" | tail -8
    triton_lora_tests_untuned gpu_triton_lora_tests
    LOWPEFT_AUTOTUNE=0 timeout 170 python3 benchmarks/bench_lora.py --modes forward+backward --timing launch,graph \
      --shapes 8192x4096x4096 --providers frozen,lowpeft,eager,peft \
      --json "$OUT/lora_h100_grid.json" --md "$OUT/lora_h100_grid.md" > "$OUT/lora_grid.log" 2>&1
    echo "lora grid exit $?"; grep -A18 "^| timing" "$OUT/lora_h100_grid.md" | head -20
    ;;
  model_dropout)
    model_bench_1b 0.05 50 440 model_1b_h100_dropout
    LOWPEFT_AUTOTUNE=0 timeout 60 python3 benchmarks/bench_lora.py --cases 8192x4096x4096:16:0.1 \
      --modes forward+backward --timing launch,graph --providers frozen,lowpeft,eager \
      --json "$OUT/lora_h100_p01_memory.json" > "$OUT/lora_p01.log" 2>&1
    echo "lora p0.1 exit $?"; grep -A5 "^| timing" "$OUT/lora_p01.log" | head -6
    ;;
  profile)
    timeout 200 python3 benchmarks/gpu_profile_lora.py > "$OUT/profile_lora.log" 2>&1
    echo "profile exit $?"; grep -E "^host|^## |^ +[0-9.]+ us" "$OUT/profile_lora.log" | head -90
    grep -A40 "^## cProfile" "$OUT/profile_lora.log" | head -45
    LOWPEFT_AUTOTUNE=0 LOWPEFT_HYPOTHESIS_EXAMPLES=8 timeout 300 python3 -m pytest -q -p no:cacheprovider -rfE \
      tests/test_lora_op.py -k "not gpu_fixed" > "$OUT/gpu_lora_op_tests.log" 2>&1
    echo "lora_op pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_lora_op_tests.log" | tail -8
    ;;
  adapter_split)
    LOWPEFT_HYPOTHESIS_EXAMPLES=2 timeout 230 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_adapter_op.py \
      > "$OUT/gpu_adapter_tests.log" 2>&1
    echo "adapter pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_adapter_tests.log" | tail -12
    timeout 90 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_native_backends.py -k "adapter or leading" \
      > "$OUT/gpu_native_adapter_tests.log" 2>&1
    echo "native adapter pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_native_adapter_tests.log" | tail -6
    timeout 150 python3 benchmarks/adapter_tuning.py 8192x4096x64 8192x4096x16 4096x1024x64 > "$OUT/adapter_tuning.log" 2>&1
    echo "adapter tuning exit $?"; cat "$OUT/adapter_tuning.log" | cut -c1-160
    adapter_bench_both_timings adapter_h100_graphs
    ;;
  adapter_specialized)
    timeout 100 python3 benchmarks/diag/adapter_kernel_probe.py 8192x4096x64 > "$OUT/adapter_kernel_probe.log" 2>&1
    echo "probe exit $?"; grep -v Warning "$OUT/adapter_kernel_probe.log" | cut -c1-150
    timeout 120 python3 benchmarks/adapter_tuning.py 8192x4096x64 8192x4096x16 4096x1024x64 16384x8192x64 \
      > "$OUT/adapter_tuning.log" 2>&1
    echo "adapter tuning exit $?"; grep -v "Warning\|_warn_once" "$OUT/adapter_tuning.log" | cut -c1-150
    adapter_bench_both_timings adapter_h100_graphs
    LOWPEFT_HYPOTHESIS_EXAMPLES=2 timeout 230 python3 -m pytest -x -q -p no:cacheprovider -rfE tests/test_adapter_op.py \
      > "$OUT/gpu_adapter_tests.log" 2>&1
    echo "adapter pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed|%" "$OUT/gpu_adapter_tests.log" | tail -6
    ;;
  adapter_final)
    timeout 200 python3 benchmarks/bench_adapter.py --bottlenecks 16,64,256 --timing launch,graph \
      --providers floor,triton,cuda,eager,compile --json "$OUT/adapter_h100_graphs.json" \
      --md "$OUT/adapter_h100_graphs.md" > "$OUT/adapter_h100_graphs.log" 2>&1
    echo "adapter bench exit $?"; grep "^| " "$OUT/adapter_h100_graphs.md" | cut -c1-300
    timeout 40 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_native_backends.py -k "adapter or leading" \
      > "$OUT/gpu_native_adapter_tests.log" 2>&1
    echo "native adapter pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_native_adapter_tests.log" | tail -4
    ;;
  adapter_check)
    timeout 90 python3 benchmarks/adapter_tuning.py 8192x4096x64 8192x4096x256 > "$OUT/adapter_tuning.log" 2>&1
    echo "adapter tuning exit $?"; grep -v "Warning\|_warn_once" "$OUT/adapter_tuning.log" | cut -c1-150
    timeout 170 python3 benchmarks/bench_adapter.py --bottlenecks 16,64,256 --timing launch,graph \
      --providers floor,triton,cuda,eager,compile --json "$OUT/adapter_h100_graphs.json" \
      --md "$OUT/adapter_h100_graphs.md" > "$OUT/adapter_h100_graphs.log" 2>&1
    echo "adapter bench exit $?"; grep "^| " "$OUT/adapter_h100_graphs.md" | cut -c1-300
    LOWPEFT_HYPOTHESIS_EXAMPLES=2 timeout 300 python3 -m pytest -x -q -p no:cacheprovider -rfE tests/test_adapter_op.py \
      > "$OUT/gpu_adapter_tests.log" 2>&1
    echo "adapter pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed|%" "$OUT/gpu_adapter_tests.log" | tail -6
    ;;
  adapter_survey)
    timeout 60 python3 benchmarks/adapter_tuning.py --no-sweep 8192x4096x64 4096x1024x64 \
      > "$OUT/adapter_tuning.log" 2>&1
    echo "adapter tuning exit $?"; grep -v "Warning\|_warn_once" "$OUT/adapter_tuning.log" | cut -c1-150
    timeout 90 python3 benchmarks/diag/adapter_host_probe.py > "$OUT/adapter_host_probe.log" 2>&1
    echo "host probe exit $?"; head -80 "$OUT/adapter_host_probe.log" | cut -c1-160
    timeout 260 python3 benchmarks/bench_adapter.py --bottlenecks 64,96,128,192,256 --timing graph --no-breakdown \
      --providers floor,triton,cuda,eager --json "$OUT/adapter_widths_h100.json" --md "$OUT/adapter_widths_h100.md" \
      > "$OUT/adapter_widths_h100.log" 2>&1
    echo "adapter widths bench exit $?"; grep "^| " "$OUT/adapter_widths_h100.md" | cut -c1-200
    timeout 60 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_dispatch.py tests/test_adapter_op.py \
      -k "dispatch or auto_takes or wider_than" > "$OUT/gpu_dispatch_tests.log" 2>&1
    echo "dispatch pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_dispatch_tests.log" | tail -6
    ;;
  adapter_wide_final)
    timeout 240 python3 benchmarks/bench_adapter.py --bottlenecks 16,64,128,256 --timing graph --no-breakdown \
      --providers floor,triton,cuda,eager --json "$OUT/adapter_h100_graphs.json" \
      --md "$OUT/adapter_h100_graphs.md" > "$OUT/adapter_h100_graphs.log" 2>&1
    echo "adapter bench exit $?"; grep "^| " "$OUT/adapter_h100_graphs.md" | cut -c1-300
    LOWPEFT_AUTOTUNE=0 LOWPEFT_HYPOTHESIS_EXAMPLES=3 timeout 260 python3 -m pytest -p no:cacheprovider -rfE -q -x \
      tests/test_adapter_op.py > "$OUT/gpu_adapter_op_tests.log" 2>&1
    echo "adapter op pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed|Error" "$OUT/gpu_adapter_op_tests.log" | tail -12
    ;;
  int8)
    ls -d /usr/local/cuda*/include/cutlass /usr/include/cutlass 2>/dev/null; find / -xdev -name "cutlass.h" 2>/dev/null \
      | head -3; echo "cutlass search done"
    LOWPEFT_HYPOTHESIS_EXAMPLES=10 timeout 200 python3 -m pytest -p no:cacheprovider -rfE -q tests/test_int8_base.py \
      > "$OUT/gpu_int8_tests.log" 2>&1
    echo "int8 pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed|Error" "$OUT/gpu_int8_tests.log" | tail -12
    LOWPEFT_AUTOTUNE=0 timeout 240 python3 benchmarks/bench_lora.py --cases "$CASES,8192x4096x4096:16:0.1" \
      --modes forward+backward --timing launch,graph --providers frozen,lowpeft,lowpeft_int8,eager \
      --json "$OUT/lora_int8_h100.json" --md "$OUT/lora_int8_h100.md" > "$OUT/lora_int8_bench.log" 2>&1
    echo "lora bench exit $?"; grep -A18 "^| timing" "$OUT/lora_int8_h100.md" | head -20
    grep "lowpeft_int8\|^| shape" "$OUT/lora_int8_h100.md" | grep "graph\|shape" | cut -c1-220 | head -12
    ;;
  int8_model)
    LOWPEFT_AUTOTUNE=0 timeout 100 python3 benchmarks/bench_lora.py \
      --cases 8192x4096x4096:16:0,8192x4096x11008:16:0,4096x2048x2048:16:0,2048x1024x1024:16:0 \
      --modes forward+backward --timing launch,graph --providers frozen,lowpeft,lowpeft_int8,eager \
      --json "$OUT/lora_int8_h100.json" --md "$OUT/lora_int8_h100.md" > "$OUT/lora_int8_bench.log" 2>&1
    echo "lora bench exit $?"; grep -A10 "^| timing" "$OUT/lora_int8_h100.md" | head -11
    timeout 250 python3 -m lowpeft bench model --preset 1b --steps 30 --dropout 0 --no-progress \
      --providers frozen,lowpeft,lowpeft_int8 --json "$OUT/model_1b_int8.json" --md "$OUT/model_1b_int8.md" \
      > "$OUT/model_1b_int8.log" 2>&1
    echo "model bench exit $?"; grep "^| " "$OUT/model_1b_int8.md" | head -6
    LOWPEFT_HYPOTHESIS_EXAMPLES=4 LOWPEFT_AUTOTUNE=0 timeout 200 python3 -m pytest -p no:cacheprovider -rfE -q \
      tests/test_int8_base.py tests/test_compile_model.py tests/test_lora_op.py \
      -k "int8 or compile or Compile or autocast" > "$OUT/gpu_int8_tests.log" 2>&1
    echo "int8 / compile pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_int8_tests.log" | tail -12
    ;;
  adapter_wide_check)
    LOWPEFT_HYPOTHESIS_EXAMPLES=2 timeout 330 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_adapter_op.py \
      tests/test_lora_op.py -k "benchmark_sizes or float32_follows or auto_takes or 64_bit or rejects or second_order \
      or non_finite" > "$OUT/gpu_adapter_wide_tests.log" 2>&1
    echo "adapter pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed|Error" "$OUT/gpu_adapter_wide_tests.log" | tail -12
    ;;
  adapter_sweep)
    timeout 250 python3 benchmarks/diag/adapter_wide_sweep.py --no-rows > "$OUT/adapter_wide_sweep.log" 2>&1
    echo "sweep exit $?"; grep -v "Warning\|_warn_once\|capture_end" "$OUT/adapter_wide_sweep.log" | cut -c1-200
    timeout 240 python3 benchmarks/diag/adapter_wide_probe.py > "$OUT/adapter_wide_probe.log" 2>&1
    echo "probe exit $?"; grep -v "Warning\|_warn_once\|run_backward" "$OUT/adapter_wide_probe.log" | cut -c1-260
    ;;
  adapter_gemm)
    timeout 330 python3 benchmarks/diag/adapter_wide_probe.py > "$OUT/adapter_wide_probe.log" 2>&1
    echo "probe exit $?"; grep -v "Warning\|_warn_once\|run_backward" "$OUT/adapter_wide_probe.log" | cut -c1-260
    LOWPEFT_AUTOTUNE=0 LOWPEFT_HYPOTHESIS_EXAMPLES=3 timeout 200 python3 -m pytest -p no:cacheprovider -rfE -q -x \
      tests/test_adapter_op.py > "$OUT/gpu_adapter_op_tests.log" 2>&1
    echo "adapter op pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed|Error" "$OUT/gpu_adapter_op_tests.log" | tail -12
    ;;
  adapter_cuda)
    LOWPEFT_AUTOTUNE=0 LOWPEFT_HYPOTHESIS_EXAMPLES=3 timeout 200 python3 -m pytest -p no:cacheprovider -rfE -q \
      tests/test_native_backends.py tests/test_adapter_op.py tests/test_dispatch.py -k "adapter and (cuda or native) or dispatch" \
      > "$OUT/gpu_adapter_cuda_tests.log" 2>&1
    echo "adapter cuda pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_adapter_cuda_tests.log" | tail -8
    timeout 60 python3 benchmarks/adapter_tuning.py --cuda 8192x4096x256 4096x1024x256 8192x4096x64 \
      > "$OUT/adapter_cuda_profile.log" 2>&1
    echo "cuda profile exit $?"; grep -v "Warning\|_warn_once\|run_backward" "$OUT/adapter_cuda_profile.log" | cut -c1-150
    timeout 200 python3 benchmarks/bench_adapter.py --bottlenecks 16,64,256 --timing graph --no-breakdown \
      --providers floor,triton,cuda,eager --json "$OUT/adapter_h100_graphs.json" \
      --md "$OUT/adapter_h100_graphs.md" > "$OUT/adapter_h100_graphs.log" 2>&1
    echo "adapter bench exit $?"; grep "^| " "$OUT/adapter_h100_graphs.md" | cut -c1-300
    ;;
  adapter_wide)
    timeout 90 python3 benchmarks/adapter_tuning.py --cuda 8192x4096x256 4096x1024x256 16384x8192x256 8192x4096x64 \
      > "$OUT/adapter_cuda_profile.log" 2>&1
    echo "cuda profile exit $?"; grep -v "Warning\|_warn_once" "$OUT/adapter_cuda_profile.log" | cut -c1-150
    timeout 90 python3 benchmarks/adapter_tuning.py --no-sweep 8192x4096x256 4096x1024x256 \
      > "$OUT/adapter_tuning.log" 2>&1
    echo "triton profile exit $?"; grep -v "Warning\|_warn_once" "$OUT/adapter_tuning.log" | cut -c1-150
    ;;
  lora_acc)
    LOWPEFT_AUTOTUNE=0 LOWPEFT_HYPOTHESIS_EXAMPLES=3 timeout 380 python3 -m pytest -p no:cacheprovider -rfE -q \
      tests/test_triton_lora.py tests/test_lora_op.py tests/test_dispatch.py > "$OUT/gpu_lora_tests.log" 2>&1
    echo "lora pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_lora_tests.log" | tail -8
    timeout 120 python3 benchmarks/bench_lora.py --cases 8192x4096x4096:16:0,8192x4096x4096:16:0.1 \
      --modes forward+backward --timing graph --providers frozen,lowpeft,eager \
      --json "$OUT/lora_main_graph.json" --md "$OUT/lora_main_graph.md" > "$OUT/lora_main_graph.log" 2>&1
    echo "lora bench exit $?"; grep "^| " "$OUT/lora_main_graph.md" | cut -c1-240
    ;;
  suite)
    LOWPEFT_AUTOTUNE=0 LOWPEFT_HYPOTHESIS_EXAMPLES=3 timeout "${SUITE_LIMIT:-500}" python3 -m pytest -p no:cacheprovider \
      -rfE --durations=12 ${SUITE_FILES:-tests/} > "$OUT/gpu_suite.log" 2>&1
    echo "suite pytest exit $?"; grep -E "^tests/|^(FAILED|ERROR)|passed|failed|slowest|^[0-9.]+s " "$OUT/gpu_suite.log" \
      | cut -c1-160 | tail -60
    ;;
  adapter_small)
    timeout 400 python3 benchmarks/adapter_tuning.py 4096x1024x16 4096x1024x64 8192x4096x64 8192x4096x16 \
      > "$OUT/adapter_tuning.log" 2>&1
    echo "adapter tuning exit $?"; grep -v "Warning\|_warn_once" "$OUT/adapter_tuning.log" | cut -c1-150
    ;;
  adapter_narrow)
    timeout 70 python3 benchmarks/adapter_tuning.py --no-sweep 4096x1024x16 4096x1024x64 8192x4096x64 \
      > "$OUT/adapter_tuning.log" 2>&1
    echo "adapter tuning exit $?"; grep -v "Warning\|_warn_once" "$OUT/adapter_tuning.log" | cut -c1-150
    timeout 200 python3 benchmarks/bench_adapter.py --bottlenecks 16,64,256 --timing launch,graph \
      --providers floor,triton,cuda,eager,compile --json "$OUT/adapter_h100_graphs.json" \
      --md "$OUT/adapter_h100_graphs.md" > "$OUT/adapter_h100_graphs.log" 2>&1
    echo "adapter bench exit $?"; grep "^| " "$OUT/adapter_h100_graphs.md" | cut -c1-300
    timeout 150 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_dispatch.py tests/test_native_backends.py \
      -k "dispatch or adapter" > "$OUT/gpu_native_adapter_tests.log" 2>&1
    echo "native adapter pytest exit $?"
    grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_native_adapter_tests.log" | tail -6
    ;;
  merged_check)
    timeout 120 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_native_backends.py \
      -k "not bad_input" > "$OUT/gpu_native_tests.log" 2>&1
    echo "native pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_native_tests.log" | tail -8
    LOWPEFT_AUTOTUNE=0 timeout 120 python3 benchmarks/bench_lora.py \
      --cases 8192x2048x5632:16:0,8192x5632x2048:16:0,8192x2048x2048:16:0,8192x2048x256:16:0,8192x4096x4096:16:0 \
      --modes forward+backward --timing graph --providers frozen,lowpeft,eager \
      --json "$OUT/lora_model_shapes.json" --md "$OUT/lora_model_shapes.md" > "$OUT/lora_model_shapes.log" 2>&1
    echo "lora bench exit $?"; grep -A8 "^| timing" "$OUT/lora_model_shapes.md" | head -10
    model_bench_1b 0 50 220 model_1b_h100
    ;;
  merged_probe)
    timeout 300 python3 benchmarks/diag/merged_weight_probe.py > "$OUT/merged_weight_probe.log" 2>&1
    echo "merged probe exit $?"; grep -v "Warning\|_warn_once" "$OUT/merged_weight_probe.log" | cut -c1-220
    ;;
  adapter_tests)
    LOWPEFT_AUTOTUNE=0 LOWPEFT_HYPOTHESIS_EXAMPLES=2 timeout 400 python3 -m pytest -x -q -p no:cacheprovider -rfE \
      tests/test_adapter_op.py > "$OUT/gpu_adapter_tests.log" 2>&1
    echo "adapter pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed|%" "$OUT/gpu_adapter_tests.log" | tail -6
    LOWPEFT_AUTOTUNE=0 LOWPEFT_HYPOTHESIS_EXAMPLES=2 timeout 90 python3 -m pytest -x -q -p no:cacheprovider -rfE \
      tests/test_dispatch.py tests/test_adapter_module.py > "$OUT/gpu_adapter_dispatch_tests.log" 2>&1
    echo "dispatch / module pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_adapter_dispatch_tests.log" | tail -6
    ;;
  adapter_search)
    timeout 120 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_native_backends.py -k "adapter" \
      > "$OUT/gpu_native_adapter_tests.log" 2>&1
    echo "native adapter pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_native_adapter_tests.log" | tail -6
    LOWPEFT_AUTOTUNE=0 timeout 220 python3 benchmarks/diag/fused_dx_search.py 190 > "$OUT/fused_dx_search.log" 2>&1
    echo "fused search exit $?"; tail -40 "$OUT/fused_dx_search.log"
    adapter_bench_both_timings adapter_h100_graphs
    ;;
  sanitize)
    SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
    echo "sanitizer: $SAN"
    for case in "float16 1 1 1 1 0" "float16 33 7 7 8 0.3" "bfloat16 1 1 1 1 0"; do
      LOWPEFT_AUTOTUNE=0 timeout 100 "$SAN" --tool memcheck --print-limit 4 python3 benchmarks/diag/fused_one_case.py $case \
        > "$OUT/sanitize_$(echo $case | tr ' .' '__').log" 2>&1
      echo "case $case exit $?"; grep -E "ok$|Invalid|at 0x|by thread|Address|kernel|Saved host" \
        "$OUT/sanitize_$(echo $case | tr ' .' '__').log" | head -14
    done
    LOWPEFT_AUTOTUNE=0 LOWPEFT_HYPOTHESIS_EXAMPLES=8 timeout 240 python3 -m pytest -q -p no:cacheprovider -rfE \
      tests/test_lora_op.py -k "both_triton_gemm_strategies" > "$OUT/gpu_strategy_tests.log" 2>&1
    echo "strategy pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed|Failing test|    [a-z_]+=" \
      "$OUT/gpu_strategy_tests.log" | head -30
    ;;
  fused_tests)
    LOWPEFT_AUTOTUNE=0 LOWPEFT_HYPOTHESIS_EXAMPLES=8 timeout 330 python3 -m pytest -q -p no:cacheprovider -rfE \
      tests/test_lora_op.py -k "both_triton_gemm_strategies and fused" > "$OUT/gpu_fused_strategy_tests.log" 2>&1
    echo "fused strategy pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed|Failing test|    [a-z_]+=" \
      "$OUT/gpu_fused_strategy_tests.log" | head -30
    ;;
  fullgrid)
    LOWPEFT_AUTOTUNE=0 timeout 330 python3 benchmarks/bench_lora.py --providers frozen,lowpeft,peft,eager,compile \
      --json "$OUT/lora_h100_full.json" --md "$OUT/lora_h100_full.md" > "$OUT/lora_full.log" 2>&1
    echo "lora full grid exit $?"; grep -A16 "^| timing" "$OUT/lora_h100_full.md" | head -18
    ;;
  next)
    timeout 150 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_adapter_op.py tests/test_native_backends.py \
      -k "views_of_h or split_count or adapter" > "$OUT/gpu_next_adapter_tests.log" 2>&1
    echo "adapter pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_next_adapter_tests.log" | tail -6
    triton_lora_tests_untuned gpu_next_triton_lora_tests
    LOWPEFT_AUTOTUNE=0 timeout 80 python3 benchmarks/bench_lora.py --modes forward+backward --timing launch,graph \
      --cases 8192x4096x4096:16:0.1,8192x4096x4096:128:0.1 --providers frozen,lowpeft,eager \
      --json "$OUT/lora_h100_next.json" --md "$OUT/lora_h100_next.md" > "$OUT/lora_next.log" 2>&1
    echo "lora bench exit $?"; grep -A6 "^| timing" "$OUT/lora_h100_next.md" | head -8
    adapter_bench_both_timings adapter_h100_next
    ;;
  profile_model)
    timeout 120 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_adapter_op.py tests/test_native_backends.py \
      -k "views_of_h or split_count" > "$OUT/gpu_adapter_view_tests.log" 2>&1
    echo "adapter view pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_adapter_view_tests.log" | tail -6
    LOWPEFT_AUTOTUNE=0 timeout 120 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_triton_lora.py \
      -k "autotuner or subset" > "$OUT/gpu_one_pass_tests.log" 2>&1
    echo "one-pass pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_one_pass_tests.log" | tail -6
    LOWPEFT_AUTOTUNE=0 timeout 80 python3 benchmarks/bench_lora.py --modes forward+backward --timing launch,graph \
      --cases 8192x4096x4096:16:0.1,8192x4096x4096:128:0.1 --providers frozen,lowpeft,eager \
      --json "$OUT/lora_h100_p01.json" --md "$OUT/lora_h100_p01.md" > "$OUT/lora_p01.log" 2>&1
    echo "lora bench exit $?"; grep -A6 "^| timing" "$OUT/lora_h100_p01.md" | head -8
    OUT=$OUT timeout 200 python3 benchmarks/gpu_profile_model.py > "$OUT/profile_model.log" 2>&1
    echo "model profile exit $?"; grep -E "^## |^ +[0-9.]+ ms" "$OUT/profile_model.log" | head -75
    ;;
  host_model)
    timeout 150 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_native_backends.py tests/test_lora_op.py \
      -k "leading_dimensions or autograd_op or raw_lora or opcheck or native" > "$OUT/gpu_native_tests.log" 2>&1
    echo "native pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_native_tests.log" | tail -8
    timeout 90 python3 benchmarks/gpu_host_layers.py > "$OUT/host_layers.log" 2>&1
    echo "host layers exit $?"; cat "$OUT/host_layers.log" | tail -8
    model_bench_1b 0 50 330 model_1b_h100
    ;;
  confirm)
    timeout 120 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_native_backends.py \
      -k "not bad_input" > "$OUT/gpu_native_tests.log" 2>&1
    echo "native pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_native_tests.log" | tail -8
    lora_cases_both_timings
    model_bench_1b 0 50 200 model_1b_h100
    ;;
  epilogue_probe)
    OUT=$OUT timeout 420 python3 benchmarks/diag/fused_epilogue_probe.py > "$OUT/fused_epilogue_probe.log" 2>&1
    echo "probe exit $?"; tail -60 "$OUT/fused_epilogue_probe.log"
    ;;
  dropout_host)
    timeout 150 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_triton_lora.py tests/test_adapter_op.py \
      tests/test_lora_op.py -k "autotuner or subset or restore or views_of_h or dropout or leading_dimensions" \
      > "$OUT/gpu_launch_tests.log" 2>&1
    echo "launch pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_launch_tests.log" | tail -8
    timeout 90 python3 benchmarks/gpu_host_layers.py > "$OUT/host_layers.log" 2>&1
    echo "host layers exit $?"; tail -10 "$OUT/host_layers.log"
    LOWPEFT_AUTOTUNE=0 timeout 100 python3 benchmarks/bench_lora.py --modes forward+backward --timing launch,graph \
      --cases 8192x4096x4096:16:0.1,8192x4096x4096:128:0.1,2048x1024x1024:16:0.1 --providers frozen,lowpeft,eager \
      --json "$OUT/lora_h100_p01.json" --md "$OUT/lora_h100_p01.md" > "$OUT/lora_p01.log" 2>&1
    echo "lora bench exit $?"; grep -A6 "^| timing" "$OUT/lora_h100_p01.md" | head -8
    model_bench_1b 0.05 50 250 model_1b_h100_dropout
    ;;
  probe)
    LOWPEFT_AUTOTUNE=0 timeout 200 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_lora_op.py \
      -k "gpu_fixed" > "$OUT/gpu_lora_tests.log" 2>&1
    echo "lora pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_lora_tests.log" | tail -12
    timeout 120 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_native_backends.py -k "not bad_input" \
      > "$OUT/gpu_native_tests.log" 2>&1
    echo "native pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_native_tests.log" | tail -12
    bad_input_tests_with_native_stack
    LOWPEFT_AUTOTUNE=0 LOWPEFT_HYPOTHESIS_EXAMPLES=3 timeout 150 python3 -m pytest -q -p no:cacheprovider -rfE \
      tests/test_triton_lora.py -k "dropout or mask or keep" > "$OUT/gpu_dropout_tests.log" 2>&1
    echo "dropout pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_dropout_tests.log" | tail -12
    timeout 150 python3 benchmarks/gpu_probe_components.py > "$OUT/probe_components.log" 2>&1
    echo "probe exit $?"; grep -E "host|launcher|triton|frozen nn|composed" "$OUT/probe_components.log" | tail -30
    ;;
esac
