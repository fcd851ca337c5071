"""Shared-RIS: a simple baseline with a single encoder for referring image segmentation (Yu et al., 2024).

One vision-language encoder, BEiT-3 (`risbench.models.common.beit3`), sees the image patches and the
expression together; two light heads follow, both with joint attention over the whole token sequence
(spec ``papers/single_encoder.md`` §2)::

    h_j = BEiT-3 layer j over [v_cls, patches (n); <s>, words, </s> (T)]       (B, n + 1 + T, 768)
    Shared FPN:    z_j = MSA_j(LN_j(W_j h_j)) + W_j h_j  for j in stages;  z = W_f [z_j ...]   (B, N, 512)
    Shared Mask Decoder: num_layers x pre-LN [MSA, one MLP for all tokens];  u = split at n + 1
                   F = 2 x [up x2, conv3x3, BN, ReLU], conv1x1 on u[:, 1:n+1] as a (512, h/16, w/16) map
                   t' = MLP(u[:, n + 1]) (the text <s> token);  logit(i, j) = <F(i, j), t'>   (B, 1, h/4, w/4)
    loss = 2.0 BCE + 0.5 Dice on the h/4 logits against the nearest-downsampled ground truth

Ablation knobs (the paper's tables): ``fpn.stages`` ([] = no FPN: one Linear on the last layer),
``fpn.fusion`` (self | cross | bidirectional | none), ``decoder.num_layers``, ``decoder.fusion`` (self |
cross | bidirectional), ``decoder.type`` (shared | none | cgformer | dmmi). The cross and bidirectional
fusions follow spec §6.10: image tokens attend to the text and the text passes unchanged; Grounding-DINO's
bi-attention (one set of image-text logits, softmax both ways) with per-modality self-attention and FFNs.
``decoder.type=cgformer|dmmi`` are **approximate stand-ins** for those papers' fusion decoders (Table V):
stacks of the cross-attention (CGFormer) and bi-directional (DMMI) layers, sized to the reported parameter
counts; their MACs are far below the reported ones (the papers' own decoders are not re-implemented).

Text is right-padded; padded columns beyond the longest expression of the batch are dropped (the paper
pads per batch) and the rest are masked as keys in every attention. Parameters the forward never uses
(BEiT-3's mask token, its final LayerNorm unless ``fpn.final_ln_on_last``, layers after the deepest
stage) stay in the state dict for the checkpoint but are frozen.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from risbench.errors import RisbenchError
from risbench.losses import bce_loss, dice_loss
from risbench.models.base import RISModel
from risbench.models.common.attention import Attention, Block
from risbench.models.common.beit3 import BEiT3

FPN_FUSIONS = ("self", "cross", "bidirectional", "none")
DECODER_FUSIONS = ("self", "cross", "bidirectional")
DECODER_TYPES = ("shared", "none", "cgformer", "dmmi")
# Table V stand-ins: which fusion layer each stacks
STAND_IN_FUSION = {"cgformer": "cross", "dmmi": "bidirectional"}
LOSS_RESOLUTIONS = ("pred", "input")


def _choice(value, allowed: Sequence[str], key: str) -> str:
    if value not in allowed:
        raise RisbenchError(f"{key} must be one of {list(allowed)}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------- fusion layers
# Each maps x (B, N, C) = [image tokens (split); text tokens] with key padding pad (B, N) (True = padding,
# or None) to (B, N, C).

class SharedSelfAttention(nn.Module):
    """``x + MSA(LN(x))`` over all tokens (the paper's shared self-attention); with ``mlp_dim`` a full pre-LN
    block whose one MLP serves both modalities (the decoder layer, Eq. 8-9)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int | None = None):
        super().__init__()
        if mlp_dim:
            self.block = Block(dim, num_heads, mlp_dim=mlp_dim)
        else:
            self.norm = nn.LayerNorm(dim)
            self.attn = Attention(dim, num_heads)
        self.has_mlp = bool(mlp_dim)

    def forward(self, x: torch.Tensor, split: int, pad: torch.Tensor | None) -> torch.Tensor:
        if self.has_mlp:
            return self.block(x, key_padding_mask=pad)
        return x + self.attn(self.norm(x), key_padding_mask=pad)


class CrossFusion(nn.Module):
    """Image tokens attend to the text tokens (after one LN over all tokens); the text passes unchanged.
    With ``mlp_dim`` an MLP follows on the image tokens."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int | None = None):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, context_dim=dim)
        self.norm2 = nn.LayerNorm(dim) if mlp_dim else None
        self.mlp = Mlp(dim, hidden_features=mlp_dim) if mlp_dim else None

    def forward(self, x: torch.Tensor, split: int, pad: torch.Tensor | None) -> torch.Tensor:
        a = self.norm(x)
        v = x[:, :split] + self.attn(a[:, :split], a[:, split:],
                                     key_padding_mask=None if pad is None else pad[:, split:])
        if self.mlp is not None:
            v = v + self.mlp(self.norm2(v))
        return torch.cat([v, x[:, split:]], dim=1)


class BiAttention(nn.Module):
    """Grounding-DINO's bi-directional attention: one set of image-text logits q_v k_l^T, softmax over the
    text for the image queries and over the image for the text queries, with separate value and output
    projections per direction."""

    def __init__(self, dim: int, num_heads: int, inner_dim: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, inner_dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = True
        self.v_proj, self.l_proj = nn.Linear(dim, inner_dim), nn.Linear(dim, inner_dim)
        self.values_v_proj, self.values_l_proj = nn.Linear(dim, inner_dim), nn.Linear(dim, inner_dim)
        self.out_v_proj, self.out_l_proj = nn.Linear(inner_dim, dim), nn.Linear(inner_dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        return x.view(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, N, d)

    def forward(self, v: torch.Tensor, l: torch.Tensor, l_pad: torch.Tensor | None):
        q, k = self._heads(self.v_proj(v)) * self.scale, self._heads(self.l_proj(l))
        values_v, values_l = self._heads(self.values_v_proj(v)), self._heads(self.values_l_proj(l))
        bias = None
        if l_pad is not None:
            bias = torch.zeros(l_pad.shape, dtype=q.dtype, device=q.device).masked_fill(l_pad, float("-inf"))
            bias = bias[:, None, None, :]
        if self.fused_attn:  # the text->image logits are k q^T: the same numbers, transposed
            out_v = F.scaled_dot_product_attention(q, k, values_l, attn_mask=bias, scale=1.0)
            out_l = F.scaled_dot_product_attention(k, q, values_v, scale=1.0)
        else:
            logits = q @ k.transpose(-2, -1)                                   # (B, heads, Nv, Nl)
            out_v = (logits if bias is None else logits + bias).softmax(-1) @ values_l
            out_l = logits.transpose(-2, -1).softmax(-1) @ values_v
        merge = lambda t: t.transpose(1, 2).flatten(2)                         # noqa: E731
        return self.out_v_proj(merge(out_v)), self.out_l_proj(merge(out_l))


class BidirectionalFusion(nn.Module):
    """Grounding-DINO's feature-enhancer fusion: bi-attention with layer scale (init 1e-4), then image and
    text self-attention blocks, each with its own FFN."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, inner_dim: int, init_scale: float = 1e-4):
        super().__init__()
        self.norm_v, self.norm_l = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = BiAttention(dim, max(1, num_heads // 2), inner_dim)
        self.gamma_v = nn.Parameter(torch.full((dim,), init_scale))
        self.gamma_l = nn.Parameter(torch.full((dim,), init_scale))
        self.image_block = Block(dim, num_heads, mlp_dim=mlp_dim)
        self.text_block = Block(dim, num_heads, mlp_dim=mlp_dim)

    def forward(self, x: torch.Tensor, split: int, pad: torch.Tensor | None) -> torch.Tensor:
        v, l = x[:, :split], x[:, split:]
        l_pad = None if pad is None else pad[:, split:]
        dv, dl = self.attn(self.norm_v(v), self.norm_l(l), l_pad)
        v = self.image_block(v + self.gamma_v * dv)
        l = self.text_block(l + self.gamma_l * dl, key_padding_mask=l_pad)
        return torch.cat([v, l], dim=1)


def fusion_layer(kind: str, dim: int, num_heads: int, mlp_dim: int | None) -> nn.Module:
    """One fusion layer; ``mlp_dim`` None = attention only (FPN levels). Bi-directional always has FFNs."""
    if kind == "self":
        return SharedSelfAttention(dim, num_heads, mlp_dim)
    if kind == "cross":
        return CrossFusion(dim, num_heads, mlp_dim)
    if kind == "bidirectional":
        return BidirectionalFusion(dim, num_heads, mlp_dim or 4 * dim, inner_dim=2 * dim)
    return nn.Identity()


# ---------------------------------------------------------------------------------- Shared FPN

class FPNLevel(nn.Module):
    """``z_j = fuse(W_j h_j)``: a Linear to d_w, then the level's fusion (Eq. 6)."""

    def __init__(self, in_dim: int, dim: int, num_heads: int, fusion: str):
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)
        self.fuse = fusion_layer(fusion, dim, num_heads, mlp_dim=None) if fusion != "none" else None

    def forward(self, h: torch.Tensor, split: int, pad: torch.Tensor | None) -> torch.Tensor:
        y = self.proj(h)
        return y if self.fuse is None else self.fuse(y, split, pad)


class SharedFPN(nn.Module):
    """Levels over the encoder layers ``stages``, concatenated on channels and projected (Eq. 7);
    ``stages=[]`` = no FPN, one Linear on the last layer's tokens."""

    def __init__(self, in_dim: int, dim: int, stages: Sequence[int], num_heads: int, fusion: str, last: int):
        super().__init__()
        self.stages = list(stages)
        self.last = last
        self.levels = nn.ModuleList(FPNLevel(in_dim, dim, num_heads, fusion) for _ in self.stages)
        self.out = nn.Linear(len(self.stages) * dim if self.stages else in_dim, dim)

    def forward(self, hidden: dict[int, torch.Tensor], split: int, pad: torch.Tensor | None) -> torch.Tensor:
        if not self.stages:
            return self.out(hidden[self.last])
        return self.out(torch.cat([level(hidden[j], split, pad) for j, level in zip(self.stages, self.levels)], -1))


# ---------------------------------------------------------------------------------- Shared Mask Decoder

class MaskHead(nn.Module):
    """CRIS's projector at width d_w: the image tokens (v_cls dropped) as a map, 2 x [bilinear up x2, conv3x3,
    BN, ReLU], conv1x1; the text <s> token through Linear-ReLU-Linear; logits = their dot product per pixel."""

    def __init__(self, dim: int, grid: int):
        super().__init__()
        self.grid = grid
        ups = []
        for _ in range(2):
            ups += [nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(dim, dim, 3, padding=1, bias=False),
                    nn.BatchNorm2d(dim), nn.ReLU(inplace=True)]
        self.vis = nn.Sequential(*ups, nn.Conv2d(dim, dim, 1))
        self.txt = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))

    def forward(self, u: torch.Tensor, split: int) -> torch.Tensor:
        B, _, C = u.shape
        f0 = u[:, 1:split].transpose(1, 2).reshape(B, C, self.grid, self.grid)  # (B, C, h/p, w/p)
        f2 = self.vis(f0)                                                         # (B, C, 4h/p, 4w/p)
        text = self.txt(u[:, split])                                              # (B, C) from <s>
        return torch.einsum("bchw,bc->bhw", f2, text)[:, None]


class SharedMaskDecoder(nn.Module):
    """``num_layers`` fusion layers at d_w (shared self-attention + one MLP by default), then the mask head."""

    def __init__(self, dim: int, grid: int, num_layers: int, fusion: str, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.layers = nn.ModuleList(fusion_layer(fusion, dim, num_heads, int(mlp_ratio * dim))
                                    for _ in range(num_layers))
        self.head = MaskHead(dim, grid)

    def forward(self, z: torch.Tensor, split: int, pad: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layers:
            z = layer(z, split, pad)
        return self.head(z, split)


# ---------------------------------------------------------------------------------- the model

class SharedRIS(RISModel):
    """BEiT-3 + Shared FPN + Shared Mask Decoder. ``encoder``, ``fpn``, ``decoder``, ``loss`` are the config
    nodes of the same names (conf/model/shared_ris.yaml documents every key)."""

    def __init__(self, vocab_size: int, img_size: int, encoder: dict, fpn: dict, decoder: dict, loss: dict,
                 max_text_length: int | None = None):
        super().__init__()
        encoder = dict(encoder)
        rows = encoder.pop("vocab_size", None)
        if rows is None:
            rows = vocab_size
        elif vocab_size > rows:
            raise RisbenchError(f"the tokenizer has {vocab_size} ids but BEiT-3's text embedding has {rows} rows "
                                "(model.encoder.vocab_size).\n  how to fix: use BEiT-3's beit3.spm tokenizer "
                                "(64,002 ids fit the 64,010 rows), or model.encoder.vocab_size=null to size the "
                                "table to the tokenizer (random init only)")
        self.encoder = BEiT3(img_size=img_size, vocab_size=rows, **encoder)
        depth, width = self.encoder.depth, self.encoder.embed_dim
        if max_text_length is not None and max_text_length > self.encoder.max_text_length:
            raise RisbenchError(f"tokenizer.max_length={max_text_length} exceeds BEiT-3's text position table "
                                f"({self.encoder.max_text_length} tokens; model.encoder.max_text_positions)")
        stages = [int(j) for j in fpn.get("stages") or []] if fpn.get("stages") is not None \
            else [depth * k // 4 for k in range(1, 5)]
        if stages != sorted(set(stages)) or any(not 1 <= j <= depth for j in stages):
            raise RisbenchError(f"model.fpn.stages={stages} must be increasing encoder layers in 1..{depth}")
        self.stages = stages
        self.final_ln_on_last = bool(fpn.get("final_ln_on_last", False))
        fusion = _choice(fpn.get("fusion", "self"), FPN_FUSIONS, "model.fpn.fusion")
        dim, heads = int(fpn.get("dim", 512)), int(fpn.get("num_heads", 8))
        self.fpn = SharedFPN(width, dim, stages, heads, fusion, last=depth)

        kind = _choice(decoder.get("type", "shared"), DECODER_TYPES, "model.decoder.type")
        layers, dec_fusion = int(decoder.get("num_layers", 1)), decoder.get("fusion", "self")
        if kind == "none":
            layers = 0
        elif kind in STAND_IN_FUSION:
            dec_fusion, layers = STAND_IN_FUSION[kind], int(decoder["stand_in_layers"][kind])
        _choice(dec_fusion, DECODER_FUSIONS, "model.decoder.fusion")
        self.decoder = SharedMaskDecoder(dim, self.encoder.vision_embed.grid, layers, dec_fusion,
                                         int(decoder.get("num_heads", heads)), float(decoder.get("mlp_ratio", 4)))

        loss = dict(loss or {})
        self.bce_weight, self.dice_weight = float(loss.get("bce_weight", 2.0)), float(loss.get("dice_weight", 0.5))
        self.loss_resolution = _choice(loss.get("resolution", "pred"), LOSS_RESOLUTIONS, "model.loss.resolution")
        self._freeze_unused(max(stages) if stages else depth)

    def _freeze_unused(self, deepest: int) -> None:
        unused = [self.encoder.vision_embed.mask_token, *self.encoder.encoder.layers[deepest:].parameters()]
        if not (self.final_ln_on_last and deepest == self.encoder.depth):
            unused += list(self.encoder.encoder.layer_norm.parameters())
        for param in unused:
            param.requires_grad_(False)

    def text_inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and padding (True = pad), cut to the longest expression of the batch."""
        mask = batch["attention_mask"].bool()
        right_padded, length = torch.stack([((mask[:, 1:] <= mask[:, :-1]).all() & mask[:, 0].all()).long(),
                                            mask.sum(1).max()]).tolist()
        if not right_padded:
            raise RisbenchError("Shared-RIS reads the text <s> token from the first text position: every expression "
                                "needs it there (tokenizer.padding_side=right, tokenizer.add_special_tokens=true)")
        return batch["tokens"][:, :length], ~mask[:, :length]

    def forward(self, batch: dict) -> dict:
        image = batch["image"]
        tokens, pad = self.text_inputs(batch)
        final = self.final_ln_on_last and (not self.stages or self.stages[-1] == self.encoder.depth)
        enc = self.encoder(image, tokens, pad, layers=self.stages or [self.encoder.depth], final_norm=final)
        hidden, split = enc["layers"], enc["split"]
        if final:
            hidden[self.encoder.depth] = enc["out"]
        keypad = F.pad(pad, (split, 0), value=False) if bool(pad.any()) else None
        z = self.fpn(hidden, split, keypad)                                   # (B, N, d_w)
        return {"logits": self.decoder(z, split, keypad), "size": tuple(image.shape[-2:])}

    def loss(self, outputs: dict, batch: dict) -> dict:
        logits, target = outputs["logits"].float(), batch["mask"].float()
        if self.loss_resolution == "pred":  # CRIS: the ground truth nearest-downsampled to the logits
            target = F.interpolate(target, size=logits.shape[-2:], mode="nearest")
        else:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        bce, dice = bce_loss(logits, target), dice_loss(logits, target)
        return {"loss": self.bce_weight * bce + self.dice_weight * dice, "bce": bce.detach(), "dice": dice.detach()}

    def mask_logits(self, outputs: dict) -> torch.Tensor:
        """The probability map upsampled bilinearly to the input (spec §3), as logits for the harness."""
        probs = F.interpolate(outputs["logits"].float().sigmoid(), size=outputs["size"], mode="bilinear",
                              align_corners=False)
        return torch.logit(probs, eps=1e-6)
