"""The workflow end to end on a tiny config: full run, no-op rerun, rerun scope, bad configs, lint."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"

pytestmark = pytest.mark.workflow

TINY = {
    "results": "results",
    "data_root": "results/demo_data",
    "datasets": ["demo_digits"],
    "groups": {"difficult": ["demo_digits"], "easy": []},
    "shots": [1, 2],
    "seeds": [1],
    "backbones": ["zeroshot"],
    "encoder": {"model": "demo-vit-t-28", "pretrained": None},
    "extraction": {"views": 1},
    "fma": {"epochs": 4, "blocks": 2, "max_steps": 4},
    "probe": {"search_steps": 1, "c_grid": [1.0, 0.01]},
    "ablations": {
        "datasets": ["demo_digits"],
        "shots": [1],
        "variants": {
            "default": {"label": "FMA"},
            "center_view": {"label": "center view only", "fma": {"train_views": 0}},
            "online": {"label": "online views", "fma": {"online": True}},
        },
    },
    "runtime": {"device": "cpu", "batch_size": 64, "workers": 0},
}


def snakemake(workdir: Path, *args: str, config: dict | None = None) -> subprocess.CompletedProcess:
    if config is not None:
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(SNAKEFILE),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, timeout=900)


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Parse Snakemake's 'Job stats' table of a dry run into {rule: count}."""
    out = result.stdout + result.stderr
    if "Nothing to be done" in out:
        return {}
    stats = out.split("Job stats:", 1)[1]
    jobs = {}
    for line in stats.splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        jobs[match.group(1)] = int(match.group(2))
    jobs.pop("total", None)
    return jobs


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("workflow")
    result = snakemake(workdir, config=TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_full_run_writes_tables(finished_run: Path) -> None:
    tables = finished_run / "results" / "tables" / "zeroshot"
    md = (tables / "fewshot.md").read_text()
    for method in ("Zero-shot", "Linear probe", "FMA"):
        assert method in md
    assert "demo_digits" in md
    assert (tables / "curves.png").stat().st_size > 1000
    assert "\\begin{tabular}" in (tables / "fewshot.tex").read_text()
    metrics = json.loads((finished_run / "results/fma/zeroshot/demo_digits/2shot_seed1.json").read_text())
    assert len(metrics["test_acc"]) == TINY["fma"]["max_steps"] + 1
    # One test cache for the dataset, shared by both shots.
    caches = sorted(p.name for p in (finished_run / "results/features/zeroshot/demo_digits").iterdir())
    assert caches == ["1shot_seed1.h5", "2shot_seed1.h5", "test.h5"]
    assert all((finished_run / "results/logs").rglob("*.log"))


def test_dry_run_after_full_run_has_nothing_to_do(finished_run: Path) -> None:
    result = snakemake(finished_run, "-n", config=TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    assert planned_jobs(result) == {}


def test_runtime_change_reruns_nothing(finished_run: Path) -> None:
    config = copy.deepcopy(TINY)
    config["runtime"] = {"device": "cpu", "batch_size": 7, "workers": 1}
    result = snakemake(finished_run, "-n", config=config)
    assert result.returncode == 0, result.stderr[-2000:]
    assert planned_jobs(result) == {}
    snakemake(finished_run, "-n", config=TINY)  # restore config.yaml for the other tests


def test_fma_change_plans_only_fma_and_tables(finished_run: Path) -> None:
    config = copy.deepcopy(TINY)
    config["fma"]["epochs"] = 5
    result = snakemake(finished_run, "-n", config=config)
    assert result.returncode == 0, result.stderr[-2000:]
    assert planned_jobs(result) == {"train_fma": 2, "make_tables": 1, "all": 1}
    snakemake(finished_run, "-n", config=TINY)


def test_encoder_change_reruns_extraction(finished_run: Path) -> None:
    config = copy.deepcopy(TINY)
    config["extraction"]["views"] = 2
    result = snakemake(finished_run, "-n", config=config)
    jobs = planned_jobs(result)
    assert jobs.get("extract_fewshot") == 2 and "extract_test" not in jobs
    assert jobs.get("train_fma") == 2 and jobs.get("linear_probe") == 2
    config = copy.deepcopy(TINY)
    config["encoder"]["model"] = "ViT-S-32"
    jobs = planned_jobs(snakemake(finished_run, "-n", config=config))
    assert jobs.get("extract_test") == 1 and jobs.get("extract_fewshot") == 2
    snakemake(finished_run, "-n", config=TINY)


def test_ablations_target_reuses_caches_and_writes_table(finished_run: Path) -> None:
    jobs = planned_jobs(snakemake(finished_run, "-n", "ablations", config=TINY))
    assert jobs == {"train_fma_variant": 3, "make_ablation_table": 1, "ablations": 1}
    result = snakemake(finished_run, "ablations", config=TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    md = (finished_run / "results/tables/zeroshot/ablations.md").read_text()
    for label in ("FMA", "center view only", "online views", "oracle"):
        assert label in md
    online = json.loads(
        (finished_run / "results/ablations/zeroshot/demo_digits/1shot_seed1/online.json").read_text()
    )
    assert online["online"] and online["online_encode_seconds"] > 0


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda c: c["fma"].update(lr="fast"), "fma.lr"),
        (lambda c: c["fma"].update(learning_rate=1e-3), "fma.learning_rate"),
        (lambda c: c.update(shots=["four"]), "shots.0"),
        (lambda c: c.update(datasets=["no_such_set"]), "no_such_set"),
        (lambda c: c["runtime"].update(device="tpu"), "runtime.device"),
        (lambda c: c["ablations"]["variants"]["online"]["fma"].update(blocks="six"), "blocks"),
        (lambda c: c.update(datasets=["dtd"], data_root="/no/such/root", ablations={}), "/no/such/root"),
    ],
)
def test_bad_config_fails_naming_the_key(tmp_path: Path, edit, needle: str) -> None:
    config = copy.deepcopy(TINY)
    edit(config)
    result = snakemake(tmp_path, "-n", config=config)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("config error:")]
    assert len(errors) == 1 and needle in errors[0], result.stderr[-2000:]


def test_lint_is_clean(tmp_path: Path) -> None:
    result = snakemake(tmp_path, "--lint", config=TINY)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Congratulations" in result.stdout + result.stderr
