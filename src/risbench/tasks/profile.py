"""mode=profile: params and MACs of one forward of the configured model (no data, no weights needed)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from risbench.config import check_value_type
from risbench.data.tokenizers import build_tokenizer
from risbench.errors import RisbenchError
from risbench.profiling import MAC_NOTES, count_macs, count_params, params_by_module
from risbench.tasks.common import build_net, log, run_dir, tokenizer_kwargs, write_results


def check_profile_options(options: DictConfig) -> None:
    """``profile.batch_size`` and ``profile.text_length`` (null = the tokenizer's max_length) before anything is
    built: a bad one would end in a traceback inside the forward."""
    for key, wanted, fix in (("batch_size", int, "give 1 or more samples"),
                             ("text_length", int | None, "give 1 or more tokens, or null for the tokenizer's "
                                                         "max_length")):
        value = options.get(key)
        check_value_type(value, wanted, f"profile.{key}")
        if value is not None and int(value) < 1:
            raise RisbenchError(f"profile.{key} must be >= 1, got {value}\n  how to fix: {fix}")


def vocab_size_for_profile(cfg: DictConfig) -> int:
    """The tokenizer's vocabulary size: from its files when present, else the config's expected size."""
    expected = cfg.tokenizer.get("vocab_size")
    path = cfg.tokenizer.get("path")
    if path and Path(path).exists():
        return build_tokenizer(**tokenizer_kwargs(cfg)).vocab_size
    if expected is None:
        raise RisbenchError(f"tokenizer files {path} are missing and tokenizer.vocab_size is not set; "
                            "set tokenizer.vocab_size=N to profile without them")
    return int(expected)


def dummy_batch(batch_size: int, img_size: int, text_length: int, vocab_size: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "image": torch.randn(batch_size, 3, img_size, img_size, generator=generator),
        "tokens": torch.randint(1, vocab_size, (batch_size, text_length), generator=generator),
        "attention_mask": torch.ones(batch_size, text_length, dtype=torch.long),
        "mask": torch.zeros(batch_size, 1, img_size, img_size),
    }


def profile(cfg: DictConfig) -> dict:
    started = time.time()
    check_profile_options(cfg.profile)
    vocab_size = vocab_size_for_profile(cfg)
    net = build_net(cfg, vocab_size)
    img_size = int(cfg.data.img_size)
    text_length = int(cfg.tokenizer.max_length if cfg.profile.text_length is None else cfg.profile.text_length)
    batch = dummy_batch(int(cfg.profile.batch_size), img_size, text_length, vocab_size)
    macs, macs_by_module = count_macs(net, batch)
    params = count_params(net)
    params_of = params_by_module(net)
    exclude = tuple(getattr(net, "profile_exclude", ()))
    report = {
        "model": cfg.model._target_,
        "img_size": img_size,
        "batch_size": int(cfg.profile.batch_size),
        "params": params,
        "params_excluding": {"prefixes": list(exclude), **count_params(net, exclude)} if exclude else None,
        "macs": macs,
        "gmacs": macs / 1e9,
        "mac_convention": MAC_NOTES,
        "by_module": {name: {"params": params_of.get(name, 0), "gmacs": macs_by_module.get(name, 0) / 1e9}
                      for name in {**params_of, **macs_by_module}},
    }
    (run_dir() / "profile.json").write_text(json.dumps(report, indent=2))
    print_profile(report)
    write_results(cfg, started, profile=report)
    log.info("profile written to %s", run_dir() / "profile.json")
    return report


def print_profile(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report['model']} at {report['img_size']}px, batch {report['batch_size']}: "
                        f"{report['params']['total'] / 1e6:.2f}M params "
                        f"({report['params']['trainable'] / 1e6:.2f}M trainable), {report['gmacs']:.2f} GMACs")
    table.add_column("module")
    table.add_column("params (M)", justify="right")
    table.add_column("GMACs", justify="right")
    for name, row in report["by_module"].items():
        table.add_row(name, f"{row['params'] / 1e6:.3f}", f"{row['gmacs']:.3f}")
    Console().print(table)
    Console().print(report["mac_convention"])
    if report["params_excluding"]:
        excl = report["params_excluding"]
        Console().print(f"params excluding {excl['prefixes']}: {excl['total'] / 1e6:.3f}M")
