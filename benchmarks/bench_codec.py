"""Codec benchmark: each FedZip encoding next to zstd level 1, on the same bytes.

    python benchmarks/bench_codec.py [--params 25e6] [--keep 0.01] [--out results/bench]

Same options and output as ``fedzip bench``; see docs/benchmarks.md for figures.
"""

import sys

from fedzip.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
