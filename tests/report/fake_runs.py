"""Run folders as the harness writes them (results.json, .hydra/{overrides,hydra,config}.yaml), for report tests."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

PRECS = (0.5, 0.6, 0.7, 0.8, 0.9)


def split_metrics(oiou: float, miou: float, paper_shift: float = 0.01, prec: float = 0.25, extra: dict | None = None):
    """One split's metrics as results.json holds them: fractions, the paper protocol under paper/ (here
    ``paper_shift`` above the common one); ``extra`` keys are added as they are."""
    common = {"oIoU": oiou, "mIoU": miou, **{f"prec@{t:g}": prec for t in PRECS}, "n": 10.0}
    paper = {f"paper/{key}": (value + paper_shift if key != "n" else value) for key, value in common.items()}
    return {**common, **paper, **(extra or {})}


def write_job(folder: Path, experiment: str | None, overrides: list[str], metrics: dict | None = None,
              mode: str = "train", data: str = "synthref", scale: str = "tiny", name: str | None = None,
              choices: dict | None = None, config: dict | None = None, **fields) -> Path:
    """A run folder under ``folder``; ``experiment`` goes first in the overrides, as Hydra lists them."""
    folder.mkdir(parents=True)
    given = ([f"experiment={experiment}"] if experiment else []) + list(overrides)
    name = name or (experiment.rsplit("/", 1)[-1] if experiment else "default")
    results = {"experiment": name, "mode": mode, "overrides": given, "config_path": str(folder / ".hydra/config.yaml"),
               "git_revision": "abc", "wall_time_s": 60.0, **fields}
    if metrics is not None:
        results.update(metrics=metrics, protocols={"common": {"name": "common"}, "paper": {"name": "sadlr"}},
                       params=fields.get("params", {"total": 2_500_000, "trainable": 2_500_000}))
    (folder / "results.json").write_text(json.dumps(results))
    hydra_dir = folder / ".hydra"
    hydra_dir.mkdir()
    (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(given))
    runtime = {"data": data, "scale": scale, "experiment": experiment, **(choices or {})}
    (hydra_dir / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": runtime}}}))
    (hydra_dir / "config.yaml").write_text(yaml.safe_dump({"name": name, "mode": mode, "scale_name": scale,
                                                           "logger": {"csv": {}}, **(config or {})}))
    return folder
