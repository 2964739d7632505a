# Standalone entry point of the fused LoRA layer benchmark (same as `lowpeft bench lora`): frozen nn.Linear,
# lowpeft (triton), PEFT, eager LoRA and torch.compile; see lowpeft/bench/lora.py for the options, e.g.
#   python benchmarks/bench_lora.py --json out.json --md out.md
#   python benchmarks/bench_lora.py --cases 8192x4096x4096:16:0 --providers lowpeft,eager
# Trade-off: a thin wrapper, so the harness lives in the package (importable by the CLI) and this file only
# makes it runnable from a checkout without installing.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lowpeft.bench.lora import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
