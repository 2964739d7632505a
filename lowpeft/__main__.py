# `python -m lowpeft ...` runs the `lowpeft` command (lowpeft/cli.py); with no arguments, the demo.
import sys

from lowpeft.cli import main

sys.exit(main())
