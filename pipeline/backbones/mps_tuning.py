"""MPS-Tuning (Preserve and Sculpt, ICLR 2026): partial fine-tuning of the vision tower with MAR and HMS.

The paper: *Preserve and Sculpt: Manifold-Aligned Fine-tuning of Vision-Language Models for
Few-Shot Learning*, ICLR 2026 (OpenReview ZGJJF1e2u0). docs/backbones.md, "MPS-Tuning", gives the
recipe and how this module reads it. The vision blocks are split by thirds of the depth:

* blocks [0, a): frozen, shared by both branches;
* blocks [a, b): frozen, each with a parallel zero-initialised W x W linear adapter,
  h <- block(h) + adapter(h) in the fine-tuned branch;
* blocks [b, L), ``ln_post`` and ``proj``: fine-tuned as trainable copies; the frozen originals
  run the zero-shot branch.

with a = floor(L / 3), b = floor(2 L / 3) (4 and 8 for ViT-B/16's 12 blocks). The text tower is
frozen. The losses are library functions (``mar_global_loss``, ``mar_local_loss``,
``sculpt_loss``, ``pseudo_forward``, ``fused_logits``), each tested alone.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.backbones import recipes
from pipeline.backbones.base import Backbone
from pipeline.backbones.encoder import Encoder
from pipeline.core.errors import InputError

log = logging.getLogger(__name__)

WORKS_WITH = "an open_clip ViT with class-token pooling and at least 3 blocks, e.g. ViT-B-16 or demo-vit-t-28"


# ---------------------------------------------------------------------------------------------- losses


def gram(x: Tensor) -> Tensor:
    """(..., N, D) vectors -> (..., N, N) Gram matrix of their L2-normalised versions, S_ij = <z_i, z_j>."""
    z = F.normalize(x.float(), dim=-1)
    return z @ z.transpose(-2, -1)


def mar_global_loss(f_zs: Tensor, f_ft: Tensor) -> Tensor:
    """MAR, global topology (the paper's L^global_MAR): L1 between the batch Gram matrices.

    Args:
        f_zs: (N, D) [CLS] features of the frozen model.
        f_ft: (N, D) [CLS] features of the fine-tuned model.

    Returns:
        mean_ij |S_ij - S'_ij| over the N x N entries (a scalar), with S = gram(f_zs), S' = gram(f_ft).
    """
    return (gram(f_zs) - gram(f_ft)).abs().mean()


def mar_local_loss(tokens_zs: Tensor, tokens_ft: Tensor) -> Tensor:
    """MAR, local geometry (the paper's L^local_MAR): L1 between each sample's token Gram matrices.

    Args:
        tokens_zs: (N, M + 1, D) [CLS] and M patch tokens of the frozen model.
        tokens_ft: (N, M + 1, D) the same tokens of the fine-tuned model.

    Returns:
        mean over samples i and entries (j, k) of |S^i_jk - S'^i_jk| (a scalar).
    """
    return (gram(tokens_zs) - gram(tokens_ft)).abs().mean()


def sculpt_loss(queries: Tensor, labels: Tensor, texts: Tensor, temperature: float) -> Tensor:
    """HMS sculpting loss (the paper's L_sculpt): supervised contrastive matching of image queries
    against the support set S = Q u T.

    For each query q (with its own entry left out of S), the positives P_q are the images and the
    class text of its class:

        L_q = -1 / |P_q| sum_{p in P_q} log( exp(<q, p> / tau) / sum_{s in S \\ {q}} exp(<q, s> / tau) )

    and the loss is the mean of L_q over the queries. Every query has a positive: its class text.

    Args:
        queries: (N, D) image features (both views of every image), normalised here.
        labels: (N,) class of each query, in [0, K).
        texts: (K, D) frozen class text features, normalised here.
        temperature: tau.
    """
    q = F.normalize(queries.float(), dim=-1)  # (N, D)
    t = F.normalize(texts.float(), dim=-1).to(q.device)  # (K, D)
    n, k = q.shape[0], t.shape[0]
    support = torch.cat([q, t])  # (N + K, D)
    support_labels = torch.cat([labels, torch.arange(k, device=labels.device)])  # (N + K,)
    scores = q @ support.T / temperature  # (N, N + K)
    self_mask = torch.zeros_like(scores, dtype=torch.bool)
    self_mask[:, :n] = torch.eye(n, dtype=torch.bool, device=q.device)
    scores = scores.masked_fill(self_mask, float("-inf"))
    log_prob = scores - torch.logsumexp(scores, dim=1, keepdim=True)  # (N, N + K)
    positive = (labels[:, None] == support_labels[None, :]) & ~self_mask  # (N, N + K)
    per_query = -(log_prob.masked_fill(~positive, 0.0).sum(dim=1)) / positive.sum(dim=1)  # (N,)
    return per_query.mean()


def fused_logits(f_ft: Tensor, f_zs: Tensor, texts: Tensor, alpha: float, scale: float) -> Tensor:
    """Zero-shot-FT logits fusion: scale (alpha cos(f_ft, z_c) + (1 - alpha) cos(f_zs, z_c)).

    Args:
        f_ft, f_zs: (B, D) fine-tuned and frozen image features.
        texts: (C, D) frozen class texts z.

    Returns:
        (B, C) logits.
    """
    z = F.normalize(texts.float(), dim=-1)
    cos_ft = F.normalize(f_ft.float(), dim=-1) @ z.T  # (B, C)
    cos_zs = F.normalize(f_zs.float(), dim=-1) @ z.T  # (B, C)
    return scale * (alpha * cos_ft + (1.0 - alpha) * cos_zs)


def fused_features(f_ft: Tensor, f_zs: Tensor, alpha: float) -> Tensor:
    """x0 = normalize(alpha f_ft + (1 - alpha) f_zs) of the normalised features: (B, D).

    x0 . z_c is the fused cosine divided by |alpha f_ft + (1 - alpha) f_zs| > 0, the same for every
    class, so argmax_c x0 . z_c is MPS-Tuning's own prediction (FMA at M = 0 reproduces it).
    """
    mix = alpha * F.normalize(f_ft.float(), dim=-1) + (1.0 - alpha) * F.normalize(f_zs.float(), dim=-1)
    return F.normalize(mix, dim=-1)


def cosine_temperature(progress: float, start: float, end: float) -> float:
    """HMS temperature at ``progress`` in [0, 1] of the run: end + (start - end) (1 + cos(pi p)) / 2."""
    p = min(1.0, max(0.0, progress))
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * p))


# ---------------------------------------------------------------------------------------------- vision tower


def split_depth(depth: int) -> tuple[int, int]:
    """(a, b): blocks [0, a) frozen, [a, b) frozen with adapters, [b, depth) fine-tuned copies.

    a = floor(depth / 3) and b = floor(2 depth / 3); 12 blocks give (4, 8), 4 give (1, 2).

    Raises:
        InputError: fewer than 3 blocks (a third would be empty).
    """
    if depth < 3:
        raise InputError(
            f"config key 'encoder.model': MPS-Tuning splits the vision blocks in thirds, this model has "
            f"{depth}; it works with {WORKS_WITH}"
        )
    return depth // 3, (2 * depth) // 3


def check_vision_tower(model: nn.Module) -> nn.Module:
    """The model's vision tower if MPS-Tuning can split it, else one line saying which models work.

    It needs open_clip's ``VisionTransformer`` with class-token pooling (no attention pooling, LN
    before pooling), a projection, batch-first blocks whose attention is ``nn.MultiheadAttention``
    with packed q, k, v (pseudo-forwarding reads its value projection), and at least 3 blocks.
    """
    from open_clip.transformer import VisionTransformer

    visual = getattr(model, "visual", None)
    found = f"{type(visual).__module__}.{type(visual).__qualname__}"
    if not isinstance(visual, VisionTransformer):
        raise InputError(
            f"config key 'encoder.model': MPS-Tuning needs {WORKS_WITH}; this vision tower is {found}"
        )
    blocks = visual.transformer.resblocks
    ok = (
        visual.pool_type == "tok"
        and visual.attn_pool is None
        and not visual.final_ln_after_pool
        and isinstance(visual.proj, Tensor)
        and getattr(visual.transformer, "batch_first", True)
        and all(
            isinstance(getattr(b, "attn", None), nn.MultiheadAttention) and b.attn.in_proj_weight is not None
            for b in blocks
        )
    )
    if not ok:
        raise InputError(
            f"config key 'encoder.model': MPS-Tuning needs {WORKS_WITH}; this {found} pools with "
            f"'{visual.pool_type}' or has another block or projection layout"
        )
    split_depth(len(blocks))
    return visual


def embed_patches(visual: nn.Module, images: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, 1 + M, W) tokens entering the first block, as open_clip 3.3's
    ``VisionTransformer`` computes them: patch conv, class token, positions, patch dropout, ln_pre."""
    x = visual.conv1(images)  # (B, W, g, g)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B, M, W)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)  # (B, 1, W)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)  # (B, 1 + M, W)
    return visual.ln_pre(visual.patch_dropout(x))


def pseudo_forward(block: nn.Module, x: Tensor) -> Tensor:
    """Pseudo-forwarding of a (B, W) token through one residual block: attention skipped, the value
    projection, output projection and FFN kept (the paper's Pseudo-Forward):

        x <- x + ls_1(W_o (W_v ln_1(x) + b_v) + b_o),    x <- x + ls_2(FFN(ln_2(x)))

    It is the block applied to a one-token sequence (attention over itself alone is the identity
    mix), with the block's own parameters (tested).
    """
    attn = block.attn
    width = attn.embed_dim
    w_v = attn.in_proj_weight[2 * width :]  # (W, W)
    b_v = attn.in_proj_bias[2 * width :] if attn.in_proj_bias is not None else None
    v = F.linear(block.ln_1(x), w_v, b_v)  # (B, W)
    x = x + block.ls_1(attn.out_proj(v))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


@dataclass
class TowerOutputs:
    """Both branches on one batch of B images with L = 1 + M tokens."""

    f_zs: Tensor  # (B, D) frozen [CLS] feature, unnormalised
    f_ft: Tensor  # (B, D) fine-tuned [CLS] feature, unnormalised
    tokens_zs: Tensor  # (B, L, D) frozen tokens after ln_post and proj
    tokens_ft: Tensor  # (B, L, D) fine-tuned tokens after ln_post and proj
    hidden_ft: list[Tensor]  # (B, L, W) fine-tuned branch after block b - 1, then after each copy


class MPSTuning(Backbone):
    """MPS-Tuning: zero-initialised parallel adapters on the middle third of the vision blocks,
    trainable copies of the last third, ``ln_post`` and ``proj``; the frozen originals give the
    zero-shot branch. Text tower frozen; class texts are the dataset's templated zero-shot texts.

    Prediction: fused logits 0.3 fine-tuned + 0.7 zero-shot (``cfg.alpha``); exported features
    x0 = normalize(0.3 f_ft + 0.7 f_zs) (``encode_images``). Loss: CE on the fused logits +
    lambda1 (MAR global + MAR local) + lambda2 HMS (output, and the block before the last
    pseudo-forwarded; weights ``hms_weights``, temperature x ``hms_temperature_factors``), the
    temperature cosine-annealed over the run (``start_step``). Training inputs are (B, V, 3, H, W)
    with V = 2 augmented views per image, or (B, 3, H, W). See docs/backbones.md, "MPS-Tuning".

    Trainable parameters: ``adapters.<i>.{weight (W, W), bias (W,)}`` for blocks a + i,
    ``blocks.<j>.*`` (copies of blocks b + j), ``ln_post.{weight, bias}`` and ``proj`` (W, D).
    """

    name = "mps_tuning"

    def __init__(
        self,
        encoder: Encoder | None,
        classnames: Sequence[str],
        templates: Sequence[str],
        cfg: recipes.MPSTuning | None,
        dim: int,
    ) -> None:
        cfg = cfg if cfg is not None else recipes.MPSTuning()
        super().__init__(encoder, classnames, templates, cfg, dim)
        encoder = self.need_encoder()
        visual = check_vision_tower(self.clip)
        frozen = visual.transformer.resblocks
        self.depth = len(frozen)
        self.first, self.second = split_depth(self.depth)
        if self.depth - self.second + 1 < len(cfg.hms_weights):
            raise InputError(
                f"config key 'backbone_config.mps_tuning.hms_weights': {len(cfg.hms_weights)} sculpted "
                f"layers, but this model has {self.depth - self.second} fine-tuned blocks"
            )
        width = int(visual.transformer.width)
        adapters = nn.ModuleList(nn.Linear(width, width) for _ in range(self.second - self.first))
        self.adapters = adapters.to(encoder.device)
        self.initialize_weights()
        self.blocks = copy.deepcopy(frozen[self.second :]).requires_grad_(True)
        self.ln_post = copy.deepcopy(visual.ln_post).requires_grad_(True)
        self.proj = nn.Parameter(visual.proj.detach().clone())  # (W, D)
        self.progress = 0.0  # fraction of the run done, for the HMS temperature (start_step)
        log.info(
            "MPS-Tuning: %d vision blocks: %d frozen, %d frozen with adapters, %d fine-tuned copies; "
            "alpha %g, lambda1 %g, lambda2 %g, temperature %s",
            self.depth, self.first, self.second - self.first, self.depth - self.second, cfg.alpha,
            cfg.mar_weight, cfg.lambda2, cfg.hms_temperature,
        )  # fmt: skip

    def initialize_weights(self) -> None:
        """Zero every adapter, so the fine-tuned branch starts as the frozen one."""
        with torch.no_grad():
            for adapter in self.adapters:
                adapter.weight.zero_()
                adapter.bias.zero_()

    # ------------------------------------------------------------------------------------------ towers

    def towers(self, images: Tensor) -> TowerOutputs:
        """Run the frozen and the fine-tuned branch on (B, 3, H, W) images (shared first third)."""
        encoder = self.need_encoder()
        visual = self.clip.visual
        frozen = visual.transformer.resblocks
        self.forwards["image"] += images.shape[0]
        images = images.to(encoder.device, non_blocking=True)
        with torch.no_grad():
            x = embed_patches(visual, images)  # (B, L, W)
            for block in frozen[: self.first]:
                x = block(x)
            h = x
            for block in frozen[self.first :]:
                h = block(h)
            tokens_zs = visual.ln_post(h) @ visual.proj  # (B, L, D)
        h = x
        for block, adapter in zip(frozen[self.first : self.second], self.adapters, strict=True):
            h = block(h) + adapter(h)  # parallel adapter: zero at init
        hidden = [h]
        for block in self.blocks:
            h = block(h)
            hidden.append(h)
        tokens_ft = self.ln_post(h) @ self.proj  # (B, L, D)
        return TowerOutputs(tokens_zs[:, 0], tokens_ft[:, 0], tokens_zs, tokens_ft, hidden)

    def sculpted_features(self, out: TowerOutputs) -> list[Tensor]:
        """(B, D) features of the sculpted layers: the output, then the [CLS] token after block
        L - 1 - k pseudo-forwarded through the last k fine-tuned blocks, ``ln_post`` and ``proj``."""
        feats = [out.f_ft]
        for k in range(1, len(self.cfg.hms_weights)):
            h = out.hidden_ft[-1 - k][:, 0]  # (B, W)
            for block in self.blocks[len(self.blocks) - k :]:
                h = pseudo_forward(block, h)
            feats.append(self.ln_post(h) @ self.proj)  # (B, D)
        return feats

    def encode_images(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) images -> (B, D) x0 = normalize(alpha f_ft + (1 - alpha) f_zs)."""
        out = self.towers(images)
        return fused_features(out.f_ft, out.f_zs, self.cfg.alpha)

    def prediction_logits(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) images -> (B, C) MPS-Tuning's fused logits."""
        out = self.towers(images)
        return fused_logits(out.f_ft, out.f_zs, self.class_texts(), self.cfg.alpha, self.logit_scale)

    def adapt_features(self, x: Tensor) -> Tensor:
        raise RuntimeError(
            f"backbone '{self.name}' fine-tunes the image encoder: it needs images, not features"
        )

    # ------------------------------------------------------------------------------------------ training

    def start_step(self, step: int, total: int) -> None:
        """Set the run's progress step / total for the HMS temperature schedule."""
        self.progress = step / max(1, total)

    def temperature(self) -> float:
        """The HMS temperature now (cosine from the recipe's start to its end value)."""
        start, end = self.cfg.hms_temperature
        return cosine_temperature(self.progress, start, end)

    def loss_terms(self, inputs: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """The terms of the paper's L = L_CE + lambda1 L_MAR + lambda2 L_HMS on one batch.

        Args:
            inputs: (B, V, 3, H, W) V views per image, or (B, 3, H, W).
            labels: (B,) classes.

        Returns:
            ``ce``, ``mar_global``, ``mar_local``, ``hms`` (weighted over layers) and ``loss``
            (lambda1 weighs the MAR terms named in ``cfg.mar_parts``, both by default).
        """
        if inputs.ndim == 5:
            views = inputs.shape[1]
            inputs = inputs.flatten(0, 1)  # (B V, 3, H, W), the views of an image adjacent
            labels = labels.repeat_interleave(views)  # (B V,)
        out = self.towers(inputs)
        labels = labels.to(out.f_ft.device)
        texts = self.class_texts()  # (C, D) frozen
        logits = fused_logits(out.f_ft, out.f_zs, texts, self.cfg.alpha, self.logit_scale)
        terms = {
            "ce": F.cross_entropy(logits, labels),
            "mar_global": mar_global_loss(out.f_zs, out.f_ft),
            "mar_local": mar_local_loss(out.tokens_zs, out.tokens_ft),
        }
        tau = self.temperature()
        layers = zip(
            self.sculpted_features(out), self.cfg.hms_weights, self.cfg.hms_temperature_factors, strict=True
        )
        terms["hms"] = sum(w * sculpt_loss(f, labels, texts, tau * factor) for f, w, factor in layers)
        mar = sum(terms[f"mar_{part}"] for part in self.cfg.mar_parts)
        terms["loss"] = terms["ce"] + self.cfg.mar_weight * mar + self.cfg.lambda2 * terms["hms"]
        return terms

    def loss(self, inputs: Tensor, labels: Tensor) -> Tensor:
        """L_CE + lambda1 (MAR global + MAR local) + lambda2 HMS (``loss_terms``)."""
        return self.loss_terms(inputs, labels)["loss"]


BACKBONE = MPSTuning
