"""Tests for the CoOp-layout reader and image decoding: valid layouts and every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.errors import InputError
from pipeline.data.coop import check_images, load_dataset, resolve_image
from pipeline.data.images import load_image

PETS_CLASSES = ("american_bulldog", "Abyssinian", "great_pyrenees")


def write_png(path: Path, rng: np.random.Generator, size: tuple[int, int] = (12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(path)


def write_pets(root: Path, per_split: dict[str, int] | None = None) -> Path:
    """A tiny oxford_pets dataset under ``root``: real PNGs (random pixels) and a CoOp split file."""
    per_split = per_split or {"train": 3, "val": 1, "test": 2}
    rng = np.random.default_rng(0)
    folder = root / "oxford_pets"
    split: dict[str, list] = {}
    for key, n in per_split.items():
        split[key] = []
        for label, cname in enumerate(PETS_CLASSES):
            for i in range(n):
                rel = f"{cname}_{key}_{i}.png"
                write_png(folder / "images" / rel, rng)
                split[key].append([rel, label, cname])
    (folder / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    return folder / "split_zhou_OxfordPets.json"


def rewrite_split(split_path: Path, edit) -> None:
    data = json.loads(split_path.read_text())
    edit(data)
    split_path.write_text(json.dumps(data))


def test_reads_pets_layout(tmp_path):
    write_pets(tmp_path)
    splits = load_dataset("oxford_pets", tmp_path)
    assert splits.name == "oxford_pets"
    assert splits.classnames == ["american bulldog", "Abyssinian", "great pyrenees"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 3, 6)
    assert splits.image_root == tmp_path / "oxford_pets" / "images"
    first = splits.train[0]
    assert (first.path, first.label, first.classname) == (
        "american_bulldog_train_0.png",
        0,
        "american bulldog",
    )
    assert all(item.classname == splits.classnames[item.label] for item in splits.test)
    check_images(splits, splits.train + splits.val + splits.test)
    img = load_image(resolve_image(splits, first))
    assert img.mode == "RGB" and img.size == (10, 12)


def test_eurosat_class_names_are_rewritten(tmp_path):
    folder = tmp_path / "eurosat"
    folder.mkdir()
    entries = [
        ["AnnualCrop/a.jpg", 0, "AnnualCrop"],
        ["SeaLake/b.jpg", 1, "SeaLake"],
        ["Forest/c.jpg", 2, "Forest"],
    ]
    # CoOp's released file already holds rewritten names: both spellings must give the same classes.
    test = [["SeaLake/d.jpg", 1, "Sea or Lake"]]
    (folder / "split_zhou_EuroSAT.json").write_text(json.dumps({"train": entries, "val": [], "test": test}))
    splits = load_dataset("eurosat", tmp_path)
    assert splits.classnames == ["Annual Crop Land", "Sea or Lake", "Forest"]
    assert splits.test[0].classname == "Sea or Lake"
    assert splits.val == []
    assert resolve_image(splits, splits.train[0]) == folder / "2750" / "AnnualCrop" / "a.jpg"


def test_stanford_cars_images_are_relative_to_the_dataset_folder(tmp_path):
    folder = tmp_path / "stanford_cars"
    folder.mkdir()
    split = {"train": [["cars_train/00001.jpg", 0, "2000 AM General Hummer SUV"]], "val": [], "test": []}
    (folder / "split_zhou_StanfordCars.json").write_text(json.dumps(split))
    splits = load_dataset("stanford_cars", tmp_path)
    assert resolve_image(splits, splits.train[0]) == folder / "cars_train" / "00001.jpg"


def test_missing_data_root(tmp_path):
    with pytest.raises(InputError, match=f"data root {tmp_path / 'nope'} does not exist"):
        load_dataset("oxford_pets", tmp_path / "nope")


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(InputError, match=f"dataset folder {tmp_path / 'oxford_pets'} does not exist"):
        load_dataset("oxford_pets", tmp_path)


def test_missing_demo_folder_says_how_to_build_it(tmp_path):
    with pytest.raises(InputError, match="pipeline.build_demo --dataset demo_digits"):
        load_dataset("demo_digits", tmp_path)


def test_missing_split_file(tmp_path):
    split_path = write_pets(tmp_path)
    split_path.unlink()
    with pytest.raises(InputError, match=f"split file {split_path} does not exist"):
        load_dataset("oxford_pets", tmp_path)


def test_broken_json(tmp_path):
    split_path = write_pets(tmp_path)
    split_path.write_text('{"train": [["a.png", 0, "x"]')
    with pytest.raises(InputError, match=f"split file {split_path}: invalid JSON"):
        load_dataset("oxford_pets", tmp_path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d.update(train=[["a.png", 0]]),
            r"train\[0\]: expected \[relative_path, label, classname\]",
        ),
        (lambda d: d["test"].append(["x.png", "0", "x"]), r"test\[6\]: expected"),
        (lambda d: d.pop("test"), "missing key 'test'"),
        (lambda d: d.update(val={"a": 1}), "'val' must be a list"),
        (
            lambda d: d["test"].append(["x.png", 7, "sphynx"]),
            r"test\[6\]: label 7 names a class not in train",
        ),
        (lambda d: d["val"].append(["x.png", 0, "sphynx"]), r"val\[3\]: 'sphynx' names an unknown class"),
        (lambda d: d["train"].append(["x.png", 1, "sphynx"]), r"train\[9\]: label 1 names an unknown class"),
        (lambda d: d["train"].append(["x.png", 4, "sphynx"]), "train label 4 is outside 0..3"),
        (lambda d: d["train"].append(["/abs/x.png", 0, "american_bulldog"]), "must be relative"),
    ],
)
def test_bad_entries_name_the_split_file(tmp_path, edit, message):
    split_path = write_pets(tmp_path)
    rewrite_split(split_path, edit)
    with pytest.raises(InputError, match=message) as err:
        load_dataset("oxford_pets", tmp_path)
    assert str(split_path) in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_image_names_split_file_and_image(tmp_path):
    split_path = write_pets(tmp_path)
    splits = load_dataset("oxford_pets", tmp_path)
    gone = resolve_image(splits, splits.test[4])
    gone.unlink()
    check_images(splits, splits.train)  # only the items given are statted
    with pytest.raises(InputError, match=f"split file {split_path} names a missing image {gone}"):
        check_images(splits, splits.test)


def test_corrupt_images_raise_input_error_naming_the_file(tmp_path):
    rng = np.random.default_rng(1)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not a png at all" * 10)
    good = tmp_path / "good.png"
    write_png(good, rng, size=(64, 64))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for path in (garbage, truncated):
        with pytest.raises(InputError, match=f"image {path} is corrupt or unreadable"):
            load_image(path)
    with pytest.raises(InputError, match=f"image {tmp_path / 'absent.png'} does not exist"):
        load_image(tmp_path / "absent.png")
    assert load_image(good).size == (64, 64)


def test_grayscale_images_become_rgb(tmp_path):
    path = tmp_path / "gray.png"
    Image.fromarray(np.full((5, 7), 200, dtype=np.uint8)).save(path)
    img = load_image(path)
    assert img.mode == "RGB"
    assert np.asarray(img)[0, 0].tolist() == [200, 200, 200]


def test_16_bit_and_float_images_keep_their_tones(tmp_path):
    """PIL's convert("RGB") clips 16-bit greys to 255 (a near-white image); they scale to 8 bits."""
    wide = np.array([[0, 257, 1000], [32768, 65535, 65535]], dtype=np.uint16)  # (2, 3)
    png16 = tmp_path / "wide.png"
    Image.fromarray(wide).save(png16)
    assert Image.open(png16).mode in ("I;16", "I")  # what PIL decodes a 16-bit PNG to
    rgb = np.asarray(load_image(png16))  # (2, 3, 3)
    assert rgb.dtype == np.uint8 and (rgb == rgb[..., :1]).all()
    assert rgb[..., 0].tolist() == [[0, 1, 4], [128, 255, 255]]

    floats = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(floats)
    assert np.asarray(load_image(floats))[..., 0].tolist() == [[0, 128, 255]]

    too_wide = tmp_path / "too_wide.tif"
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(too_wide)
    with pytest.raises(InputError, match=rf"^image {too_wide}: I pixel values outside 0..65535"):
        load_image(too_wide)
