"""Training recipes of the stage-1 backbones: one frozen dataclass per backbone, no torch.

The defaults are each method's published ViT-B/16 recipe (docs/backbones.md gives the sources); a
config section ``backbone_config.<name>`` overrides any field, and ``preset: demo``
(``workflow/presets/demo.yaml``) shrinks the schedules for the CPU demo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipeline.core.config import check_template
from pipeline.core.errors import InputError

OPTIMIZERS = ("sgd", "adamw")
WARMUPS = ("constant", "linear")


@dataclass(frozen=True)
class TrainRecipe:
    """What every trained backbone's optimisation shares (``pipeline.backbones.training.fit``).

    The schedule runs ``epochs`` passes over the N few-shot images (from ``epochs_by_shots`` and
    ``epochs_by_dataset``) or, when ``iterations_per_shot`` is set, that many steps per shot.
    Warm-up: ``warmup_epochs`` at the constant ``warmup_lr`` (CoOp's) or a linear ramp to ``lr``;
    then cosine decay from ``lr`` to ``min_lr``.
    """

    optimizer: str = "sgd"
    lr: float = 0.002
    momentum: float = 0.9  # SGD only
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW only
    weight_decay: float = 5e-4
    batch_size: int = 32
    # Epochs by number of shots: the entry of the largest key <= shot (CoOp's table).
    epochs_by_shots: dict[int, int] = field(default_factory=lambda: {1: 50, 2: 100, 4: 100, 8: 200, 16: 200})
    epochs_by_dataset: dict[str, int] = field(default_factory=lambda: {"imagenet": 50})  # wins over shots
    iterations_per_shot: int | None = None  # CLIP-LoRA: 500 x shots steps instead of epochs
    warmup_epochs: int = 1
    warmup: str = "constant"
    warmup_lr: float = 1e-5
    min_lr: float = 0.0
    # Prompt templates replacing the dataset's (CLIP-LoRA uses one template everywhere); None = dataset's.
    templates: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise InputError(
                f"config key 'optimizer': unknown value {self.optimizer!r} (choose from sgd, adamw)"
            )
        if self.warmup not in WARMUPS:
            raise InputError(
                f"config key 'warmup': unknown value {self.warmup!r} (choose from constant, linear)"
            )
        for key in ("lr", "batch_size"):
            if not getattr(self, key) > 0:
                raise InputError(f"config key '{key}': must be > 0, got {getattr(self, key)}")
        for key in ("weight_decay", "warmup_epochs", "warmup_lr", "min_lr"):
            _check_at_least(key, getattr(self, key), 0)
        for key, value in (("momentum", self.momentum), ("betas", self.betas[0]), ("betas", self.betas[1])):
            if not 0.0 <= value < 1.0:
                raise InputError(f"config key '{key}': must be in [0, 1), got {value}")
        if not self.epochs_by_shots and self.iterations_per_shot is None:
            raise InputError("config key 'epochs_by_shots': give at least one entry")
        for key, table in (
            ("epochs_by_shots", self.epochs_by_shots),
            ("epochs_by_dataset", self.epochs_by_dataset),
        ):
            for k, epochs in table.items():
                _check_at_least(f"{key}.{k}", epochs, 1)
        for shot in self.epochs_by_shots:
            _check_at_least("epochs_by_shots", shot, 1)
        if self.iterations_per_shot is not None:
            _check_at_least("iterations_per_shot", self.iterations_per_shot, 1)
        for i, template in enumerate(self.templates or ()):
            check_template(template, f"templates.{i}")

    def resolved_for(self, dataset: str) -> dict[str, object]:
        """Fields whose value depends on the dataset, fixed for ``dataset`` (none here)."""
        return {}

    def views_per_image(self) -> int:
        """Augmented views of each training image per step (``EpochImages``); one here."""
        return 1

    def train_crop_scale(self, default: tuple[float, float]) -> tuple[float, float]:
        """The RandomResizedCrop area range of the training images: the extraction's here."""
        return default


def _check_at_least(key: str, value: float, low: float) -> None:
    if not value >= low:
        raise InputError(f"config key '{key}': must be >= {low}, got {value}")


def schedule_length(recipe: TrainRecipe, dataset: str, shot: int) -> dict[str, int]:
    """``{"epochs": E}`` or ``{"iterations": I}`` for one (dataset, shot)."""
    if recipe.iterations_per_shot is not None:
        return {"iterations": recipe.iterations_per_shot * shot}
    if dataset in recipe.epochs_by_dataset:
        return {"epochs": recipe.epochs_by_dataset[dataset]}
    eligible = [k for k in recipe.epochs_by_shots if int(k) <= shot]
    key = max(eligible) if eligible else min(recipe.epochs_by_shots)
    return {"epochs": recipe.epochs_by_shots[key]}


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    return max(1, math.ceil(n_images / batch_size))


@dataclass(frozen=True)
class CoOp(TrainRecipe):
    """CoOp (Zhou et al., IJCV 2022): learned context tokens shared by all classes, class token last."""

    n_ctx: int = 16
    ctx_init_std: float = 0.02
    # "" = n_ctx vectors from N(0, ctx_init_std^2) (CoOp's default); words (e.g. "a photo of a") =
    # their token embeddings; "template" = the words before "{}" in the dataset's first template.
    ctx_init: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_at_least("n_ctx", self.n_ctx, 1)
        _check_at_least("ctx_init_std", self.ctx_init_std, 0)


@dataclass(frozen=True)
class CoCoOp(TrainRecipe):
    """CoCoOp (Zhou et al., CVPR 2022): context from "a photo of a" plus a meta-net shift per image."""

    ctx_init: str = "a photo of a"  # or "template": the words before "{}" in the dataset's template
    meta_reduction: int = 16  # meta-net hidden width = D / meta_reduction
    batch_size: int = 1
    epochs_by_shots: dict[int, int] = field(default_factory=lambda: {1: 10})
    epochs_by_dataset: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_at_least("meta_reduction", self.meta_reduction, 1)


@dataclass(frozen=True)
class CLIPAdapter(TrainRecipe):
    """CLIP-Adapter (Gao et al., IJCV 2023): f' = (1 - ratio) f + ratio A(f) on the image feature."""

    reduction: int = 4  # A's hidden width = D / reduction
    ratio: float = 0.2
    epochs_by_shots: dict[int, int] = field(default_factory=lambda: {1: 200})
    epochs_by_dataset: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_at_least("reduction", self.reduction, 1)
        if not 0.0 <= self.ratio <= 1.0:
            raise InputError(f"config key 'ratio': must be in [0, 1], got {self.ratio}")


@dataclass(frozen=True)
class CLIPLoRA(TrainRecipe):
    """CLIP-LoRA (Zanella and Ben Ayed, CVPRW 2024): LoRA on q, k, v of every attention block."""

    rank: int = 2
    alpha: float = 1.0
    dropout: float = 0.25
    encoders: str = "both"  # "vision" | "text" | "both"
    optimizer: str = "adamw"
    lr: float = 2e-4
    weight_decay: float = 1e-2
    iterations_per_shot: int | None = 500
    warmup_epochs: int = 0
    min_lr: float = 1e-6
    templates: tuple[str, ...] | None = ("a photo of a {}.",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.encoders not in ("vision", "text", "both"):
            raise InputError(
                f"config key 'encoders': unknown value {self.encoders!r} (choose from vision, text, both)"
            )
        if self.rank < 1:
            raise InputError(f"config key 'rank': must be >= 1, got {self.rank}")
        if not self.alpha > 0:
            raise InputError(f"config key 'alpha': must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"config key 'dropout': must be in [0, 1), got {self.dropout}")


# MPS-Tuning's per-dataset settings (Preserve and Sculpt, ICLR 2026; docs/backbones.md, "MPS-Tuning").
_MPS_EPOCHS = {
    "caltech101": 100, "dtd": 100, "eurosat": 200, "fgvc_aircraft": 200, "flowers102": 200,
    "food101": 50, "imagenet": 50, "oxford_pets": 100, "stanford_cars": 200, "sun397": 50,
    "ucf101": 100,
}  # fmt: skip
MAR_PARTS = ("global", "local")  # MPS-Tuning's two manifold-alignment terms
_MPS_LAMBDA1 = {"food101": 2.0, "sun397": 2.0, "imagenet": 2.0, "oxford_pets": 2.0}  # else 0.5
_MPS_WARM_TEMPERATURE = (0.5, 0.07)  # HMS temperature (start, end) on the datasets below
_MPS_WARM = ("oxford_pets", "food101", "dtd", "eurosat", "ucf101")


@dataclass(frozen=True)
class MPSTuning(TrainRecipe):
    """MPS-Tuning (Preserve and Sculpt, ICLR 2026): a third of the vision blocks with zero-initialised
    parallel adapters, the last third fine-tuned as copies; CE + lambda1 MAR + lambda2 HMS.

    ``lambda1`` and ``temperature`` left at None take the per-dataset value of
    ``lambda1_by_dataset`` / ``temperature_by_dataset`` (else ``lambda1_default`` /
    ``temperature_default``); ``resolved_for`` fixes them for one dataset, so a fit job's config
    slice and checkpoint hold the values it used.
    """

    alpha: float = 0.3  # prediction = alpha fine-tuned + (1 - alpha) zero-shot logits
    lambda1: float | None = None  # MAR weight
    lambda1_default: float = 0.5
    lambda1_by_dataset: dict[str, float] = field(default_factory=lambda: dict(_MPS_LAMBDA1))
    lambda2: float = 0.1  # HMS weight
    # Which MAR terms lambda1 weighs: the paper's full loss has both; the ablation drops one.
    mar_parts: tuple[str, ...] = MAR_PARTS
    # HMS temperature, cosine-annealed from the first value to the second over the run.
    temperature: tuple[float, float] | None = None
    temperature_default: tuple[float, float] = (0.1, 0.05)
    temperature_by_dataset: dict[str, tuple[float, float]] = field(
        default_factory=lambda: dict.fromkeys(_MPS_WARM, _MPS_WARM_TEMPERATURE)
    )
    # HMS at the output (weight 1) and at the block before the last, pseudo-forwarded (weight 0.5,
    # temperature x 2): one entry per sculpted layer, the output first.
    hms_weights: tuple[float, ...] = (1.0, 0.5)
    hms_temperature_factors: tuple[float, ...] = (1.0, 2.0)
    crop_scale: tuple[float, float] = (0.3, 1.0)  # RandomResizedCrop area of both training views
    views: int = 2  # augmented views of each training image per step (HMS's visual positives)
    epochs_by_shots: dict[int, int] = field(default_factory=lambda: {1: 100})
    epochs_by_dataset: dict[str, int] = field(default_factory=lambda: dict(_MPS_EPOCHS))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.alpha <= 1.0:
            raise InputError(f"config key 'alpha': must be in [0, 1], got {self.alpha}")
        if len(self.hms_weights) != len(self.hms_temperature_factors) or not self.hms_weights:
            raise InputError("config key 'hms_weights': give one weight per hms_temperature_factors entry")
        if self.views < 1:
            raise InputError(f"config key 'views': must be >= 1, got {self.views}")
        unknown = [p for p in self.mar_parts if p not in MAR_PARTS]
        if unknown or len(set(self.mar_parts)) != len(self.mar_parts):
            raise InputError(
                f"config key 'mar_parts': expected distinct entries of {list(MAR_PARTS)}, "
                f"got {list(self.mar_parts)}"
            )
        from pipeline.core.config import check_crop_scale  # torch-free

        check_crop_scale(self.crop_scale, "crop_scale")
        temperatures = [self.temperature_default, *self.temperature_by_dataset.values()]
        if self.temperature is not None:
            temperatures.append(self.temperature)
        if not all(len(t) == 2 and min(t) > 0 for t in temperatures):
            raise InputError("config key 'temperature': expected (start, end), both > 0")

    def resolved_for(self, dataset: str) -> dict[str, object]:
        """The fields that depend on the dataset, fixed for ``dataset`` (tables emptied)."""
        lambda1 = (
            self.lambda1
            if self.lambda1 is not None
            else self.lambda1_by_dataset.get(dataset, self.lambda1_default)
        )
        temperature = self.temperature or self.temperature_by_dataset.get(dataset, self.temperature_default)
        return {
            "lambda1": lambda1, "lambda1_by_dataset": {},
            "temperature": tuple(temperature), "temperature_by_dataset": {},
        }  # fmt: skip

    def views_per_image(self) -> int:
        return self.views

    def train_crop_scale(self, default: tuple[float, float]) -> tuple[float, float]:
        return self.crop_scale

    @property
    def mar_weight(self) -> float:
        """lambda1 of a resolved recipe (``lambda1_default`` when no dataset fixed it)."""
        return self.lambda1 if self.lambda1 is not None else self.lambda1_default

    @property
    def hms_temperature(self) -> tuple[float, float]:
        """(start, end) of a resolved recipe (``temperature_default`` when no dataset fixed it)."""
        return tuple(self.temperature or self.temperature_default)  # type: ignore[return-value]
