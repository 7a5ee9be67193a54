"""CoOp (Zhou et al., IJCV 2022): 16 learned context vectors shared by all classes, class token last."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.backbones import recipes
from pipeline.backbones.base import Backbone
from pipeline.backbones.encoder import Encoder
from pipeline.backbones.prompts import ContextPrompts, TextCache, context_words, text_width

log = logging.getLogger(__name__)


class CoOp(Backbone):
    """Context Optimization: the prompt of class c is [V_1 ... V_M, CLASS_c, "."], with M = ``n_ctx``
    learned vectors V (width W of the text transformer) shared by every class.

    z_c = normalize(g([sot, V_1, ..., V_M, w_c, ".", eot])) with g the frozen text tower; logits
    100 cos(x, z_c); cross-entropy. The image encoder is frozen, so CoOp trains on the cached
    zero-shot image features ((B, D) inputs to ``loss``); the class texts run through the text
    tower with gradients at every training step. ``templates`` are not used (the context replaces
    them) unless ``ctx_init`` is "template". With ``ctx_init`` empty (CoOp's default) the context is
    drawn from N(0, ``ctx_init_std``^2) with torch's global RNG (seed it first, as
    ``loading.build_backbone`` does); with words, it starts from their token embeddings
    (``prompts.context_words``). See docs/backbones.md, "CoOp".

    Trainable parameters: ``ctx`` (M, W); 16 x 128 = 2048 on demo-vit-t-28.
    """

    name = "coop"

    def __init__(
        self,
        encoder: Encoder | None,
        classnames: Sequence[str],
        templates: Sequence[str],
        cfg: recipes.CoOp | None,
        dim: int,
    ) -> None:
        cfg = cfg if cfg is not None else recipes.CoOp()
        super().__init__(encoder, classnames, templates, cfg, dim)
        encoder = self.need_encoder()
        width = text_width(encoder.model)
        prefix, suffix = context_words(cfg.ctx_init, cfg.n_ctx, self.templates)
        self.prompts = ContextPrompts(encoder, prefix, self.classnames, suffix)
        if cfg.ctx_init:  # the words' own token embeddings
            ctx = self.prompts.init.clone()  # (M, W)
        else:
            assert self.prompts.n_ctx == cfg.n_ctx, (self.prompts.n_ctx, cfg.n_ctx)
            ctx = torch.empty(cfg.n_ctx, width).normal_(0.0, cfg.ctx_init_std)  # (M, W), drawn on the CPU
        self.ctx = nn.Parameter(ctx.to(encoder.device))
        self._texts = TextCache()

    def use_texts(self, text: Tensor) -> None:
        raise RuntimeError(f"backbone '{self.name}' learns its class texts; frozen texts do not apply")

    def class_texts(self) -> Tensor:
        """(C, D) L2-normalised texts of the learned prompts: recomputed with gradients when grad is
        enabled, cached otherwise until ``ctx`` changes."""
        return self._texts.get(self, self._encode_texts)

    def _encode_texts(self) -> Tensor:
        self.forwards["text"] += len(self.classnames)
        feats = self.prompts.encode(self.clip, self.ctx)  # (C, D)
        return F.normalize(feats.float(), dim=-1)


BACKBONE = CoOp
