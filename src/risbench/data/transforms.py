"""Image loading, resize policies and normalisation, and the way back to the original resolution.

Resize policies (``data.resize``), to a square input of side S:

* ``stretch`` (LAVT): a straight S x S resize, ignoring the aspect ratio;
* ``letterbox`` (ReSTR): keep the aspect ratio, longest side S, centred, padded with 0 *after*
  normalisation (the mean colour).

Images are resized bilinearly (antialiased when shrinking), masks with nearest neighbour. Each sample
keeps ``valid_box`` = (y0, x0, y1, x1), where the image content lies inside the input, and ``orig_size``
= (H, W), so `unmap_to_original` can bring a prediction back to the original image for scoring.
There is no flip (or any random augmentation): "left" must stay left.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from risbench.errors import RisbenchError

RESIZE_POLICIES = ("letterbox", "stretch")
NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


class UnreadableImageError(RisbenchError):
    """An image file is missing, truncated or not an image; ``kind`` says which (missing, truncated,
    unreadable, wrong_size)."""

    def __init__(self, message: str, kind: str = "unreadable", detail: str = ""):
        super().__init__(message)
        self.kind, self.detail = kind, detail


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file fully as RGB (see `to_rgb`); UnreadableImageError names the file otherwise."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except FileNotFoundError:
        raise UnreadableImageError(f"image not found: {path}", kind="missing") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # PIL says "image file is truncated" (or "broken data stream") when the pixels stop early
        kind = "truncated" if "truncated" in str(exc) or "broken data stream" in str(exc) else "unreadable"
        raise UnreadableImageError(f"cannot read image {path} ({type(exc).__name__}: {exc})", kind=kind,
                                   detail=f"{type(exc).__name__}: {exc}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 3-channel RGB.

    Grayscale is replicated, CMYK and palettes are converted, 16-bit images are scaled to 8 bits, and
    an alpha channel is dropped: the annotators saw (and the annotation covers) the colour channels.
    """
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I"):  # 16/32-bit integer grayscale
        image = Image.fromarray((np.asarray(image, np.float64) / 256).clip(0, 255).astype(np.uint8))
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL warns when a transparent palette goes straight to RGB
    return image.convert("RGB")


def content_geometry(height: int, width: int, size: int, resize: str) -> tuple[int, int, int, int]:
    """(content height, content width, top, left) of an H x W image inside the S x S input."""
    if resize == "stretch":
        return size, size, 0, 0
    if resize != "letterbox":
        raise RisbenchError(f"data.resize must be one of {RESIZE_POLICIES}, got {resize!r}")
    scale = size / max(height, width)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    return h, w, (size - h) // 2, (size - w) // 2


class InputTransform:
    """PIL image (+ mask) -> normalised (3, S, S) input, (1, S, S) float mask and valid_box."""

    def __init__(self, size: int, resize: str = "letterbox", normalize: str = "imagenet"):
        if resize not in RESIZE_POLICIES:
            raise RisbenchError(f"data.resize must be one of {RESIZE_POLICIES}, got {resize!r}")
        if normalize not in NORMALIZATIONS:
            raise RisbenchError(f"data.normalize must be one of {tuple(NORMALIZATIONS)}, got {normalize!r}")
        self.size, self.resize = int(size), resize
        mean, std = NORMALIZATIONS[normalize]
        # (x / 255 - mean) / std as one multiply-add; numpy, because torch's intra-op threads cost more
        # than they save on one image when the loader runs in the main process
        self.scale = (1 / (255 * np.array(std, np.float32))).reshape(3, 1, 1)
        self.shift = (-np.array(mean, np.float32) / np.array(std, np.float32)).reshape(3, 1, 1)

    def __call__(self, image: Image.Image, mask: np.ndarray | None = None):
        width, height = image.size
        h, w, top, left = content_geometry(height, width, self.size, self.resize)
        if (w, h) != image.size:
            image = image.resize((w, h), Image.BILINEAR)
        out = np.zeros((3, self.size, self.size), np.float32)
        content = out[:, top:top + h, left:left + w]
        np.multiply(np.asarray(image).transpose(2, 0, 1), self.scale, out=content, casting="unsafe")
        content += self.shift
        valid_box = torch.tensor([top, left, top + h, left + w], dtype=torch.long)
        if mask is None:
            return torch.from_numpy(out), None, valid_box
        small = Image.fromarray(mask.astype(np.uint8)).resize((w, h), Image.NEAREST)
        target = np.zeros((1, self.size, self.size), np.float32)
        target[0, top:top + h, left:left + w] = np.asarray(small)
        return torch.from_numpy(out), torch.from_numpy(target), valid_box


def unmap_to_original(logits: torch.Tensor, valid_box, orig_size, input_size: int | None = None):
    """Bring prediction logits back to the original image.

    ``logits`` (1, h, w) for one sample with ``valid_box`` (4,) and ``orig_size`` (2,) -> (1, H, W);
    or (B, 1, h, w) with (B, 4) boxes and (B, 2) sizes -> a list of (1, H_i, W_i).
    The logits are resized to the input side S (``input_size``; by default inferred from the box, whose
    longer side spans the whole input), cropped to the box and resized bilinearly to (H, W).
    """
    if logits.dim() == 4:
        return [unmap_to_original(l, b, s, input_size) for l, b, s in zip(logits, valid_box, orig_size)]
    y0, x0, y1, x1 = (int(v) for v in valid_box)
    height, width = (int(v) for v in orig_size)
    size = input_size or max(y1, x1)
    x = logits[None].float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = F.interpolate(x[:, :, y0:y1, x0:x1], size=(height, width), mode="bilinear", align_corners=False)
    return x[0]
