"""Pictures of predictions: the mask tinted on the image with the expression as a caption.

`overlay` is ``mode=predict``'s picture; `panel` puts image, ground truth and prediction side by side (the
training callback `risbench.callbacks.ValidationOverlays` and ``mode=eval eval.overlays=K``); `render_samples`
runs a model on chosen samples of a split and draws their panels.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from risbench.data.transforms import load_rgb

OVERLAY_COLOUR = np.array([255, 40, 40], np.float32)  # prediction: red
TRUTH_COLOUR = np.array([40, 200, 60], np.float32)  # ground truth: green
CAPTION_STRIP = 24  # pixels per caption line
CHAR_WIDTH = 6  # PIL's default bitmap font
PANEL_HEIGHT = (128, 320)  # panels are scaled into this range of heights


def tint(image: Image.Image, mask: np.ndarray, colour: np.ndarray = OVERLAY_COLOUR, alpha: float = 0.5) -> Image.Image:
    pixels = np.asarray(image, np.float32).copy()
    pixels[mask] = (1 - alpha) * pixels[mask] + alpha * colour
    return Image.fromarray(pixels.astype(np.uint8))


def _with_caption(picture: Image.Image, caption: str) -> Image.Image:
    lines = textwrap.wrap(caption, max(8, picture.width // CHAR_WIDTH - 1)) or [""]
    strip = CAPTION_STRIP + 12 * (len(lines) - 1)
    canvas = Image.new("RGB", (picture.width, picture.height + strip), "white")
    canvas.paste(picture, (0, 0))
    ImageDraw.Draw(canvas).multiline_text((4, picture.height + 6), "\n".join(lines), fill="black", spacing=2)
    return canvas


def overlay(image: Image.Image, mask: np.ndarray, caption: str, alpha: float = 0.5) -> Image.Image:
    """The mask tinted on the image, with the expression as a caption strip underneath."""
    tinted = tint(image, mask, OVERLAY_COLOUR, alpha)
    if tinted.width < 256:  # small images (synthref) upscaled so the caption fits
        factor = -(-256 // tinted.width)
        tinted = tinted.resize((tinted.width * factor, tinted.height * factor), Image.NEAREST)
    strip = 24
    canvas = Image.new("RGB", (tinted.width, tinted.height + strip), "white")
    canvas.paste(tinted, (0, 0))
    ImageDraw.Draw(canvas).text((4, tinted.height + 6), caption, fill="black")
    return canvas


def _scaled(picture: Image.Image) -> Image.Image:
    low, high = PANEL_HEIGHT
    if picture.height < low:  # small images (synthref): whole-pixel upscaling keeps the mask edges sharp
        factor = -(-low // picture.height)
        return picture.resize((picture.width * factor, picture.height * factor), Image.NEAREST)
    if picture.height > high:
        return picture.resize((round(picture.width * high / picture.height), high), Image.BILINEAR)
    return picture


def panel(image: Image.Image, truth: np.ndarray, prediction: np.ndarray, caption: str) -> Image.Image:
    """image | ground truth (green) | prediction (red), with the caption underneath."""
    parts = [_scaled(image), _scaled(tint(image, truth, TRUTH_COLOUR)), _scaled(tint(image, prediction))]
    gap = 4
    row = Image.new("RGB", (sum(p.width for p in parts) + gap * (len(parts) - 1), parts[0].height), "white")
    x = 0
    for part in parts:
        row.paste(part, (x, 0))
        x += part.width + gap
    return _with_caption(row, caption)


def mask_iou(prediction: np.ndarray, truth: np.ndarray, empty_union_iou: float = 0.0) -> float:
    union = np.logical_or(prediction, truth).sum()
    return float(np.logical_and(prediction, truth).sum() / union) if union else float(empty_union_iou)


@torch.no_grad()
def render_samples(net: torch.nn.Module, dataset, collate, indices: Sequence[int], protocol,
                   device: torch.device | str = "cpu", batch_size: int = 8) -> list[tuple[Image.Image, str, dict]]:
    """Panels of ``dataset[indices]`` under ``protocol`` (its threshold, at the original image size):
    (picture, caption, info) per sample; info holds the ids and the IoU."""
    was_training = net.training
    net.eval()
    out = []
    try:
        for start in range(0, len(indices), batch_size):
            chunk = list(indices[start:start + batch_size])
            samples = [(i, dataset[i]) for i in chunk]
            samples = [(i, s) for i, s in samples if s is not None]
            if not samples:
                continue
            batch = collate([s for _, s in samples])
            inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            logits = net.mask_logits(net(inputs)).float().cpu()
            predictions = protocol.original_masks(logits, batch)
            for (index, sample), prediction in zip(samples, predictions):
                record = dataset.samples[index]
                truth = sample["orig_mask"].numpy() if "orig_mask" in sample else np.zeros(prediction.shape, bool)
                prediction = prediction.numpy()
                iou = mask_iou(prediction, truth, protocol.empty_union_iou)
                caption = f'"{record.text}"  IoU {100 * iou:.1f}%  (image | ground truth | prediction)'
                info = {"ref_id": record.ref_id, "sent_id": record.sent_id, "image_id": record.image_id,
                        "iou": iou, "text": record.text}
                out.append((panel(load_rgb(record.path), truth, prediction, caption), caption, info))
    finally:
        net.train(was_training)
    return out


def evenly_spaced(count: int, total: int) -> list[int]:
    """``count`` fixed indices spread over a split of ``total`` samples (the same every epoch)."""
    if count <= 0 or total <= 0:
        return []
    return sorted({int(round(i)) for i in np.linspace(0, total - 1, min(count, total))})


Scores = list[tuple[int, float]]  # (sent_id, IoU) per expression


def worst_and_best(scores: Sequence[tuple[int, float]], k: int) -> tuple[Scores, Scores]:
    """The ``k`` lowest- and highest-IoU expressions of (sent_id, IoU) pairs, ties broken by sent_id."""
    ranked = sorted(scores, key=lambda pair: (pair[1], pair[0]))
    return ranked[:k], sorted(scores, key=lambda pair: (-pair[1], pair[0]))[:k]


def write_ranked_overlays(net: torch.nn.Module, loaders: dict, scores: dict[str, list[tuple[int, float]]], k: int,
                          protocol, folder: Path, device="cpu") -> list[str]:
    """``folder/<split>/worst_NN_*.png`` and ``best_NN_*.png``: the k worst and best expressions per split.

    ``loaders``: split -> its evaluation DataLoader (dataset + collate); ``scores``: split -> (sent_id, IoU)
    of every expression, as the test pass scored it.
    """
    written = []
    for split, pairs in scores.items():
        dataset, collate = loaders[split].dataset, loaders[split].collate_fn
        position = {sample.sent_id: i for i, sample in enumerate(dataset.samples)}
        worst, best = worst_and_best(pairs, k)
        out = folder / split
        out.mkdir(parents=True, exist_ok=False)
        for kind, chosen in (("worst", worst), ("best", best)):
            pictures = render_samples(net, dataset, collate, [position[s] for s, _ in chosen], protocol, device)
            for rank, (picture, _, info) in enumerate(pictures, 1):
                path = out / f"{kind}_{rank:02d}_iou{info['iou']:.3f}_sent{info['sent_id']}.png"
                picture.save(path)
                written.append(str(path.relative_to(folder.parent)))
    return written
