"""CLIP-LoRA (Zanella & Ben Ayed, CVPRW 2024): low-rank updates of q, k, v in every attention block."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.backbones import recipes
from pipeline.backbones.base import Backbone
from pipeline.backbones.encoder import Encoder
from pipeline.backbones.prompts import TextCache, encode_text_tokens
from pipeline.core.errors import InputError

log = logging.getLogger(__name__)

TOWERS = {"vision": ("vision",), "text": ("text",), "both": ("vision", "text")}


class LoRAProjection(nn.Module):
    """The low-rank update of one projection: x -> s B A dropout(x), s = alpha / sqrt(r).

    A (r, in) starts kaiming-uniform (a = sqrt(5), ``nn.Linear``'s default), B (out, r) at zero, so
    the update starts at zero. The scaling alpha / sqrt(r) (not LoRA's alpha / r) and the dropout on
    the update's input, active in training mode only, are the official CLIP-LoRA code's
    (``loralib/layers.py``: ``LoRALayer.scaling``, ``LinearLoRA.forward``).
    """

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features))  # (r, in)
        self.B = nn.Parameter(torch.zeros(out_features, rank))  # (out, r)
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)
        self.scaling = alpha / math.sqrt(rank)

    def forward(self, x: Tensor) -> Tensor:
        """(..., in) -> (..., out) update, in x's dtype."""
        h = F.linear(self.dropout(x.to(self.A.dtype)), self.A)  # (..., r)
        return (F.linear(h, self.B) * self.scaling).to(x.dtype)  # (..., out)


class LoRAAttention(nn.Module):
    """``torch.nn.MultiheadAttention`` with LoRA on its q, k and v projections.

    It keeps the wrapped module's frozen parameters under their own names (``in_proj_weight``,
    ``in_proj_bias``, ``out_proj``), so the CLIP state dict keeps its keys, and adds ``q_lora``,
    ``k_lora``, ``v_lora``. ``forward`` has ``MultiheadAttention.forward``'s signature (open_clip
    3.3's ``ResidualAttentionBlock.attention`` calls ``attn(q, k, v, need_weights=False,
    attn_mask=mask)[0]`` with ``batch_first=True``) and computes what it computes, plus the updates:
    q = W_q x + b_q + s B_q A_q drop(x) (k, v alike), scaled dot-product attention per head with the
    additive mask, then ``out_proj``. With B = 0 the output is the wrapped module's, up to float
    rounding (bit-identical to its reference path for the demo's shapes; its fused inference path
    differs by ~1e-7).
    """

    def __init__(self, attn: nn.MultiheadAttention, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = attn.embed_dim, attn.num_heads, attn.head_dim
        self.batch_first = attn.batch_first
        self.attn_dropout = float(attn.dropout)
        self.in_proj_weight = attn.in_proj_weight  # (3E, E), the same frozen tensor
        self.register_parameter("in_proj_bias", attn.in_proj_bias)  # (3E,) or None
        self.out_proj = attn.out_proj
        device, e = attn.in_proj_weight.device, attn.embed_dim
        # Drawn on the CPU (q, then k, then v), so the init does not depend on the device.
        self.q_lora = LoRAProjection(e, e, rank, alpha, dropout).to(device)
        self.k_lora = LoRAProjection(e, e, rank, alpha, dropout).to(device)
        self.v_lora = LoRAProjection(e, e, rank, alpha, dropout).to(device)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attention output (same layout as ``query``) and, with ``need_weights``, the weights."""
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint")  # as MultiheadAttention
        self_attention = query is key and key is value
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, lq, e = query.shape  # (N, Lq, E)
        lk = key.shape[1]
        w, b = self.in_proj_weight, self.in_proj_bias
        if self_attention:
            q, k, v = F.linear(query, w, b).chunk(3, dim=-1)  # 3 x (N, L, E)
        else:
            wq, wk, wv = w.chunk(3)
            bq, bk, bv = b.chunk(3) if b is not None else (None, None, None)
            q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)
        q = q + self.q_lora(query).to(q.dtype)  # (N, Lq, E); q's dtype, float16 under autocast
        k = k + self.k_lora(key).to(k.dtype)  # (N, Lk, E)
        v = v + self.v_lora(value).to(v.dtype)  # (N, Lk, E)
        h, hd = self.num_heads, self.head_dim
        q = q.reshape(n, lq, h, hd).transpose(1, 2)  # (N, H, Lq, hd)
        k = k.reshape(n, lk, h, hd).transpose(1, 2)  # (N, H, Lk, hd)
        v = v.reshape(n, lk, h, hd).transpose(1, 2)  # (N, H, Lk, hd)
        mask = _merge_masks(attn_mask, key_padding_mask, (n, h, lq, lk), q.dtype)
        dropout_p = self.attn_dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q * hd**-0.5) @ k.transpose(-2, -1)  # (N, H, Lq, Lk)
            if mask is not None:
                scores = scores + mask
            weights = scores.softmax(dim=-1)
            out = F.dropout(weights, dropout_p) @ v if dropout_p else weights @ v  # (N, H, Lq, hd)
            weights = weights.mean(dim=1) if average_attn_weights else weights
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        out = self.out_proj(out.transpose(1, 2).reshape(n, lq, e))  # (N, Lq, E)
        if unbatched:
            return out.squeeze(0), weights.squeeze(0) if weights is not None else None
        return (out if self.batch_first else out.transpose(0, 1)), weights


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A MultiheadAttention mask (bool: True = masked out; float: added) as an additive float mask."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def _merge_masks(
    attn_mask: Tensor | None,
    key_padding_mask: Tensor | None,
    shape: tuple[int, int, int, int],
    dtype: torch.dtype,
) -> Tensor | None:
    """(Lq, Lk) or (N H, Lq, Lk) attention mask and (N, Lk) padding mask -> one additive mask that
    broadcasts to (N, H, Lq, Lk), or None."""
    n, h, lq, lk = shape
    mask = None
    if attn_mask is not None:
        m = _additive(attn_mask, dtype)
        mask = m.view(1, 1, lq, lk) if m.dim() == 2 else m.view(n, h, lq, lk)
    if key_padding_mask is not None:
        pad = _additive(key_padding_mask, dtype).view(n, 1, 1, lk)
        mask = pad if mask is None else mask + pad
    return mask


def _tower_blocks(model: nn.Module, tower: str) -> tuple[str, nn.Module | None]:
    """The name and the residual block list (``transformer.resblocks``) of one tower, or None."""
    if tower == "vision":
        owner, prefix = getattr(model, "visual", None), "visual"
    else:  # CLIP keeps the text transformer at the top; CustomTextCLIP under .text
        owner, prefix = (
            (model.text, "text") if isinstance(getattr(model, "text", None), nn.Module) else (model, "")
        )
    transformer = getattr(owner, "transformer", None)
    blocks = getattr(transformer, "resblocks", None)
    name = f"{prefix}.transformer.resblocks".lstrip(".")
    return name, blocks if isinstance(blocks, nn.ModuleList) else None


def _type_name(module: object) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def _supported(attn: object) -> bool:
    """A self-attention module LoRAAttention reproduces: MultiheadAttention with packed q, k, v."""
    return (
        isinstance(attn, nn.MultiheadAttention)
        and attn._qkv_same_embed_dim
        and attn.in_proj_weight is not None
        and attn.bias_k is None
        and not attn.add_zero_attn
    )


def attach_lora(model: nn.Module, encoders: str, rank: int, alpha: float, dropout: float) -> list[str]:
    """Replace the attention module of every residual block of the chosen towers by ``LoRAAttention``.

    The model is changed in place (a CLIP-LoRA backbone owns its encoder). Nothing is changed
    unless every block of every chosen tower holds a ``torch.nn.MultiheadAttention`` with a packed
    ``in_proj_weight``.

    Args:
        model: an open_clip CLIP (or CustomTextCLIP) model.
        encoders: "vision", "text" or "both".

    Returns:
        The names of the wrapped modules (e.g. ``visual.transformer.resblocks.0.attn``).

    Raises:
        InputError: a tower without transformer blocks, or attention modules of another type (the
            message names the types found and the open_clip version).
        RuntimeError: the model already carries LoRA (load a fresh encoder per CLIP-LoRA backbone).
    """
    plan: list[tuple[str, nn.Module, nn.MultiheadAttention]] = []
    for tower in TOWERS[encoders]:
        where, blocks = _tower_blocks(model, tower)
        if blocks is None:
            owner = getattr(model, "visual", None) if tower == "vision" else model
            raise InputError(
                f"config key 'encoder.model': CLIP-LoRA found no transformer blocks in the {tower} tower "
                f"({_type_name(owner)}); it needs a ViT"
            )
        unsupported: Counter[str] = Counter()
        n_found = 0
        for i, block in enumerate(blocks):
            attn = getattr(block, "attn", None)
            if isinstance(attn, LoRAAttention):
                raise RuntimeError(
                    "this encoder already carries LoRA: load a fresh encoder per CLIP-LoRA backbone"
                )
            if _supported(attn):
                plan.append((f"{where}.{i}.attn", block, attn))
                n_found += 1
            elif isinstance(attn, nn.MultiheadAttention):
                unsupported["torch.nn.MultiheadAttention without packed q, k, v"] += 1
            else:
                what = _type_name(attn) if attn is not None else f"{_type_name(block)} without .attn"
                unsupported[what] += 1
        if unsupported or not n_found:
            listed = ", ".join(f"{t} x {c}" for t, c in sorted(unsupported.items())) or "no blocks"
            raise InputError(
                "config key 'encoder.model': CLIP-LoRA attaches to torch.nn.MultiheadAttention "
                f"(packed q, k, v), but the {tower} tower ({where}) holds {listed} "
                f"(open_clip {open_clip.__version__})"
            )
    for _, block, attn in plan:
        block.attn = LoRAAttention(attn, rank, alpha, dropout)
    return [name for name, _, _ in plan]


class CLIPLoRA(Backbone):
    """LoRA (rank r, scaling alpha / sqrt(r), dropout on the update's input) on the q, k and v
    projections of every attention block of the encoders named by ``cfg.encoders`` ("both" by
    default); the CLIP weights stay frozen.

    Training is on images (``encode_images`` runs the LoRA vision tower) with the class texts of
    ``templates`` ("a photo of a {}.", from ``cfg.templates``) run through the LoRA text tower with
    gradients at every step; logits 100 cos(x, z_c); cross-entropy. Extraction runs in eval mode
    (dropout off). The encoder's model is changed in place: build one CLIP-LoRA backbone per loaded
    encoder. A is drawn from torch's global RNG (seed it first). See docs/backbones.md, "CLIP-LoRA".

    Trainable parameters: ``<tower>.transformer.resblocks.<i>.attn.{q,k,v}_lora.{A,B}`` under
    ``clip.``; per block 3 x (2 x 128 + 128 x 2) = 1536, so 7 x 1536 = 10752 on demo-vit-t-28
    (4 vision + 3 text blocks).
    """

    name = "clip_lora"

    def __init__(
        self,
        encoder: Encoder | None,
        classnames: Sequence[str],
        templates: Sequence[str],
        cfg: recipes.CLIPLoRA | None,
        dim: int,
    ) -> None:
        cfg = cfg if cfg is not None else recipes.CLIPLoRA()
        super().__init__(encoder, classnames, templates, cfg, dim)
        self.need_encoder()
        self.towers = TOWERS[cfg.encoders]
        self.wrapped = attach_lora(self.clip, cfg.encoders, cfg.rank, cfg.alpha, cfg.dropout)
        self._texts = TextCache()
        log.info(
            "CLIP-LoRA: rank %d, alpha %g (scaling %.4g), dropout %g on q, k, v of %d attention blocks (%s)",
            cfg.rank, cfg.alpha, cfg.alpha / math.sqrt(cfg.rank), cfg.dropout, len(self.wrapped),
            cfg.encoders,
        )  # fmt: skip

    def use_texts(self, text: Tensor) -> None:
        if "text" in self.towers:
            raise RuntimeError(f"backbone '{self.name}' adapts the text encoder; frozen texts do not apply")
        super().use_texts(text)

    def adapt_features(self, x: Tensor) -> Tensor:
        """Identity on frozen features when only the text tower has LoRA; otherwise an error (the
        image features need the LoRA vision tower: pass images)."""
        if "vision" in self.towers:
            raise RuntimeError(
                f"backbone '{self.name}' adapts the image encoder: it needs images, not features"
            )
        return super().adapt_features(x)

    def class_texts(self) -> Tensor:
        """(C, D) L2-normalised class texts through the (LoRA) text tower: recomputed with gradients
        when grad is enabled, cached otherwise until a LoRA weight changes."""
        if "text" not in self.towers:
            return super().class_texts()
        return self._texts.get(self, self._encode_texts)

    def _encode_texts(self) -> Tensor:
        encoder = self.need_encoder()
        if not self.templates:
            raise InputError("config key 'templates': at least one prompt template is needed")
        per_template = []
        for template in self.templates:
            if "{}" not in template:
                raise InputError(
                    f"config key 'templates': template {template!r} has no '{{}}' for the class name"
                )
            tokens = encoder.tokenizer([template.format(c) for c in self.classnames]).to(encoder.device)
            self.forwards["text"] += len(self.classnames)
            per_template.append(F.normalize(encode_text_tokens(self.clip, tokens).float(), dim=-1))  # (C, D)
        return F.normalize(torch.stack(per_template).mean(dim=0), dim=-1)  # (C, D)


BACKBONE = CLIPLoRA
