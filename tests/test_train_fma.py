import json

import numpy as np
import pytest
import torch

from pipeline.data.coop import load_dataset
from pipeline.data.fewshot import sample_fewshot, write_split_file
from pipeline.demo.datasets import build_demo_dataset
from pipeline.extract import main as extract_main
from pipeline.features.cache import read_attrs, write_fewshot_cache, write_test_cache
from pipeline.methods.fma.velocity import VelocityNet, load_velocity
from pipeline.train_fma import main

ATTRS = {
    "backbone": "zeroshot",
    "dataset": "toy",
    "model": "demo-vit-t-28",
    "pretrained": "",
    "templates": ["a photo of a {}."],
    "config": {"views": 1},
}
KEYS = {
    "method", "backbone", "dataset", "shot", "seed", "steps", "val_acc", "test_acc", "test_dist",
    "val_dist", "selected_m", "val_acc_at_m", "test_acc_at_m", "zero_shot_test_acc", "oracle_m",
    "oracle_test_acc", "train_seconds", "final_loss", "loss_history", "n_train", "n_val", "n_test",
    "n_views", "config", "device", "train_views", "online", "online_encode_seconds", "text_mean_cosine",
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


def test_main_writes_metrics_and_checkpoint(tmp_path):
    fewshot, test = _write_caches(tmp_path)
    out = tmp_path / "out"
    assert main(_argv(fewshot, test, out)) == 0

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == KEYS
    assert metrics["method"] == "fma" and metrics["shot"] == 2 and metrics["seed"] == 1
    assert metrics["steps"] == [0, 1, 2, 3, 4]
    assert len(metrics["test_acc"]) == len(metrics["val_acc"]) == len(metrics["test_dist"]) == 5
    assert len(metrics["loss_history"]) == 3 and metrics["final_loss"] == metrics["loss_history"][-1]
    m = metrics["selected_m"]
    assert metrics["val_acc"][m] == max(metrics["val_acc"]) == metrics["val_acc_at_m"]
    assert metrics["test_acc_at_m"] == metrics["test_acc"][m]
    assert metrics["zero_shot_test_acc"] == metrics["test_acc"][0]
    assert all(0.0 <= a <= 100.0 for a in metrics["test_acc"])
    assert (metrics["n_train"], metrics["n_val"], metrics["n_test"], metrics["n_views"]) == (6, 3, 12, 1)
    assert metrics["config"]["epochs"] == 3 and metrics["config"]["noise"] == "paper"
    assert metrics["train_views"] == 1 and metrics["online"] is False
    assert metrics["online_encode_seconds"] == 0.0

    state = torch.load(out / "fma.pt", weights_only=True)
    assert state["dim"] == 8 and state["blocks"] == 1 and state["selected_m"] == m
    assert state["step_size"] == 0.1 and state["config"]["max_steps"] == 4
    net, cfg = load_velocity(out / "fma.pt")
    assert isinstance(net, VelocityNet) and cfg.epochs == 3
    assert net(torch.zeros(2, 8), torch.zeros(2)).shape == (2, 8)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temporaries left


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
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_views"] == 0 and metrics["variant"] == "center-only"
    assert metrics["config"]["train_views"] == 0


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
            "--kind", "fewshot", "--backbone", "zeroshot", "--dataset", "demo_digits",
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
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["online"] is True and metrics["train_views"] is None
    assert 0 < metrics["online_encode_seconds"] <= metrics["train_seconds"]
    assert len(metrics["loss_history"]) == 2 and np.isfinite(metrics["loss_history"]).all()
    assert metrics["n_train"] == 20 and metrics["config"]["online"] is True


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
