"""Builders shared by the tasks: tokenizer, DataModule, model, LightningModule, trainer, results."""

from __future__ import annotations

import json
import logging
import subprocess
import time
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from risbench.config import instantiate_node
from risbench.data.tokenizers import build_tokenizer
from risbench.errors import MissingFileError, RisbenchError
from risbench.lit import RISLitModule
from risbench.models.base import RISModel

log = logging.getLogger("risbench")


def run_dir() -> Path:
    """This run's own output folder (made by Hydra, unique per run)."""
    return Path(HydraConfig.get().runtime.output_dir)


def tokenizer_kwargs(cfg: DictConfig) -> dict:
    kwargs = OmegaConf.to_container(cfg.tokenizer, resolve=True)
    return {key: value for key, value in kwargs.items() if value is not None}


def build_datamodule(cfg: DictConfig):
    """The DataModule with its tokenizer; prepares the data (synthref is generated on first use)."""
    datamodule = instantiate_node(cfg.data, _recursive_=False)
    datamodule.prepare_data()
    datamodule.set_tokenizer(build_tokenizer(**tokenizer_kwargs(cfg)))
    return datamodule


# keys of the `model:` node that the harness applies to any model instead of passing them to its class
HARNESS_MODEL_KEYS = ("grad_checkpointing", "compile")


def build_net(cfg: DictConfig, vocab_size: int) -> RISModel:
    """The configured model; ``model.grad_checkpointing`` and ``model.compile`` apply to every model."""
    node = OmegaConf.to_container(cfg.model, resolve=True)
    options = {key: node.pop(key, False) for key in HARNESS_MODEL_KEYS}
    net = instantiate_node(node, vocab_size=vocab_size, _convert_="all")
    if not isinstance(net, RISModel):
        raise RisbenchError(f"model._target_ {cfg.model._target_} is not a risbench.models.base.RISModel")
    if options["grad_checkpointing"]:
        net.set_grad_checkpointing()
    if options["compile"]:
        net.compile()  # in place: parameter names (and checkpoints) stay those of the eager model
    return net


def run_info(cfg: DictConfig) -> dict:
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    return {"name": cfg.name, "model": OmegaConf.to_container(cfg.model, resolve=True), "overrides": overrides}


def build_lit(cfg: DictConfig, net: RISModel, datamodule) -> RISLitModule:
    return RISLitModule(net, optim=cfg.optim, eval_cfg=cfg.eval, val_split=datamodule.val_split,
                        test_splits=datamodule.test_split_names, run_info=run_info(cfg))


def build_trainer(cfg: DictConfig, with_callbacks: bool = True, validates: bool = True) -> L.Trainer:
    """Trainer with the configured loggers and callbacks; without a validation split (``validates``
    false, e.g. ReferIt trained on trainval) the callbacks that monitor ``val/`` metrics are left out."""
    loggers = [instantiate_node(node) for node in (cfg.get("logger") or {}).values() if node is not None]
    nodes = [node for node in (cfg.get("callbacks") or {}).values() if node is not None] if with_callbacks else []
    callbacks = [instantiate_node(node) for node in nodes if validates or not str(node.get("monitor")).startswith("val/")]
    trainer = instantiate_node(cfg.trainer, logger=loggers or False, callbacks=callbacks,
                               default_root_dir=str(run_dir()))
    if trainer.accelerator.__class__.__name__ == "CUDAAccelerator":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
    hparams = OmegaConf.to_container(cfg, resolve=True)
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)
    return trainer


def resolve_ckpt_path(cfg: DictConfig, required: bool) -> str | None:
    """``ckpt_path``: a file, or ``last`` = the newest ``last.ckpt`` among earlier runs of this experiment."""
    value = cfg.get("ckpt_path")
    if value in (None, ""):
        if required:
            raise RisbenchError(f"mode={cfg.mode} needs a checkpoint: add ckpt_path=PATH/TO/file.ckpt "
                                f"(or ckpt_path=last for the newest run of experiment '{cfg.name}')")
        return None
    if value == "last":
        here = run_dir().resolve()
        candidates = [path for path in here.parent.glob("*/checkpoints/last.ckpt") if here not in path.parents]
        if not candidates:
            raise MissingFileError(f"a last.ckpt of an earlier '{cfg.name}' run", here.parent / "*/checkpoints",
                                   "train this experiment first, or pass ckpt_path=PATH")
        return str(max(candidates, key=lambda path: path.stat().st_mtime))
    path = Path(value).expanduser()
    if not path.is_file():
        raise MissingFileError("checkpoint", path, "pass ckpt_path= the .ckpt file written under "
                                                   "outputs/<experiment>/<run>/checkpoints/")
    return str(path)


def check_checkpoint_matches(ckpt_path: str, module: torch.nn.Module) -> dict:
    """Load a checkpoint and fail clearly if its weights do not fit ``module``; returns the checkpoint."""
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RisbenchError(f"checkpoint {ckpt_path} could not be read ({type(exc).__name__}: {exc})") from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if state is None:
        raise RisbenchError(f"{ckpt_path} is not a risbench/Lightning checkpoint (no 'state_dict')")
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [key for key in set(expected) & set(state) if expected[key].shape != state[key].shape]
    if missing or unexpected or wrong_shape:
        trained = checkpoint.get("risbench", {})
        origin = (f" It was written by experiment '{trained.get('name')}' with overrides "
                  f"{trained.get('overrides')}." if trained else "")
        raise RisbenchError(
            f"checkpoint {ckpt_path} does not match the configured model: {len(missing)} missing "
            f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, {len(wrong_shape)} of another shape "
            f"{sorted(wrong_shape)[:3]}.{origin}\n  how to fix: use the same model/scale/experiment overrides "
            "as the training run.")
    return checkpoint


def protocols(cfg: DictConfig) -> dict:
    """The two evaluation protocols of this run, for results.json."""
    return {name: OmegaConf.to_container(cfg.eval[name], resolve=True) for name in ("common", "paper")}


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_results(cfg: DictConfig, started: float, **fields) -> Path:
    """``results.json`` in this run's folder: what ran, with which config, and what it measured."""
    out = run_dir()
    results = {
        "experiment": cfg.name,
        "mode": cfg.mode,
        "overrides": list(HydraConfig.get().overrides.task),
        "config_path": str(out / ".hydra" / "config.yaml"),
        "git_revision": git_revision(),
        "wall_time_s": round(time.time() - started, 2),
        **fields,
    }
    path = out / "results.json"
    if path.exists():  # never overwrite another run's results
        raise RisbenchError(f"{path} exists already; refusing to overwrite another run's results")
    path.write_text(json.dumps(results, indent=2))
    return path


def write_predictions(lit: RISLitModule) -> list[str]:
    """``predictions/<split>.json`` of a test pass with ``eval.save_predictions`` (gathered over ranks)."""
    records = lit.predictions
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed:
        gathered = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, records)
        records = {split: [r for part in gathered for r in part.get(split, [])] for split in records}
        if torch.distributed.get_rank() != 0:
            return []
    if not records:
        return []
    folder = run_dir() / "predictions"
    folder.mkdir(exist_ok=False)
    for split, rows in records.items():
        (folder / f"{split}.json").write_text(json.dumps(rows))
    return [f"predictions/{split}.json" for split in records]


def print_metrics(metrics: dict[str, dict[str, float]], title: str, cfg: DictConfig,
                  caption: str | None = None) -> None:
    """One row per split and protocol: the common one first, then the paper's."""
    from rich.console import Console
    from rich.table import Table

    columns = ["oIoU", "mIoU", "prec@0.5", "prec@0.7", "prec@0.9", "n"]
    table = Table(title=title, caption=caption)
    table.add_column("split")
    table.add_column("protocol")
    for column in columns:
        table.add_column(column, justify="right")
    for split, values in metrics.items():
        for name, prefix in (("common", ""), ("paper", "paper/")):
            cells = [(f"{values[prefix + c]:.0f}" if c == "n" else f"{100 * values[prefix + c]:.2f}")
                     if prefix + c in values else "-" for c in columns]
            table.add_row(split if not prefix else "", f"{name}: {cfg.eval[name].name}", *cells)
    Console().print(table)
