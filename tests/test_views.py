"""Image views: per-item seeds, so views depend on neither batch size nor workers."""

from __future__ import annotations

from pipeline.features.views import item_seed


def test_item_seed_is_distinct_per_epoch_and_image() -> None:
    seeds = {item_seed(1, i, e) for e in range(50) for i in range(200)}
    assert len(seeds) == 50 * 200
    assert item_seed(1, 0, 0) != item_seed(2, 0, 0)
    assert 0 <= item_seed(10**6, 10**6, 10**4) < 2**63
