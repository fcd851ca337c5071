"""The line a training run ends with: where its folder, best checkpoint and report are."""

from __future__ import annotations

from pathlib import Path

REPORT_CALLBACK = "risbench.report.hydra_callback.ReportOnMultirunEnd"


def best_checkpoint(trainer) -> str | None:
    """The best checkpoint by the monitored metric (val/oIoU) this fit wrote, else its last one."""
    paths = {bool(cb.monitor): cb.best_model_path for cb in trainer.checkpoint_callbacks if cb.best_model_path}
    return paths.get(True) or paths.get(False)


def end_of_run_line(trainer, run_folder: Path) -> str:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    sweep, automatic = None, False
    if HydraConfig.initialized():
        hydra = HydraConfig.get()
        if hydra.mode == RunMode.MULTIRUN:
            sweep = Path(hydra.sweep.dir).resolve()
            automatic = any(str(node.get("_target_")) == REPORT_CALLBACK for node in (hydra.callbacks or {}).values())
    target = sweep or run_folder
    report = (f"{target}/report/ (written when the sweep ends)" if automatic else
              f"python -m risbench.report {target}  (writes {target}/report/)")
    return f"run folder: {run_folder} | best checkpoint: {best_checkpoint(trainer) or '-'} | report: {report}"
