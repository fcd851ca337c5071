"""Resize policies, normalisation, colour modes and the way back to the original resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from risbench.data.transforms import (InputTransform, UnreadableImageError, content_geometry, load_rgb, to_rgb,
                                      unmap_to_original)
from risbench.errors import RisbenchError


def _blob(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return ((yy - 0.4 * height) / (0.3 * height)) ** 2 + ((xx - 0.55 * width) / (0.25 * width)) ** 2 < 1


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


@pytest.mark.parametrize("resize", ["letterbox", "stretch"])
@pytest.mark.parametrize("height,width,size", [(375, 500, 480), (500, 333, 480), (300, 300, 64), (90, 160, 64)])
def test_mask_round_trip_keeps_iou(resize, height, width, size):
    mask = _blob(height, width)
    image = Image.fromarray(np.zeros((height, width, 3), np.uint8))
    _, target, box = InputTransform(size, resize)(image, mask)
    logits = target * 2 - 1  # a perfect prediction at input resolution
    back = unmap_to_original(logits, box, (height, width))
    assert back.shape == (1, height, width)
    # the bar at paper size; a 64 px input loses more of a small image's boundary
    assert _iou(back[0].numpy() > 0, mask) >= (0.99 if size >= 100 else 0.95)


def test_unmap_from_lower_resolution_and_batch():
    mask = _blob(120, 200)
    _, target, box = InputTransform(96, "letterbox")(Image.new("RGB", (200, 120)), mask)
    low = torch.nn.functional.interpolate(target[None] * 2 - 1, size=(24, 24), mode="bilinear")
    outs = unmap_to_original(low, box[None], torch.tensor([[120, 200]]))
    assert isinstance(outs, list) and outs[0].shape == (1, 120, 200)
    assert _iou(outs[0][0].numpy() > 0, mask) > 0.9


def test_letterbox_geometry_and_padding():
    assert content_geometry(375, 500, 480, "letterbox") == (360, 480, 60, 0)
    assert content_geometry(500, 250, 480, "letterbox") == (480, 240, 0, 120)
    assert content_geometry(375, 500, 480, "stretch") == (480, 480, 0, 0)
    image = Image.new("RGB", (500, 375), (124, 116, 104))  # ImageNet mean colour
    x, _, box = InputTransform(480, "letterbox", "imagenet")(image)
    assert box.tolist() == [60, 0, 420, 480]
    assert x.shape == (3, 480, 480) and x.abs().max() < 0.02  # content ~ mean, padding exactly 0
    assert torch.count_nonzero(x[:, :60]) == 0


def test_half_normalisation_range():
    x, _, _ = InputTransform(8, "stretch", "half")(Image.new("RGB", (8, 8), (255, 0, 255)))
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, -1.0, 1.0]))


def test_bad_policy_names():
    with pytest.raises(RisbenchError, match="data.resize"):
        InputTransform(8, "crop")
    with pytest.raises(RisbenchError, match="data.normalize"):
        InputTransform(8, "stretch", "clip")


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "LA", "I;16", "1"])
def test_every_mode_becomes_rgb(mode):
    image = Image.new("RGB", (6, 4), (200, 100, 50)).convert(mode)
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (6, 4)


def test_sixteen_bit_grayscale_is_scaled():
    image = Image.fromarray(np.full((4, 4), 40000, np.uint16))
    assert np.asarray(to_rgb(image))[0, 0].tolist() == [156, 156, 156]


def test_rgba_keeps_colour_channels(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGBA", (4, 4), (10, 20, 30, 0)).save(path)
    assert np.asarray(load_rgb(path))[0, 0].tolist() == [10, 20, 30]


def test_unreadable_images_name_the_file(tmp_path):
    with pytest.raises(UnreadableImageError, match="missing.jpg"):
        load_rgb(tmp_path / "missing.jpg")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(UnreadableImageError, match="broken.jpg"):
        load_rgb(broken)
