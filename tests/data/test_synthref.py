"""synthref: refer format, exact masks, determinism, regeneration, and the issue's constraints."""

from __future__ import annotations

import json
import pickle
import threading

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from risbench.data.refer import ReferAnnotations
from risbench.data.synthref import (COLOURS, SHAPE_WORDS, SIZE_WORDS, SynthRefParams, ensure_synthref,
                                    find_synthref, generate, generate_image, rasterize, synthref_dir, trace_outline)
from risbench.errors import MissingFileError, RisbenchError
from tests.fixtures import TINY_SYNTHREF

# big enough for stable ratios, small enough to generate in about a second
MEASURED = {"image_size": 64, "train_images": 150, "val_images": 10, "testA_images": 30, "testB_images": 30}


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthref") / "synthref"
    ensure_synthref(root, MEASURED)
    return root


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    generate(tmp_path / "a", SynthRefParams.from_config(TINY_SYNTHREF), workers=1)
    generate(tmp_path / "b", SynthRefParams.from_config(TINY_SYNTHREF), workers=1)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    generate(tmp_path / "c", SynthRefParams.from_config({**TINY_SYNTHREF, "seed": 1}), workers=1)
    assert (tmp_path / "a/instances.json").read_bytes() != (tmp_path / "c/instances.json").read_bytes()


def test_worker_count_does_not_change_the_output(tmp_path):
    params = SynthRefParams.from_config({**TINY_SYNTHREF, "train_images": 200})
    generate(tmp_path / "one", params, workers=1)
    generate(tmp_path / "two", params, workers=2)
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


def test_constraints(measured):
    stats = json.loads((measured / "stats.json").read_text())
    assert stats["min_objects"] >= 3 and stats["max_objects"] <= 6 and stats["objects_per_image"] >= 3.5
    assert stats["ambiguity_ratio"] >= 0.5
    assert stats["relation_ratio"] >= 0.3
    refs = pickle.loads((measured / "refs(unc).p").read_bytes())
    kinds = {split: {s["kind"] for r in refs if r["split"] == split for s in r["sentences"]}
             for split in ("train", "testA", "testB")}
    assert kinds["testB"] == {"attribute"} and "attribute" not in kinds["testA"]
    assert {"attribute", "extreme", "pair", "size"} <= kinds["train"]
    assert all(1 <= len(r["sentences"]) <= 3 for r in refs)
    instances = json.loads((measured / "instances.json").read_text())
    assert len({a["attributes"]["shape"] for a in instances["annotations"]}) >= 5
    assert len({a["attributes"]["colour"] for a in instances["annotations"]}) >= 6
    assert {a["attributes"]["size"] for a in instances["annotations"]} == {"small", "large"}


def test_ratios_are_measured_from_the_files(measured):
    """Recount objects per image, ambiguity and relation ratios from refs + instances, not stats.json."""
    refs = pickle.loads((measured / "refs(unc).p").read_bytes())
    anns = json.loads((measured / "instances.json").read_text())["annotations"]
    by_image: dict = {}
    for a in anns:
        by_image.setdefault(a["image_id"], []).append(a)
    assert np.mean([len(v) for v in by_image.values()]) >= 3.5
    ambiguous = 0
    for r in refs:
        target = next(a for a in by_image[r["image_id"]] if a["id"] == r["ann_id"])["attributes"]
        ambiguous += any(a["id"] != r["ann_id"] and (a["attributes"]["colour"] == target["colour"]
                                                      or a["attributes"]["shape"] == target["shape"])
                         for a in by_image[r["image_id"]])
    assert ambiguous / len(refs) >= 0.5
    sentences = [s for r in refs for s in r["sentences"]]
    assert sum(s["kind"] != "attribute" for s in sentences) / len(sentences) >= 0.3


def _words_match(text: str, attributes: dict) -> bool:
    words = set(text.lower().rstrip(".").split())
    colour_ok = not (words & set(COLOURS)) or attributes["colour"] in words
    shape_ok = not (words & {w for ws in SHAPE_WORDS.values() for w in ws}) or \
        bool(words & set(SHAPE_WORDS[attributes["shape"]]))
    size_words = {w for ws in SIZE_WORDS.values() for w in ws}
    size_ok = not (words & size_words) or bool(words & set(SIZE_WORDS[attributes["size"]]))
    return colour_ok and shape_ok and size_ok


def test_attribute_expressions_name_exactly_their_target(measured):
    refs = pickle.loads((measured / "refs(unc).p").read_bytes())
    anns = json.loads((measured / "instances.json").read_text())["annotations"]
    for r in refs:
        objects = [a for a in anns if a["image_id"] == r["image_id"]]
        for s in r["sentences"]:
            if s["kind"] == "attribute":
                matching = [a["id"] for a in objects if _words_match(s["sent"], a["attributes"])]
                assert matching == [r["ann_id"]], s["sent"]


def test_masks_are_exact_visible_regions(measured):
    """Decoded polygons equal the visible regions: disjoint, and each object's colour where it is."""
    ann = ReferAnnotations(measured, "unc")
    params = SynthRefParams.from_config(MEASURED)
    for image_index in range(5):
        scene = generate_image(params, "train", image_index)
        image_id = image_index + 1
        masks = [ann.coco.annToMask(a).astype(bool) for a in ann.coco.imgToAnns[image_id]]
        assert [m.tolist() for m in masks] == [o.visible.tolist() for o in scene["objects"]]
        assert np.stack(masks).sum(0).max() == 1  # z-order: no pixel belongs to two objects
        pixels = np.asarray(Image.open(measured / "images" / ann.image(image_id)["file_name"]))
        assert np.array_equal(pixels, scene["pixels"])


def test_trace_outline_round_trips_and_refuses_holes():
    ring = np.zeros((12, 12), bool)
    ring[2:10, 2:10] = True
    assert np.array_equal(rasterize(trace_outline(ring), 12), ring)
    diagonal = np.eye(6, dtype=bool)  # pixels touching only at corners: one 8-connected piece
    assert np.array_equal(rasterize(trace_outline(diagonal), 6), diagonal)
    ring[4:6, 4:6] = False  # a hole
    assert trace_outline(ring) is None
    two = np.zeros((6, 6), bool)
    two[0, 0] = two[4, 4] = True
    assert trace_outline(two) is None


def test_loads_through_the_refer_reader(tiny_synthref_dir):
    ann = ReferAnnotations(tiny_synthref_dir, "unc")
    assert ann.split_names == ["testA", "testB", "train", "val"]
    ref = ann.in_split("val")[0]
    assert ann.mask(ref).shape == (32, 32) and ann.mask(ref).any()
    assert (tiny_synthref_dir / "images" / ann.image(ref.image_id)["file_name"]).is_file()


def _digest(root):
    """Every file under `root` with its size and modification time: what "untouched" means here."""
    return {p.relative_to(root): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_each_parameter_set_has_its_own_folder(tmp_path):
    assert synthref_dir(tmp_path) == synthref_dir(tmp_path, {}) == tmp_path / "synthref"  # the defaults
    other = synthref_dir(tmp_path, TINY_SYNTHREF)
    assert other == tmp_path / f"synthref-{SynthRefParams.from_config(TINY_SYNTHREF).fingerprint()}"
    assert synthref_dir(tmp_path, {**TINY_SYNTHREF, "train_images": 10}) != other


def test_generated_once_and_never_replaced_in_place(tmp_path):
    root = tmp_path / "synthref"
    ensure_synthref(root, TINY_SYNTHREF)
    before = _digest(root)
    ensure_synthref(root, TINY_SYNTHREF)  # same parameters: nothing happens
    assert _digest(root) == before
    with pytest.raises(RisbenchError, match="other parameters[\\s\\S]*never replaces a dataset"):
        ensure_synthref(root, {**TINY_SYNTHREF, "train_images": 10})
    assert _digest(root) == before  # the folder a run may be reading is untouched
    other = ensure_synthref(synthref_dir(tmp_path, {**TINY_SYNTHREF, "train_images": 10}),
                            {**TINY_SYNTHREF, "train_images": 10})
    assert json.loads((other / "stats.json").read_text())["images"] == 28 and _digest(root) == before
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["synthref", other.name]


def test_find_synthref_never_writes(tmp_path):
    with pytest.raises(MissingFileError, match="only reads"):
        find_synthref(tmp_path / "synthref", TINY_SYNTHREF)
    assert list(tmp_path.iterdir()) == []
    ensure_synthref(tmp_path / "synthref", TINY_SYNTHREF)
    before = _digest(tmp_path)
    assert find_synthref(tmp_path / "synthref", TINY_SYNTHREF) == tmp_path / "synthref"
    with pytest.raises(RisbenchError, match="other parameters"):
        find_synthref(tmp_path / "synthref", {**TINY_SYNTHREF, "seed": 3})
    assert _digest(tmp_path) == before


def test_concurrent_generation_yields_one_complete_copy(tmp_path, monkeypatch):
    """Three generators at once: one generates under the lock, the others wait and find it done."""
    import risbench.data.synthref as synthref

    calls = []
    real_generate = synthref.generate
    monkeypatch.setattr(synthref, "generate", lambda *a, **k: calls.append(1) or real_generate(*a, **k))
    root, errors = tmp_path / "synthref", []

    def run():
        try:
            ensure_synthref(root, TINY_SYNTHREF)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(calls) == 1
    assert len(list((root / "images").iterdir())) == 38
    assert sorted(p.name for p in tmp_path.iterdir()) == [".synthref.lock", "synthref"]  # no temporary leftovers


def test_refuses_to_replace_a_foreign_directory(tmp_path):
    (tmp_path / "synthref").mkdir()
    (tmp_path / "synthref" / "mine.txt").write_text("keep me")
    with pytest.raises(RisbenchError, match="not replaced"):
        ensure_synthref(tmp_path / "synthref", TINY_SYNTHREF)
    assert (tmp_path / "synthref" / "mine.txt").read_text() == "keep me"


def test_unknown_parameter_is_a_clear_error():
    with pytest.raises(RisbenchError, match="train_imgs"):
        SynthRefParams.from_config({"train_imgs": 3})
    with pytest.raises(RisbenchError, match="colour"):
        SynthRefParams.from_config({"colours": ["red", "mauve"]})


def test_rle_of_polygons_is_what_the_loader_sees(tiny_synthref_dir):
    instances = json.loads((tiny_synthref_dir / "instances.json").read_text())
    for a in instances["annotations"][:20]:
        rle = mask_utils.frPyObjects(a["segmentation"], 32, 32)
        assert int(mask_utils.area(mask_utils.merge(rle))) == a["area"]


DIRECTION_WORDS = {"left": {"leftmost", "left"}, "right": {"rightmost", "right"},
                   "top": {"topmost", "highest", "top", "upper"}, "bottom": {"lowest", "bottom", "lower"}}
PAIR_PHRASES = {" to the left of ": "left", " left of ": "left", " to the right of ": "right",
                " right of ": "right", " above ": "top", " over ": "top", " below ": "bottom",
                " under ": "bottom", " beneath ": "bottom"}


def _toward(direction: str, centroid) -> float:
    x, y = centroid
    return {"left": -x, "right": x, "top": -y, "bottom": y}[direction]


def test_spatial_expressions_single_out_their_target(measured):
    """Independent reading of extreme and pair expressions from the words and the decoded masks."""
    ann = ReferAnnotations(measured, "unc")
    refs = pickle.loads((measured / "refs(unc).p").read_bytes())
    checked = 0
    for r in refs:
        objects = ann.coco.imgToAnns[r["image_id"]]
        centroid = {}
        for a in objects:
            ys, xs = np.nonzero(ann.coco.annToMask(a))
            centroid[a["id"]] = (xs.mean(), ys.mean())
        for s in r["sentences"]:
            text = s["sent"]
            if s["kind"] == "extreme":
                direction = next(d for d, words in DIRECTION_WORDS.items() if words & set(text.split()))
                members = [a["id"] for a in objects if _words_match(text, a["attributes"])]
                best = max(members, key=lambda i: _toward(direction, centroid[i]))
                assert len(members) >= 2 and best == r["ann_id"], text
            elif s["kind"] == "pair":
                phrase = next(p for p in PAIR_PHRASES if p in text)
                head, landmark_words = text.split(phrase)
                landmarks = [a["id"] for a in objects if _words_match(landmark_words, a["attributes"])]
                assert len(landmarks) == 1, text
                members = [a["id"] for a in objects if _words_match(head, a["attributes"]) and a["id"] != landmarks[0]]
                direction = PAIR_PHRASES[phrase]
                beyond = [i for i in members
                          if _toward(direction, centroid[i]) > _toward(direction, centroid[landmarks[0]])]
                assert len(members) >= 2 and beyond == [r["ann_id"]], text
            else:
                continue
            checked += 1
    assert checked > 50
