"""ReSTR: convolution-free referring image segmentation using transformers (Kim et al., CVPR 2022).

A ViT encodes 16x16 patches; a small transformer encodes GloVe words. The fusion encoder has two stacks:
the visual-linguistic (VL) stack self-attends over [patches; words]; the linguistic-seed (LS) stack runs
over the visually attended words plus a learnable class seed, whose output is an adaptive classifier
(one vector per expression). Classifier . patch feature gives a coarse patch mask, which a light
coarse-to-fine decoder (2x upsample -> per-pixel linear, log2(P) times) refines to pixels.

Fusion forms (``fusion.type``): ``cme`` (default, above), ``ime`` (the LS stack sees the words before
fusion, so the classifier never sees the image) and ``vme`` (one stack over [patches; words; seed]).
Paper-vs-official-code choices are knobs; defaults follow the spec (``papers/restr.md`` section 6).

Shapes below are for the paper's 480 px input: grid 30x30, Nv = 900 patches, Nl = 20 words.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from risbench.errors import RisbenchError
from risbench.losses import bce_loss, dice_loss, resize_logits
from risbench.models.base import RISModel, distinct_images
from risbench.models.common.attention import Block, init_linear
from risbench.models.common.decoders import tokens_to_map, upsample_as_is
from risbench.models.common.text import TextEncoder
from risbench.models.common.vision.vit import build_vit, load_vit_checkpoint


def _choice(value: str, allowed: Iterable[str], key: str) -> str:
    if value not in allowed:
        raise RisbenchError(f"model.{key}={value!r} is not one of {sorted(allowed)}")
    return value


# ----------------------------------------------------------------------------------------------------
# Fusion encoder
# ----------------------------------------------------------------------------------------------------

class Stack(nn.Module):
    """``depth`` Blocks then LN. ``shared``: ONE Block applied ``depth`` times (the CME-dagger variant)."""

    def __init__(self, depth: int, dim: int, num_heads: int, mlp_dim: int, drop_path_rate: float,
                 shared: bool, out_norm: bool = True):
        super().__init__()
        distinct = 1 if shared else depth
        rates = torch.linspace(0, drop_path_rate, distinct).tolist()  # code: linspace over distinct blocks
        self.blocks = nn.ModuleList([Block(dim, num_heads, mlp_dim=mlp_dim, drop_path=r) for r in rates])
        self.repeats = depth if shared else 1
        self.norm = nn.LayerNorm(dim, eps=1e-6) if out_norm else nn.Identity()

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        for _ in range(self.repeats):
            for block in self.blocks:
                x = block(x, key_padding_mask=key_padding_mask)
        return self.norm(x)


class FusionEncoder(nn.Module):
    """Projections, class seed and the fusion stacks: (zv, zl) -> (v, z'v (B,Nv,D), e'_s (B,1,D))."""

    def __init__(self, vision_dim: int, text_dim: int, type: str, num_layers: int, weight_sharing: bool,
                 dim: int, num_heads: int, mlp_dim: int, drop_path_rate: float, input_norm: str,
                 vl_output_norm: bool):
        super().__init__()
        self.type = _choice(type, ("cme", "ime", "vme"), "fusion.type")
        self.input_norm = _choice(input_norm, ("l2", "layernorm", "none"), "fusion.input_norm")
        if self.type != "vme" and num_layers % 2:
            raise RisbenchError(f"model.fusion.num_layers={num_layers} must be even for {type}: "
                                "half of the layers form the VL stack, half the LS stack")
        layer_norm = self.input_norm == "layernorm"
        self.norm_v = nn.LayerNorm(vision_dim, eps=1e-6) if layer_norm else nn.Identity()
        self.norm_l = nn.LayerNorm(text_dim, eps=1e-6) if layer_norm else nn.Identity()
        self.proj_v = nn.Linear(vision_dim, dim)
        self.proj_l = nn.Linear(text_dim, dim)
        self.seed = nn.Parameter(torch.zeros(1, 1, dim))
        stack = dict(dim=dim, num_heads=num_heads, mlp_dim=mlp_dim, drop_path_rate=drop_path_rate,
                     shared=weight_sharing)
        if self.type == "vme":
            self.joint = Stack(num_layers, **stack)  # one stack over [v; l; seed]
        else:
            self.vl = Stack(num_layers // 2, out_norm=vl_output_norm, **stack)
            self.ls = Stack(num_layers // 2, **stack)
        self.apply(init_linear)
        trunc_normal_(self.seed, std=0.02)

    def _normalize(self, x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.input_norm == "l2" else norm(x)

    def forward(self, zv: torch.Tensor, zl: torch.Tensor, pad: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """zv (B,Nv,Dv), zl (B,Nl,Dl), pad (B,Nl) True at padding; key_padding_mask: pad or None (no mask)."""
        B, Nv = zv.shape[:2]
        v = self.proj_v(self._normalize(zv, self.norm_v))                     # (B,900,768)
        l = self.proj_l(self._normalize(zl, self.norm_l)).masked_fill(pad[..., None], 0)  # (B,20,768)
        seed = self.seed.expand(B, -1, -1).to(v.dtype)                        # (B,1,768)
        full = None  # key padding mask over [v; l; seed], sliced per stack
        if key_padding_mask is not None:
            full = torch.cat([pad.new_zeros(B, Nv), key_padding_mask, pad.new_zeros(B, 1)], 1)
        part = lambda start, stop=None: None if full is None else full[:, start:stop]  # noqa: E731
        if self.type == "vme":
            h = self.joint(torch.cat([v, l, seed], 1), full)                  # (B,921,768)
            return v, h[:, :Nv], h[:, -1:]
        h = self.vl(torch.cat([v, l], 1), part(0, -1))                        # (B,920,768)
        zv_fused, zl_fused = h[:, :Nv], h[:, Nv:]
        words = zl_fused if self.type == "cme" else l  # IME: the seed never sees the image
        s = self.ls(torch.cat([words, seed], 1), part(Nv))                    # (B,21,768)
        return v, zv_fused, s[:, -1:]


class PatchClassifier(nn.Module):
    """Adaptive classifier applied to every patch: logit = z'v . e'_s / sqrt(D) -> (B,Nv,1)."""

    def __init__(self, dim: int, extra_proj: bool, logit_scale: str):
        super().__init__()
        _choice(logit_scale, ("sqrt_d", "none"), "head.logit_scale")
        self.scale = dim ** -0.5 if logit_scale == "sqrt_d" else 1.0
        self.proj_patch = nn.Linear(dim, dim, bias=False) if extra_proj else nn.Identity()
        self.proj_cls = nn.Linear(dim, dim, bias=False) if extra_proj else nn.Identity()
        for proj in (self.proj_patch, self.proj_cls):
            if extra_proj:
                nn.init.normal_(proj.weight, std=dim ** -0.5)  # code: scale * randn(D, D)

    def forward(self, patches: torch.Tensor, classifier: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patches = self.proj_patch(patches)
        return patches, patches @ self.proj_cls(classifier).transpose(1, 2) * self.scale


# ----------------------------------------------------------------------------------------------------
# Decoder, patch labels
# ----------------------------------------------------------------------------------------------------

class CoarseToFineDecoder(nn.Module):
    """K = log2(P) x (bilinear 2x up -> per-pixel linear C -> C/2 -> LeakyReLU), then a linear to 1.

    Per-pixel linears are 1x1 convolutions without bias (xavier init, as the code). At 480 px:
    (B,1536,30,30) -> 768@60 -> 384@120 -> 192@240 -> 96@480 -> (B,1,480,480).
    ``conv_before_upsample``: a per-pixel linear and a bilinear resize commute, so each block can mix
    channels at the lower resolution first: the same output (up to rounding) for a quarter of the
    convolution MACs and half the upsampled channels; ``false`` = the paper's order (its FLOP count).
    """

    def __init__(self, in_dim: int, patch_size: int, conv_before_upsample: bool = True):
        super().__init__()
        self.conv_before_upsample = conv_before_upsample
        num_blocks = int(math.log2(patch_size))
        if 2 ** num_blocks != patch_size:
            raise RisbenchError(f"the coarse-to-fine decoder needs a power-of-two patch size, got {patch_size}")
        channels = [in_dim // 2 ** i for i in range(num_blocks + 1)]
        self.blocks = nn.ModuleList([
            nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
                          nn.Conv2d(c_in, c_out, 1, bias=False), nn.LeakyReLU(0.01, inplace=True))
            for c_in, c_out in zip(channels[:-1], channels[1:])])
        self.out = nn.Conv2d(channels[-1], 1, 1, bias=False)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for upsample, conv, act in self.blocks:
            if self.conv_before_upsample:
                x = act(upsample_as_is(conv(x), upsample))
            else:
                x = act(conv(upsample_as_is(x, upsample)))
        return self.out(x)


def patch_labels(mask: torch.Tensor, patch_size: int, tau: float = 0.8, rule: str = "mean") -> torch.Tensor:
    """(B,1,S,S) binary mask -> (B,1,S/P,S/P) patch labels.

    ``mean``: foreground share of the patch > tau (paper). ``any``: the code's ones-kernel *sum* > tau,
    i.e. any foreground pixel.
    """
    _choice(rule, ("mean", "any"), "loss.patch_label_rule")
    share = F.avg_pool2d(mask.float(), patch_size)
    if rule == "any":
        share = share * patch_size ** 2
    return (share > tau).float()


# ----------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------

class ReSTR(RISModel):
    """ReSTR. ``forward`` returns ``pixel_logits`` (B,1,S,S), ``patch_logits`` (B,1,S/P,S/P) and the
    adaptive ``classifier`` e'_s (B,1,D); inference uses ``pixel_logits`` only."""

    profile_exclude = ("text.embed.",)  # the paper's counts leave out the GloVe table

    def __init__(self, vocab_size: int, img_size: int, vision: dict, text: Callable[..., TextEncoder],
                 fusion: dict, head: dict, decoder: dict, loss: dict):
        super().__init__()
        vision = dict(vision)
        self.vit_pretrained, self.vit_checkpoint = vision.pop("pretrained"), vision.pop("checkpoint")
        self.vit_name = vision["timm_name"]
        self.loss_cfg = dict(loss)

        self.vision = build_vit(img_size=img_size, **vision)
        self.patch_size = self.vision.patch_embed.patch_size[0]
        if img_size % self.patch_size:  # the patch grid and the decoder's upsampling must tile the input
            raise RisbenchError(f"data.img_size={img_size} (model.img_size) must be a multiple of ReSTR's patch size "
                                f"{self.patch_size}; e.g. {img_size - img_size % self.patch_size} or "
                                f"{img_size - img_size % self.patch_size + self.patch_size}")
        self.grid = tuple(self.vision.patch_embed.grid_size)
        vision_dim = self.vision.embed_dim
        self.text = text(vocab_size=vocab_size)
        self.fusion = FusionEncoder(vision_dim, self.text.out_dim, **fusion)
        dim = fusion["dim"]
        self.head = PatchClassifier(dim, **head)
        self.mask_with = _choice(decoder["mask_with"], ("sigmoid", "logits"), "decoder.mask_with")
        self.visual_skip = _choice(decoder["visual_skip"], ("vit", "projected"), "decoder.visual_skip")
        skip_dim = vision_dim if self.visual_skip == "vit" else dim
        self.decoder = (CoarseToFineDecoder(skip_dim + dim, self.patch_size, decoder["conv_before_upsample"])
                        if decoder["enabled"] else None)
        # the code trains the decoder-free variant on pixel BCE alone (spec 6.11)
        self.patch_weight = self.loss_cfg["patch_weight"] if self.decoder is not None else 0.0

    # -- pretrained parts --------------------------------------------------------------------------
    def load_pretrained(self) -> None:
        """The ViT checkpoint (``model.vision.pretrained``), then the text encoder's GloVe table."""
        if self.vit_pretrained:
            if not self.vit_checkpoint:
                raise RisbenchError("model.vision.pretrained=true but model.vision.checkpoint is not set")
            load_vit_checkpoint(self.vision, self.vit_checkpoint, self.vit_name)
        super().load_pretrained()

    # -- forward -----------------------------------------------------------------------------------
    def encode_image(self, image: torch.Tensor, image_ids: list | None = None) -> torch.Tensor:
        """(B,3,S,S) -> zv (B,Nv,Dv): ViT tokens after the final LN, prefix (CLS) tokens dropped.

        The ViT does not see the text, so outside training it runs once per distinct image of the batch
        (same result; evaluation visits a referent's expressions in a row). Training keeps one pass per
        sample, so drop-path stays independent per sample as in the paper.
        """
        if image_ids is not None and not self.training:
            first, inverse = distinct_images(image, image_ids)
            if len(first) < len(image_ids):
                return self.vision(image[first])[:, self.vision.num_prefix_tokens:][inverse]
        return self.vision(image)[:, self.vision.num_prefix_tokens:]

    def forward(self, batch: dict) -> dict:
        image, tokens = batch["image"], batch["tokens"]
        B = image.shape[0]
        h, w = self.grid
        pad = batch["attention_mask"] == 0                                     # (B,20)
        key_padding_mask = pad if self.text.pad_mode == "mask" else None
        zv = self.encode_image(image, batch.get("image_id"))                   # (B,900,768)
        zl, _ = self.text(tokens, batch["attention_mask"])                     # (B,20,300)
        v, zv_fused, classifier = self.fusion(zv, zl, pad, key_padding_mask)   # (B,900,768), (B,1,768)
        patches, logits = self.head(zv_fused, classifier)                      # (B,900,768), (B,900,1)
        patch_logits = logits.transpose(1, 2).reshape(B, 1, h, w)              # (B,1,30,30)
        if self.decoder is None:
            pixel_logits = resize_logits(patch_logits, tuple(image.shape[-2:]))
        else:
            gate = logits.sigmoid() if self.mask_with == "sigmoid" else logits
            skip = zv if self.visual_skip == "vit" else v
            x = torch.cat([skip, patches * gate], -1)                          # (B,900,1536)
            x = tokens_to_map(x, h, w)                                         # (B,1536,30,30)
            pixel_logits = self.decoder(x)                                     # (B,1,480,480)
        return {"pixel_logits": pixel_logits, "patch_logits": patch_logits, "classifier": classifier}

    def loss(self, outputs: dict, batch: dict) -> dict:
        mask = batch["mask"]
        pixel = bce_loss(outputs["pixel_logits"].float(), mask)
        losses = {"loss": pixel, "pixel_bce": pixel}
        if self.loss_cfg["dice_weight"]:
            losses["pixel_dice"] = dice_loss(outputs["pixel_logits"], mask)
            losses["loss"] = losses["loss"] + self.loss_cfg["dice_weight"] * losses["pixel_dice"]
        if self.patch_weight:
            labels = patch_labels(mask, self.patch_size, self.loss_cfg["patch_tau"],
                                  self.loss_cfg["patch_label_rule"])
            losses["patch_bce"] = bce_loss(outputs["patch_logits"].float(), labels)
            losses["loss"] = losses["loss"] + self.patch_weight * losses["patch_bce"]
        return losses

    def mask_logits(self, outputs: dict) -> torch.Tensor:
        return outputs["pixel_logits"]


# ----------------------------------------------------------------------------------------------------
# Table 3a: where the seed looks
# ----------------------------------------------------------------------------------------------------

@torch.no_grad()
def seed_attention_analysis(model: ReSTR, dataloader: Iterable, max_samples: int | None = None) -> dict:
    """Mean attention share (%) of the class seed to visual (a_v) and word (a_l) tokens per VME layer.

    The seed's softmax row, averaged over heads, summed over the patch columns (a_v) and the word
    columns (a_l, padding included), averaged over samples. The rest is the seed attending to itself.
    """
    fusion = getattr(model, "fusion", None)
    if not isinstance(fusion, FusionEncoder) or fusion.type != "vme":
        raise RisbenchError("the seed-attention analysis (Table 3a) needs a ReSTR model with "
                            "model.fusion.type=vme (the seed sees patches and words only there)")
    rows: list[torch.Tensor] = []  # per block call: (B, N) head-averaged seed row
    hooks = []
    for block in fusion.joint.blocks:
        block.attn.record_attention = True
        hooks.append(block.attn.register_forward_hook(
            lambda module, args, out: rows.append(module.last_attention[:, :, -1].float().mean(1))))
    device = next(model.parameters()).device
    sums = None
    count = 0
    try:
        for batch in dataloader:
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            rows.clear()
            model(batch)
            Nv = model.grid[0] * model.grid[1]
            take = batch["tokens"].shape[0] if max_samples is None else min(batch["tokens"].shape[0],
                                                                            max_samples - count)
            shares = torch.stack([torch.stack([r[:take, :Nv].sum(-1), r[:take, Nv:-1].sum(-1), r[:take, -1]], -1)
                                  for r in rows])  # (layers, take, 3)
            sums = shares.sum(1) if sums is None else sums + shares.sum(1)
            count += take
            if max_samples is not None and count >= max_samples:
                break
    finally:
        for hook in hooks:
            hook.remove()
        for block in fusion.joint.blocks:
            block.attn.record_attention = False
            block.attn.last_attention = None
    if not count:
        raise RisbenchError("the seed-attention analysis got no samples")
    mean = (sums / count * 100).tolist()
    layers = [{"layer": f"f{i + 1}", "a_v": a_v, "a_l": a_l, "a_seed": a_s} for i, (a_v, a_l, a_s) in enumerate(mean)]
    return {"table": "restr_table3a", "num_samples": count, "layers": layers}
