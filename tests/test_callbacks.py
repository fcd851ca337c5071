"""The harness callbacks in tiny runs: validation overlays for every logger, the model summary, the
end-of-run line, and ``mode=eval eval.overlays=K`` (worst and best expressions)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from risbench.data.synthref import ensure_synthref
from risbench.report.overlays import evenly_spaced, panel, worst_and_best
from tests.helpers import ground_truth_masks, run_cli

# a small 64 px synthref (the default model's tiny size); 2 epochs of one step, 3 overlays per epoch
SYNTHREF = {"image_size": 64, "train_images": 20, "val_images": 6, "testA_images": 4, "testB_images": 4}
OVERLAYS = 3
EPOCHS = 2


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("callbacks_data")
    ensure_synthref(root / "synthref", SYNTHREF)
    return root


def data_args(data_dir: Path) -> list[str]:
    synthref = [f"data.synthref.{key}={value}" for key, value in SYNTHREF.items()]
    return [f"paths.data_dir={data_dir}", *synthref, "data.num_workers=0"]


def train(tmp_path: Path, data_dir: Path, *args: str):
    done = run_cli([*data_args(data_dir), f"trainer.max_steps={EPOCHS}",
                    "trainer.limit_train_batches=1", f"callbacks.overlays.num_samples={OVERLAYS}", *args],
                   cwd=tmp_path, timeout=600, env={"WANDB_API_KEY": "", "WANDB_MODE": "", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "default").iterdir()
    return run, done


def test_samples_are_fixed_and_spread_over_the_split():
    assert evenly_spaced(3, 10) == [0, 4, 9] == evenly_spaced(3, 10)
    assert evenly_spaced(8, 5) == [0, 1, 2, 3, 4] and evenly_spaced(0, 5) == [] and evenly_spaced(4, 0) == []


def test_ranking_takes_the_extremes_with_ties_broken_by_id():
    scores = [(5, 0.5), (1, 0.0), (2, 0.9), (3, 0.0), (4, 0.9)]
    assert worst_and_best(scores, 2) == ([(1, 0.0), (3, 0.0)], [(2, 0.9), (4, 0.9)])


def test_panel_shows_image_truth_and_prediction_side_by_side():
    image = Image.new("RGB", (32, 32), (100, 100, 100))
    truth, prediction = np.zeros((32, 32), bool), np.zeros((32, 32), bool)
    truth[:16], prediction[16:] = True, True
    picture = panel(image, truth, prediction, "the grey square")
    scale = 4  # 32 px upscaled to at least 128 px high
    assert picture.height > 32 * scale and picture.width == 3 * 32 * scale + 2 * 4
    pixels = np.asarray(picture)
    assert tuple(pixels[0, 0]) == (100, 100, 100)  # the image itself
    left = 32 * scale + 4
    assert pixels[0, left, 1] > pixels[0, left, 0]  # ground truth tinted green at the top ...
    assert tuple(pixels[127, left]) == (100, 100, 100)  # ... and not at the bottom
    right = 2 * (32 * scale + 4)
    assert pixels[127, right, 0] > pixels[127, right, 1] and tuple(pixels[0, right]) == (100, 100, 100)


@pytest.mark.slow
def test_csv_logger_gets_the_overlays_as_pngs_every_validation_epoch(tmp_path, data_dir):
    run, done = train(tmp_path, data_dir, "logger=csv")
    epochs = sorted((run / "overlays").iterdir())
    assert [e.name for e in epochs] == [f"epoch{e:03d}" for e in range(EPOCHS)]
    names = [sorted(p.name for p in epoch.glob("*.png")) for epoch in epochs]
    assert len(names[0]) == OVERLAYS and names[0] == names[1]  # the same samples every epoch
    picture = Image.open(epochs[0] / names[0][0])
    assert picture.width == 3 * 128 + 2 * 4  # image | ground truth | prediction, 64 px shown at 128
    # the model summary at the start, and the end-of-run line naming the folder, the checkpoint and the report
    assert "Total params" in done.stdout and "net.base" in done.stdout
    line = next(line for line in done.stdout.splitlines() if line.startswith("run folder: "))
    assert f"run folder: {run}" in line and re.search(r"best checkpoint: \S+/checkpoints/\S+\.ckpt", line)
    assert f"report: python -m risbench.report {run}" in line


@pytest.mark.slow
def test_tensorboard_gets_the_overlays_every_validation_epoch(tmp_path, data_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = train(tmp_path, data_dir, "logger=tensorboard")
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = sorted(tag for tag in events.Tags()["images"] if tag.startswith("val_overlays/"))
    assert tags == [f"val_overlays/{k}" for k in range(OVERLAYS)]
    steps = [[image.step for image in events.Images(tag)] for tag in tags]
    assert all(len(s) == EPOCHS for s in steps) and steps[0] == [1, 2]  # one per validation epoch
    assert not (run / "overlays").exists()  # no CSV logger: no PNG copies


@pytest.mark.slow
def test_wandb_gets_the_overlays_every_validation_epoch_offline(tmp_path, data_dir):
    run, _ = train(tmp_path, data_dir, "logger=wandb")
    (offline,) = (run / "wandb").glob("offline-run-*")
    images = sorted((offline / "files" / "media" / "images").glob("val_overlays_*.png"))
    by_step = {}  # W&B's own step counter names the media files: one log_image call per validation epoch
    for image in images:
        by_step.setdefault(int(image.name.split("_")[2]), []).append(image)
    assert len(by_step) == EPOCHS and all(len(v) == OVERLAYS for v in by_step.values())


@pytest.mark.slow
def test_eval_overlays_are_the_worst_and_best_expressions(tmp_path, data_dir):
    run, _ = train(tmp_path, data_dir, "logger=csv")
    done = run_cli([*data_args(data_dir), "mode=eval", "name=eval",
                    f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "eval.overlays=2", "eval.save_predictions=true"],
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (evaluation,) = (tmp_path / "outputs" / "eval").iterdir()
    results = json.loads((evaluation / "results.json").read_text())
    truths = ground_truth_masks(data_dir / "synthref")
    for split in ("val", "testA", "testB"):
        # every expression's IoU, independently from the saved predictions
        ious = []
        for record in json.loads((evaluation / "predictions" / f"{split}.json").read_text()):
            pred = mask_utils.decode({"size": record["size"], "counts": record["counts"].encode()}).astype(bool)
            truth = truths[record["ref_id"]]
            union = np.logical_or(pred, truth).sum()
            ious.append((record["sent_id"], float(np.logical_and(pred, truth).sum() / union) if union else 0.0))
        worst, best = worst_and_best(ious, 2)
        files = sorted((evaluation / "overlays" / split).glob("*.png"))
        assert [f.name for f in files] == sorted(
            [f"best_{r:02d}_iou{iou:.3f}_sent{s}.png" for r, (s, iou) in enumerate(best, 1)]
            + [f"worst_{r:02d}_iou{iou:.3f}_sent{s}.png" for r, (s, iou) in enumerate(worst, 1)])
        assert {f"overlays/{split}/{f.name}" for f in files} <= set(results["overlays"])
