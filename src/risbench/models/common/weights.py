"""Loading pretrained weights from local files (nothing is downloaded at run time)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from torch import nn

from risbench.errors import MissingFileError, RisbenchError

# the lines torch writes around a weights_only refusal: advice (turning the check off among it), not the reason
_TORCH_LOAD_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation of torch.load")


def load_failure(exc: Exception) -> str:
    """Why a file did not load, on one line: torch's reason (the global it refused, the bad opcode) without
    its advice to turn the weights-only check off, the one thing never to do with a stranger's file."""
    reason = [line.strip() for line in str(exc).splitlines()
              if line.strip() and not line.strip().startswith(_TORCH_LOAD_ADVICE)]
    return f"{type(exc).__name__}: {'; '.join(reason)}" if reason else type(exc).__name__


def read_state_dict(path: str | Path, what: str, hint: str) -> dict[str, torch.Tensor]:
    """Read a ``.pth/.pt/.bin``, ``.safetensors`` or ``.npz`` file into a flat state dict.

    Unwraps the usual containers (``model``, ``state_dict``, ``module``). ``what`` and ``hint`` make the
    error say what the file is and where to get it.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(what, path, hint)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        elif path.suffix == ".npz":
            import numpy as np

            with np.load(path) as arrays:
                state = {k: torch.from_numpy(arrays[k]) for k in arrays.files}
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable file: say which and why
        raise RisbenchError(f"{what} at {path} could not be read ({load_failure(exc)}).\n"
                            f"  how to fix: {hint}") from None
    for key in ("model", "state_dict", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise RisbenchError(f"{what} at {path} holds a {type(state).__name__}, not a state dict")
    return state


def read_released_checkpoint(path: str | Path, what: str, hint: str) -> dict:
    """A paper's released training checkpoint as saved (a dict of state dicts, often with the run's
    ``argparse.Namespace``): ``torch.load(weights_only=True)`` with exactly ``argparse.Namespace`` allowed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(what, path, hint)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable, or it holds objects other than tensors, containers and a Namespace
        raise RisbenchError(f"{what} at {path} could not be read safely ({load_failure(exc)}).\n"
                            f"  how to fix: {hint}") from None
    if not isinstance(checkpoint, dict):
        raise RisbenchError(f"{what} at {path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint


def load_into(module: nn.Module, state: dict[str, torch.Tensor], what: str,
              allowed_missing: tuple[str, ...] = (), allowed_unexpected: tuple[str, ...] = ()) -> None:
    """``load_state_dict(strict=False)`` that fails clearly when keys other than the allowed ones differ."""
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(allowed_missing)] if allowed_missing \
        else list(result.missing_keys)
    unexpected = [k for k in result.unexpected_keys if not k.startswith(allowed_unexpected)] \
        if allowed_unexpected else list(result.unexpected_keys)
    if missing or unexpected:
        raise RisbenchError(
            f"{what} does not match the model: {len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}.\n"
            "  how to fix: point the config at a checkpoint of the same architecture and size.")


def rename_released_keys(state: dict, renames: list[tuple[str, str]], dropped_rules: list[tuple[str, str]]
                         ) -> tuple[dict, dict[str, str], list[str]]:
    """A released state dict under risbench's names: each key is dropped by the first ``(pattern, reason)``
    of ``dropped_rules`` that matches it whole, else renamed by the first matching ``(pattern, replacement)``
    of ``renames``; returns (renamed state, {dropped key: reason}, the keys neither rule knows)."""
    renamed, dropped, unknown = {}, {}, []
    for key, value in state.items():
        reason = next((why for pattern, why in dropped_rules if re.fullmatch(pattern, key)), None)
        if reason is not None:
            dropped[key] = reason
            continue
        rule = next(((pattern, repl) for pattern, repl in renames if re.fullmatch(pattern, key)), None)
        if rule is None:
            unknown.append(key)
            continue
        renamed[re.sub(rule[0], rule[1], key)] = value
    return renamed, dropped, unknown
