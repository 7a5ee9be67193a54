"""Image views: per-item seeds, so views depend on neither batch size nor workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from pipeline.features.views import EpochImages, item_seed


def test_item_seed_is_distinct_per_epoch_and_image() -> None:
    seeds = {item_seed(1, i, e) for e in range(50) for i in range(200)}
    assert len(seeds) == 50 * 200
    assert item_seed(1, 0, 0) != item_seed(2, 0, 0)
    assert 0 <= item_seed(10**6, 10**6, 10**4) < 2**63


def test_epoch_images_with_two_views_draw_two_seeded_augmentations(tmp_path: Path) -> None:
    """views = 2 (MPS-Tuning's two-view loader): two different crops of the same image, its label,
    the same pair on a rerun, a new pair the next epoch; views = 1 keeps the (3, H, W) items."""
    paths = []
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8)
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    crop = transforms.Compose([transforms.RandomResizedCrop(8, scale=(0.3, 1.0)), transforms.ToTensor()])
    images = EpochImages(paths, [2, 0, 1], crop, seed=1, views=2)
    pairs = [images[i] for i in range(3)]
    assert [label for _, label in pairs] == [2, 0, 1]
    assert all(v.shape == (2, 3, 8, 8) and not torch.equal(v[0], v[1]) for v, _ in pairs)
    again = EpochImages(paths, [2, 0, 1], crop, seed=1, views=2)
    assert all(torch.equal(again[i][0], pairs[i][0]) for i in range(3))
    again.epoch = 1
    assert not torch.equal(again[0][0], pairs[0][0])
    single = EpochImages(paths, [2, 0, 1], crop, seed=1)
    assert single[0][0].shape == (3, 8, 8)
    torch.testing.assert_close(single[0][0], pairs[0][0][0])  # the first view is the one-view draw
