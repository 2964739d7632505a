# benchmarks/bench_model.py: the end-to-end LoRA training benchmark as a script; the same as `lowpeft bench model`
# (lowpeft/bench/model.py holds the harness, so the command and this script cannot drift apart).
#   python benchmarks/bench_model.py --preset 1b --steps 50 --dropout 0,0.05 --json results/model.json
import sys

from lowpeft.bench.model import main

if __name__ == "__main__":
    sys.exit(main(prog="bench_model.py"))
