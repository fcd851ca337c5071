"""M3Dec: Multi-Modal Mutual Attention and Iterative Interaction (Liu, Ding, Zhang, Jiang, IEEE TIP 2023).

No official code is public; the spec (``papers/m3dec.md``) fixes every open choice, partly from the
authors' earlier VLT code. Two variants share this file: ``m3dec_cnn`` (Darknet-53, GloVe + bi-GRU, 416 px,
15/20 words) and ``m3dec_swin`` (Swin-B + BERT-base, 480 px, 20 tokens). Shapes below: CNN at 416 px, Nt = 15.

    image (B,3,416,416) -> Darknet C3/C4/C5 -> neck -> F_vis (B,256,26,26)
    words -> text encoder -> F_t (B,Nt,256), sentence F'_t (B,256)
    F_vis pixels + 2-D sine positions -> 2 post-LN encoder layers -> F_enc (B,676,256)
    M3Dec x 3, word queries (layer 1: Q = F_t), IMI blocks in between -> F_dec (B,Nt,256):
        Fq = LN(Q + SelfAttn(Q + qpos, Q + qpos, Q))
        M  = M3Att(Fq, F_enc)     one word-pixel affinity A (B,8,Nt,HW), softmax over pixels (LAV) and
                                  over words (VAL), F_mul = LAV . VAL^T (B,Nt,HW) -> Linear(HW->C)+BN+ReLU
        Y  = LN(Fq + CrossAttn(Fq + qpos, M, M));  out = LN(Y + FFN(Y))
        IMI: F_dec' = BN(F_dec + w_ci * softmax(F_dec W_a . F_l^T) F_l W'_l), F_l re-transformed per block
    mask decoder: K = LN(F_dec + SelfAttn(F_dec)); K as dynamic 1x1 kernels on F_enc -> (B,Nt,26,26),
                  3 x [2x bilinear, 1x1 conv, BN, ReLU] at 512 -> 1x1 conv -> logits (B,1,208,208)
    LFR (training only): MSE(mean MLP3(F_dec), mean ReLU([F_t + e; F'_t] W_proj)), weight 0.1

The image size and the padded text length are part of the architecture (M3Att's ``Linear(HW, C)``, the
mask decoder's first conv has Nt input channels): both are checked at build time and at every forward.
Ablation knobs: ``decoder.attention`` (shared | independent | generic | val_only), ``decoder.num_layers``,
``imi.enabled`` / ``imi.mode`` (dynamic | static), ``lfr.enabled``, ``mask_decoder.type``
(dynamic_kernel | concat | vlt). Every linear/conv is followed by BN + ReLU unless it is an attention
projection, the final mask conv, W_proj or the last LFR linear (spec §2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from risbench.errors import RisbenchError
from risbench.losses import bce_loss, dice_loss
from risbench.models.base import RISModel
from risbench.models.common.attention import MultiheadAttention, grid_positions, padding_bias, sinusoidal_positions
from risbench.models.common.decoders import ConvBNReLU
from risbench.models.common.text import TextEncoder, masked_mean

ATTENTION_TYPES = ("shared", "independent", "generic", "val_only")
MASK_DECODERS = ("dynamic_kernel", "concat", "vlt")
NECK_STRIDE = 16  # F_vis: C3 pooled, C4, C5 upsampled, all at stride 16


def _choice(value: str, allowed: Iterable[str], key: str) -> str:
    if value not in allowed:
        raise RisbenchError(f"model.{key}={value!r} is not one of {sorted(allowed)}")
    return value


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over the channels of (B, N, C) tokens (statistics over B x N, padded tokens included)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class LBR(nn.Sequential):
    """Linear + BN + ReLU on (B, N, C) tokens (the paper's default after every linear layer)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(nn.Linear(in_dim, out_dim), TokenBatchNorm(out_dim), nn.ReLU(inplace=True))


# ----------------------------------------------------------------------------------------------------
# Visual side: neck and encoder
# ----------------------------------------------------------------------------------------------------

class Neck(nn.Module):
    """C3/C4/C5 -> F_vis at stride 16: CBR1x1(avgpool2(C3)), CBR1x1(C4), up2(CBR1x1(C5)) -> cat -> CBR3x3."""

    def __init__(self, dims: list[int], dim: int):
        super().__init__()
        self.p3, self.p4, self.p5 = (ConvBNReLU(d, dim, 1) for d in dims)
        self.fuse = ConvBNReLU(3 * dim, dim, 3)

    def forward(self, c3: torch.Tensor, c4: torch.Tensor, c5: torch.Tensor) -> torch.Tensor:
        p3 = self.p3(F.avg_pool2d(c3, 2))
        p4 = self.p4(c4)
        p5 = F.interpolate(self.p5(c5), size=p4.shape[-2:], mode="nearest")
        return self.fuse(torch.cat([p3, p4, p5], dim=1))               # (B, C, H/16, W/16)


class EncoderLayer(nn.Module):
    """Post-LN transformer layer, DETR style: positions added to queries and keys only."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, num_heads, attn_drop=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(ffn_dim, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        qk = x + pos
        x = self.norm1(x + self.dropout(self.self_attn(qk, qk, x)))
        return self.norm2(x + self.dropout(self.ffn(x)))


# ----------------------------------------------------------------------------------------------------
# M3Att and the M3Dec layer
# ----------------------------------------------------------------------------------------------------

class M3Att(nn.Module):
    """Multi-modal mutual attention: words (B,Nt,C) x pixels (B,HW,C) -> multi-modal word tokens (B,Nt,C).

    One affinity A = kL kV^T / sqrt(d_h) per head (Eq. 1); softmax over pixels re-weights the vision values
    (LAV, Eq. 2a), softmax over the real words of A^T re-weights the language values (VAL, Eq. 2b).
    ``independent``: VAL gets its own affinity from two extra key projections. F_mul = sum over heads of
    LAV . VAL^T (B,Nt,HW) is projected back to C by a Linear(HW, C), so HW is fixed at build time.
    ``fused_attn``: both attentions through SDPA (which forms A^T itself); off: A once, explicitly.
    """

    def __init__(self, dim: int, num_heads: int, num_pixels: int, independent: bool):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.key_l, self.value_l, self.key_v, self.value_v = (nn.Linear(dim, dim) for _ in range(4))
        self.key_l2 = nn.Linear(dim, dim) if independent else None
        self.key_v2 = nn.Linear(dim, dim) if independent else None
        self.out = nn.Linear(num_pixels, dim)
        self.norm = TokenBatchNorm(dim)
        self.fused_attn = True
        self.record_attention = False  # keep the maps of the last call (explicit path) in `last_maps`
        self.last_maps: dict[str, torch.Tensor] | None = None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        return x.view(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, h, N, d_h)

    def forward(self, words: torch.Tensor, pixels: torch.Tensor, pos: torch.Tensor,
                pad: torch.Tensor) -> torch.Tensor:
        """words (B,Nt,C), pixels (B,HW,C), pos (HW,C), pad (B,Nt) True at padded words."""
        k_l, v_l = self._heads(self.key_l(words)), self._heads(self.value_l(words))
        k_v, v_v = self._heads(self.key_v(pixels + pos)), self._heads(self.value_v(pixels))
        k_l2, k_v2 = k_l, k_v
        if self.key_l2 is not None:
            k_l2, k_v2 = self._heads(self.key_l2(words)), self._heads(self.key_v2(pixels + pos))
        bias = padding_bias(pad, k_l.dtype)                                  # (B, 1, 1, Nt)
        if self.fused_attn and not self.record_attention:
            lav = F.scaled_dot_product_attention(k_l, k_v, v_v)              # (B, h, Nt, d_h)
            val = F.scaled_dot_product_attention(k_v2, k_l2, v_l, attn_mask=bias)  # (B, h, HW, d_h)
        else:
            affinity = (k_l * self.scale) @ k_v.transpose(-2, -1)            # A (B, h, Nt, HW)
            affinity2 = affinity if self.key_l2 is None else (k_l2 * self.scale) @ k_v2.transpose(-2, -1)
            lav_weights = affinity.softmax(dim=-1)                           # over pixels
            val_weights = (affinity2.transpose(-2, -1) + bias).softmax(dim=-1)  # over real words (B,h,HW,Nt)
            lav, val = lav_weights @ v_v, val_weights @ v_l
            if self.record_attention:
                self.last_maps = {"affinity": affinity, "val_affinity": affinity2, "lav_weights": lav_weights,
                                  "val_weights": val_weights}
        f_mul = torch.einsum("bhnd,bhpd->bnp", lav, val)                     # (B, Nt, HW)
        if self.record_attention:
            self.last_maps["f_mul"] = f_mul
        return F.relu(self.norm(self.out(f_mul)))                            # (B, Nt, C)


class M3DecLayer(nn.Module):
    """Self-attention over the word queries, multi-modal mixing, FFN; post-LN.

    ``shared`` / ``independent``: Y = LN(Fq + CrossAttn(Fq + qpos, M, M)) with M = M3Att(Fq, F_enc).
    ``generic`` (LAV only, VLT): Y = LN(Fq + CrossAttn(Fq, F_enc + pos, F_enc)).
    ``val_only``: pixels attend to the words (VAL = CrossAttn(F_enc + pos, Fq, Fq), B x HW x C), then
    Y = LN(Fq + CrossAttn(Fq + qpos, VAL, VAL)); the paper reports that it does not converge.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float, num_pixels: int, attention: str):
        super().__init__()
        self.attention = attention
        self.self_attn = MultiheadAttention(dim, num_heads, attn_drop=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.m3att = (M3Att(dim, num_heads, num_pixels, independent=attention == "independent")
                      if attention in ("shared", "independent") else None)
        self.val_attn = MultiheadAttention(dim, num_heads, attn_drop=dropout) if attention == "val_only" else None
        self.cross_attn = MultiheadAttention(dim, num_heads, attn_drop=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(ffn_dim, dim))
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, pixels: torch.Tensor, pos: torch.Tensor, qpos: torch.Tensor,
                pad: torch.Tensor) -> torch.Tensor:
        qk = q + qpos
        fq = self.norm1(q + self.dropout(self.self_attn(qk, qk, q, key_padding_mask=pad)))
        if self.m3att is not None:
            m = self.m3att(fq, pixels, pos, pad)                              # (B, Nt, C)
            mixed = self.cross_attn(fq + qpos, m, m, key_padding_mask=pad)
        elif self.val_attn is not None:
            val = self.val_attn(pixels + pos, fq, fq, key_padding_mask=pad)  # (B, HW, C)
            mixed = self.cross_attn(fq + qpos, val, val)
        else:
            mixed = self.cross_attn(fq, pixels + pos, pixels)
        y = self.norm2(fq + self.dropout(mixed))
        return self.norm3(y + self.dropout(self.ffn(y)))


# ----------------------------------------------------------------------------------------------------
# IMI and LFR
# ----------------------------------------------------------------------------------------------------

class IMIBlock(nn.Module):
    """Iterative multi-modal interaction between decoder layers n and n+1 (Eq. 3).

    F_l^n = LBR(F_l^{n-1}); A = softmax over the real words of LBR_a(F_dec) F_l^n^T (no scaling, as Eq. 3);
    F_i = A LBR_l'(F_l^n); F_dec' = BN(F_dec + w_ci F_i). ``static`` (the paper's IMI*): F_i = F_t, and only
    w_ci and the BN exist.
    """

    def __init__(self, dim: int, static: bool, gate_init: float):
        super().__init__()
        self.static = static
        if not static:
            self.language = LBR(dim, dim)
            self.query = LBR(dim, dim)                                        # W_a
            self.value = LBR(dim, dim)                                        # W'_l
        self.gate = nn.Parameter(torch.tensor(float(gate_init)))             # w_ci, a learnable scalar
        self.norm = TokenBatchNorm(dim)

    def forward(self, f_dec: torch.Tensor, language: torch.Tensor, words: torch.Tensor,
                pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (F_dec' (B,Nt,C), the language stream F_l^n for the next block)."""
        if self.static:
            return self.norm(f_dec + self.gate * words), language
        language = self.language(language)                                    # F_l^n
        scores = self.query(f_dec) @ language.transpose(1, 2)                 # (B, Nt, Nt)
        weights = scores.masked_fill(pad[:, None, :], float("-inf")).softmax(dim=-1)
        injected = weights @ self.value(language)                             # F_i
        return self.norm(f_dec + self.gate * injected), language


class LanguageReconstruction(nn.Module):
    """LFR (Eq. 4): the sentence rebuilt from the last decoder output against a projection of the input.

    target = mean over the real words and the sentence slot of ReLU([F_t + e; F'_t] W_proj);
    reconstruction = mean over the real words of MLP3(F_dec) (LBR, LBR, Linear). Training only.
    """

    def __init__(self, dim: int, detach_target: bool):
        super().__init__()
        self.detach_target = detach_target
        self.project = nn.Linear(dim, dim)                                   # W_proj
        self.reconstruct = nn.Sequential(LBR(dim, dim), LBR(dim, dim), nn.Linear(dim, dim))

    def forward(self, words: torch.Tensor, sentence: torch.Tensor, f_dec: torch.Tensor,
                word_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (reconstruction F_rec (B,C), target F_proj (B,C))."""
        B, T, C = words.shape
        e = sinusoidal_positions(T, C).to(words)
        z = F.relu(self.project(torch.cat([words + e, sentence[:, None]], dim=1)))   # (B, Nt+1, C)
        target = masked_mean(z, torch.cat([word_mask, word_mask.new_ones(B, 1)], dim=1))
        target = target.detach() if self.detach_target else target
        return masked_mean(self.reconstruct(f_dec), word_mask), target


# ----------------------------------------------------------------------------------------------------
# Mask decoder (Table III variants)
# ----------------------------------------------------------------------------------------------------

class DynamicKernelMaps(nn.Module):
    """Each word token as a 1x1 kernel on the encoder map: (B,Nt,C) x (B,C,H,W) -> (B,Nt,H,W)."""

    def forward(self, kernels: torch.Tensor, f_enc: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bnc,bchw->bnhw", kernels, f_enc)


class VLTMaps(nn.Module):
    """VLT's head (decoder output only): each token -> Linear(C, HW) + ReLU -> one H x W map."""

    def __init__(self, dim: int, grid: int):
        super().__init__()
        self.grid = grid
        self.to_map = nn.Linear(dim, grid * grid)

    def forward(self, kernels: torch.Tensor, f_enc: torch.Tensor) -> torch.Tensor:
        B, N, _ = kernels.shape
        return F.relu(self.to_map(kernels)).view(B, N, self.grid, self.grid)


class ConcatMaps(nn.Module):
    """'Concate': the tokens summed, tiled over H x W, concatenated with F_enc, CBR1x1(2C -> channels)."""

    def __init__(self, dim: int, channels: int):
        super().__init__()
        self.fuse = ConvBNReLU(2 * dim, channels, 1)

    def forward(self, kernels: torch.Tensor, f_enc: torch.Tensor) -> torch.Tensor:
        summed = kernels.sum(1)[:, :, None, None].expand_as(f_enc)           # padded tokens are zero here
        return self.fuse(torch.cat([summed, f_enc], dim=1))


class MaskDecoder(nn.Module):
    """K = LN(F_dec + SelfAttn(F_dec)); maps from K (``type``); padded words' maps zeroed (kernel/vlt);
    ``num_units`` x [2x bilinear up, conv k x k, BN, ReLU] at ``channels``; a 1x1 conv to one logit."""

    def __init__(self, type: str, dim: int, num_heads: int, max_length: int, grid: int, channels: int,
                 num_units: int, kernel_size: int):
        super().__init__()
        self.type = _choice(type, MASK_DECODERS, "mask_decoder.type")
        self.self_attn = MultiheadAttention(dim, num_heads)
        self.norm = nn.LayerNorm(dim)
        if self.type == "dynamic_kernel":
            self.maps = DynamicKernelMaps()
        elif self.type == "vlt":
            self.maps = VLTMaps(dim, grid)
        else:
            self.maps = ConcatMaps(dim, channels)
        units, width = [], channels if self.type == "concat" else max_length
        for _ in range(num_units):
            units += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                      ConvBNReLU(width, channels, kernel_size)]
            width = channels
        self.upsample = nn.Sequential(*units)
        self.classifier = nn.Conv2d(width, 1, 1)

    def forward(self, f_dec: torch.Tensor, f_enc: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """f_dec (B,Nt,C), f_enc (B,C,H,W) -> logits (B,1,H*2^units,W*2^units)."""
        kernels = self.norm(f_dec + self.self_attn(f_dec, f_dec, f_dec, key_padding_mask=pad))
        kernels = kernels.masked_fill(pad[..., None], 0.0)                  # padded words take no part
        maps = self.maps(kernels, f_enc)
        if self.type != "concat":
            maps = maps.masked_fill(pad[..., None, None], 0.0)               # (B, Nt, H, W)
        return self.classifier(self.upsample(maps))


# ----------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------

class M3Dec(RISModel):
    """M3Dec. ``forward`` returns ``logits`` (B,1,S/2,S/2) and, when training with LFR, ``lfr`` =
    (reconstruction, target); inference uses the logits only.

    ``vision``: a built tower returning stage maps whose last three are at strides 8/16/32 with ``dims``
    (DarknetTower, SwinTower); ``text``: a text encoder factory (``_partial_`` node) called with the
    vocabulary size; ``text_proj``: LBR(out_dim -> dim) on its word features (BERT); ``sentence``:
    ``encoder`` (the encoder's sentence vector, the GRU's final states) or ``first_token`` ([CLS]).
    """

    def __init__(self, vocab_size: int, img_size: int, max_length: int, vision: nn.Module,
                 text: Callable[..., TextEncoder], text_proj: bool, sentence: str, dim: int, num_heads: int,
                 ffn_dim: int, dropout: float, neck: dict, encoder: dict, decoder: dict, imi: dict, lfr: dict,
                 mask_decoder: dict, loss: dict):
        super().__init__()
        if img_size % (2 * NECK_STRIDE):
            raise RisbenchError(f"M3Dec needs an image size divisible by {2 * NECK_STRIDE} (C3 is pooled to "
                                f"stride {NECK_STRIDE}, C5 upsampled to it), got data.img_size={img_size}")
        tower_size = getattr(getattr(vision, "patch_embed", None), "img_size", None)  # Swin's; Darknet has none
        if tower_size is not None and tuple(tower_size) != (img_size, img_size):
            raise RisbenchError(f"model.vision.img_size={tower_size[0]} but model.img_size={img_size} "
                                "(data.img_size): M3Att's Linear(HW, C) fixes one image size per model.\n"
                                "  how to fix: give both the same value (by default both follow data.img_size)")
        self.img_size, self.max_length = img_size, max_length
        self.grid = img_size // NECK_STRIDE
        self.sentence_source = _choice(sentence, ("encoder", "first_token"), "sentence")
        self.attention = _choice(decoder["attention"], ATTENTION_TYPES, "decoder.attention")
        imi_mode = _choice(imi["mode"], ("dynamic", "static"), "imi.mode")
        self.mask_reduction = _choice(loss["mask_reduction"], ("mean", "sum"), "loss.mask_reduction")
        self.mask_weight, self.dice_weight = float(loss["mask_weight"]), float(loss["dice_weight"])
        self.lfr_weight = float(lfr["weight"])
        self.pre_fusion = bool(neck["pre_fusion"])

        self.vision = vision
        self.text = text(vocab_size=vocab_size)
        # mode=profile also counts without the GloVe table (a lookup sized by the vocabulary, frozen)
        self.profile_exclude = ("text.embed.",) if isinstance(getattr(self.text, "embed", None), nn.Embedding) else ()
        if not text_proj and self.text.out_dim != dim:
            raise RisbenchError(f"the text encoder gives {self.text.out_dim}-d words but model.dim={dim}.\n"
                                "  how to fix: set model.text_proj=true (Linear + BN + ReLU to model.dim)")
        self.text_proj = LBR(self.text.out_dim, dim) if text_proj else None
        self.neck = Neck(list(vision.dims[-3:]), dim)
        self.encoder = nn.ModuleList(EncoderLayer(dim, num_heads, ffn_dim, dropout)
                                     for _ in range(encoder["num_layers"]))
        num_pixels = self.grid * self.grid
        self.decoder = nn.ModuleList(M3DecLayer(dim, num_heads, ffn_dim, dropout, num_pixels, self.attention)
                                     for _ in range(decoder["num_layers"]))
        num_imi = decoder["num_layers"] - (0 if imi["after_last_layer"] else 1)
        self.imi = (nn.ModuleList(IMIBlock(dim, imi_mode == "static", imi["gate_init"]) for _ in range(num_imi))
                    if imi["enabled"] and num_imi > 0 else None)
        self.lfr = LanguageReconstruction(dim, lfr["detach_target"]) if lfr["enabled"] else None
        self.mask_decoder = MaskDecoder(dim=dim, num_heads=num_heads, max_length=max_length, grid=self.grid,
                                        **mask_decoder)

    # -- inputs ------------------------------------------------------------------------------------
    def check_inputs(self, batch: dict) -> None:
        side, length = batch["image"].shape[-1], batch["tokens"].shape[1]
        if tuple(batch["image"].shape[-2:]) != (self.img_size, self.img_size):
            raise RisbenchError(f"images are {side} px (data.img_size) but the model was built for "
                                f"model.img_size={self.img_size}; M3Att's Linear(HW, C) fixes the size.\n"
                                "  how to fix: give data.img_size and model.img_size the same value (by default "
                                "the model follows data.img_size)")
        if length != self.max_length:
            raise RisbenchError(f"tokens are padded to {length} (tokenizer.max_length) but the model was built "
                                f"for model.max_length={self.max_length}; the mask decoder has one input channel "
                                "per word slot.\n  how to fix: give tokenizer.max_length and model.max_length "
                                "the same value (by default the model follows the tokenizer)")

    def encode_text(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> F_t (B,Nt,C), F'_t (B,C)."""
        words, sentence = self.text(tokens, attention_mask)
        if self.text_proj is not None:
            words = self.text_proj(words)
            sentence = self.text_proj(sentence[:, None])[:, 0] if self.sentence_source == "encoder" else sentence
        return words, words[:, 0] if self.sentence_source == "first_token" else sentence

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, batch: dict) -> dict:
        self.check_inputs(batch)
        word_mask = batch["attention_mask"].bool()
        word_mask[:, 0] |= ~word_mask.any(1)  # an expression without words keeps slot 0 (no all-masked softmax)
        pad = ~word_mask                                                      # (B, Nt)
        words, sentence = self.encode_text(batch["tokens"], batch["attention_mask"])  # (B,Nt,C), (B,C)
        f_vis = self.neck(*self.vision(batch["image"])[-3:])                 # (B, C, 26, 26)
        if self.pre_fusion:
            f_vis = f_vis * sentence[:, :, None, None]
        B, C, H, W = f_vis.shape
        if (H, W) != (self.grid, self.grid):
            raise RisbenchError(f"the vision tower gives a {H}x{W} map at stride {NECK_STRIDE}, the model was "
                                f"built for {self.grid}x{self.grid}; model.vision must end at strides 8/16/32")
        pos = grid_positions(H, W, C).to(f_vis)                               # (HW, C)
        f_enc = f_vis.flatten(2).transpose(1, 2)                              # (B, HW, C)
        for layer in self.encoder:
            f_enc = layer(f_enc, pos)
        qpos = sinusoidal_positions(words.shape[1], C).to(words)
        f_dec, language = words, words
        for n, layer in enumerate(self.decoder):
            f_dec = layer(f_dec, f_enc, pos, qpos, pad)                       # (B, Nt, C)
            if self.imi is not None and n < len(self.imi):
                f_dec, language = self.imi[n](f_dec, language, words, pad)
        logits = self.mask_decoder(f_dec, f_enc.transpose(1, 2).reshape(B, C, H, W), pad)  # (B, 1, 208, 208)
        outputs = {"logits": logits}
        if self.lfr is not None and self.training:
            outputs["lfr"] = self.lfr(words, sentence, f_dec, word_mask)
        return outputs

    def loss(self, outputs: dict, batch: dict) -> dict:
        logits = outputs["logits"].float()
        target = F.interpolate(batch["mask"].float(), size=logits.shape[-2:], mode="nearest")
        bce = bce_loss(logits, target)
        if self.mask_reduction == "sum":  # VLT: summed over pixels, averaged over the batch
            bce = bce * logits.shape[-2] * logits.shape[-1]
        losses = {"mask_bce": bce}
        total = self.mask_weight * bce
        if self.dice_weight:
            losses["mask_dice"] = dice_loss(logits, target)
            total = total + self.dice_weight * losses["mask_dice"]
        if "lfr" in outputs:
            reconstruction, target_feature = (x.float() for x in outputs["lfr"])
            losses["lfr_mse"] = F.mse_loss(reconstruction, target_feature)
            # a trivial all-zero solution exists: watch both norms
            losses["lfr_target_norm"] = target_feature.detach().norm(dim=-1).mean()
            losses["lfr_reconstruction_norm"] = reconstruction.detach().norm(dim=-1).mean()
            total = total + self.lfr_weight * losses["lfr_mse"]
        else:
            losses["lfr_mse"] = logits.new_zeros(())
        return {"loss": total, **losses}

    def mask_logits(self, outputs: dict) -> torch.Tensor:
        return outputs["logits"]
