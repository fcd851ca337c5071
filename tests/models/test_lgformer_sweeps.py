"""Every LGFormer table as a Hydra sweep: the jobs are the paper's rows, and each sweep runs end to end at
``scale=tiny data=synthref`` (one batch per loop; Table 3 evaluates two briefly trained Table 2 models)."""

from __future__ import annotations

import json

import pytest
import yaml

from risbench.data.synthref import ensure_synthref
from tests.fixtures import TINY_SYNTHREF
from tests.helpers import REPO, compose_config, run_on_synthref, sweep_jobs, sweep_results

PAPER = yaml.safe_load((REPO / "experiments" / "lgformer" / "paper_results.yaml").read_text())["tables"]
# sweep -> jobs at scale=tiny data=synthref (Table 1's rows all collapse to synthref)
SWEEPS = {"lgformer_table1": 4, "lgformer_table2": 3, "lgformer_table4": 4, "lgformer_table5": 2,
          "lgformer_table6": 2}
# the tests' small synthref, at the 64 px of scale=tiny (the pixel decoder's coarsest level is then 2x2)
SYNTHREF = {**TINY_SYNTHREF, "image_size": 64}


def row_overrides(table: str) -> list[list[str]]:
    """The paper_results.yaml rows of a table as sweep jobs."""
    return [[f"{key}={value}" for key, value in row["overrides"].items()] for row in PAPER[table]["rows"]]


def test_sweep_grids_are_the_papers_rows():
    for table in ("table2", "table3", "table4", "table5", "table6"):
        assert sweep_jobs(f"ablation/lgformer_{table}") == row_overrides(table), table
    table1 = [job[0].split("=")[1] for job in sweep_jobs("ablation/lgformer_table1")]
    ours = next(row for row in PAPER["table1"]["rows"] if row.get("ours"))
    assert sorted(table1) == sorted(ours["results"])
    referit = compose_config(["experiment=ablation/lgformer_table1", "+row/lgformer_table1=referit"])
    assert (referit.data.dataset, referit.data.split_by) == ("refclef", "unc")


def test_table3_rows_evaluate_the_table2_models_by_length():
    paths = ["table2_checkpoints.learnable_q10=/ckpt/q10.ckpt", "table2_checkpoints.linguistic=/ckpt/ling.ckpt"]
    learnable, linguistic = (compose_config(["experiment=ablation/lgformer_table3", *job, *paths])
                             for job in sweep_jobs("ablation/lgformer_table3"))
    assert learnable.mode == linguistic.mode == "eval"
    assert (learnable.ckpt_path, linguistic.ckpt_path) == ("/ckpt/q10.ckpt", "/ckpt/ling.ckpt")
    assert (learnable.model.decoder.query_type, learnable.model.decoder.num_queries) == ("learnable", 10)
    assert (linguistic.model.decoder.query_type, linguistic.model.decoder.num_queries) == ("linguistic", 1)
    assert [list(b) for b in learnable.eval.length_buckets] == PAPER["table3"]["buckets"]


def test_table4_rows_add_one_module_each():
    rows = [compose_config(["experiment=ablation/lgformer_table4", *job]) for job in
            sweep_jobs("ablation/lgformer_table4")]
    got = [(cfg.model.encoder.fusion, cfg.model.pixel_decoder.l2va, cfg.model.decoder.v2la) for cfg in rows]
    assert got == [("pwam", False, False), ("vlba", False, False), ("vlba", True, False), ("vlba", True, True)]


@pytest.fixture(scope="module")
def synthref_64(tmp_path_factory):
    return ensure_synthref(tmp_path_factory.mktemp("lgformer_data") / "synthref", SYNTHREF)


@pytest.mark.slow
@pytest.mark.parametrize("sweep", sorted(SWEEPS))
def test_sweep_runs_at_tiny_scale(sweep, synthref_64, tmp_path):
    run_on_synthref(["-m", f"experiment=ablation/{sweep}", "debug=fast"], synthref_64, SYNTHREF, tmp_path)
    results = sweep_results(tmp_path, sweep)
    assert len(results) == SWEEPS[sweep]
    for path in results:
        result = json.loads(path.read_text())
        assert result["experiment"] == sweep and result["mode"] == "train"
        assert set(result["metrics"]) == {"val", "testA", "testB"}
        assert {"oIoU", "paper/oIoU"} <= set(result["metrics"]["val"])


@pytest.mark.slow
def test_table3_sweep_evaluates_table2_checkpoints_by_length(synthref_64, tmp_path):
    short = ["trainer.max_steps=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]
    rows = ["+row/lgformer_table2=learnable_q10,linguistic"]
    run_on_synthref(["-m", "experiment=ablation/lgformer_table2", *rows, *short], synthref_64, SYNTHREF, tmp_path)
    learnable, linguistic = (path.parent / "checkpoints" / "last.ckpt"
                             for path in sweep_results(tmp_path, "lgformer_table2"))
    run_on_synthref(["-m", "experiment=ablation/lgformer_table3", "trainer.limit_test_batches=1",
                     f"table2_checkpoints.learnable_q10={learnable}", f"table2_checkpoints.linguistic={linguistic}"],
                    synthref_64, SYNTHREF, tmp_path)
    results = [json.loads(path.read_text()) for path in sweep_results(tmp_path, "lgformer_table3")]
    assert [r["mode"] for r in results] == ["eval", "eval"]
    assert [r["checkpoint"] for r in results] == [str(learnable), str(linguistic)]
    for result in results:
        metrics = result["metrics"]["val"]
        assert {"len1-2/oIoU", "len3-7/oIoU", "len8-12/oIoU", "len13+/oIoU", "paper/len1-2/oIoU"} <= set(metrics)
