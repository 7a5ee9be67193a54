"""CoCoOp (Zhou et al., CVPR 2022): context from "a photo of a" plus a meta-net shift from each image."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.backbones import recipes
from pipeline.backbones.base import Backbone
from pipeline.backbones.encoder import Encoder
from pipeline.backbones.prompts import ContextPrompts, TextCache, context_words, text_width
from pipeline.core.errors import InputError

log = logging.getLogger(__name__)

PROMPTS_PER_CHUNK = 1024  # prompts per text-tower call in image_class_texts (bounds memory for large C)


class CoCoOp(Backbone):
    """Conditional Context Optimization: the context of every prompt is shifted by a meta-net
    output computed from the image, so each image gets its own C class texts.

    v_m(x) = v_m + pi(x), pi(x) = W_2 ReLU(W_1 normalize(x) + b_1) + b_2 (hidden width
    D / ``meta_reduction``, output width W of the text transformer); the prompt of class c for image
    x is [sot, v_1(x), ..., v_M(x), w_c, ".", eot] and z_c(x) its normalised text feature; logits
    100 cos(x, z_c(x)); cross-entropy. The M context vectors start from the token embeddings of
    ``ctx_init`` ("a photo of a": M = 4). The image encoder is frozen: CoCoOp trains on the cached
    zero-shot features, batch 1 by recipe. ``templates`` are not used. The meta-net's initial
    weights come from torch's global RNG (seed it first). See docs/backbones.md, "CoCoOp".

    Trainable parameters: ``ctx`` (M, W) and ``meta_net.linear1/linear2`` weights and biases;
    4 x 128 + (128 x 8 + 8) + (8 x 128 + 128) = 2696 on demo-vit-t-28.
    """

    name = "cocoop"

    def __init__(
        self,
        encoder: Encoder | None,
        classnames: Sequence[str],
        templates: Sequence[str],
        cfg: recipes.CoCoOp | None,
        dim: int,
    ) -> None:
        cfg = cfg if cfg is not None else recipes.CoCoOp()
        super().__init__(encoder, classnames, templates, cfg, dim)
        encoder = self.need_encoder()
        width = text_width(encoder.model)
        if not cfg.ctx_init.strip():
            raise InputError("config key 'ctx_init': CoCoOp starts its context from words or 'template'")
        prefix, suffix = context_words(cfg.ctx_init, 0, self.templates)
        self.prompts = ContextPrompts(encoder, prefix, self.classnames, suffix)
        self.ctx = nn.Parameter(self.prompts.init.clone())  # (M, W)
        hidden = max(1, self.dim // cfg.meta_reduction)
        meta_net = nn.Sequential(
            OrderedDict(
                linear1=nn.Linear(self.dim, hidden),
                relu=nn.ReLU(),
                linear2=nn.Linear(hidden, width),
            )
        )  # built on the CPU, so its init does not depend on the device
        self.meta_net = meta_net.to(encoder.device)
        self._texts = TextCache()

    def use_texts(self, text: Tensor) -> None:
        raise RuntimeError(f"backbone '{self.name}' learns its class texts; frozen texts do not apply")

    def context(self, x: Tensor) -> Tensor:
        """(B, D) image features -> (B, M, W) each image's context v_m + pi(x)."""
        shift = self.meta_net(F.normalize(x.float(), dim=-1))  # (B, W)
        return self.ctx.unsqueeze(0) + shift.unsqueeze(1)  # (B, M, W)

    def image_class_texts(self, x: Tensor) -> Tensor:
        """(B, D) image features -> (B, C, D) L2-normalised class texts of each image (B x C prompts)."""
        ctx = self.context(x)  # (B, M, W)
        n_classes = len(self.classnames)
        classes = torch.arange(n_classes, device=self.prompts.tokens.device)  # (C,)
        step = max(1, PROMPTS_PER_CHUNK // n_classes)
        out = []
        for start in range(0, ctx.shape[0], step):
            part = ctx[start : start + step]  # (b, M, W)
            b = part.shape[0]
            prompt_ctx = part.unsqueeze(1).expand(b, n_classes, *part.shape[1:]).flatten(0, 1)  # (b C, M, W)
            self.forwards["text"] += b * n_classes
            feats = self.prompts.encode(self.clip, prompt_ctx, classes.repeat(b))  # (b C, D)
            out.append(F.normalize(feats.float(), dim=-1).reshape(b, n_classes, -1))  # (b, C, D)
        return torch.cat(out)  # (B, C, D)

    def target_texts(self, x: Tensor, labels: Tensor) -> Tensor:
        """(B, D) image features and (B,) labels -> (B, D) each image's own class text (B prompts)."""
        labels = labels.to(self.prompts.tokens.device)
        self.forwards["text"] += len(labels)
        feats = self.prompts.encode(self.clip, self.context(x), labels)  # (B, D)
        return F.normalize(feats.float(), dim=-1)

    def class_texts(self) -> Tensor:
        """(C, D) texts of the learned context without the meta-net shift (pi = 0). Predictions use
        ``image_class_texts``; this image-independent part is for diagnostics."""
        return self._texts.get(self, self._encode_texts)

    def _encode_texts(self) -> Tensor:
        self.forwards["text"] += len(self.classnames)
        return F.normalize(self.prompts.encode(self.clip, self.ctx).float(), dim=-1)  # (C, D)

    def logits(self, x: Tensor) -> Tensor:
        """(B, D) image features -> (B, C) logits, ``logit_scale`` x cosine with each image's own class
        texts (the base ``loss`` calls this, so training uses the per-image texts)."""
        x = F.normalize(x.float(), dim=-1)  # (B, D)
        text = self.image_class_texts(x)  # (B, C, D)
        return self.logit_scale * torch.einsum("bd,bcd->bc", x, text.to(x.dtype))


BACKBONE = CoCoOp
