"""Every ReSTR table as a Hydra sweep: the jobs compose with the paper's knobs, and each sweep runs end to end
at ``scale=tiny data=synthref debug=fast`` (one batch per loop)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from tests.helpers import REPO, compose_config, run_cli, sweep_jobs

SMALL_DATA = ["data.synthref.train_images=40", "data.synthref.val_images=10", "data.synthref.testA_images=10",
              "data.synthref.testB_images=10", "data.num_workers=0"]
TINY = ["scale=tiny", "data=synthref", "debug=fast"]
PAPER = yaml.safe_load((REPO / "experiments" / "restr" / "paper_results.yaml").read_text())["tables"]


def paper_job(experiment: str, job: list[str]):
    return compose_config([f"experiment={experiment}", *job])


# ------------------------------------------------------------------------------- composition (fast)

def test_default_experiment_is_the_paper_recipe():
    cfg = compose_config(["experiment=restr_cme"])
    assert cfg.model._target_ == "risbench.models.restr.ReSTR" and cfg.data.dataset == "refcocog"
    assert (cfg.model.fusion.type, cfg.model.fusion.num_layers, cfg.model.fusion.weight_sharing) == ("cme", 4, False)
    assert cfg.model.decoder.enabled and cfg.model.loss.patch_weight == 0.1 and cfg.model.loss.patch_tau == 0.8
    assert (cfg.data.img_size, cfg.data.resize, cfg.data.normalize, cfg.data.batch_size) == (480, "letterbox", "half", 8)
    assert (cfg.tokenizer.kind, cfg.tokenizer.padding_side, cfg.tokenizer.max_length) == ("glove", "left", 20)
    assert cfg.optim.optimizer.lr == 1e-5 and cfg.optim.optimizer.weight_decay == 5e-4
    assert cfg.optim.param_groups[0].lr_mult == 0.1 and cfg.optim.scheduler.warmup_steps == 40000
    assert cfg.eval.ckpt_select == "last"
    assert compose_config(["experiment=restr_cme_shared"]).model.fusion.weight_sharing is True


def test_model_config_sets_the_paper_run_length():
    cfg = compose_config(["experiment=restr_cme"])
    assert (cfg.trainer.max_steps, cfg.trainer.max_epochs) == (400000, -1)


def test_table1_rows_train_one_model_per_dataset():
    datasets = {}
    for job in sweep_jobs("ablation/restr_table1"):
        cfg = paper_job("ablation/restr_table1", job)
        datasets[cfg.data.dataset] = (cfg.data.train_split, cfg.data.val_split)
    assert datasets == {"refclef": ("trainval", None), "refcoco": ("train", "val"), "refcoco+": ("train", "val"),
                        "refcocog": ("train", "val")}


def test_table2_rows_carry_each_datasets_length_buckets():
    cfg_by_row = {job[0].split("=")[1]: paper_job("ablation/restr_table2", job + [
        f"table1_checkpoints.{name}=/ckpt/{name}.ckpt" for name in ("referit", "refcoco", "refcoco_plus", "refcocog_google")])
        for job in sweep_jobs("ablation/restr_table2")}
    for row, spec in PAPER["table2"]["datasets"].items():
        cfg = cfg_by_row[row]
        assert cfg.mode == "eval" and cfg.ckpt_path == f"/ckpt/{row}.ckpt"
        assert OmegaConf.to_object(cfg.eval.length_buckets) == spec["buckets"]


@pytest.mark.parametrize("table, keys", [
    ("table3b", ("model.fusion.type", "model.fusion.weight_sharing", "model.decoder.enabled")),
    ("table4", ("model.fusion.num_layers", "model.fusion.weight_sharing", "model.decoder.enabled")),
])
def test_row_files_set_the_papers_knobs(table, keys):
    rows = {job[0].split("=")[1]: paper_job(f"ablation/restr_{table}", job) for job in sweep_jobs(f"ablation/restr_{table}")}
    assert list(rows) == [row["row"] for row in PAPER[table]["rows"]]
    for paper_row in PAPER[table]["rows"]:
        cfg = rows[paper_row["row"]]
        got = tuple(OmegaConf.select(cfg, key) for key in keys)
        if table == "table3b":
            expected = (paper_row["row"].split("_")[0], paper_row["row"].endswith("shared"), False)
        else:
            expected = (paper_row["layers"], paper_row["share"], paper_row["decoder"])
        assert got == expected, paper_row["row"]
        assert cfg.tags[-1] == paper_row["row"]


def test_table5_profiles_both_models_at_320():
    for job in sweep_jobs("ablation/restr_table5"):
        cfg = paper_job("ablation/restr_table5", job)
        assert cfg.mode == "profile" and cfg.data.img_size == 320 and cfg.model.img_size == 320


def test_table3a_analyses_a_vme_model_on_train():
    cfg = compose_config(["experiment=ablation/restr_table3a"])
    assert cfg.mode == "analyze" and cfg.analysis.split == "train" and cfg.model.fusion.type == "vme"
    assert cfg.analysis._target_ == "risbench.models.restr.seed_attention_analysis"


# ------------------------------------------------------------------------------- end to end (slow)

def cli(root: Path, data_dir: Path, *args: str):
    result = run_cli([f"paths.data_dir={data_dir}", *SMALL_DATA, *args], cwd=root)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def sweep_results(root: Path, name: str) -> list[dict]:
    (sweep,) = (root / "multirun" / name).iterdir()
    jobs = sorted((path for path in sweep.iterdir() if path.name.isdigit()), key=lambda path: int(path.name))
    return [json.loads((job / "results.json").read_text()) for job in jobs]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, data_dir) -> Path:
    """A checkpoint of the tiny ReSTR after two steps (stands in for the Table 1 models)."""
    root = tmp_path_factory.mktemp("restr_ckpt")
    cli(root, data_dir, "model=restr", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1")
    (run,) = (root / "outputs" / "default").iterdir()
    return run / "checkpoints" / "last.ckpt"


@pytest.mark.slow
@pytest.mark.parametrize("table, rows", [("table1", 4), ("table3b", 4), ("table4", 7)])
def test_training_sweep_runs_end_to_end(tmp_path, data_dir, table, rows):
    cli(tmp_path, data_dir, "-m", f"experiment=ablation/restr_{table}", *TINY)
    results = sweep_results(tmp_path, f"restr_{table}")
    assert len(results) == rows
    for result in results:
        assert result["mode"] == "train" and result["metrics"]
        assert all(0.0 <= split["oIoU"] <= 1.0 for split in result["metrics"].values())


@pytest.mark.slow
def test_table2_sweep_evaluates_by_length(tmp_path, data_dir, tiny_checkpoint):
    checkpoints = [f"table1_checkpoints.{name}={tiny_checkpoint}"
                   for name in ("referit", "refcoco", "refcoco_plus", "refcocog_google")]
    cli(tmp_path, data_dir, "-m", "experiment=ablation/restr_table2", *TINY, *checkpoints)
    results = sweep_results(tmp_path, "restr_table2")
    assert len(results) == 4
    gref = results[0]["metrics"]
    assert {"len1-5/oIoU", "len11+/oIoU"} <= set(next(iter(gref.values())))


@pytest.mark.slow
def test_table5_sweep_profiles(tmp_path, data_dir):
    cli(tmp_path, data_dir, "-m", "experiment=ablation/restr_table5", *TINY)
    cme, shared = (result["profile"] for result in sweep_results(tmp_path, "restr_table5"))
    assert cme["macs"] == shared["macs"] and cme["params"]["total"] > shared["params"]["total"]


@pytest.mark.slow
def test_table3a_seed_attention_runs(tmp_path, data_dir):
    cli(tmp_path, data_dir, "-m", "experiment=ablation/restr_table3a", *TINY, "analysis.max_samples=8")
    (result,) = sweep_results(tmp_path, "restr_table3a")
    layers = result["analysis"]["layers"]
    assert [row["layer"] for row in layers] == ["f1", "f2", "f3", "f4"]
    assert all(abs(row["a_v"] + row["a_l"] + row["a_seed"] - 100) < 1e-3 for row in layers)
