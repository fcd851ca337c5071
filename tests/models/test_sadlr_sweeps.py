"""Every SADLR ablation sweep runs end to end at CPU size (one batch per job) through the CLI."""

from __future__ import annotations

import json

import pytest

from risbench.data.synthref import ensure_synthref, synthref_dir
from tests.fixtures import TINY_SYNTHREF
from tests.helpers import compose_config, run_on_synthref, sweep_jobs, sweep_results

# sweep -> jobs at scale=tiny data=synthref (Table 1's dataset sweep collapses to synthref)
SWEEPS = {"sadlr_table1": 1, "sadlr_table3": 9, "sadlr_table3_profile": 9, "sadlr_table4a": 5,
          "sadlr_table4b": 6, "sadlr_table4c": 2}


def test_sweep_grids_are_the_papers_rows():
    jobs = {name: sweep_jobs(f"ablation/{name}") for name in SWEEPS}
    assert len(jobs["sadlr_table1"]) == 4 and len(jobs["sadlr_table3"]) == 9
    assert [job[0] for job in jobs["sadlr_table4a"]] == [f"model.head.iterations={n}" for n in range(5)]
    assert [job[0].split("=")[1] for job in jobs["sadlr_table4b"]] == \
        ["d128", "d256", "d64-256", "d512", "d128-512", "d128-512x2"]
    assert compose_config(["experiment=ablation/sadlr_table3_profile"]).mode == "profile"


# the tests' small synthref, at the 64 px of scale=tiny (Swin's 4th stage needs > 1 pixel)
SYNTHREF = {**TINY_SYNTHREF, "image_size": 64}


@pytest.fixture(scope="module")
def synthref_64(tmp_path_factory):
    return ensure_synthref(synthref_dir(tmp_path_factory.mktemp("sadlr_data"), SYNTHREF), SYNTHREF)


@pytest.mark.slow
@pytest.mark.parametrize("sweep", sorted(SWEEPS))
def test_sweep_runs_at_tiny_scale(sweep, synthref_64, tmp_path):
    run_on_synthref(["-m", f"experiment=ablation/{sweep}", "debug=fast"], synthref_64, SYNTHREF, tmp_path)
    results = sweep_results(tmp_path, sweep)
    assert len(results) == SWEEPS[sweep]
    for path in results:
        result = json.loads(path.read_text())
        assert result["experiment"] == sweep
        if sweep.endswith("_profile"):
            assert (path.parent / "profile.json").is_file()
        else:
            assert set(result["metrics"]) == {"val", "testA", "testB"}
