"""Reader for the refer format (RefCOCO, RefCOCO+, RefCOCOg, RefClef/ReferIt and synthref).

One dataset directory holds ``instances.json`` (COCO instances, read with pycocotools) and
``refs(<splitBy>).p``: a pickled list of referents with the keys refer uses::

    {ref_id, ann_id, image_id, split, category_id, sent_ids, file_name,
     sentences: [{sent_id, sent, raw, tokens}, ...]}

The pickles in the wild were written by Python 2; they are read with a latin-1 fallback, by a restricted
unpickler (`read_refs_pickle`, the one reader of refs files): a pickle can run any code while it is read,
and a refs file needs nothing but lists, dicts, strings and numbers, so every other global is refused.
Masks come from the referent's annotation: polygons (COCO) or run-length encodings (RefClef), every
part rasterised by pycocotools. ``mask_union="union"`` keeps a pixel covered by any part;
``"lavt"`` reproduces LAVT's loader, which sums the parts and keeps the pixels equal to 1 (a pixel
covered by two overlapping parts is dropped).
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
from pycocotools.coco import COCO

from risbench.errors import MissingFileError, RisbenchError

MASK_UNIONS = ("union", "lavt")
# split names that stand for a union of published splits (ReSTR trains ReferIt on train + val)
SPLIT_UNIONS = {"trainval": ("train", "val")}
REQUIRED_REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")


@dataclass(frozen=True)
class Sentence:
    sent_id: int
    text: str  # the raw sentence when present (tokenizers lowercase), else refer's cleaned `sent`


@dataclass(frozen=True)
class Referent:
    ref_id: int
    ann_id: int
    image_id: int
    split: str
    category_id: int
    sentences: tuple[Sentence, ...]


def refs_path(ann_dir: str | Path, split_by: str) -> Path:
    return Path(ann_dir) / f"refs({split_by}).p"


# the only globals a refs pickle may name (sets; protocols < 3 write the module as Python 2's __builtin__)
SAFE_PICKLE_GLOBALS = {(module, name) for module in ("builtins", "__builtin__") for name in ("set", "frozenset")}


class UnsafePickleError(RisbenchError):
    """A data pickle names a global (a class or function) that plain data never needs."""


class _DataOnlyUnpickler(pickle.Unpickler):
    """Builtin containers and scalars only: any other global would be code chosen by the file's author."""

    def __init__(self, file, path: Path, **kwargs):
        super().__init__(file, **kwargs)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) in SAFE_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"refused to read {self.path}: it asks for the global {module}.{name}, which a refs file never "
            "needs (it holds only lists, dicts, strings and numbers); reading it could run code chosen by "
            "whoever made the file.\n  how to fix: use the refs file of the refer toolkit's own download")


def read_refs_pickle(path: str | Path):
    """Unpickle a refs file with the data-only reader; Python 2 byte strings fall back to latin-1."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            try:
                return _DataOnlyUnpickler(f, path).load()
            except UnicodeDecodeError:  # Python 2 byte strings that are not ASCII
                f.seek(0)
                return _DataOnlyUnpickler(f, path, encoding="latin-1").load()
    except UnsafePickleError:
        raise
    except Exception as exc:
        raise RisbenchError(f"cannot read {path} ({type(exc).__name__}: {exc}).\n"
                            "  how to fix: download the refs file again (it should be a pickled list)") from None


def load_refs(path: str | Path) -> list[dict]:
    """The referents of a refs pickle, Python-2 pickles included."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError("refer annotation file", path, layout_hint(path.parent))
    refs = read_refs_pickle(path)
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise RisbenchError(f"{path} does not hold a list of referents (refer format).")
    for ref in refs[:1]:
        missing = [k for k in REQUIRED_REF_KEYS if k not in ref]
        if missing:
            raise RisbenchError(f"{path}: referents lack the key(s) {missing}; expected refer's keys "
                                f"{list(REQUIRED_REF_KEYS)}.")
    return refs


def _referent(ref: dict, path: Path) -> Referent:
    sentences = []
    for s in ref["sentences"]:
        text = s.get("raw", s.get("sent"))
        if text is None or "sent_id" not in s:
            raise RisbenchError(f"{path}: a sentence of ref_id {ref['ref_id']} lacks 'sent_id' or 'raw'/'sent'.")
        sentences.append(Sentence(int(s["sent_id"]), str(text)))
    return Referent(int(ref["ref_id"]), int(ref["ann_id"]), int(ref["image_id"]), str(ref["split"]),
                    int(ref.get("category_id", 0)), tuple(sentences))


def load_coco(path: str | Path) -> COCO:
    """pycocotools COCO index of an instances.json, without its progress prints."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError("refer instances file", path, layout_hint(path.parent))
    try:
        dataset = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RisbenchError(f"cannot read {path} as JSON ({exc}).\n  how to fix: download it again") from None
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def layout_hint(ann_dir: Path, split_by: str = "<splitBy>", dataset: str | None = None) -> str:
    """How to fix a missing annotation file; it notices a folder of the other layout given by mistake."""
    ann_dir, name = Path(ann_dir), dataset or Path(ann_dir).name
    refs = f"refs({split_by}).p" if split_by != "<splitBy>" else "refs(*).p"
    if ann_dir.parent.name == "refer" and list((ann_dir.parent.parent / name).glob(refs)):
        root = ann_dir.parent.parent
        return (f"{root} is laid out as the refer toolkit's data/ folder ({root / name} holds the refs files): "
                f"pass paths.refer_root={root} to read it as it is")
    if list((ann_dir.parent / "refer" / name).glob(refs)):
        return (f"{ann_dir.parent} is laid out as risbench's data folder (refer/{name}/ inside it): pass "
                f"paths.data_dir={ann_dir.parent} rather than paths.refer_root")
    return (f"put instances.json and refs({split_by}).p in {ann_dir}/ (risbench's layout: "
            "<paths.data_dir>/refer/<refcoco|refcoco+|refcocog|refclef>/; or pass paths.refer_root=<the refer "
            "toolkit's data/ folder> to read that layout as it is); they come from the refer toolkit's data "
            "downloads (github.com/lichengunc/refer)")


def segmentation_parts(segmentation, height: int, width: int) -> list[dict]:
    """The RLE of every part of a COCO segmentation (polygons, or RLE, compressed or not)."""
    if isinstance(segmentation, dict):
        segmentation = [segmentation]
    if not segmentation:
        return []
    if isinstance(segmentation[0], dict):  # RLE parts (RefClef): uncompressed ones hold count lists
        parts = []
        for rle in segmentation:
            if isinstance(rle["counts"], list):
                parts.append(mask_utils.frPyObjects(rle, height, width))
            else:
                counts = rle["counts"]
                parts.append({"size": list(rle["size"]),
                              "counts": counts.encode() if isinstance(counts, str) else counts})
        return parts
    return mask_utils.frPyObjects([list(map(float, p)) for p in segmentation], height, width)


def combine_parts(parts: list[dict], height: int, width: int, mask_union: str = "union") -> dict:
    """One RLE for the referent: the union of its parts, or LAVT's "sum of parts == 1"."""
    if not parts:
        return mask_utils.encode(np.zeros((height, width), np.uint8, order="F"))
    if len(parts) == 1 or mask_union == "union":
        return mask_utils.merge(parts, intersect=False) if len(parts) > 1 else parts[0]
    summed = mask_utils.decode(parts).sum(axis=2)
    return mask_utils.encode(np.asfortranarray((summed == 1).astype(np.uint8)))


class ReferAnnotations:
    """The referents, images and masks of one refer dataset directory and split scheme."""

    def __init__(self, ann_dir: str | Path, split_by: str, mask_union: str = "union"):
        if mask_union not in MASK_UNIONS:
            raise RisbenchError(f"data.mask_union must be one of {MASK_UNIONS}, got {mask_union!r}")
        self.ann_dir = Path(ann_dir)
        self.split_by = split_by
        self.mask_union = mask_union
        path = refs_path(ann_dir, split_by)
        if not path.is_file() and self.ann_dir.is_dir():
            available = sorted(p.name for p in self.ann_dir.glob("refs(*).p"))
            raise MissingFileError("refer annotation file", path,
                                   f"this directory has {available or 'no refs files'}; choose the split "
                                   "scheme with data.split_by, or " + layout_hint(self.ann_dir, split_by))
        self.referents = [_referent(r, path) for r in load_refs(path)]
        self.coco = load_coco(self.ann_dir / "instances.json")
        self._rles: dict[int, dict] = {}  # ref_id -> combined mask RLE, filled on first use

    @property
    def split_names(self) -> list[str]:
        return sorted({r.split for r in self.referents})

    def in_split(self, split: str) -> list[Referent]:
        """Referents of `split` (or of a union such as "trainval"), in file order."""
        names = set(SPLIT_UNIONS.get(split, (split,))) if split not in self.split_names else {split}
        found = [r for r in self.referents if r.split in names]
        if not found:
            raise RisbenchError(f"split {split!r} has no referents in {refs_path(self.ann_dir, self.split_by)}; "
                                f"its splits are {self.split_names} (unions: {list(SPLIT_UNIONS)})")
        return found

    def image(self, image_id: int) -> dict:
        """The COCO image record: file_name, height, width."""
        try:
            return self.coco.imgs[image_id]
        except KeyError:
            raise RisbenchError(f"image_id {image_id} of the refs file is missing from "
                                f"{self.ann_dir / 'instances.json'}; the two files do not belong together.") from None

    def mask_rle(self, ref: Referent) -> dict:
        """The referent's mask as RLE, computed once."""
        rle = self._rles.get(ref.ref_id)
        if rle is None:
            ann = self.coco.anns.get(ref.ann_id)
            if ann is None:
                raise RisbenchError(f"ann_id {ref.ann_id} (ref_id {ref.ref_id}) is missing from "
                                    f"{self.ann_dir / 'instances.json'}.")
            info = self.image(ref.image_id)
            h, w = int(info["height"]), int(info["width"])
            rle = combine_parts(segmentation_parts(ann["segmentation"], h, w), h, w, self.mask_union)
            self._rles[ref.ref_id] = rle
        return rle

    def mask(self, ref: Referent) -> np.ndarray:
        """(H, W) bool mask of the referent at the original image resolution."""
        return mask_utils.decode(self.mask_rle(ref)).astype(bool)
