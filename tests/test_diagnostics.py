"""The synthref error analysis traces each prediction to the object it covers most."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from risbench.data.tokenizers import build_tokenizer
from risbench.diagnostics import classify_prediction, synthref_error_analysis
from risbench.errors import RisbenchError
from risbench.models.base import RISModel
from risbench.tasks.common import tokenizer_kwargs
from tests.fixtures import make_refer
from tests.helpers import compose_config


def square(y0: int, x0: int, side: int = 4) -> np.ndarray:
    mask = np.zeros((16, 16), bool)
    mask[y0:y0 + side, x0:x0 + side] = True
    return mask


OBJECTS = {
    1: (square(0, 0), {"colour": "red", "shape": "circle", "size": "small"}),
    2: (square(8, 8), {"colour": "red", "shape": "star", "size": "small"}),
    3: (square(0, 8), {"colour": "blue", "shape": "star", "size": "large"}),
}


def test_classify_prediction_names_the_shared_attributes():
    assert classify_prediction(np.zeros((16, 16), bool), OBJECTS, 1) == "empty"
    assert classify_prediction(square(1, 1), OBJECTS, 1) == "target"  # partial cover still picks the target
    assert classify_prediction(square(8, 8), OBJECTS, 1) == "distractor:colour+size"  # a shape confusion
    assert classify_prediction(square(0, 8), OBJECTS, 1) == "distractor:none"
    # the most-covered object wins: 16 pixels on object 3 beat 4 on object 1
    assert classify_prediction(square(0, 0, side=2) | square(0, 8), OBJECTS, 3) == "target"
    assert classify_prediction(square(1, 1) | square(0, 8), OBJECTS, 2) == "distractor:shape"


class Oracle(RISModel):
    """Predicts the ground-truth mask at the input resolution (``empty``: predicts nothing)."""

    def __init__(self, empty: bool = False):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.empty = empty

    def forward(self, batch: dict) -> dict:
        mask = torch.zeros_like(batch["mask"]) if self.empty else batch["mask"]
        return {"logits": (mask * 2 - 1) * 10 + self.anchor}

    def loss(self, outputs: dict, batch: dict) -> dict:
        return {"loss": outputs["logits"].mean()}

    def mask_logits(self, outputs: dict) -> torch.Tensor:
        return outputs["logits"]


def loader(data_dir, split: str):
    cfg = compose_config(["model=restr", "scale=tiny", "data=synthref", f"paths.data_dir={data_dir.parent}",
                          "data.synthref=null", "data.num_workers=0", "data.batch_size=4"])
    datamodule = instantiate(cfg.data, _recursive_=False)
    datamodule.prepare_data()
    datamodule.set_tokenizer(build_tokenizer(**tokenizer_kwargs(cfg)))
    return datamodule.split_dataloader(split)


@pytest.mark.parametrize("split", ["val", "testA"])
def test_an_oracle_always_picks_the_target(tiny_synthref_dir, split):
    batches = loader(tiny_synthref_dir, split)
    result = synthref_error_analysis(Oracle(), batches, tiny_synthref_dir)
    assert result["outcomes"] == {"target": 100.0}
    assert result["mIoU"] > 95 and result["target_mIoU"] > 95
    assert sum(k["n"] for k in result["by_kind"].values()) == result["num_samples"] == len(batches.dataset)
    if split == "testA":  # relation expressions only
        assert "attribute" not in result["by_kind"]


def test_empty_predictions_are_counted_as_such(tiny_synthref_dir):
    result = synthref_error_analysis(Oracle(empty=True), loader(tiny_synthref_dir, "val"), tiny_synthref_dir)
    assert result["outcomes"] == {"empty": 100.0}
    assert result["mIoU"] == 0.0 and result["target_mIoU"] == 0.0


def test_real_datasets_are_refused(tmp_path):
    ann_dir = make_refer(tmp_path)
    with pytest.raises(RisbenchError, match="needs synthref"):
        synthref_error_analysis(Oracle(), [], ann_dir)
