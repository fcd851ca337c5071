"""Both evaluation protocols in one pass: each equals a direct computation, and they differ where
resolution matters."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from risbench.errors import RisbenchError
from risbench.evaluation import Protocol
from risbench.lit import RISLitModule
from risbench.models.base import RISModel

S = 8           # network input side
H, W = 12, 20   # original image (stretched to S x S)


class FixedLogits(RISModel):
    """Returns the batch's own ``logits`` as the model's prediction."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Linear(1, 1)  # an optimiser needs a parameter

    def forward(self, batch):
        return {"logits": batch["logits"]}

    def loss(self, outputs, batch):
        return {"loss": outputs["logits"].sum() * 0}

    def mask_logits(self, outputs):
        return outputs["logits"]


def hand_made_batch() -> dict:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, S, S, generator=g) * 3
    orig = (torch.rand(2, H, W, generator=g) > 0.5)
    mask = F.interpolate(orig[:, None].float(), size=(S, S), mode="nearest")  # what the loader makes
    return {"image": torch.zeros(2, 3, S, S), "logits": logits, "mask": mask,
            "valid_box": torch.tensor([[0, 0, S, S]] * 2), "orig_size": torch.tensor([[H, W]] * 2),
            "orig_masks": list(orig), "num_words": torch.tensor([3, 4])}


def direct(preds: list[np.ndarray], truths: list[np.ndarray]) -> tuple[float, float]:
    inter = [np.logical_and(p, t).sum() for p, t in zip(preds, truths)]
    union = [np.logical_or(p, t).sum() for p, t in zip(preds, truths)]
    return sum(inter) / sum(union), float(np.mean([i / u for i, u in zip(inter, union)]))


EVAL = {"prec_thresholds": [0.5], "length_buckets": None, "save_predictions": False,
        "common": {"name": "common", "threshold": 0.5, "resolution": "original", "prec_op": ">=",
                   "empty_union_iou": 0.0, "headline": "oIoU"},
        "paper": {"name": "lavt", "threshold": 0.35, "resolution": "input", "prec_op": ">=",
                  "empty_union_iou": 0.0, "headline": "oIoU"}}


def test_common_and_paper_protocols_each_equal_a_direct_computation(tmp_path):
    batch = hand_made_batch()
    lit = RISLitModule(FixedLogits(), optim={}, eval_cfg=EVAL, val_split=None, test_splits=["val"])
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.test(lit, dataloaders=torch.utils.data.DataLoader([batch], batch_size=None), verbose=False)
    got = lit.results["val"]

    # common: logits bilinearly resized to the original size, sigmoid >= 0.5, against the original masks
    original = F.interpolate(batch["logits"], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
    common = direct([p.numpy() for p in original >= 0], [t.numpy() for t in batch["orig_masks"]])
    # paper: at the input size, sigmoid >= 0.35, against the nearest-resized mask
    paper = direct([p.numpy() for p in batch["logits"][:, 0] >= np.log(0.35 / 0.65)],
                   [t.numpy() > 0.5 for t in batch["mask"][:, 0]])
    assert (got["oIoU"], got["mIoU"]) == pytest.approx(common, abs=1e-12)
    assert (got["paper/oIoU"], got["paper/mIoU"]) == pytest.approx(paper, abs=1e-12)
    assert abs(got["oIoU"] - got["paper/oIoU"]) > 0.01  # resolution and threshold matter here
    assert got["n"] == got["paper/n"] == 2


@pytest.mark.parametrize("change, key", [({"resolution": "native"}, "eval.paper.resolution"),
                                         ({"threshold": 1.5}, "eval.paper.threshold"),
                                         ({"prec_op": "=>"}, "eval.paper.prec_op")])
def test_a_bad_protocol_is_one_message_naming_its_key(change, key):
    with pytest.raises(RisbenchError, match=key.replace(".", r"\.")):
        Protocol.from_config({**EVAL["paper"], **change}, "eval.paper")
