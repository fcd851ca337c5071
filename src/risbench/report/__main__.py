"""``python -m risbench.report PATH... [--format md html] [--wandb | --no-wandb] [--out DIR]``.

PATH: a run folder, a multirun folder (``multirun/<sweep>/<date>_<time>``) or any folder above several; the
report goes to ``PATH/report/`` (several PATHs: their common parent's), or ``--out DIR``. An existing report
folder is never written into: the next free ``report-2/``, ``report-3/``, ... is used instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from risbench.errors import RisbenchError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m risbench.report", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="run or multirun folders")
    parser.add_argument("--format", nargs="+", default=["md"], choices=["md", "html"], dest="formats",
                        help="md: <table>.md + index.md (default); html: one self-contained index.html "
                             "(plots inline). CSV and PNG files are always written.")
    wandb = parser.add_mutually_exclusive_group()
    wandb.add_argument("--wandb", action="store_true", default=None,
                       help="log the tables and plots to W&B (default: when the jobs ran with logger=wandb); "
                            "offline without an API key")
    wandb.add_argument("--no-wandb", action="store_false", dest="wandb", help="never log to W&B")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default PATH/report)")
    parser.add_argument("--experiments", type=Path, default=None,
                        help="folder of <paper>/paper_results.yaml (default: the repository's experiments/)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from risbench.report.build import build_report

    try:
        report = build_report(args.paths, out=args.out, formats=tuple(args.formats), wandb=args.wandb,
                              experiments_dir=args.experiments)
    except RisbenchError as error:
        print(f"risbench error: {error}", file=sys.stderr)
        return 2
    for section in report.sections:
        print(f"{section.title}: {report.folder / (section.name + '.csv')}")
    for run in report.wandb_runs:
        print(f"W&B: {run}")
    index = report.folder / ("index.md" if "md" in args.formats else "index.html")
    print(f"report written to {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
