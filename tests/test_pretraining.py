"""Tests for contrastive pretraining of the demo backbone and the pretrain_demo CLI."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from pipeline import pretrain_demo
from pipeline.backbones.encoder import encode_images, encode_texts, load_encoder
from pipeline.core.config import EncoderConfig
from pipeline.core.errors import InputError
from pipeline.demo.datasets import FASHION_DIR, FASHION_TRAIN_IMAGES
from pipeline.demo.pretrain import (
    PretrainConfig,
    build_pretrain_data,
    downscale_blur,
    get_tokenizer,
    load_mnist_digits,
    pretrain,
    random_resized_crop,
    save_checkpoint,
)

pytestmark = pytest.mark.skipif(
    not (FASHION_DIR / FASHION_TRAIN_IMAGES).is_file(), reason="dataset-fashion-mnist is not installed"
)

# A tiny budget: 30 steps of 64 on 2,000 Fashion images and the 5,000 digits (about 8 s on one thread).
TINY = PretrainConfig(steps=30, batch_size=64, lr=5e-4, warmup_steps=5, n_fashion=2000, digit_repeat=1)


@pytest.fixture(scope="module", autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-identical reruns and no oversubscription on the 2-core runner
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    return build_pretrain_data(TINY, get_tokenizer(TINY.model))


@pytest.fixture(scope="module")
def trained(data):
    return pretrain(TINY, torch.device("cpu"), data=data)


def test_data_captions_name_the_class(data):
    assert data.n_fashion == 2000 and data.n_digits == 5000
    assert data.images.shape == (7000, 28, 28) and data.images.dtype == torch.uint8
    tokenizer = get_tokenizer(TINY.model)
    digits, labels = load_mnist_digits()
    assert np.array_equal(data.images[2000:].numpy(), digits)
    # Image 2000 + i is MNIST digit i: every caption row it may draw is a caption of its own class.
    seven = 2000 + int(np.flatnonzero(labels == 7)[0])
    expected = {tuple(tokenizer([t]).long()[0].tolist()) for t in ("the number 7.", "a handwritten seven.")}
    rows = {tuple(data.tokens[r].tolist()) for r in data.caption_rows[seven].tolist()}
    assert expected <= rows


def test_augmentations_keep_shape_and_range():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 1, 28, 28)
    crop = random_resized_crop(x, (0.5, 0.9), g)
    assert crop.shape == x.shape and not torch.allclose(crop, x)
    assert crop.min() >= 0 and crop.max() <= 1
    # The box lies inside the image, so a flat image stays flat (no black frame creeps in).
    flat = torch.full((8, 1, 28, 28), 0.7)
    torch.testing.assert_close(random_resized_crop(flat, (0.5, 1.0), g), flat)
    blurred = downscale_blur(x, (7,), 1.0, g)
    assert blurred.shape == x.shape and blurred.min() >= 0 and blurred.max() <= 1
    assert not torch.allclose(blurred, x)
    # Blurring loses the high frequencies: shrinking again gives (almost) the same 7x7 image.
    small = torch.nn.functional.interpolate(x, size=(7, 7), mode="area")
    again = torch.nn.functional.interpolate(blurred, size=(7, 7), mode="area")
    assert (again - small).abs().mean() < 0.1
    assert torch.equal(downscale_blur(x, (7,), 0.0, g), x)


def test_config_rejects_bad_values():
    with pytest.raises(InputError, match="crop_scale"):
        PretrainConfig(crop_scale=(0.9, 0.5))
    with pytest.raises(InputError, match="steps"):
        PretrainConfig(steps=0)


def test_contrastive_loss_falls(trained):
    _, history = trained
    losses = history["loss"]
    assert len(losses) == TINY.steps
    assert losses[0] == pytest.approx(math.log(TINY.batch_size), abs=0.7)  # chance level at init
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.25
    # Below chance, so the model matches images to captions (not merely collapsed to uniform logits).
    assert np.mean(losses[-5:]) < math.log(TINY.batch_size) - 0.15
    assert all(1.0 <= s <= 100.0 for s in history["logit_scale"])


def test_same_seed_same_history(data):
    short = dataclasses.replace(TINY, steps=3)
    _, first = pretrain(short, torch.device("cpu"), data=data)
    _, again = pretrain(short, torch.device("cpu"), data=data)
    assert again["loss"] == first["loss"]
    _, other = pretrain(dataclasses.replace(short, seed=1), torch.device("cpu"), data=data)
    assert other["loss"] != first["loss"]


def test_checkpoint_round_trips_through_load_encoder(trained, tmp_path):
    model, _ = trained
    path = tmp_path / "demo.pt"
    save_checkpoint(model, path, TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.pt"]  # no temporary left behind
    save_checkpoint(model, tmp_path / "again.pt", TINY)
    assert (tmp_path / "again.pt").read_bytes() == path.read_bytes()  # reruns give the same file
    encoder = load_encoder(EncoderConfig(model=TINY.model, pretrained=str(path)), torch.device("cpu"))
    images = torch.randn(4, 3, 28, 28)
    with torch.no_grad():
        expected_images = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
        tokens = encoder.tokenizer(["a photo of a sneaker, a type of clothing."])
        expected_text = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
    torch.testing.assert_close(encode_images(encoder, images), expected_images)
    text = encode_texts(encoder, ["sneaker"], ["a photo of a {}, a type of clothing."])
    torch.testing.assert_close(text, expected_text)
    # A trained checkpoint differs from the seeded random init the encoder would otherwise use.
    fresh = load_encoder(EncoderConfig(model=TINY.model), torch.device("cpu"))
    assert not torch.allclose(encode_images(fresh, images), expected_images)
    assert torch.load(path, weights_only=True)["config"]["steps"] == TINY.steps


def test_cli_writes_checkpoint_and_metrics(tmp_path):
    cfg = {"steps": 4, "batch_size": 32, "warmup_steps": 1, "n_fashion": 500, "digit_repeat": 1}
    out, metrics = tmp_path / "ckpt" / "demo.pt", tmp_path / "metrics.json"
    argv = ["--config", json.dumps(cfg), "--threads", "1", "--device", "cpu"]
    code = pretrain_demo.main([*argv, "--out", str(out), "--metrics", str(metrics), "--history-every", "2"])
    assert code == 0
    result = json.loads(metrics.read_text())
    assert result["config"]["steps"] == 4 and result["n_fashion"] == 500 and result["n_digits"] == 5000
    assert result["history"]["step"] == [1, 3, 4]
    assert result["first_loss"] > 0 and result["seconds"] > 0
    state = torch.load(out, weights_only=True)["state_dict"]
    assert "logit_scale" in state


def test_cli_rejects_unknown_key(tmp_path, capsys):
    argv = [
        "--config",
        '{"stepz": 3}',
        "--out",
        str(tmp_path / "a.pt"),
        "--metrics",
        str(tmp_path / "m.json"),
    ]
    assert pretrain_demo.main(argv) == 2
    assert "stepz" in capsys.readouterr().err
    assert not (tmp_path / "a.pt").exists()
