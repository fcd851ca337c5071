"""Where a model goes wrong on synthref: the object each prediction picks, and the expression kinds.

synthref records every object's colour, shape and size and every expression's kind, so a prediction can
be traced to the object it covers most: the target, or a distractor that shares some attributes with it
(a distractor of the same colour and size is a shape confusion). ``mode=analyze analysis=synthref_errors``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import torch

from risbench.data.refer import ReferAnnotations, combine_parts, load_refs, refs_path, segmentation_parts
from risbench.errors import RisbenchError
from risbench.evaluation import masks_at_original_size, threshold_logit
from risbench.models.base import RISModel

ATTRIBUTES = ("colour", "shape", "size")


def classify_prediction(pred: np.ndarray, objects: Mapping[int, tuple[np.ndarray, dict]], target_id: int) -> str:
    """``empty``, ``target``, or ``distractor:<shared attributes>`` for the object ``pred`` covers most.

    ``objects``: annotation id -> (visible mask, attributes) of every object in the image.
    """
    if not pred.any():
        return "empty"
    picked = max(objects, key=lambda ann_id: np.logical_and(pred, objects[ann_id][0]).sum())
    if picked == target_id:
        return "target"
    target, other = objects[target_id][1], objects[picked][1]
    shared = [name for name in ATTRIBUTES if target.get(name) == other.get(name)]
    return "distractor:" + ("+".join(shared) or "none")


class _SceneObjects:
    """Visible masks and attributes of every object of a synthref image, decoded once per image."""

    def __init__(self, annotations: ReferAnnotations):
        self.annotations = annotations
        self._cache: dict[int, dict[int, tuple[np.ndarray, dict]]] = {}

    def __call__(self, image_id: int) -> dict[int, tuple[np.ndarray, dict]]:
        if image_id not in self._cache:
            info = self.annotations.image(image_id)
            h, w = int(info["height"]), int(info["width"])
            self._cache[image_id] = {
                ann["id"]: (mask_utils.decode(combine_parts(segmentation_parts(ann["segmentation"], h, w), h, w))
                            .astype(bool), ann["attributes"])
                for ann in self.annotations.coco.imgToAnns[image_id]}
        return self._cache[image_id]


@torch.no_grad()
def synthref_error_analysis(model: RISModel, dataloader: Iterable, data_dir: str | Path, split_by: str = "unc",
                            threshold: float = 0.5) -> dict:
    """Outcome shares (%) and mIoU per expression kind of ``model``'s predictions over one synthref split."""
    annotations = ReferAnnotations(data_dir, split_by)
    if not all("attributes" in ann for ann in annotations.coco.anns.values()):
        raise RisbenchError(f"analysis=synthref_errors needs synthref annotations (object attributes); "
                            f"{Path(data_dir) / 'instances.json'} has none: use data=synthref")
    kinds = {(ref["ref_id"], sent["sent_id"]): sent.get("kind", "unknown")
             for ref in load_refs(refs_path(data_dir, split_by)) for sent in ref["sentences"]}
    target_of = {ref.ref_id: ref.ann_id for ref in annotations.referents}
    objects_of = _SceneObjects(annotations)
    logit_threshold = threshold_logit(threshold)
    device = next(model.parameters()).device
    outcomes, ious, kind_ious, kind_hits = Counter(), [], defaultdict(list), defaultdict(list)
    target_ious = []
    for batch in dataloader:
        if batch is None or "image" not in batch:  # every sample of it dropped (data.skip_corrupt=true)
            continue
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        logits = model.mask_logits(model(batch)).float()
        preds = masks_at_original_size(logits, batch, logit_threshold)
        for pred, truth, ref_id, sent_id, image_id in zip(preds, batch["orig_masks"], batch["ref_id"],
                                                         batch["sent_id"], batch["image_id"]):
            pred, truth = pred.cpu().numpy(), truth.cpu().numpy().astype(bool)
            union = np.logical_or(pred, truth).sum()
            iou = float(np.logical_and(pred, truth).sum() / union) if union else 0.0
            outcome = classify_prediction(pred, objects_of(image_id), target_of[ref_id])
            kind = kinds[(ref_id, sent_id)]
            outcomes[outcome] += 1
            ious.append(iou)
            kind_ious[kind].append(iou)
            kind_hits[kind].append(outcome == "target")
            if outcome == "target":
                target_ious.append(iou)
    if not ious:
        raise RisbenchError("analysis=synthref_errors got no samples")
    n = len(ious)
    return {
        "analysis": "synthref_errors", "num_samples": n, "mIoU": 100 * float(np.mean(ious)),
        # share of predictions whose most-covered object is the target / a distractor / nothing (%)
        "outcomes": {name: 100 * count / n for name, count in outcomes.most_common()},
        # mask quality where the right object was picked
        "target_mIoU": 100 * float(np.mean(target_ious)) if target_ious else 0.0,
        "by_kind": {kind: {"n": len(values), "mIoU": 100 * float(np.mean(values)),
                           "target": 100 * float(np.mean(kind_hits[kind]))}
                    for kind, values in sorted(kind_ious.items())},
    }
