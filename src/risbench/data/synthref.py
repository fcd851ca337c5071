"""synthref: a procedurally generated referring-segmentation dataset, written in the refer format.

``ensure_synthref(root, params)`` writes, under ``root`` (by default ``synthref_dir(paths.data_dir, params)``:
``<data_dir>/synthref`` for the default parameters, ``<data_dir>/synthref-<fingerprint>`` for others)::

    images/<image_id>.png      textured scenes of 3-6 coloured shapes with partial occlusion
    instances.json             COCO instances; each object's polygon describes its *visible* region
    refs(unc).p                refer referents: split train/val/testA/testB, 1-3 sentences each
    tokenizer/                 a WordPiece tokenizer trained on the expressions (BertTokenizerFast
                               directory: vocab.txt, tokenizer.json, configs) and words.txt, a word-level
                               vocabulary (``<pad>`` = 0, ``<unk>``) for the ``glove`` tokenizer kind
    params.json                the generation parameters and their fingerprint
    stats.json                 measured properties (objects per image, ambiguity and relation ratios)

so it goes through the same loader as RefCOCO. Everything is deterministic from ``params.seed`` (one
random generator per image). An installed copy is never replaced: other parameters live in another
folder; one process generates (under a lock) in a temporary sibling directory renamed into place, so
concurrent processes never see half a dataset.

Expressions identify exactly one object. Attribute expressions ("the small red star") use a unique
combination of size, colour and shape. Relation expressions are used only when their attribute part
alone matches two or more objects, so they need the relation: extremes ("the leftmost circle"), size
comparisons ("the largest triangle"), ordinals ("the second star from the top") and relations to a
landmark ("the blue square left of the red circle"). Spatial words refer to the image as shown (no flips).
Split ``testA`` holds relation expressions only, ``testB`` attribute expressions only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import pickle
import re
import shutil
import string
import uuid
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image

from risbench.errors import MissingFileError, RisbenchError

log = logging.getLogger(__name__)

# bump when a code change alters the generated files: the fingerprint, hence the folder, then changes
GENERATOR_VERSION = 1

SPLITS = ("train", "val", "testA", "testB")
SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon", "cross")
COLOURS = {
    "red": (215, 40, 40), "green": (40, 165, 60), "blue": (40, 90, 225), "yellow": (240, 210, 35),
    "purple": (145, 55, 200), "orange": (250, 135, 25), "white": (245, 245, 245), "cyan": (40, 205, 220),
    "pink": (245, 125, 195), "brown": (125, 75, 35),
}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("big", "large")}
SHAPE_WORDS = {"circle": ("circle", "disc"), "square": ("square", "box"), "triangle": ("triangle",),
               "star": ("star",), "diamond": ("diamond",), "hexagon": ("hexagon",), "cross": ("cross", "plus")}
HEAD_WORDS = ("object", "shape", "thing")
# attribute combinations an expression may name; () = any object
ATTRIBUTE_SETS = (("shape",), ("colour",), ("colour", "shape"), ("size", "shape"), ("size", "colour"),
                  ("size", "colour", "shape"))
CLASS_SETS = ((),) + ATTRIBUTE_SETS
DIRECTIONS = ("left", "right", "top", "bottom")
EXTREME_TEMPLATES = {
    "left": ("the leftmost {d}", "the {d} on the far left", "the {d} furthest to the left", "the {d} on the left"),
    "right": ("the rightmost {d}", "the {d} on the far right", "the {d} furthest to the right",
              "the {d} on the right"),
    "top": ("the topmost {d}", "the highest {d}", "the {d} at the top", "the upper {d}"),
    "bottom": ("the lowest {d}", "the bottom {d}", "the {d} at the bottom", "the lower {d}"),
}
PAIR_WORDS = {"left": ("left of", "to the left of"), "right": ("right of", "to the right of"),
              "top": ("above", "over"), "bottom": ("below", "under", "beneath")}
ORDINALS = {1: "second", 2: "third"}  # by 0-based rank
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # [PAD] first: pad id 0


@dataclass(frozen=True)
class SynthRefParams:
    """Generation parameters (the ``data.synthref`` config node); sizes are fractions of the image side.

    Difficulty knobs: ``max_objects``, ``p_confuser`` (more look-alike distractors), ``min_visible``
    (heavier occlusion), ``p_relation`` and ``relation_weights`` (more and harder relation expressions),
    ``color_jitter`` and ``texture_contrast`` (noisier appearance), ``margin`` (tighter spatial relations).
    """

    seed: int = 0
    image_size: int = 64
    train_images: int = 3000
    val_images: int = 150
    testA_images: int = 150
    testB_images: int = 150
    refs_per_image: int = 2
    min_objects: int = 3
    max_objects: int = 6
    shapes: tuple = SHAPES[:6]
    colours: tuple = tuple(COLOURS)[:6]
    small_diameter: tuple = (0.22, 0.27)
    large_diameter: tuple = (0.36, 0.44)
    min_visible: float = 0.6
    p_confuser: float = 0.35
    p_relation: float = 0.45
    relation_weights: dict = field(default_factory=lambda: {"extreme": 0.45, "size": 0.2, "pair": 0.25,
                                                            "ordinal": 0.1})
    margin: float = 0.08
    color_jitter: int = 12
    texture_contrast: float = 0.25
    image_format: str = "png"

    @classmethod
    def from_config(cls, config: dict | None) -> "SynthRefParams":
        config = dict(config or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise RisbenchError(f"unknown synthref parameter(s) {unknown} in data.synthref; "
                                f"known: {sorted(known)}")
        for name in ("shapes", "colours", "small_diameter", "large_diameter"):
            if name in config:
                config[name] = tuple(config[name])
        if "relation_weights" in config:
            config["relation_weights"] = dict(config["relation_weights"])
        params = cls(**config)
        params.validate()
        return params

    def validate(self) -> None:
        bad = [s for s in self.shapes if s not in SHAPES] + [c for c in self.colours if c not in COLOURS]
        if bad:
            raise RisbenchError(f"data.synthref: unknown shape/colour {bad}; shapes: {SHAPES}, "
                                f"colours: {tuple(COLOURS)}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise RisbenchError("data.synthref: need 1 <= min_objects <= max_objects")
        if self.image_format not in ("png", "jpg"):
            raise RisbenchError("data.synthref.image_format must be png or jpg")
        if self.image_size < 16:
            raise RisbenchError("data.synthref.image_size must be at least 16")

    def as_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def fingerprint(self) -> str:
        blob = json.dumps({"version": GENERATOR_VERSION, **self.as_dict()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def num_images(self, split: str) -> int:
        return getattr(self, f"{split}_images")


# --------------------------------------------------------------------------------------------- scenes
@dataclass(eq=False)  # objects compare by identity
class SceneObject:
    shape: str
    colour: str
    size: str
    polygon: list  # full (unoccluded) outline, flat [x0, y0, x1, y1, ...]
    full: np.ndarray  # (S, S) bool, the full shape as pycocotools rasterises `polygon`
    visible: np.ndarray | None = None
    cx: float = 0.0  # centroid of the visible region (x right, y down), pixels
    cy: float = 0.0
    area: int = 0  # full area in pixels (what "largest" compares)

    def coord(self, direction: str) -> float:
        """Coordinate that grows towards `direction`."""
        return {"left": -self.cx, "right": self.cx, "top": -self.cy, "bottom": self.cy}[direction]


def shape_outline(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    """Vertices (k, 2) of `shape` centred at (cx, cy) with nominal radius r (extent <= 1.2 r)."""
    def ring(n, radius, phase=0.0):
        a = phase + 2 * np.pi * np.arange(n) / n
        return np.stack([np.cos(a), np.sin(a)], 1) * radius

    if shape == "circle":
        pts = ring(28, r)
    elif shape == "square":
        h = 0.88 * r
        pts = np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
    elif shape == "triangle":
        pts = ring(3, 1.2 * r, -np.pi / 2) + [0, 0.15 * r]
    elif shape == "star":
        outer, inner = ring(5, 1.2 * r, -np.pi / 2), ring(5, 0.62 * r, -np.pi / 2 + np.pi / 5)
        pts = np.stack([outer, inner], 1).reshape(-1, 2)
    elif shape == "diamond":
        pts = np.array([[0, -1.15 * r], [0.85 * r, 0], [0, 1.15 * r], [-0.85 * r, 0]])
    elif shape == "hexagon":
        pts = ring(6, r)
    elif shape == "cross":
        a, w = r, 0.4 * r
        pts = np.array([[-w, -a], [w, -a], [w, -w], [a, -w], [a, w], [w, w], [w, a], [-w, a], [-w, w],
                        [-a, w], [-a, -w], [-w, -w]])
    else:
        raise ValueError(shape)
    return pts + [cx, cy]


def rasterize(flat_polygon: list, size: int) -> np.ndarray:
    """The pixels pycocotools assigns to a polygon: the same rule every loader uses to decode it."""
    rle = mask_utils.frPyObjects([flat_polygon], size, size)
    return mask_utils.decode(rle)[:, :, 0].astype(bool)


def trace_outline(mask: np.ndarray) -> list | None:
    """Outline of a region along pixel edges, as a flat COCO polygon [x0, y0, ...] in pixel-corner units.

    Pixel (r, c) covers [c, c+1] x [r, r+1], so pycocotools decodes the polygon back to exactly `mask`.
    Diagonal neighbours count as connected (the outline touches itself at such corners). Returns None
    when the region is not one piece without holes, which a single polygon cannot describe.
    """
    m = np.pad(mask, 1)
    inside = m[1:-1, 1:-1]
    outgoing: dict = {}  # start vertex -> [(end vertex, pixel)]; edges run clockwise on screen
    edge_rules = (  # (neighbour outside, start offset, end offset) in (x, y) relative to pixel corner
        (~m[:-2, 1:-1], (0, 0), (1, 0)),  # top
        (~m[1:-1, 2:], (1, 0), (1, 1)),  # right
        (~m[2:, 1:-1], (1, 1), (0, 1)),  # bottom
        (~m[1:-1, :-2], (0, 1), (0, 0)),  # left
    )
    n_edges = 0
    for outside, (sx, sy), (ex, ey) in edge_rules:
        for r, c in zip(*np.nonzero(inside & outside)):
            outgoing.setdefault((c + sx, r + sy), []).append(((c + ex, r + ey), (r, c)))
            n_edges += 1
    if not n_edges:
        return None
    start = min(outgoing)
    vertex, pixel, path = start, None, []
    while True:
        options = outgoing[vertex]
        # at a corner shared by two diagonal pixels, cross over to the other pixel (8-connectivity)
        k = next((i for i, (_, p) in enumerate(options) if p != pixel), 0) if len(options) > 1 else 0
        end, pixel = options.pop(k)
        path.append(vertex)
        vertex = end
        if vertex == start and not outgoing[start]:
            break
    if len(path) != n_edges:  # edges left over: several pieces or holes
        return None
    corners = [p for i, p in enumerate(path) if not _collinear(path[i - 1], p, path[(i + 1) % len(path)])]
    return [float(v) for xy in corners for v in xy]


def _collinear(a, b, c) -> bool:
    return (b[0] - a[0]) * (c[1] - b[1]) == (b[1] - a[1]) * (c[0] - b[0])


def _sample_object(rng, p: SynthRefParams, placed: list) -> SceneObject:
    S = p.image_size
    shape, colour = rng.choice(p.shapes), rng.choice(p.colours)
    if placed and rng.random() < p.p_confuser:  # a look-alike: copy the colour or the shape of one placed
        other = placed[rng.integers(len(placed))]
        if rng.random() < 0.5:
            colour = other.colour
        else:
            shape = other.shape
    size = "large" if rng.random() < 0.5 else "small"
    lo, hi = p.large_diameter if size == "large" else p.small_diameter
    r = rng.uniform(lo, hi) * S / 2
    reach = 1.2 * r + 1
    cx, cy = rng.uniform(reach, S - reach, size=2)
    polygon = [round(float(v), 2) for v in shape_outline(shape, cx, cy, r).ravel()]
    full = rasterize(polygon, S)
    return SceneObject(str(shape), str(colour), size, polygon, full, area=int(full.sum()))


def sample_scene(rng, p: SynthRefParams) -> list:
    """Objects placed back to front; each keeps >= min_visible of its area as one polygon-shaped piece."""
    while True:
        n = int(rng.integers(p.min_objects, p.max_objects + 1))
        objects: list[SceneObject] = []
        label = np.zeros((p.image_size,) * 2, np.int16)  # 0 = background, k + 1 = objects[k]
        for _ in range(40 * n):
            if len(objects) == n:
                break
            obj = _sample_object(rng, p, objects)
            if obj.area < 4:
                continue
            trial = label.copy()
            trial[obj.full] = len(objects) + 1
            visible = np.bincount(trial.ravel(), minlength=len(objects) + 2)[1:]
            if all(visible[k] >= p.min_visible * o.area for k, o in enumerate(objects)):
                objects.append(obj)
                label = trial
        if len(objects) >= p.min_objects and _finish_objects(objects, label):
            return objects


def _finish_objects(objects: list, label: np.ndarray) -> bool:
    """Fill in visible regions, centroids and annotation polygons; False if one cannot be a polygon."""
    for k, obj in enumerate(objects):
        obj.visible = label == k + 1
        ys, xs = np.nonzero(obj.visible)
        obj.cx, obj.cy = float(xs.mean()) + 0.5, float(ys.mean()) + 0.5
        if obj.visible.sum() < obj.area:  # occluded: describe what is visible
            outline = trace_outline(obj.visible)
            if outline is None or not np.array_equal(rasterize(outline, label.shape[0]), obj.visible):
                return False
            obj.polygon = outline
    return True


def render(rng, p: SynthRefParams, objects: list) -> np.ndarray:
    """RGB uint8 image: a textured background, then the objects painted back to front."""
    S = p.image_size
    image = _texture(rng, S, p.texture_contrast)
    yy = np.linspace(-1, 1, S)[:, None, None]
    for obj in objects:
        colour = np.array(COLOURS[obj.colour], float) + rng.uniform(-p.color_jitter, p.color_jitter, 3)
        shading = 1 + rng.uniform(-0.08, 0.08) * yy  # a soft vertical light gradient
        painted = colour * shading + rng.normal(0, 3, (S, S, 3))
        image = np.where(obj.full[:, :, None], painted, image)
    return np.clip(image, 0, 255).astype(np.uint8)


def _texture(rng, S: int, contrast: float) -> np.ndarray:
    """A muted background: stripes, checks, blobs or dots over a grey with a slight tint."""
    yy, xx = np.mgrid[0:S, 0:S] / S
    kind = rng.integers(4)
    if kind == 0:
        angle, freq = rng.uniform(0, np.pi), rng.uniform(4, 9)
        pattern = np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)))
    elif kind == 1:
        cells = rng.integers(4, 10)
        pattern = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2) * 2 - 1.0
    elif kind == 2:
        grid = Image.fromarray(rng.uniform(0, 255, (5, 5)).astype(np.uint8))
        pattern = np.asarray(grid.resize((S, S), Image.BILINEAR), float) / 127.5 - 1
    else:
        freq = rng.uniform(5, 10)
        pattern = np.sin(2 * np.pi * freq * xx) * np.sin(2 * np.pi * freq * yy)
    base = rng.uniform(90, 170) + rng.uniform(-18, 18, 3)
    image = base + 60 * contrast * pattern[:, :, None] + rng.normal(0, 3, (S, S, 3))
    return image


# ---------------------------------------------------------------------------------------- expressions
def _matches(a: SceneObject, b: SceneObject, attributes: tuple) -> bool:
    return all(getattr(a, name) == getattr(b, name) for name in attributes)


def _members(target, objects, attributes) -> list:
    return [o for o in objects if _matches(o, target, attributes)]


def _phrase(rng, obj: SceneObject, attributes: tuple) -> str:
    words = []
    if "size" in attributes:
        words.append(rng.choice(SIZE_WORDS[obj.size]))
    if "colour" in attributes:
        words.append(obj.colour)
    words.append(rng.choice(SHAPE_WORDS[obj.shape]) if "shape" in attributes else rng.choice(HEAD_WORDS))
    return " ".join(words)


def unique_attribute_sets(target, objects) -> list:
    return [a for a in ATTRIBUTE_SETS if len(_members(target, objects, a)) == 1]


def attribute_expression(rng, target, objects) -> str | None:
    options = unique_attribute_sets(target, objects)
    if not options:
        return None
    attributes = options[rng.integers(len(options))]
    phrase = _phrase(rng, target, attributes)
    if attributes == ("colour", "shape") and rng.random() < 0.2:
        return f"the {rng.choice(SHAPE_WORDS[target.shape])} that is {target.colour}"
    if "shape" not in attributes and rng.random() < 0.25:
        phrase = phrase.rsplit(" ", 1)[0] + " one"
    return rng.choice(("the {}", "the {}", "{}", "a {}")).format(phrase)


def relation_candidates(target, objects, margin: float) -> dict:
    """Every relation that singles out `target` while its attribute part matches >= 2 objects.

    Returns {kind: [(template, class attributes, landmark or None)]}; `margin` is in pixels.
    """
    found = {"extreme": [], "size": [], "pair": [], "ordinal": []}
    landmarks = [o for o in objects if o is not target and unique_attribute_sets(o, objects)]
    for attributes in CLASS_SETS:
        members = _members(target, objects, attributes)
        if len(members) < 2:
            continue
        others = [o for o in members if o is not target]
        for d in DIRECTIONS:
            ranked = sorted(members, key=lambda o: o.coord(d), reverse=True)
            gaps = [a.coord(d) - b.coord(d) for a, b in zip(ranked, ranked[1:])]
            k = ranked.index(target)
            if k == 0 and gaps[0] >= margin:
                found["extreme"] += [(t, attributes, None) for t in EXTREME_TEMPLATES[d]]
            elif k in ORDINALS and len(ranked) >= 3 and min(gaps[:k + 1]) >= margin:
                found["ordinal"].append((f"the {ORDINALS[k]} {{d}} from the {d}", attributes, None))
        if "size" not in attributes:
            if all(target.area >= 1.4 * o.area for o in others):
                found["size"] += [("the largest {d}", attributes, None), ("the biggest {d}", attributes, None)]
            elif all(1.4 * target.area <= o.area for o in others):
                found["size"].append(("the smallest {d}", attributes, None))
        for landmark in landmarks:
            if landmark in members:
                continue
            for d in DIRECTIONS:
                offset = [o.coord(d) - landmark.coord(d) for o in members]
                mine = target.coord(d) - landmark.coord(d)
                if mine >= margin and all(v <= 0 for o, v in zip(members, offset) if o is not target):
                    for word in PAIR_WORDS[d]:
                        found["pair"].append((f"the {{d}} {word} the {{l}}", attributes, landmark))
    return {kind: c for kind, c in found.items() if c}


def relation_expression(rng, target, objects, candidates: dict, p: SynthRefParams) -> tuple | None:
    """A random (text, kind) among `candidates` (from `relation_candidates`), or None."""
    kinds = [k for k in candidates if p.relation_weights.get(k, 0) > 0]
    if not kinds:
        return None
    weights = np.array([p.relation_weights[k] for k in kinds], float)
    kind = kinds[rng.choice(len(kinds), p=weights / weights.sum())]
    template, attributes, landmark = candidates[kind][rng.integers(len(candidates[kind]))]
    phrase = _phrase(rng, target, attributes)
    if landmark is None:
        return template.format(d=phrase), kind
    landmark_sets = unique_attribute_sets(landmark, objects)
    landmark_phrase = _phrase(rng, landmark, landmark_sets[rng.integers(len(landmark_sets))])
    return template.format(d=phrase, l=landmark_phrase), kind


def expressions_for(rng, target, objects, split: str, p: SynthRefParams) -> list:
    """1-3 distinct (text, kind) for `target`; kind is "attribute" or a relation kind.

    testA uses relations only, testB attributes only; train/val use a relation with probability
    p_relation, and whichever kind exists when the other does not.
    """
    relations = relation_candidates(target, objects, p.margin * p.image_size) if split != "testB" else {}
    has_attribute = split != "testA" and bool(unique_attribute_sets(target, objects))
    wanted = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    result: list = []
    for _ in range(4 * wanted):
        if len(result) == wanted:
            break
        use_relation = not has_attribute or (split != "testB" and rng.random() < p.p_relation)
        choice = relation_expression(rng, target, objects, relations, p) if use_relation else None
        if choice is None and has_attribute:
            choice = attribute_expression(rng, target, objects), "attribute"
        if choice and choice[0] not in [text for text, _ in result]:
            result.append(choice)
    return result


def _raw(rng, text: str) -> str:
    """The 'raw' sentence as an annotator might type it: sometimes capitalised or with a full stop."""
    if rng.random() < 0.2:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.15:
        text += "."
    return text


# ----------------------------------------------------------------------------------------- generation
def generate_image(p: SynthRefParams, split: str, index: int) -> dict:
    """One image with its objects and referents, from its own random generator."""
    rng = np.random.default_rng([p.seed, SPLITS.index(split), index])
    objects = sample_scene(rng, p)
    pixels = render(rng, p, objects)
    order = rng.permutation(len(objects))  # targets drawn uniformly: no position or size prior
    referents = []
    for k in order:
        if len(referents) == p.refs_per_image:
            break
        sentences = expressions_for(rng, objects[k], objects, split, p)
        if sentences:
            raws = [_raw(rng, text) for text, _ in sentences]
            referents.append({"object": int(k), "sentences": sentences, "raws": raws})
    return {"pixels": pixels, "objects": objects, "referents": referents}


def _write_image(p: SynthRefParams, split: str, index: int, path: Path) -> dict:
    """Generate one image, save it to `path`, return its objects and referents (picklable, small)."""
    scene = generate_image(p, split, index)
    Image.fromarray(scene["pixels"]).save(path, quality=95)
    objects = scene["objects"]
    for ref in scene["referents"]:
        target = objects[ref["object"]]
        ref["ambiguous"] = any(o is not target and (o.colour == target.colour or o.shape == target.shape)
                               for o in objects)
    return {"annotations": [_annotation(o) for o in objects], "referents": scene["referents"]}


def generate(root: str | Path, p: SynthRefParams, workers: int | None = None) -> dict:
    """Write the whole dataset to `root` (which must not exist yet); returns the measured stats.

    Images are generated by `workers` processes (default: one per CPU); the output does not depend on it.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True)
    categories = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(p.shapes)]
    category_id = {c["name"]: c["id"] for c in categories}
    jobs = [(split, index, image_id)
            for image_id, (split, index) in enumerate(((s, i) for s in SPLITS for i in range(p.num_images(s))), 1)]
    names = [f"{image_id:06d}.{p.image_format}" for _, _, image_id in jobs]
    scenes = _run_jobs(p, [(split, index, root / "images" / name) for (split, index, _), name in zip(jobs, names)],
                       workers)
    images, annotations, refs, sentences = [], [], [], 0
    counts = {"objects": [], "ambiguous": 0, "relation_expressions": 0}
    for (split, _, image_id), name, scene in zip(jobs, names, scenes):
        images.append({"id": image_id, "file_name": name, "height": p.image_size, "width": p.image_size})
        ann_ids = []
        for ann in scene["annotations"]:
            ann_ids.append(len(annotations) + 1)
            annotations.append({"id": ann_ids[-1], "image_id": image_id, **ann,
                                "category_id": category_id[ann["attributes"]["shape"]]})
        counts["objects"].append(len(ann_ids))
        for ref in scene["referents"]:
            ann = annotations[ann_ids[ref["object"]] - 1]
            refs.append(_ref(len(refs), split, image_id, ann["id"], name, ann["category_id"], ref, sentences))
            sentences += len(ref["sentences"])
            counts["ambiguous"] += ref["ambiguous"]
            counts["relation_expressions"] += sum(kind != "attribute" for _, kind in ref["sentences"])
    (root / "instances.json").write_text(json.dumps(
        {"info": {"description": "synthref", "version": GENERATOR_VERSION}, "images": images,
         "annotations": annotations, "categories": categories}))
    with open(root / "refs(unc).p", "wb") as f:
        # through JSON first: pickle's bytes depend on which equal strings are the same object
        pickle.dump(json.loads(json.dumps(refs)), f, protocol=2)
    train_tokenizer([s["raw"] for r in refs for s in r["sentences"]], root / "tokenizer")
    stats = {
        "images": len(images), "referents": len(refs), "expressions": sentences,
        "objects_per_image": float(np.mean(counts["objects"])),
        "min_objects": int(min(counts["objects"])), "max_objects": int(max(counts["objects"])),
        "ambiguity_ratio": counts["ambiguous"] / max(len(refs), 1),
        "relation_ratio": counts["relation_expressions"] / max(sentences, 1),
    }
    (root / "stats.json").write_text(json.dumps(stats, indent=2))
    (root / "params.json").write_text(json.dumps(
        {"fingerprint": p.fingerprint(), "version": GENERATOR_VERSION, "params": p.as_dict()}, indent=2))
    return stats


def _run_jobs(p: SynthRefParams, jobs: list, workers: int | None) -> list:
    workers = workers or min(os.cpu_count() or 1, 8)
    if workers == 1 or len(jobs) < 200:
        return [_write_image(p, *job) for job in jobs]
    # fork where there is one, as DataLoader workers do: the children only need numpy and PIL
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        return list(pool.map(_write_image, *zip(*[(p, *job) for job in jobs]), chunksize=64))


def _annotation(obj: SceneObject) -> dict:
    ys, xs = np.nonzero(obj.visible)
    x0, y0 = int(xs.min()), int(ys.min())
    return {"segmentation": [obj.polygon], "area": int(obj.visible.sum()),
            "bbox": [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0], "iscrowd": 0,
            "attributes": {"colour": obj.colour, "size": obj.size, "shape": obj.shape}}


def _ref(ref_id, split, image_id, ann_id, file_name, category_id, ref, first_sent_id) -> dict:
    sentences = []
    for i, ((text, kind), raw) in enumerate(zip(ref["sentences"], ref["raws"])):
        sentences.append({"sent_id": first_sent_id + i, "sent": text, "raw": raw, "tokens": text.split(),
                          "kind": kind})
    return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split,
            "file_name": file_name, "category_id": category_id, "sentences": sentences,
            "sent_ids": [s["sent_id"] for s in sentences]}


def train_tokenizer(texts: list, out_dir: Path) -> None:
    """An uncased WordPiece tokenizer for the expressions, as a directory BertTokenizerFast loads.

    The vocabulary is every word of the corpus (most frequent first) plus single characters and
    "##" continuations of the whole alphabet, so unseen words (predict mode) become pieces, not [UNK].
    It is built from counted words rather than with the `tokenizers` merge trainer, whose tie-breaking
    depends on hash order and would make the files differ from run to run. ``words.txt`` is the
    word-level vocabulary (``<pad>`` = 0, ``<unk>``) for the ``glove`` tokenizer kind.
    """
    from tokenizers import BertWordPieceTokenizer

    counts = Counter(w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower()))
    words = sorted(counts, key=lambda w: (-counts[w], w))
    alphabet = string.ascii_lowercase + string.digits + string.punctuation
    pieces = list(SPECIAL_TOKENS) + words + [c for c in alphabet if c not in counts] + [f"##{c}" for c in alphabet]
    tokenizer = BertWordPieceTokenizer({piece: i for i, piece in enumerate(pieces)}, lowercase=True)
    out_dir.mkdir(parents=True)
    (out_dir / "vocab.txt").write_text("\n".join(pieces) + "\n")
    tokenizer.save(str(out_dir / "tokenizer.json"))
    specials = dict(zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"), SPECIAL_TOKENS))
    (out_dir / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512, **specials},
        indent=2))
    (out_dir / "words.txt").write_text("\n".join(["<pad>", "<unk>", *sorted(counts)]) + "\n")


# -------------------------------------------------------------------------------------- installation
DEFAULT_NAME = "synthref"


def synthref_dir(data_dir: str | Path, config: dict | SynthRefParams | None = None) -> Path:
    """Where synthref with these parameters lives under ``paths.data_dir``.

    ``<data_dir>/synthref`` for the default parameters, ``<data_dir>/synthref-<fingerprint>`` for any other
    set, so a dataset is never replaced by one generated with other parameters (the ``synthref_dir`` config
    resolver, used by ``paths.synthref_dir``).
    """
    params = config if isinstance(config, SynthRefParams) else SynthRefParams.from_config(config)
    fingerprint = params.fingerprint()
    name = DEFAULT_NAME if fingerprint == SynthRefParams().fingerprint() else f"{DEFAULT_NAME}-{fingerprint}"
    return Path(data_dir).expanduser() / name


def find_synthref(root: str | Path, config: dict | SynthRefParams | None = None) -> Path:
    """`root` if it holds synthref generated with these parameters; never writes (``data check``)."""
    root = Path(root).expanduser()
    found = installed_fingerprint(root)
    if config is None and found is not None:
        return root
    params = config if isinstance(config, SynthRefParams) else SynthRefParams.from_config(config)
    if found is None:
        raise MissingFileError("synthref", root / "params.json",
                               "it is generated by the first run that uses it (python -m risbench data=synthref "
                               "...); `data check` only reads")
    if found != params.fingerprint():
        raise _other_parameters(root, found, params)
    return root


def ensure_synthref(root: str | Path, config: dict | SynthRefParams | None = None) -> Path:
    """Generate synthref under `root` unless a copy with the same parameters is already there.

    ``config=None`` accepts whatever synthref is installed there (default parameters if none is). An
    existing folder is never deleted or replaced: one holding other parameters (or anything else) is an
    error. A lock file (``.<name>.lock`` beside `root`) lets one process generate while the others (DDP
    ranks, parallel runs) wait; it is built in a temporary sibling and renamed into place in one step, so
    nobody ever sees half a dataset.
    """
    from filelock import FileLock, Timeout

    root = Path(root).expanduser()
    if config is None and installed_fingerprint(root) is not None:
        return root
    params = config if isinstance(config, SynthRefParams) else SynthRefParams.from_config(config)
    if installed_fingerprint(root) == params.fingerprint():
        return root
    _refuse_existing(root, params)
    root.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(root.parent / f".{root.name}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process generating synthref at %s", root)
        lock.acquire()
    try:
        if installed_fingerprint(root) == params.fingerprint():  # the other process made it meanwhile
            return root
        _refuse_existing(root, params)
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            log.info("generating synthref at %s (fingerprint %s)", root, params.fingerprint())
            generate(tmp, params)
            os.rename(tmp, root)  # atomic; `root` is absent or an empty folder here
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # only our own temporary folder
    finally:
        lock.release()
    return root


def installed_fingerprint(root: Path) -> str | None:
    try:
        return json.loads((Path(root) / "params.json").read_text())["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _refuse_existing(root: Path, params: SynthRefParams) -> None:
    """An existing, non-empty `root` that is not this synthref stays as it is: say why and what to do."""
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return
    found = installed_fingerprint(root)
    if found is None:
        raise RisbenchError(f"{root} exists but holds no synthref params.json, so it is not replaced.\n"
                            "  how to fix: point paths.synthref_dir at an empty or synthref directory, or "
                            "remove it yourself")
    raise _other_parameters(root, found, params)


def _other_parameters(root: Path, found: str, params: SynthRefParams) -> RisbenchError:
    return RisbenchError(
        f"{root} holds synthref generated with other parameters (fingerprint {found}, wanted "
        f"{params.fingerprint()}); risbench never replaces a dataset in place.\n  how to fix: leave "
        "paths.synthref_dir at its default (every parameter set gets its own folder under paths.data_dir: "
        f"{synthref_dir('<data_dir>', params).name}), or remove {root} yourself")
