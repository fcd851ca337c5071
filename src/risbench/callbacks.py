"""Lightning callbacks of the harness."""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint


class RunCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` that keeps nothing of a resumed checkpoint's callback state.

    Lightning would restore ``best_model_path`` (and the best score) from the checkpoint file, so a
    resumed run could end up testing whatever path a checkpoint names. Here every run's best and last
    checkpoints are files this run wrote into its own folder.
    """

    def load_state_dict(self, state_dict: dict) -> None:
        return None
