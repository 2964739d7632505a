#!/usr/bin/env bash
# One device call for the bottleneck adapter (issue 4): `probe` = quick GPU tests + benchmark without
# torch.compile + kernel tuning sweep; `final` = the full benchmark first (the deliverable), then the adapter
# test files on the GPU. Everything it writes lands in $OUT (adapter_* files), to be copied into
# benchmarks/results/.
set -o pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 LOWPEFT_SKIP_EXT=1
MODE=${1:-final}
OUT=${OUT:-/tmp/adapter_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
if [ "$MODE" = probe ]; then
  LOWPEFT_HYPOTHESIS_EXAMPLES=4 timeout 200 python3 -m pytest tests/test_adapter_op.py tests/test_adapter_module.py \
    -q --maxfail=10 -p no:cacheprovider --durations=8 2>&1 | tee "$OUT/adapter_tests_probe.log" | tail -40
  timeout 150 python3 benchmarks/bench_adapter.py --providers floor,triton,eager \
    --json "$OUT/adapter_probe.json" --md "$OUT/adapter_probe.md" 2>&1 | tail -16
  timeout 200 python3 benchmarks/adapter_tuning.py 2>&1 | tee "$OUT/adapter_tuning.log"
else
  timeout 290 python3 benchmarks/bench_adapter.py --json "$OUT/adapter_h100.json" --md "$OUT/adapter_h100.md" \
    --csv "$OUT/adapter_h100.csv" > "$OUT/adapter_bench.log" 2>&1
  echo "bench exit $?"; tail -22 "$OUT/adapter_bench.log"
  LOWPEFT_HYPOTHESIS_EXAMPLES=${EXAMPLES:-5} timeout 280 python3 -m pytest tests/test_adapter_op.py \
    tests/test_adapter_module.py -q -p no:cacheprovider --maxfail=15 --durations=8 -W ignore::UserWarning \
    > "$OUT/adapter_tests_gpu.log" 2>&1
  echo "pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/adapter_tests_gpu.log" | tail -25
fi
