"""Every benchmark dataset read from a fixture in its exact layout (tests/fixtures_datasets.py), and
the one-line errors of its reader."""

from __future__ import annotations

from collections import Counter

import pytest
from fixtures_datasets import WRITERS, Counts, make_root

from pipeline.core.errors import InputError
from pipeline.data.catalog import get_dataset_info
from pipeline.data.coop import check_images, load_dataset, resolve_image
from pipeline.data.images import load_image

COUNTS = Counts(train=5, val=2, test=3)


@pytest.mark.parametrize("name", list(WRITERS))
def test_fixture_dataset_reads_with_its_classes_splits_and_labels(tmp_path, name):
    expected = WRITERS[name](tmp_path, COUNTS)
    splits = load_dataset(name, tmp_path)
    info = get_dataset_info(name)
    assert splits.name == name
    assert splits.classnames == expected.classnames
    assert splits.num_classes == len(expected.classnames)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (
        expected.train,
        expected.val,
        expected.test,
    )
    assert splits.folder == tmp_path / info.folder
    assert splits.parent_labels == expected.parent_labels
    for key in ("train", "val", "test"):
        items = getattr(splits, key)
        assert all(item.classname == splits.classnames[item.label] for item in items)
        # Every class has its share of every non-empty split.
        if items:
            assert set(Counter(item.label for item in items)) == set(range(splits.num_classes))
    everything = splits.train + splits.val + splits.test
    check_images(splits, everything)
    assert len({resolve_image(splits, item) for item in everything}) == len(everything)
    assert load_image(resolve_image(splits, everything[-1])).size == (8, 8)


def test_make_root_lays_out_several_datasets(tmp_path):
    root = make_root(tmp_path / "data", ["dtd", "eurosat"], Counts(train=1, val=1, test=1))
    assert sorted(p.name for p in root.iterdir()) == ["dtd", "eurosat"]
    assert load_dataset("eurosat", root).classnames[0] == "Annual Crop Land"


# ---------------------------------------------------------------------------------- bad input


def test_missing_data_root_and_dataset_folder(tmp_path):
    with pytest.raises(InputError, match=f"^data root {tmp_path / 'none'} does not exist$"):
        load_dataset("sun397", tmp_path / "none")
    with pytest.raises(InputError, match=f"^dataset folder {tmp_path / 'sun397'} does not exist$"):
        load_dataset("sun397", tmp_path)


@pytest.mark.parametrize("name", list(WRITERS))
def test_missing_split_file(tmp_path, name):
    WRITERS[name](tmp_path, Counts(train=1, val=1, test=1))
    info = get_dataset_info(name)
    split_path = tmp_path / info.folder / info.split_file
    split_path.unlink()
    with pytest.raises(InputError, match=f"^split file {split_path} does not exist$"):
        load_dataset(name, tmp_path)


@pytest.mark.parametrize("name", list(WRITERS))
def test_split_naming_a_missing_image(tmp_path, name):
    WRITERS[name](tmp_path, Counts(train=2, val=1, test=2))
    splits = load_dataset(name, tmp_path)
    gone = resolve_image(splits, splits.test[-1])
    gone.unlink()
    check_images(splits, splits.train + splits.val)
    with pytest.raises(InputError, match=r"^split file .* names a missing image") as err:
        check_images(splits, splits.test)
    assert str(err.value).endswith(str(gone))
