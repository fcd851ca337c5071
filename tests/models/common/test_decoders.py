"""Shared decoder pieces: token grids to channels-last maps."""

from __future__ import annotations

import pytest
import torch

from risbench.models.common.decoders import tokens_to_map


@pytest.mark.parametrize("batch_size", [1, 3])
def test_tokens_to_map_is_a_channels_last_view_of_the_grid(batch_size):
    tokens = torch.randn(batch_size, 4 * 6, 8)
    grid = tokens_to_map(tokens, 4, 6)
    assert torch.equal(grid, tokens.transpose(1, 2).reshape(batch_size, 8, 4, 6))
    assert grid.is_contiguous(memory_format=torch.channels_last)
    assert grid.data_ptr() == tokens.data_ptr()  # no copy
    # a convolution keeps the layout, so the decoder after it runs channels-last too
    assert torch.nn.Conv2d(8, 5, 1)(grid).is_contiguous(memory_format=torch.channels_last)
