"""The model contract: what lets one LightningModule drive every paper.

A risbench model is an `nn.Module` subclass of `RISModel`:

* ``__init__(..., vocab_size: int)`` -- the harness passes the configured tokenizer's vocabulary
  size; every other argument comes from the ``model:`` config node (``_target_`` = the class).
* ``forward(batch) -> dict`` -- ``batch`` is the collated dict of the DataModule:

  ===================  =====================  =================================================
  key                  shape / type           meaning
  ===================  =====================  =================================================
  ``image``            (B, 3, S, S) float     normalised input image (letterbox or stretch to S)
  ``tokens``           (B, T) long            token ids, 0 = padding
  ``attention_mask``   (B, T) long            1 on real tokens, 0 on padding
  ``mask``             (B, 1, S, S) float     ground truth at input resolution (train/val/test)
  ``valid_box``        (B, 4) long            (y0, x0, y1, x1) of the image content in the input
  ``orig_size``        (B, 2) long            (H, W) of the original image
  ``orig_masks``       list[(H, W) bool]      ground truth at original resolution (eval only)
  ``num_words``        (B,) long              expression length in words (length buckets)
  ``text``, ``ref_id``, ``sent_id``, ``image_id``: lists of per-sample metadata
  ===================  =====================  =================================================

* ``loss(outputs, batch) -> dict`` -- ``loss`` (the scalar to minimise) plus named parts; every entry is
  logged as ``train/<name>``.
* ``mask_logits(outputs) -> (B, 1, h, w)`` -- the final prediction as a foreground logit (two-class
  models return ``fg - bg``, so ``logit >= 0`` is the argmax); the harness resizes it back to the
  original image, thresholds it and scores it.

Optional: ``no_weight_decay() -> set[str]`` of extra parameter names exempt from weight decay (timm
convention). `set_grad_checkpointing` (``model.grad_checkpointing=true``) needs nothing from a model whose
towers come from timm or transformers; a model's own big stacks honour a ``grad_checkpointing`` flag. ``load_pretrained()`` is called once before training: by default it calls ``load_pretrained()``
of every submodule whose ``pretrained`` flag is set (text encoders, vision towers read their local files).
The LightningModule never knows which paper it runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class RISModel(nn.Module, ABC):
    """Base class of every architecture; see the module docstring for the contract."""

    @abstractmethod
    def forward(self, batch: dict) -> dict:
        ...

    @abstractmethod
    def loss(self, outputs: dict, batch: dict) -> dict:
        ...

    @abstractmethod
    def mask_logits(self, outputs: dict) -> torch.Tensor:
        ...

    def no_weight_decay(self) -> set[str]:
        return set()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of the big towers: timm modules (``grad_checkpointing``), Hugging Face
        models (``activation_checkpointing_enable``) and risbench modules with a ``grad_checkpointing`` flag."""
        for module in self.modules():
            if module is self:
                continue
            if hasattr(module, "activation_checkpointing_enable"):  # transformers PreTrainedModel
                if enable:
                    module.activation_checkpointing_enable({"use_reentrant": False})
                else:
                    module.activation_checkpointing_disable()
            elif isinstance(getattr(module, "grad_checkpointing", None), bool):
                module.grad_checkpointing = enable

    def load_pretrained(self) -> None:
        """Load the local weights of every part whose config asks for them (``pretrained=true``)."""
        for module in self.modules():
            if module is not self and getattr(module, "pretrained", False) and hasattr(module, "load_pretrained"):
                module.load_pretrained()


def distinct_images(image: torch.Tensor, image_ids: list) -> tuple[list[int], torch.Tensor]:
    """Batch positions of the first sample of each distinct image, and each sample's index among them.

    Samples are the same image when they share an ``image_id`` *and* their pixels (an augmentation could
    make them differ; such a sample counts as an image of its own). Lets a model whose vision encoder
    does not see the text run it once per image for all the expressions of that image in the batch
    (evaluation visits a referent's expressions in a row). One pixel comparison for the whole batch, so
    one device sync.
    """
    first_of: dict = {}
    candidate = [first_of.setdefault(key, position) for position, key in enumerate(image_ids)]
    repeats = [position for position, first in enumerate(candidate) if first != position]
    if repeats:
        same = (image[repeats] == image[[candidate[p] for p in repeats]]).flatten(1).all(1).tolist()
        for position, equal in zip(repeats, same):
            if not equal:
                candidate[position] = position
    first = [position for position, first in enumerate(candidate) if first == position]
    index_of = {position: index for index, position in enumerate(first)}
    return first, torch.tensor([index_of[c] for c in candidate], device=image.device)
