# Standalone entry point of the bottleneck-adapter benchmark (same as `lowpeft bench adapter`): forward + backward
# against the copy floor, eager PyTorch and torch.compile; see lowpeft/bench/adapter.py for the options.
# Trade-off: a thin wrapper, so the harness lives in the package (importable by the CLI) and this file only
# makes it runnable from a checkout without installing.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lowpeft.bench.adapter import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
