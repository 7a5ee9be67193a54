"""Tests for the demo-dataset builders and the build_demo CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipeline import build_demo
from pipeline.core.errors import InputError
from pipeline.data.catalog import get_dataset_info, list_demo_datasets
from pipeline.data.coop import check_images, load_dataset, resolve_image
from pipeline.data.images import load_image
from pipeline.data.sizes import DEMO_SMALLEST_TRAIN_CLASS
from pipeline.demo import datasets as demo
from pipeline.demo.datasets import (
    FASHION_DIR,
    FASHION_IMAGES,
    FASHION_LABELS,
    build_demo_dataset,
    load_digits_images,
    load_fashion_images,
    split_by_fraction,
)

HAVE_FASHION = (FASHION_DIR / FASHION_IMAGES).is_file() and (FASHION_DIR / FASHION_LABELS).is_file()


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory) -> Path:
    """demo_digits built once through the CLI (the build_demo smoke test)."""
    root = tmp_path_factory.mktemp("data")
    assert build_demo.main(["--dataset", "demo_digits", "--data-root", str(root)]) == 0
    return root


def test_digits_build(digits_root):
    assert (digits_root / "demo_digits" / "split_zhou_DemoDigits.json").is_file()
    assert [p.name for p in digits_root.iterdir()] == ["demo_digits"]  # no temporary sibling left
    splits = load_dataset("demo_digits", digits_root)
    assert splits.classnames == [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
    ]
    everything = splits.train + splits.val + splits.test
    assert len(everything) == 1797
    assert len({item.path for item in everything}) == 1797
    check_images(splits, everything)
    # 50 / 20 / 30 per class (up to rounding).
    for label, n in Counter(item.label for item in everything).items():
        n_train = sum(item.label == label for item in splits.train)
        n_val = sum(item.label == label for item in splits.val)
        assert abs(n_train - 0.5 * n) <= 1 and abs(n_val - 0.2 * n) <= 1
    # The shot limit the workflow checks configs against (pipeline/data/sizes.py).
    assert (
        min(Counter(item.label for item in splits.train).values()) == DEMO_SMALLEST_TRAIN_CLASS["demo_digits"]
    )


def test_digit_images_decode_to_the_source_pixels(digits_root):
    splits = load_dataset("demo_digits", digits_root)
    images, labels = load_digits_images()
    assert images.dtype == np.uint8 and images.max() == 255 and images.min() == 0
    for item in splits.test[:5] + splits.train[-5:]:
        index = int(Path(item.path).stem)
        assert labels[index] == item.label
        img = load_image(resolve_image(splits, item))
        assert img.size == (8, 8)
        np.testing.assert_array_equal(np.asarray(img)[:, :, 0], images[index])


def test_digit_split_is_deterministic():
    _, labels = load_digits_images()
    assert split_by_fraction(labels, (0.5, 0.2), seed=0) == split_by_fraction(labels, (0.5, 0.2), seed=0)
    assert split_by_fraction(labels, (0.5, 0.2), seed=0) != split_by_fraction(labels, (0.5, 0.2), seed=1)


def test_build_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "demo_digits"
    calls = []

    def failing_save(array, path):
        calls.append(path)
        if len(calls) > 100:
            raise OSError("disk full")
        path.write_bytes(b"png")

    monkeypatch.setattr(demo, "save_png", failing_save)
    with pytest.raises(OSError, match="disk full"):
        build_demo_dataset("demo_digits", target)
    assert list(tmp_path.iterdir()) == []

    # An earlier build at the target survives a failed rebuild untouched.
    target.mkdir()
    (target / "marker").write_text("old")
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        build_demo_dataset("demo_digits", target)
    assert [p.name for p in tmp_path.iterdir()] == ["demo_digits"]
    assert [p.name for p in target.iterdir()] == ["marker"]


def test_every_demo_dataset_has_a_builder():
    for name in list_demo_datasets():
        assert get_dataset_info(name).source in demo.SOURCES


def test_build_demo_refuses_a_non_demo_dataset(tmp_path, capsys):
    assert build_demo.main(["--dataset", "dtd", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert (
        "dataset 'dtd' is not a demo dataset (demo datasets: demo_digits, demo_fashion, demo_fashion_v2)"
        in err
    )
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
    assert build_demo.main(["--dataset", "nope", "--data-root", str(tmp_path)]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err


def test_fashion_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(
        InputError, match=f"{tmp_path / FASHION_IMAGES} is missing.*apt-get install dataset-fashion-mnist"
    ):
        load_fashion_images(tmp_path)


def test_fashion_bad_idx_file(tmp_path):
    import gzip

    with gzip.open(tmp_path / FASHION_IMAGES, "wb") as f:
        f.write(b"\x00\x00\x08\x01" + b"\x00" * 20)
    with pytest.raises(InputError, match="not an idx file with magic number 2051"):
        load_fashion_images(tmp_path)


@pytest.mark.skipif(
    not HAVE_FASHION, reason=f"Fashion-MNIST not installed at {FASHION_DIR} (dataset-fashion-mnist)"
)
def test_fashion_build(tmp_path):
    split_path = build_demo_dataset("demo_fashion", tmp_path / "demo_fashion")
    assert split_path == tmp_path / "demo_fashion" / "split_zhou_DemoFashion.json"
    raw = json.loads(split_path.read_text())
    assert "ankle_boot" in {row[2] for row in raw["train"]}  # written with underscores, as CoOp does
    splits = load_dataset("demo_fashion", tmp_path)
    assert splits.classnames[9] == "ankle boot" and splits.classnames[0] == "t-shirt"
    for items, n in ((splits.train, 200), (splits.val, 50), (splits.test, 200)):
        assert Counter(item.label for item in items) == {c: n for c in range(10)}
    # The shot limit the workflow checks configs against (pipeline/data/sizes.py).
    assert (
        min(Counter(item.label for item in splits.train).values())
        == DEMO_SMALLEST_TRAIN_CLASS["demo_fashion"]
    )
    everything = splits.train + splits.val + splits.test
    assert len({item.path for item in everything}) == 4500
    images, labels = load_fashion_images()
    assert images.shape == (10000, 28, 28)
    for item in splits.val[:3] + splits.test[-3:]:
        index = int(Path(item.path).stem)
        assert labels[index] == item.label
        img = load_image(resolve_image(splits, item))
        assert img.size == (28, 28)
        np.testing.assert_array_equal(np.asarray(img)[:, :, 1], images[index])


def test_fashion_v2_is_a_new_test_set_of_fashions_classes(tmp_path):
    """demo_fashion_v2 (ImageNet-V2's layout, test only): demo_fashion's classes, 200 t10k images
    per class, none of them in any of demo_fashion's splits."""
    from pipeline.data.coop import load_dataset

    for name in ("demo_fashion", "demo_fashion_v2"):
        build_demo_dataset(name, tmp_path / get_dataset_info(name).folder)
    fashion = load_dataset("demo_fashion", tmp_path)
    v2 = load_dataset("demo_fashion_v2", tmp_path)
    assert get_dataset_info("demo_fashion_v2").test_only and not v2.train and not v2.val
    assert v2.classnames == fashion.classnames
    assert [sum(it.label == c for it in v2.test) for c in range(10)] == [200] * 10
    index = lambda items: {int(Path(it.path).stem) for it in items}  # noqa: E731  (t10k positions)
    used = index(fashion.train) | index(fashion.val) | index(fashion.test)
    assert len(index(v2.test)) == 2000 and not index(v2.test) & used
