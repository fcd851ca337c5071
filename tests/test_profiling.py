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


class Sampler(nn.Module):
    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def forward(self, batch):
        return nn.functional.grid_sample(batch["x"], batch["grid"], mode=self.mode, align_corners=False)


def test_grid_sample_counts_its_interpolation_taps():
    batch = {"x": torch.randn(2, 3, 5, 7), "grid": torch.rand(2, 4, 6, 2) * 2 - 1}  # output (2, 3, 4, 6)
    assert count_macs(Sampler("bilinear"), batch)[0] == 4 * 2 * 3 * 4 * 6
    assert count_macs(Sampler("bicubic"), batch)[0] == 16 * 2 * 3 * 4 * 6
    assert count_macs(Sampler("nearest"), batch)[0] == 0
