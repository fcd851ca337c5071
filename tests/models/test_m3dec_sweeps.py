"""Every M3Dec ablation sweep runs end to end at CPU size (one batch per job) through the CLI."""

from __future__ import annotations

import json

import pytest

from tests.fixtures import make_tiny_synthref
from tests.helpers import compose_config, run_on_synthref, sweep_jobs, sweep_results

# sweep -> jobs at scale=tiny data=synthref (Table IV's dataset sweep collapses to synthref: one per variant)
SWEEPS = {"m3dec_table1": 12, "m3dec_table2": 5, "m3dec_table3": 3, "m3dec_table4": 2}


def test_default_experiments_are_the_paper_recipe():
    cnn = compose_config(["experiment=m3dec_cnn"])
    assert cnn.model.vision.timm_name == "darknet53" and cnn.model.text.rnn_type == "gru"
    assert (cnn.data.img_size, cnn.data.resize, cnn.tokenizer.kind, cnn.tokenizer.max_length) == (416, "letterbox",
                                                                                                  "glove", 15)
    assert (cnn.model.decoder.num_layers, cnn.model.decoder.attention, cnn.model.encoder.num_layers) == (3, "shared", 2)
    assert cnn.model.imi.enabled and cnn.model.lfr.enabled and cnn.model.lfr.weight == 0.1
    assert (cnn.model.dim, cnn.model.num_heads, cnn.model.mask_decoder.channels) == (256, 8, 512)
    assert cnn.optim.optimizer._target_ == "torch.optim.Adam" and cnn.optim.optimizer.lr == 5e-3
    assert list(cnn.optim.scheduler.milestones) == [0.8, 0.9] and cnn.trainer.max_epochs == 50
    assert cnn.data.batch_size * cnn.trainer.accumulate_grad_batches == 48 and cnn.eval.ckpt_select == "last"
    assert cnn.optim.param_groups[0].lr_mult == 0.1
    paper = cnn.eval.paper
    assert (paper.name, paper.threshold, paper.resolution, paper.prec_op, paper.empty_union_iou, paper.headline) == \
        ("m3dec", 0.5, "original", ">", 1.0, "mIoU")
    swin = compose_config(["experiment=m3dec_swin"])
    assert (swin.data.img_size, swin.data.resize, swin.tokenizer.kind, swin.tokenizer.max_length) == (480, "stretch",
                                                                                                      "wordpiece", 20)
    assert swin.model.vision.embed_dim == 128 and swin.model.text.hidden_size == 768 and swin.model.text_proj
    assert [g.lr_mult for g in swin.optim.param_groups] == [0.01, 0.01]


def test_sweep_grids_are_the_papers_rows():
    jobs = {name: sweep_jobs(f"ablation/{name}") for name in SWEEPS}
    assert len(jobs["m3dec_table1"]) == 12 and len(jobs["m3dec_table4"]) == 10
    assert [job[0] for job in jobs["m3dec_table3"]] == \
        [f"model.mask_decoder.type={t}" for t in ("vlt", "concat", "dynamic_kernel")]
    rows = [compose_config(["experiment=ablation/m3dec_table2", *job]).model for job in jobs["m3dec_table2"]]
    assert [(m.decoder.attention, m.imi.enabled, m.imi.mode, m.lfr.enabled) for m in rows] == [
        ("generic", False, "dynamic", False), ("shared", False, "dynamic", False), ("shared", True, "dynamic", False),
        ("shared", True, "static", False), ("shared", True, "dynamic", True)]
    variants = {compose_config(["experiment=ablation/m3dec_table4", *job]).model.vision._target_.rsplit(".", 1)[1]
                for job in jobs["m3dec_table4"]}
    assert variants == {"DarknetTower", "SwinTower"}


def test_table4_pads_each_dataset_as_the_paper():
    lengths = {}
    for job in sweep_jobs("ablation/m3dec_table4"):
        cfg = compose_config(["experiment=ablation/m3dec_table4", *job])
        lengths[(job[0].split("=")[1], cfg.data.dataset)] = (cfg.tokenizer.max_length, cfg.data.img_size)
    assert lengths[("cnn", "refcoco")] == lengths[("cnn", "refcoco+")] == lengths[("cnn", "refclef")] == (15, 416)
    assert lengths[("cnn", "refcocog")] == (20, 416)
    assert {value for key, value in lengths.items() if key[0] == "swin"} == {(20, 480)}


@pytest.fixture(scope="module")
def synthref_dir(tmp_path_factory):
    return make_tiny_synthref(tmp_path_factory.mktemp("m3dec_data"))


@pytest.mark.slow
@pytest.mark.parametrize("sweep", sorted(SWEEPS))
def test_sweep_runs_at_tiny_scale(sweep, synthref_dir, tmp_path):
    from tests.fixtures import TINY_SYNTHREF

    run_on_synthref(["-m", f"experiment=ablation/{sweep}", "debug=fast"], synthref_dir, TINY_SYNTHREF, tmp_path)
    results = sweep_results(tmp_path, sweep)
    assert len(results) == SWEEPS[sweep]
    for path in results:
        result = json.loads(path.read_text())
        assert result["experiment"] == sweep
        assert set(result["metrics"]) == {"val", "testA", "testB"}
        assert {"mIoU", "paper/mIoU", "paper/prec@0.9"} <= set(result["metrics"]["val"])
