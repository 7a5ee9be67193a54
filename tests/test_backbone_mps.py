"""MPS-Tuning (Preserve and Sculpt, ICLR 2026): losses against hand-computed values, the split of the
vision tower, zero-shot at step 0, pseudo-forwarding, the two-view loader, a falling loss on demo
images with the frozen weights untouched, and the exported features reproducing the prediction."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import fresh_encoder
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from torch import nn

from pipeline.backbones import recipes
from pipeline.backbones.base import read_backbone_checkpoint
from pipeline.backbones.encoder import Encoder, build_train_transform
from pipeline.backbones.forwards import RunSize, fit_forwards
from pipeline.backbones.loading import load_trained_backbone
from pipeline.backbones.mps_tuning import (
    MPSTuning,
    check_vision_tower,
    cosine_temperature,
    fused_features,
    fused_logits,
    mar_global_loss,
    mar_local_loss,
    pseudo_forward,
    sculpt_loss,
    split_depth,
)
from pipeline.backbones.registry import get_spec, resolved_recipe
from pipeline.backbones.training import ImageBatches, fit
from pipeline.core.errors import InputError
from pipeline.data.coop import load_dataset, resolve_image
from pipeline.features.views import EpochImages

NAMES = ["zero", "one", "two"]
TEMPLATES = ["a photo of a {}."]
W = D = 128  # demo-vit-t-28: vision width and shared dimension

pytestmark = pytest.mark.usefixtures("one_thread")


def build(cfg: recipes.MPSTuning | None = None, encoder: Encoder | None = None, names=NAMES) -> MPSTuning:
    return MPSTuning(encoder or fresh_encoder(), names, TEMPLATES, cfg or recipes.MPSTuning(), D).eval()


def perturb(backbone: MPSTuning, scale: float = 0.05) -> None:
    """Move every trained parameter away from its initial value (as training would)."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in backbone.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=gen))


# ---------------------------------------------------------------------------------------------- losses


def test_mar_global_is_the_l1_between_batch_gram_matrices() -> None:
    """S = I for orthogonal frozen features; the fine-tuned pair at 45 degrees has S'_01 = 1/sqrt(2):
    mean |S - S'| = 2 (1/sqrt(2)) / 4; features are normalised first, so scale does not matter."""
    f_zs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    f_ft = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    want = 2 * (1 / math.sqrt(2)) / 4
    assert mar_global_loss(f_zs, f_ft).item() == pytest.approx(want)
    assert mar_global_loss(3.0 * f_zs, 0.5 * f_ft).item() == pytest.approx(want)
    assert mar_global_loss(f_zs, f_zs).item() == 0.0
    # Invariant to a rotation of the whole batch (the Gram matrix is): preserve geometry, not points.
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    assert mar_global_loss(f_ft, f_ft @ rot).item() == pytest.approx(0.0, abs=1e-7)


def test_mar_local_is_the_l1_between_per_sample_token_gram_matrices() -> None:
    """Sample 0: tokens [e1, e2, e1] vs [e1, e2, e2] differ in 4 of the 9 Gram entries by 1; sample 1
    is unchanged: mean over 2 x 9 entries = 4 / 18."""
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    zs = torch.tensor([[e1, e2, e1], [e1, e2, e2]])  # (2, 3, 2)
    ft = torch.tensor([[e1, e2, e2], [e1, e2, e2]])
    assert mar_local_loss(zs, ft).item() == pytest.approx(4 / 18)
    assert mar_local_loss(zs[:1], ft[:1]).item() == pytest.approx(4 / 9)


def test_sculpt_loss_against_hand_computed_values() -> None:
    """Queries e1, e2 and texts e1, e2 at tau = 1. Each query sees the other query and both texts.
    Classes (0, 1): the one positive is its text, cosine 1 of Z = 1 + e + 1: L = log(2 + e) - 1.
    Classes (0, 0): query 0 has positives q1 (cosine 0) and t0 (cosine 1): L = log Z - 1/2;
    query 1 has q0 (0) and t0 (0) among Z' = 1 + 1 + e: L = log(2 + e)."""
    e = math.e
    q = torch.eye(2)
    texts = torch.eye(2)
    assert sculpt_loss(q, torch.tensor([0, 1]), texts, 1.0).item() == pytest.approx(math.log(2 + e) - 1)
    got = sculpt_loss(q, torch.tensor([0, 0]), texts, 1.0).item()
    assert got == pytest.approx(((math.log(2 + e) - 0.5) + math.log(2 + e)) / 2)
    # Temperature divides the cosines: tau = 0.5 doubles them.
    want = math.log(2 + math.exp(2)) - 2
    assert sculpt_loss(q, torch.tensor([0, 1]), texts, 0.5).item() == pytest.approx(want)


def test_sculpt_loss_matches_a_loop_over_queries() -> None:
    gen = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(6, 4, generator=gen), dim=-1)
    t = F.normalize(torch.randn(3, 4, generator=gen), dim=-1)
    labels = torch.tensor([0, 0, 1, 1, 2, 0])
    tau = 0.3
    support, support_labels = torch.cat([q, t]), torch.cat([labels, torch.arange(3)])
    losses = []
    for i in range(6):
        others = [j for j in range(9) if j != i]
        log_z = torch.logsumexp(torch.stack([q[i] @ support[j] / tau for j in others]), 0)
        pos = [j for j in others if support_labels[j] == labels[i]]
        losses.append(-sum(q[i] @ support[j] / tau - log_z for j in pos) / len(pos))
    torch.testing.assert_close(sculpt_loss(q, labels, t, tau), torch.stack(losses).mean())


def test_fused_logits_and_features() -> None:
    """0.3 fine-tuned + 0.7 zero-shot cosines, scaled; x0 ranks the classes alike."""
    gen = torch.Generator().manual_seed(1)
    f_ft, f_zs, z = torch.randn(5, 8, generator=gen), torch.randn(5, 8, generator=gen), torch.randn(4, 8)
    z = F.normalize(z, dim=-1)
    cos = lambda a: F.normalize(a, dim=-1) @ z.T  # noqa: E731
    logits = fused_logits(f_ft, f_zs, z, 0.3, 100.0)
    torch.testing.assert_close(logits, 100.0 * (0.3 * cos(f_ft) + 0.7 * cos(f_zs)))
    x0 = fused_features(f_ft, f_zs, 0.3)
    torch.testing.assert_close(x0.norm(dim=-1), torch.ones(5))
    assert torch.equal((x0 @ z.T).argmax(1), logits.argmax(1))


def test_temperature_is_cosine_annealed() -> None:
    assert cosine_temperature(0.0, 0.5, 0.07) == pytest.approx(0.5)
    assert cosine_temperature(0.5, 0.5, 0.07) == pytest.approx((0.5 + 0.07) / 2)
    assert cosine_temperature(1.0, 0.1, 0.05) == pytest.approx(0.05)
    backbone = build()
    backbone.start_step(0, 10)
    assert backbone.temperature() == pytest.approx(0.1)  # demo-sized default (0.1 -> 0.05)
    backbone.start_step(10, 10)
    assert backbone.temperature() == pytest.approx(0.05)


def test_recipe_resolves_per_dataset_lambda1_temperature_and_epochs() -> None:
    food = resolved_recipe("mps_tuning", {}, "food101", 16)
    assert food["lambda1"] == 2.0 and tuple(food["temperature"]) == (0.5, 0.07)
    assert food["epochs_by_shots"] == {"16": 50} and food["lambda1_by_dataset"] == {}
    cars = resolved_recipe("mps_tuning", {}, "stanford_cars", 1)
    assert cars["lambda1"] == 0.5 and tuple(cars["temperature"]) == (0.1, 0.05)
    assert cars["epochs_by_shots"] == {"1": 200}
    assert resolved_recipe("mps_tuning", food, "food101", 16) == food  # idempotent
    override = resolved_recipe("mps_tuning", {"lambda1": 1.0, "temperature": [0.2, 0.1]}, "food101", 16)
    assert override["lambda1"] == 1.0 and tuple(override["temperature"]) == (0.2, 0.1)
    cfg = recipes.MPSTuning()
    assert (cfg.optimizer, cfg.lr, cfg.warmup_epochs, cfg.warmup_lr) == ("sgd", 0.002, 1, 1e-5)
    assert (cfg.batch_size, cfg.alpha, cfg.lambda2, cfg.crop_scale) == (32, 0.3, 0.1, (0.3, 1.0))
    assert cfg.views_per_image() == 2
    spec = get_spec("mps_tuning")
    assert (spec.changes, spec.trains, spec.fit_input) == ("image", True, "images")
    size = RunSize(classes=10, n_train=20, n_val=10, n_test=100, views=4, templates=1)
    steps = 100 * 2  # 100 epochs of 2 batches of 10
    assert fit_forwards(spec, recipes.MPSTuning(batch_size=10), "demo_digits", 2, size)["image"] == steps * 20


# ---------------------------------------------------------------------------------------------- the split


def test_depth_is_split_in_thirds() -> None:
    assert split_depth(12) == (4, 8)
    assert split_depth(4) == (1, 2)
    assert split_depth(3) == (1, 2)
    assert split_depth(24) == (8, 16)
    with pytest.raises(InputError, match="works with an open_clip ViT"):
        split_depth(2)


class _Model(nn.Module):
    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual


def test_models_it_cannot_split_are_refused_in_one_line() -> None:
    resnet = _Model(ModifiedResNet(layers=[1, 1, 1, 1], output_dim=16, heads=2, image_size=32, width=8))
    shallow = _Model(VisionTransformer(28, 7, width=32, layers=2, heads=2, mlp_ratio=4.0, output_dim=16))
    pooled = _Model(
        VisionTransformer(28, 7, width=32, layers=3, heads=2, mlp_ratio=4.0, output_dim=16, pool_type="avg")
    )
    for model, needle in ((resnet, "ModifiedResNet"), (shallow, "this model has 2"), (pooled, "'avg'")):
        with pytest.raises(InputError) as err:
            check_vision_tower(model)
        text = str(err.value)
        assert "\n" not in text and needle in text and "ViT-B-16" in text, text
    vit = _Model(VisionTransformer(28, 7, width=32, layers=3, heads=2, mlp_ratio=4.0, output_dim=16))
    assert check_vision_tower(vit) is vit.visual


def trainable_names(block: nn.Module) -> list[str]:
    """What the trainable set must be on demo-vit-t-28 (4 blocks: a = 1, b = 2)."""
    per_block = [n for n, _ in block.named_parameters()]
    return sorted(
        ["adapters.0.weight", "adapters.0.bias", "ln_post.weight", "ln_post.bias", "proj"]
        + [f"blocks.{j}.{n}" for j in range(2) for n in per_block]
    )


def test_trainable_parameters_are_exactly_the_specified_ones() -> None:
    backbone = build()
    visual = backbone.clip.visual
    assert (backbone.depth, backbone.first, backbone.second) == (4, 1, 2)
    assert backbone.trainable_names() == trainable_names(visual.transformer.resblocks[0])
    # Per block: ln_1 2W, q k v 3W^2 + 3W, out W^2 + W, ln_2 2W, FFN 4W^2 + 4W and 4W^2 + W.
    block = 12 * W * W + 13 * W
    want = (W * W + W) + 2 * block + 2 * W + W * D
    assert want == 429_696
    assert sum(p.numel() for p in backbone.parameters() if p.requires_grad) == want
    assert not any(p.requires_grad for p in backbone.clip.parameters())  # text and vision frozen
    # The copies are new tensors: training them leaves the frozen originals for the zero-shot branch.
    copy, original = backbone.blocks[0].mlp.c_fc.weight, visual.transformer.resblocks[2].mlp.c_fc.weight
    assert copy.data_ptr() != original.data_ptr()
    assert backbone.proj.data_ptr() != visual.proj.data_ptr()


# ---------------------------------------------------------------------------------------------- step 0


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_step_zero_is_zero_shot_clip(mode: str) -> None:
    """Zero adapters change no block's output and the copies equal the originals, so fine-tuned
    features equal the frozen ones, equal open_clip's encode_image (bit for bit in eval mode)."""
    backbone = build()
    getattr(backbone, mode)()
    visual = backbone.clip.visual
    for adapter in backbone.adapters:
        assert not adapter.weight.any() and not adapter.bias.any()
    for j, block in enumerate(backbone.blocks):
        original = visual.transformer.resblocks[backbone.second + j].state_dict()
        assert all(torch.equal(v, original[k]) for k, v in block.state_dict().items())
    assert torch.equal(backbone.proj, visual.proj)
    images = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = backbone.towers(images)
        want = backbone.clip.encode_image(images)
        x0 = backbone.encode_images(images)
    assert torch.equal(out.f_zs, want)
    if mode == "eval":
        assert torch.equal(out.f_ft, want) and torch.equal(out.tokens_ft, out.tokens_zs)
    else:  # the copies in training mode take MultiheadAttention's reference path: rounding only
        torch.testing.assert_close(out.f_ft, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.tokens_ft, out.tokens_zs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x0, F.normalize(want, dim=-1))
    loss = backbone.loss_terms(images, torch.tensor([0, 1, 2, 0]))
    assert loss["mar_global"].item() == pytest.approx(0.0, abs=1e-6)
    assert loss["mar_local"].item() == pytest.approx(0.0, abs=1e-6)


def test_pseudo_forward_is_the_block_on_one_token_and_keeps_shapes() -> None:
    backbone = build()
    perturb(backbone)
    block = backbone.blocks[-1]
    x = torch.randn(5, W, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = pseudo_forward(block, x)
        assert got.shape == (5, W)
        torch.testing.assert_close(got, block(x[:, None])[:, 0], rtol=1e-5, atol=1e-5)
        images = torch.randn(3, 3, 28, 28, generator=torch.Generator().manual_seed(1))
        out = backbone.towers(images)
        assert [h.shape for h in out.hidden_ft] == [(3, 17, W)] * 3  # after block b - 1, then 2 copies
        assert out.tokens_ft.shape == out.tokens_zs.shape == (3, 17, D)
        feats = backbone.sculpted_features(out)
    assert [f.shape for f in feats] == [(3, D), (3, D)]
    assert torch.equal(feats[0], out.f_ft)
    # The earlier layer's [CLS] skips the last block's attention: not the output feature.
    assert not torch.allclose(feats[1], out.f_ft)


def test_exported_features_reproduce_the_prediction() -> None:
    """FMA at M = 0 classifies x0 by x0 @ z.T: its argmax is MPS-Tuning's fused-logit argmax."""
    backbone = build(names=[str(i) for i in range(10)])
    perturb(backbone, 0.2)
    images = torch.randn(32, 3, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = backbone.prediction_logits(images)
        x0 = backbone.encode_images(images)
        z = backbone.class_texts()
        out = backbone.towers(images)
    assert torch.equal((x0 @ z.T).argmax(1), logits.argmax(1))
    assert not torch.allclose(out.f_ft, out.f_zs)  # the branches differ: the check is not trivial
    with pytest.raises(RuntimeError, match="needs images"):
        backbone.adapt_features(torch.randn(2, D))


# ---------------------------------------------------------------------------------------------- data and fit


def demo_images(demo: Path, transform, views: int, seed: int = 1) -> EpochImages:
    splits = load_dataset("demo_digits", demo)
    items = [it for c in range(splits.num_classes) for it in [i for i in splits.train if i.label == c][:2]]
    paths = [resolve_image(splits, it) for it in items]
    return EpochImages(paths, [it.label for it in items], transform, seed, views=views)


def test_two_view_loader_gives_two_different_views_with_the_right_label(demo: Path) -> None:
    encoder = fresh_encoder()
    transform = build_train_transform(encoder, (0.3, 1.0), hflip=True)
    images = demo_images(demo, transform, views=2)
    first = [images[i] for i in range(len(images))]
    for (pair, label), want in zip(first, images.labels, strict=True):
        assert pair.shape == (2, 3, 28, 28) and label == want
        assert not torch.equal(pair[0], pair[1])
    again = demo_images(demo, transform, views=2)
    assert all(torch.equal(first[i][0], again[i][0]) for i in range(len(again)))  # deterministic
    again.epoch = 1
    assert not torch.equal(again[0][0], first[0][0])  # a fresh pair each epoch
    batch, labels = next(ImageBatches(images, 4).epoch(0, torch.Generator().manual_seed(0)))
    assert batch.shape == (4, 2, 3, 28, 28) and labels.shape == (4,)
    one = demo_images(demo, transform, views=1)
    assert one[0][0].shape == (3, 28, 28)


def test_fit_lowers_the_loss_and_leaves_frozen_weights_alone(demo: Path) -> None:
    """Eight SGD steps on 20 demo_digits images (2 views each, centre crops so the trend is clean;
    a fixed temperature, so the loss scale does not move with the schedule)."""
    encoder = fresh_encoder()
    cfg = recipes.MPSTuning(batch_size=10, warmup_epochs=0, lr=0.01, temperature=(0.1, 0.1))
    splits = load_dataset("demo_digits", demo)
    backbone = build(cfg, encoder, splits.classnames)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    images = demo_images(demo, encoder.preprocess, views=2)
    result = fit(backbone, ImageBatches(images, 10), cfg, {"epochs": 4}, seed=1)
    assert result.steps == 8 and result.loss_per_epoch[-1] < result.loss_per_epoch[0], result.loss_per_epoch
    assert result.forwards["image"] == 4 * 20 * 2
    after = backbone.state_dict()
    trained = set(backbone.trainable_names())
    frozen = [k for k in after if k not in trained]
    assert sum(k.startswith("clip.visual.") for k in frozen) > 40 and "clip.visual.proj" in frozen
    for key in frozen:
        assert torch.equal(after[key], before[key]), f"frozen {key} changed"
    for key in trained:
        assert not torch.equal(after[key], before[key]), f"trained {key} did not change"
    assert not backbone.training


def test_fit_backbone_stage_trains_and_extraction_rebuilds_it(demo: Path, tmp_path: Path) -> None:
    """``python -m pipeline.fit_backbone`` on images with two views per image; the checkpoint holds
    the resolved recipe and rebuilds the same predictions."""
    from pipeline.fit_backbone import main

    section = {"epochs_by_shots": {1: 2}, "batch_size": 10, "warmup_epochs": 0}
    config = {
        "encoder": {"model": "demo-vit-t-28", "pretrained": None},
        "recipe": section,
        "templates": ["a photo of the digit {}."],
        "extraction": {"views": 1},
    }
    out, metrics = tmp_path / "fit.pt", tmp_path / "fit.json"
    args = ["--backbone", "mps_tuning", "--dataset", "demo_digits", "--shot", "2", "--seed", "1"]
    args += ["--config", json.dumps(config), "--data-root", str(demo)]
    args += ["--split-file", str(demo / "split.json")]
    assert main([*args, "--device", "cpu", "--out", str(out), "--metrics", str(metrics)]) == 0
    record = json.loads(metrics.read_text())
    assert record["steps"] == 4 and record["forwards"]["image"] == 4 * 10 * 2
    assert record["trainable_parameters"] == 429_696
    payload = read_backbone_checkpoint(out)
    assert payload["config"]["lambda1"] == 0.5 and payload["config"]["temperature"] == (0.1, 0.05)
    rebuilt = load_trained_backbone(out, torch.device("cpu"), {"backbone": "mps_tuning", "shot": 2})
    assert isinstance(rebuilt, MPSTuning) and rebuilt.adapters[0].weight.abs().sum() > 0  # trained
    state = rebuilt.trained_state()
    assert sorted(state) == sorted(payload["state"])
    assert all(torch.equal(state[k], payload["state"][k]) for k in state)


def test_mar_parts_choose_the_alignment_terms_lambda1_weighs(demo: Path) -> None:
    """The ablation's MAR global / local: the loss is CE + lambda1 (named MAR terms) + lambda2 HMS."""
    encoder = fresh_encoder()
    splits = load_dataset("demo_digits", demo)
    images = demo_images(demo, encoder.preprocess, views=2)
    batch, labels = next(ImageBatches(images, 6).epoch(0, torch.Generator().manual_seed(0)))
    for parts in (("global", "local"), ("global",), ("local",), ()):
        cfg = recipes.MPSTuning(lambda1=0.7, lambda2=0.2, mar_parts=parts)
        backbone = build(cfg, encoder, splits.classnames)
        with torch.no_grad():  # move the fine-tuned branch off the frozen one, so MAR is not zero
            backbone.adapters[0].weight.normal_(std=0.05)
            terms = backbone.loss_terms(batch, labels)
        mar = sum(terms[f"mar_{p}"] for p in parts)
        assert terms["mar_global"] > 0 and terms["mar_local"] > 0
        want = terms["ce"] + 0.7 * mar + 0.2 * terms["hms"]
        assert terms["loss"].item() == pytest.approx(float(want), rel=1e-6), parts
    with pytest.raises(InputError, match=r"^config key 'mar_parts': expected distinct entries"):
        recipes.MPSTuning(mar_parts=("global", "gobal"))


def test_fit_backbone_record_scores_the_fitted_prediction_on_test(demo: Path, tmp_path: Path) -> None:
    """``--record`` (the backbone ablations): the record's test accuracy is MPS-Tuning's own fused
    prediction on the test split, recomputed here from the saved checkpoint."""
    from pipeline.fit_backbone import main
    from pipeline.report.records import read_records

    config = {
        "encoder": {"model": "demo-vit-t-28", "pretrained": None},
        "recipe": {"epochs_by_shots": {1: 2}, "batch_size": 10, "warmup_epochs": 0, "lr": 0.05},
        "templates": ["a photo of the digit {}."],
        "extraction": {"views": 1},
    }
    out, record_path = tmp_path / "fit.pt", tmp_path / "record.json"
    args = ["--backbone", "mps_tuning", "--dataset", "demo_digits", "--shot", "2", "--seed", "1"]
    args += [
        "--config",
        json.dumps(config),
        "--data-root",
        str(demo),
        "--split-file",
        str(demo / "split.json"),
    ]
    args += ["--device", "cpu", "--out", str(out), "--metrics", str(tmp_path / "fit.json")]
    assert main([*args, "--record", str(record_path), "--variant", "lr_05"]) == 0
    (record,) = read_records([record_path])
    assert record["variant"] == "lr_05" and record["stage"] == "fit_backbone"
    (result,) = record["results"]
    splits = load_dataset("demo_digits", demo)
    backbone = load_trained_backbone(
        out, torch.device("cpu"), {"backbone": "mps_tuning"}, encoder=fresh_encoder()
    )
    images = torch.stack([backbone.need_encoder().preprocess(_open(splits, it)) for it in splits.test])
    labels = torch.tensor([it.label for it in splits.test])
    with torch.no_grad():
        want = (backbone.prediction_logits(images).argmax(1) == labels).sum().item() * 100.0 / len(labels)
    assert result["test_acc"] == pytest.approx(want, abs=1e-9) and record["info"]["n_test"] == len(labels)
    assert result["role"] == "primary" and record["timing"]["train_seconds"] > 0


def _open(splits, item):
    from PIL import Image

    with Image.open(resolve_image(splits, item)) as img:
        return img.convert("RGB")
