"""Hostile workflow configs: each is rejected at parse time with one line naming the offending key.

Most cases call ``load_workflow_config`` directly (fast); two go through the real ``snakemake -n``
to show the line reaches the user as it is.
"""

from __future__ import annotations

import copy
import json
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pipeline.core.errors import InputError
from pipeline.core.workflow_config import check_yaml_file, load_workflow_config
from pipeline.data.sizes import DEMO_SMALLEST_TRAIN_CLASS

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
PRESETS = REPO / "workflow" / "presets"
TINY = yaml.safe_load((REPO / ".test" / "config.yaml").read_text())
NAN, INF = float("nan"), float("inf")
DIGITS_MAX = DEMO_SMALLEST_TRAIN_CLASS["demo_digits"]


def load(config: dict) -> dict:
    return load_workflow_config(config, SCHEMA, PRESETS)


def at(path: str, value) -> Callable[[dict], None]:
    """An edit setting the dotted ``path`` (creating mappings on the way) to ``value``."""

    def edit(config: dict) -> None:
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return edit


# (edit, the key the one-line error must name)
BAD = {
    # non-finite numbers: NaN passes every JSON-schema bound
    "fma.lr nan": (at("fma.lr", NAN), "fma.lr"),
    "fma.lr inf": (at("fma.lr", INF), "fma.lr"),
    "fma.time_scale -inf": (at("fma.time_scale", -INF), "fma.time_scale"),
    "probe.c_grid inf": (at("probe.c_grid", [INF]), "probe.c_grid.0"),
    "probe.c_grid nan": (at("probe.c_grid", [1.0, NAN]), "probe.c_grid.1"),
    "backbone_config nan": (at("backbone_config.coop.lr", NAN), "backbone_config.coop.lr"),
    "variant fma nan": (at("ablations.variants.default.fma.lr", NAN), "ablations.variants.default.fma.lr"),
    # ranges and orders
    "crop_scale reversed": (
        at("extraction.augment.demo_digits.crop_scale", [1.0, 0.5]),
        "extraction.augment.demo_digits.crop_scale",
    ),
    "demo_backbone crop_scale reversed": (
        at("demo_backbone.crop_scale", [1.0, 0.5]),
        "demo_backbone.crop_scale",
    ),
    "views 100000": (at("extraction.views", 100000), "extraction.views"),
    "views negative": (at("extraction.views", -1), "extraction.views"),
    "ensemble beyond max_steps": (at("fma.ensemble_steps", [9]), "fma.ensemble_steps"),
    "warmup longer than training": (at("fma.warmup_epochs", 10), "fma.warmup_epochs"),
    "cv_folds 1": (at("fma.cv_folds", 1), "fma.cv_folds"),
    "train_views beyond cached views": (
        at("ablations.variants.center_view.fma.train_views", 5),
        "ablations.variants.center_view.fma.train_views",
    ),
    "lora dropout 1": (at("backbone_config.clip_lora.dropout", 1.0), "backbone_config.clip_lora.dropout"),
    # templates: exactly one {}
    "template with two {}": (at("templates", {"demo_digits": ["{} and {}"]}), "templates.demo_digits.0"),
    "template without {}": (at("templates", {"demo_digits": ["no placeholder"]}), "templates.demo_digits.0"),
    "template with {0}": (at("templates", {"demo_digits": ["a {} or {0}"]}), "templates.demo_digits.0"),
    "recipe template with two {}": (
        at("backbone_config.clip_lora.templates", ["a {} of {}"]),
        "backbone_config.clip_lora.templates.0",
    ),
    # true integers: 2.0 and true are not
    "shots float": (at("shots", [2.0]), "shots.0"),
    "shots bool": (at("shots", [True]), "shots.0"),
    "seeds float": (at("seeds", [1.5]), "seeds.0"),
    "seeds integral float": (at("seeds", [1.0]), "seeds.0"),
    "seeds negative": (at("seeds", [-1]), "seeds.0"),
    "epochs bool": (at("fma.epochs", True), "fma.epochs"),
    "lr bool": (at("fma.lr", True), "fma.lr"),
    "views bool": (at("extraction.views", True), "extraction.views"),
    "recipe batch float": (at("backbone_config.coop.batch_size", 2.0), "backbone_config.coop.batch_size"),
    "recipe shots key bool": (
        at("backbone_config.coop.epochs_by_shots", {True: 5}),
        "backbone_config.coop.epochs_by_shots",
    ),
    "demo seed float": (at("demo_backbone.seed", 1.0), "demo_backbone.seed"),
    # shots against the data
    "shots 500": (at("shots", [1, 500]), "shots"),
    "shots one too many": (at("shots", [DIGITS_MAX + 1]), "shots"),
    "ablation shots 500": (at("ablations.shots", [500]), "ablations.shots"),
    # folders
    "results empty": (at("results", ""), "results"),
    "data_root empty": (at("data_root", ""), "data_root"),
    "results root": (at("results", "/"), "results"),
    "results wildcard": (at("results", "out/{dataset}"), "results"),
    "pretrained empty": (at("encoder.pretrained", ""), "encoder.pretrained"),
    # zero or negative where it makes no sense
    "epochs 0": (at("fma.epochs", 0), "fma.epochs"),
    "epochs negative": (at("fma.epochs", -5), "fma.epochs"),
    "fma batch 0": (at("fma.batch_size", 0), "fma.batch_size"),
    "step_size 0": (at("fma.step_size", 0.0), "fma.step_size"),
    "step_size negative": (at("fma.step_size", -0.1), "fma.step_size"),
    "max_steps 0": (at("fma.max_steps", 0), "fma.max_steps"),
    "runtime batch 0": (at("runtime.batch_size", 0), "runtime.batch_size"),
    "probe max_iter 0": (at("probe.max_iter", 0), "probe.max_iter"),
    "demo steps 0": (at("demo_backbone.steps", 0), "demo_backbone.steps"),
    "recipe epochs 0": (
        at("backbone_config.coop.epochs_by_shots", {1: 0}),
        "backbone_config.coop.epochs_by_shots.1",
    ),
    "lora iterations 0": (
        at("backbone_config.clip_lora.iterations_per_shot", 0),
        "backbone_config.clip_lora.iterations_per_shot",
    ),
    # duplicates
    "shots duplicate": (at("shots", [1, 1]), "shots"),
    "sampler unknown": (at("sampler", "coop"), "sampler"),
    "sampler not a string": (at("sampler", 1), "sampler"),
    "seeds duplicate": (at("seeds", [1, 1]), "seeds"),
    "datasets duplicate": (at("datasets", ["demo_digits", "demo_digits"]), "datasets"),
    "backbones duplicate": (at("backbones", ["coop", "coop"]), "backbones"),
    "group duplicate": (at("groups.difficult", ["demo_digits", "demo_digits"]), "groups.difficult"),
    "c_grid duplicate": (at("probe.c_grid", [1.0, 1.0]), "probe.c_grid"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_hostile_config_is_one_line_naming_the_key(case: str) -> None:
    edit, key = BAD[case]
    config = copy.deepcopy(TINY)
    edit(config)
    with pytest.raises(InputError) as err:
        load(config)
    message = str(err.value)
    assert "\n" not in message, message
    assert message.startswith(("key '", "unknown key '")), message
    assert message.split("'")[1] == key, message


def test_the_tiny_config_and_the_limits_themselves_load() -> None:
    config = copy.deepcopy(TINY)
    config.update(shots=[1, DIGITS_MAX], seeds=[0, 2**31 - 1])
    config["extraction"]["views"] = 64
    config["templates"] = {"demo_digits": ["{}", "a photo of the digit {}."]}
    load(config)


def test_shots_message_states_the_policy() -> None:
    with pytest.raises(InputError, match=rf"smallest class of demo_digits has {DIGITS_MAX} train images"):
        load({**copy.deepcopy(TINY), "shots": [500]})


def test_shots_of_a_real_dataset_are_counted_in_its_split_file(tmp_path: Path) -> None:
    """A real dataset's limit comes from its split file (3 and 5 train images: at most 3 shots)."""
    folder = tmp_path / "dtd"
    folder.mkdir()
    train = [[f"a/{i}.jpg", 0, "a"] for i in range(3)] + [[f"b/{i}.jpg", 1, "b"] for i in range(5)]
    (folder / "split_zhou_DescribableTextures.json").write_text(json.dumps({"train": train, "test": train}))
    config = {
        **copy.deepcopy(TINY),
        "datasets": ["dtd"],
        "data_root": str(tmp_path),
        "ablations": {},
        "backbone_ablations": {},
    }
    load({**config, "shots": [3]})
    with pytest.raises(InputError, match="key 'shots': 4 shots, but the smallest class of dtd has 3"):
        load({**config, "shots": [1, 4]})
    load({**config, "data_root": str(tmp_path / "elsewhere"), "shots": [4]})  # no split file: not checked


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("results: out\nshots: [1, 2\nseeds: [1]\n", "config.yaml:3:6: invalid YAML"),
        ("results: out\nfma:\n\tlr: 1.0\n", "config.yaml:3:1: invalid YAML"),
        (
            "results: out\nshots: [1]\nresults: other\n",
            "config.yaml:3:1: invalid YAML (duplicate key 'results')",
        ),
        ("- results\n", "config.yaml: expected a mapping"),
    ],
)
def test_yaml_errors_name_the_file_and_line(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        check_yaml_file(path)
    assert str(err.value).startswith(str(tmp_path / where)) and "\n" not in str(err.value), str(err.value)


@pytest.mark.workflow
@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            yaml.safe_dump({**TINY, "fma": {**TINY["fma"], "lr": NAN}}),
            "config error: key 'fma.lr': must be a finite",
        ),
        (
            yaml.safe_dump({**TINY, "shots": [2.0]}),
            "config error: key 'shots.0': 2.0 is not of type 'integer'",
        ),
        ("results: out\nshots: [1, 2\nseeds: [1]\n", "config error: config.yaml:3:6: invalid YAML"),
    ],
)
def test_snakemake_prints_the_one_line(tmp_path: Path, text: str, line: str) -> None:
    (tmp_path / "config.yaml").write_text(text)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-n",
        "--cores",
        "1",
        "--snakefile",
        str(REPO / "workflow/Snakefile"),
    ]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    errors = [out for out in result.stderr.splitlines() if out.startswith("config error:")]
    assert len(errors) == 1 and errors[0].startswith(line), result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@pytest.mark.workflow
def test_paths_with_spaces_stay_one_argument_in_every_command(tmp_path: Path) -> None:
    """Results, data root and checkpoint under folders with a space: every planned shell command
    splits back into whole paths (the full run on such folders is in test_workflow.py)."""
    config = {**copy.deepcopy(TINY), "results": "my results", "data_root": "my data/root"}
    config["encoder"] = {"model": "demo-vit-t-28", "pretrained": "my results/demo_backbone/demo-vit-t-28.pt"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "1"]
    cmd += ["--snakefile", str(REPO / "workflow/Snakefile"), "all", "ablations"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    marker = "$PYTHON -m pipeline.run "
    commands = [line[line.index(marker) :] for line in result.stdout.splitlines() if marker in line]
    stages = {shlex.split(c)[3] for c in commands}  # $PYTHON -m pipeline.run <stage> ...
    assert {"build_demo", "pretrain_demo", "extract", "make_tables"} <= stages
    for command in commands:
        words = shlex.split(command)
        assert "my" not in words and not any(w.startswith(("results/", "data/")) for w in words), command
