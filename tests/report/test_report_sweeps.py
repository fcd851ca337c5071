"""The papers' tables against the sweeps that reproduce them, and the report of real tiny sweeps."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from risbench.data.synthref import ensure_synthref
from risbench.report.build import EXPERIMENTS_DIR
from risbench.report.compare import belongs, match_row
from risbench.report.paper import load_papers
from risbench.report.runs import MISSING, Job, parse_overrides
from tests.helpers import REPO, compose_config, run_cli, sweep_jobs

TABLES = [table for table in load_papers(EXPERIMENTS_DIR) if not table.skipped]


def grid_job(experiment: str, overrides: list[str]) -> Job:
    """A job of a sweep as its overrides describe it (nothing resolved: only what the sweep sets)."""
    strings = [f"experiment={experiment}", *overrides]
    return Job(Path(f"/{experiment}/{'_'.join(overrides)}"), {}, parse_overrides(strings), {}, {}, strings)


@pytest.mark.parametrize("table", TABLES, ids=[table.name for table in TABLES])
def test_every_job_of_the_sweep_has_its_row_and_every_row_its_job(table):
    """Each job of the table's sweep grid (and of its profile sweep) matches exactly one row, and every
    row the paper's file calls reproducible is run by one (per dataset, in per-dataset tables)."""
    hit = set()
    for experiment in table.experiments + table.profile_experiments:
        for overrides in sweep_jobs(experiment):
            job = grid_job(experiment, overrides)
            if not belongs(job, table):
                continue  # a job of another sub-table (ReSTR Table 2: one per dataset)
            row, reason = match_row(job, table)
            assert row is not None, f"{overrides}: {reason}"
            dataset = None
            if table.kind == "per_dataset":
                dataset = job.value(table.dataset_key)
                assert dataset is not MISSING, (f"{overrides} sets no `{table.dataset_key}`: name the override that "
                                                "picks a job's dataset with the table's `dataset_key`")
            hit.add((row.label, str(dataset) if dataset is not None else None))
    expected = set()
    for row in table.rows:
        if row.reproducible:
            per_dataset = table.kind == "per_dataset"
            datasets = {c.dataset for c in table.columns if c.name in row.paper} if per_dataset else {None}
            expected |= {(row.label, dataset) for dataset in datasets}
    assert hit == expected


def test_every_table_names_an_existing_sweep():
    for table in load_papers(EXPERIMENTS_DIR):
        for experiment in table.experiments + table.profile_experiments:
            assert (REPO / "conf" / "experiment" / f"{experiment}.yaml").is_file(), (table.name, experiment)


SYNTHREF = {"image_size": 64, "train_images": 20, "val_images": 6, "testA_images": 6, "testB_images": 6}


@pytest.fixture(scope="module")
def synthref_64(tmp_path_factory) -> Path:
    return ensure_synthref(tmp_path_factory.mktemp("report_data") / "synthref", SYNTHREF)


def sweep(tmp_path: Path, data: Path, *args: str) -> Path:
    synthref = [f"data.synthref.{key}={value}" for key, value in SYNTHREF.items()]
    done = run_cli(["-m", *args, "debug=fast", f"paths.data_dir={data.parent}", "data.num_workers=0", *synthref],
                   cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (folder,) = (tmp_path / "multirun").glob("*/*")
    return folder


def csv_table(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_a_tiny_sweep_then_the_report_writes_every_file(synthref_64, tmp_path):
    folder = sweep(tmp_path, synthref_64, "experiment=ablation/sadlr_table4a", "scale=tiny", "data=synthref")
    done = subprocess.run([sys.executable, "-m", "risbench.report", str(folder), "--format", "md", "html"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = folder / "report"
    assert sorted(p.name for p in report.iterdir()) == [
        "index.html", "index.md", "runs.csv", "runs.md", "sadlr_table4a.csv", "sadlr_table4a.md", "sadlr_table4a.png"]
    with Image.open(report / "sadlr_table4a.png") as image:
        image.verify()
    with Image.open(report / "sadlr_table4a.png") as image:
        assert image.format == "PNG" and image.width > 400 and image.height > 200
    assert "data:image/png;base64," in (report / "index.html").read_text()
    md = (report / "sadlr_table4a.md").read_text()
    assert "**Missing rows (no job ran them)** (0)" in md and "**Jobs matching no row** (0)" in md
    assert "not comparable" in md
    # each row's cells are its job's results.json numbers (percent), under both protocols
    rows = {row["method"]: row for row in csv_table(report / "sadlr_table4a.csv")}
    for job in sorted(folder.glob("[0-9]*")):
        results = json.loads((job / "results.json").read_text())
        rounds = next(o.split("=")[1] for o in results["overrides"] if o.startswith("model.head.iterations="))
        row = rows[f"n={rounds}"]
        val = results["metrics"]["val"]
        assert float(row["val mIoU ours paper-protocol"]) == round(100 * val["paper/mIoU"], 4)
        assert float(row["val oIoU ours common-protocol"]) == round(100 * val["oIoU"], 4)
        assert row["status"] == "ran (1 job)" and row["ours data"] == "synthref (tiny)"


@pytest.mark.slow
def test_the_leaderboard_sweep_reports_every_model_with_its_blind_control(synthref_64, tmp_path):
    folder = sweep(tmp_path, synthref_64, "experiment=synthref_leaderboard")
    rows = {row["model"]: row for row in csv_table(folder / "report" / "synthref_leaderboard.csv")}
    models = {path.stem for path in (REPO / "conf" / "model").glob("*.yaml")}
    assert set(rows) == models and "shared_ris" in models
    assert (folder / "report" / "synthref_leaderboard.png").is_file() and (folder / "report" / "index.html").is_file()
    jobs = [json.loads(path.read_text()) for path in folder.glob("*/results.json")]
    assert len(jobs) == 2 * len(models)
    for job in jobs:
        overrides = dict(o.split("=", 1) for o in job["overrides"])
        row = rows[overrides["model"]]
        val = round(100 * job["metrics"]["val"]["mIoU"], 4)
        if overrides["data.blind_text"].lower() == "true":  # the sweeper writes False/True
            assert float(row["blind val mIoU"]) == val
        else:
            assert float(row["val mIoU"]) == val
            assert float(row["testB mIoU"]) == round(100 * job["metrics"]["testB"]["mIoU"], 4)
            assert float(row["params (M)"]) == round(job["params"]["total"] / 1e6, 4)
    for row in rows.values():
        assert float(row["gap val"]) == pytest.approx(float(row["val mIoU"]) - float(row["blind val mIoU"]), abs=2e-4)


def test_the_leaderboard_sweeps_every_model_with_and_without_the_text():
    """A new model joins the leaderboard by adding its name to `model:` in synthref_leaderboard.yaml."""
    jobs = sweep_jobs("synthref_leaderboard")
    models = sorted(path.stem for path in (REPO / "conf" / "model").glob("*.yaml"))
    assert sorted({job[0] for job in jobs}) == [f"model={m}" for m in models]
    assert {job[1] for job in jobs} == {"data.blind_text=false", "data.blind_text=true"}
    cfg = compose_config(["experiment=synthref_leaderboard", *jobs[0]], with_hydra=True)
    assert (cfg.scale_name, cfg.data.dataset, cfg.trainer.max_steps) == ("tiny", "synthref", 2262)  # restr's budget
    assert cfg.hydra.callbacks.report._target_ == "risbench.report.hydra_callback.ReportOnMultirunEnd"
