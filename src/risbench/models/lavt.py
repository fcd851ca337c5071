"""LAVT: Language-Aware Vision Transformer (Yang et al., CVPR 2022), as SADLR uses it.

Swin-B with a pixel-word attention module (PWAM) and a language gate after every stage, BERT-base word
features, and LAVT's multi-scale decoder (``SimpleDecoding``) ending in a 1x1 two-class classifier.
Details follow the public LAVT code (spec: ``papers/sadlr.md`` §2.2)::

    image (B,3,480,480) --Swin stage s--> x_s --PWAM(x_s, L)--> F_s --LN--> decoder input s
                                           x_s + tanh-gate(F_s) * F_s --> stage s+1
    decoder: F_4 (1024,15²) -> +F_3 -> +F_2 -> +F_1 = Y (512,120²) -> Conv1x1 -> (2,120²)

`LAVT` is a `DenseReferringModel` (``encode(batch) -> Y``, the two-class classifier and losses), so SADLR
can put its head on it; the text encoder is the configured one (``model.text``, BERT-base in the paper).

`official_checkpoint_filter_fn` maps LAVT's released checkpoints (github.com/yz93/LAVT-RIS) onto this model;
``python -m risbench.convert lavt-official`` writes them as risbench checkpoints.
"""

from __future__ import annotations

import re
from argparse import Namespace
from collections.abc import Callable

import torch
from torch import nn

from risbench.errors import RisbenchError
from risbench.models.common.decoders import SimpleDecoding, tokens_to_map
from risbench.models.common.fusion import PWAM, LanguageGate
from risbench.models.common.heads import DenseReferringModel
from risbench.models.common.text import TextEncoder
from risbench.models.common.vision.swin import SwinTower
from risbench.models.common.weights import rename_released_keys


class LanguageAwareSwin(nn.Module):
    """Swin stages with PWAM + gate after each; returns the normalised F_s of every stage (B,D_s,H_s,W_s).

    The last stage has no gate: its gated tokens would feed no further stage (LAVT computes and drops them).
    """

    def __init__(self, vision: dict, text_dim: int, gate_init: str = "lavt"):
        super().__init__()
        self.swin = SwinTower(**vision)
        self.dims = self.swin.dims
        self.pwams = nn.ModuleList(PWAM(d, text_dim) for d in self.dims)
        self.gates = nn.ModuleList(LanguageGate(d, gate_init) for d in self.dims[:-1])
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in self.dims)

    def forward(self, image: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> list[torch.Tensor]:
        x = self.swin.embed(image)                             # (B, H/4, W/4, D_1)
        outs = []
        for s, pwam in enumerate(self.pwams):
            x = self.swin.stage(s, x)                          # (B, H_s, W_s, D_s)
            B, H, W, D = x.shape
            tokens = x.reshape(B, H * W, D)
            f = pwam(tokens, words, word_mask)                 # (B, H_s W_s, D_s)
            if s < len(self.gates):
                x = (tokens + self.gates[s](f) * f).view(B, H, W, D)
            outs.append(tokens_to_map(self.norms[s](f), H, W))  # (B, D_s, H_s, W_s)
        return outs


class LAVT(DenseReferringModel):
    """LAVT (Swin + PWAM + gates, BERT, SimpleDecoding). ``channels`` = decoder width = Y's C (512)."""

    def __init__(self, vocab_size: int, text: Callable[..., TextEncoder], vision: dict, channels: int,
                 gate_init: str, loss: dict | None = None):
        super().__init__(vocab_size, text, channels, loss)
        self.vision = LanguageAwareSwin(vision, text_dim=self.text.out_dim, gate_init=gate_init)
        dims = self.vision.dims
        self.decoder = SimpleDecoding(dims[-1], dims[-2::-1], channels)

    def encode(self, batch: dict) -> dict:
        word_mask = batch["attention_mask"]
        words, sentence = self.text(batch["tokens"], word_mask)  # (B, T, C_l), (B, C_l)
        feats = self.vision(batch["image"], words, word_mask)  # per stage (B, D_s, H_s, W_s)
        y = self.decoder(feats[-1], feats[-2::-1])             # (B, C, H/4, W/4)
        return {"Y": y, "L": words, "sentence": sentence, "l_mask": word_mask}


# --- LAVT's released checkpoints (github.com/yz93/LAVT-RIS) -> this LAVT ---

# LAVT's args.swin_type -> (embed_dim, depths, num_heads), as its lib/segmentation.py builds the backbone
OFFICIAL_SWIN_TYPES = {
    "tiny": (96, [2, 2, 6, 2], [3, 6, 12, 24]),
    "small": (96, [2, 2, 18, 2], [3, 6, 12, 24]),
    "base": (128, [2, 2, 18, 2], [4, 8, 16, 32]),
    "large": (192, [2, 2, 18, 2], [6, 12, 24, 48]),
}


def official_architecture(args: Namespace) -> dict:
    """The network LAVT's code builds from a checkpoint's saved ``args``: ``vision`` (SwinTower dims and
    window), ``channels`` (its decoder width, 4 x embed_dim) and ``img_size``."""
    swin_type = getattr(args, "swin_type", "base")
    if swin_type not in OFFICIAL_SWIN_TYPES:
        raise RisbenchError(f"the checkpoint's args.swin_type is {swin_type!r}; LAVT knows {list(OFFICIAL_SWIN_TYPES)}")
    if any(int(h) != 1 for h in str(getattr(args, "mha", "") or "1").split("-")):
        raise RisbenchError(f"the checkpoint was trained with multi-head PWAMs (args.mha={args.mha!r}); this LAVT "
                            "has LAVT's default single-head PWAM")
    embed_dim, depths, num_heads = OFFICIAL_SWIN_TYPES[swin_type]
    # LAVT: window 12 when --window12 is set or the Swin weights it started from were a window-12 release
    # (the file name is only matched, never opened)
    window12 = bool(getattr(args, "window12", False)) or "window12" in str(getattr(args, "pretrained_swin_weights", ""))
    return {"vision": {"embed_dim": embed_dim, "depths": depths, "num_heads": num_heads,
                       "window_size": 12 if window12 else 7},
            "channels": 4 * embed_dim, "img_size": int(getattr(args, "img_size", 480))}


def _decoder_key(match: re.Match) -> str:
    """``classifier.{conv,bn}{j}_{k}``: conv j of the stage that fuses skip k-1 (k = 4, 3, 2 -> stage 0, 1, 2)."""
    layer, j, k, rest = match.groups()
    return f"decoder.stages.{4 - int(k)}.{int(j) - 1}.{0 if layer == 'conv' else 1}.{rest}"


# official key (regex) -> this LAVT's key; BERT is under ``text_encoder.`` (lavt_one, or ``bert_model`` moved there)
OFFICIAL_RENAMES = [
    (r"text_encoder\.(.*)", r"text.bert.\1"),
    (r"backbone\.patch_embed\.(.*)", r"vision.swin.patch_embed.\1"),
    (r"backbone\.layers\.(\d+)\.blocks\.(.*)", r"vision.swin.layers.\1.blocks.\2"),
    # the release downsamples at the end of stage i, timm at the start of stage i + 1
    (r"backbone\.layers\.(\d+)\.downsample\.(.*)", lambda m: f"vision.swin.layers.{int(m[1]) + 1}.downsample.{m[2]}"),
    (r"backbone\.layers\.(\d+)\.fusion\.vis_project\.0\.(.*)", r"vision.pwams.\1.vis_project.\2"),
    (r"backbone\.layers\.(\d+)\.fusion\.image_lang_att\.f_query\.0\.(.*)", r"vision.pwams.\1.query.\2"),
    (r"backbone\.layers\.(\d+)\.fusion\.image_lang_att\.f_key\.0\.(.*)", r"vision.pwams.\1.key.\2"),
    (r"backbone\.layers\.(\d+)\.fusion\.image_lang_att\.f_value\.0\.(.*)", r"vision.pwams.\1.value.\2"),
    (r"backbone\.layers\.(\d+)\.fusion\.image_lang_att\.W\.0\.(.*)", r"vision.pwams.\1.attn_out.\2"),
    (r"backbone\.layers\.(\d+)\.fusion\.project_mm\.0\.(.*)", r"vision.pwams.\1.project_mm.\2"),
    (r"backbone\.layers\.(\d+)\.res_gate\.0\.weight", r"vision.gates.\1.fc1.weight"),
    (r"backbone\.layers\.(\d+)\.res_gate\.2\.weight", r"vision.gates.\1.fc2.weight"),
    (r"backbone\.norm(\d+)\.(.*)", r"vision.norms.\1.\2"),
    (r"classifier\.(conv|bn)([12])_([432])\.(.*)", _decoder_key),
    (r"classifier\.conv1_1\.(.*)", r"classifier.\1"),
]

# official keys with no counterpart here, and why
OFFICIAL_DROPPED = [
    (r"backbone\.layers\.\d+\.blocks\.\d+\.attn\.relative_position_index",
     "relative_position_index: a buffer that timm rebuilds from the window size"),
    (r"text_encoder\.pooler\..*", "BERT's pooler: LAVT never runs it (this BERT has none)"),
    (r"text_encoder\.embeddings\.position_ids", "BERT's position_ids: a buffer that transformers rebuilds"),
]
LAST_GATE_REASON = "the last stage's res_gate: LAVT computes and discards its output (no stage follows)"


def official_checkpoint_filter_fn(checkpoint: dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A LAVT release (``{'model', 'bert_model', 'args', ...}``, or ``{'model'}`` with BERT inside as
    ``text_encoder.*``) -> (this LAVT's state dict, {dropped official key: why}).

    Every key is renamed, or dropped for a stated reason; any other key is an error. PWAM's 1x1 Conv1d
    weights (D, C, 1) become Linear weights (D, C).
    """
    model = checkpoint.get("model")
    if not isinstance(model, dict):
        raise RisbenchError("not a LAVT checkpoint: it has no 'model' state dict (keys: "
                            f"{sorted(checkpoint)[:6]})")
    official = dict(model)
    bert = checkpoint.get("bert_model")
    if bert is not None:  # `lavt`: BERT saved beside the model
        if not isinstance(bert, dict):
            raise RisbenchError(f"the checkpoint's 'bert_model' is a {type(bert).__name__}, not BERT's state dict "
                                "(weight name -> tensor) as LAVT's train.py saves it.\n  how to fix: pass the "
                                "checkpoint file LAVT's code wrote (github.com/yz93/LAVT-RIS), unchanged")
        if any(key.startswith("text_encoder.") for key in official):
            raise RisbenchError("the checkpoint holds BERT twice ('bert_model' and model.text_encoder.*)")
        official.update({f"text_encoder.{key}": value for key, value in bert.items()})
    last_stage = max((int(m[1]) for key in official if (m := re.match(r"backbone\.layers\.(\d+)\.", key))),
                     default=-1)
    dropped_rules = [*OFFICIAL_DROPPED, (rf"backbone\.layers\.{last_stage}\.res_gate\..*", LAST_GATE_REASON)]
    state, dropped, unknown = rename_released_keys(official, OFFICIAL_RENAMES, dropped_rules)
    # Conv1d(k=1) weights -> Linear weights
    state = {key: value.squeeze(-1) if ".pwams." in key and value.ndim == 3 else value for key, value in state.items()}
    if unknown:
        raise RisbenchError(f"{len(unknown)} keys of the checkpoint are not LAVT's: {unknown[:5]}.\n"
                            "  how to fix: pass a checkpoint of LAVT's code (github.com/yz93/LAVT-RIS)")
    return state, dropped
