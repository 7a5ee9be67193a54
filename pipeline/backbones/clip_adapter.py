"""CLIP-Adapter (Gao et al., IJCV 2023): a residual bottleneck MLP on the frozen image feature."""

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

log = logging.getLogger(__name__)


class CLIPAdapter(Backbone):
    """The visual CLIP-Adapter: f' = normalize((1 - ratio) f + ratio A(f)) with
    A(f) = ReLU(W_2 ReLU(W_1 f)), W_1 (D / ``reduction``, D) and W_2 (D, D / ``reduction``) without
    bias; the class texts are the frozen zero-shot texts, logits 100 cos(f', z_c), cross-entropy.

    It trains on the cached zero-shot image features and never needs the encoder once its texts
    are given (``use_texts``; built with ``encoder=None``). W_1 and W_2 start from PyTorch's
    ``nn.Linear`` initialisation (the official code's), drawn from torch's global RNG (seed it
    first); ``zero_init`` makes the adapter the identity map. See docs/backbones.md, "CLIP-Adapter".

    Trainable parameters: ``adapter.fc1.weight`` and ``adapter.fc2.weight``; 2 x 128 x 32 = 8192 on
    demo-vit-t-28 (reduction 4).
    """

    name = "clip_adapter"

    def __init__(
        self,
        encoder: Encoder | None,
        classnames: Sequence[str],
        templates: Sequence[str],
        cfg: recipes.CLIPAdapter | None,
        dim: int,
    ) -> None:
        cfg = cfg if cfg is not None else recipes.CLIPAdapter()
        super().__init__(encoder, classnames, templates, cfg, dim)
        hidden = max(1, self.dim // cfg.reduction)
        adapter = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(self.dim, hidden, bias=False),
                relu1=nn.ReLU(),
                fc2=nn.Linear(hidden, self.dim, bias=False),
                relu2=nn.ReLU(),
            )
        )  # built on the CPU, so its init does not depend on the device
        self.adapter = adapter.to(encoder.device) if encoder is not None else adapter
        self.ratio = float(cfg.ratio)

    def zero_init(self) -> None:
        """Zero W_2, so A(f) = 0 and f' = normalize(f): the backbone equals zero-shot CLIP (tests)."""
        with torch.no_grad():
            self.adapter.fc2.weight.zero_()

    def adapt_features(self, x: Tensor) -> Tensor:
        """(B, D) frozen image features -> (B, D) adapted, L2-normalised features.

        The paper applies the adapter to the unnormalised image feature; the cache holds it
        normalised. A is positively homogeneous (bias-free linear maps and ReLU: A(s f) = s A(f)
        for s > 0), so the residual mix of s f is s times that of f and has the same direction:
        adapting the normalised feature gives the paper's feature after normalisation.
        """
        f = F.normalize(x.float(), dim=-1)  # (B, D)
        mixed = (1.0 - self.ratio) * f + self.ratio * self.adapter(f)  # (B, D)
        return F.normalize(mixed, dim=-1)

    def encode_images(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) images -> (B, D) adapted features: the frozen encoder, then ``adapt_features``."""
        return self.adapt_features(super().encode_images(images))


BACKBONE = CLIPAdapter
