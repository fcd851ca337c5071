"""Builders shared by the tasks: tokenizer, DataModule, model, LightningModule, trainer, results.

Checkpoints carry what evaluating them needs (`run_info`): the model, tokenizer, data and paper-protocol
config nodes as written (interpolations kept, so paths resolve on the machine that reads them) and the
tokenizer's files. `config_from_checkpoint` puts them back for ``mode=eval|predict|analyze``, except what
the command line chooses itself.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from risbench.config import instantiate_node
from risbench.data.coverage import coverage_warnings, text_coverage
from risbench.data.tokenizers import build_tokenizer, same_vocabulary, tokenizer_from_bundle
from risbench.errors import MissingFileError, RisbenchError
from risbench.lit import RISLitModule
from risbench.models.base import RISModel
from risbench.models.common.weights import load_failure

log = logging.getLogger("risbench")
_info, _warn = rank_zero_only(log.info), rank_zero_only(log.warning)  # once, not once per DDP rank

# command-line choices that pick the architecture themselves: the checkpoint's model config then stays out
MODEL_CHOICES = ("model", "experiment", "scale", "model_scale")
# data keys that belong to the model's recipe (its input), kept from the checkpoint on any dataset
INPUT_KEYS = ("img_size", "resize", "normalize")


def run_dir() -> Path:
    """This run's own output folder (made by Hydra, unique per run)."""
    return Path(HydraConfig.get().runtime.output_dir)


def tokenizer_kwargs(cfg: DictConfig) -> dict:
    kwargs = OmegaConf.to_container(cfg.tokenizer, resolve=True)
    return {key: value for key, value in kwargs.items() if value is not None}


def build_datamodule(cfg: DictConfig, tokenizer=None):
    """The DataModule with its tokenizer (the configured one unless given); prepares the data (synthref is
    generated on first use)."""
    datamodule = instantiate_node(cfg.data, _recursive_=False)
    datamodule.prepare_data()
    datamodule.set_tokenizer(tokenizer or build_tokenizer(**tokenizer_kwargs(cfg)))
    return datamodule


# keys of the `model:` node that the harness applies to any model instead of passing them to its class
HARNESS_MODEL_KEYS = ("grad_checkpointing", "compile")


def build_net(cfg: DictConfig, vocab_size: int) -> RISModel:
    """The configured model; ``model.grad_checkpointing`` and ``model.compile`` apply to every model."""
    node = OmegaConf.to_container(cfg.model, resolve=True)
    options = {key: node.pop(key, False) for key in HARNESS_MODEL_KEYS}
    net = instantiate_node(node, config_key="model", vocab_size=vocab_size, _convert_="all")
    if not isinstance(net, RISModel):
        raise RisbenchError(f"model._target_ {cfg.model._target_} is not a risbench.models.base.RISModel")
    if options["grad_checkpointing"]:
        net.set_grad_checkpointing()
    if options["compile"]:
        net.compile()  # in place: parameter names (and checkpoints) stay those of the eager model
    return net


def run_info(cfg: DictConfig, tokenizer=None) -> dict:
    """What every checkpoint of this run carries: where it came from, its config nodes (as written, so
    paths resolve wherever it is read) and its tokenizer's files."""
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    info = {"name": cfg.name, "model": OmegaConf.to_container(cfg.model, resolve=True), "overrides": overrides,
            "config": {key: OmegaConf.to_container(node, resolve=False) for key, node in
                       (("model", cfg.model), ("data", cfg.data), ("tokenizer", cfg.tokenizer),
                        ("eval_paper", cfg.eval.paper))}}
    if tokenizer is not None and getattr(tokenizer, "path", None) is not None:
        info["tokenizer"] = tokenizer.bundle()
    return info


def build_lit(cfg: DictConfig, net: RISModel, datamodule) -> RISLitModule:
    return RISLitModule(net, optim=cfg.optim, eval_cfg=cfg.eval, val_split=datamodule.val_split,
                        test_splits=datamodule.test_split_names, run_info=run_info(cfg, datamodule.tokenizer))


def read_checkpoint(ckpt_path: str) -> dict:
    """A risbench/Lightning checkpoint read with ``weights_only=True`` (no code runs from the file)."""
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RisbenchError(f"checkpoint {ckpt_path} could not be read safely ({load_failure(exc)}).\n"
                            "  how to fix: use a checkpoint risbench wrote (or converted with python -m "
                            "risbench.convert)") from None
    if not isinstance(checkpoint, dict):
        raise RisbenchError(f"{ckpt_path} holds a {type(checkpoint).__name__}, not a risbench checkpoint")
    return checkpoint


def _command_line_keys() -> list[str]:
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    return [override.split("=", 1)[0].lstrip("+~") for override in overrides]


def config_from_checkpoint(cfg: DictConfig, checkpoint: dict) -> tuple[DictConfig, list[str], object]:
    """(config, restored keys, tokenizer) for evaluating `checkpoint` from what it carries.

    The model, the paper's protocol and the data recipe's input keys come from the checkpoint unless the
    command line picks a model itself (``model=``, ``experiment=``, ``scale=``, ``model/...=``); the
    dataset comes from it unless the command line picks one (``data=...``); the tokenizer is the
    checkpoint's own unless ``tokenizer.path=`` is given, and a configured tokenizer that differs from the
    checkpoint's is reported. Single keys given on the command line (``data.batch_size=4``,
    ``eval.paper.threshold=0.4``) apply on top. A checkpoint without a config (an older or converted one)
    leaves the configured run as it is.
    """
    stored = (checkpoint.get("risbench") or {}).get("config")
    bundle = (checkpoint.get("risbench") or {}).get("tokenizer")
    keys = _command_line_keys()
    restored: list[str] = []
    if stored:
        given = {key: OmegaConf.select(cfg, key) for key in keys if "." in key and "@" not in key}
        model_chosen = any(k in MODEL_CHOICES or k.split("/")[0] in MODEL_CHOICES and "/" in k for k in keys)
        data_chosen = any(k == "data" or k.startswith("data/") for k in keys)
        with open_dict(cfg):
            if not data_chosen:
                cfg.data = stored["data"]
                restored.append("data")
            if not model_chosen:
                cfg.model = stored["model"]
                cfg.eval.paper = stored["eval_paper"]
                cfg.tokenizer = stored["tokenizer"]
                for key in INPUT_KEYS:
                    if key in stored["data"]:
                        cfg.data[key] = stored["data"][key]
                restored += ["model", "eval.paper", "tokenizer", *(f"data.{k}" for k in INPUT_KEYS)]
            for key, value in given.items():  # the command line's own keys win
                if key.split(".")[0] in ("model", "data", "tokenizer") or key.startswith("eval.paper."):
                    OmegaConf.update(cfg, key, value, force_add=True)
    tokenizer = checkpoint_tokenizer(cfg, bundle, "tokenizer.path" in keys)
    if bundle is not None and "tokenizer.path" not in keys:
        restored.append("tokenizer files")
    return cfg, sorted(set(restored)), tokenizer


def checkpoint_tokenizer(cfg: DictConfig, bundle: dict | None, path_given: bool):
    """The tokenizer to evaluate with: the checkpoint's own (written to ``<run>/tokenizer_from_checkpoint``),
    unless there is none or ``tokenizer.path`` was given; a configured one that differs is reported."""
    configured = None
    try:
        configured = build_tokenizer(**tokenizer_kwargs(cfg))
    except RisbenchError:
        if bundle is None or path_given:
            raise
    if bundle is None:
        return configured
    own = tokenizer_from_bundle(bundle, run_dir() / "tokenizer_from_checkpoint")
    if configured is not None and not same_vocabulary(configured, own):
        which = "the configured one" if path_given else "the checkpoint's own, which the weights were trained with"
        _warn(f"the checkpoint's tokenizer differs from the configured one ({cfg.tokenizer.get('path')}): "
              f"{_difference(own, configured)}; using {which}")
    if path_given:
        return configured
    with open_dict(cfg):
        cfg.tokenizer.path = str(own.path)
    return own


def _difference(own, configured) -> str:
    if own.kind != configured.kind:
        return f"kind {own.kind} vs {configured.kind}"
    if own.bundle()["options"] != configured.bundle()["options"]:
        return f"options {own.bundle()['options']} vs {configured.bundle()['options']}"
    return f"another vocabulary ({own.vocab_size} vs {configured.vocab_size} entries)"


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


def check_checkpoint_matches(ckpt_path: str, module: torch.nn.Module, checkpoint: dict | None = None) -> dict:
    """Load a checkpoint (unless given) and fail clearly if its weights do not fit ``module``; returns it."""
    checkpoint = read_checkpoint(ckpt_path) if checkpoint is None else checkpoint
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
    if path.exists() and not cfg.get("overwrite", False):  # never overwrite another run's results
        raise RisbenchError(f"{path} exists already; refusing to overwrite another run's results "
                            "(overwrite=true writes over it)")
    path.write_text(json.dumps(results, indent=2))
    return path


def report_text_coverage(datamodule, splits) -> dict:
    """Log the tokenizer's coverage of each split's text, warn above ``data.text_coverage_warning``."""
    coverage = text_coverage(datamodule, datamodule.tokenizer, splits)
    for split, c in coverage.items():
        _info(f"text coverage {split}: {100 * c['unknown_share']:.1f}% unknown tokens, "
                       f"{100 * c['truncated_share']:.1f}% of {c['expressions']} expressions cut at "
                       f"max_length={c['max_length']}")
    for line in coverage_warnings(coverage, datamodule.text_coverage_warning):
        _warn(f"text coverage: {line} (warning threshold data.text_coverage_warning="
                       f"{datamodule.text_coverage_warning})")
    return coverage


def gathered_data_stats(datamodule) -> dict:
    """The DataModule's counts, with the samples every DDP rank dropped while loading."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed and hasattr(datamodule, "record_skipped"):
        gathered = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, datamodule.loading_skips())
        for records in gathered:
            datamodule.record_skipped(records)
    return getattr(datamodule, "stats", {})


def print_data_summary(stats: dict) -> None:
    """One line at the end of a run saying what the data held that was skipped, replaced or kept."""
    parts = []
    if stats.get("skipped_samples"):
        kinds = ", ".join(f"{kind}: {n}" for kind, n in stats.get("skipped_by_kind", {}).items())
        parts.append(f"{stats['skipped_samples']} sample(s) skipped ({kinds})")
    if stats.get("empty_expressions"):
        parts.append(f"{stats['empty_expressions']} empty expression(s) replaced by the placeholder")
    if stats.get("zero_area_masks"):
        parts.append(f"{stats['zero_area_masks']} referent(s) with a zero-area mask kept")
    if parts:
        print("data: " + "; ".join(parts) + " (results.json data_stats; python -m risbench.data check lists them)")


def write_predictions(lit: RISLitModule, overwrite: bool = False) -> list[str]:
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
    folder.mkdir(exist_ok=overwrite)
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
    table.add_column("protocol", no_wrap=True)
    for column in columns:
        table.add_column(column, justify="right")
    for split, values in metrics.items():
        for name, prefix in (("common", ""), ("paper", "paper/")):
            cells = [(f"{values[prefix + c]:.0f}" if c == "n" else f"{100 * values[prefix + c]:.2f}")
                     if prefix + c in values else "-" for c in columns]
            label = "common" if name == "common" else f"paper: {cfg.eval.paper.name}"
            table.add_row(split if not prefix else "", label, *cells)
    Console().print(table)
