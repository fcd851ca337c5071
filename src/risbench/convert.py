"""``python -m risbench.convert FORMAT CKPT OUT [key=value ...]``: a paper's released checkpoint -> a risbench one.

Formats (one function each in `FORMATS`):

* ``lavt-official`` -- LAVT's released checkpoints (github.com/yz93/LAVT-RIS), both ``lavt`` (BERT saved as
  ``bert_model``) and ``lavt_one`` (BERT inside the model).
* ``lgformer-official`` -- LGFormer's released checkpoints (github.com/ZhichaoWei/LGFormer: ``model_referit``,
  ``model_refcoco``, ``model_refcoco+``, ``model_refcocog``), BERT inside the model; default ``model=lgformer``.

``OUT`` holds what training writes (``{'state_dict': {'net.<key>': ...}, 'risbench': {...}}``), so
``python -m risbench mode=eval ckpt_path=OUT`` and ``mode=predict ckpt_path=OUT`` take it with the model
overrides the converter prints. The ``key=value`` arguments are Hydra overrides choosing the model the weights
go into (default ``model=lavt scale=paper``; ``model=sadlr model/head=none`` = LAVT as SADLR's base); the
architecture comes from the checkpoint's saved ``args`` where it has them, and any key given here wins.
Nothing is loaded from a path found inside a checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from risbench.config import compose_config
from risbench.errors import RisbenchError, check_can_create

LAVT_TARGET = "risbench.models.lavt.LAVT"
LAVT_HINT = "pass a checkpoint file of LAVT's code (github.com/yz93/LAVT-RIS, README 'Trained Weights of LAVT')"
# LAVT's args.dataset / args.splitBy -> the risbench data config evaluating on the same split
LAVT_DATASETS = {("refcoco", None): "refcoco", ("refcoco+", None): "refcoco_plus",
                 ("refcocog", "umd"): "refcocog_umd", ("refcocog", "google"): "refcocog_google"}


def override_keys(overrides: list[str]) -> set[str]:
    return {item.partition("=")[0].lstrip("+~") for item in overrides}


def with_defaults(overrides: list[str]) -> list[str]:
    """The user's overrides, plus ``model=lavt`` and ``scale=paper`` unless they choose otherwise."""
    keys = override_keys(overrides)
    return [*(["model=lavt"] if "model" not in keys else []), *(["scale=paper"] if "scale" not in keys else []),
            *overrides]


def lavt_node(cfg: DictConfig) -> str:
    """Where the LAVT network sits in the composed config: ``model`` or SADLR's ``model.base``."""
    for path in ("model", "model.base"):
        if OmegaConf.select(cfg, f"{path}._target_") == LAVT_TARGET:
            return path
    raise RisbenchError(f"model {cfg.model._target_} has no LAVT in it; LAVT weights go into model=lavt or "
                        "model=sadlr model/head=none (LAVT as SADLR's base)")


def architecture_overrides(args: argparse.Namespace | None, cfg: DictConfig, given: set[str]) -> list[str]:
    """LAVT: ``key=value`` overrides for what the checkpoint's ``args`` say."""
    from risbench.models.lavt import official_architecture

    if args is None:
        return []
    arch = official_architecture(args)
    node = lavt_node(cfg)
    return overrides_for({**{f"{node}.vision.{key}": value for key, value in arch["vision"].items()},
                          f"{node}.channels": arch["channels"], "data.img_size": arch["img_size"]}, cfg, given)


def overrides_for(wanted: dict, cfg: DictConfig, given: set[str]) -> list[str]:
    """``key=value`` for each wanted value the config does not already have, leaving out every key the user set."""
    out = []
    for key, value in wanted.items():
        current = OmegaConf.select(cfg, key)
        current = OmegaConf.to_container(current) if OmegaConf.is_config(current) else current
        if key not in given and current != value:
            out.append(f"{key}={value}".replace(" ", ""))
    return out


def fit_report(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str | None:
    """None when ``state`` has exactly the keys and shapes of ``expected``, else what differs."""
    not_tensors = sorted(f"{key} ({type(value).__name__})" for key, value in state.items()
                         if not isinstance(value, torch.Tensor))
    if not_tensors:
        return f"{len(not_tensors)} values are not tensors {not_tensors[:3]}"
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}"
                   for key in set(state) & set(expected) if state[key].shape != expected[key].shape)
    if not (missing or unexpected or wrong):
        return None
    return (f"{len(missing)} missing {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, "
            f"{len(wrong)} of another shape (checkpoint vs model) {wrong[:3]}")


def bert_vocab_size(state: dict[str, torch.Tensor], source: Path, missing: str, fix: str) -> int:
    """The vocabulary size of the release's BERT (its word-embedding rows); a release without BERT is refused:
    BERT is fine-tuned with the model, so no other BERT gives the paper's results."""
    embeddings = state.get("text.bert.embeddings.word_embeddings.weight")
    if embeddings is None:
        raise RisbenchError(f"{source} holds no BERT weights: {missing}.\n  how to fix: {fix}")
    if not isinstance(embeddings, torch.Tensor):
        raise RisbenchError(f"{source}: BERT's word embeddings are a {type(embeddings).__name__}, not a tensor.\n"
                            f"  how to fix: {fix}")
    return embeddings.shape[0]


def write_converted(state: dict[str, torch.Tensor], model_overrides: list[str], vocab_size: int, source: Path,
                    out: Path, name: str, eval_overrides: list[str], fix: str) -> None:
    """Check ``state`` strictly against the configured model (built on the meta device) and write it as a
    training checkpoint; ``out`` must not exist yet (nothing the user wrote is overwritten)."""
    from risbench.tasks.common import build_net

    if out.exists():
        raise RisbenchError(f"{out} already exists.\n  how to fix: give another output path, or delete that file")
    cfg = compose_config(model_overrides)
    with torch.device("meta"):  # shapes only: nothing allocated, nothing initialised
        net = build_net(cfg, vocab_size)
    problem = fit_report(state, net.state_dict())
    if problem:
        raise RisbenchError(f"the converted {source} does not fit the model built from {model_overrides}: {problem}.\n"
                            f"  how to fix: {fix}")
    net.load_state_dict(state, strict=True, assign=True)  # the strict load mode=eval does, on shapes
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"net.{key}": value for key, value in state.items()},
                "risbench": {"name": name, "converted_from": source.name,
                             "model": OmegaConf.to_container(cfg.model, resolve=True), "overrides": eval_overrides}},
               out)


def convert_lavt_official(checkpoint_path: Path, out: Path, overrides: list[str]) -> dict:
    """LAVT release -> risbench checkpoint at ``out``; returns a summary (counts, the eval overrides)."""
    from risbench.models.common.weights import read_released_checkpoint
    from risbench.models.lavt import official_checkpoint_filter_fn

    checkpoint = read_released_checkpoint(checkpoint_path, "LAVT checkpoint", LAVT_HINT)
    try:
        state, dropped = official_checkpoint_filter_fn(checkpoint)
    except RisbenchError as error:  # the filter knows the checkpoint's contents, not its file
        raise RisbenchError(f"{checkpoint_path}: {error}") from None
    args = checkpoint.get("args")
    overrides = with_defaults(overrides)
    cfg = compose_config(overrides)
    extra = architecture_overrides(args, cfg, override_keys(overrides))
    vocab_size = bert_vocab_size(
        state, checkpoint_path, "neither a 'bert_model' entry (where `lavt` checkpoints keep BERT) nor "
        "model.text_encoder.* (where `lavt_one` ones do) has embeddings.word_embeddings.weight",
        "pass the whole file LAVT's train.py wrote (a `lavt` checkpoint keeps BERT in 'bert_model' beside "
        "'model'; 'model' alone has no BERT); the converter takes no separate BERT file")
    prefix = "base." if lavt_node(cfg) == "model.base" else ""
    state = {f"{prefix}{key}": value for key, value in state.items()}
    dataset = getattr(args, "dataset", None)
    data = LAVT_DATASETS.get((dataset, getattr(args, "splitBy", None) if dataset == "refcocog" else None))
    eval_overrides = [*overrides, *([f"data={data}"] if data else []), *extra]
    write_converted(state, [*overrides, *extra], vocab_size, checkpoint_path, out, "lavt-official", eval_overrides,
                    "give the checkpoint's architecture as overrides (model.vision.embed_dim, depths, num_heads, "
                    "window_size, model.channels, model.text.*), or model/head=none for SADLR")
    return {"mapped": len(state), "dropped": Counter(dropped.values()), "eval_overrides": eval_overrides}


LGFORMER_HINT = ("pass a checkpoint file of LGFormer's code (github.com/ZhichaoWei/LGFormer, README "
                 "'Pretrained weights')")
# LGFormer's args.dataset / args.splitBy -> the risbench data config evaluating on the same split
LGFORMER_DATASETS = {("refcoco", None): ["data=refcoco"], ("refcoco+", None): ["data=refcoco_plus"],
                     ("refcocog", "umd"): ["data=refcocog_umd"], ("refcocog", "google"): ["data=refcocog_google"],
                     ("refclef", None): ["data=referit", "data.split_by=unc"]}


def convert_lgformer_official(checkpoint_path: Path, out: Path, overrides: list[str]) -> dict:
    """LGFormer release -> risbench checkpoint at ``out``; returns a summary (counts, the eval overrides)."""
    from risbench.models import lgformer
    from risbench.models.common.weights import read_released_checkpoint

    checkpoint = read_released_checkpoint(checkpoint_path, "LGFormer checkpoint", LGFORMER_HINT)
    if not isinstance(checkpoint.get("model"), dict):
        raise RisbenchError(f"{checkpoint_path} is not an LGFormer checkpoint: it has no 'model' state dict "
                            f"(keys: {sorted(checkpoint)[:6]}).\n  how to fix: {LGFORMER_HINT}")
    overrides = [*(["model=lgformer"] if "model" not in override_keys(overrides) else []), *overrides]
    overrides = [*(["scale=paper"] if "scale" not in override_keys(overrides) else []), *overrides]
    cfg = compose_config(overrides)
    if cfg.model._target_ != "risbench.models.lgformer.LGFormer":
        raise RisbenchError(f"LGFormer weights go into model=lgformer, not {cfg.model._target_}")
    state, dropped = lgformer.convert_lgformer_official(checkpoint,
                                                        keep_last_gates=cfg.model.encoder.get("out") == "updated")
    args = checkpoint.get("args")
    extra = []
    if args is not None:
        arch = lgformer.official_architecture(args)
        extra = overrides_for({**{f"model.vision.{key}": value for key, value in arch["vision"].items()},
                               "data.img_size": arch["img_size"]}, cfg, override_keys(overrides))
    vocab_size = bert_vocab_size(
        state, checkpoint_path, "its 'model' has no text_encoder.embeddings.word_embeddings.weight (LGFormer's "
        "checkpoints keep BERT there)", f"{LGFORMER_HINT}, the whole file as released; the converter takes no "
        "separate BERT file")
    dataset = getattr(args, "dataset", None)
    data = LGFORMER_DATASETS.get((dataset, getattr(args, "splitBy", None) if dataset == "refcocog" else None), [])
    eval_overrides = [*overrides, *data, *extra]
    write_converted(state, [*overrides, *extra], vocab_size, checkpoint_path, out, "lgformer-official",
                    eval_overrides, "give the checkpoint's architecture as overrides (model.vision.*, model.text.*, "
                    "model.pixel_decoder.*, model.decoder.*)")
    return {"mapped": len(state), "dropped": Counter(dropped.values()), "eval_overrides": eval_overrides}


FORMATS = {"lavt-official": convert_lavt_official, "lgformer-official": convert_lgformer_official}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m risbench.convert",
                                     description="Convert a paper's released checkpoint into a risbench checkpoint.")
    parser.add_argument("format", choices=sorted(FORMATS), help="what the checkpoint is")
    parser.add_argument("checkpoint", type=Path, help="the released checkpoint file")
    parser.add_argument("out", type=Path, help="the risbench checkpoint to write (.ckpt)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the model the weights go into")
    options = parser.parse_args(argv)
    try:
        check_can_create(options.out, "out")
        summary = FORMATS[options.format](options.checkpoint, options.out, options.overrides)
    except RisbenchError as error:
        print(f"\nrisbench error: {error}", file=sys.stderr)
        return 2
    print(f"{options.checkpoint} -> {options.out}: {summary['mapped']} weights mapped, "
          f"{sum(summary['dropped'].values())} entries dropped")
    for reason, count in summary["dropped"].items():
        print(f"  dropped {count}: {reason}")
    print(f"evaluate with: python -m risbench mode=eval {' '.join(summary['eval_overrides'])} ckpt_path={options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
