import torch
from torch import nn

from risbench.profiling import count_macs


class Base(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.body = nn.Linear(16, 16)

    def encode(self, x):  # called directly, so Base.__call__ never runs
        return self.body(self.stem(x))


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.base = Base()
        self.head = nn.Linear(16, 4)
        self.mix = nn.Parameter(torch.randn(16, 16))

    def forward(self, batch):
        x = self.base.encode(batch["x"])
        return self.head(x @ self.mix)  # the matmul runs outside every child


def test_macs_per_child_include_children_whose_forward_is_bypassed():
    total, per_module = count_macs(Toy(), {"x": torch.randn(3, 8)})
    assert per_module["base"] == 3 * (8 * 16 + 16 * 16)
    assert per_module["head"] == 3 * 16 * 4
    assert per_module["(outside children)"] == 3 * 16 * 16
    assert sum(per_module.values()) == total
