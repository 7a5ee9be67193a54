"""Every benchmark dataset read from a fixture in its exact layout (tests/fixtures_datasets.py), and
the one-line errors of its reader."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
from fixtures_datasets import (
    IMAGENET_CLASSES,
    WRITERS,
    Counts,
    make_root,
    write_fgvc_aircraft,
    write_image,
    write_imagenet,
    write_imagenet_a,
    write_imagenet_v2,
)

from pipeline.core.errors import InputError
from pipeline.core.workflow_config import load_workflow_config
from pipeline.data.catalog import get_dataset_info, list_datasets
from pipeline.data.coop import check_images, load_dataset, resolve_image
from pipeline.data.images import load_image
from pipeline.data.sizes import PAPER_DATASETS, SIZES, smallest_train_class

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
PRESETS = REPO / "workflow" / "presets"
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
    listing = splits.split_files.get("test", splits.split_path)  # FGVCAircraft: images_variant_test.txt
    assert str(err.value) == f"split file {listing} names a missing image {gone}"


# ---------------------------------------------------------------------------------- ImageNet family


def test_imagenet_labels_follow_classnames_and_test_is_the_official_val(tmp_path):
    write_imagenet(tmp_path, Counts(train=3, val=0, test=2))
    splits = load_dataset("imagenet", tmp_path)
    assert splits.image_root == tmp_path / "imagenet" / "images"
    assert splits.split_path == tmp_path / "imagenet" / "classnames.txt"
    assert splits.val == []
    assert [(i.path, i.label, i.classname) for i in splits.train[:4]] == [
        ("train/n01440764/n01440764_0.JPEG", 0, "tench"),
        ("train/n01440764/n01440764_1.JPEG", 0, "tench"),
        ("train/n01440764/n01440764_2.JPEG", 0, "tench"),
        ("train/n01443537/n01443537_0.JPEG", 1, "goldfish"),
    ]
    assert all(i.path.startswith(f"val/{IMAGENET_CLASSES[i.label][0]}/") for i in splits.test)
    assert splits.test[-1].classname == "tiger shark"
    assert not get_dataset_info("imagenet").test_only


def test_images_within_a_class_are_sorted_by_name(tmp_path):
    write_imagenet(tmp_path, Counts(train=1, val=0, test=1))
    wnid_dir = tmp_path / "imagenet" / "images" / "train" / "n01440764"
    for name in ("z.JPEG", "b.JPEG", "m.JPEG"):  # created out of order
        write_image(wnid_dir / name, 0)
    paths = [i.path for i in load_dataset("imagenet", tmp_path).train if i.label == 0]
    assert paths == [f"train/n01440764/{n}" for n in ("b.JPEG", "m.JPEG", "n01440764_0.JPEG", "z.JPEG")]


@pytest.mark.parametrize(
    ("name", "first"),
    [
        ("imagenet_v2", ("0/2000.jpeg", 0, "tench")),
        ("imagenet_sketch", ("n01440764/3000.jpeg", 0, "tench")),
        ("imagenet_a", ("n01443537/4000.jpeg", 0, "goldfish")),  # ImageNet's class 1 is label 0
        ("imagenet_r", ("n01440764/5000.jpeg", 0, "tench")),
    ],
)
def test_imagenet_variants_are_test_only_with_imagenet_names(tmp_path, name, first):
    expected = WRITERS[name](tmp_path, Counts(train=0, val=0, test=2))
    splits = load_dataset(name, tmp_path)
    assert get_dataset_info(name).test_only
    assert splits.train == [] and splits.val == []
    assert (splits.test[0].path, splits.test[0].label, splits.test[0].classname) == first
    # The label of each class in ImageNet: an ImageNet model's class parent_labels[c] is class c here.
    assert splits.parent_labels == expected.parent_labels
    assert splits.classnames == [IMAGENET_CLASSES[p][1] for p in splits.parent_labels]


def _edit_lines(path, edit) -> None:
    lines = path.read_text().splitlines()
    edit(lines)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        # A class folder that classnames.txt does not list.
        (lambda lines: lines.pop(2), r"classnames.txt does not list n01484850, a class folder in .*/train$"),
        # A listed class without a folder.
        (
            lambda lines: lines.insert(1, "n01441000 made-up fish"),
            r"classnames.txt: n01441000 \(class 1\) has no folder in .*/train$",
        ),
        (lambda lines: lines.insert(4, ""), None),  # blank lines are skipped
        (
            lambda lines: lines.__setitem__(1, "n01443537"),
            r"classnames.txt:2: expected '<wnid> <class name>'",
        ),
        (lambda lines: lines.insert(2, lines[1]), r"classnames.txt:3: n01443537 is listed twice"),
        (
            lambda lines: lines.insert(0, lines.pop(2)),
            r"classnames.txt:2: n01440764 is out of sorted order \(after n01484850\)",
        ),
    ],
)
def test_imagenet_classnames_must_match_the_class_folders(tmp_path, edit, message):
    write_imagenet(tmp_path, Counts(train=1, val=0, test=1))
    path = tmp_path / "imagenet" / "classnames.txt"
    _edit_lines(path, edit)
    if message is None:
        assert load_dataset("imagenet", tmp_path).num_classes == 4
        return
    with pytest.raises(InputError, match=message) as err:
        load_dataset("imagenet", tmp_path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_imagenet_val_folders_must_match_too(tmp_path):
    write_imagenet(tmp_path, Counts(train=1, val=0, test=1))
    val = tmp_path / "imagenet" / "images" / "val"
    shutil.rmtree(val / "n01491361")
    with pytest.raises(InputError, match=rf"n01491361 \(class 3\) has no folder in {val}$"):
        load_dataset("imagenet", tmp_path)
    shutil.rmtree(val)
    with pytest.raises(InputError, match=f"^image folder {val} does not exist$"):
        load_dataset("imagenet", tmp_path)


def test_imagenet_variant_folders_must_be_classes(tmp_path):
    write_imagenet_a(tmp_path)
    folder = tmp_path / "imagenet-adversarial"
    (folder / "imagenet-a" / "n09999999").mkdir()
    with pytest.raises(InputError, match=r"classnames.txt does not list n09999999, a class folder in"):
        load_dataset("imagenet_a", tmp_path)

    write_imagenet_v2(tmp_path)
    images = tmp_path / "imagenetv2" / "imagenetv2-matched-frequency-format-val"
    (images / "4").mkdir()
    with pytest.raises(InputError, match=r"lists 4 classes, but .* has a folder 4$"):
        load_dataset("imagenet_v2", tmp_path)
    shutil.rmtree(images / "4")
    shutil.rmtree(images / "2")
    with pytest.raises(InputError, match=r"classnames.txt: class 2 \(n01484850\) has no folder .*/2$"):
        load_dataset("imagenet_v2", tmp_path)
    (tmp_path / "imagenetv2" / "classnames.txt").unlink()
    with pytest.raises(InputError, match=r"^split file .*imagenetv2/classnames.txt does not exist$"):
        load_dataset("imagenet_v2", tmp_path)


# ---------------------------------------------------------------------------------- FGVCAircraft


def test_fgvc_labels_follow_variants_txt(tmp_path):
    write_fgvc_aircraft(tmp_path, Counts(train=2, val=1, test=1))
    splits = load_dataset("fgvc_aircraft", tmp_path)
    folder = tmp_path / "fgvc_aircraft"
    assert splits.classnames == ["707-320", "Cessna 172", "F/A-18"]
    assert [(i.path, i.label, i.classname) for i in splits.train[2:4]] == [
        ("1000002.jpg", 1, "Cessna 172"),
        ("1000003.jpg", 1, "Cessna 172"),
    ]
    assert resolve_image(splits, splits.test[0]) == folder / "images" / "1000009.jpg"
    assert splits.split_files["val"] == folder / "images_variant_val.txt"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("1000099", r"images_variant_val.txt:2: expected '<image id> <variant name>', got '1000099'"),
        ("1000099 747-400", r"images_variant_val.txt:2: variant '747-400' is not in .*variants.txt$"),
        ("../../etc/x 707-320", r"images_variant_val.txt:2: expected '<image id> <variant name>'"),
    ],
)
def test_fgvc_bad_line_names_file_and_line(tmp_path, line, message):
    write_fgvc_aircraft(tmp_path, Counts(train=1, val=1, test=1))
    path = tmp_path / "fgvc_aircraft" / "images_variant_val.txt"
    _edit_lines(path, lambda lines: lines.insert(1, line))
    with pytest.raises(InputError, match=message) as err:
        load_dataset("fgvc_aircraft", tmp_path)
    assert str(err.value).startswith(f"{path}:2: ") and "\n" not in str(err.value)


def test_fgvc_variants_and_split_files(tmp_path):
    write_fgvc_aircraft(tmp_path, Counts(train=1, val=1, test=1))
    folder = tmp_path / "fgvc_aircraft"
    _edit_lines(folder / "variants.txt", lambda lines: lines.append("707-320"))
    with pytest.raises(
        InputError, match=r"variants.txt:4: variant '707-320' is listed twice \(first at line 1\)"
    ):
        load_dataset("fgvc_aircraft", tmp_path)
    _edit_lines(folder / "variants.txt", lambda lines: lines.pop())
    (folder / "images_variant_test.txt").unlink()
    with pytest.raises(InputError, match=f"^split file {folder / 'images_variant_test.txt'} does not exist$"):
        load_dataset("fgvc_aircraft", tmp_path)
    (folder / "images_variant_test.txt").write_text("")
    (folder / "images_variant_train.txt").write_text("\n")
    with pytest.raises(InputError, match="images_variant_train.txt: the train split is empty$"):
        load_dataset("fgvc_aircraft", tmp_path)


# ---------------------------------------------------------------------------------- sizes and config


def test_sizes_know_every_registered_real_dataset():
    real = [name for name in list_datasets() if get_dataset_info(name).source is None]
    assert set(SIZES) >= set(real)
    for name in real:
        if name in WRITERS:
            assert get_dataset_info(name).test_only == (name not in PAPER_DATASETS)


@pytest.mark.parametrize("name", ["imagenet", "fgvc_aircraft", "dtd"])
def test_smallest_train_class_is_counted_and_capped(tmp_path, name):
    WRITERS[name](tmp_path, Counts(train=3, val=1, test=1))
    assert smallest_train_class(name, tmp_path) == 3
    assert smallest_train_class(name, tmp_path, cap=16) == 3  # exact below the cap
    assert smallest_train_class(name, tmp_path, cap=2) == 2  # "at least 2"
    assert smallest_train_class(name, tmp_path / "elsewhere") is None  # not there yet: not checked


def test_a_variant_missing_from_train_is_a_class_with_no_train_images(tmp_path):
    write_fgvc_aircraft(tmp_path, Counts(train=2, val=1, test=1))
    _edit_lines(tmp_path / "fgvc_aircraft" / "variants.txt", lambda lines: lines.append("747-400"))
    assert smallest_train_class("fgvc_aircraft", tmp_path) == 0


def test_config_refuses_few_shot_runs_on_test_only_datasets_and_counts_imagenet(tmp_path):
    root = make_root(tmp_path, ["imagenet", "imagenet_a"], Counts(train=3, val=0, test=1))
    config = {
        "results": str(tmp_path / "results"),
        "data_root": str(root),
        "datasets": ["imagenet", "imagenet_a"],
        "shots": [1, 2],
        "seeds": [1],
        "backbones": ["zeroshot"],
        "encoder": {"model": "demo-vit-t-28", "pretrained": None},
    }
    with pytest.raises(InputError, match=r"^key 'datasets': 'imagenet_a' is test-only \(no train split"):
        load_workflow_config(config, SCHEMA, PRESETS)
    config["datasets"] = ["imagenet"]
    assert load_workflow_config(config, SCHEMA, PRESETS)["datasets"] == ["imagenet"]
    config["shots"] = [1, 4]
    with pytest.raises(
        InputError, match="key 'shots': 4 shots, but the smallest class of imagenet has 3 train"
    ):
        load_workflow_config(config, SCHEMA, PRESETS)
