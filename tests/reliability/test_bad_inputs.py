"""The bad-input matrix: every probe of the safety issue, through the command line, as a careless or unfriendly
user would run it. Each asserts the exit status, one message with no traceback, and that no earlier file
changed (sha256 of every file before and after); the malicious-file probes assert their marker never appears.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from risbench.data.synthref import ensure_synthref, synthref_dir
from tests.fixtures import SMALL_SYNTHREF, make_refer
from tests.helpers import run_cli
from tests.reliability.probes import digest, module, one_message, risbench


class TouchesMarker:
    """Unpickling this calls ``os.system("touch MARKER")``: what a malicious data or checkpoint file holds."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def small_synthref(data_dir: Path) -> Path:
    """The CLI tests' small synthref under the shared data folder (generated once, by whoever needs it first)."""
    return ensure_synthref(synthref_dir(data_dir, SMALL_SYNTHREF), SMALL_SYNTHREF)


def test_the_payload_runs_when_unpickled_plainly(tmp_path):
    """The malicious files below do run their command under a plain pickle.load: their tests prove something."""
    pickle.loads(pickle.dumps(TouchesMarker(tmp_path / "pwned")))
    assert (tmp_path / "pwned").exists()


# ---------------------------------------------------------------------------------------------- no code from files
def _poisoned_refcoco(root: Path, marker: Path) -> Path:
    ann_dir = make_refer(root, "refcoco", "unc")
    refs = pickle.loads((ann_dir / "refs(unc).p").read_bytes())  # the test's own file
    refs[0]["sentences"][0]["raw"] = TouchesMarker(marker)
    (ann_dir / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    return ann_dir


def test_a_refs_pickle_that_runs_a_command_is_refused_by_data_check(tmp_path):
    marker = tmp_path / "pwned"
    ann_dir = _poisoned_refcoco(tmp_path / "data", marker)
    result = module(tmp_path, "risbench.data", "check", "data=refcoco", f"paths.data_dir={tmp_path / 'data'}")
    one_message(result, 1, f"refused to read {ann_dir / 'refs(unc).p'}: it asks for the global posix.system")
    assert not marker.exists()


def test_a_refs_pickle_that_runs_a_command_is_refused_by_training(tmp_path, data_dir):
    marker = tmp_path / "pwned"
    ann_dir = _poisoned_refcoco(tmp_path / "data", marker)
    tokenizer = small_synthref(data_dir) / "tokenizer"
    result = risbench(tmp_path, tmp_path / "data", "data=refcoco", f"tokenizer.path={tokenizer}", "trainer.max_steps=1",
                      small_data=False)
    one_message(result, 2, "refused to read", "posix.system", str(ann_dir / "refs(unc).p"))
    assert not marker.exists()


def _evil_file(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {}, "payload": TouchesMarker(marker)}, path)  # runs only in an unchecked load
    return path


@pytest.mark.slow
def test_a_checkpoint_naming_a_malicious_best_model_is_never_loaded(tmp_path, trained_tiny, data_dir):
    """Resume (ckpt_path=last) from a checkpoint that loads safely but whose callback state points the best
    model at a malicious file: risbench tests a checkpoint of its own run folder, never that path."""
    _, run = trained_tiny
    marker, evil = tmp_path / "pwned", _evil_file(tmp_path / "evil.ckpt", tmp_path / "pwned")
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    for state in checkpoint["callbacks"].values():
        if "best_model_path" in state:
            state.update(best_model_path=str(evil), last_model_path=str(evil), kth_best_model_path=str(evil),
                         best_k_models={str(evil): torch.tensor(1.0)}, best_model_score=torch.tensor(1.0))
    earlier = tmp_path / "outputs" / "poison" / "earlier" / "checkpoints"
    earlier.mkdir(parents=True)
    torch.save(checkpoint, earlier / "last.ckpt")
    before = digest(tmp_path / "outputs")
    result = risbench(tmp_path, data_dir, "name=poison", "ckpt_path=last", "trainer.max_steps=3")
    one_message(result, 0)
    assert not marker.exists()
    (new_run,) = [p for p in (tmp_path / "outputs" / "poison").iterdir() if p.name != "earlier"]
    summary = json.loads((new_run / "results.json").read_text())
    assert summary["resumed_from"] == str(earlier / "last.ckpt")
    assert Path(summary["checkpoint"]).parent == new_run / "checkpoints"  # this run's own file
    assert {k: v for k, v in digest(tmp_path / "outputs").items() if k.startswith("poison/earlier")} == before


# the reason torch gives, kept in the message; and torch's advice around it, which is left out
REFUSED_GLOBAL = "unsupported GLOBAL posix.system"
TORCH_ADVICE = "`weights_only` set to `False`"


@pytest.mark.parametrize("args", [["mode=eval"], ["trainer.max_steps=1"]])
def test_a_checkpoint_that_runs_code_when_loaded_is_refused(tmp_path, data_dir, args):
    marker, evil = tmp_path / "pwned", _evil_file(tmp_path / "evil.ckpt", tmp_path / "pwned")
    result = risbench(tmp_path, data_dir, *args, f"ckpt_path={evil}")
    one_message(result, 2, f"checkpoint {evil} could not be read safely", REFUSED_GLOBAL)
    assert TORCH_ADVICE not in result.stderr and not marker.exists()


def test_a_released_checkpoint_that_runs_code_is_refused_by_the_converter(tmp_path):
    marker, evil = tmp_path / "pwned", _evil_file(tmp_path / "lavt.pth", tmp_path / "pwned")
    result = module(tmp_path, "risbench.convert", "lavt-official", str(evil), str(tmp_path / "out.ckpt"))
    one_message(result, 2, "could not be read safely", REFUSED_GLOBAL)
    assert TORCH_ADVICE not in result.stderr and not marker.exists() and not (tmp_path / "out.ckpt").exists()


# ------------------------------------------------------------------------------- datasets and runs never replaced
def test_data_check_with_other_synthref_parameters_touches_nothing(tmp_path, data_dir):
    root = small_synthref(data_dir)
    before, folders = digest(root), sorted(p.name for p in data_dir.iterdir())
    other = [f"data.synthref.{k}={v}" for k, v in {**SMALL_SYNTHREF, "train_images": 70, "seed": 4}.items()]
    result = module(tmp_path, "risbench.data", "check", "data=synthref", f"paths.data_dir={data_dir}", *other)
    one_message(result, 1, "synthref not found", "only reads")
    # and pointed straight at the folder a run is reading: refused, never regenerated
    result = module(tmp_path, "risbench.data", "check", "data=synthref", f"paths.synthref_dir={root}", *other)
    one_message(result, 1, "holds synthref generated with other parameters")
    assert digest(root) == before and sorted(p.name for p in data_dir.iterdir()) == folders


def test_the_same_run_folder_twice_is_refused_before_anything_is_written(tmp_path, trained_tiny, data_dir):
    _, run = trained_tiny
    before = digest(run)
    assert {".hydra/config.yaml", "checkpoints/last.ckpt", "csv/metrics.csv", "results.json"} <= set(before)
    result = risbench(tmp_path, data_dir, "trainer.max_steps=2", f"hydra.run.dir={run}")
    one_message(result, 2, f"the run folder {run} (hydra.run.dir) already holds", "overwrite=true")
    assert digest(run) == before


def test_overwrite_true_writes_over_a_used_run_folder(tmp_path):
    fixed = tmp_path / "fixed"
    args = ["mode=profile", "tokenizer.vocab_size=64", f"hydra.run.dir={fixed}"]
    one_message(risbench(tmp_path, tmp_path / "no_data", *args, small_data=False), 0)
    one_message(risbench(tmp_path, tmp_path / "no_data", *args, "overwrite=true", small_data=False), 0)
    assert json.loads((fixed / "results.json").read_text())["overrides"][-1] == "overwrite=true"


def test_a_fixed_sweep_folder_twice_is_refused(tmp_path):
    args = ["-m", "mode=profile", "tokenizer.vocab_size=64", f"hydra.sweep.dir={tmp_path / 'sweep'}", "seed=1"]
    one_message(risbench(tmp_path, tmp_path / "no_data", *args, small_data=False), 0)
    before = digest(tmp_path / "sweep")
    one_message(risbench(tmp_path, tmp_path / "no_data", *args, small_data=False), 2, "(hydra.sweep.dir) already holds")
    assert digest(tmp_path / "sweep") == before


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_a_run_folder_under_a_file_is_one_message(tmp_path, key):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep\n")
    sweep = ["-m", "seed=1"] if key == "hydra.sweep.dir" else []
    result = risbench(tmp_path, tmp_path / "no_data", *sweep, "mode=profile", "tokenizer.vocab_size=64",
                      f"{key}={blocker / 'run'}", small_data=False)
    one_message(result, 2, f"{key}={blocker / 'run'} cannot be written: {blocker} is a file, not a folder")
    assert blocker.read_text() == "keep\n"


# ------------------------------------------------------------------------------------------- one clear message
@pytest.mark.parametrize("args, message", [
    (["model=restr", "data.img_size=33"], "data.img_size=33 (model.img_size) must be a multiple of ReSTR's patch size 4"),
    (["model.base.gate_init=ones"], "must be one of ['lavt', 'zero'], got 'ones'"),
    (["model.head.iterations=-1"], "model.head.iterations must be >= 0 (0 = the base's own classifier), got -1"),
    (["model.head.structure=d12x"], "model.head.structure must look like d128-512 or d128-512x2"),
    (["eval.ckpt_select=worst"], "eval.ckpt_select must be 'best' or 'last', got 'worst'"),
    (["data.batch_size=0"], "data.batch_size must be a whole number >= 1, got 0"),
    (["data.eval_batch_size=0"], "data.eval_batch_size must be a whole number >= 1, got 0"),
    (["data.max_train_samples=0"], "data.max_train_samples must be a whole number >= 1, got 0"),
])
def test_errors_inside_constructors_are_one_message(tmp_path, data_dir, args, message):
    one_message(risbench(tmp_path, data_dir, *args, "trainer.max_steps=1"), 2, message)
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("args, message", [
    (["experiment=nope"], "Could not find 'experiment/nope'"),
    (["data.root=/data"], "Key 'root' is not in struct\n    full_key: data.root"),
    (["trainer.max_epochs=[1"], "no viable alternative at input '[1'"),
    (["-m", "foo=1,2"], "Could not override 'foo'"),
])
def test_a_config_that_does_not_compose_is_one_message(tmp_path, args, message):
    one_message(risbench(tmp_path, tmp_path / "data", *args, small_data=False), 2, "risbench error: bad config or "
                "override", message)
    assert not (tmp_path / "outputs").exists()  # (a sweep folder holds only Hydra's multirun.yaml)


@pytest.mark.parametrize("args, message", [
    (["trainer.max_epochs=abc"], "trainer.max_epochs='abc' is not a valid value"),
    (["seed=abc"], "seed='abc' is not a valid value"),
    (["paths.data_dir=${oops}"], "Interpolation key 'oops' not found"),
    (["-m", "trainer.max_steps=1", "seed=abc,2"], "seed='abc' is not a valid value"),
])
def test_a_bad_value_is_one_message_before_anything_is_built(tmp_path, args, message):
    one_message(risbench(tmp_path, tmp_path / "data", *args, small_data=False), 2, message)
    assert not (tmp_path / "data").exists() and not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("args, message", [
    (["-m", "--cfg", "job"], "--multirun and --cfg cannot be combined"),
    (["--resolve"], "--resolve goes with --cfg"),
])
def test_hydra_flags_refused_together_are_one_message(tmp_path, args, message):
    one_message(run_cli(args, cwd=tmp_path), 2, message)
    assert not list(tmp_path.iterdir())


def test_hydra_full_error_still_gives_the_full_trace(tmp_path):
    result = run_cli(["foo=1"], cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode == 1 and "Traceback" in result.stderr and "ConfigCompositionException" in result.stderr


def test_resuming_from_another_models_checkpoint_is_one_message(tmp_path, trained_tiny, data_dir):
    _, run = trained_tiny
    result = risbench(tmp_path, data_dir, "model=lavt", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                      "trainer.max_steps=3")
    one_message(result, 2, "does not match the configured model")


def test_predict_validates_its_threshold(tmp_path, trained_tiny, data_dir):
    _, run = trained_tiny
    image = next((small_synthref(data_dir) / "images").iterdir())
    result = risbench(tmp_path, data_dir, "mode=predict", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                      f"predict.image={image}", "predict.text=the red circle", "eval.paper.threshold=1.5")
    one_message(result, 2, "eval.paper.threshold must be a probability in (0, 1), got 1.5")
    assert not list(tmp_path.rglob("mask.png"))


# ---------------------------------------------------------------------------- bad data found, skipped and counted
@pytest.fixture(scope="module")
def rough_synthref(tmp_path_factory):
    """The small synthref with what real datasets hold: a truncated PNG, a truncated JPEG (under a .png name),
    grayscale / CMYK / RGBA images, a whitespace-only expression and an annotation with an empty segmentation."""
    data_dir = tmp_path_factory.mktemp("rough")
    root = small_synthref(data_dir)
    instances = json.loads((root / "instances.json").read_text())
    refs = pickle.loads((root / "refs(unc).p").read_bytes())
    split_of = {ref["image_id"]: ref["split"] for ref in refs}
    train = [image for image in instances["images"] if split_of.get(image["id"]) == "train"]
    truncated = []
    for image, fmt in zip(train[:2], ("PNG", "JPEG")):
        path = root / "images" / image["file_name"]
        Image.open(path).convert("RGB").save(path, format=fmt)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        truncated.append(path)
    for image, mode in zip(train[2:5], ("L", "CMYK", "RGBA")):
        path = root / "images" / image["file_name"]
        Image.open(path).convert(mode).save(path, format="JPEG" if mode == "CMYK" else "PNG")
    blank = next(ref for ref in refs if ref["split"] == "train" and ref["image_id"] not in {i["id"] for i in train[:2]})
    blank["sentences"][0]["raw"] = blank["sentences"][0]["sent"] = "  \t "
    empty = next(ref for ref in refs if ref["split"] == "val")
    for ann in instances["annotations"]:
        if ann["id"] == empty["ann_id"]:
            ann["segmentation"] = []
    (root / "instances.json").write_text(json.dumps(instances))
    (root / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    expressions = sum(len(ref["sentences"]) for ref in refs if ref["image_id"] in {i["id"] for i in train[:2]})
    return data_dir, root, truncated, expressions, blank, empty


def test_data_check_finds_the_rough_data_and_names_each_file(tmp_path, rough_synthref):
    data_dir, root, truncated, _, blank, empty = rough_synthref
    overrides = [f"data.synthref.{k}={v}" for k, v in SMALL_SYNTHREF.items()]
    before = digest(root)
    result = module(tmp_path, "risbench.data", "check", "data=synthref", f"paths.data_dir={data_dir}", *overrides)
    one_message(result, 1, *(f"truncated: {path}" for path in truncated),
                f"empty_expression: ref_id {blank['ref_id']}, sent_id {blank['sentences'][0]['sent_id']} (train)",
                f"zero_area_mask: ref_id {empty['ref_id']} (ann_id {empty['ann_id']}) (val)", "FAILED")
    assert "unreadable:" not in result.stdout  # grayscale, CMYK and RGBA images decode
    assert digest(root) == before


@pytest.mark.slow
def test_training_on_rough_data_skips_and_counts_by_kind(tmp_path, rough_synthref):
    data_dir, root, truncated, expressions, _, _ = rough_synthref
    before = digest(root)
    # one batch holding the whole training split: every sample is met once (a sample is counted when met)
    result = risbench(tmp_path, data_dir, "data.skip_corrupt=true", "trainer.max_steps=1", "data.batch_size=1000",
                      "data.train_sampling=all")
    one_message(result, 0, f"data: {expressions} sample(s) skipped (truncated: {expressions})",
                "1 empty expression(s) replaced by the placeholder", "1 referent(s) with a zero-area mask kept")
    (run,) = (tmp_path / "outputs" / "default").iterdir()
    stats = json.loads((run / "results.json").read_text())["data_stats"]
    assert stats["skipped_samples"] == expressions and stats["skipped_by_kind"] == {"truncated": expressions}
    assert stats["splits"]["train"]["skipped_by_kind"] == {"truncated": expressions}
    assert sorted(stats["skipped_files"]) == sorted(f"{path} (truncated)" for path in truncated)
    assert (stats["empty_expressions"], stats["zero_area_masks"]) == (1, 1)
    assert digest(root) == before  # training never writes into a dataset


def test_without_skip_corrupt_a_truncated_image_stops_with_its_name(tmp_path, rough_synthref):
    data_dir, _, truncated, _, _, _ = rough_synthref
    result = risbench(tmp_path, data_dir, "trainer.max_steps=2", "data.batch_size=128")
    one_message(result, 2, "cannot read image", "data.skip_corrupt=true")
    assert any(path.name in result.stderr for path in truncated)


def test_images_of_every_mode_load_as_rgb():
    from risbench.data.transforms import to_rgb

    for mode in ("L", "CMYK", "RGBA", "P", "I;16"):
        image = Image.fromarray(np.zeros((4, 5), np.uint8)).convert(mode)
        assert to_rgb(image).mode == "RGB" and to_rgb(image).size == (5, 4)


def test_word_vectors_holding_a_pickle_are_refused_never_loaded(tmp_path, data_dir):
    marker = tmp_path / "pwned"
    vectors = tmp_path / "glove.npy"
    np.save(vectors, np.array([TouchesMarker(marker)], dtype=object), allow_pickle=True)
    result = risbench(tmp_path, data_dir, "model=restr", f"model.text.glove_path={vectors}", "trainer.max_steps=1")
    one_message(result, 2, f"word vectors at {vectors} could not be read as a .npy matrix (it holds pickled objects")
    assert not marker.exists() and not list(tmp_path.rglob("*.ckpt"))


def test_a_damaged_run_folder_is_one_message_from_the_report(tmp_path):
    from tests.report.fake_runs import split_metrics, write_job

    job = write_job(tmp_path / "sweep" / "0", "ablation/sadlr_table4a", [], {"val": split_metrics(0.5, 0.5)})
    results = json.loads((job / "results.json").read_text())
    results["metrics"]["val"]["oIoU"] = "0.5"
    (job / "results.json").write_text(json.dumps(results))
    before = digest(tmp_path / "sweep")
    result = module(tmp_path, "risbench.report", str(tmp_path / "sweep"))
    one_message(result, 2, f"{job / 'results.json'}: metrics.val.oIoU is '0.5', not a number")
    assert digest(tmp_path / "sweep") == before and sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["0"]
