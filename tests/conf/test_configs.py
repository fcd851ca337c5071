"""Every experiment and every ablation-sweep job composes, and builds its model at tiny scale."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from risbench.config import CONF_DIR
from tests.helpers import compose_config, sweep_jobs

EXPERIMENTS = sorted(str(path.relative_to(CONF_DIR / "experiment").with_suffix(""))
                     for path in (CONF_DIR / "experiment").rglob("*.yaml"))
TINY = ["scale=tiny", "data=synthref"]


def test_there_are_experiments():
    assert "restr_cme" in EXPERIMENTS and any(name.startswith("ablation/") for name in EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_at_paper_and_tiny_scale(experiment):
    paper = compose_config([f"experiment={experiment}"])
    assert paper.scale_name == "paper" and paper.name
    tiny = compose_config([f"experiment={experiment}", *TINY])
    assert tiny.scale_name == "tiny" and tiny.data.dataset == "synthref"
    assert tiny.data.img_size <= paper.data.img_size


SWEEPS = [name for name in EXPERIMENTS if name.startswith("ablation/") and sweep_jobs(name) != [[]]]


def test_every_ablation_table_but_the_analysis_is_a_sweep():
    assert {name for name in EXPERIMENTS if name.startswith("ablation/")} - set(SWEEPS) == {"ablation/restr_table3a"}


@pytest.mark.parametrize("experiment", SWEEPS)
def test_every_sweep_job_builds_its_model_at_tiny_scale(experiment):
    jobs = sweep_jobs(experiment)
    assert len(jobs) > 1, f"{experiment} sweeps {jobs}"
    for job in jobs:
        cfg = compose_config([f"experiment={experiment}", *TINY, *job])
        # a data sweep is overridden by data=synthref on the command line; every other knob must survive
        for override in job:
            key, value = override.lstrip("+").split("=", 1)
            if key != "data" and "/" not in key:
                assert str(cfg_select(cfg, key)) == value, (experiment, override)
        net = instantiate(cfg.model, vocab_size=64, _convert_="all")
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
