"""Darknet-53 tower over timm: stage shapes, the timm checkpoint layout, clear errors for wrong files."""

from __future__ import annotations

import pytest
import timm
import torch

from risbench.errors import MissingFileError, RisbenchError
from risbench.models.common.vision.darknet import DarknetTower

SMALL = dict(stem_channels=4, widths=(8, 8, 16, 16, 32), depths=(1, 1, 1, 1, 1))


def test_darknet53_features_match_timms_features_only_model():
    with torch.device("meta"):
        tower = DarknetTower(pretrained=False)
    assert tower.dims == [256, 512, 1024] and tower.reductions == [8, 16, 32]
    assert sum(p.numel() for p in tower.parameters()) == 40_584_928  # spec §2: 40.58 M features-only


def test_stage_maps_equal_timm_on_the_same_weights():
    torch.manual_seed(0)
    tower = DarknetTower(pretrained=False, **SMALL).eval()
    image = torch.randn(2, 3, 64, 64)
    outs = tower(image)
    assert [tuple(o.shape) for o in outs] == [(2, 16, 8, 8), (2, 16, 4, 4), (2, 32, 2, 2)]
    x = tower.net.stem(image)
    stages = []
    for stage in tower.net.stages:
        x = stage(x)
        stages.append(x)
    for out, ref in zip(outs, stages[2:]):
        assert torch.equal(out, ref)


def test_grad_checkpointing_changes_no_output_or_gradient():
    torch.manual_seed(0)
    tower = DarknetTower(pretrained=False, **SMALL).train()
    image = torch.randn(2, 3, 64, 64)
    grads = []
    for enabled in (False, True):
        tower.grad_checkpointing = enabled
        torch.manual_seed(1)
        outs = tower(image)
        sum(o.square().sum() for o in outs).backward()
        grads.append({n: p.grad.clone() for n, p in tower.named_parameters()})
        tower.zero_grad()
        if not enabled:
            reference = [o.detach() for o in outs]
    for out, ref in zip(outs, reference):
        assert torch.allclose(out, ref, atol=1e-6)
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-5), name


def test_loads_a_timm_checkpoint_with_its_classifier(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("darknet17", pretrained=False, num_classes=10)  # a full timm model, head included
    path = tmp_path / "darknet17.pth"
    torch.save(source.state_dict(), path)
    tower = DarknetTower("darknet17", pretrained=True, checkpoint=str(path)).eval()
    assert not torch.equal(tower.net.stem.conv1.conv.weight, source.stem.conv1.conv.weight)
    tower.load_pretrained()
    source.eval()
    image = torch.randn(1, 3, 64, 64)
    expected = source.forward_intermediates(image, indices=[3, 4, 5], intermediates_only=True)
    for out, ref in zip(tower(image), expected):
        assert torch.equal(out, ref)


def test_missing_weights_name_the_file_and_the_public_substitute(tmp_path):
    tower = DarknetTower(pretrained=True, checkpoint=str(tmp_path / "darknet53.c2ns_in1k.safetensors"), **SMALL)
    with pytest.raises(MissingFileError, match="timm/darknet53.c2ns_in1k"):
        tower.load_pretrained()
    with pytest.raises(RisbenchError, match="checkpoint is not set"):
        DarknetTower(pretrained=True, checkpoint=None, **SMALL).load_pretrained()


def test_weights_of_another_width_are_explained(tmp_path):
    path = tmp_path / "darknet17.pth"
    torch.save(timm.create_model("darknet17", pretrained=False).state_dict(), path)
    tower = DarknetTower("darknet17", pretrained=True, checkpoint=str(path), **SMALL)
    with pytest.raises(RisbenchError, match="do not fit model.vision"):
        tower.load_pretrained()


def test_unknown_variant_is_refused():
    with pytest.raises(RisbenchError, match="timm_name"):
        DarknetTower("resnet50", pretrained=False)
