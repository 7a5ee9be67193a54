"""Smoke tests for the linear-probe stage CLI on a tiny cache."""

from __future__ import annotations

import json

import numpy as np

from pipeline.features.cache import write_fewshot_cache, write_test_cache
from pipeline.report.records import read_record
from pipeline.train_probe import main

ATTRS = {
    "backbone": "zeroshot",
    "dataset": "toy",
    "model": "demo-vit-t-28",
    "pretrained": "",
    "templates": ["a photo of a {}."],
    "config": {},
}


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _write_caches(tmp_path, n_classes=3, dim=16, shot=2, seed=1):
    rng = np.random.default_rng(0)
    centers = 3.0 * rng.standard_normal((n_classes, dim))

    def sample(n_per_class, views=None):
        shape = (n_per_class * n_classes, dim) if views is None else (n_per_class * n_classes, views, dim)
        y = np.repeat(np.arange(n_classes), n_per_class)
        noise = 0.3 * rng.standard_normal(shape)
        base = centers[y] if views is None else centers[y][:, None, :]
        return _normalise(base + noise), y

    train_x, train_y = sample(shot, views=3)
    val_x, val_y = sample(2)
    test_x, test_y = sample(20)
    fewshot, test = tmp_path / "fewshot.h5", tmp_path / "test.h5"
    write_fewshot_cache(
        fewshot,
        train_x=train_x,
        train_y=train_y,
        train_paths=[f"tr{i}.jpg" for i in range(len(train_y))],
        val_x=val_x,
        val_y=val_y,
        val_paths=[f"va{i}.jpg" for i in range(len(val_y))],
        text=_normalise(centers),
        classnames=[f"class {i}" for i in range(n_classes)],
        attrs={**ATTRS, "shot": shot, "seed": seed},
    )
    write_test_cache(
        test,
        features=test_x,
        labels=test_y,
        paths=[f"te{i}.jpg" for i in range(len(test_y))],
        attrs=ATTRS,
    )
    return fewshot, test


def _argv(fewshot, test, out, dataset="toy"):
    return [
        "--fewshot",
        str(fewshot),
        "--test",
        str(test),
        "--dataset",
        dataset,
        "--shot",
        "2",
        "--seed",
        "1",
        "--backbone",
        "zeroshot",
        "--expect",
        json.dumps({"model": "demo-vit-t-28"}),
        "--config",
        json.dumps({"search_steps": 3, "c_grid": [100.0, 1.0, 0.01]}),
        "--threads",
        "1",
        "--out",
        str(out),
    ]


def test_main_writes_the_result_json(tmp_path):
    fewshot, test = _write_caches(tmp_path)
    out = tmp_path / "res" / "probe.json"
    assert main(_argv(fewshot, test, out)) == 0
    res = read_record(out)  # the shared result-record envelope
    assert res["stage"] == "linear_probe"
    assert (res["backbone"], res["dataset"], res["shot"], res["seed"]) == ("zeroshot", "toy", 2, 1)
    assert (res["info"]["n_train"], res["info"]["n_val"], res["info"]["n_test"]) == (6, 6, 60)
    (probe,) = res["results"]
    assert (probe["method"], probe["role"], probe["label"]) == ("linear_probe", "primary", "linear probe")
    assert probe["test_acc"] > 90.0 and 0.0 <= probe["val_acc"] <= 100.0
    assert res["config"] == {"c_grid": [100.0, 1.0, 0.01], "search_steps": 3, "max_iter": 1000}
    assert probe["info"]["C"] in [c for c, _ in res["info"]["search"]]
    assert res["timing"]["train_seconds"] >= 0.0
    assert [p.name for p in out.parent.iterdir()] == ["probe.json"]  # no temporary left behind


def test_mismatched_dataset_exits_2_and_writes_nothing(tmp_path, capsys):
    fewshot, test = _write_caches(tmp_path)
    out = tmp_path / "res" / "probe.json"
    assert main(_argv(fewshot, test, out, dataset="other")) == 2
    err = capsys.readouterr().err
    assert "dataset" in err and "fewshot.h5" in err
    assert not out.exists()


def test_bad_config_key_exits_2(tmp_path, capsys):
    fewshot, test = _write_caches(tmp_path)
    out = tmp_path / "probe.json"
    argv = _argv(fewshot, test, out)
    argv[argv.index("--config") + 1] = '{"grid": [1.0]}'
    assert main(argv) == 2
    assert "grid" in capsys.readouterr().err
    assert not out.exists()
