"""The model benchmark's protocol: cells in fresh processes, medians of per-process medians, bench.json."""

import json

import pytest

from risbench.bench.model import main, run_cell, summarise

TINY_RESTR = ["model=restr", "scale=tiny", "data=synthref", "tokenizer.vocab_size=64"]


@pytest.mark.parametrize("precision, mode", [("fp32", "forward"), ("bf16", "train_step"), ("fp32", "optimizer_step")])
def test_a_cell_times_each_iteration_of_its_mode(precision, mode):
    cell = run_cell(precision, mode, TINY_RESTR, batch_size=2, warmup=1, repeats=3)
    assert (cell["precision"], cell["mode"], cell["img_size"], cell["batch_size"]) == (precision, mode, 48, 2)
    assert len(cell["times_ms"]) == 3 and cell["device"] == "cpu"


def test_summary_is_the_median_of_per_process_medians():
    cells = [{"precision": "fp32", "mode": "forward", "times_ms": times, "peak_memory_mib": peak}
             for times, peak in (([1, 2, 9], 100), ([4, 5, 6], 300), ([7, 8, 3], 200))]
    row = summarise(cells, {"forward": 2e9})
    assert row["process_medians_ms"] == [2, 5, 7] and row["median_ms"] == 5
    assert (row["min_ms"], row["max_ms"], row["peak_memory_mib"]) == (1, 9, 200)
    assert row["gmacs"] == 2.0 and row["gmac_per_s"] == pytest.approx(400.0)


@pytest.mark.slow
def test_the_command_writes_every_cell_to_a_new_bench_json(tmp_path):
    out = tmp_path / "bench"
    main([*TINY_RESTR, "bench.processes=2", "bench.repeats=2", "bench.warmup=1", "bench.modes=forward,train_step",
          f"bench.out={out}"])
    report = json.loads((out / "bench.json").read_text())
    cells = [(row["precision"], row["mode"]) for row in report["rows"]]
    assert cells == [("fp32", "forward"), ("fp32", "train_step"), ("bf16", "forward"), ("bf16", "train_step")]
    assert all(len(row["process_medians_ms"]) == 2 for row in report["rows"])
    assert report["macs"]["train_step"] > 2 * report["macs"]["forward"]  # backward costs about twice the forward
    assert main([*TINY_RESTR, "bench.processes=1", "bench.repeats=1", f"bench.out={out}"]) == 2  # never written over


@pytest.mark.parametrize("option, message", [
    ("bench.expressions_per_image=0", "must be a whole number >= 1"),
    ("bench.batch_size=two", "must be a whole number >= 1"),
    ("bench.modes=forward,inference", "must be a comma-separated subset of forward,train_step"),
    ("bench.precisions=fp16", "must be a comma-separated subset of fp32,bf16")])
def test_bad_bench_option_is_one_line_error(option, message, capsys):
    assert main([option]) == 2
    assert f"risbench error: {option} {message}" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [("model=nope", "Could not find 'model/nope'"),
                                               ("model.head.iterations=abc", "model.head.iterations='abc' is not")])
def test_a_bad_override_is_one_message_before_any_folder_is_made(override, message, tmp_path, capsys):
    assert main([override, f"bench.out={tmp_path / 'bench'}"]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "bench").exists()


def test_an_existing_bench_folder_is_refused_before_measuring(tmp_path, capsys):
    (tmp_path / "bench").mkdir()
    assert main([*TINY_RESTR, f"bench.out={tmp_path / 'bench'}"]) == 2
    err = capsys.readouterr().err
    assert f"bench.out={tmp_path / 'bench'} exists already" in err and "Traceback" not in err
    assert not list((tmp_path / "bench").iterdir())


def test_a_bench_folder_under_a_file_is_refused_before_measuring(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep\n")
    assert main([*TINY_RESTR, f"bench.out={blocker / 'bench'}"]) == 2
    err = capsys.readouterr().err
    assert f"bench.out={blocker / 'bench'} cannot be written: {blocker} is a file, not a folder" in err
    assert "fp32" not in err and blocker.read_text() == "keep\n"
