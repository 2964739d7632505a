# lowpeft.bench: the benchmark harnesses behind `lowpeft bench` and benchmarks/*.py.
