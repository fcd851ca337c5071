"""The report's tables and plots to W&B: one ``job_type=report`` run per sweep group, offline without a key."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from risbench.loggers import wandb_api_key_available
from risbench.report.render import Section


def _cell(value):
    return round(value, 4) if isinstance(value, float) else value


def export(sections: list[Section], groups: dict[str, str], folder: Path, settings: dict) -> list[Path]:
    """Log every section as a ``wandb.Table`` (and its plot as a ``wandb.Image``) to the W&B group its jobs
    logged to (``groups``: section name -> group); returns the local run folders.

    ``settings``: the jobs' ``logger.wandb`` node (project, entity, offline). Offline (written under
    ``folder/wandb``, ``wandb sync`` later) when no API key is configured, as the training runs do.
    """
    import wandb

    offline = (bool(settings.get("offline")) or os.environ.get("WANDB_MODE") == "offline"
               or not wandb_api_key_available())
    os.environ.setdefault("WANDB_SILENT", "true")
    by_group: dict[str, list[Section]] = defaultdict(list)
    for section in sections:
        by_group[groups.get(section.name) or "report"].append(section)
    runs = []
    for group, members in by_group.items():
        run = wandb.init(project=settings.get("project") or "risbench", entity=settings.get("entity"), group=group,
                         job_type="report", name=f"report {group}", dir=str(folder),
                         mode="offline" if offline else "online", config={"tables": [s.name for s in members]})
        for section in members:
            rows = [[_cell(v) for v in record] for record in section.records]
            table = wandb.Table(columns=section.headers, data=rows, allow_mixed_types=True)
            logged = {f"report/{section.name}": table}
            if section.plot is not None:
                logged[f"report/{section.name}_plot"] = wandb.Image(str(section.plot), caption=section.title)
            run.log(logged)
        runs.append(Path(run.dir).parent)
        run.finish()
    return runs
