"""mode=train: fit, then test the selected checkpoint (best by val/oIoU, or last) on every test split."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from risbench.config import instantiate_node
from risbench.errors import RisbenchError
from risbench.profiling import count_params
from risbench.report.summary import end_of_run_line
from risbench.tasks.common import (build_datamodule, build_lit, build_net, build_trainer,
                                   check_checkpoint_matches, gathered_data_stats, log, print_data_summary,
                                   print_metrics, protocols, report_text_coverage, resolve_ckpt_path, run_dir,
                                   write_predictions, write_results)


def check_ckpt_select(select: str) -> None:
    """Before fit: a bad ``eval.ckpt_select`` found after training would waste the run."""
    if select not in ("best", "last"):
        raise RisbenchError(f"eval.ckpt_select must be 'best' or 'last', got {select!r}")


def selected_checkpoint(trainer: L.Trainer, select: str) -> str | None:
    """The best (monitored) or the last (unmonitored) checkpoint this fit wrote, in this run's own folder."""
    paths = {"best" if callback.monitor else "last": callback.best_model_path
             for callback in trainer.checkpoint_callbacks if callback.best_model_path}
    path = paths.get(select) or paths.get("last")
    if path is not None and run_dir().resolve() not in Path(path).resolve().parents:  # RunCheckpoint's promise
        raise RisbenchError(f"the checkpoint to test, {path}, is not in this run's folder {run_dir()}")
    return path


def schedule_progress(trainer: L.Trainer) -> dict:
    """How much of the configured schedule the fit ran: the time guard (trainer.max_time) may cut it."""
    planned = int(trainer.estimated_stepping_batches)
    done = int(trainer.global_step)
    return {"stopped_early": done < planned, "steps": done, "planned_steps": planned,
            "schedule_fraction": round(done / planned, 4) if planned else 1.0}


def check_optim(cfg: DictConfig) -> None:
    """Build the optimizer and schedule once on a probe parameter: inside fit a bad ``optim.*`` value would
    end in a traceback, here it is one message naming the key."""
    import torch

    probe = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    for key in ("optimizer", "scheduler"):
        node = cfg.optim.get(key)
        if node is None:
            continue
        factory = instantiate_node(node)
        try:
            factory([torch.nn.Parameter(torch.zeros(1))]) if key == "optimizer" else factory(probe, total_steps=10)
        except (ValueError, TypeError) as error:
            raise RisbenchError(f"optim.{key} cannot be built: {error}\n  how to fix: check the values under "
                                f"optim.{key}") from None


def train(cfg: DictConfig) -> dict:
    started = time.time()
    check_ckpt_select(cfg.eval.ckpt_select)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    net = build_net(cfg, datamodule.tokenizer.vocab_size)
    resume_from = resolve_ckpt_path(cfg, required=False)
    if resume_from is None:
        net.load_pretrained()
    lit = build_lit(cfg, net, datamodule)
    check_optim(cfg)
    if resume_from is not None:  # one clear message for a checkpoint of another model, before fit reads it
        check_checkpoint_matches(resume_from, lit)
    coverage = report_text_coverage(datamodule, [datamodule.train_split, datamodule.val_split,
                                                 *datamodule.test_split_names])
    trainer = build_trainer(cfg, validates=bool(datamodule.val_split))
    trainer.fit(lit, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    progress = schedule_progress(trainer)
    if progress["stopped_early"] and not trainer.fast_dev_run:
        log.warning("the time guard (trainer.max_time=%s) stopped training after %d of %d steps (%.0f%% of the "
                    "schedule): the metrics below are of an unfinished model", cfg.trainer.max_time,
                    progress["steps"], progress["planned_steps"], 100 * progress["schedule_fraction"])

    test_ckpt = None if trainer.fast_dev_run else selected_checkpoint(trainer, cfg.eval.ckpt_select)
    trainer.test(lit, datamodule=datamodule, ckpt_path=test_ckpt, weights_only=True, verbose=False)
    metrics = lit.results
    predictions = write_predictions(lit, overwrite=cfg.get("overwrite", False))
    data_stats = gathered_data_stats(datamodule)
    if trainer.is_global_zero:
        caption = None
        if progress["stopped_early"] and not trainer.fast_dev_run:
            caption = (f"STOPPED EARLY by the time guard: {progress['steps']} of {progress['planned_steps']} steps "
                       f"({100 * progress['schedule_fraction']:.0f}% of the schedule)")
        print_metrics(metrics, f"{cfg.name}: test ({cfg.eval.ckpt_select} checkpoint)", cfg, caption)
        print_data_summary(data_stats)
        path = write_results(cfg, started, metrics=metrics, protocols=protocols(cfg), params=count_params(net),
                             checkpoint=test_ckpt, resumed_from=resume_from, **progress, predictions=predictions,
                             data_stats=data_stats, text_coverage=coverage)
        log.info("results written to %s", path)
        print(end_of_run_line(trainer, run_dir()))
    return metrics
