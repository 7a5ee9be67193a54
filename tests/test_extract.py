"""The extraction stage: caches on a real demo dataset, view determinism, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.data.coop import load_dataset
from pipeline.extract import main
from pipeline.features.cache import load_features

ENCODER = {"model": "demo-vit-t-28", "pretrained": None}
TEMPLATES = ["a photo of the digit {}."]


def error_lines(capsys: pytest.CaptureFixture) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def run(demo: Path, out: Path, kind: str, *extra: str, views: int = 2) -> int:
    config = {"encoder": ENCODER}
    args = ["--backbone", "zeroshot", "--dataset", "demo_digits", "--data-root", str(demo)]
    if kind == "fewshot":
        config |= {"extraction": {"views": views}, "templates": TEMPLATES}
        args += ["--split-file", str(demo / "split.json"), "--shot", "2", "--seed", "1"]
    return main([*args, "--config", json.dumps(config), "--device", "cpu", "--out", str(out), *extra])


def test_test_and_fewshot_caches_round_trip(demo: Path, tmp_path: Path) -> None:
    assert run(demo, tmp_path / "test.h5", "test") == 0
    assert run(demo, tmp_path / "fs.h5", "fewshot") == 0
    feats = load_features(
        tmp_path / "fs.h5",
        tmp_path / "test.h5",
        expect={
            "dataset": "demo_digits",
            "shot": 2,
            "seed": 1,
            "backbone": "zeroshot",
            "templates": TEMPLATES,
        },
    )
    assert feats.train_x.shape == (20, 3, 128)  # 2 shots x 10 classes, center + 2 views
    assert feats.val_x.shape == (20, 128)
    assert feats.test_x.shape == (540, 128)
    assert feats.text.shape == (10, 128) and feats.classnames[7] == "seven"
    np.testing.assert_allclose(np.linalg.norm(feats.train_x, axis=-1), 1.0, atol=1e-5)
    # Augmented views differ from the center view; the center view equals eval preprocessing.
    assert not np.allclose(feats.train_x[:, 0], feats.train_x[:, 1])
    assert feats.attrs["n_views"] == 2 and feats.attrs["model"] == "demo-vit-t-28"


def test_views_do_not_depend_on_runtime_knobs(demo: Path, tmp_path: Path) -> None:
    assert run(demo, tmp_path / "a.h5", "fewshot", "--batch-size", "256") == 0
    assert run(demo, tmp_path / "b.h5", "fewshot", "--batch-size", "7", "--workers", "2") == 0
    with h5py.File(tmp_path / "a.h5", "r") as a, h5py.File(tmp_path / "b.h5", "r") as b:
        np.testing.assert_allclose(a["train/features"][()], b["train/features"][()], atol=1e-5)


def test_corrupt_image_fails_naming_it_and_writes_nothing(
    demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    splits = load_dataset("demo_digits", demo)
    victim = demo / "demo_digits" / "images" / splits.test[3].path
    original = victim.read_bytes()
    try:
        victim.write_bytes(original[:20])
        assert run(demo, tmp_path / "test.h5", "test") == 2
    finally:
        victim.write_bytes(original)
    err = error_lines(capsys)
    assert len(err) == 1 and victim.name in err[0]
    assert list(tmp_path.iterdir()) == []


def test_missing_data_root_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(tmp_path / "nowhere", tmp_path / "t.h5", "test") == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "nowhere" in err[0]
    assert not (tmp_path / "t.h5").exists()


def test_bad_config_type_names_the_key(demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = {"encoder": ENCODER, "extraction": {"views": "four"}, "templates": TEMPLATES}
    code = main(
        [
            "--backbone",
            "zeroshot",
            "--dataset",
            "demo_digits",
            "--data-root",
            str(demo),
            "--split-file",
            str(demo / "split.json"),
            "--shot",
            "2",
            "--seed",
            "1",
            "--config",
            json.dumps(bad),
            "--out",
            str(tmp_path / "x.h5"),
        ]
    )
    assert code == 2 and "extraction.views" in capsys.readouterr().err
