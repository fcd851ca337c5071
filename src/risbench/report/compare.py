"""A paper table beside the jobs that reproduce it: matching jobs to rows, one line of cells per row."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from risbench.report.paper import COMPLEXITY_LABELS, Column, PaperRow, PaperTable
from risbench.report.runs import Job

PAPER, OURS, COMMON, DIFF = "paper", "ours paper-protocol", "ours common-protocol", "diff"


@dataclass
class Unmatched:
    job: Job
    reason: str


@dataclass
class RowResult:
    row: PaperRow
    jobs: list[Job]  # jobs measuring this row's metrics
    profiles: list[Job]  # its mode=profile jobs (params/GMACs; else the training runs' own param count)
    by_dataset: dict[str, list[Job]] = field(default_factory=dict)  # per-dataset tables


@dataclass
class Comparison:
    table: PaperTable
    rows: list[RowResult]
    unmatched: list[Unmatched]
    missing: list[str]  # reproducible rows (or row x dataset) no job ran
    extra_datasets: list[str]  # per-dataset tables: datasets our jobs ran on that the paper does not have

    @property
    def jobs(self) -> list[Job]:
        seen = {}
        for result in self.rows:
            for job in result.jobs + result.profiles:
                seen[job.path] = job
        return list(seen.values())

    @property
    def synthref_tiny(self) -> bool:
        return any(job.synthref_tiny for job in self.jobs)

    @property
    def columns(self) -> list[Column]:
        extra = [Column(f"{dataset} {column.split} {column.metric}", column.split, column.metric, dataset=dataset,
                        label=f"{dataset} {column.split}")
                 for dataset in self.extra_datasets for column in _splits_of(self)]
        return self.table.columns + extra

    def headers(self) -> list[str]:
        heads = ["method", *self.table.descriptors, "notes", "status", "ours data"]
        for column in self.columns:
            heads += [f"{column.name} {PAPER}", f"{column.name} {OURS}", f"{column.name} {COMMON}",
                      f"{column.name} {DIFF}"]
        for key in self.table.complexity:
            heads += [f"{COMPLEXITY_LABELS[key]} {PAPER}", f"{COMPLEXITY_LABELS[key]} ours"]
        heads += [f"{key} {PAPER}" for key in self.table.extras]
        return heads

    def records(self) -> list[list]:
        """One list of cells per paper row (numbers as floats, None for an empty cell)."""
        lines = []
        for result in self.rows:
            row = result.row
            status = (f"ran ({len(result.jobs)} job{'s' if len(result.jobs) != 1 else ''})" if result.jobs else
                      "profiled" if result.profiles else "missing" if row.reproducible else "paper only")
            data = sorted({job.data_label for job in result.jobs + result.profiles})
            cells = [row.label, *[row.descriptors.get(key) for key in self.table.descriptors], ", ".join(row.notes),
                     status, ", ".join(data) or None]
            for column in self.columns:
                jobs = result.by_dataset.get(column.dataset, []) if column.dataset else result.jobs
                paper = row.paper.get(column.name)
                ours = mean_metric(jobs, column, "paper/")
                common = mean_metric(jobs, column, "")
                cells += [paper, ours, common, None if paper is None or ours is None else ours - paper]
            for key in self.table.complexity:
                cells += [row.complexity.get(key), _complexity(result.profiles or result.jobs, key, self.table.modules)]
            cells += [row.extras.get(key) for key in self.table.extras]
            lines.append(cells)
        return lines


def _splits_of(comparison: Comparison) -> list[Column]:
    """The (split, metric) pairs of a per-dataset table, once each (for a dataset the paper does not have)."""
    seen = {}
    for column in comparison.table.columns:
        seen.setdefault((column.split, column.metric), column)
    return list(seen.values())


def mean_metric(jobs: list[Job], column: Column, prefix: str) -> float | None:
    values = [job.metrics.get(column.split, {}).get(prefix + column.metric) for job in jobs]
    values = [100 * float(v) for v in values if v is not None]
    return math.fsum(values) / len(values) if values else None


def job_complexity(job: Job, key: str, modules: list[str] | None) -> float | None:
    """params (M) or GMACs of a job: its profile (the paper's exclusions applied), else its own param count."""
    profile = job.profile
    if profile:
        if modules:
            rows = profile.get("by_module") or {}
            if key == "params_m":
                return sum(rows.get(m, {}).get("params", 0) for m in modules) / 1e6
            return sum(rows.get(m, {}).get("gmacs", 0.0) for m in modules)
        if key == "params_m":
            params = profile.get("params_excluding") or profile.get("params") or {}
            return params["total"] / 1e6 if "total" in params else None
        return profile.get("gmacs")
    if key == "params_m" and not modules and (job.results.get("params") or {}).get("total") is not None:
        return job.results["params"]["total"] / 1e6
    return None


def _complexity(jobs: list[Job], key: str, modules: list[str] | None) -> float | None:
    """Mean over the row's jobs: its mode=profile jobs when it has some, else its training runs."""
    values = [value for value in (job_complexity(job, key, modules) for job in jobs) if value is not None]
    return math.fsum(values) / len(values) if values else None


def belongs(job: Job, table: PaperTable) -> bool:
    experiment = job.experiment
    return experiment in table.experiments + table.profile_experiments and all(
        job.has(key, value) for key, value in table.selector.items())


def match_row(job: Job, table: PaperTable) -> tuple[PaperRow | None, str]:
    """The reproducible row whose overrides the job satisfies (the most specific one), or why none."""
    fits = [row for row in table.rows if row.reproducible and all(job.has(k, v) for k, v in row.overrides.items())]
    if not fits:
        return None, "matches no row's overrides"
    best = max(len(row.overrides) for row in fits)
    fits = [row for row in fits if len(row.overrides) == best]
    if len(fits) > 1:
        return None, f"matches several rows equally: {', '.join(row.label for row in fits)}"
    return fits[0], ""


def split_by_data(table: PaperTable, jobs: list[Job]) -> dict[str, list[Job]]:
    """A table's jobs by data and scale (by scale alone for a per-dataset table): runs on other data or at
    another size are compared apart, never averaged into one row. Counts-only jobs (mode=profile) do not
    depend on the data, so they join every group of their scale."""
    def key(job: Job) -> str:
        return f"scale {job.scale or '?'}" if table.kind == "per_dataset" else job.data_label

    groups: dict[str, list[Job]] = {}
    for job in (job for job in jobs if job.metrics):
        groups.setdefault(key(job), []).append(job)
    for job in (job for job in jobs if not job.metrics):
        homes = [label for label, members in groups.items() if members[0].scale == job.scale] or [key(job)]
        for label in homes:
            groups.setdefault(label, []).append(job)
    return groups


def compare(table: PaperTable, jobs: list[Job]) -> Comparison:
    """Lay ``jobs`` (those of the table's experiments) beside the paper's rows."""
    results = [RowResult(row, [], []) for row in table.rows]
    by_row = {id(result.row): result for result in results}
    unmatched, extra = [], []
    paper_datasets = {column.dataset for column in table.columns if column.dataset}
    for job in jobs:
        row, reason = match_row(job, table)
        if row is None:
            unmatched.append(Unmatched(job, reason))
            continue
        result = by_row[id(row)]
        if job.profile:
            result.profiles.append(job)
        if not job.metrics:
            continue
        result.jobs.append(job)
        if table.kind == "per_dataset":
            dataset = job.value(table.dataset_key)
            dataset = str(dataset) if isinstance(dataset, (str, int)) else job.dataset or "?"
            result.by_dataset.setdefault(dataset, []).append(job)
            if dataset not in paper_datasets and dataset not in extra:
                extra.append(dataset)
    # a table whose own sweep is mode=profile (a complexity table) expects counts, not metrics
    own = [job for job in jobs if job.experiment in table.experiments]
    counts_only = bool(own) and all(job.mode == "profile" for job in own)
    missing = []
    for result in results:
        if not result.row.reproducible:
            continue
        if counts_only:
            missing += [] if result.profiles else [result.row.label]
        elif table.kind == "per_dataset":
            datasets = sorted({c.dataset for c in table.columns if c.name in result.row.paper})
            missing += [f"{result.row.label} on {d}" for d in datasets if d not in result.by_dataset]
        elif not result.jobs:
            missing.append(result.row.label)
    return Comparison(table, results, unmatched, missing, extra)
