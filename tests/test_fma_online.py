"""Online views: fresh augmentations per epoch, deterministic per (seed, epoch, image), normalised."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.backbones.encoder import build_train_transform, load_encoder
from pipeline.backbones.zeroshot import ZeroShotCLIP
from pipeline.core.config import EncoderConfig
from pipeline.data.coop import load_dataset, resolve_image
from pipeline.demo.datasets import build_demo_dataset
from pipeline.features.views import EpochImages
from pipeline.methods.fma.online import OnlineViews


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("data")
    build_demo_dataset("demo_digits", root / "demo_digits")
    splits = load_dataset("demo_digits", root)
    paths = [resolve_image(splits, item) for item in splits.train[:6]]
    encoder = load_encoder(EncoderConfig("demo-vit-t-28", None), torch.device("cpu"))
    backbone = ZeroShotCLIP(encoder, splits.classnames, ["a photo of {}."], None, dim=128)
    transform = build_train_transform(backbone.encoder, (0.08, 1.0), True)
    return paths, backbone, transform


def make(setup, seed: int = 1, batch_size: int = 4) -> OnlineViews:
    paths, backbone, transform = setup
    images = EpochImages(paths, [0] * len(paths), transform, seed)
    return OnlineViews(images, backbone.encode_images, batch_size=batch_size)


def test_fresh_views_each_epoch_same_for_same_seed_and_epoch(setup) -> None:
    views = make(setup)
    e0, e1 = views.encode_epoch(0).numpy(), views.encode_epoch(1).numpy()
    assert e0.shape == (6, 128)
    np.testing.assert_allclose(np.linalg.norm(e0, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(e1, axis=1), 1.0, atol=1e-5)
    # Every image gets a new augmentation (on 8 x 8 digits two draws can fall back to the same full crop).
    assert (np.abs(e0 - e1).max(axis=1) > 1e-3).sum() >= 5
    # Same (seed, epoch): the same views, whatever the batch size; another seed: other views.
    np.testing.assert_allclose(make(setup, batch_size=5).encode_epoch(1).numpy(), e1, atol=1e-5)
    assert (np.abs(make(setup, seed=2).encode_epoch(0).numpy() - e0).max(axis=1) > 1e-3).sum() >= 5
    assert views.encode_seconds > 0


def test_view_source_protocol_and_global_rng(setup) -> None:
    views = make(setup)
    torch.manual_seed(7)
    expected = torch.rand(2)
    torch.manual_seed(7)
    views.start_epoch(0, torch.Generator())  # encodes epoch 0 ...
    seconds = views.encode_seconds
    views.start_epoch(0, torch.Generator())  # ... and a second call for the same epoch reuses it
    assert views.encode_seconds == seconds
    assert torch.equal(torch.rand(2), expected)  # per-item seeding left the global RNG alone
    x = views.encode_epoch(0)
    assert not hasattr(views, "sigma2")  # sigma^2 comes from the cache (docs/methods.md, Eq. (F4))
    idx = torch.tensor([4, 0, 2])
    assert torch.allclose(views.take(idx), x[idx], atol=1e-6)
    views.start_epoch(3, torch.Generator())
    assert not torch.allclose(views.take(idx), x[idx])
    assert len(views) == 6 and views.encode_seconds > seconds


def test_missing_image_names_the_file(setup, tmp_path: Path) -> None:
    _, backbone, transform = setup
    views = OnlineViews(EpochImages([tmp_path / "gone.png"], [0], transform, 0), backbone.encode_images)
    with pytest.raises(ValueError, match="gone.png"):
        views.encode_epoch(0)
