"""Stage train_fma: the result record, the checkpoint, the variant, CV, and one-line errors (incl. online)."""

import json

import numpy as np
import pytest
import torch

from pipeline.data.coop import load_dataset
from pipeline.data.fewshot import sample_fewshot, write_split_file
from pipeline.demo.datasets import build_demo_dataset
from pipeline.extract import main as extract_main
from pipeline.features.cache import read_attrs, write_fewshot_cache, write_test_cache
from pipeline.methods.fma.checkpoint import load_velocity
from pipeline.methods.fma.velocity import VelocityNet
from pipeline.report.records import read_record
from pipeline.train_fma import main

ATTRS = {
    "backbone": "zeroshot",
    "dataset": "toy",
    "model": "demo-vit-t-28",
    "pretrained": "",
    "templates": ["a photo of a {}."],
    "config": {"views": 1},
}
INFO_KEYS = {
    "n_train", "n_val", "n_test", "n_views", "train_views", "online", "text_mean_cosine", "device",
    "selected_m", "oracle_m", "cv_m", "final_loss", "loss_history", "noise", "mean_image_text_distance",
}  # fmt: skip


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _write_caches(tmp_path, shot: int = 2, seed: int = 1):
    rng = np.random.default_rng(0)
    classes, dim = 3, 8
    text = _unit(rng.normal(size=(classes, dim)))
    train_y = np.repeat(np.arange(classes), shot)
    val_y = np.arange(classes)
    test_y = np.repeat(np.arange(classes), 4)
    fewshot, test = tmp_path / "fewshot.h5", tmp_path / "test.h5"
    write_fewshot_cache(
        fewshot,
        train_x=_unit(text[train_y][:, None] + 0.5 * rng.normal(size=(len(train_y), 2, dim))),
        train_y=train_y,
        train_paths=[f"tr{i}.jpg" for i in range(len(train_y))],
        val_x=_unit(text[val_y] + 0.5 * rng.normal(size=(len(val_y), dim))),
        val_y=val_y,
        val_paths=[f"va{i}.jpg" for i in range(len(val_y))],
        text=text,
        classnames=["a", "b", "c"],
        attrs={**ATTRS, "shot": shot, "seed": seed},
    )
    write_test_cache(
        test,
        features=_unit(text[test_y] + 0.5 * rng.normal(size=(len(test_y), dim))),
        labels=test_y,
        paths=[f"te{i}.jpg" for i in range(len(test_y))],
        attrs=ATTRS,
    )
    return fewshot, test


def _argv(fewshot, test, out, shot: int = 2) -> list[str]:
    expect = {k: ATTRS[k] for k in ("model", "pretrained", "templates")}
    return [
        "--fewshot", str(fewshot), "--test", str(test),
        "--dataset", "toy", "--shot", str(shot), "--seed", "1", "--backbone", "zeroshot",
        "--expect", json.dumps(expect),
        "--config", json.dumps({"epochs": 3, "blocks": 1, "batch_size": 4, "max_steps": 4}),
        "--device", "cpu", "--threads", "1",
        "--metrics", str(out / "metrics.json"), "--checkpoint", str(out / "fma.pt"),
    ]  # fmt: skip


def test_main_writes_the_record_and_checkpoint(tmp_path):
    fewshot, test = _write_caches(tmp_path)
    out = tmp_path / "out"
    assert main(_argv(fewshot, test, out)) == 0

    record = read_record(out / "metrics.json")  # the record shape is checked on reading
    assert (record["stage"], record["backbone"], record["dataset"], record["shot"], record["seed"]) == (
        "fma", "zeroshot", "toy", 2, 1,
    )  # fmt: skip
    assert record["variant"] is None
    curves = record["curves"]
    assert curves["x"] == "step" and curves["step"] == [0, 1, 2, 3, 4]
    assert {k: len(v) for k, v in curves.items() if k != "x"} == dict.fromkeys(
        ("step", "val_acc", "test_acc", "val_dist", "test_dist"), 5
    )
    results = {r["method"]: r for r in record["results"]}
    assert list(results) == [
        "backbone",
        "fma",
        "fma_argmax",
        "fma_full",
        "fma_oracle",
        "fma_ensemble",
    ]  # no CV
    m = record["info"]["selected_m"]
    assert results["fma"]["info"] == {"m": m} and results["fma"]["role"] == "primary"
    assert results["fma"]["plug_and_play"] is True and results["fma"]["label"] == "FMA"
    assert curves["val_acc"][m] == max(curves["val_acc"]) == results["fma"]["val_acc"]
    assert min(i for i, a in enumerate(curves["val_acc"]) if a == max(curves["val_acc"])) == m
    assert results["fma"]["test_acc"] == curves["test_acc"][m]
    assert (
        results["backbone"]["role"] == "baseline" and results["backbone"]["test_acc"] == curves["test_acc"][0]
    )
    assert (
        results["fma_full"]["info"] == {"m": 4} and results["fma_full"]["test_acc"] == curves["test_acc"][4]
    )
    oracle = record["info"]["oracle_m"]
    assert (
        results["fma_oracle"]["role"] == "diagnostic"
        and results["fma_oracle"]["test_acc"] == max(curves["test_acc"]) == curves["test_acc"][oracle]
    )
    assert results["fma_ensemble"]["role"] == "variant"
    assert results["fma_ensemble"]["info"] == {"steps": [0, 4], "temperature": 100.0}  # 8 > max_steps
    assert set(record["info"]) == INFO_KEYS
    info = record["info"]
    assert (info["n_train"], info["n_val"], info["n_test"], info["n_views"]) == (6, 3, 12, 1)
    assert len(info["loss_history"]) == 3 and info["final_loss"] == info["loss_history"][-1]
    assert info["train_views"] == 1 and info["online"] is False and info["noise"] == "none"  # all views
    assert set(record["timing"]) == {"train_seconds", "online_encode_seconds", "eval_seconds"}
    assert record["timing"]["online_encode_seconds"] == 0.0
    assert record["config"]["epochs"] == 3 and record["config"]["time_scale"] == 1.0

    state = torch.load(out / "fma.pt", weights_only=True)
    assert state["dim"] == 8 and state["blocks"] == 1 and state["selected_m"] == m
    assert state["step_size"] == 0.1 and state["config"]["max_steps"] == 4 and state["time_scale"] == 1.0
    net, cfg = load_velocity(out / "fma.pt")
    assert isinstance(net, VelocityNet) and cfg.epochs == 3
    assert net(torch.zeros(2, 8), torch.zeros(2)).shape == (2, 8)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temporaries left


def test_cv_adds_a_result_a_curve_and_its_time(tmp_path):
    fewshot, test = _write_caches(tmp_path, shot=3)
    out = tmp_path / "out"
    argv = _set_config(_argv(fewshot, test, out, shot=3), cv_folds=3, noise="paper")
    assert main(argv) == 0
    record = read_record(out / "metrics.json")
    cv = record["results"][-1]
    assert cv["method"] == "fma_cv" and cv["role"] == "variant" and cv["info"]["folds"] == 3
    m = cv["info"]["m"]
    acc = record["curves"]["cv_acc"]
    assert m == record["info"]["cv_m"] == min(i for i, a in enumerate(acc) if a == max(acc))
    assert cv["test_acc"] == record["curves"]["test_acc"][m]
    assert record["timing"]["cv_seconds"] > 0
    assert "within-class" in record["info"]["sigma2_source"]


def test_main_attribute_mismatch_exits_2_without_output(tmp_path, capsys):
    fewshot, test = _write_caches(tmp_path, shot=2)
    out = tmp_path / "out"
    assert main(_argv(fewshot, test, out, shot=4)) == 2
    assert "shot" in capsys.readouterr().err
    assert not (out / "metrics.json").exists() and not (out / "fma.pt").exists()


def test_main_bad_config_key_exits_2(tmp_path, capsys):
    fewshot, test = _write_caches(tmp_path)
    argv = _argv(fewshot, test, tmp_path / "out")
    argv[argv.index("--config") + 1] = '{"epoch": 3}'
    assert main(argv) == 2
    assert "fma.epoch" in capsys.readouterr().err


def _set_config(argv: list[str], **changes) -> list[str]:
    argv = list(argv)
    i = argv.index("--config") + 1
    argv[i] = json.dumps({**json.loads(argv[i]), **changes})
    return argv


def test_train_views_and_variant_are_recorded(tmp_path):
    fewshot, test = _write_caches(tmp_path)
    out = tmp_path / "out"
    argv = _set_config(_argv(fewshot, test, out), train_views=0) + ["--variant", "center-only"]
    assert main(argv) == 0
    record = read_record(out / "metrics.json")
    assert record["info"]["train_views"] == 0 and record["variant"] == "center-only"
    assert record["config"]["train_views"] == 0
    argv = _set_config(_argv(fewshot, test, out), train_views=None)
    assert main(argv) == 0
    assert read_record(out / "metrics.json")["info"]["train_views"] == 1


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"paper_noise_scale": -1.0}, "fma.paper_noise_scale"),
        ({"interpolant_noise_std": -0.1}, "fma.interpolant_noise_std"),
        ({"noise_scale": 1.0}, "fma.noise_scale"),  # the old ambiguous key is gone
        ({"cv_folds": 1}, "fma.cv_folds"),
        ({"ensemble_steps": [11]}, "fma.ensemble_steps"),
    ],
)
def test_bad_fma_config_exits_2_with_one_line(tmp_path, capsys, change, key):
    fewshot, test = _write_caches(tmp_path)
    assert main(_set_config(_argv(fewshot, test, tmp_path / "out"), **change)) == 2
    err = capsys.readouterr().err.strip()
    assert key in err and len(err.splitlines()) == 1


def test_train_views_beyond_the_cache_exits_2(tmp_path, capsys):
    fewshot, test = _write_caches(tmp_path)  # one augmented view per image
    out = tmp_path / "out"
    assert main(_set_config(_argv(fewshot, test, out), train_views=2)) == 2
    err = capsys.readouterr().err
    assert "fma.train_views" in err and "fewshot.h5" in err
    assert not (out / "metrics.json").exists()


# ---------------------------------------------------------------------------------------------- online

ONLINE_ENCODER = {"model": "demo-vit-t-28", "pretrained": None}


@pytest.fixture(scope="module")
def online_caches(tmp_path_factory):
    """A real few-shot cache of demo_digits (2 shots, 1 view) by the extraction stage; a synthetic test
    file with the same attributes (encoding the 540 test images would only cost time)."""
    root = tmp_path_factory.mktemp("online")
    build_demo_dataset("demo_digits", root / "demo_digits")
    splits = load_dataset("demo_digits", root)
    write_split_file(root / "split.json", "demo_digits", 2, 1, sample_fewshot(splits, 2, 1))
    config = {
        "encoder": ONLINE_ENCODER,
        "extraction": {"views": 1},
        "templates": ["a photo of the digit {}."],
    }
    fewshot = root / "fewshot.h5"
    code = extract_main(
        [
            "--backbone", "zeroshot", "--dataset", "demo_digits",
            "--data-root", str(root), "--split-file", str(root / "split.json"), "--shot", "2",
            "--seed", "1", "--config", json.dumps(config), "--device", "cpu", "--out", str(fewshot),
        ]
    )  # fmt: skip
    assert code == 0
    attrs = read_attrs(fewshot)
    rng = np.random.default_rng(0)
    test_y = np.repeat(np.arange(10), 2)
    write_test_cache(
        root / "test.h5",
        features=_unit(rng.normal(size=(len(test_y), 128))),
        labels=test_y,
        paths=[f"te{i}.png" for i in range(len(test_y))],
        attrs={k: attrs[k] for k in ("backbone", "dataset", "model", "pretrained", "config")},
    )
    return root, fewshot, root / "test.h5", config


def _online_argv(online_caches, out, encoder=ONLINE_ENCODER) -> list[str]:
    root, fewshot, test, config = online_caches
    online = {"encoder": encoder, "extraction": config["extraction"]}
    return [
        "--fewshot", str(fewshot), "--test", str(test),
        "--dataset", "demo_digits", "--shot", "2", "--seed", "1", "--backbone", "zeroshot",
        "--config", json.dumps({"epochs": 2, "blocks": 1, "batch_size": 8, "max_steps": 2, "online": True}),
        "--data-root", str(root), "--online-config", json.dumps(online), "--online-batch-size", "7",
        "--device", "cpu", "--metrics", str(out / "metrics.json"), "--checkpoint", str(out / "fma.pt"),
    ]  # fmt: skip


def test_online_training_records_encoding_time(online_caches, tmp_path):
    out = tmp_path / "out"
    assert main(_online_argv(online_caches, out)) == 0
    record = read_record(out / "metrics.json")
    info, timing = record["info"], record["timing"]
    assert info["online"] is True and info["train_views"] is None
    assert 0 < timing["online_encode_seconds"] <= timing["train_seconds"]
    assert len(info["loss_history"]) == 2 and np.isfinite(info["loss_history"]).all()
    assert info["n_train"] == 20 and record["config"]["online"] is True


def test_online_needs_the_cache_encoder_and_the_images(online_caches, tmp_path, capsys):
    out = tmp_path / "out"
    other = {"model": "demo-vit-t-28", "pretrained": "openai"}
    assert main(_online_argv(online_caches, out, encoder=other)) == 2
    err = capsys.readouterr().err
    assert "pretrained" in err and "fewshot.h5" in err
    argv = _online_argv(online_caches, out)
    i = argv.index("--data-root")
    assert main(argv[:i] + argv[i + 2 :]) == 2
    assert "--data-root" in capsys.readouterr().err
    assert not (out / "metrics.json").exists()
