"""Putting the report together: jobs -> paper tables and the leaderboard -> files (and W&B)."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from risbench.config import CONF_DIR
from risbench.errors import RisbenchError, check_can_create
from risbench.report.compare import belongs, compare, split_by_data
from risbench.report.leaderboard import HEADERS as LEADERBOARD_HEADERS
from risbench.report.leaderboard import is_leaderboard_job, leaderboard, run_dates
from risbench.report.paper import load_papers
from risbench.report.plots import plot_comparison, plot_leaderboard
from risbench.report.render import Section, comparison_section, html_page, markdown, write_csv
from risbench.report.runs import Job, find_jobs

EXPERIMENTS_DIR = CONF_DIR.parent / "experiments"
FORMATS = ("md", "html")


@dataclass
class Report:
    folder: Path
    sections: list[Section]
    files: list[Path] = field(default_factory=list)
    unassigned: list[Job] = field(default_factory=list)  # jobs of no paper table and not of the leaderboard
    skipped: list[str] = field(default_factory=list)  # tables the report cannot compare, and why
    wandb_runs: list[Path] = field(default_factory=list)
    groups: dict[str, str | None] = field(default_factory=dict)  # section name -> the W&B group its jobs logged to

    def relocate(self, old: Path, new: Path) -> None:
        """The paths of a report folder renamed from ``old`` to ``new``."""
        self.folder = new
        self.files = [new / path.relative_to(old) for path in self.files]
        for section in self.sections:
            section.plot = None if section.plot is None else new / section.plot.relative_to(old)


def report_folder(paths: list[Path], out: Path | None = None) -> Path:
    """``PATH/report`` (or ``out``); never an existing folder: then ``report-2``, ``report-3``, ..."""
    if out is None:
        base = Path(paths[0]) if len(paths) == 1 else Path(os.path.commonpath([Path(p).resolve() for p in paths]))
        out = base / "report"
    out = Path(out)
    candidate, n = out, 2
    while candidate.exists():
        candidate, n = out.with_name(f"{out.name}-{n}"), n + 1
    check_can_create(candidate, "--out", is_folder=True)
    return candidate


def _paper_titles(experiments_dir: Path) -> dict[str, str]:
    titles = {}
    for path in sorted(Path(experiments_dir).glob("*/paper_results.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        name = str(data.get("paper") or path.parent.name)
        title = str(data.get("title") or name)
        titles[name] = f"{title} ({data['venue']})" if data.get("venue") else title
    return titles


def _file_stem(label: str) -> str:
    """``refcoco (paper)`` -> ``refcoco-paper``."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", label).strip("-")


def _main_group(jobs: list[Job]) -> str | None:
    """The W&B group the jobs logged to: the sweep's name (``logger.wandb.group`` = ``${name}``)."""
    names = Counter(job.name for job in jobs if job.name)
    return names.most_common(1)[0][0] if names else None


def _leaderboard_section(jobs: list[Job], folder: Path) -> Section:
    rows, notes = leaderboard(jobs)
    plot = plot_leaderboard(rows, folder / "synthref_leaderboard.png")
    intro = ["Every model at CPU size on synthref under its fixed tiny step budget (`scale=tiny`: "
             "`trainer.max_steps` of scale/tiny.yaml or of the model's `model_scale/<model>_tiny.yaml`; `steps` and "
             "`train samples` = steps x batch show it), each with its text-blind control (`data.blind_text=true`: "
             "every expression replaced by one word). mIoU in percent under the common protocol; `gap val` = val "
             "mIoU minus the blind control's val mIoU: how much the model uses the language. `train time` is the "
             "run's wall time (training and the test pass, which takes seconds at this size).",
             f"Runs dated {run_dates(jobs)}. This report was made on a machine with {os.cpu_count()} CPU cores; "
             "name the machine the runs trained on when quoting train times."]
    records = [[row[h] for h in LEADERBOARD_HEADERS] for row in rows]
    return Section("synthref_leaderboard", "synthref leaderboard", intro, LEADERBOARD_HEADERS, records,
                   [("Incomplete", notes)], plot, synthref_tiny=False)


def _runs_section(jobs: list[Job]) -> Section:
    common = set.intersection(*[set(j.override_strings) for j in jobs]) if len(jobs) > 1 else set()
    headers = ["job", "experiment", "mode", "data", "overrides", "val oIoU", "val mIoU", "val oIoU paper-protocol",
               "params (M)", "wall time (s)"]
    records = []
    for job in jobs:
        val = job.metrics.get("val", {})
        params = (job.results.get("params") or (job.profile or {}).get("params") or {}).get("total")
        records.append([str(job.path), job.name, job.mode, job.data_label, job.short_overrides(common),
                        100 * val["oIoU"] if "oIoU" in val else None, 100 * val["mIoU"] if "mIoU" in val else None,
                        100 * val["paper/oIoU"] if "paper/oIoU" in val else None,
                        params / 1e6 if params is not None else None, job.results.get("wall_time_s")])
    intro = [f"Overrides shared by every job: `{' '.join(sorted(common))}`." if common else ""]
    return Section("runs", "runs", [p for p in intro if p], headers, records)


def build_report(paths: list[Path], out: Path | None = None, formats: tuple[str, ...] = ("md",),
                 wandb: bool | None = None, experiments_dir: Path | None = None) -> Report:
    """Write the report of the jobs under ``paths``; ``wandb`` None = when the jobs logged to W&B."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise RisbenchError(f"unknown --format {unknown}; choose from {list(FORMATS)}")
    paths = [Path(p) for p in paths]
    jobs = find_jobs(paths)
    if not jobs:
        raise RisbenchError(f"no results.json under {', '.join(map(str, paths))}: pass a run folder "
                            "(outputs/<experiment>/<run>) or a multirun folder (multirun/<sweep>/<date>_<time>)")
    experiments_dir = Path(experiments_dir or EXPERIMENTS_DIR)
    if not experiments_dir.is_dir():
        raise RisbenchError(f"{experiments_dir} (the papers' paper_results.yaml files) does not exist; pass "
                            "--experiments DIR")
    tables, titles = load_papers(experiments_dir), _paper_titles(experiments_dir)
    folder = report_folder(paths, out)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}-partial-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        report = _write_report(staging, jobs, tables, titles, formats, paths)
    except BaseException:
        shutil.rmtree(staging)  # a report that failed leaves nothing behind
        raise
    staging.rename(folder)  # the report appears whole, or not at all
    report.relocate(staging, folder)
    logged_wandb = [job.wandb for job in jobs if job.wandb]
    if wandb or (wandb is None and logged_wandb):
        from risbench.report.wandb_export import export

        report.wandb_runs = export(report.sections, report.groups, folder, logged_wandb[0] if logged_wandb else {})
    return report


def _write_report(folder: Path, jobs: list[Job], tables, titles: dict[str, str], formats: tuple[str, ...],
                  paths: list[Path]) -> Report:
    report = Report(folder, [])
    used: set[Path] = set()
    for table in tables:
        members = [job for job in jobs if belongs(job, table)]
        if not members:
            continue
        used.update(job.path for job in members)
        if table.skipped:
            report.skipped.append(f"{table.name}: {table.skipped} ({len(members)} jobs)")
            continue
        by_data = split_by_data(table, members)
        for data, group in by_data.items():
            name = table.name if len(by_data) == 1 else f"{table.name}-{_file_stem(data)}"
            comparison = compare(table, group)
            plot = plot_comparison(comparison, folder / f"{name}.png")
            report.sections.append(comparison_section(comparison, titles.get(table.paper, table.paper), plot, name,
                                                      data if len(by_data) > 1 else None))
            report.groups[name] = _main_group(group)
    board = [job for job in jobs if is_leaderboard_job(job)]
    if board:
        used.update(job.path for job in board)
        report.sections.append(_leaderboard_section(board, folder))
        report.groups["synthref_leaderboard"] = _main_group(board)
    report.unassigned = [job for job in jobs if job.path not in used]
    runs = _runs_section(jobs)

    for section in report.sections + [runs]:
        write_csv(section, folder / f"{section.name}.csv")
        report.files.append(folder / f"{section.name}.csv")
        if "md" in formats:
            (folder / f"{section.name}.md").write_text(markdown(section))
            report.files.append(folder / f"{section.name}.md")
        if section.plot is not None:
            report.files.append(section.plot)
    intro = _index_intro(paths, jobs, report)
    if "md" in formats:
        (folder / "index.md").write_text(_index_markdown(intro, report, runs))
        report.files.append(folder / "index.md")
    if "html" in formats:
        (folder / "index.html").write_text(html_page("risbench report", intro, report.sections, runs))
        report.files.append(folder / "index.html")
    return report


def _index_intro(paths: list[Path], jobs: list[Job], report: Report) -> list[str]:
    lines = [f"{len(jobs)} jobs under {', '.join(f'`{p}`' for p in paths)}."]
    if any(job.synthref_tiny for job in jobs):
        tiny = sum(job.synthref_tiny for job in jobs)
        lines.append(f"{tiny} of them are CPU-size synthref runs (`scale=tiny data=synthref`): reported against the "
                     "paper so the path is testable, their numbers are not comparable with the paper's.")
    if report.skipped:
        lines.append("Not compared: " + "; ".join(report.skipped) + ".")
    if report.unassigned:
        lines.append(f"{len(report.unassigned)} jobs belong to no paper table (no table's `experiment` is theirs): "
                     + ", ".join(f"`{job.path}` ({job.name})" for job in report.unassigned) + ".")
    return lines


def _index_markdown(intro: list[str], report: Report, runs: Section) -> str:
    from risbench.report.render import SYNTHREF_BANNER

    lines = ["# risbench report", ""]
    if any(s.synthref_tiny for s in report.sections):
        lines += [f"> {SYNTHREF_BANNER}", ""]
    lines += [p + "\n" for p in intro]
    lines += ["| table | rows with results | missing | unmatched jobs | files |", "|---|---:|---:|---:|---|"]
    for section in report.sections:
        files = [f"[md]({section.name}.md)", f"[csv]({section.name}.csv)"]
        files += [f"[plot]({section.plot.name})"] if section.plot is not None else []
        status = section.headers.index("status") if "status" in section.headers else None
        ran = len(section.records) if status is None else sum(
            1 for record in section.records if str(record[status]).startswith(("ran", "profiled")))
        counts = {heading: len(items) for heading, items in section.lists}
        missing = counts.get("Missing rows (no job ran them)", counts.get("Incomplete", 0))
        lines.append(f"| {section.title} | {ran} | {missing} | {counts.get('Jobs matching no row', 0)} | "
                     f"{' '.join(files)} |")
    lines += ["", "Every job: [runs.md](runs.md), [runs.csv](runs.csv).", ""]
    return "\n".join(lines)
