"""Real data as researchers keep it: the refer toolkit's own folder read as it is, checkpoints that carry their
tokenizer and configs, published splits, exact metrics, many predictions at once."""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from risbench.data.synthref import synthref_dir
from tests.fixtures import IMAGES, SMALL_SYNTHREF, file_name, image_dir_of, make_refer
from tests.reliability.probes import digest, module, one_message, risbench


def truths(ann_dir: Path, split_by: str) -> dict[int, np.ndarray]:
    """ref_id -> mask, straight from the refer files with pycocotools: polygons, compressed and count-list RLE."""
    instances = json.loads((ann_dir / "instances.json").read_text())
    images = {image["id"]: image for image in instances["images"]}
    anns = {ann["id"]: ann for ann in instances["annotations"]}
    with open(ann_dir / f"refs({split_by}).p", "rb") as handle:
        refs = pickle.load(handle)  # the test's own file
    masks = {}
    for ref in refs:
        ann, image = anns[ref["ann_id"]], images[ref["image_id"]]
        h, w = image["height"], image["width"]
        parts = []
        for part in ann["segmentation"]:
            if isinstance(part, dict) and isinstance(part["counts"], str):
                parts.append(mask_utils.decode({"size": part["size"], "counts": part["counts"].encode()}))
            else:
                rle = mask_utils.frPyObjects([part] if isinstance(part, dict) else [part], h, w)
                parts.append(mask_utils.decode(rle)[:, :, 0])
        masks[ref["ref_id"]] = np.max(parts, axis=0).astype(bool)
    return masks


def exact_metrics(predictions: list[dict], masks: dict[int, np.ndarray]) -> dict[str, float]:
    """oIoU and mIoU of saved RLE predictions in float64 from integer counts (independent of risbench)."""
    inter = union = 0
    ious = []
    for record in predictions:
        pred = mask_utils.decode({"size": record["size"], "counts": record["counts"].encode()}).astype(bool)
        truth = masks[record["ref_id"]]
        i, u = int(np.logical_and(pred, truth).sum()), int(np.logical_or(pred, truth).sum())
        inter, union = inter + i, union + u
        ious.append(i / u if u else 0.0)
    return {"oIoU": inter / union if union else 0.0, "mIoU": math.fsum(ious) / len(ious), "n": float(len(ious))}


@pytest.fixture(scope="module")
def refer_toolkit(tmp_path_factory) -> Path:
    """A refer toolkit data/ folder as the toolkit keeps it: refcoco (polygons, unc) and refclef (RLE,
    berkeley) with refer's key names, COCO images under images/mscoco/images/train2014/."""
    root = tmp_path_factory.mktemp("refer_toolkit") / "data"
    make_refer(root, "refcoco", "unc", layout="refer")
    make_refer(root, "refclef", "berkeley", layout="refer")
    assert sorted(p.name for p in root.iterdir()) == ["images", "refclef", "refcoco"]
    return root


def test_data_check_reads_the_refer_toolkit_folder(tmp_path, refer_toolkit):
    before = digest(refer_toolkit)
    result = module(tmp_path, "risbench.data", "check", "data=referit", f"paths.refer_root={refer_toolkit}")
    one_message(result, 0, f"layout: the refer toolkit's data/ folder (paths.refer_root={refer_toolkit})",
                f"annotations: {refer_toolkit}/refclef", f"images:      {refer_toolkit}/images/saiapr_tc-12", "OK")
    result = module(tmp_path, "risbench.data", "check", "data=refcoco", f"paths.refer_root={refer_toolkit}")
    one_message(result, 1, f"images:      {refer_toolkit}/images/mscoco/images/train2014", "2 != 42404  WRONG")
    assert "missing:" not in result.stdout  # every image found where the toolkit keeps it
    assert digest(refer_toolkit) == before


@pytest.mark.slow
@pytest.mark.parametrize("data, dataset, split_by", [("refcoco", "refcoco", "unc"), ("referit", "refclef", "berkeley")])
def test_eval_through_refer_root_matches_an_independent_float64_computation(tmp_path, trained_tiny, refer_toolkit,
                                                                             data, dataset, split_by):
    """A checkpoint trained on synthref, evaluated on the refer toolkit's folder with nothing moved: the
    figures in results.json equal an independent pycocotools/float64 computation exactly."""
    _, run = trained_tiny
    before = digest(refer_toolkit)
    result = risbench(tmp_path, tmp_path / "unused", "mode=eval", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                      f"data={data}", f"paths.refer_root={refer_toolkit}", "eval.save_predictions=true",
                      small_data=False)
    one_message(result, 0)
    (out,) = (tmp_path / "outputs" / "default").iterdir()
    summary = json.loads((out / "results.json").read_text())
    masks = truths(refer_toolkit / dataset, split_by)
    expected_n = {"val": 3, "testA": 1, "testB": 2} if split_by == "unc" else {"val": 3, "test": 3}
    assert {split: values["n"] for split, values in summary["metrics"].items()} == expected_n
    for split, values in summary["metrics"].items():
        independent = exact_metrics(json.loads((out / "predictions" / f"{split}.json").read_text()), masks)
        assert (values["oIoU"], values["mIoU"], values["n"]) == (independent["oIoU"], independent["mIoU"],
                                                                 independent["n"])  # exact, float64
    assert set(summary["text_coverage"]) == set(expected_n)
    assert "model" in summary["from_checkpoint"] and "data" not in summary["from_checkpoint"]
    assert digest(refer_toolkit) == before


def test_predict_many_pairs_from_a_file(tmp_path, trained_tiny, refer_toolkit):
    _, run = trained_tiny
    images = image_dir_of(refer_toolkit, "refcoco", "refer")
    pairs = tmp_path / "pairs.csv"
    with open(pairs, "w", newline="") as f:  # CSV quoting: commas, quotes and parentheses in expressions
        writer = csv.writer(f)
        writer.writerow(["image", "text"])
        for image_id, text in ((1, 'the "big" box, on the left'), (2, "tall box (middle)"), (3, "top left square")):
            writer.writerow([os.path.relpath(images / file_name("refcoco", image_id), tmp_path), text])
    before = digest(refer_toolkit)
    result = risbench(tmp_path, tmp_path / "unused", "mode=predict", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                      f"predict.inputs={pairs}", "predict.batch_size=2", small_data=False)
    one_message(result, 0)
    (out,) = (tmp_path / "outputs" / "default").iterdir()
    rows = json.loads((out / "predictions.json").read_text())
    assert [row["text"] for row in rows] == ['the "big" box, on the left', "tall box (middle)", "top left square"]
    for image_id, row in zip((1, 2, 3), rows):
        mask = Image.open(out / row["mask"])
        assert mask.size == IMAGES[image_id] and set(mask.getdata()) <= {0, 255}
        assert row["foreground_pixels"] == sum(v == 255 for v in mask.getdata())
        assert (out / row["overlay"]).is_file()
    assert json.loads((out / "results.json").read_text())["predictions"] == rows
    assert digest(refer_toolkit) == before


def test_predict_inputs_are_checked_before_anything_runs(tmp_path, trained_tiny):
    _, run = trained_tiny
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{"image": "nowhere.jpg", "text": "a box"}, {"image": "pairs.json", "text": " "}]))
    result = risbench(tmp_path, tmp_path / "unused", "mode=predict", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                      f"predict.inputs={pairs}", small_data=False)
    one_message(result, 2, "has 2 problem(s)", f"row 1: image not found: {tmp_path / 'nowhere.jpg'}",
                "row 2: the expression is empty")


def test_predict_text_with_special_characters_quoted_for_hydra(tmp_path, trained_tiny, refer_toolkit):
    _, run = trained_tiny
    image = image_dir_of(refer_toolkit, "refcoco", "refer") / file_name("refcoco", 1)
    ckpt = f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"
    text = "the (big) bear, left!"
    # what the shell passes for 'predict.text="the (big) bear, left!"'
    result = risbench(tmp_path, tmp_path / "unused", "mode=predict", ckpt, f"predict.image={image}",
                      f'predict.text="{text}"', small_data=False)
    one_message(result, 0)
    (out,) = (tmp_path / "outputs" / "default").iterdir()
    assert json.loads((out / "results.json").read_text())["text"] == text
    assert Image.open(out / "mask.png").size == IMAGES[1]


def test_referit_without_its_train_split_fails(tmp_path):
    ann_dir = make_refer(tmp_path / "data", "refclef", "berkeley")
    refs = [r for r in pickle.loads((ann_dir / "refs(berkeley).p").read_bytes()) if r["split"] != "train"]
    (ann_dir / "refs(berkeley).p").write_bytes(pickle.dumps(refs))
    result = module(tmp_path, "risbench.data", "check", "data=referit", f"paths.data_dir={tmp_path / 'data'}")
    one_message(result, 1, "train    MISSING from refs(berkeley).p (a published split)", "FAILED")


@pytest.mark.slow
def test_a_checkpoint_evaluates_from_itself_after_the_data_moved(tmp_path):
    """Train a tiny model, move the data folder elsewhere, evaluate with only ckpt_path and the new data path;
    then with a configured tokenizer that differs from the checkpoint's (it says so, and uses its own)."""
    first = tmp_path / "first_data"
    one_message(risbench(tmp_path, first, "trainer.max_steps=2", f"hydra.run.dir={tmp_path / 'train'}"), 0)
    trained = json.loads((tmp_path / "train" / "results.json").read_text())
    moved = tmp_path / "elsewhere" / "data"
    moved.parent.mkdir()
    shutil.move(first, moved)
    ckpt = f"ckpt_path={tmp_path / 'train' / 'checkpoints' / 'last.ckpt'}"
    result = risbench(tmp_path, moved, "mode=eval", ckpt, f"hydra.run.dir={tmp_path / 'eval'}", small_data=False)
    one_message(result, 0)
    evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert evaluated["metrics"] == trained["metrics"]
    assert {"data", "model", "tokenizer files"} <= set(evaluated["from_checkpoint"])
    assert "differs" not in result.stderr

    # the configured tokenizer under the new data folder is another one: said, and the checkpoint's is used
    vocab = synthref_dir(moved, SMALL_SYNTHREF) / "tokenizer"
    lines = (vocab / "vocab.txt").read_text().splitlines()
    lines[5], lines[6] = lines[6], lines[5]
    (vocab / "vocab.txt").write_text("\n".join(lines) + "\n")
    (vocab / "tokenizer.json").unlink()
    result = risbench(tmp_path, moved, "mode=eval", ckpt, f"hydra.run.dir={tmp_path / 'eval2'}", small_data=False)
    one_message(result, 0, "the checkpoint's tokenizer differs from the configured one", "using the checkpoint's own")
    assert json.loads((tmp_path / "eval2" / "results.json").read_text())["metrics"] == trained["metrics"]
