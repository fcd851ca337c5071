"""BEiT-3 (Wang et al., 2022): the Multiway Transformer over image patches and text tokens.

Written here because no installable library has it as a vision-language encoder: timm's ``beit3_*`` is
vision only (no text embedding, no ``.B`` weights), transformers has none, and torchscale (the official
code) pins old timm/fairscale. Parameter names and shapes are torchscale's ``BEiT3`` (the unilm ``beit3``
checkpoints hold them under ``beit3.``), so its state dicts load strictly::

    text_embed.weight                                    (vocab, C)        Embedding, ids of beit3.spm
    vision_embed.proj.{weight,bias}                      Conv2d 3 -> C, kernel = stride = patch
    vision_embed.{cls_token,mask_token}                  (1, 1, C)         mask_token is unused here
    encoder.embed_positions.{A,B}.weight                 (n + 3, C), (max_text_positions, C)
    encoder.layers.{i}.self_attn.{q,k,v,out}_proj.{A,B}  Linear C -> C (q, k, v: one fused Linear per modality)
    encoder.layers.{i}.self_attn.inner_attn_ln.{A,B}     LayerNorm C (sub-LN before out_proj)
    encoder.layers.{i}.self_attn_layer_norm.{A,B}        LayerNorm C
    encoder.layers.{i}.ffn.{A,B}.{fc1,ffn_layernorm,fc2} Linear C -> F, LayerNorm F (sub-LN), Linear F -> C
    encoder.layers.{i}.final_layer_norm.{A,B}            LayerNorm C
    encoder.layer_norm.{A,B}                             LayerNorm C (after the last layer)

``A`` is the vision copy (applied to the n + 1 image tokens, which come first), ``B`` the language copy
(the text tokens after them); only the softmax attention runs over all tokens jointly. Per layer (pre-LN,
Magneto sub-LN, no dropout)::

    x = x + DropPath(out_m(innerLN_m(softmax(q_m k^T / sqrt(d) + padding) v)))   q, k, v = proj_m(LN1_m(x))
    x = x + DropPath(fc2_m(ffnLN_m(gelu(fc1_m(LN2_m(x))))))

Positions follow Fairseq: rows 2.. of each table (vision: rows 2..n+2 for [cls, patches]; text: rows
2..T+1, restarting at 2). Padded text tokens are zeroed after the embedding and masked as keys in every
layer. The image and text rows are kept as two tensors through the layers, so nothing is split or
concatenated per projection; only q, k, v are joined for the attention (`F.scaled_dot_product_attention`,
or explicit matmuls when ``fused_attn`` is off, for FLOP counting).

`checkpoint_filter_fn` reads the released files (``beit3_base_patch16_224.pth``: ``model`` state dict,
keys prefixed ``beit3.``, task heads beside them) and resamples the vision position table to the model's
grid (bicubic on the patch rows [3:], rows [0:3] kept), as unilm's BEiT-3 fine-tuning code does.
"""

from __future__ import annotations

import argparse
import copy
import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from risbench.errors import RisbenchError
from risbench.models.common.weights import load_into, read_state_dict

log = logging.getLogger("risbench")

SIZES = {
    "base": dict(embed_dim=768, depth=12, num_heads=12, mlp_dim=3072),
    "large": dict(embed_dim=1024, depth=24, num_heads=16, mlp_dim=4096),
}
# Fairseq position tables start at row 2; the vision table also holds the cls row
POSITION_OFFSET = 2
BEIT3_HINT = ("download the BEiT-3 release checkpoint (beit3_base_patch16_224.pth, microsoft/unilm beit3) to "
              "that path (model.encoder.checkpoint=PATH), or train from scratch with model.encoder.pretrained=false")


class Multiway(nn.Module):
    """Two copies of one module: ``A`` for the image tokens, ``B`` for the text tokens."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.A = module
        self.B = copy.deepcopy(module)

    def forward(self, xv: torch.Tensor | None, xt: torch.Tensor | None):
        """Each modality through its own copy; an absent modality (None) stays None."""
        return (None if xv is None else self.A(xv)), (None if xt is None else self.B(xt))


class FeedForward(nn.Module):
    """fc1 -> GELU -> sub-LN -> fc2 (torchscale's FeedForwardNetwork with ``subln``)."""

    def __init__(self, dim: int, hidden: int, eps: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.ffn_layernorm = nn.LayerNorm(hidden, eps=eps)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.ffn_layernorm(F.gelu(self.fc1(x))))


class MultiwayAttention(nn.Module):
    """Joint self-attention over image + text tokens with per-modality q/k/v/out projections and sub-LN.

    q, k and v of a modality are one (3C, C) Linear (``qkv.A`` / ``qkv.B``: one matmul instead of three);
    the state dict still holds torchscale's ``q_proj``/``k_proj``/``v_proj`` entries (split on save,
    joined on load by the hooks below), so checkpoints keep the official layout.
    """

    PROJECTIONS = ("q_proj", "k_proj", "v_proj")

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = True
        self.qkv = Multiway(nn.Linear(dim, 3 * dim))
        self.out_proj = Multiway(nn.Linear(dim, dim))
        self.inner_attn_ln = Multiway(nn.LayerNorm(dim, eps=eps))
        self.register_state_dict_post_hook(_split_qkv)
        self.register_load_state_dict_pre_hook(_join_qkv)

    def forward(self, xv, xt, key_bias: torch.Tensor | None):
        """xv (B, Nv, C) / xt (B, Nt, C) or None; key_bias (B, 1, 1, Nv + Nt) additive (-inf = padding)."""
        parts = [p for p in self.qkv(xv, xt) if p is not None]
        qkv = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)      # (B, N, 3C)
        B, N, _ = qkv.shape
        q, k, v = qkv.view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if key_bias is not None:
                attn = attn + key_bias
            out = attn.softmax(dim=-1) @ v
        out = out.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim)
        split = 0 if xv is None else xv.shape[1]
        ov = out[:, :split] if xv is not None else None
        ot = out[:, split:] if xt is not None else None
        return self.out_proj(*self.inner_attn_ln(ov, ot))


def _split_qkv(module: MultiwayAttention, state_dict: dict, prefix: str, local_metadata) -> None:
    """state_dict hook: ``qkv.{A,B}`` -> torchscale's ``{q,k,v}_proj.{A,B}``."""
    for way in "AB":
        for kind in ("weight", "bias"):
            fused = state_dict.pop(f"{prefix}qkv.{way}.{kind}")
            for name, part in zip(MultiwayAttention.PROJECTIONS, fused.chunk(3)):
                state_dict[f"{prefix}{name}.{way}.{kind}"] = part


def _join_qkv(module: MultiwayAttention, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: torchscale's ``{q,k,v}_proj.{A,B}`` -> ``qkv.{A,B}`` (a partial set is left
    as it is, for the missing/unexpected-key report)."""
    for way in "AB":
        for kind in ("weight", "bias"):
            keys = [f"{prefix}{name}.{way}.{kind}" for name in MultiwayAttention.PROJECTIONS]
            if all(key in state_dict for key in keys):
                state_dict[f"{prefix}qkv.{way}.{kind}"] = torch.cat([state_dict.pop(key) for key in keys])


def drop_path_scale(x: torch.Tensor, p: float, training: bool) -> torch.Tensor | None:
    """Per-sample stochastic-depth factor (B, 1, 1), or None when inactive.

    One draw serves both modalities (torchscale drops the whole concatenated sequence of a sample);
    timm's DropPath would draw separately for the image and the text rows.
    """
    if not training or p == 0.0:
        return None
    keep = x.new_empty(x.shape[0], 1, 1).bernoulli_(1.0 - p)
    return keep / (1.0 - p)


def _residual(x, delta, scale):
    if x is None:
        return None
    return x + (delta if scale is None else delta * scale)


class MultiwayLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_dim: int, drop_path: float, eps: float):
        super().__init__()
        self.self_attn = MultiwayAttention(dim, num_heads, eps)
        self.self_attn_layer_norm = Multiway(nn.LayerNorm(dim, eps=eps))
        self.ffn = Multiway(FeedForward(dim, mlp_dim, eps))
        self.final_layer_norm = Multiway(nn.LayerNorm(dim, eps=eps))
        self.drop_path = drop_path

    def forward(self, xv, xt, key_bias):
        any_x = xv if xv is not None else xt
        av, at = self.self_attn(*self.self_attn_layer_norm(xv, xt), key_bias)
        scale = drop_path_scale(any_x, self.drop_path, self.training)
        xv, xt = _residual(xv, av, scale), _residual(xt, at, scale)
        fv, ft = self.ffn(*self.final_layer_norm(xv, xt))
        scale = drop_path_scale(any_x, self.drop_path, self.training)
        return _residual(xv, fv, scale), _residual(xt, ft, scale)


class VisionEmbedding(nn.Module):
    """Patch projection + prepended cls token (torchscale's VisionEmbedding; ``mask_token`` kept for the
    state dict, BEiT-3's masked-image pretraining used it)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, dim: int):
        super().__init__()
        self.img_size, self.patch_size = img_size, patch_size
        self.grid = img_size // patch_size
        self.num_patches = self.grid ** 2
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if tuple(image.shape[-2:]) != (self.img_size, self.img_size):
            raise RisbenchError(f"BEiT-3 was built for {self.img_size}x{self.img_size} images, got "
                                f"{tuple(image.shape[-2:])}; set model.img_size (data.img_size) to the input size")
        x = self.proj(image).flatten(2).transpose(1, 2)                      # (B, n, C)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)


class MultiwayEncoder(nn.Module):
    """Position tables, the Multiway layers and the final (multiway) LayerNorm."""

    def __init__(self, num_vision_positions: int, max_text_positions: int, dim: int, depth: int, num_heads: int,
                 mlp_dim: int, drop_path_rate: float, eps: float):
        super().__init__()
        self.embed_positions = nn.Module()
        self.embed_positions.A = nn.Embedding(num_vision_positions, dim)
        self.embed_positions.B = nn.Embedding(max_text_positions, dim)
        rates = [drop_path_rate * i / (depth - 1) for i in range(depth)] if depth > 1 else [0.0]
        self.layers = nn.ModuleList(MultiwayLayer(dim, num_heads, mlp_dim, rate, eps) for rate in rates)
        self.layer_norm = Multiway(nn.LayerNorm(dim, eps=eps))


class BEiT3(nn.Module):
    """BEiT-3 encoder. ``forward(image, tokens, padding_mask, layers)`` -> dict:

    * ``out``: (B, N, C) the final-LN output over [image tokens (n + 1); text tokens (T)];
    * ``layers``: ``{j: h_j}`` the outputs of the requested layers j (1-based, before the final LN);
    * ``split``: n + 1 image tokens (0 without an image).

    Either input may be None (vision-only / text-only). ``size`` (base | large) gives the widths;
    explicit ``embed_dim``/``depth``/``num_heads``/``mlp_dim`` override it (small test models).
    """

    def __init__(self, size: str = "base", img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int | None = None, depth: int | None = None, num_heads: int | None = None,
                 mlp_dim: int | None = None, vocab_size: int = 64010, max_text_positions: int = 1024,
                 drop_path_rate: float = 0.0, norm_eps: float = 1e-5, pretrained: bool = False,
                 checkpoint: str | None = None):
        super().__init__()
        if size not in SIZES:
            raise RisbenchError(f"model.encoder.size must be one of {sorted(SIZES)}, got {size!r}")
        dims = {key: value if value is not None else SIZES[size][key] for key, value in
                dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_dim=mlp_dim).items()}
        if img_size % patch_size:
            raise RisbenchError(f"image size {img_size} is not a multiple of the BEiT-3 patch size {patch_size} "
                                "(data.img_size / model.encoder.patch_size)")
        if dims["embed_dim"] % dims["num_heads"]:
            raise RisbenchError(f"BEiT-3 width {dims['embed_dim']} is not divisible by num_heads {dims['num_heads']}")
        self.embed_dim, self.depth, self.num_heads = dims["embed_dim"], dims["depth"], dims["num_heads"]
        self.vocab_size, self.max_text_positions = vocab_size, max_text_positions
        self.pretrained, self.checkpoint = pretrained, checkpoint
        self.text_embed = nn.Embedding(vocab_size, self.embed_dim)
        self.vision_embed = VisionEmbedding(img_size, patch_size, in_chans, self.embed_dim)
        self.encoder = MultiwayEncoder(self.vision_embed.num_patches + 1 + POSITION_OFFSET, max_text_positions,
                                       self.embed_dim, self.depth, self.num_heads, dims["mlp_dim"],
                                       drop_path_rate, norm_eps)
        self.grad_checkpointing = False  # recompute each layer in the backward (model.grad_checkpointing)
        self.init_weights()

    @property
    def max_text_length(self) -> int:
        return self.max_text_positions - POSITION_OFFSET

    def init_weights(self) -> None:
        """Random init: unilm's BEiT3Wrapper (trunc-normal 0.02 Linear weights, zero biases, unit LayerNorms),
        torchscale's N(0, C^-1/2) text table, and ViT-style trunc-normal 0.02 position tables (torchscale
        leaves them N(0, 1), which swamps the patch embeddings of an untrained model)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.text_embed.weight, std=self.embed_dim ** -0.5)
        for table in (self.encoder.embed_positions.A, self.encoder.embed_positions.B):
            trunc_normal_(table.weight, std=0.02)

    # ---- embeddings -----------------------------------------------------------------------------
    def embed_image(self, image: torch.Tensor) -> torch.Tensor:
        x = self.vision_embed(image)                                          # (B, n + 1, C)
        return x + self.encoder.embed_positions.A.weight[POSITION_OFFSET:POSITION_OFFSET + x.shape[1]]

    def embed_text(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        T = tokens.shape[1]
        if T > self.max_text_length:
            raise RisbenchError(f"{T} text tokens do not fit BEiT-3's {self.max_text_positions}-row text position "
                                f"table (at most {self.max_text_length}); lower tokenizer.max_length")
        x = self.text_embed(tokens) + self.encoder.embed_positions.B.weight[POSITION_OFFSET:POSITION_OFFSET + T]
        if padding_mask is not None:
            x = x * (~padding_mask)[..., None].to(x.dtype)                    # padded rows are zero
        return x

    # ---- forward --------------------------------------------------------------------------------
    def forward(self, image: torch.Tensor | None = None, tokens: torch.Tensor | None = None,
                padding_mask: torch.Tensor | None = None, layers: Sequence[int] = (),
                final_norm: bool = True) -> dict:
        """image (B, 3, S, S); tokens (B, T) ids; padding_mask (B, T) bool, True = padding."""
        if image is None and tokens is None:
            raise ValueError("BEiT-3 needs an image, text tokens or both")
        wanted = sorted(set(layers))
        if wanted and not 1 <= wanted[0] <= wanted[-1] <= self.depth:
            raise RisbenchError(f"BEiT-3 layers {wanted} out of range 1..{self.depth}")
        xv = self.embed_image(image) if image is not None else None
        xt = self.embed_text(tokens, padding_mask) if tokens is not None else None
        key_bias = None
        if xt is not None and padding_mask is not None and bool(padding_mask.any()):
            pad = padding_mask if xv is None else F.pad(padding_mask, (xv.shape[1], 0), value=False)
            key_bias = torch.zeros(pad.shape, dtype=xt.dtype, device=xt.device).masked_fill(pad, float("-inf"))
            key_bias = key_bias[:, None, None, :]                             # (B, 1, 1, N)
        last = self.depth if final_norm else (wanted[-1] if wanted else self.depth)
        hidden = {}
        for j, layer in enumerate(self.encoder.layers[:last], start=1):
            if self.grad_checkpointing and torch.is_grad_enabled():
                xv, xt = checkpoint(layer, xv, xt, key_bias, use_reentrant=False)
            else:
                xv, xt = layer(xv, xt, key_bias)
            if j in wanted:
                hidden[j] = _join(xv, xt)
        out = _join(*self.encoder.layer_norm(xv, xt)) if final_norm else None
        return {"out": out, "layers": hidden, "split": 0 if xv is None else xv.shape[1]}

    # ---- weights --------------------------------------------------------------------------------
    def load_pretrained(self) -> None:
        # unilm's checkpoints may hold the training arguments; allow exactly that class
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = read_state_dict(self.checkpoint or "", "BEiT-3 checkpoint (model.encoder.checkpoint)", BEIT3_HINT)
        load_into(self, checkpoint_filter_fn(state, self), f"BEiT-3 checkpoint {self.checkpoint}")
        log.info("loaded BEiT-3 weights from %s", self.checkpoint)


def _join(xv, xt):
    if xv is None or xt is None:
        return xv if xt is None else xt
    return torch.cat([xv, xt], dim=1)


def resample_vision_positions(table: torch.Tensor, num_patches: int) -> torch.Tensor:
    """(3 + g^2, C) -> (3 + G^2, C): bicubic (align_corners=False) on the patch rows, rows [0:3] kept
    (the two unused Fairseq rows and the cls row)."""
    extra = POSITION_OFFSET + 1
    old, new = round((table.shape[0] - extra) ** 0.5), round(num_patches ** 0.5)
    if old * old != table.shape[0] - extra or new * new != num_patches:
        raise RisbenchError(f"cannot resample a {table.shape[0]}-row BEiT-3 position table to {num_patches} patches "
                            "(both grids must be square)")
    if old == new:
        return table
    grid = table[extra:].float().reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return torch.cat([table[:extra], grid.permute(0, 2, 3, 1).reshape(new * new, -1).to(table.dtype)])


def checkpoint_filter_fn(state: dict[str, torch.Tensor], model: BEiT3) -> dict[str, torch.Tensor]:
    """A released state dict in this module's layout: the ``beit3.`` keys without the prefix (task heads
    beside them are dropped), the vision position table resampled to the model's image grid."""
    if any(key.startswith("beit3.") for key in state):
        state = {key[len("beit3."):]: value for key, value in state.items() if key.startswith("beit3.")}
    state = dict(state)
    key = "encoder.embed_positions.A.weight"
    if key in state and state[key].shape[0] != model.encoder.embed_positions.A.weight.shape[0]:
        state[key] = resample_vision_positions(state[key], model.vision_embed.num_patches)
    expected = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (model {tuple(expected[k].shape)})" for k, v in state.items()
             if k in expected and v.shape != expected[k].shape]
    if wrong:
        raise RisbenchError(f"BEiT-3 checkpoint does not fit the model ({len(wrong)} shapes differ: {wrong[:3]}).\n"
                            "  how to fix: use the checkpoint of the configured size (model.encoder.size) and "
                            "text table (model.encoder.vocab_size, max_text_positions)")
    return state
