"""Test helpers: compose the project config, list sweep jobs, run the CLI in a subprocess."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from risbench.config import CONF_DIR

REPO = CONF_DIR.parent


def compose_config(overrides: list[str], with_hydra: bool = False):
    """The project config; ``with_hydra`` keeps the ``hydra`` node (sweeper params) in it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=with_hydra)


def sweep_jobs(experiment: str) -> list[list[str]]:
    """Every job of an ablation file's ``hydra.sweeper.params`` grid, as override lists."""
    params = compose_config([f"experiment={experiment}"], with_hydra=True).hydra.sweeper.params
    keys = list(params or {})
    values = [str(params[key]).split(",") for key in keys]
    return [[f"{key}={value}" for key, value in zip(keys, combo)] for combo in itertools.product(*values)]


def run_cli(args: list[str], cwd: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m risbench ARGS`` in ``cwd``; outputs land under cwd/outputs.

    Flags (``-m``) are moved before the overrides, where Hydra's argument parser wants them.
    """
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", **(env or {})}
    flags = [arg for arg in args if arg.startswith("-")]
    overrides = [arg for arg in args if not arg.startswith("-")]
    return subprocess.run([sys.executable, "-m", "risbench", *flags, *overrides], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def build_model(model: str, vocab_size: int, overrides: list[str] | tuple = (), **nodes):
    """The ``model=<model>`` network as its config builds it (paper size unless ``overrides`` say otherwise),
    with the nested dicts ``nodes`` merged into its ``model:`` node (e.g. ``vision={"pretrained": False}``)."""
    from omegaconf import OmegaConf

    from risbench.tasks.common import build_net

    cfg = compose_config([f"model={model}", "scale=paper", *overrides])
    OmegaConf.set_struct(cfg, False)  # the merged nodes may add keys (e.g. explicit ViT dims)
    cfg = OmegaConf.merge(cfg, {"model": nodes})
    return build_net(cfg, vocab_size)


def ground_truth_masks(ann_dir: Path, split_by: str = "unc") -> dict[int, "np.ndarray"]:
    """ref_id -> the referent's (H, W) mask, the union of its annotation's parts, straight from the refer files
    with pycocotools (independent of risbench's loader)."""
    import json
    import pickle

    import numpy as np
    import pycocotools.mask as mask_utils

    instances = json.loads((Path(ann_dir) / "instances.json").read_text())
    images = {image["id"]: image for image in instances["images"]}
    anns = {ann["id"]: ann for ann in instances["annotations"]}
    with open(Path(ann_dir) / f"refs({split_by}).p", "rb") as handle:
        refs = pickle.load(handle)  # the test's own file
    masks = {}
    for ref in refs:
        ann, image = anns[ref["ann_id"]], images[ref["image_id"]]
        rles = mask_utils.frPyObjects(ann["segmentation"], image["height"], image["width"])
        masks[ref["ref_id"]] = mask_utils.decode(rles).max(axis=2).astype(bool)
    return masks


def independent_metrics(predictions: list[dict], truths: dict) -> dict[str, float]:
    """oIoU, mIoU and n of saved RLE predictions (``eval.save_predictions``) against ``truths``."""
    import math

    import numpy as np
    import pycocotools.mask as mask_utils

    inter, union, ious = 0, 0, []
    for record in predictions:
        pred = mask_utils.decode({"size": record["size"], "counts": record["counts"].encode()}).astype(bool)
        truth = truths[record["ref_id"]]
        i, u = int(np.logical_and(pred, truth).sum()), int(np.logical_or(pred, truth).sum())
        inter, union = inter + i, union + u
        ious.append(i / u if u else 0.0)
    return {"oIoU": inter / union if union else 0.0, "mIoU": math.fsum(ious) / len(ious), "n": float(len(ious))}


def official_vectors(folder: Path) -> tuple[dict, dict]:
    """An official code's test vectors: the batch it ran (image, tokens, attention mask) and its outputs."""
    from safetensors.torch import load_file

    inputs = load_file(folder / "inputs.safetensors")
    batch = {"image": inputs["image"], "tokens": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    return batch, load_file(folder / "outputs.safetensors")


def overfit_losses(model, batch: dict, steps: int = 10, lr: float = 1e-3) -> list[float]:
    """The loss over ``steps`` AdamW steps on one batch (a model that learns ends well below its start)."""
    import torch

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model.loss(model(batch), batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def run_on_synthref(args: list[str], synthref: Path, params: dict, cwd: Path, timeout: int = 900) -> None:
    """``python -m risbench ARGS`` at ``scale=tiny`` on a test synthref (generated in folder ``synthref`` with
    ``params``), in-process data loading; fails the test with the end of stderr unless it exits 0."""
    data = [f"data.synthref.{key}={value}" for key, value in params.items()]
    done = run_cli([*args, "scale=tiny", "data=synthref", f"paths.data_dir={synthref.parent}", "data.num_workers=0",
                    *data], cwd=cwd, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]


def sweep_results(cwd: Path, sweep: str) -> list[Path]:
    """The results.json of every job of a multirun ``sweep`` run in ``cwd``, in job order."""
    return sorted(cwd.glob(f"multirun/{sweep}/*/*/results.json"), key=lambda path: int(path.parent.name))


def bf16_forward_and_loss(model, batch: dict):
    """One forward and loss under CPU bf16 autocast: (outputs, loss)."""
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
        return out, model.loss(out, batch)["loss"]
