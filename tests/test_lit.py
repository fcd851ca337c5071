"""Every model trains, validates and tests one batch at tiny scale through the one LightningModule."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from risbench.data.tokenizers import build_tokenizer
from risbench.lit import RISLitModule
from risbench.tasks.common import build_net, tokenizer_kwargs
from tests.helpers import compose_config, ground_truth_masks, independent_metrics

MODELS = [
    ["model=restr"],
    ["model=restr", "model.fusion.type=vme", "model.decoder.enabled=false"],
    ["model=lavt"],
    ["model=sadlr"],
    ["model=sadlr", "model/base=lts", "model/head=cgan"],
    ["model=sadlr", "model/base=vlt", "model/head=sadlr"],
]


def build(overrides: list[str], data_dir, root) -> tuple:
    """DataModule, net and RISLitModule at tiny scale on the tiny synthref fixture."""
    cfg = compose_config([*overrides, "scale=tiny", "data=synthref", f"paths.data_dir={data_dir.parent}",
                          "data.synthref=null", "data.num_workers=0", "data.batch_size=4",
                          "eval.save_predictions=true",
                          "optim.scheduler=null"])  # warm-up starts at lr 0: one step would not move
    datamodule = instantiate(cfg.data, _recursive_=False)
    datamodule.prepare_data()
    tokenizer = build_tokenizer(**tokenizer_kwargs(cfg))
    datamodule.set_tokenizer(tokenizer)
    net = build_net(cfg, tokenizer.vocab_size)
    lit = RISLitModule(net, cfg.optim, cfg.eval, datamodule.val_split, datamodule.test_split_names)
    trainer = L.Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False, default_root_dir=root)
    return datamodule, net, lit, trainer


@pytest.mark.parametrize("overrides", MODELS, ids=lambda o: " ".join(o))
def test_fast_dev_run_at_tiny_scale(overrides, tiny_synthref_dir, tmp_path):
    datamodule, net, lit, trainer = build(overrides, tiny_synthref_dir, tmp_path)
    before = {name: p.detach().clone() for name, p in net.named_parameters() if p.requires_grad}
    trainer.fit(lit, datamodule=datamodule)
    changed = [name for name, p in net.named_parameters() if p.requires_grad and not torch.equal(p, before[name])]
    assert changed, "one optimisation step changed no parameter"
    trainer.test(lit, datamodule=datamodule, verbose=False)
    truths = ground_truth_masks(tiny_synthref_dir)
    for split in datamodule.test_split_names:  # fast_dev_run: one batch of 4 per split, both protocols
        expected = independent_metrics(lit.predictions[split], truths)
        assert expected["n"] == lit.results[split]["n"] == lit.results[split]["paper/n"] == 4
        assert (lit.results[split]["oIoU"], lit.results[split]["mIoU"]) == (expected["oIoU"], expected["mIoU"])


def test_the_train_split_can_be_tested(tiny_synthref_dir, tmp_path):
    # a fit check on the training split: its name must not clash with nn.Module.train
    datamodule, _, lit, trainer = build(["model=lavt", "data.test_splits=[train]"], tiny_synthref_dir, tmp_path)
    trainer.test(lit, datamodule=datamodule, verbose=False)
    assert datamodule.test_split_names == ["train"] and list(lit.results) == ["train"]
    expected = independent_metrics(lit.predictions["train"], ground_truth_masks(tiny_synthref_dir))
    assert lit.results["train"]["mIoU"] == expected["mIoU"]
