import pytest
import torch

from risbench.metrics import ReferringSegmentationMetrics


def box_mask(h, w, y0, x0, y1, x1):
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_oiou_differs_from_miou():
    # sample 1: big object, IoU 1.0 (100 px); sample 2: small object, IoU 0 (4 px vs 4 px disjoint)
    metric = ReferringSegmentationMetrics()
    big = box_mask(20, 20, 0, 0, 10, 10)
    small_gt, small_pred = box_mask(20, 20, 15, 15, 17, 17), box_mask(20, 20, 0, 15, 2, 17)
    metric.update([big, small_pred], [big, small_gt])
    out = metric.compute()
    assert out["oIoU"].item() == pytest.approx(100 / 108)
    assert out["mIoU"].item() == pytest.approx(0.5)
    assert out["n"].item() == 2


def test_iou_exactly_half_counts_for_prec50_with_ge_only():
    gt = box_mask(4, 4, 0, 0, 4, 2)      # 8 px
    pred = box_mask(4, 4, 0, 0, 4, 1)    # 4 px inside: IoU = 4 / 8 = 0.5
    ge = ReferringSegmentationMetrics(prec_op=">=")
    gt_strict = ReferringSegmentationMetrics(prec_op=">")
    ge.update([pred], [gt])
    gt_strict.update([pred], [gt])
    assert ge.compute()["prec@0.5"].item() == 1.0
    assert gt_strict.compute()["prec@0.5"].item() == 0.0
    assert ge.compute()["prec@0.6"].item() == 0.0


def test_empty_union_is_configurable_and_adds_nothing_to_oiou():
    empty = torch.zeros(3, 3, dtype=torch.bool)
    full = torch.ones(3, 3, dtype=torch.bool)
    zero = ReferringSegmentationMetrics(empty_union_iou=0.0)
    one = ReferringSegmentationMetrics(empty_union_iou=1.0)
    for metric in (zero, one):
        metric.update([empty, full], [empty, full])
    assert zero.compute()["mIoU"].item() == pytest.approx(0.5)
    assert one.compute()["mIoU"].item() == pytest.approx(1.0)
    assert zero.compute()["oIoU"].item() == one.compute()["oIoU"].item() == 1.0


def test_length_buckets_split_samples_and_last_is_open_ended():
    metric = ReferringSegmentationMetrics(length_buckets=[[1, 2], [3, 3], [4, 5]])
    hit, miss = box_mask(4, 4, 0, 0, 2, 2), box_mask(4, 4, 2, 2, 4, 4)
    metric.update([hit, miss, hit], [hit, hit, hit], torch.tensor([1, 3, 9]))
    out = metric.compute()
    assert out["len1-2/mIoU"].item() == 1.0 and out["len1-2/n"].item() == 1
    assert out["len3-3/mIoU"].item() == 0.0
    assert out["len4+/n"].item() == 1  # 9 words falls in the open-ended last bucket
    assert out["n"].item() == 3


def test_samples_of_different_sizes_and_shape_mismatch_error():
    metric = ReferringSegmentationMetrics()
    metric.update([torch.ones(2, 3, dtype=torch.bool), torch.ones(5, 4, dtype=torch.bool)],
                  [torch.ones(2, 3, dtype=torch.bool), torch.zeros(5, 4, dtype=torch.bool)])
    assert metric.compute()["oIoU"].item() == pytest.approx(6 / 26)
    with pytest.raises(ValueError, match="differ"):
        metric.update([torch.ones(2, 2)], [torch.ones(3, 3)])


def test_states_merge_exactly_like_one_process():
    """Summing the states of two shards gives exactly the single-pass numbers (what DDP sync does)."""
    generator = torch.Generator().manual_seed(0)
    preds = [torch.rand(7, 9, generator=generator) > 0.5 for _ in range(11)]
    gts = [torch.rand(7, 9, generator=generator) > 0.4 for _ in range(11)]
    whole, first, second = (ReferringSegmentationMetrics() for _ in range(3))
    whole.update(preds, gts)
    first.update(preds[::2], gts[::2])
    second.update(preds[1::2], gts[1::2])
    first.merge_state(second)
    a, b = whole.compute(), first.compute()
    assert a["oIoU"].item() == b["oIoU"].item()
    assert a["prec@0.5"].item() == b["prec@0.5"].item()
    assert a["mIoU"].item() == pytest.approx(b["mIoU"].item(), abs=1e-15)
