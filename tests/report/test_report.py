"""The report on fake multiruns written by the tests: cells, missing rows, unmatched jobs, files, HTML, W&B."""

from __future__ import annotations

import base64
import csv
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from risbench.errors import RisbenchError
from risbench.report.__main__ import main
from risbench.report.build import build_report
from tests.report.fake_runs import split_metrics, write_job

TABLE4A = "ablation/sadlr_table4a"


def csv_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as handle:
        return {row["method"]: row for row in csv.DictReader(handle)}


def md_row(path: Path, label: str) -> list[str]:
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if cells[0] == label:
            return cells
    raise AssertionError(f"no row {label!r} in {path}")


def md_headers(path: Path) -> list[str]:
    line = next(line for line in path.read_text().splitlines() if line.startswith("| method |"))
    return [c.strip() for c in line.strip().strip("|").split(" | ")]


@pytest.fixture
def table4a_sweep(tmp_path) -> Path:
    """Sweep folder of SADLR Table 4a at CPU size: rounds 0 and 1 (twice, two seeds), a round count the
    paper has no row for, and a stray job of another experiment."""
    sweep = tmp_path / "multirun" / "sadlr_table4a" / "2026-01-01_00-00-00"
    common = ["scale=tiny", "data=synthref"]
    write_job(sweep / "0", TABLE4A, ["model.head.iterations=0", *common],
              {"val": split_metrics(0.40, 0.42), "testA": split_metrics(0.3, 0.3)})
    write_job(sweep / "1", TABLE4A, ["model.head.iterations=1", *common], {"val": split_metrics(0.50, 0.52)})
    write_job(sweep / "2", TABLE4A, ["model.head.iterations=1", "seed=2", *common], {"val": split_metrics(0.60, 0.62)})
    write_job(sweep / "3", TABLE4A, ["model.head.iterations=7", *common], {"val": split_metrics(0.1, 0.1)})
    write_job(sweep / "4", "lavt", common, {"val": split_metrics(0.2, 0.2)})
    return sweep


def test_table_cells_missing_rows_and_unmatched_jobs(table4a_sweep):
    report = build_report([table4a_sweep])
    assert report.folder == table4a_sweep / "report"
    cells = csv_rows(report.folder / "sadlr_table4a.csv")
    assert list(cells) == ["n=0", "n=1", "n=2", "n=3", "n=4"]  # one line per paper row
    n1 = cells["n=1"]
    assert (n1["status"], n1["notes"], n1["ours data"]) == ("ran (2 jobs)", "ours", "synthref (tiny)")
    # the two seeds averaged; paper protocol = paper/ keys (+1 point here), common = plain keys
    assert float(n1["val oIoU paper"]) == 73.22
    assert float(n1["val oIoU ours paper-protocol"]) == pytest.approx(56.0)
    assert float(n1["val oIoU ours common-protocol"]) == pytest.approx(55.0)
    assert float(n1["val oIoU diff"]) == pytest.approx(56.0 - 73.22)
    assert float(n1["val mIoU ours common-protocol"]) == pytest.approx(57.0)
    assert float(n1["val prec@0.9 ours paper-protocol"]) == pytest.approx(26.0)
    assert float(cells["n=0"]["val oIoU ours common-protocol"]) == pytest.approx(40.0)
    assert cells["n=3"]["status"] == "missing" and cells["n=3"]["val oIoU ours paper-protocol"] == ""
    assert cells["n=3"]["notes"] == "ours, default"

    md = report.folder / "sadlr_table4a.md"
    headers = md_headers(md)
    row = dict(zip(headers, md_row(md, "n=1")))
    assert (row["val oIoU paper"], row["val oIoU ours paper-protocol"], row["val oIoU ours common-protocol"],
            row["val oIoU diff"]) == ("73.22", "56.00", "55.00", "-17.22")
    assert dict(zip(headers, md_row(md, "n=4")))["val oIoU ours paper-protocol"] == "-"
    text = md.read_text()
    assert "**CPU-size synthref runs**" in text and "not comparable" in text
    missing = text.split("**Missing rows (no job ran them)** (3)")[1].split("**")[0]
    assert re.findall(r"^- (.+)$", missing, re.M) == ["n=2", "n=3", "n=4"]
    unmatched = text.split("**Jobs matching no row** (1)")[1]
    assert f"`{table4a_sweep / '3'}`: matches no row's overrides" in unmatched
    assert "model.head.iterations=7" in unmatched

    index = (report.folder / "index.md").read_text()
    assert "[md](sadlr_table4a.md) [csv](sadlr_table4a.csv) [plot](sadlr_table4a.png)" in index
    assert f"`{table4a_sweep / '4'}` (lavt)" in index  # belongs to no paper table
    assert "| sadlr table4a | 2 | 3 | 1 |" in index
    with Image.open(report.folder / "sadlr_table4a.png") as image:
        assert image.format == "PNG" and image.width > 400


def test_an_existing_report_is_never_written_into(table4a_sweep):
    first = build_report([table4a_sweep])
    before = {path.name: path.read_bytes() for path in first.folder.iterdir()}
    second = build_report([table4a_sweep])
    assert second.folder == table4a_sweep / "report-2"
    assert {path.name: path.read_bytes() for path in first.folder.iterdir()} == before
    assert build_report([table4a_sweep]).folder == table4a_sweep / "report-3"
    assert len(list(table4a_sweep.glob("report*/index.md"))) == 3  # reports are not read back as jobs


def test_html_is_one_page_with_the_plots_inline(table4a_sweep):
    report = build_report([table4a_sweep], formats=("html",))
    page = (report.folder / "index.html").read_text()
    assert not (report.folder / "index.md").exists()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [base64.b64decode(i) for i in images] == [(report.folder / "sadlr_table4a.png").read_bytes()]
    assert "<th>val oIoU ours paper-protocol</th>" in page and "<td>n=1</td>" in page
    assert "not comparable" in page and 'href="' not in page.replace('href="#', "")  # no external links


def test_restr_tables_row_files_datasets_buckets_and_counts(tmp_path):
    """ReSTR's tables: rows named by their row file, one column per dataset, length buckets, and the
    params/MACs of mode=profile jobs (the fusion stacks only in Table 3b; GloVe left out in Table 5)."""
    root = tmp_path / "multirun"
    buckets = {"paper/len1-2/oIoU": 0.7, "len1-2/oIoU": 0.6, "paper/len3-3/oIoU": 0.5, "len3-3/oIoU": 0.5,
               "paper/len4-5/oIoU": 0.4, "len4-5/oIoU": 0.4, "paper/len6+/oIoU": 0.3, "len6+/oIoU": 0.3}
    for i, row in enumerate(["l2", "l4", "l4_dec"]):
        write_job(root / "t4" / str(i), "ablation/restr_table4", [f"+row/restr_table4={row}"],
                  {"val": split_metrics(0.2 + 0.1 * i, 0.2)})
    write_job(root / "t2" / "0", "ablation/restr_table2", ["+row/restr_table2=refcoco"],
              {"val": split_metrics(0.5, 0.5, extra=buckets)}, mode="eval")
    write_job(root / "t1" / "0", "ablation/restr_table1", ["+row/restr_table1=refcoco"],
              {s: split_metrics(0.3, 0.3) for s in ("val", "testA", "testB")})
    profile = {"params": {"total": 130_000_000}, "params_excluding": {"total": 122_000_000}, "gmacs": 52.5,
               "by_module": {"fusion": {"params": 28_000_000, "gmacs": 15.9}, "vision": {"params": 1, "gmacs": 30.0}}}
    write_job(root / "t5" / "0", "ablation/restr_table5", ["+row/restr_table5=cme"], mode="profile", profile=profile)
    write_job(root / "t3b" / "0", "ablation/restr_table3b", ["+row/restr_table3b=cme"],
              {"val": split_metrics(0.4, 0.4)})
    write_job(root / "t3b" / "1", "ablation/restr_table3b", ["+row/restr_table3b=cme", "mode=profile"],
              mode="profile", profile=profile)
    report = build_report([root])
    folder = report.folder
    assert sorted(p.name for p in folder.glob("*.csv")) == [
        "restr_table1.csv", "restr_table2_refcoco.csv", "restr_table3b.csv", "restr_table4.csv", "restr_table5.csv",
        "runs.csv"]

    table4 = csv_rows(folder / "restr_table4.csv")
    assert (table4["l4_dec"]["layers"], table4["l4_dec"]["decoder"]) == ("4", "True")
    assert float(table4["l4_dec"]["val oIoU ours common-protocol"]) == pytest.approx(40.0)
    assert table4["l6"]["status"] == "missing" and float(table4["l6"]["val oIoU paper"]) == 52.84
    assert (folder / "restr_table4.png").is_file()  # a curve over the fusion layers

    table2 = csv_rows(folder / "restr_table2_refcoco.csv")
    assert float(table2["ReSTR"]["val 1-2 words oIoU paper"]) == 72.38
    assert float(table2["ReSTR"]["val 1-2 words oIoU ours paper-protocol"]) == pytest.approx(70.0)
    assert float(table2["ReSTR"]["val 6+ words oIoU ours common-protocol"]) == pytest.approx(30.0)
    assert table2["ACM"]["status"] == "paper only" and (folder / "restr_table2_refcoco.png").is_file()

    table1 = csv_rows(folder / "restr_table1.csv")
    assert float(table1["ReSTR"]["refcoco testB oIoU ours common-protocol"]) == pytest.approx(30.0)
    assert table1["ReSTR"]["referit test oIoU ours common-protocol"] == ""
    text = (folder / "restr_table1.md").read_text()
    assert "- ReSTR on referit" in text and "- ReSTR on refcoco_plus" in text and "- ReSTR on refcoco\n" not in text

    table5 = csv_rows(folder / "restr_table5.csv")
    assert float(table5["ReSTR (CME)"]["params (M) ours"]) == 122.0  # params_excluding: no GloVe table
    assert float(table5["ReSTR (CME)"]["GMACs ours"]) == 52.5 and float(table5["ReSTR (CME)"]["GMACs paper"]) == 52.29
    assert table5["ReSTR (CME)"]["status"] == "profiled"
    assert "**Missing rows (no job ran them)** (1)\n\n- ReSTR (CME-dagger)" in (folder / "restr_table5.md").read_text()

    table3b = csv_rows(folder / "restr_table3b.csv")
    assert float(table3b["CME"]["params (M) ours"]) == 28.0 and float(table3b["CME"]["GMACs ours"]) == 15.9
    assert float(table3b["CME"]["val oIoU ours common-protocol"]) == pytest.approx(40.0)


def test_sadlr_table3_takes_gmacs_from_its_profile_sweep(tmp_path):
    root = tmp_path / "runs"
    base_head = ["model/base=lavt", "model/head=sadlr"]
    write_job(root / "train" / "0", "ablation/sadlr_table3", base_head, {"val": split_metrics(0.5, 0.5)})
    write_job(root / "profile" / "0", "ablation/sadlr_table3_profile", base_head, mode="profile",
              profile={"params": {"total": 110_000_000}, "gmacs": 204.1, "by_module": {}})
    cells = csv_rows(build_report([root / "train", root / "profile"]).folder / "sadlr_table3.csv")
    row = cells["LAVT + SADLR"]
    assert (float(row["GMACs paper"]), float(row["GMACs ours"]), float(row["time_ms paper"])) == (203.5, 204.1, 51.5)
    assert float(row["val oIoU ours common-protocol"]) == pytest.approx(50.0)
    assert cells["LAVT"]["status"] == "missing" and cells["LAVT"]["GMACs ours"] == ""


def test_report_of_several_folders_goes_to_their_common_parent(table4a_sweep, tmp_path):
    other = tmp_path / "multirun" / "other"
    write_job(other / "0", TABLE4A, ["model.head.iterations=4"], {"val": split_metrics(0.5, 0.5)})
    report = build_report([table4a_sweep, other])
    assert report.folder == tmp_path / "multirun" / "report"
    assert csv_rows(report.folder / "sadlr_table4a.csv")["n=4"]["status"] == "ran (1 job)"


def test_user_errors_are_one_message(tmp_path, capsys):
    with pytest.raises(RisbenchError, match="no results.json under"):
        build_report([tmp_path])
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(RisbenchError, match="unknown --format"):
        build_report([tmp_path], formats=("pdf",))


def test_a_report_folder_under_a_file_is_one_message(table4a_sweep, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep\n")
    assert main([str(table4a_sweep), "--out", str(blocker / "report")]) == 2
    assert f"--out={blocker / 'report'} cannot be written: {blocker} is a file, not a folder" in capsys.readouterr().err
    assert blocker.read_text() == "keep\n" and not list(table4a_sweep.glob("report*"))


@pytest.mark.slow
def test_wandb_gets_the_tables_and_plots_offline(table4a_sweep, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(table4a_sweep))  # no ~/.netrc key
    report = build_report([table4a_sweep], wandb=True)
    (run,) = report.wandb_runs
    assert run.name.startswith("offline-run-") and list(run.glob("*.wandb"))
    (table_file,) = (run / "files" / "media" / "table" / "report").glob("sadlr_table4a_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == md_headers(report.folder / "sadlr_table4a.md")
    n1 = dict(zip(table["columns"], table["data"][1]))
    assert (n1["method"], n1["val oIoU paper"], n1["val oIoU ours common-protocol"]) == ("n=1", 73.22, 55.0)
    assert list((run / "files" / "media" / "images" / "report").glob("sadlr_table4a_plot_*.png"))
    assert len(list((run / "files" / "media" / "table" / "report").glob("runs_*.table.json"))) == 0


def test_config_values_compare_as_hydra_parses_them():
    from risbench.report.paper import canonical
    from risbench.report.runs import parse_overrides

    assert canonical(3) == canonical("3") == canonical(3.0) == "3"
    assert canonical(True) == canonical("true") == canonical("True") == "true"
    assert canonical("1e-3") == canonical(0.001) and canonical("d128-512") == "d128-512"
    assert parse_overrides(["+row/restr_table4=l4_dec", "model.head.iterations=2", "predict.text='a b'",
                            "~trainer.max_time"]) == {"row/restr_table4": "l4_dec", "model.head.iterations": 2,
                                                      "predict.text": "a b"}


def test_a_malformed_paper_file_is_one_message_naming_the_table(tmp_path):
    folder = tmp_path / "experiments" / "toy"
    folder.mkdir(parents=True)
    (folder / "paper_results.yaml").write_text("paper: toy\ntables:\n  table1:\n    experiment: x\n    rows: {a: 1}\n")
    write_job(tmp_path / "runs" / "0", "x", [], {"val": split_metrics(0.1, 0.1)})
    with pytest.raises(RisbenchError, match=r"paper_results.yaml: tables.table1.rows must be a list"):
        build_report([tmp_path / "runs"], experiments_dir=tmp_path / "experiments")


def test_a_dataset_the_paper_does_not_report_gets_its_own_columns(tmp_path):
    """SADLR Table 1 swept at data=synthref: the paper has no synthref column, so ours stand alone."""
    write_job(tmp_path / "runs" / "0", "ablation/sadlr_table1", ["data=synthref", "scale=tiny"],
              {s: split_metrics(0.3, 0.35) for s in ("val", "testA", "testB")})
    report = build_report([tmp_path / "runs"])
    for table in ("sadlr_table1", "sadlr_table2"):  # the same jobs fill both tables (oIoU, mIoU)
        sadlr = csv_rows(report.folder / f"{table}.csv")["SADLR"]
        metric, value = ("oIoU", 31.0) if table == "sadlr_table1" else ("mIoU", 36.0)
        assert float(sadlr[f"synthref testB {metric} ours paper-protocol"]) == pytest.approx(value)
        assert sadlr[f"synthref testB {metric} paper"] == "" and sadlr[f"synthref testB {metric} diff"] == ""
        assert sadlr[f"refcoco val {metric} ours paper-protocol"] == ""
        text = (report.folder / f"{table}.md").read_text()
        assert "- SADLR on refcoco\n" in text and "- SADLR on refcocog_google" in text
        assert "Datasets the paper does not report (synthref)" in text


def test_length_buckets_may_be_a_list_or_keyed_like_the_metrics(tmp_path):
    from risbench.report.paper import load_paper

    path = tmp_path / "paper_results.yaml"
    path.write_text("""
paper: toy
tables:
  table3:
    experiment: ablation/toy_table3
    split: val
    buckets: [[1, 2], [3, 3], [4, 20]]
    rows:
      - {method: A, ours: true, overrides: {+row/toy_table3: a}, results: {len1-2: 70.0, len3-3: 60.0, len4+: 50.0}}
      - {method: B, values: [71.0, 61.0, 51.0]}
""")
    (table,) = load_paper(path)
    assert [(c.metric, c.label) for c in table.columns] == [
        ("len1-2/oIoU", "1-2 words"), ("len3-3/oIoU", "3 words"), ("len4+/oIoU", "4+ words")]
    a, b = table.rows
    assert list(a.paper.values()) == [70.0, 60.0, 50.0] and list(b.paper.values()) == [71.0, 61.0, 51.0]
    assert a.overrides == {"row/toy_table3": "a"} and a.reproducible and not b.reproducible
    assert table.plot == {"x": "buckets", "label": "expression length"} and not table.extras


def _rewrite_json(path: Path, change) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


@pytest.mark.parametrize("damage, file, message", [
    (lambda job: (job / "results.json").write_text("[1, 2]"), "results.json", "holds a list, not the mapping"),
    (lambda job: _rewrite_json(job / "results.json", lambda r: {**r, "metrics": [0.5]}), "results.json",
     "metrics is [0.5], not a mapping"),
    (lambda job: _rewrite_json(job / "results.json", lambda r: {**r, "metrics": {"val": 0.5}}), "results.json",
     "metrics.val is 0.5, not a mapping"),
    (lambda job: _rewrite_json(job / "results.json", lambda r: {**r, "metrics": {"val": {"oIoU": "0.5"}}}),
     "results.json", "metrics.val.oIoU is '0.5', not a number"),
    (lambda job: _rewrite_json(job / "results.json", lambda r: {**r, "params": {"total": "2M"}}), "results.json",
     "params.total is '2M', not a number"),
    (lambda job: (job / ".hydra/hydra.yaml").write_text("- a\n- b\n"), ".hydra/hydra.yaml",
     "holds a list, not the dict Hydra writes"),
    (lambda job: (job / ".hydra/hydra.yaml").write_text("hydra: [a]\n"), ".hydra/hydra.yaml",
     "hydra is ['a'], not a mapping"),
    (lambda job: (job / ".hydra/config.yaml").write_text("- a\n"), ".hydra/config.yaml", "holds a list"),
    (lambda job: (job / "profile.json").write_text('{"params": {"tot'), "profile.json", "could not be read"),
])
def test_a_damaged_run_file_is_one_message_naming_it_and_no_report_is_left(tmp_path, capsys, damage, file, message):
    root = tmp_path / "multirun"
    write_job(root / "0", TABLE4A, ["model.head.iterations=0"], {"val": split_metrics(0.4, 0.4)})
    damaged = write_job(root / "1", TABLE4A, ["model.head.iterations=1"], {"val": split_metrics(0.5, 0.5)})
    damage(damaged)
    assert main([str(root)]) == 2
    err = capsys.readouterr().err
    assert f"{damaged / file}" in err and message in err and "is the run folder intact?" in err, err
    assert sorted(p.name for p in root.iterdir()) == ["0", "1"]  # no report folder, not even an empty one


def test_a_report_that_fails_midway_leaves_no_folder(table4a_sweep, monkeypatch):
    def broken_plot(*args):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr("risbench.report.build.plot_comparison", broken_plot)
    before = sorted(table4a_sweep.iterdir())
    with pytest.raises(RuntimeError, match="plotting failed"):
        build_report([table4a_sweep])
    assert sorted(table4a_sweep.iterdir()) == before


def test_runs_on_other_data_or_scale_are_compared_apart_never_averaged(tmp_path):
    root = tmp_path / "multirun"
    write_job(root / "0", TABLE4A, ["model.head.iterations=1"], {"val": split_metrics(0.2, 0.2)})
    write_job(root / "1", TABLE4A, ["model.head.iterations=1", "scale=paper", "data=refcoco"],
              {"val": split_metrics(0.6, 0.6)}, data="refcoco", scale="paper")
    report = build_report([root])
    names = sorted(section.name for section in report.sections if section.name.startswith("sadlr_table4a"))
    assert names == ["sadlr_table4a-refcoco-paper", "sadlr_table4a-synthref-tiny"]
    tiny = csv_rows(report.folder / "sadlr_table4a-synthref-tiny.csv")["n=1"]
    paper = csv_rows(report.folder / "sadlr_table4a-refcoco-paper.csv")["n=1"]
    assert (float(tiny["val oIoU ours common-protocol"]), tiny["ours data"]) == (20.0, "synthref (tiny)")
    assert (float(paper["val oIoU ours common-protocol"]), paper["ours data"]) == (60.0, "refcoco (paper)")
    assert "sadlr table4a, refcoco (paper)" in (report.folder / "index.md").read_text().lower()


def test_the_leaderboard_keeps_data_apart_and_shows_unknown_counts_as_missing(tmp_path):
    from risbench.report.leaderboard import leaderboard
    from risbench.report.runs import find_jobs

    root = tmp_path / "runs"
    lb = "synthref_leaderboard"
    write_job(root / "0", lb, ["model=restr"], {"val": split_metrics(0.3, 0.3)}, choices={"model": "restr"})
    write_job(root / "1", lb, ["model=restr", "scale=paper"], {"val": split_metrics(0.7, 0.7)}, scale="paper",
              choices={"model": "restr"})
    for job in ("0", "1"):  # older runs: no param count, no wall time
        _rewrite_json(root / job / "results.json", lambda r: {k: v for k, v in r.items()
                                                              if k not in ("params", "wall_time_s")})
    rows, notes = leaderboard(find_jobs([root]))
    assert [(row["data"], row["val mIoU"]) for row in rows] == [("synthref (paper)", 70.0), ("synthref (tiny)", 30.0)]
    assert all(row["params (M)"] is None and row["train time (min)"] is None for row in rows)
    assert "restr on synthref (tiny): no text-blind control (data.blind_text=true)" in notes
