import pytest
import torch
from torch import nn

from risbench.errors import RisbenchError
from risbench.optim import build_param_groups, cosine_schedule, poly_schedule, step_schedule


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.vision = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.pos_embed = nn.Parameter(torch.zeros(1, 3, 4))
        self.head = nn.Linear(4, 1)

    def no_weight_decay(self):
        return {"head.weight"}


def group_of(groups, name):
    return next(g for g in groups if g["name"] == name)


def test_param_groups_lr_mult_and_no_decay():
    model = Toy()
    groups = build_param_groups(model, base_lr=1e-4, weight_decay=0.01,
                                param_groups=[{"name": "vision", "pattern": r"^vision\.", "lr_mult": 0.1}],
                                no_decay={"norms": True, "biases": True, "position": True})
    assert group_of(groups, "vision")["lr"] == pytest.approx(1e-5)
    assert group_of(groups, "vision")["params"] == [model.vision[0].weight]
    vision_nd = group_of(groups, "vision/no_decay")
    assert vision_nd["weight_decay"] == 0.0
    assert {id(p) for p in vision_nd["params"]} == {id(model.vision[0].bias), id(model.vision[1].weight),
                                                    id(model.vision[1].bias)}
    default_nd = group_of(groups, "default/no_decay")  # pos_embed, head.bias, head.weight (model exemption)
    assert len(default_nd["params"]) == 3 and default_nd["lr"] == 1e-4
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_decay_everything_when_no_exemptions():
    model = Toy()
    model.no_weight_decay = lambda: set()
    groups = build_param_groups(model, base_lr=1.0, weight_decay=0.5)
    assert [g["name"] for g in groups] == ["default"] and groups[0]["weight_decay"] == 0.5


def test_pattern_matching_nothing_is_an_error():
    with pytest.raises(RisbenchError, match="match no trainable parameter"):
        build_param_groups(Toy(), 1.0, 0.0, param_groups=[{"name": "bert", "pattern": "^text\\."}])


def lrs(factory, steps, **kwargs):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = factory(optimizer, total_steps=steps, **kwargs)
    values = []
    for _ in range(steps + 1):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_poly_with_warmup_matches_restr_recipe():
    # ReSTR: warm-up 40k then poly 0.9 to 400k; scaled down 1000x
    values = lrs(poly_schedule, 400, warmup_steps=40, power=0.9)
    assert values[0] == 0.0
    assert values[40] == pytest.approx(1.0)
    assert values[220] == pytest.approx(0.5 ** 0.9)
    assert values[400] == 0.0


def test_cosine_and_step():
    cos = lrs(cosine_schedule, 100, warmup_steps=10, min_lr_ratio=0.1)
    assert cos[5] == pytest.approx(0.5) and cos[10] == pytest.approx(1.0) and cos[100] == pytest.approx(0.1)
    step = lrs(step_schedule, 100, milestones=[0.5, 0.75], gamma=0.1)
    assert step[49] == 1.0 and step[50] == pytest.approx(0.1) and step[75] == pytest.approx(0.01)
