"""A Hydra callback that writes the report of a sweep when its last job is done.

Used by the synthref leaderboard (``hydra.callbacks.report`` in conf/experiment/synthref_leaderboard.yaml);
any sweep can add it the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("risbench")


class ReportOnMultirunEnd(Callback):
    def __init__(self, formats: list[str] | None = None):
        self.formats = tuple(formats or ["md", "html"])

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from risbench.errors import RisbenchError
        from risbench.report.build import build_report

        sweep = Path(config.hydra.sweep.dir)
        try:
            report = build_report([sweep], formats=self.formats)
        except RisbenchError as error:  # e.g. every job failed: the sweep's own errors say why
            log.error("no report for %s: %s", sweep, error)
            return
        log.info("report written to %s", report.folder)
        print(f"report: {report.folder}/index.md")
