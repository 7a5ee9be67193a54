"""Transfer protocols: the transfer file, a run's velocity field and probe scored on a target, the
backbone rebuilt for other classes, the protocol config and the B/N/H, cross-dataset and DG tables."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from pipeline.backbones.base import save_backbone
from pipeline.backbones.loading import build_backbone, load_for_classes
from pipeline.core.errors import InputError
from pipeline.core.workflow_config import load_workflow_config, protocol_transfers
from pipeline.features.cache import (
    load_test,
    load_transfer,
    write_fewshot_cache,
    write_test_cache,
    write_transfer_cache,
)
from pipeline.methods.linear_probe import label_map, load_probe, save_probe
from pipeline.report.protocols import (
    base_to_new_tables,
    harmonic_plugplay_tables,
    protocol_frame,
    transfer_tables,
    write_protocol_report,
)
from pipeline.report.records import Result, build_record, read_record
from pipeline.train_fma import main as train_fma_main
from pipeline.transfer_fma import main as transfer_fma_main
from pipeline.transfer_probe import main as transfer_probe_main

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
PRESETS = REPO / "workflow" / "presets"
ATTRS = {"backbone": "zeroshot", "model": "demo-vit-t-28", "pretrained": "", "config": {}}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- probe


def test_label_map_prefers_parent_labels_then_unique_names() -> None:
    source = ["cat", "dog", "crane", "crane", "owl"]
    assert label_map(source, ["dog", "owl"]) == [1, 4]  # a subset by name
    assert label_map(source, ["crane"]) is None  # a name the source has twice: ambiguous
    assert label_map(source, ["crane", "owl"], parent_labels=[3, 4]) == [3, 4]  # the parent map decides
    assert label_map(source, ["cat", "emu"]) is None  # a class the probe never saw
    assert label_map(source, ["cat", "dog"], parent_labels=[7, 8]) == [0, 1]  # a map into another set


@pytest.mark.parametrize("classes", [2, 4])
def test_saved_probe_scores_as_the_fitted_one(tmp_path: Path, classes: int) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 6)), np.arange(40) % classes
    clf = LogisticRegression(max_iter=200).fit(x + 2 * np.eye(6)[y], y)
    save_probe(tmp_path / "p.npz", clf, [f"c{i}" for i in range(classes)])
    probe = load_probe(tmp_path / "p.npz")
    assert probe.classnames == [f"c{i}" for i in range(classes)]
    np.testing.assert_array_equal(probe.scores(x).argmax(axis=1), clf.predict(x))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match=r"bad\.npz: not a probe weights file"):
        load_probe(tmp_path / "bad.npz")


# ---------------------------------------------------------------------------------------------- cache


def test_transfer_file_round_trip_and_mismatch(tmp_path: Path) -> None:
    text = _unit(np.eye(3, 4) + 0.1)
    test = (_unit(np.ones((5, 4))), np.array([0, 1, 2, 0, 1]), [f"{i}.png" for i in range(5)])
    attrs = {**ATTRS, "dataset": "t", "source": "s", "shot": 2, "seed": 1, "templates": ["{}."],
             "parent_labels": [4, 5, 6]}  # fmt: skip
    write_transfer_cache(tmp_path / "a.h5", text=text, classnames=["a", "b", "c"], attrs=attrs, test=test)
    cache = load_transfer(tmp_path / "a.h5", expect={"dataset": "t", "source": "s", "shot": 2})
    np.testing.assert_array_equal(cache.text, text)
    np.testing.assert_array_equal(cache.test_y, test[1])
    assert cache.classnames == ["a", "b", "c"] and cache.attrs["parent_labels"] == [4, 5, 6]
    write_transfer_cache(tmp_path / "b.h5", text=None, classnames=["a"], attrs={**attrs, "parent_labels": []})
    cache = load_transfer(tmp_path / "b.h5", expect={})
    assert cache.text is None and cache.test_x is None and cache.attrs["text_kind"] == "per_image"
    with pytest.raises(
        InputError, match=r"a\.h5: cache attribute 'source' is 's' but the config expects 'x'"
    ):
        load_transfer(tmp_path / "a.h5", expect={"source": "x"})


# ---------------------------------------------------------------------------------------------- stages


def _toy_run(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """A zero-shot toy run: its caches and a trained velocity field (train_fma)."""
    rng = np.random.default_rng(0)
    classes, dim = 3, 8
    text = _unit(rng.normal(size=(classes, dim)))
    train_y, val_y, test_y = np.repeat(np.arange(3), 2), np.arange(3), np.repeat(np.arange(3), 5)
    run = {**ATTRS, "dataset": "toy", "templates": ["{}."], "shot": 2, "seed": 1}
    write_fewshot_cache(
        tmp_path / "fewshot.h5",
        train_x=_unit(text[train_y][:, None] + 0.6 * rng.normal(size=(6, 2, dim))),
        train_y=train_y, train_paths=[f"tr{i}" for i in range(6)],
        val_x=_unit(text[val_y] + 0.6 * rng.normal(size=(3, dim))), val_y=val_y,
        val_paths=[f"va{i}" for i in range(3)], text=text, classnames=["a", "b", "c"], attrs=run,
    )  # fmt: skip
    test_x = _unit(text[test_y] + 0.6 * rng.normal(size=(15, dim)))
    write_test_cache(tmp_path / "test.h5", features=test_x, labels=test_y,
                     paths=[f"te{i}" for i in range(15)], attrs={**ATTRS, "dataset": "toy"})  # fmt: skip
    code = train_fma_main([
        "--fewshot", str(tmp_path / "fewshot.h5"), "--test", str(tmp_path / "test.h5"), "--dataset", "toy",
        "--shot", "2", "--seed", "1", "--backbone", "zeroshot", "--device", "cpu", "--threads", "1",
        "--config", json.dumps({"epochs": 5, "blocks": 1, "batch_size": 4, "max_steps": 4,
                                "select_margin": 0}),
        "--metrics", str(tmp_path / "fma.json"), "--checkpoint", str(tmp_path / "fma.pt"),
    ])  # fmt: skip
    assert code == 0
    return tmp_path / "fma.pt", tmp_path / "fma.json", text


def test_transfer_fma_on_the_runs_own_test_set_gives_its_test_curve(tmp_path: Path) -> None:
    """A target that is the run's own test split, with its own class texts: the transfer stage must
    reproduce train_fma's test curve and read the M it chose."""
    velocity, record_path, text = _toy_run(tmp_path)
    attrs = {**ATTRS, "dataset": "toy2", "source": "toy", "shot": 2, "seed": 1, "templates": ["{}."]}
    write_transfer_cache(tmp_path / "tr.h5", text=text, classnames=["a", "b", "c"], attrs=attrs)
    x, y, _ = load_test(tmp_path / "test.h5", {})  # the same features under the target's name
    write_test_cache(tmp_path / "test2.h5", features=x, labels=y, paths=[f"te{i}" for i in range(len(y))],
                     attrs={**ATTRS, "dataset": "toy2"})  # fmt: skip
    argv = ["--transfer", str(tmp_path / "tr.h5"), "--test", str(tmp_path / "test2.h5"), "--velocity",
            str(velocity), "--backbone", "zeroshot", "--source", "toy", "--shot", "2", "--seed", "1",
            "--target", "toy2", "--device", "cpu", "--out", str(tmp_path / "out.json")]  # fmt: skip
    assert transfer_fma_main(argv) == 0
    source, out = read_record(record_path), read_record(tmp_path / "out.json")
    assert out["stage"] == "transfer" and out["dataset"] == "toy2" and out["info"]["source"] == "toy"
    assert out["curves"]["test_acc"] == pytest.approx(source["curves"]["test_acc"], abs=1e-9)
    m = source["info"]["selected_m"]
    fma = {r["method"]: r for r in out["results"]}
    assert fma["fma"]["info"]["m"] == m and fma["fma"]["test_acc"] == pytest.approx(
        source["curves"]["test_acc"][m]
    )
    assert fma["backbone"]["test_acc"] == pytest.approx(source["curves"]["test_acc"][0])
    # a file of another run: one line naming it
    argv[argv.index("--seed") + 1] = "2"
    assert transfer_fma_main(argv) == 2


def test_transfer_probe_scores_a_subset_of_classes_and_refuses_unseen_ones(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(1)
    centers = _unit(rng.normal(size=(4, 8)))
    y = np.repeat(np.arange(4), 10)
    clf = LogisticRegression(max_iter=500).fit(centers[y] + 0.3 * rng.normal(size=(40, 8)), y)
    save_probe(tmp_path / "p.npz", clf, ["a", "b", "c", "d"])
    ty = np.repeat(np.arange(2), 6)  # the target holds classes c and d of the source, as labels 0 and 1
    tx = _unit(centers[ty + 2] + 0.3 * rng.normal(size=(12, 8)))
    attrs = {**ATTRS, "backbone": "clip_lora", "dataset": "t", "source": "s", "shot": 1, "seed": 1,
             "templates": [], "parent_labels": [2, 3]}  # fmt: skip
    write_transfer_cache(tmp_path / "t.h5", text=None, classnames=["c", "d"], attrs=attrs,
                         test=(tx, ty, [f"{i}" for i in range(12)]))  # fmt: skip
    argv = ["--weights", str(tmp_path / "p.npz"), "--transfer", str(tmp_path / "t.h5"), "--backbone",
            "clip_lora", "--source", "s", "--shot", "1", "--seed", "1", "--target", "t", "--out",
            str(tmp_path / "r.json")]  # fmt: skip
    assert transfer_probe_main(argv) == 0
    want = 100.0 * np.mean(clf.decision_function(tx)[:, 2:].argmax(axis=1) == ty)
    assert read_record(tmp_path / "r.json")["results"][0]["test_acc"] == pytest.approx(want)
    attrs = {**attrs, "parent_labels": []}
    write_transfer_cache(tmp_path / "t.h5", text=None, classnames=["c", "zebra"], attrs=attrs,
                         test=(tx, ty, [f"{i}" for i in range(12)]))  # fmt: skip
    assert transfer_probe_main(argv) == 2
    assert "no single class 'zebra' of t" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- backbone


def test_a_prompt_learner_keeps_its_context_and_templates_on_new_classes(
    tiny_encoder, tmp_path: Path
) -> None:
    """CoOp trained on classes A, rebuilt for classes B: its learned context prompts B's names (the
    same texts as a CoOp built for B with that context), with the templates it trained with."""
    cfg = {"ctx_init": "template", "n_ctx": 4}
    trained = build_backbone(
        "coop", tiny_encoder, ["zero", "one"], ["a photo of the digit {}."], cfg, tiny_encoder.dim
    )
    with torch.no_grad():
        trained.ctx.add_(0.05)
    extra = {"dataset": "d@base", "shot": 1, "seed": 1}
    save_backbone(tmp_path / "coop.pt", trained, extra)
    cpu = torch.device("cpu")
    rebuilt = load_for_classes(tmp_path / "coop.pt", cpu, {"backbone": "coop", **extra}, ["two", "three"],
                               ["a {} texture."], tiny_encoder)  # fmt: skip
    assert rebuilt.classnames == ["two", "three"] and rebuilt.templates == ["a photo of the digit {}."]
    direct = build_backbone(
        "coop", tiny_encoder, ["two", "three"], ["a photo of the digit {}."], cfg, tiny_encoder.dim
    )
    with torch.no_grad():
        direct.ctx.copy_(trained.ctx)
        torch.testing.assert_close(rebuilt.class_texts(), direct.class_texts())
    with pytest.raises(InputError, match=r"coop\.pt: checkpoint 'seed' is 1, expected 2"):
        load_for_classes(
            tmp_path / "coop.pt", cpu, {"backbone": "coop", **extra, "seed": 2}, ["x"], [], tiny_encoder
        )


# ---------------------------------------------------------------------------------------------- config


BASE = {
    "results": "results", "data_root": "results/demo_data", "datasets": ["demo_digits", "demo_fashion"],
    "shots": [1, 4], "seeds": [1], "backbones": ["coop"],
    "encoder": {"model": "demo-vit-t-28", "pretrained": None},
}  # fmt: skip


def _load(protocols: dict) -> dict:
    return load_workflow_config({**copy.deepcopy(BASE), "protocols": protocols}, SCHEMA, PRESETS)


def test_protocol_sections_give_source_target_pairs_and_default_to_the_largest_shot() -> None:
    config = _load({"base_to_new": {"datasets": ["demo_digits"]},
                    "domain_generalization": {"source": "demo_fashion",
                                              "targets": ["demo_fashion_v2"]}})  # fmt: skip
    assert protocol_transfers(config, "base_to_new") == [("demo_digits@base", "demo_digits@new")]
    assert protocol_transfers(config, "domain_generalization") == [("demo_fashion", "demo_fashion_v2")]
    assert protocol_transfers(config, "cross_dataset") == []
    assert config["protocols"]["base_to_new"]["shots"] == [4] and config["protocols"]["in_all"] is False


B2N, CROSS = "protocols.base_to_new", "protocols.cross_dataset"


@pytest.mark.parametrize(
    "protocols, needle",
    [
        ({"base_to_new": {"datasets": ["demo_digits@base"]}},
         f"key '{B2N}.datasets': unknown dataset 'demo_digits@base'"),
        ({"base_to_new": {"datasets": ["demo_fashion_v2"]}}, "'demo_fashion_v2' is test-only"),
        ({"cross_dataset": {"source": "demo_fashion_v2", "targets": ["demo_digits"]}},
         f"{CROSS}.source': 'demo_fashion_v2' is test-only"),
        ({"cross_dataset": {"source": "demo_digits", "targets": ["demo_digits"]}},
         "'demo_digits' is the source itself"),
        ({"cross_dataset": {"source": "demo_digits", "targets": ["mnist"]}},
         f"{CROSS}.targets': unknown dataset 'mnist'"),
        ({"cross_dataset": {"source": "demo_digits"}}, CROSS),
        ({"base_to_new": {"datasets": ["demo_digits"], "shots": [500]}}, f"{B2N}.shots': 500 shots"),
    ],
)  # fmt: skip
def test_bad_protocol_config_is_one_line(protocols: dict, needle: str) -> None:
    with pytest.raises(InputError) as err:
        _load(protocols)
    assert needle in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------- tables


def _record(
    stage: str, backbone: str, dataset: str, seed: int, accs: dict, source: str | None = None
) -> dict:
    results = []
    for method, acc in accs.items():
        role = "baseline" if method == "backbone" else "primary"
        label = {"backbone": "", "fma": "FMA", "linear_probe": "linear probe"}[method]
        results.append(Result(method, label, role, acc, plug_and_play=method == "fma"))
    info = {"source": source} if source else {}
    rec = build_record(stage=stage, run={"backbone": backbone, "dataset": dataset, "shot": 4, "seed": seed},
                       results=results, config={}, info=info)  # fmt: skip
    return {**rec, "path": f"{stage}/{dataset}/{seed}.json"}


def _b2n_records() -> list[dict]:
    out = []
    for seed, (b, n) in {1: (80.0, 40.0), 2: (70.0, 60.0)}.items():
        out.append(_record("fma", "coop", "dtd@base", seed, {"backbone": b, "fma": b + 10}))
        out.append(_record("linear_probe", "coop", "dtd@base", seed, {"linear_probe": b - 5}))
        out.append(_record("transfer", "coop", "dtd@new", seed, {"backbone": n, "fma": n + 2}, "dtd@base"))
        out.append(_record("fma", "coop", "eurosat@base", seed, {"backbone": 90.0, "fma": 95.0}))
        out.append(_record("linear_probe", "coop", "eurosat@base", seed, {"linear_probe": 91.0}))
        out.append(
            _record("transfer", "coop", "eurosat@new", seed, {"backbone": 30.0, "fma": 31.0}, "eurosat@base")
        )
    return out


def test_base_to_new_h_comes_from_seed_averaged_base_and_new(tmp_path: Path) -> None:
    frame = protocol_frame("base_to_new", _b2n_records(), ["coop"])
    tables = base_to_new_tables(frame)
    assert [t.title for t in tables] == [
        "dtd, 4 shots",
        "eurosat, 4 shots",
        "Average over 2 datasets, 4 shots",
    ]
    rows = {row[0]: row[1:] for row in tables[0].rows}
    base, new, h = rows["CoOp"]
    assert (base.mean, new.mean) == (75.0, 50.0) and h.mean == pytest.approx(
        2 * 75 * 50 / 125
    )  # not mean of per-seed H
    assert rows["CoOp + linear probe"][1:] == [None, None]  # the probe has no new classes
    probe_average = {row[0]: row[1:] for row in tables[2].rows}["CoOp + linear probe"]
    assert probe_average[0].mean == pytest.approx((70.0 + 91.0) / 2) and probe_average[1:] == [None, None]
    average = {row[0]: row[1:] for row in tables[2].rows}["CoOp + FMA"]
    b, n = (85.0 + 95.0) / 2, (52.0 + 31.0) / 2
    assert [c.mean for c in average] == pytest.approx([b, n, 2 * b * n / (b + n)])
    paths = write_protocol_report("base_to_new", _b2n_records(), tmp_path, ["coop"])
    assert "| CoOp + FMA | 85.0 ± 7.1 | 52.0 ± 14.1 | 64.5 |" in paths["md"].read_text()
    assert math.isclose(float(frame[(frame["part"] == "new") & (frame["method"] == "fma")
                                    & (frame["dataset"] == "dtd@new")]["mean"].iloc[0]), 52.0)  # fmt: skip


def test_the_harmonic_plug_and_play_table_takes_h_of_group_means(tmp_path: Path) -> None:
    frame = protocol_frame("base_to_new", _b2n_records(), ["coop"])
    groups = {"difficult": ["dtd", "eurosat"], "easy": ["caltech101"]}
    (table,) = harmonic_plugplay_tables(frame, groups)
    assert table.columns == ["Backbone", "D H", "+FMA"]  # no easy dataset ran: no E column
    ((label, own, fma),) = table.rows
    b, n = (75.0 + 90.0) / 2, (50.0 + 30.0) / 2
    assert label == "CoOp" and own.mean == pytest.approx(2 * b * n / (b + n))
    b, n = (85.0 + 95.0) / 2, (52.0 + 31.0) / 2
    assert fma.mean == pytest.approx(2 * b * n / (b + n))
    md = write_protocol_report("base_to_new", _b2n_records(), tmp_path, ["coop"], groups)["md"].read_text()
    assert "## Plug-and-play, harmonic mean by dataset group, 4 shots" in md


def test_transfer_table_has_source_targets_and_their_average() -> None:
    records = [
        _record("fma", "zeroshot", "imagenet", 1, {"backbone": 66.0, "fma": 70.0}),
        _record("linear_probe", "zeroshot", "imagenet", 1, {"linear_probe": 67.0}),
        _record("transfer", "zeroshot", "imagenet_v2", 1, {"backbone": 60.0, "fma": 62.0}, "imagenet"),
        _record("transfer", "zeroshot", "imagenet_a", 1, {"backbone": 50.0, "fma": 49.0}, "imagenet"),
        _record("transfer_probe", "zeroshot", "imagenet_v2", 1, {"linear_probe": 55.0}, "imagenet"),
    ]
    (table,) = transfer_tables(protocol_frame("domain_generalization", records, ["zeroshot"]))
    assert table.columns == ["Method", "Source: imagenet", "imagenet_v2", "imagenet_a", "Average"]
    rows = {row[0]: row[1:] for row in table.rows}
    assert [c.mean for c in rows["Zero-shot CLIP + FMA"]] == [70.0, 62.0, 49.0, 55.5]
    probe = rows["Zero-shot CLIP + linear probe"]
    assert probe[1].mean == 55.0 and probe[2] is None and probe[3] is None  # no average over a gap
    with pytest.raises(InputError, match=r"no record of its source run \('zeroshot', 'imagenet', 4, 1\)"):
        protocol_frame("domain_generalization", records[2:], ["zeroshot"])


def test_a_half_of_a_dataset_trains_and_prompts_as_the_dataset() -> None:
    """Per-dataset settings (ImageNet's 50 CoOp epochs, MPS-Tuning's DTD schedule, a template or
    augmentation override) reach the base half of the dataset too."""
    from pipeline.core.workflow_config import extraction_slice, recipe_slice, templates_for

    config = load_workflow_config(
        {**copy.deepcopy(BASE), "templates": {"demo_digits": ["a {} digit."]},
         "extraction": {"augment": {"demo_digits": {"crop_scale": [0.7, 1.0]}}}},
        SCHEMA, PRESETS,
    )  # fmt: skip
    assert recipe_slice(config, "coop", "imagenet@base", 16) == recipe_slice(config, "coop", "imagenet", 16)
    assert recipe_slice(config, "coop", "imagenet@base", 16)["epochs_by_shots"] == {"16": 50}
    assert recipe_slice(config, "mps_tuning", "dtd@base", 16) == recipe_slice(config, "mps_tuning", "dtd", 16)
    assert templates_for(config, "zeroshot", "demo_digits@new") == ["a {} digit."]
    assert extraction_slice(config, "demo_digits@base")["crop_scale"] == [0.7, 1.0]
