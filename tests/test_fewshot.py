"""Tests for few-shot sampling, the few-shot split file and the sample_shots CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import sample_shots
from pipeline.core.errors import InputError
from pipeline.data.coop import DatasetSplits, Item
from pipeline.data.fewshot import (
    SAMPLING_VERSION,
    FewShotSplit,
    read_split_file,
    sample_fewshot,
    write_split_file,
)


def make_splits(train_counts: list[int], val_counts: list[int] | None, name: str = "dtd") -> DatasetSplits:
    """In-memory splits; class c has ``train_counts[c]`` train and ``val_counts[c]`` val items."""
    classnames = [f"class {c}" for c in range(len(train_counts))]

    def items(counts: list[int], key: str) -> list[Item]:
        return [
            Item(f"{key}/{c}/{i}.png", c, classnames[c]) for c in range(len(counts)) for i in range(counts[c])
        ]

    return DatasetSplits(
        name=name,
        image_root=Path("/nonexistent"),
        classnames=classnames,
        train=items(train_counts, "train"),
        val=items(val_counts, "val") if val_counts else [],
        test=items([2] * len(train_counts), "test"),
    )


def per_class(items: list[Item]) -> Counter:
    return Counter(item.label for item in items)


@pytest.mark.parametrize("shot", [1, 2, 4, 8, 16])
def test_k_train_and_min_k_4_val_per_class(shot):
    splits = make_splits([30] * 5, [10] * 5)
    fewshot = sample_fewshot(splits, shot, seed=1)
    assert per_class(fewshot.train) == {c: shot for c in range(5)}
    assert per_class(fewshot.val) == {c: min(shot, 4) for c in range(5)}
    assert set(fewshot.train) <= set(splits.train)
    assert set(fewshot.val) <= set(splits.val)
    assert len(set(fewshot.train)) == len(fewshot.train)  # no repetition
    assert len(set(fewshot.val)) == len(fewshot.val)
    assert [i.label for i in fewshot.train] == sorted(i.label for i in fewshot.train)  # label order


def test_class_with_fewer_images_keeps_all():
    splits = make_splits([30, 3, 30], [10, 1, 10])
    fewshot = sample_fewshot(splits, 8, seed=2)
    assert per_class(fewshot.train) == {0: 8, 1: 3, 2: 8}
    assert per_class(fewshot.val) == {0: 4, 1: 1, 2: 4}
    assert [i for i in fewshot.train if i.label == 1] == [i for i in splits.train if i.label == 1]


def test_deterministic_per_seed_and_seeds_differ():
    splits = make_splits([40] * 6, [12] * 6)
    a = sample_fewshot(splits, 4, seed=1)
    assert sample_fewshot(splits, 4, seed=1) == a
    b = sample_fewshot(splits, 4, seed=2)
    assert set(a.train) != set(b.train)
    assert set(a.val) != set(b.val)


def test_no_val_split_draws_val_from_unused_train():
    splits = make_splits([20, 20, 5], None)
    fewshot = sample_fewshot(splits, 4, seed=3)
    assert per_class(fewshot.train) == {0: 4, 1: 4, 2: 4}
    # Class 2 has 5 train images: 4 go to train, only 1 is left for val.
    assert per_class(fewshot.val) == {0: 4, 1: 4, 2: 1}
    assert set(fewshot.val) <= set(splits.train)
    assert not set(fewshot.val) & set(fewshot.train)


def test_sampling_ignores_python_hash_seed():
    root, tests = str(Path(__file__).parents[1]), str(Path(__file__).parent)
    code = (
        f"import sys; sys.path[:0] = [{root!r}, {tests!r}];"
        "from test_fewshot import make_splits; from pipeline.data.fewshot import sample_fewshot;"
        "f = sample_fewshot(make_splits([25] * 4, None), 3, seed=7);"
        "print([i.path for i in f.train + f.val])"
    )
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        run = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert "train/3/" in run.stdout
        outputs.add(run.stdout)
    assert len(outputs) == 1


def test_bad_shot():
    with pytest.raises(InputError, match="shot must be a positive integer"):
        sample_fewshot(make_splits([5], [2]), 0, seed=1)
    with pytest.raises(InputError, match="seed must be a non-negative integer"):
        sample_fewshot(make_splits([5], [2]), 1, seed=-1)


def test_split_file_round_trip(tmp_path):
    splits = make_splits([10] * 3, [5] * 3)
    fewshot = sample_fewshot(splits, 2, seed=1)
    path = tmp_path / "sub" / "shots.json"
    write_split_file(path, "dtd", 2, 1, fewshot)
    data = json.loads(path.read_text())
    assert (data["dataset"], data["shot"], data["seed"], data["sampling_version"]) == (
        "dtd",
        2,
        1,
        SAMPLING_VERSION,
    )
    assert data["train"][0] == [fewshot.train[0].path, fewshot.train[0].label, fewshot.train[0].classname]
    assert read_split_file(path, splits) == fewshot
    assert read_split_file(path, splits, shot=2, seed=1) == fewshot
    assert [p.name for p in path.parent.iterdir()] == ["shots.json"]  # no temporary left behind


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["train"].__setitem__(0, ["train/0/0.png", 0, "class 9"]), "names an unknown class"),
        (lambda d: d["val"].__setitem__(0, ["val/0/0.png", 9, "class 9"]), "names an unknown class"),
        (
            lambda d: d["train"].__setitem__(0, ["elsewhere.png", 0, "class 0"]),
            "is not in the train or val split",
        ),
        (lambda d: d["train"].append(list(d["train"][0])), "is listed twice"),
        (lambda d: d.update(dataset="eurosat"), "dataset is 'eurosat', expected 'dtd'"),
        (lambda d: d.update(sampling_version=0), "sampling_version is 0"),
        (lambda d: d.pop("seed"), "missing key 'seed'"),
        (lambda d: d.update(train=[["a", 0]]), r"train\[0\]: expected \[path, label, classname\]"),
    ],
)
def test_split_file_is_checked_against_the_dataset(tmp_path, edit, message):
    splits = make_splits([10] * 3, [5] * 3)
    path = tmp_path / "shots.json"
    write_split_file(path, "dtd", 2, 1, sample_fewshot(splits, 2, seed=1))
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=message) as err:
        read_split_file(path, splits)
    assert str(path) in str(err.value)


def test_split_file_header_must_match_shot_and_seed(tmp_path):
    splits = make_splits([10] * 3, [5] * 3)
    path = tmp_path / "shots.json"
    write_split_file(path, "dtd", 2, 1, FewShotSplit(train=splits.train[:2], val=[]))
    with pytest.raises(InputError, match="seed is 1, expected 3"):
        read_split_file(path, splits, seed=3)
    with pytest.raises(InputError, match="does not exist"):
        read_split_file(tmp_path / "absent.json", splits)


def write_dtd(root: Path) -> None:
    """A tiny dtd dataset with real PNG files (random pixels), 3 classes."""
    rng = np.random.default_rng(0)
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for key, n in (("train", 5), ("val", 2), ("test", 1)):
        for label, cname in enumerate(("banded", "bumpy", "zig_zagged")):
            for i in range(n):
                rel = f"{cname}/{key}_{i}.png"
                (root / "dtd" / "images" / cname).mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(
                    root / "dtd" / "images" / rel
                )
                split[key].append([rel, label, cname])
    (root / "dtd" / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))


def test_sample_shots_main(tmp_path, capsys):
    write_dtd(tmp_path)
    out = tmp_path / "shots" / "dtd_2_1.json"
    argv = ["--dataset", "dtd", "--data-root", str(tmp_path), "--shot", "2", "--seed", "1", "--out", str(out)]
    assert sample_shots.main(argv) == 0
    data = json.loads(out.read_text())
    assert len(data["train"]) == 6 and len(data["val"]) == 6
    assert {row[2] for row in data["train"]} == {"banded", "bumpy", "zig zagged"}
    assert data["sampler"] == "dassl"  # the default: CoOp's draw
    numpy_file = tmp_path / "shots" / "dtd_2_1_numpy.json"
    assert sample_shots.main([*argv[:-1], str(numpy_file), "--sampler", "numpy"]) == 0
    assert json.loads(numpy_file.read_text())["sampler"] == "numpy"

    # A sampled image that is missing: exit code 2 and one line naming the split file.
    for row in data["train"]:
        (tmp_path / "dtd" / "images" / row[0]).unlink()
    assert sample_shots.main(argv) == 2
    assert "names a missing image" in capsys.readouterr().err
    assert sample_shots.main([*argv[:2], "--data-root", str(tmp_path / "none"), *argv[4:]]) == 2
    assert f"data root {tmp_path / 'none'} does not exist" in capsys.readouterr().err


def _dassl_reference(train: list[Item], val: list[Item], shot: int, seed: int) -> tuple[list, list]:
    """CoOp's draw as Dassl writes it: random.seed(seed) once (CoOp's set_random_seed), then
    generate_fewshot_dataset on train with k = shot and on val with k = min(shot, 4): items split
    by label into a dict (labels in order of first appearance), random.sample(items, k) for each
    label with at least k items, all items otherwise."""
    import random
    from collections import defaultdict

    random.seed(seed)
    out = []
    for source, k in ((train, shot), (val, min(shot, 4))):
        tracker = defaultdict(list)
        for item in source:
            tracker[item.label].append(item)
        dataset = []
        for items in tracker.values():
            dataset.extend(random.sample(items, k) if len(items) >= k else items)
        out.append(dataset)
    return out[0], out[1]


@pytest.mark.parametrize("seed", [1, 2, 3, 17])
@pytest.mark.parametrize("shot", [1, 2, 4, 8, 16])
def test_dassl_sampler_draws_coops_images_in_coops_order(shot, seed):
    splits = make_splits([20, 9, 30, 16, 5], [6, 2, 8, 4, 3])
    # Labels first appear out of order in a real split file (e.g. sorted by image name): shuffle.
    rng = np.random.default_rng(0)
    order = rng.permutation(len(splits.train))
    splits = DatasetSplits(
        splits.name, splits.image_root, splits.classnames,
        [splits.train[i] for i in order], splits.val[::-1], splits.test,
    )  # fmt: skip
    fewshot = sample_fewshot(splits, shot, seed, sampler="dassl")
    assert (fewshot.train, fewshot.val) == _dassl_reference(splits.train, splits.val, shot, seed)
    assert per_class(fewshot.train) == {c: min(shot, n) for c, n in enumerate([20, 9, 30, 16, 5])}


def test_samplers_differ_and_an_unknown_one_is_one_line():
    splits = make_splits([20, 20], [5, 5])
    assert sample_fewshot(splits, 4, 1, "dassl").train != sample_fewshot(splits, 4, 1, "numpy").train
    with pytest.raises(InputError, match=r"unknown sampler 'coop' \(choose from numpy, dassl\)"):
        sample_fewshot(splits, 4, 1, "coop")
