"""End-to-end runs of ``python -m risbench`` on a small synthref: every mode, resume, DDP, loggers, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from risbench.data.synthref import synthref_dir
from risbench.profiling import count_macs, count_params
from risbench.tasks.profile import dummy_batch
from tests.fixtures import SMALL_DATA, SMALL_SYNTHREF
from tests.helpers import build_model, ground_truth_masks, independent_metrics, run_cli

QUICK = ["trainer.max_steps=2", "eval.save_predictions=true"]


def cli(tmp_path: Path, data_dir: Path, *args: str, expect_ok: bool = True, small_data: bool = True, **kwargs):
    result = run_cli([f"paths.data_dir={data_dir}", *(SMALL_DATA if small_data else []), *args], cwd=tmp_path,
                     **kwargs)
    if expect_ok:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def run_dirs(root: Path, name: str = "default") -> list[Path]:
    return sorted((root / "outputs" / name).iterdir())


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


@pytest.fixture(scope="module")
def trained(trained_tiny):
    """One short training run of the default model (QUICK, shared with tests/reliability); cwd and run folder."""
    return trained_tiny


def assert_metrics_match_the_saved_predictions(run: Path, data_dir: Path) -> None:
    """results.json's figures equal an independent computation on the run's saved predictions."""
    summary, truths = results(run), ground_truth_masks(synthref_dir(data_dir, SMALL_SYNTHREF))
    assert sorted(summary["predictions"]) == [f"predictions/{s}.json" for s in ("testA", "testB", "val")]
    for split, values in summary["metrics"].items():
        expected = independent_metrics(json.loads((run / "predictions" / f"{split}.json").read_text()), truths)
        assert values["n"] == expected["n"] == {"val": 51, "testA": 41, "testB": 40}[split]
        assert (values["oIoU"], values["mIoU"]) == (expected["oIoU"], expected["mIoU"])  # exact, float64


@pytest.mark.slow
def test_train_writes_results_and_checkpoints(trained, data_dir):
    root, run = trained
    summary = results(run)
    assert summary["mode"] == "train" and summary["experiment"] == "default"
    assert (summary["steps"], summary["planned_steps"], summary["stopped_early"]) == (2, 2, False)
    assert summary["protocols"]["common"]["name"] == "common" and summary["protocols"]["paper"]["name"] == "sadlr"
    assert_metrics_match_the_saved_predictions(run, data_dir)
    assert summary["params"]["total"] == summary["params"]["trainable"]  # tiny: nothing frozen
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_eval_of_the_tested_checkpoint_reproduces_the_train_results(trained, data_dir):
    root, run = trained
    tested = results(run)["checkpoint"]
    cli(root, data_dir, "mode=eval", f"ckpt_path={tested}", "eval.save_predictions=true")
    evaluation = run_dirs(root)[-1]
    assert results(evaluation)["mode"] == "eval"
    assert results(evaluation)["metrics"] == results(run)["metrics"]
    assert_metrics_match_the_saved_predictions(evaluation, data_dir)


@pytest.mark.slow
def test_the_same_run_twice_gives_identical_metrics(trained, data_dir):
    root, run = trained
    cli(root, data_dir, *QUICK, "name=again")
    assert results(run_dirs(root, "again")[0])["metrics"] == results(run)["metrics"]


@pytest.mark.slow
def test_the_time_guard_says_when_it_stopped_training(tmp_path, data_dir):
    result = cli(tmp_path, data_dir, "trainer.max_steps=500", "trainer.max_time=00:00:00:01",
                 "data.max_eval_samples=4")
    summary = results(run_dirs(tmp_path)[0])
    assert summary["stopped_early"] is True and summary["steps"] < summary["planned_steps"] == 500
    assert summary["schedule_fraction"] == round(summary["steps"] / 500, 4)
    assert "STOPPED EARLY by the time guard" in result.stdout


@pytest.mark.slow
def test_ddp_evaluation_counts_every_expression_once(trained, data_dir):
    """2 CPU processes give exactly the numbers of 1 process, on a split whose size is odd."""
    root, run = trained
    ckpt = run / "checkpoints" / "last.ckpt"
    odd = ["data.max_eval_samples=23", "data.eval_batch_size=4"]
    cli(root, data_dir, "mode=eval", f"ckpt_path={ckpt}", *odd, "name=single")
    cli(root, data_dir, "mode=eval", f"ckpt_path={ckpt}", *odd, "trainer=ddp_sim", "name=ddp")
    single = results(run_dirs(root, "single")[0])["metrics"]
    ddp = results(run_dirs(root, "ddp")[0])["metrics"]
    assert single["testA"]["n"] == 23
    assert single == ddp


@pytest.mark.slow
def test_predict_writes_mask_and_overlay(trained, data_dir):
    root, run = trained
    image = next((synthref_dir(data_dir, SMALL_SYNTHREF) / "images").iterdir())
    cli(root, data_dir, "mode=predict", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"predict.image={image}",
        "predict.text='the red circle'", "name=predict")
    out = run_dirs(root, "predict")[0]
    from PIL import Image

    mask = Image.open(out / "mask.png")
    assert mask.size == Image.open(image).size and set(mask.getdata()) <= {0, 255}
    assert (out / "overlay.png").is_file()


@pytest.mark.slow
def test_synthref_error_analysis_of_a_checkpoint(trained, data_dir):
    root, run = trained
    cli(root, data_dir, "mode=analyze", "analysis=synthref_errors", "analysis.split=testB",
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "name=errors")
    out = run_dirs(root, "errors")[0]
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis == results(out)["analysis"]
    assert abs(sum(analysis["outcomes"].values()) - 100) < 1e-6
    assert list(analysis["by_kind"]) == ["attribute"]  # testB holds attribute-only expressions


@pytest.mark.slow
def test_resume_from_last_is_exact(tmp_path, data_dir):
    """Two epochs (6 steps) straight == one epoch, then ``ckpt_path=last`` for the second (weights and optimizer)."""
    common = ["trainer.limit_train_batches=3", "optim.scheduler=null", "data.max_eval_samples=8", "data.batch_size=16"]
    cli(tmp_path, data_dir, *common, "trainer.max_steps=6", "name=straight")
    # interrupted after its first epoch (as the time guard or a crash would leave it)
    cli(tmp_path, data_dir, *common, "trainer.max_steps=6", "trainer.max_epochs=1", "name=resumed")
    cli(tmp_path, data_dir, *common, "trainer.max_steps=6", "name=resumed", "ckpt_path=last")
    first, second = run_dirs(tmp_path, "resumed")
    assert results(second)["resumed_from"] == str(first / "checkpoints" / "last.ckpt")
    straight = torch.load(run_dirs(tmp_path, "straight")[0] / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)
    assert straight["global_step"] == resumed["global_step"] == 6
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    assert (first / "checkpoints" / "last.ckpt").is_file()  # the earlier run is untouched


@pytest.mark.slow
def test_multirun_sweep_gives_each_job_its_own_folder(tmp_path, data_dir):
    cli(tmp_path, data_dir, "-m", "trainer.fast_dev_run=true", "seed=1,2")
    (sweep,) = (tmp_path / "multirun" / "default").iterdir()
    jobs = sorted(path.name for path in sweep.iterdir() if (path / "results.json").is_file())
    assert jobs == ["0", "1"]
    assert results(sweep / "1")["overrides"][-1] == "seed=2"


@pytest.mark.slow
def test_wandb_logger_runs_offline_without_network(tmp_path, data_dir):
    # (fast_dev_run would swap every logger for a dummy one)
    result = cli(tmp_path, data_dir, "logger=wandb", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
                 "data.max_eval_samples=4", timeout=300,
                 env={"WANDB_API_KEY": "", "WANDB_MODE": "", "HOME": str(tmp_path)})
    run = run_dirs(tmp_path)[0]
    offline = list((run / "wandb").glob("offline-run-*"))
    assert offline, result.stderr[-2000:]
    assert list(offline[0].glob("*.wandb"))  # the run's data, ready for `wandb sync`


def test_profile_needs_no_data(tmp_path):
    no_data = tmp_path / "no_data"
    cli(tmp_path, no_data, "mode=profile", "tokenizer.vocab_size=64")
    assert not no_data.exists()
    report = json.loads((run_dirs(tmp_path)[0] / "profile.json").read_text())
    # the same numbers as counting the default model built here
    net = build_model("sadlr", 64, ["scale=tiny"])
    batch = dummy_batch(1, 64, 20, 64)
    assert report["params"] == count_params(net) and report["macs"] == count_macs(net, batch)[0]
    assert sum(row["params"] for row in report["by_module"].values()) == report["params"]["total"]
    assert sum(row["gmacs"] for row in report["by_module"].values()) == pytest.approx(report["gmacs"])


@pytest.mark.parametrize("option, message", [
    ("profile.batch_size=abc", "profile.batch_size='abc' is not a valid value: Input should be a valid integer"),
    ("profile.batch_size=0", "profile.batch_size must be >= 1, got 0"),
    ("profile.text_length=0", "profile.text_length must be >= 1, got 0"),  # was: the tokenizer's max_length
])
def test_bad_profile_options_are_refused_at_start_up(tmp_path, option, message):
    result = cli(tmp_path, tmp_path / "no_data", "mode=profile", "tokenizer.vocab_size=64", option, expect_ok=False)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("profile.json"))


@pytest.mark.parametrize("args, message", [
    (["mode=eval"], "needs a checkpoint"),
    (["mode=eval", "ckpt_path=/nonexistent/model.ckpt"], "checkpoint not found: /nonexistent/model.ckpt"),
    (["mode=dance"], "unknown mode"),
    (["data=refcoco", "trainer.fast_dev_run=true"], "instances.json"),
    (["mode=predict", "ckpt_path=/nonexistent.ckpt", "predict.text=x"], "checkpoint not found"),
    (["eval.paper.threshold=1.5", "trainer.fast_dev_run=true"], "eval.paper.threshold must be a probability in (0, 1)"),
])
def test_user_errors_are_one_clear_message(tmp_path, data_dir, args, message):
    result = cli(tmp_path, data_dir, *args, expect_ok=False, small_data="data=refcoco" not in args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_choice_and_misspelled_key_fail_at_start_up(tmp_path, data_dir):
    for args, name in ((["model=not_a_model"], "not_a_model"), (["model.fusoin.type=vme"], "fusoin")):
        result = cli(tmp_path, data_dir, *args, expect_ok=False)
        assert result.returncode != 0 and name in result.stderr
        assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("results.json"))


@pytest.mark.slow
def test_checkpoint_of_another_model_is_refused_clearly(trained, data_dir, tmp_path):
    root, run = trained
    result = cli(tmp_path, data_dir, "mode=eval", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "model=lavt",
                 expect_ok=False)
    assert result.returncode == 2 and "does not match the configured model" in result.stderr
    assert "Traceback" not in result.stderr
