#!/usr/bin/env bash
# One device call for issue 7 on one GPU: `lowpeft info`, the 1b-preset training benchmark (frozen / lowpeft /
# PEFT / eager LoRA, 50 steps, dropout 0 and 0.05), the speedup PNGs (model and, when committed, the LoRA layer
# results), and the demo on the GPU with its bench summary. Results land in $OUT (the device tool copies them
# back; commit them under benchmarks/results/). Each step has its own time limit so a slow one cannot starve the
# rest; the model benchmark saves its JSON / markdown after every provider.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/model_out}
mkdir -p "$OUT"
tag=${1:-h100}
{
  nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,memory.used --format=csv
  python3 -m lowpeft info
  timeout 400 python3 -m lowpeft bench model --preset 1b --steps 50 --dropout 0,0.05 --no-progress \
    --json "$OUT/model_1b_$tag.json" --md "$OUT/model_1b_$tag.md" --csv "$OUT/model_1b_$tag.csv"
  python3 -m lowpeft bench plot "$OUT/model_1b_$tag.json" --out "$OUT/model_1b_${tag}_speedup.png"
  if [ -f "benchmarks/results/lora_$tag.json" ]; then
    python3 -m lowpeft bench plot "benchmarks/results/lora_$tag.json" --out "$OUT/model_lora_${tag}_speedup.png" \
      --title "LoRA layer forward + backward: lowpeft's speedup per shape (bf16, $tag)"
  fi
  timeout 140 python3 -m lowpeft demo --steps 100 --no-progress > "$OUT/model_demo_$tag.txt" 2>&1
  echo "demo exit status $?"
  tail -25 "$OUT/model_demo_$tag.txt"
} 2>&1 | tee "$OUT/model_gpu_$tag.log"
