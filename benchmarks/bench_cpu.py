# The compiled cpu backend against eager PyTorch on the CPU (LoRA and adapter, forward + backward); writes
# benchmarks/results/cpu_native.{json,md}. Thin wrapper over lowpeft.bench.cpu (run from the repo root).
import sys

from lowpeft.bench.cpu import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
