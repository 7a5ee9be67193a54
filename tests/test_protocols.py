"""Base-to-new: the class halves as datasets of their own, the draw made on the whole dataset first,
and H from seed-averaged B and N."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from fixtures_datasets import Counts, write_eurosat

from pipeline.core.errors import InputError
from pipeline.data.catalog import get_dataset_info
from pipeline.data.coop import load_dataset
from pipeline.data.fewshot import sample_fewshot
from pipeline.data.protocols import base_to_new_summary, harmonic_mean, part_classes, split_name


def test_halves_split_the_sorted_label_ids_base_first() -> None:
    assert part_classes(10, "base") == [0, 1, 2, 3, 4] and part_classes(10, "new") == [5, 6, 7, 8, 9]
    assert part_classes(7, "base") == [0, 1, 2, 3] and part_classes(7, "new") == [4, 5, 6]  # ceil(n/2)
    assert split_name("dtd@new") == ("dtd", "new") and split_name("dtd") == ("dtd", None)
    with pytest.raises(
        InputError, match=r"^dataset 'dtd@novel': unknown part 'novel' \(choose from base, new\)$"
    ):
        split_name("dtd@novel")
    with pytest.raises(InputError, match="imagenet_a is test-only"):
        get_dataset_info("imagenet_a@base")


def test_a_half_is_a_dataset_with_its_classes_relabelled(tmp_path: Path) -> None:
    write_eurosat(tmp_path, Counts(train=6, val=3, test=2))
    whole = load_dataset("eurosat", tmp_path)
    base, new = load_dataset("eurosat@base", tmp_path), load_dataset("eurosat@new", tmp_path)
    cut = math.ceil(whole.num_classes / 2)
    assert (whole.num_classes, cut, new.num_classes) == (3, 2, 1)
    assert base.classnames == whole.classnames[:cut] and new.classnames == whole.classnames[cut:]
    assert base.name == "eurosat@base" and base.parent_labels == tuple(range(cut))
    for half, offset in ((base, 0), (new, cut)):
        for split in ("train", "val", "test"):
            items = getattr(half, split)
            assert {it.label for it in items} == set(range(half.num_classes))
            want = [
                (it.path, it.label - offset)
                for it in getattr(whole, split)
                if it.label - offset in range(half.num_classes)
            ]
            assert [(it.path, it.label) for it in items] == want
            assert all(half.classnames[it.label] == it.classname for it in items)


@pytest.mark.parametrize("sampler", ["dassl", "numpy"])
def test_the_draw_is_made_on_the_whole_dataset_then_restricted(tmp_path: Path, sampler: str) -> None:
    """CoCoOp subsamples the classes after CoOp's few-shot draw: seed s keeps seed s's images."""
    write_eurosat(tmp_path, Counts(train=6, val=3, test=2))
    whole = sample_fewshot(load_dataset("eurosat", tmp_path), 2, 3, sampler)
    for part in ("base", "new"):
        half = load_dataset(f"eurosat@{part}", tmp_path)
        drawn = sample_fewshot(half, 2, 3, sampler)
        keep = set(half.parent_labels)
        assert [it.path for it in drawn.train] == [it.path for it in whole.train if it.label in keep]
        assert [it.path for it in drawn.val] == [it.path for it in whole.val if it.label in keep]
        assert {it.label for it in drawn.train} == set(range(half.num_classes))


def test_h_is_the_harmonic_mean_of_seed_averaged_b_and_n() -> None:
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert harmonic_mean(0.0, 0.0) == 0.0
    summary = base_to_new_summary([80.0, 82.0, 84.0], [50.0, 70.0, 60.0])
    assert summary["base"] == pytest.approx(82.0) and summary["new"] == pytest.approx(60.0)
    assert summary["h"] == pytest.approx(2 * 82 * 60 / 142)
    per_seed = sum(harmonic_mean(b, n) for b, n in zip([80, 82, 84], [50, 70, 60], strict=True)) / 3
    assert summary["h"] != pytest.approx(per_seed)  # not the mean of per-seed H
    with pytest.raises(InputError, match="one base and one new accuracy per seed"):
        base_to_new_summary([80.0], [])
