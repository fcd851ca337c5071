"""Every experiment and every ablation-sweep job composes, and builds its model at tiny scale."""

from __future__ import annotations

import re

import pytest
from hydra.errors import ConfigCompositionException

from risbench.config import CONF_DIR, check_config_types, check_scale, check_value_types
from risbench.errors import RisbenchError
from risbench.tasks.common import build_net
from tests.helpers import compose_config, run_cli, sweep_jobs

EXPERIMENTS = sorted(str(path.relative_to(CONF_DIR / "experiment").with_suffix(""))
                     for path in (CONF_DIR / "experiment").rglob("*.yaml"))
TINY = ["scale=tiny", "data=synthref"]


def test_there_are_experiments():
    assert "restr_cme" in EXPERIMENTS and any(name.startswith("ablation/") for name in EXPERIMENTS)


MODELS = sorted(path.stem for path in (CONF_DIR / "model").glob("*.yaml"))


# CPU-size by design (the suite's own benchmark), so paper size has to be asked for
CPU_SIZE_EXPERIMENTS = {"synthref_leaderboard"}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_at_paper_and_tiny_scale(experiment):
    at_paper = ["scale=paper"] if experiment in CPU_SIZE_EXPERIMENTS else []
    paper = compose_config([f"experiment={experiment}", *at_paper], with_hydra=True)
    assert paper.scale_name == "paper" and paper.name
    choice = paper.hydra.runtime.choices["model_scale"]  # optional: no such file at paper size
    assert choice.endswith("_paper") and not (CONF_DIR / "model_scale" / f"{choice}.yaml").exists()
    tiny = compose_config([f"experiment={experiment}", *TINY], with_hydra=True)
    for cfg in (paper, tiny):  # every value fits its target's type hints: the start-up check refuses nothing
        check_config_types(cfg)
    model = tiny.hydra.runtime.choices["model"]
    assert tiny.scale_name == "tiny" and tiny.data.dataset == "synthref"
    assert tiny.hydra.runtime.choices["model_scale"] == f"{model}_tiny"


@pytest.mark.parametrize("model", MODELS)
def test_every_model_has_a_cpu_size_file(model):
    check_scale(model, "tiny")


def test_a_model_without_a_tiny_file_fails_at_start_up(tmp_path):
    with pytest.raises(RisbenchError, match="conf/model_scale/restr_tiny.yaml"):
        check_scale("restr", "tiny", conf_dir=tmp_path)
    check_scale("restr", "paper", conf_dir=tmp_path)  # paper size needs no such file
    (tmp_path / "model").mkdir()  # a new paper's config, without its CPU-size file
    (tmp_path / "model" / "untiny.yaml").write_text((CONF_DIR / "model" / "lavt.yaml").read_text())
    result = run_cli([f"hydra.searchpath=[file://{tmp_path}]", "model=untiny", "trainer.fast_dev_run=true",
                      f"paths.data_dir={tmp_path / 'data'}"], cwd=tmp_path)
    assert result.returncode == 2 and "conf/model_scale/untiny_tiny.yaml" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "data").exists()


SWEEPS = [name for name in EXPERIMENTS if name.startswith("ablation/") and sweep_jobs(name) != [[]]]


def test_every_ablation_table_but_the_analysis_is_a_sweep():
    assert {name for name in EXPERIMENTS if name.startswith("ablation/")} - set(SWEEPS) == {"ablation/restr_table3a"}


@pytest.mark.parametrize("experiment", SWEEPS)
def test_every_sweep_job_builds_its_model_at_tiny_scale(experiment):
    jobs = sweep_jobs(experiment)
    assert len(jobs) > 1, f"{experiment} sweeps {jobs}"
    for job in jobs:
        cfg = compose_config([f"experiment={experiment}", *TINY, *job])
        check_config_types(cfg)
        # a data sweep is overridden by data=synthref on the command line; every other knob must survive
        for override in job:
            key, value = override.lstrip("+").split("=", 1)
            if key != "data" and "/" not in key:
                assert str(cfg_select(cfg, key)) == value, (experiment, override)
        net = build_net(cfg, 64)
        assert sum(p.numel() for p in net.parameters()) < 20_000_000, "tiny scale should be CPU-sized"


def cfg_select(cfg, key):
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key)


def test_misspelled_key_fails_at_start_up_naming_it():
    with pytest.raises(ConfigCompositionException, match="fusoin"):
        compose_config(["model.fusoin.type=vme"])


def test_unknown_choice_fails_naming_the_group():
    with pytest.raises(Exception, match="model"):
        compose_config(["model=not_a_model"])


def test_default_is_tiny_sadlr_on_synthref_for_a_fixed_number_of_steps():
    cfg = compose_config([])
    assert (cfg.mode, cfg.scale_name, cfg.data.dataset) == ("train", "tiny", "synthref")
    assert cfg.model._target_.endswith("SADLR") and cfg.model.base._target_.endswith("LAVT")
    assert (cfg.trainer.max_epochs, cfg.trainer.max_steps) == (-1, 1116)


@pytest.mark.parametrize("override, message", [
    ("trainer.max_epochs=abc", "trainer.max_epochs='abc' is not a valid value: Input should be a valid integer"),
    ("trainer.precision=bf17", "trainer.precision='bf17' is not a valid value: Input should be 64, 32 or 16"),
    ("trainer.max_epochs=1.5", "got a number with a fractional part"),
    ("model.head.iterations=abc", "model.head.iterations='abc' is not a valid value"),
    ("data.batch_size=[4,8]", "data.batch_size=[4, 8] is not a valid value"),
    ("tokenizer.max_length=abc", "tokenizer.max_length='abc' is not a valid value"),  # built by code, no _target_
])
def test_a_value_of_the_wrong_type_is_refused_naming_its_key(override, message):
    with pytest.raises(RisbenchError, match=re.escape(message)):
        check_config_types(compose_config([override]))


@pytest.mark.parametrize("override", ["trainer.precision=bf16-mixed", "trainer.devices=auto", "trainer.max_epochs=2",
                                      "trainer.limit_train_batches=0.25", "trainer.max_time=00:00:05:00",
                                      "logger.csv.name=7"])
def test_values_the_targets_accept_pass(override):
    check_config_types(compose_config([override]))


def test_keys_given_by_code_are_not_checked():
    node = compose_config(["trainer.max_epochs=abc"]).trainer
    check_value_types(node, "trainer", given={"max_epochs"})
