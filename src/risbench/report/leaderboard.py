"""The synthref leaderboard: every model at CPU size, with and without the text, one fixed step budget.

Jobs are those of ``experiment=synthref_leaderboard`` (conf/experiment/synthref_leaderboard.yaml); each
model runs once with the expressions and once text-blind (``data.blind_text=true``); seeds are averaged.
Numbers are the common protocol's, so every model is scored the same way.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

from risbench.report.paper import canonical
from risbench.report.runs import MISSING, Job

EXPERIMENT = "synthref_leaderboard"
SPLITS = ("val", "testA", "testB")
HEADERS = ["model", "data", "params (M)", "train time (min)", "steps", "train samples", "val mIoU", "testA mIoU",
           "testB mIoU", "blind val mIoU", "gap val", "seeds", "stopped early"]


def is_leaderboard_job(job: Job) -> bool:
    return job.experiment == EXPERIMENT or job.name == EXPERIMENT


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return math.fsum(values) / len(values) if values else None


def _whole(value: float | None) -> int | float | None:
    return int(value) if value is not None and float(value).is_integer() else value


def _number(job: Job, key: str) -> float | None:
    value = job.value(key)
    try:
        return float(canonical(value)) if value is not MISSING else None
    except ValueError:  # an interpolation the saved config does not resolve
        return None


def _samples(job: Job) -> float | None:
    steps, batch = job.results.get("steps"), _number(job, "data.batch_size")
    accumulate = _number(job, "trainer.accumulate_grad_batches") or 1.0
    return None if steps is None or batch is None else steps * batch * accumulate


def _millions(value) -> float | None:
    return None if value is None else value / 1e6


def _miou(jobs: list[Job], split: str) -> float | None:
    return _mean(100 * job.metrics[split]["mIoU"] for job in jobs if "mIoU" in job.metrics.get(split, {}))


def leaderboard(jobs: list[Job]) -> tuple[list[dict], list[str]]:
    """One row per model and data (sorted by val mIoU: runs on other data or at another scale are never
    averaged together), and the notes on what is missing."""
    by_model: dict[tuple[str, str], dict[bool, list[Job]]] = defaultdict(lambda: {False: [], True: []})
    for job in jobs:
        model = job.value("model")
        blind = job.value("data.blind_text")
        by_model[str(model), job.data_label][blind is not MISSING and canonical(blind) == "true"].append(job)
    rows, notes = [], []
    for (model, data), runs in by_model.items():
        text, blind = runs[False], runs[True]
        if not text:
            notes.append(f"{model} on {data}: no run with the text (only the text-blind control)")
        if not blind:
            notes.append(f"{model} on {data}: no text-blind control (data.blind_text=true)")
        row = {"model": model, "data": data,
               "params (M)": _mean(_millions((job.results.get("params") or {}).get("total")) for job in text or blind),
               "train time (min)": _mean(job.results["wall_time_s"] / 60 for job in text
                                         if job.results.get("wall_time_s") is not None),
               "steps": _whole(_mean(job.results.get("steps") for job in text)),
               "train samples": _whole(_mean(_samples(job) for job in text))}
        for split in SPLITS:
            row[f"{split} mIoU"] = _miou(text, split)
        row["blind val mIoU"] = _miou(blind, "val")
        row["gap val"] = (None if row["val mIoU"] is None or row["blind val mIoU"] is None
                          else row["val mIoU"] - row["blind val mIoU"])
        row["seeds"] = len({canonical(job.value("seed")) for job in text}) if text else 0
        row["stopped early"] = "yes" if any(job.results.get("stopped_early") for job in text + blind) else "no"
        rows.append(row)
    rows.sort(key=lambda row: -(row["val mIoU"] if row["val mIoU"] is not None else -1.0))
    return rows, notes


def run_dates(jobs: list[Job]) -> str:
    """The days the jobs' results were written, for the leaderboard's caption."""
    days = sorted({time.strftime("%Y-%m-%d", time.localtime((job.path / "results.json").stat().st_mtime))
                   for job in jobs})
    return days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}" if days else "unknown"
