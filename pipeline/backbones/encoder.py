"""Load any open_clip model by name (pretrained tag, local checkpoint, or seeded random init) and encode."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.core.config import EncoderConfig, is_checkpoint_path
from pipeline.core.device import autocast
from pipeline.core.errors import InputError

log = logging.getLogger(__name__)

# open_clip and torchvision are imported where they are used: they cost ~3 s at start-up, which
# jobs working on cached features (CLIP-Adapter's fit and extraction, stage 2) never pay.

MODEL_CONFIG_DIR = Path(__file__).parents[1] / "demo" / "model_configs"
# Random init is seeded so that separate extraction jobs (test once per dataset, few-shot per seed)
# build the very same untrained encoder.
RANDOM_INIT_SEED = 0


@functools.cache
def register_model_configs() -> None:
    """Add the small architectures in ``pipeline/demo/model_configs/*.json`` to open_clip's registry."""
    import open_clip

    open_clip.add_model_config(MODEL_CONFIG_DIR)


@dataclass
class Encoder:
    """A frozen open_clip model with its eval transform and tokenizer."""

    model: torch.nn.Module
    preprocess: Any  # eval transform: resize, center crop, to RGB tensor, normalise
    tokenizer: Any
    device: torch.device
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def dim(self) -> int:
        """D, the dimension of the shared image-text space."""
        return int(self.model.visual.output_dim)


def _image_size(model: torch.nn.Module) -> int:
    size = getattr(model.visual, "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def logit_scale_of(cfg: EncoderConfig) -> float:
    """exp(logit_scale) of the encoder ``cfg`` names, for a backbone that never loads the encoder.

    A checkpoint file is read for that one tensor (``weights_only``); a tag or random init builds
    the model. Raises ``InputError`` as ``load_encoder`` does.
    """
    from pipeline.backbones.base import LOGIT_SCALE, logit_scale_of_model

    pretrained = cfg.pretrained or None
    if pretrained is not None and is_checkpoint_path(pretrained) and Path(pretrained).is_file():
        try:
            state = torch.load(pretrained, map_location="cpu", weights_only=True)
        except Exception:  # not a plain state dict: let open_clip's loader judge it below
            state = None
        if isinstance(state, dict):
            state = state.get("state_dict", state)
            for key, value in state.items():
                if key.split(".")[-1] == "logit_scale" and isinstance(value, torch.Tensor):
                    return float(value.exp())
            return LOGIT_SCALE
    return logit_scale_of_model(load_encoder(cfg, torch.device("cpu")).model)


def load_encoder(cfg: EncoderConfig, device: torch.device) -> Encoder:
    """Build ``cfg.model`` with weights from ``cfg.pretrained`` (tag or file), or seeded random init.

    Raises:
        InputError: unknown architecture, missing checkpoint file, or weights that fail to load.
    """
    import open_clip

    register_model_configs()
    if cfg.model not in open_clip.list_models():
        raise InputError(
            f"config key 'encoder.model': unknown open_clip architecture '{cfg.model}' "
            "(see open_clip.list_models() or pipeline/demo/model_configs)"
        )
    pretrained = cfg.pretrained or None
    if pretrained is not None and is_checkpoint_path(pretrained):
        if not Path(pretrained).is_file():
            raise InputError(f"config key 'encoder.pretrained': checkpoint file {pretrained} does not exist")
    if pretrained is None:
        log.warning(
            "NO PRETRAINED WEIGHTS: encoder '%s' is randomly initialised (seed %d). Zero-shot accuracy "
            "will be at chance. Set encoder.pretrained to an open_clip tag or a checkpoint path.",
            cfg.model,
            RANDOM_INIT_SEED,
        )
        torch.manual_seed(RANDOM_INIT_SEED)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            cfg.model, pretrained=pretrained, device=device
        )
    except Exception as err:  # any failure to build or load weights is a problem with the input
        if isinstance(err, InputError):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(
            f"config key 'encoder.pretrained': could not load '{pretrained}' for '{cfg.model}': {first}"
        ) from None
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    mean = tuple(getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    return Encoder(
        model=model,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(cfg.model),
        device=device,
        image_size=_image_size(model),
        mean=mean,
        std=std,
    )


def _to_rgb(img: Any) -> Any:
    return img.convert("RGB")


def build_train_transform(encoder: Encoder, crop_scale: Sequence[float], hflip: bool) -> Any:
    """Train augmentation (CoOp; docs/protocol.md): bicubic random resized crop, optional flip, normalise."""
    from torchvision import transforms

    steps: list[Any] = [
        transforms.Lambda(_to_rgb),
        transforms.RandomResizedCrop(
            encoder.image_size,
            scale=tuple(crop_scale),
            interpolation=transforms.InterpolationMode.BICUBIC,
        ),
    ]
    if hflip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize(encoder.mean, encoder.std)]
    return transforms.Compose(steps)


@torch.no_grad()
def encode_images(encoder: Encoder, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) preprocessed images -> (B, D) L2-normalised float32 features on the CPU."""
    with autocast(encoder.device):
        feats = encoder.model.encode_image(images.to(encoder.device, non_blocking=True))
    return F.normalize(feats.float(), dim=-1).cpu()


@torch.no_grad()
def encode_texts(encoder: Encoder, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Class text features (C, D): per template, encode and normalise; average; normalise again.

    With one template this is the plain CLIP zero-shot classifier; with several it is the prompt
    ensemble (mean of normalised text embeddings).
    """
    from pipeline.backbones.prompts import encode_text_tokens  # prompts imports this module

    if not templates:
        raise InputError("config key 'templates': at least one prompt template is needed")
    per_template = []
    for template in templates:
        if "{}" not in template:
            raise InputError(
                f"config key 'templates': template {template!r} has no '{{}}' for the class name"
            )
        tokens = encoder.tokenizer([template.format(c) for c in classnames]).to(encoder.device)
        with autocast(encoder.device):
            feats = encode_text_tokens(encoder.model, tokens)
        per_template.append(F.normalize(feats.float(), dim=-1))  # (C, D)
    text = torch.stack(per_template).mean(dim=0)  # (C, D)
    return F.normalize(text, dim=-1).cpu()
