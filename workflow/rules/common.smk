import json
import shlex
import sys
from pathlib import Path

import jsonschema
import yaml

from pipeline.core.config import (
    canonical_json as canonical,
)  # equal slices give equal strings
from pipeline.data.catalog import get_dataset_info, list_datasets
from pipeline.core.versions import (
    DEMO_DATA_VERSION,
    EXTRACTION_VERSION,
    FMA_VERSION,
    PRETRAIN_VERSION,
    PROBE_VERSION,
    SAMPLING_VERSION,
    TABLES_VERSION,
)

# ---------------------------------------------------------------- config validation


def _config_error(message):
    """Stop at parse time with one line naming the offending key."""
    sys.exit(f"config error: {message}")


def _key_path(error):
    path = ".".join(str(p) for p in error.absolute_path)
    return path or "<top level>"


def _fill_defaults(instance, schema):
    """Fill omitted keys from the schema's defaults, so an omitted key and its default are one slice."""
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = json.loads(json.dumps(sub["default"]))
        if isinstance(instance.get(key), dict) and sub.get("type") == "object":
            _fill_defaults(instance[key], sub)


def validate_config(config, schema_path):
    schema = yaml.safe_load(Path(schema_path).read_text())
    _fill_defaults(config, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        if error.validator == "additionalProperties":
            extra = sorted(
                set(error.instance) - set(error.schema.get("properties", {}))
            )
            where = _key_path(error)
            key = f"{where}.{extra[0]}" if where != "<top level>" else extra[0]
            _config_error(f"unknown key '{key}'")
        _config_error(f"key '{_key_path(error)}': {error.message}")
    known = set(list_datasets())
    for name in config["datasets"]:
        if name not in known:
            _config_error(
                f"key 'datasets': unknown dataset '{name}' (known: {', '.join(sorted(known))})"
            )
    for group, names in config["groups"].items():
        for name in names:
            if name not in known:
                _config_error(f"key 'groups.{group}': unknown dataset '{name}'")
    for name in config.get("ablations", {}).get("datasets", []):
        if name not in config["datasets"]:
            _config_error(f"key 'ablations.datasets': '{name}' is not in 'datasets'")
    for name in config.get("templates", {}):
        if name not in known:
            _config_error(f"key 'templates.{name}': unknown dataset")


validate_config(config, Path(workflow.basedir) / "schemas" / "config.schema.yaml")

RESULTS = config["results"]
DATA_ROOT = config["data_root"]
DATASETS = config["datasets"]
SHOTS = config["shots"]
SEEDS = config["seeds"]
BACKBONES = config["backbones"]
RUNTIME = config["runtime"]
# Runtime knobs reach the jobs as resources, never as params: changing the device, the inference
# batch size or the number of workers must not rerun anything (params are a rerun trigger).
RUNTIME_DEVICE = RUNTIME["device"]
INFER_BATCH = RUNTIME["batch_size"]
IO_WORKERS = RUNTIME["workers"]
DEMO_FOLDERS = {
    get_dataset_info(name).folder: name
    for name in list_datasets()
    if get_dataset_info(name).source
}

for _name in DATASETS:
    _info = get_dataset_info(_name)
    if _info.source is None:  # a real dataset: it must already be under the data root
        if not Path(DATA_ROOT).is_dir():
            _config_error(f"key 'data_root': data root {DATA_ROOT} does not exist")
        if not (Path(DATA_ROOT) / _info.folder).is_dir():
            _config_error(
                f"key 'datasets': folder {Path(DATA_ROOT) / _info.folder} for '{_name}' does not exist"
            )
        if not (Path(DATA_ROOT) / _info.folder / _info.split_file).is_file():
            _config_error(
                f"key 'datasets': split file {Path(DATA_ROOT) / _info.folder / _info.split_file} is missing"
            )


wildcard_constraints:
    dataset="|".join(DATASETS),
    backbone="|".join(BACKBONES),
    shot=r"\d+",
    seed=r"\d+",
    variant=r"[A-Za-z0-9_]+",


# ---------------------------------------------------------------- config slices (rule params)


def templates_for(dataset):
    return list(
        config.get("templates", {}).get(dataset) or get_dataset_info(dataset).templates
    )


def encoder_slice():
    return {"encoder": config["encoder"]}


def fewshot_extraction_slice(dataset):
    return {
        **encoder_slice(),
        "extraction": config["extraction"],
        "templates": templates_for(dataset),
    }


def cache_expectation(dataset):
    """What stage 2 checks in the cache's attributes before trusting it."""
    return {
        "model": config["encoder"]["model"],
        "pretrained": config["encoder"].get("pretrained") or "",
        "templates": templates_for(dataset),
    }


# ---------------------------------------------------------------- paths


def split_file(dataset):
    info = get_dataset_info(dataset)
    return f"{DATA_ROOT}/{info.folder}/{info.split_file}"


CHECKPOINT_SUFFIXES = {".pt", ".pth", ".bin", ".safetensors"}


def encoder_inputs():
    """A local checkpoint is an input: replacing the file reruns extraction."""
    pretrained = config["encoder"].get("pretrained")
    if pretrained and (
        len(Path(pretrained).parts) > 1
        or Path(pretrained).suffix in CHECKPOINT_SUFFIXES
    ):
        return [pretrained]
    return []


def fewshot_cache(
    backbone="{backbone}", dataset="{dataset}", shot="{shot}", seed="{seed}"
):
    return f"{RESULTS}/features/{backbone}/{dataset}/{shot}shot_seed{seed}.h5"


def test_cache(wildcards):
    """One test file per dataset for frozen image encoders (every zero-shot-image backbone)."""
    return f"{RESULTS}/features/{wildcards.backbone}/{wildcards.dataset}/test.h5"


def run_name(backbone, dataset, shot, seed):
    return f"{backbone}/{dataset}/{shot}shot_seed{seed}"


def fma_metrics(backbone):
    return expand(
        f"{RESULTS}/fma/{backbone}/{{dataset}}/{{shot}}shot_seed{{seed}}.json",
        dataset=DATASETS,
        shot=SHOTS,
        seed=SEEDS,
    )


def probe_results(backbone):
    return expand(
        f"{RESULTS}/probe/{backbone}/{{dataset}}/{{shot}}shot_seed{{seed}}.json",
        dataset=DATASETS,
        shot=SHOTS,
        seed=SEEDS,
    )


# ---------------------------------------------------------------- ablations

ABLATIONS = config.get("ablations", {})
ABLATION_VARIANTS = ABLATIONS.get("variants", {})
ABLATION_LABELS = {name: v.get("label", name) for name, v in ABLATION_VARIANTS.items()}
ABLATION_TABLES = ", ".join(
    f"{RESULTS}/tables/{backbone}/ablations.md" for backbone in BACKBONES
)


def canonical_ordered(obj):
    """JSON that keeps the mapping's order (the ablation labels set the table's row order)."""
    return json.dumps(obj, separators=(",", ":"))


def variant_fma_slice(variant):
    return {**config["fma"], **ABLATION_VARIANTS[variant].get("fma", {})}


def variant_is_online(variant):
    return bool(variant_fma_slice(variant).get("online"))


def online_args(variant):
    """Extra train_fma arguments for online views: the images and the extraction rule's encoder slice."""
    if not variant_is_online(variant):
        return ""
    slice_ = {"encoder": config["encoder"], "extraction": config["extraction"]}
    return f"--data-root {shlex.quote(DATA_ROOT)} --online-config {shlex.quote(canonical(slice_))}"


def ablation_runs(backbone):
    return expand(
        f"{RESULTS}/ablations/{backbone}/{{dataset}}/{{shot}}shot_seed{{seed}}/{{variant}}.json",
        dataset=ABLATIONS.get("datasets", []),
        shot=ABLATIONS.get("shots", []),
        seed=SEEDS,
        variant=list(ABLATION_VARIANTS),
    )


def ablation_table_outputs():
    return expand(
        f"{RESULTS}/tables/{{backbone}}/ablations.{{ext}}",
        backbone=BACKBONES,
        ext=["md", "csv", "tex"],
    )


TABLE_DIRS = ", ".join(f"{RESULTS}/tables/{backbone}/" for backbone in BACKBONES)


def table_outputs():
    return expand(
        f"{RESULTS}/tables/{{backbone}}/{{name}}",
        backbone=BACKBONES,
        name=["fewshot.md", "fewshot.csv", "fewshot.tex", "curves.png"],
    )
