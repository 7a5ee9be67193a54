import json
import os
import shlex
import shutil
import sys
from pathlib import Path

# The pipeline package of this checkout, not whichever one pip installed last (another clone's, an
# older release): the imports below, every job (shell.prefix below) and the fork server use it.
REPO_ROOT = str(Path(workflow.basedir).parent)
sys.path.insert(0, REPO_ROOT)

from pipeline.backbones.registry import get_spec, image_source, resolved_recipe
from pipeline.core.config import (
    canonical_json as canonical,
)  # equal slices, equal strings
from pipeline.core.config import is_checkpoint_path
from pipeline.core.errors import InputError
from pipeline.core.versions import (
    DEMO_DATA_VERSION,
    EXTRACTION_VERSION,
    FIT_VERSION,
    FMA_VERSION,
    PRETRAIN_VERSION,
    PROBE_VERSION,
    SAMPLING_VERSION,
    TABLES_VERSION,
)
from pipeline.core.workflow_config import (
    TRANSFER_PROTOCOLS,
    check_yaml_file,
    extraction_slice,
    load_workflow_config,
    needed_backbones,
    protocol_transfers,
    recipe_slice,
    templates_for,
    variant_recipe_section,
)
from pipeline.data.catalog import get_dataset_info, list_datasets

# ---------------------------------------------------------------- config

# Snakemake's own message for a YAML error names neither the file nor the line; this one does.
# (A file given with --configfile is read by Snakemake before this point: see README.)
try:
    check_yaml_file("config.yaml")
except InputError as err:
    sys.exit(f"config error: {err}")


configfile: "config.yaml"


try:
    _checked = load_workflow_config(
        config,
        Path(workflow.basedir) / "schemas" / "config.schema.yaml",
        Path(workflow.basedir) / "presets",
    )
except InputError as err:
    sys.exit(f"config error: {err}")
config.clear()
config.update(_checked)

RESULTS = config["results"]
DATA_ROOT = config["data_root"]
DATASETS = config["datasets"]
SHOTS = config["shots"]
SEEDS = config["seeds"]
BACKBONES = config["backbones"]
NEEDED = needed_backbones(
    config
)  # the configured backbones and those whose caches they reuse
SPECS = {name: get_spec(name) for name in NEEDED}
# Transfer protocols (docs/protocol.md): (source, target) dataset pairs per configured protocol.
PROTOCOLS = {
    name: protocol_transfers(config, name)
    for name in TRANSFER_PROTOCOLS
    if protocol_transfers(config, name)
}
PROTOCOL_SHOTS = {name: config["protocols"][name]["shots"] for name in PROTOCOLS}
TARGETS = list(dict.fromkeys(t for pairs in PROTOCOLS.values() for _, t in pairs))
# Every dataset a job may name: the grid's, the protocols' sources and their targets.
ALL_DATASETS = list(
    dict.fromkeys(
        DATASETS + [s for pairs in PROTOCOLS.values() for s, _ in pairs] + TARGETS
    )
)
# Runtime knobs reach the jobs as resources, never as params: changing the device, the inference
# batch size or the number of workers must not rerun anything (params are a rerun trigger).
RUNTIME_DEVICE = config["runtime"]["device"]
INFER_BATCH = config["runtime"]["batch_size"]
IO_WORKERS = config["runtime"]["workers"]
# Rules start their stages as `$PYTHON -m pipeline...`: the interpreter running Snakemake, so a
# Slurm job needs no activated environment, only the filesystem it shares with the submitting
# machine; under --sdm conda/apptainer/env-modules, the python of the rule's environment. A shell
# variable set by the prefix: Snakemake's linter flags a global used as {PYTHON} in a shell command.
PYTHON = (
    "python"
    if workflow.deployment_settings.deployment_method
    else shlex.quote(sys.executable)
)
shell.prefix(
    f"set -euo pipefail; PYTHON={PYTHON}; "
    # (Snakemake formats the prefix too: braces are doubled.)
    + "export PYTHONPATH="
    + shlex.quote(REPO_ROOT).replace("{", "{{").replace("}", "}}")
    + '"${{PYTHONPATH:+:$PYTHONPATH}}"; '
)  # the prefix replaces the default strict mode


def _gpu_present(device):
    """Whether stage-1 jobs will run on a GPU (checked without importing torch)."""
    if device != "auto":
        return device.startswith("cuda")
    return shutil.which("nvidia-smi") is not None


# Stage-1 jobs take one unit of the `gpu` resource (the default profile allows one at a time) only
# when they will use a GPU; on a CPU-only machine they run side by side, one thread each.
GPU_JOB = 1 if _gpu_present(RUNTIME_DEVICE) else 0
STAGE1_THREADS = 2 if GPU_JOB else 1
DEMO_FOLDERS = {
    get_dataset_info(name).folder: name
    for name in list_datasets()
    if get_dataset_info(name).source
}

for _name in ALL_DATASETS:
    _info = get_dataset_info(_name)
    _key = (
        "datasets" if _name in DATASETS else "protocols"
    )  # a protocol's source or target
    if _info.source is None:  # a real dataset: it must already be under the data root
        if not Path(DATA_ROOT).is_dir():
            sys.exit(
                f"config error: key 'data_root': data root {DATA_ROOT} does not exist"
            )
        if not (Path(DATA_ROOT) / _info.folder).is_dir():
            sys.exit(
                f"config error: key '{_key}': folder {Path(DATA_ROOT) / _info.folder} "
                f"for '{_name}' does not exist"
            )
        if not (Path(DATA_ROOT) / _info.folder / _info.split_file).is_file():
            sys.exit(
                f"config error: key '{_key}': split file "
                f"{Path(DATA_ROOT) / _info.folder / _info.split_file} is missing"
            )


def alternatives(names):
    """A wildcard regex matching exactly ``names`` (or nothing)."""
    return "|".join(names) or "(?!x)x"


# Backbones by what the registry says they need (no per-backbone code below this point).
TRAINED = [b for b in NEEDED if SPECS[b].trains]
# A per-dataset test cache: encodes images itself with a frozen image encoder (zero-shot CLIP).
TEST_PER_DATASET = [
    b
    for b in NEEDED
    if SPECS[b].encodes_images and SPECS[b].frozen_image_encoder and not SPECS[b].trains
]
FROZEN_IMAGE = [b for b in NEEDED if SPECS[b].frozen_image_encoder]
IMAGE_CHANGED = [b for b in NEEDED if not SPECS[b].frozen_image_encoder]
# Stage-2 FMA jobs of a backbone whose class texts depend on the image (CoCoOp) run the text encoder
# over every val and test image ((N_val + N_test) x C prompts, pipeline/backbones/forwards.py): they
# are the *_gpu rules, placed like stage-1 jobs; every other FMA job reads features only.
TEXT_PER_IMAGE = [b for b in NEEDED if SPECS[b].per_image_text]
FEATURES_ONLY = [b for b in NEEDED if not SPECS[b].per_image_text]
# The linear probe sees image features only, so it runs once per distinct set of them: CoOp and
# CoCoOp keep CLIP's image encoder, so their probe is zero-shot CLIP's (registry.image_source).
PROBED = list(dict.fromkeys(image_source(b) for b in BACKBONES))
VARIANT_NAME = r"[A-Za-z0-9_]+"  # an ablation variant's name in paths


wildcard_constraints:
    dataset=alternatives(ALL_DATASETS),
    target=alternatives(TARGETS),
    backbone=alternatives(NEEDED),
    shot=r"\d+",
    seed=r"\d+",
    variant=VARIANT_NAME,


# ---------------------------------------------------------------- paths (each template once)

RUN = "{dataset}/{shot}shot_seed{seed}"
SPLIT_JSON = f"{RESULTS}/splits/{RUN}.json"
FIT_PT = f"{RESULTS}/backbones/{{backbone}}/{RUN}.pt"
FIT_JSON = f"{RESULTS}/backbones/{{backbone}}/{RUN}.json"
FEWSHOT_H5 = f"{RESULTS}/features/{{backbone}}/{RUN}.h5"
RUN_TEST_H5 = f"{RESULTS}/features/{{backbone}}/{RUN}_test.h5"
TEST_H5 = f"{RESULTS}/features/{{backbone}}/{{dataset}}/test.h5"
FMA_JSON = f"{RESULTS}/fma/{{backbone}}/{RUN}.json"
FMA_PT = f"{RESULTS}/fma/{{backbone}}/{RUN}.pt"
PROBE_JSON = f"{RESULTS}/probe/{{backbone}}/{RUN}.json"
PROBE_NPZ = f"{RESULTS}/probe/{{backbone}}/{RUN}.npz"
VARIANT_JSON = f"{RESULTS}/ablations/{{backbone}}/{RUN}/{{variant}}.json"
VARIANT_PT = f"{RESULTS}/ablations/{{backbone}}/{RUN}/{{variant}}.pt"
TABLES = f"{RESULTS}/tables"
TRANSFER_H5 = f"{RESULTS}/transfer/features/{{backbone}}/{RUN}/{{target}}.h5"
TRANSFER_JSON = f"{RESULTS}/transfer/fma/{{backbone}}/{RUN}/{{target}}.json"
TRANSFER_PROBE_JSON = f"{RESULTS}/transfer/probe/{{backbone}}/{RUN}/{{target}}.json"
# The protocols whose targets have the source's classes: the linear probe applies to them.
PROBE_PROTOCOLS = ("domain_generalization",)
PROBE_TARGETS = list(
    dict.fromkeys(t for p in PROBE_PROTOCOLS for _, t in PROTOCOLS.get(p, []))
)


def log_path(rule, pattern=RUN):
    return f"{RESULTS}/logs/{rule}/{{backbone}}/{pattern}.log"


def fill(template, w, **overrides):
    """A path template filled from the wildcards ``w`` (and overrides)."""
    values = {
        k: getattr(w, k)
        for k in ("backbone", "dataset", "shot", "seed", "target")
        if hasattr(w, k)
    }
    return template.format(**{**values, **overrides})


def split_file(dataset):
    info = get_dataset_info(dataset)
    return f"{DATA_ROOT}/{info.folder}/{info.split_file}"


def encoder_inputs():
    """A local checkpoint is an input: replacing the file reruns everything that encodes."""
    pretrained = config["encoder"].get("pretrained")
    return [pretrained] if pretrained and is_checkpoint_path(pretrained) else []


def needs_encoder(backbone):
    spec = SPECS[backbone]
    return spec.encodes_images or spec.changes in ("text", "both")


def test_cache(backbone, w):
    """The test cache a backbone's runs read: per dataset (its image source's) or its own per run."""
    if SPECS[backbone].frozen_image_encoder:
        return fill(TEST_H5, w, backbone=image_source(backbone))
    return fill(RUN_TEST_H5, w, backbone=backbone)


# ---------------------------------------------------------------- config slices (rule params)


def encoder_slice():
    return {"encoder": config["encoder"]}


def encoder_expectation():
    """What a cache or transfer file must record of the encoder it was made with."""
    return {
        "model": config["encoder"]["model"],
        "pretrained": config["encoder"].get("pretrained") or "",
    }


def cache_expectation(backbone, dataset):
    """What stage 2 checks in a few-shot cache's attributes before trusting it."""
    return {
        **encoder_expectation(),
        "templates": templates_for(config, backbone, dataset),
    }


def extract_slice(backbone, dataset):
    """The config one extraction job depends on (besides its input files)."""
    out = {**encoder_slice(), "templates": templates_for(config, backbone, dataset)}
    if SPECS[backbone].encodes_images:
        out["extraction"] = extraction_slice(config, dataset)
    return out


def fit_slice(backbone, dataset, shot):
    """The config one fit_backbone job depends on (besides its input files)."""
    out = {
        **encoder_slice(),
        "recipe": recipe_slice(config, backbone, dataset, shot),
        "templates": templates_for(config, backbone, dataset),
    }
    if SPECS[backbone].fit_input == "images":
        out["extraction"] = extraction_slice(config, dataset)
    return out


# Params as canonical JSON, computed once per distinct argument tuple. A paper-sized grid has
# thousands of jobs sharing a few hundred slices, and Snakemake evaluates params more than once per
# job (its conda check does too).
_PARAMS = {}


def memo_params(kind, make, *args):
    """canonical(make(*args)), computed once per (kind, args)."""
    key = (kind, *args)
    if key not in _PARAMS:
        _PARAMS[key] = canonical(make(*args))
    return _PARAMS[key]


def fit_params(backbone, dataset, shot):
    return memo_params("fit", fit_slice, backbone, dataset, shot)


def extract_params(backbone, dataset):
    return memo_params("extract", extract_slice, backbone, dataset)


def expect_params(backbone, dataset):
    return memo_params("expect", cache_expectation, backbone, dataset)


# ---------------------------------------------------------------- rule inputs


def fit_inputs(w):
    spec = SPECS[w.backbone]
    if spec.fit_input == "features":
        inputs = {"fewshot": fill(FEWSHOT_H5, w, backbone=spec.reuses)}
    else:
        inputs = {"split": split_file(w.dataset), "run_split": fill(SPLIT_JSON, w)}
    if needs_encoder(w.backbone):
        inputs["encoder"] = encoder_inputs()
    return inputs


def fit_args(w, input):
    if SPECS[w.backbone].fit_input == "features":
        return f"--fewshot {shlex.quote(input.fewshot)}"
    return f"--data-root {shlex.quote(DATA_ROOT)} --split-file {shlex.quote(input.run_split)}"


def extract_inputs(w):
    spec = SPECS[w.backbone]
    inputs = {"split": split_file(w.dataset), "run_split": fill(SPLIT_JSON, w)}
    if needs_encoder(w.backbone):
        inputs["encoder"] = encoder_inputs()
    if spec.trains:
        inputs["state"] = fill(FIT_PT, w)
    if spec.reuses:
        inputs["reuse_fewshot"] = fill(FEWSHOT_H5, w, backbone=spec.reuses)
        if not spec.frozen_image_encoder:
            inputs["reuse_test"] = test_cache(spec.reuses, w)
    return inputs


def extract_args(w, input):
    args = []
    for key in ("state", "reuse_fewshot", "reuse_test"):
        if key in input.keys():
            args.append(f"--{key.replace('_', '-')} {shlex.quote(input[key])}")
    return " ".join(args)


def stage2_inputs(w):
    """A stage-2 job reads its backbone's few-shot cache and test cache; per-image class texts
    (CoCoOp) are computed on the fly from the trained backbone."""
    inputs = {"fewshot": fill(FEWSHOT_H5, w), "test": test_cache(w.backbone, w)}
    if SPECS[w.backbone].per_image_text:
        inputs["state"] = fill(FIT_PT, w)
        inputs["encoder"] = encoder_inputs()
    return inputs


def state_args(w, input):
    return (
        f"--backbone-state {shlex.quote(input.state)}"
        if "state" in input.keys()
        else ""
    )


def runs(template, backbones, datasets=None, shots=None, **extra):
    return expand(
        template,
        backbone=backbones,
        dataset=datasets or DATASETS,
        shot=shots or SHOTS,
        seed=SEEDS,
        **extra,
    )


# ---------------------------------------------------------------- transfer protocols


def transfer_slice(backbone, target):
    """The config an extract_transfer job depends on: the encoder and the target's templates."""
    return {**encoder_slice(), "templates": templates_for(config, backbone, target)}


def transfer_params(backbone, target):
    return memo_params("transfer", transfer_slice, backbone, target)


def target_test_cache(backbone, w):
    """The target's per-dataset test file a backbone with a frozen image encoder reads."""
    return fill(TEST_H5, w, backbone=image_source(backbone), dataset=w.target)


def transfer_extract_inputs(w):
    spec = SPECS[w.backbone]
    inputs = {"split": split_file(w.target), "encoder": encoder_inputs()}
    if spec.trains:
        inputs["state"] = fill(FIT_PT, w)
    if not spec.frozen_image_encoder and not spec.encodes_images:
        inputs["reuse_test"] = target_test_cache(spec.reuses, w)
    return inputs


def transfer_fma_inputs(w):
    spec = SPECS[w.backbone]
    inputs = {"transfer": fill(TRANSFER_H5, w), "velocity": fill(FMA_PT, w)}
    if spec.frozen_image_encoder:
        inputs["test"] = target_test_cache(w.backbone, w)
    if spec.per_image_text:
        inputs["state"] = fill(FIT_PT, w)
        inputs["encoder"] = encoder_inputs()
    return inputs


def transfer_probe_inputs(w):
    inputs = {"weights": fill(PROBE_NPZ, w), "transfer": fill(TRANSFER_H5, w)}
    if SPECS[w.backbone].frozen_image_encoder:
        inputs["test"] = target_test_cache(w.backbone, w)
    return inputs


def transfer_args(w, input):
    keys = [k for k in ("test", "state") if k in input.keys()]
    flags = {"test": "--test", "state": "--backbone-state"}
    return " ".join(f"{flags[k]} {shlex.quote(input[k])}" for k in keys)


def protocol_source_records(protocol):
    """The records of every source run of a protocol: FMA's and the linear probe's."""
    out = []
    for source in dict.fromkeys(s for s, _ in PROTOCOLS[protocol]):
        out += runs(FMA_JSON, BACKBONES, [source], PROTOCOL_SHOTS[protocol])
        out += runs(PROBE_JSON, PROBED, [source], PROTOCOL_SHOTS[protocol])
    return out


def protocol_transfer_records(protocol):
    out = []
    templates = [(TRANSFER_JSON, BACKBONES)]
    if protocol in PROBE_PROTOCOLS:
        templates.append((TRANSFER_PROBE_JSON, PROBED))
    for source, target in PROTOCOLS[protocol]:
        for template, backbones in templates:
            out += runs(
                template, backbones, [source], PROTOCOL_SHOTS[protocol], target=target
            )
    return out


def protocol_records(protocol):
    return protocol_source_records(protocol) + protocol_transfer_records(protocol)


def protocol_table_files(protocols):
    return [
        f"{TABLES}/{p}.{ext}" for p in protocols for ext in ("md", "csv", "tex", "html")
    ]


# ---------------------------------------------------------------- ablations

ABLATIONS = config.get("ablations", {})
ABLATION_VARIANTS = ABLATIONS.get("variants", {})
ABLATION_BACKBONES = ABLATIONS.get("backbones", []) if ABLATION_VARIANTS else []
ABLATION_LABELS = {name: v.get("label", name) for name, v in ABLATION_VARIANTS.items()}


def canonical_ordered(obj):
    """JSON that keeps the mapping's order (the ablation labels set the table's row order)."""
    return json.dumps(obj, separators=(",", ":"))


def variant_fma_slice(variant):
    return {**config["fma"], **ABLATION_VARIANTS[variant].get("fma", {})}


def variant_is_online(variant):
    return bool(variant_fma_slice(variant).get("online"))


OFFLINE_VARIANTS = [v for v in ABLATION_VARIANTS if not variant_is_online(v)]


def online_args(w):
    """train_fma arguments for online views: the images and the extraction rule's encoder slice."""
    if not variant_is_online(w.variant):
        return ""
    slice_ = {**encoder_slice(), "extraction": extraction_slice(config, w.dataset)}
    return f"--data-root {shlex.quote(DATA_ROOT)} --online-config {shlex.quote(canonical(slice_))}"


def ablation_runs():
    return runs(
        VARIANT_JSON,
        ABLATION_BACKBONES,
        ABLATIONS.get("datasets", []),
        ABLATIONS.get("shots", []),
        variant=list(ABLATION_VARIANTS),
    )


# Variants of one trained backbone's recipe (target backbone_ablations): each fits the backbone on
# its runs with part of backbone_config.<backbone> overridden and scores its own test prediction.
BACKBONE_ABLATIONS = config.get("backbone_ablations", {})
BACKBONE_VARIANTS = BACKBONE_ABLATIONS.get("variants", {})
BACKBONE_ABLATION_LABELS = {
    name: v.get("label", name) for name, v in BACKBONE_VARIANTS.items()
}
FIT_VARIANT_JSON = f"{RESULTS}/backbone_ablations/{{backbone}}/{RUN}/{{variant}}.json"
FIT_VARIANT_PT = f"{RESULTS}/backbone_ablations/{{backbone}}/{RUN}/{{variant}}.pt"
FIT_VARIANT_RECORD = (
    f"{RESULTS}/backbone_ablations/{{backbone}}/{RUN}/{{variant}}.record.json"
)


def fit_variant_slice(w):
    """fit_slice of the ablated backbone with the variant's recipe."""
    section = variant_recipe_section(config, w.variant)
    return {
        **fit_slice(w.backbone, w.dataset, w.shot),
        "recipe": resolved_recipe(w.backbone, section, w.dataset, int(w.shot)),
    }


def backbone_ablation_runs():
    if not BACKBONE_VARIANTS:
        return []
    return runs(
        FIT_VARIANT_RECORD,
        [BACKBONE_ABLATIONS["backbone"]],
        BACKBONE_ABLATIONS.get("datasets", []),
        BACKBONE_ABLATIONS.get("shots", []),
        variant=list(BACKBONE_VARIANTS),
    )


# ---------------------------------------------------------------- time limits

# Every job's `runtime` resource, in minutes: the time limit a cluster executor gives it (Slurm sends
# SIGTERM at the limit; the stages then remove their temporary files). Jobs on the demo datasets are
# CPU-sized and take seconds to ~3 minutes; on real datasets the published recipes take minutes to
# hours on a GPU. The limits are ~10x those times and double at each retry (--retries). A profile
# overrides them: set-resources: {fit_backbone: {runtime: 600}}. Local runs do not enforce them.
JOB_MINUTES = {  # rule: (demo dataset, real dataset)
    "build_demo_dataset": (30, 30),
    "sample_fewshot": (10, 10),
    "pretrain_demo_backbone": (60, 60),
    "fit_backbone": (30, 24 * 60),
    "extract_test": (30, 8 * 60),
    "extract_fewshot": (30, 4 * 60),
    "extract_run": (30, 8 * 60),
    "train_fma": (30, 4 * 60),
    "train_fma_gpu": (30, 8 * 60),
    "train_fma_variant": (60, 8 * 60),
    "train_fma_variant_gpu": (60, 8 * 60),
    "train_probe": (15, 60),
    "make_tables": (15, 15),
    "make_ablation_table": (15, 15),
    "fit_backbone_variant": (30, 24 * 60),
    "make_backbone_ablation_table": (15, 15),
    "extract_transfer": (30, 8 * 60),
    "transfer_fma": (15, 60),
    "transfer_fma_gpu": (15, 8 * 60),
    "transfer_probe": (15, 60),
    "make_protocol_table": (15, 15),
}


def job_minutes(rule):
    """The `runtime` resource of ``rule``: a function of the job's dataset and attempt."""
    demo, real = JOB_MINUTES[rule]

    def minutes(wildcards, attempt):
        named = [getattr(wildcards, k, None) for k in ("dataset", "target")]
        datasets = [d for d in named if d] or DATASETS
        is_demo = all(get_dataset_info(d).source is not None for d in datasets)
        return (demo if is_demo else real) * 2 ** (attempt - 1)

    return minutes


# ---------------------------------------------------------------- targets

# Every result record the tables are built from. `all` asks for them too: Snakemake remakes a missing
# file only when a target asks for it or a job that needs it must run anyway (a missing intermediate
# file is ignored while its consumers look up to date), so a record deleted by a failed job would
# otherwise leave stale tables behind it with "Nothing to be done". The ablation target likewise.
TABLE_RECORDS = runs(FMA_JSON, BACKBONES) + runs(PROBE_JSON, PROBED)
TABLE_FILES = [
    f"{TABLES}/{name}.{ext}"
    for name in ("fewshot", "plugplay")
    for ext in ("md", "csv", "tex", "html")
]
TABLE_FILES.append(f"{TABLES}/curves.png")
# The paper preset sets protocols.in_all: `snakemake` alone then runs the transfer protocols too.
IN_ALL_PROTOCOLS = list(PROTOCOLS) if config["protocols"].get("in_all") else []
ABLATION_TABLE_FILES = [
    f"{TABLES}/ablations.{ext}" for ext in ("md", "csv", "tex", "html")
]
BACKBONE_ABLATION_TABLE_FILES = [
    f"{TABLES}/backbone_ablations.{ext}" for ext in ("md", "csv", "tex", "html")
]


# ---------------------------------------------------------------- report

# What `snakemake --report report.html` shows: each table's HTML page and the figure, with a caption
# (workflow/report/, rendered with the job's config) and the menu entry it is listed under. Snakemake
# shows HTML and images but not Markdown; the CSV, Markdown and LaTeX stay in results/tables/.
REPORT_ITEMS = {  # file name: (caption, category, subcategory, its name in the list)
    "fewshot.html": ("fewshot.rst", "Few-shot results", None, "test accuracy tables"),
    "curves.png": ("curves.rst", "Few-shot results", None, "accuracy vs Euler step"),
    "plugplay.html": ("plugplay.rst", "Plug-and-play", None, "plug-and-play tables"),
    "ablations.html": ("ablations.rst", "Ablations", "FMA", "FMA variants"),
    "{protocol}.html": (
        "protocols.rst",
        "Transfer protocols",
        "{protocol}",
        "{protocol} tables",
    ),
    "backbone_ablations.html": (
        "backbone_ablations.rst",
        "Ablations",
        "Backbone recipe",
        "backbone recipe variants",
    ),
}


def reported(paths):
    """A table rule's outputs, those the report shows flagged for it."""
    out = []
    for path in paths:
        item = REPORT_ITEMS.get(os.path.basename(path))
        if item is None:
            out.append(path)
            continue
        caption, category, subcategory, name = item
        # A caption path is relative to the file of the rule that uses it (rules/*.smk). (A line
        # starting with `report(` would be read by snakefmt as the report directive.)
        flagged = report(
            path,
            caption=f"../report/{caption}",
            category=category,
            subcategory=subcategory,
            labels={"result": name},
        )
        out.append(flagged)
    return out
