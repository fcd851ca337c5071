"""mode=predict ckpt_path=PATH: masks and overlays for (image, expression) pairs.

* one pair: ``predict.image=IMG predict.text="the red car"`` writes ``mask.png`` and ``overlay.png``.
  Hydra parses the command line, so an expression with commas, parentheses, quotes or other special
  characters is quoted for Hydra inside the shell's quotes: ``'predict.text="the (big) bear, left"'``;
* many pairs: ``predict.inputs=FILE``, a JSON list of ``{"image": ..., "text": ...}`` objects or a CSV with
  the header ``image,text`` (CSV quoting as usual; image paths relative to the file's folder), writes
  ``masks/<n>_<image>.png`` and ``overlays/<n>_<image>.png`` per pair and ``predictions.json`` (the
  summary: image, text, files and foreground pixels of each pair), so no one calls the CLI per expression.

Every input is checked before the model is built: a missing image or an empty expression is one message
naming its row. The mask is thresholded as ``eval.<predict.protocol>`` says (validated like evaluation's).
The model and tokenizer come from the checkpoint (`config_from_checkpoint`).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from risbench.data.datamodule import ReferCollator
from risbench.data.transforms import InputTransform, load_rgb
from risbench.errors import MissingFileError, RisbenchError
from risbench.evaluation import Protocol
from risbench.report.overlays import overlay
from risbench.tasks.common import (build_net, check_checkpoint_matches, config_from_checkpoint, log,
                                   read_checkpoint, resolve_ckpt_path, run_dir, write_results)

QUOTING = ("quote an expression with special characters for Hydra inside the shell's quotes: "
           "'predict.text=\"the (big) bear, left\"', or list the pairs in a file: predict.inputs=FILE")


def read_inputs(path: str | Path) -> list[tuple[Path, str]]:
    """The (image, text) pairs of a ``predict.inputs`` file (JSON list of objects, or CSV ``image,text``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError("predict.inputs", path, "a JSON list of {\"image\": ..., \"text\": ...} or a CSV "
                               "with the header image,text")
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        else:
            rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, csv.Error) as exc:
        raise RisbenchError(f"cannot read predict.inputs {path} ({type(exc).__name__}: {exc})") from None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise RisbenchError(f"predict.inputs {path} must hold a non-empty list of (image, text) rows: a JSON list "
                            "of {\"image\": ..., \"text\": ...} objects or a CSV with the header image,text")
    pairs, problems = [], []
    for number, row in enumerate(rows, 1):
        image, text = row.get("image"), row.get("text")
        if not image or text is None:
            problems.append(f"row {number}: needs 'image' and 'text' (has {sorted(row)})")
            continue
        pairs.append(((path.parent / str(image)).expanduser(), str(text)))
    return _checked(pairs, problems, f"predict.inputs {path}")


def _checked(pairs: list[tuple[Path, str]], problems: list[str], source: str) -> list[tuple[Path, str]]:
    for number, (image, text) in enumerate(pairs, 1):
        if not image.is_file():
            problems.append(f"row {number}: image not found: {image}")
        if not text.strip():
            problems.append(f"row {number}: the expression is empty")
    if problems:
        listed = "\n    ".join(problems[:10]) + (f"\n    ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise RisbenchError(f"{source} has {len(problems)} problem(s):\n    {listed}")
    return pairs


def prediction_pairs(options: DictConfig) -> list[tuple[Path, str]]:
    """What to predict: ``predict.inputs`` (a file of pairs) or one ``predict.image`` + ``predict.text``."""
    if options.get("inputs"):
        if options.image or options.text is not None:
            raise RisbenchError("give either predict.inputs=FILE or predict.image + predict.text, not both")
        return read_inputs(options.inputs)
    image, text = options.image, options.text
    if not image or text is None:
        raise RisbenchError('mode=predict needs predict.image=PATH and predict.text="the expression" (or '
                            f"predict.inputs=FILE with many pairs); {QUOTING}")
    if not Path(image).is_file():
        raise MissingFileError("predict.image", image, "pass the path of an existing image file")
    if not str(text).strip():
        raise RisbenchError(f"predict.text is empty; give the referring expression to segment ({QUOTING})")
    return [(Path(image), str(text))]


def predict(cfg: DictConfig) -> dict:
    started = time.time()
    ckpt_path = resolve_ckpt_path(cfg, required=True)
    pairs = prediction_pairs(cfg.predict)
    if cfg.predict.protocol not in ("common", "paper"):
        raise RisbenchError(f"predict.protocol must be common or paper, got {cfg.predict.protocol!r}")
    checkpoint = read_checkpoint(ckpt_path)
    cfg, restored, tokenizer = config_from_checkpoint(cfg, checkpoint)
    # validates the threshold as evaluation does (a probability in (0, 1)) before anything is computed
    protocol = Protocol.from_config(cfg.eval[cfg.predict.protocol], f"eval.{cfg.predict.protocol}")
    net = build_net(cfg, tokenizer.vocab_size)
    checkpoint = check_checkpoint_matches(ckpt_path, torch.nn.ModuleDict({"net": net}), checkpoint)
    net.load_state_dict({key.removeprefix("net."): value for key, value in checkpoint["state_dict"].items()})
    net.eval()

    transform = InputTransform(int(cfg.data.img_size), cfg.data.resize, cfg.data.normalize)
    collate = ReferCollator(tokenizer)  # what evaluation's loader does to samples
    out, many = run_dir(), bool(cfg.predict.get("inputs"))
    if many:
        (out / "masks").mkdir(exist_ok=True)
        (out / "overlays").mkdir(exist_ok=True)
    rows, batch_size = [], max(1, int(cfg.predict.get("batch_size") or 1))
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        images = [load_rgb(image) for image, _ in chunk]
        samples = []
        for image, (_, text) in zip(images, chunk):
            pixels, _, valid_box = transform(image)
            samples.append({"image": pixels, "mask": torch.zeros(1, *pixels.shape[-2:]), "valid_box": valid_box,
                            "orig_size": torch.tensor([image.height, image.width]), "text": text, "ref_id": -1,
                            "sent_id": -1, "image_id": -1})
        batch = collate(samples)
        with torch.no_grad():
            logits = net.mask_logits(net(batch)).float()
        for offset, (mask, image, (path, text)) in enumerate(zip(protocol.original_masks(logits, batch), images,
                                                                   chunk)):
            mask = mask.numpy()
            name = f"{start + offset:04d}_{path.stem}.png"
            mask_file, overlay_file = ((f"masks/{name}", f"overlays/{name}") if many
                                       else ("mask.png", "overlay.png"))
            Image.fromarray((mask * 255).astype(np.uint8)).save(out / mask_file)
            overlay(image, mask, text).save(out / overlay_file)
            rows.append({"image": str(path), "text": text, "mask": mask_file, "overlay": overlay_file,
                         "foreground_pixels": int(mask.sum())})
    protocol_cfg = OmegaConf.to_container(cfg.eval[cfg.predict.protocol], resolve=True)
    if many:
        (out / "predictions.json").write_text(json.dumps(rows, indent=2))
        log.info("wrote %d masks and overlays under %s (summary: predictions.json)", len(rows), out)
        write_results(cfg, started, checkpoint=ckpt_path, from_checkpoint=restored, inputs=str(cfg.predict.inputs),
                      protocol=protocol_cfg, predictions=rows, outputs=["predictions.json", "masks/", "overlays/"])
        return {"predictions": str(out / "predictions.json"), "count": len(rows)}
    row = rows[0]
    log.info("wrote %s and %s (%d foreground pixels)", out / row["mask"], out / row["overlay"],
             row["foreground_pixels"])
    write_results(cfg, started, checkpoint=ckpt_path, from_checkpoint=restored, image=row["image"],
                  text=row["text"], protocol=protocol_cfg, foreground_pixels=row["foreground_pixels"],
                  outputs=["mask.png", "overlay.png"])
    return {"mask": str(out / "mask.png"), "overlay": str(out / "overlay.png")}
