"""``python -m risbench.bench <name> [overrides]``: dispatch to risbench.bench.<name>.main(overrides)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "data": "risbench.bench.data",  # train-loader throughput
    "model": "risbench.bench.model",  # model speed and memory
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: python -m risbench.bench <{'|'.join(BENCHMARKS)}> [key=value ...]", file=sys.stderr)
        return 2
    return importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
