"""HDF5 cache round trips (static and per-image texts, per-run test files) and damaged files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from pipeline.core.errors import InputError
from pipeline.features.cache import load_features, load_fewshot, write_fewshot_cache, write_test_cache

RUN = {"dataset": "toy", "shot": 2, "seed": 1}
ATTRS = {"backbone": "zeroshot", "dataset": "toy", "model": "m", "pretrained": "", "config": {}}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def write_pair(tmp_path, *, per_image=False, backbone="zeroshot", image_source=None, run_test=False):
    rng = np.random.default_rng(0)
    train_x = _unit(rng.normal(size=(6, 3, 8)))
    common = {**ATTRS, "backbone": backbone, "image_source": image_source or backbone}
    write_fewshot_cache(
        tmp_path / "fs.h5",
        train_x=train_x,
        train_y=np.array([0, 0, 1, 1, 2, 2]),
        train_paths=[f"ç/{i}.png" for i in range(6)],  # non-ASCII survives
        val_x=_unit(rng.normal(size=(3, 8))),
        val_y=np.array([0, 1, 2]),
        val_paths=["a", "b", "c"],
        text=None if per_image else _unit(rng.normal(size=(3, 8))),
        classnames=["cat", "dog", "ünï"],
        attrs={**common, "shot": 2, "seed": 1, "templates": ["{}"], "forwards": {"image": 21}},
        train_targets=_unit(rng.normal(size=(6, 3, 8))) if per_image else None,
    )
    test_attrs = {
        **common,
        "backbone": image_source or backbone,
        **({"shot": 2, "seed": 1} if run_test else {}),
    }
    write_test_cache(
        tmp_path / "test.h5",
        features=_unit(rng.normal(size=(5, 8))),
        labels=np.array([0, 1, 2, 0, 1]),
        paths=[str(i) for i in range(5)],
        attrs=test_attrs,
    )
    return tmp_path / "fs.h5", tmp_path / "test.h5"


def test_static_round_trip(tmp_path) -> None:
    fs, test = write_pair(tmp_path)
    feats = load_features(fs, test, expect={**RUN, "backbone": "zeroshot"})
    assert feats.train_x.shape == (6, 3, 8) and feats.text.shape == (3, 8) and feats.train_targets is None
    assert feats.classnames == ["cat", "dog", "ünï"] and feats.train_paths[0] == "ç/0.png"
    assert feats.attrs["text_kind"] == "static" and feats.attrs["forwards"] == {"image": 21}
    assert feats.test_x.shape == (5, 8) and feats.dim == 8 and feats.n_classes == 3


def test_per_image_texts_and_reused_image_source(tmp_path) -> None:
    fs, test = write_pair(tmp_path, per_image=True, backbone="cocoop", image_source="zeroshot")
    feats = load_features(fs, test, expect={**RUN, "backbone": "cocoop"})
    assert feats.text is None and feats.train_targets.shape == (6, 3, 8)
    assert feats.attrs["image_source"] == "zeroshot"


def test_per_run_test_file_must_match_the_run(tmp_path) -> None:
    fs, test = write_pair(tmp_path, backbone="clip_adapter", run_test=True)
    assert load_features(fs, test, expect=RUN).test_y.shape == (5,)
    with h5py.File(test, "a") as f:
        f.attrs["seed"] = 2
    with pytest.raises(InputError, match="'seed'"):
        load_features(fs, test, expect=RUN)


def test_test_file_of_other_image_features_is_refused(tmp_path) -> None:
    fs, _ = write_pair(tmp_path, backbone="coop", image_source="zeroshot")
    (tmp_path / "x").mkdir()
    _, other = write_pair(tmp_path / "x", backbone="clip_lora")
    with pytest.raises(InputError, match="'backbone' is 'clip_lora' but the config expects 'zeroshot'"):
        load_features(fs, other, expect=RUN)


def test_damaged_strings_fail_in_one_line(tmp_path) -> None:
    fs, test = write_pair(tmp_path)
    with h5py.File(fs, "a") as f:
        raw = f["classnames"][()]
        raw[:3] = 0xFF  # not UTF-8 any more
        f["classnames"][...] = raw
    with pytest.raises(InputError, match="corrupt 'classnames'"):
        load_fewshot(fs, expect=RUN)


def test_truncated_file_is_an_input_error(tmp_path) -> None:
    fs, test = write_pair(tmp_path)
    data = fs.read_bytes()
    fs.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="fs.h5"):
        load_features(fs, test, expect=RUN)
