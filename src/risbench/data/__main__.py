"""``python -m risbench.data <command> data=<name> [overrides]``.

* ``check``: validate a dataset install (published counts, every image decoded, annotations, text
  coverage; ``--quick`` reads image headers only); it never writes (check.py);
* ``vocab``: write the word vocabulary of the training expressions for GloVe-word models (vocab.py).
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {"check": "risbench.data.check", "vocab": "risbench.data.vocab"}
USAGE = ("usage: python -m risbench.data <check|vocab> "
         "data=<synthref|refcoco|refcoco_plus|refcocog_umd|refcocog_google|referit> [--quick] [key=value ...] "
         "(paths.refer_root=<the refer toolkit's data/ folder> reads that layout as it is)")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
