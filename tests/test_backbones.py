"""The four trained stage-1 backbones (CoOp, CoCoOp, CLIP-Adapter, CLIP-LoRA) against the Backbone contract.

Everything runs on the tiny random-init demo-vit-t-28 (D = 128) and a few real demo_digits images:
trainable parameter counts and names, frozen CLIP weights through ``training.fit``, a falling loss,
zero-initialised updates that change nothing, checkpoint round trips and refusals, determinism.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import fresh_encoder

from pipeline.backbones import recipes
from pipeline.backbones.base import Backbone, read_backbone_checkpoint, save_backbone
from pipeline.backbones.encoder import Encoder, encode_images, logit_scale_of
from pipeline.backbones.loading import load_trained_backbone
from pipeline.backbones.registry import load_backbone_class
from pipeline.backbones.training import FeatureBatches, FitResult, ImageBatches, fit
from pipeline.core.config import EncoderConfig
from pipeline.core.errors import InputError
from pipeline.data.coop import load_dataset, resolve_image
from pipeline.data.images import load_image
from pipeline.demo.datasets import build_demo_dataset
from pipeline.features.views import EpochImages

CPU = torch.device("cpu")
DIM = 128
TEMPLATES = ("a photo of a {}.",)
METHODS = ("coop", "cocoop", "clip_adapter", "clip_lora")
SHOTS = 2  # train images per class
EPOCHS = 4
# The published recipes with a batch that fits 20 images and no warm-up, so 8 steps move the loss.
RECIPES = {
    "coop": recipes.CoOp(batch_size=10, warmup_epochs=0),
    "cocoop": recipes.CoCoOp(batch_size=10, warmup_epochs=0),
    "clip_adapter": recipes.CLIPAdapter(batch_size=10, warmup_epochs=0, lr=0.01),
    "clip_lora": recipes.CLIPLoRA(batch_size=10, lr=1e-3),
}
# demo-vit-t-28: text width W = 128, D = 128, 4 vision and 3 text blocks of width 128.
COUNTS = {
    "coop": 16 * 128,  # ctx (16, W)
    "cocoop": 4 * 128 + (128 * 8 + 8) + (8 * 128 + 128),  # ctx (4, W), meta-net D -> D/16 -> W
    "clip_adapter": 128 * 32 + 32 * 128,  # D -> D/4 -> D, no bias
    "clip_lora": 7 * 3 * (2 * 128 + 128 * 2),  # 7 blocks x (q, k, v) x (A (2, 128) + B (128, 2))
}


def lora_names(towers: tuple[str, ...] = ("vision", "text")) -> list[str]:
    prefixes = {"vision": ("clip.visual.transformer", 4), "text": ("clip.transformer", 3)}
    return sorted(
        f"{prefixes[t][0]}.resblocks.{i}.attn.{p}_lora.{m}"
        for t in towers
        for i in range(prefixes[t][1])
        for p in "qkv"
        for m in "AB"
    )


NAMES = {
    "coop": ["ctx"],
    "cocoop": [
        "ctx",
        "meta_net.linear1.bias",
        "meta_net.linear1.weight",
        "meta_net.linear2.bias",
        "meta_net.linear2.weight",
    ],
    "clip_adapter": ["adapter.fc1.weight", "adapter.fc2.weight"],
    "clip_lora": lora_names(),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def encoder_for(name: str, shared: Encoder) -> Encoder:
    return fresh_encoder() if name == "clip_lora" else shared


def build(name: str, encoder: Encoder | None, classnames: list[str], cfg=None, seed: int = 0) -> Backbone:
    """A fresh backbone in eval mode, its new parameters drawn from ``seed``."""
    cls = load_backbone_class(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = cls(encoder, classnames, TEMPLATES, cfg or RECIPES.get(name), DIM)
    return backbone.eval()


@dataclass
class Digits:
    """2 demo_digits train images per class: paths, labels, preprocessed images, frozen features."""

    classnames: list[str]
    paths: list[Path]
    labels: torch.Tensor  # (N,)
    images: torch.Tensor  # (N, 3, 28, 28)
    features: torch.Tensor  # (N, D) frozen zero-shot features


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Encoder) -> Digits:
    root = tmp_path_factory.mktemp("data")
    build_demo_dataset("demo_digits", root / "demo_digits")
    splits = load_dataset("demo_digits", root)
    items = [
        it for c in range(splits.num_classes) for it in [i for i in splits.train if i.label == c][:SHOTS]
    ]
    paths = [resolve_image(splits, it) for it in items]
    images = torch.stack([tiny_encoder.preprocess(load_image(p)) for p in paths])  # (N, 3, 28, 28)
    return Digits(
        classnames=splits.classnames,
        paths=paths,
        labels=torch.tensor([it.label for it in items]),
        images=images,
        features=encode_images(tiny_encoder, images),
    )


def batches(name: str, digits: Digits, encoder: Encoder) -> FeatureBatches | ImageBatches:
    """CLIP-LoRA trains on images (center crops, so the loss trend is clean); the rest on features."""
    batch = RECIPES[name].batch_size
    if name == "clip_lora":
        return ImageBatches(
            EpochImages(digits.paths, digits.labels.tolist(), encoder.preprocess, seed=1), batch
        )
    return FeatureBatches(digits.features[:, None].numpy(), digits.labels.numpy(), batch)


@dataclass
class Fitted:
    backbone: Backbone
    before: dict[str, torch.Tensor]  # the whole state dict (CLIP included) before fit
    result: FitResult


def run_fit(name: str, digits: Digits, shared: Encoder) -> Fitted:
    encoder = encoder_for(name, shared)
    backbone = build(name, encoder, digits.classnames)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    result = fit(backbone, batches(name, digits, encoder), RECIPES[name], {"epochs": EPOCHS}, seed=1)
    return Fitted(backbone, before, result)


@pytest.fixture(scope="module")
def fitted(digits: Digits, tiny_encoder: Encoder):
    """One ``training.fit`` per method, shared by the tests below."""
    cache: dict[str, Fitted] = {}

    def get(name: str) -> Fitted:
        if name not in cache:
            cache[name] = run_fit(name, digits, tiny_encoder)
        return cache[name]

    return get


@torch.no_grad()
def outputs(backbone: Backbone, digits: Digits) -> dict[str, torch.Tensor]:
    """What the shared space sees: image features, class texts (per image), logits."""
    x = backbone.encode_images(digits.images) if backbone.name == "clip_lora" else None
    x = backbone.adapt_features(digits.features) if x is None else x  # (N, D)
    return {"x": x, "text": backbone.image_class_texts(x), "logits": backbone.logits(x)}


# ---------------------------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("name", METHODS)
def test_trainable_parameters_are_exactly_the_methods(name: str, tiny_encoder: Encoder) -> None:
    backbone = build(name, encoder_for(name, tiny_encoder), ["zero", "one", "two"])
    assert backbone.name == name
    assert backbone.trainable_names() == NAMES[name]
    assert sum(p.numel() for p in backbone.parameters() if p.requires_grad) == COUNTS[name]
    assert set(backbone.trained_state()) == set(NAMES[name])
    clip = [n for n, p in backbone.named_parameters() if n.startswith("clip.") and "_lora." not in n]
    assert clip and not any(dict(backbone.named_parameters())[n].requires_grad for n in clip)


def test_parameter_counts_are_the_documented_ones() -> None:
    assert COUNTS == {"coop": 2048, "cocoop": 2696, "clip_adapter": 8192, "clip_lora": 10752}


# ---------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("name", METHODS)
def test_fit_changes_the_trained_parameters_only(name: str, fitted) -> None:
    run = fitted(name)
    after = run.backbone.state_dict()
    trained = set(run.backbone.trainable_names())
    assert after.keys() == run.before.keys()
    frozen = [k for k in after if k not in trained]
    assert sum(k.startswith("clip.") for k in frozen) > 50  # every CLIP tensor is compared
    for key in frozen:
        assert torch.equal(after[key], run.before[key]), f"frozen {key} changed"
    for key in trained:
        assert not torch.equal(after[key], run.before[key]), f"trained {key} did not change"
    assert not run.backbone.training and not run.backbone.clip.training


@pytest.mark.parametrize("name", METHODS)
def test_fit_lowers_the_loss_on_real_images(name: str, fitted, digits: Digits) -> None:
    result = fitted(name).result
    n, c, steps = len(digits.labels), len(digits.classnames), EPOCHS * 2
    assert result.epochs == EPOCHS and result.steps == steps
    assert all(torch.isfinite(torch.tensor(result.loss_per_epoch)))
    assert result.loss_per_epoch[-1] < result.loss_per_epoch[0], result.loss_per_epoch
    forwards = {
        "coop": {"text": steps * c},  # C prompts per step
        "cocoop": {"text": EPOCHS * n * c},  # C prompts per image
        "clip_adapter": {"text": c},  # the frozen zero-shot texts, once
        "clip_lora": {"image": EPOCHS * n, "text": steps * c},
    }
    assert result.forwards == forwards[name]


@pytest.mark.parametrize("name", METHODS)
def test_same_seed_same_trained_state(name: str, fitted, digits: Digits, tiny_encoder: Encoder) -> None:
    first, again = fitted(name), run_fit(name, digits, tiny_encoder)
    assert again.result.loss_per_epoch == first.result.loss_per_epoch
    a, b = first.backbone.trained_state(), again.backbone.trained_state()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------------------------------------- zero init


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", ["clip_adapter", "clip_lora"])
def test_zero_initialised_update_changes_nothing(name: str, mode: str, tiny_encoder: Encoder) -> None:
    """LoRA starts at B = 0; CLIP-Adapter is zeroed with ``zero_init``: both are zero-shot CLIP."""
    names = ["zero", "one", "two"]
    zeroshot = build("zeroshot", tiny_encoder, names)
    backbone = build(name, encoder_for(name, tiny_encoder), names)
    if name == "clip_adapter":
        backbone.zero_init()
    getattr(backbone, mode)()
    images = torch.randn(6, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    want_x = zeroshot.encode_images(images)  # (6, D)
    got_x = backbone.encode_images(images)
    torch.testing.assert_close(got_x, want_x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(backbone.class_texts(), zeroshot.class_texts(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(backbone.logits(got_x), zeroshot.logits(want_x), rtol=1e-5, atol=1e-4)
    if name == "clip_adapter":
        torch.testing.assert_close(backbone.adapt_features(want_x), want_x)


def test_adapter_on_a_scaled_feature_is_the_same_direction(tiny_encoder: Encoder) -> None:
    """A is positively homogeneous, so adapting the normalised cached feature equals the paper's
    adapter on the unnormalised one, after normalisation."""
    backbone = build("clip_adapter", None, ["zero", "one"])
    x = torch.randn(5, DIM, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(backbone.adapt_features(3.7 * x), backbone.adapt_features(x))
    f = torch.nn.functional.normalize(x, dim=-1)
    paper = torch.nn.functional.normalize(0.8 * x + 0.2 * backbone.adapter(x), dim=-1)
    torch.testing.assert_close(backbone.adapt_features(f), paper)


def test_adapter_needs_no_encoder_once_given_texts(tiny_encoder: Encoder) -> None:
    names = ["zero", "one", "two"]
    with_encoder = build("clip_adapter", tiny_encoder, names, seed=3)
    without = build("clip_adapter", None, names, seed=3)
    without.use_texts(with_encoder.class_texts())
    without.logit_scale = with_encoder.logit_scale  # fit_backbone sets it from the encoder's file
    x = torch.randn(4, DIM, generator=torch.Generator().manual_seed(1))
    assert without.device == CPU
    torch.testing.assert_close(
        without.logits(without.adapt_features(x)), with_encoder.logits(with_encoder.adapt_features(x))
    )
    without.train()  # no CLIP to keep in eval
    loss = without.loss(x, torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert without.adapter.fc1.weight.grad is not None and without.forwards == {}


# ---------------------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("name", METHODS)
def test_checkpoint_round_trip(
    name: str, fitted, digits: Digits, tiny_encoder: Encoder, tmp_path: Path
) -> None:
    trained = fitted(name).backbone
    path = tmp_path / f"{name}.pt"
    save_backbone(path, trained, {"dataset": "demo_digits", "shot": SHOTS, "seed": 1})
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["backbone"] == name and raw["classnames"] == digits.classnames
    assert sorted(raw["state"]) == NAMES[name] and raw["config"]["batch_size"] == RECIPES[name].batch_size
    payload = read_backbone_checkpoint(path)
    fresh = build(name, encoder_for(name, tiny_encoder), payload["classnames"], seed=123)
    want = outputs(trained, digits)
    assert not torch.equal(outputs(fresh, digits)["logits"], want["logits"])
    fresh.load_trained_state(payload["state"], str(path))
    got = outputs(fresh, digits)
    for key in want:
        assert torch.equal(got[key], want[key]), key


CLASSNAMES = ["zero", "one", "two"]
REFUSALS = [  # (saved backbone, its recipe, loading backbone, its recipe, what the message says)
    ("coop", recipes.CoOp(), "cocoop", recipes.CoCoOp(), "lacks 'meta_net.linear1.bias'"),
    ("cocoop", recipes.CoCoOp(), "coop", recipes.CoOp(), "has unexpected 'meta_net.linear1.bias'"),
    ("clip_adapter", recipes.CLIPAdapter(), "coop", recipes.CoOp(), "lacks 'ctx'"),
    ("coop", recipes.CoOp(), "clip_lora", recipes.CLIPLoRA(), "lacks 'clip.transformer.resblocks.0"),
    (
        "coop",
        recipes.CoOp(n_ctx=16),
        "coop",
        recipes.CoOp(n_ctx=8),
        "'ctx' has shape (16, 128), this model has (8, 128)",
    ),
    (
        "clip_adapter",
        recipes.CLIPAdapter(),
        "clip_adapter",
        recipes.CLIPAdapter(reduction=2),
        "(32, 128), this model has (64, 128)",
    ),
    (
        "clip_lora",
        recipes.CLIPLoRA(),
        "clip_lora",
        recipes.CLIPLoRA(rank=4),
        "has shape (2, 128), this model has (4, 128)",
    ),
    (
        "clip_lora",
        recipes.CLIPLoRA(),
        "clip_lora",
        recipes.CLIPLoRA(encoders="vision"),
        "has unexpected 'clip.transformer",
    ),
]


@pytest.mark.parametrize(
    ("saved", "saved_cfg", "loading", "loading_cfg", "message"),
    REFUSALS,
    ids=[f"{r[0]}-into-{r[2]}-{i}" for i, r in enumerate(REFUSALS)],
)
def test_checkpoint_of_another_method_or_shape_is_refused(
    saved: str, saved_cfg, loading: str, loading_cfg, message: str, tiny_encoder: Encoder, tmp_path: Path
) -> None:
    path = tmp_path / f"{saved}.pt"
    save_backbone(path, build(saved, encoder_for(saved, tiny_encoder), CLASSNAMES, saved_cfg), {})
    target = build(loading, encoder_for(loading, tiny_encoder), CLASSNAMES, loading_cfg)
    before = target.trained_state()
    with pytest.raises(InputError) as err:
        target.load_trained_state(read_backbone_checkpoint(path)["state"], str(path))
    text = str(err.value)
    assert "\n" not in text and text.startswith(str(path)) and message in text, text
    after = target.trained_state()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing half-loaded


def test_lora_training_does_not_depend_on_dataloader_workers(digits: Digits) -> None:
    """Dropout masks are seeded per step by ``fit``, not by whatever data loading did to the RNG."""
    states = []
    for workers in (0, 1):
        encoder = fresh_encoder()
        backbone = build("clip_lora", encoder, digits.classnames)
        images = EpochImages(digits.paths, digits.labels.tolist(), encoder.preprocess, seed=1)
        fit(backbone, ImageBatches(images, 10, workers), RECIPES["clip_lora"], {"epochs": 1}, seed=1)
        states.append(backbone.trained_state())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_logits_use_the_models_own_temperature(tiny_encoder: Encoder, tmp_path: Path) -> None:
    """Every backbone scales cosines by exp(logit_scale) of its CLIP model, as the official codes do;
    a backbone built without the encoder (CLIP-Adapter) reads it from the checkpoint file."""
    want = float(tiny_encoder.model.logit_scale.exp())
    assert abs(want - 100.0) > 1  # the untrained model's is 1 / 0.07, not OpenAI's 100
    coop = build("coop", tiny_encoder, ["zero", "one"])
    assert coop.logit_scale == pytest.approx(want)
    x = torch.nn.functional.normalize(torch.randn(3, DIM), dim=-1)
    with torch.no_grad():
        cosines = x @ coop.class_texts().T
        assert torch.allclose(coop.logits(x), want * cosines)
    weights = tmp_path / "clip.pt"
    torch.save(tiny_encoder.model.state_dict(), weights)
    cfg = EncoderConfig(model="demo-vit-t-28", pretrained=str(weights))
    assert logit_scale_of(cfg) == pytest.approx(want)
    adapter = build("clip_adapter", None, ["zero", "one"])
    adapter.logit_scale = want
    path = tmp_path / "adapter.pt"
    save_backbone(path, adapter, {})
    loaded = load_trained_backbone(path, torch.device("cpu"), {})
    assert loaded.logit_scale == pytest.approx(want)


@pytest.mark.parametrize("name", METHODS)
def test_extracting_twice_gives_identical_features(name: str, fitted, digits: Digits) -> None:
    """Extraction runs the trained backbone in eval mode: CLIP-LoRA's dropout (0.25) is off, so two
    passes over the same images agree bit for bit (in training mode they would not)."""
    backbone = fitted(name).backbone.eval()
    first, second = outputs(backbone, digits), outputs(backbone, digits)
    for key in first:
        assert torch.equal(first[key], second[key]), key
    if name == "clip_lora":
        backbone.train()
        with torch.no_grad():
            a, b = backbone.encode_images(digits.images), backbone.encode_images(digits.images)
        backbone.eval()
        assert not torch.equal(a, b)  # dropout acts in training mode: the check above can fail
