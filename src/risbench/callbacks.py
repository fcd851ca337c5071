"""Lightning callbacks of the harness."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from risbench.errors import RisbenchError


class RunCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` that keeps nothing of a resumed checkpoint's callback state.

    Lightning would restore ``best_model_path`` (and the best score) from the checkpoint file, so a
    resumed run could end up testing whatever path a checkpoint names. Here every run's best and last
    checkpoints are files this run wrote into its own folder.
    """

    def load_state_dict(self, state_dict: dict) -> None:
        return None


class ValidationOverlays(Callback):
    """Every validation epoch: ``num_samples`` fixed validation samples drawn as image | ground truth |
    prediction (the ``protocol``'s masks at the original size), the expression as caption.

    They go to every logger that takes images (TensorBoard ``add_image``, W&B ``log_image``) and, for the
    CSV logger (or when no logger takes images), to ``dirpath/epoch<NNN>/<k>_sent<id>.png``. The samples are
    spread evenly over the split and stay the same every epoch, so the pictures show training progress.
    """

    def __init__(self, num_samples: int = 8, dirpath: str | None = None, protocol: str = "common"):
        if protocol not in ("common", "paper"):
            raise RisbenchError(f"callbacks.overlays.protocol must be common or paper, got {protocol!r}")
        self.num_samples, self.protocol = int(num_samples), protocol
        self.dirpath = Path(dirpath) if dirpath else None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.num_samples <= 0 or trainer.sanity_checking or not trainer.is_global_zero:
            return
        loader = trainer.val_dataloaders
        loader = loader[0] if isinstance(loader, (list, tuple)) and loader else loader
        if loader is None or not hasattr(loader, "dataset"):
            return
        from risbench.report.overlays import evenly_spaced, render_samples

        indices = evenly_spaced(self.num_samples, len(loader.dataset))
        with trainer.precision_plugin.forward_context():  # as the validation steps run (autocast under bf16)
            pictures = render_samples(pl_module.net, loader.dataset, loader.collate_fn, indices,
                                      pl_module.protocols[self.protocol], pl_module.device)
        self.log_pictures(trainer, pictures)

    def log_pictures(self, trainer: L.Trainer, pictures: list) -> None:
        step, took_images = trainer.global_step, False
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for k, (picture, caption, _) in enumerate(pictures):
                    logger.experiment.add_image(f"val_overlays/{k}", np.asarray(picture), global_step=step,
                                                dataformats="HWC")
                    logger.experiment.add_text(f"val_overlays/{k}/caption", caption, global_step=step)
                took_images = True
            elif isinstance(logger, WandbLogger):
                logger.log_image("val_overlays", [p for p, _, _ in pictures], step=step,
                                 caption=[c for _, c, _ in pictures])
                took_images = True
        if any(isinstance(logger, CSVLogger) for logger in trainer.loggers) or not took_images:
            folder = (self.dirpath or Path(trainer.default_root_dir) / "overlays") / f"epoch{trainer.current_epoch:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for k, (picture, _, info) in enumerate(pictures):
                picture.save(folder / f"{k:02d}_sent{info['sent_id']}.png")
