"""Tiny refer-format datasets written by the tests (no real data needed).

`make_refer` writes ``<data_dir>/refer/<dataset>/{instances.json, refs(<split_by>).p}`` and the images
under the layout the data configs expect (``images/mscoco/train2014`` or ``images/saiapr_tc-12``):
polygons for the COCO-based datasets, RLE for refclef (compressed, and one part as an uncompressed count
list), optionally a Python-2 style pickle. ``layout="refer"`` writes the refer toolkit's own ``data/``
folder instead: ``<root>/<dataset>/...`` and ``<root>/images/mscoco/images/train2014/``.
"""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image

from risbench.data.synthref import ensure_synthref, synthref_dir

# image_id -> (width, height)
IMAGES = {1: (40, 30), 2: (30, 40), 3: (36, 36)}
# ann_id -> (image_id, polygon parts); ann 1 has two overlapping parts (LAVT's union differs)
ANNOTATIONS = {
    1: (1, [[4, 4, 20, 4, 20, 16, 4, 16], [14, 10, 30, 10, 30, 26, 14, 26]]),
    2: (1, [[25, 2, 38, 2, 31, 9]]),
    3: (2, [[5, 5, 25, 5, 25, 30, 5, 30]]),
    4: (3, [[2, 2, 16, 2, 16, 16, 2, 16]]),
    5: (3, [[20, 20, 34, 20, 34, 34, 20, 34]]),
}
# (ann_id, split under "unc", sentences); other schemes call testA/testB "test"
REFS = [
    (1, "train", ["the big box on the left", "left thing"]),
    (2, "train", ["the triangle"]),
    (3, "val", ["tall box", "the box", "box in the middle"]),
    (4, "testA", ["top left square"]),
    (5, "testB", ["bottom right square", "caf\xe9 square"]),
]
# per split under "unc": (referents, expressions, images)
UNC_COUNTS = {"train": (2, 3, 1), "val": (1, 3, 1), "testA": (1, 1, 1), "testB": (1, 2, 1)}
WORDS = ["<pad>", "<unk>", "the", "big", "box", "on", "left", "thing", "triangle", "object", "square"]


def image_dir_of(data_dir: Path, dataset: str, layout: str = "risbench") -> Path:
    if dataset == "refclef":
        return Path(data_dir) / "images" / "saiapr_tc-12"
    return Path(data_dir) / "images" / ("mscoco/train2014" if layout == "risbench" else "mscoco/images/train2014")


def ann_dir_of(data_dir: Path, dataset: str, layout: str = "risbench") -> Path:
    return Path(data_dir) / "refer" / dataset if layout == "risbench" else Path(data_dir) / dataset


def file_name(dataset: str, image_id: int) -> str:
    if dataset == "refclef":  # SAIAPR keeps images in numbered sub-folders
        return f"{image_id:02d}/images/{image_id + 100}.jpg"
    return f"COCO_train2014_{image_id:012d}.jpg"


def polygon_masks(ann_id: int) -> list[np.ndarray]:
    image_id, parts = ANNOTATIONS[ann_id]
    w, h = IMAGES[image_id]
    return [mask_utils.decode(mask_utils.frPyObjects([p], h, w))[:, :, 0] for p in parts]


def make_refer(data_dir: Path, dataset: str = "refcoco", split_by: str = "unc", py2_pickle: bool = False,
               layout: str = "risbench") -> Path:
    """Write the tiny dataset; returns its annotation directory."""
    data_dir = Path(data_dir)
    ann_dir = ann_dir_of(data_dir, dataset, layout)
    ann_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for image_id, (w, h) in IMAGES.items():
        name = file_name(dataset, image_id)
        write_image(image_dir_of(data_dir, dataset, layout) / name, (w, h), seed=image_id)
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
    annotations = []
    for ann_id, (image_id, parts) in ANNOTATIONS.items():
        if dataset == "refclef":  # RLE parts, counts as JSON strings (as refclef stores them)
            segmentation = []
            for k, part in enumerate(polygon_masks(ann_id)):
                rle = mask_utils.encode(np.asfortranarray(part))
                if k == 1:  # a second part as an uncompressed RLE (a list of run lengths)
                    segmentation.append({"size": rle["size"], "counts": _run_lengths(part)})
                    continue
                segmentation.append({"size": rle["size"], "counts": rle["counts"].decode()})
        else:
            segmentation = [list(map(float, p)) for p in parts]
        annotations.append({"id": ann_id, "image_id": image_id, "category_id": 1, "segmentation": segmentation,
                            "area": 1.0, "bbox": [0, 0, 1, 1], "iscrowd": 0})
    instances = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    (ann_dir / "instances.json").write_text(json.dumps(instances))
    refs, sent_id = [], 0
    for ref_id, (ann_id, split, texts) in enumerate(REFS):
        if split_by != "unc" and split.startswith("test"):
            split = "test"
        sentences = []
        for text in texts:
            sentences.append({"sent_id": sent_id, "sent": text.lower(), "raw": text, "tokens": text.split()})
            sent_id += 1
        refs.append({"ref_id": ref_id, "ann_id": ann_id, "image_id": ANNOTATIONS[ann_id][0], "split": split,
                     "category_id": 1, "sent_ids": [s["sent_id"] for s in sentences], "sentences": sentences,
                     "file_name": "unused.jpg"})
    path = ann_dir / f"refs({split_by}).p"
    if py2_pickle:
        write_py2_pickle(refs, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(refs, f)
    return ann_dir


def _run_lengths(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE counts: alternating runs of 0s and 1s in column-major order."""
    flat = mask.flatten(order="F").astype(np.uint8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] == 1 else runs


def write_image(path: Path, size: tuple[int, int], mode: str = "RGB", seed: int = 0, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path, format=fmt)
    return path


class _Py2Pickler(pickle._Pickler):
    """Writes every str as a Python 2 byte string (latin-1), as the refs files in the wild hold them."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        data = obj.encode("latin-1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str


def write_py2_pickle(obj, path: Path) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def write_words(path: Path) -> Path:
    path.write_text("\n".join(WORDS) + "\n")
    return path


# the CLI tests' synthref (64 px, the tiny models' input) as parameters and as command-line overrides
SMALL_SYNTHREF = {"train_images": 40, "val_images": 10, "testA_images": 10, "testB_images": 10}
SMALL_DATA = [f"data.synthref.{key}={value}" for key, value in SMALL_SYNTHREF.items()] + ["data.num_workers=0"]

TINY_SYNTHREF = {"image_size": 32, "train_images": 20, "val_images": 6, "testA_images": 6, "testB_images": 6}


def make_tiny_synthref(data_dir: Path) -> Path:
    """A 38-image synthref at 32 px in its folder under data_dir (paths.synthref_dir; about a second)."""
    return ensure_synthref(synthref_dir(data_dir, TINY_SYNTHREF), TINY_SYNTHREF)
