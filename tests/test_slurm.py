"""The tiny workflow (.test/config.yaml) through the cluster profile on a real single-node Slurm:
partitions and GPUs per rule, GPU jobs side by side, jobs that find Python with none on PATH, a
failing job's Slurm state, no-op rerun, the scope of an FMA change; with PIPELINE_SLURM_LONG=1 also
the transfer protocols and the ablations. Skipped where the Slurm packages are missing
(.ci/install-slurm.sh)."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from test_workflow import slurm_gpu_rules
from test_workflow import snakemake as run_locally

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
PROFILE = REPO / "workflow" / "profiles" / "slurm"
# The tiny config at one shot: every rule that runs on the cluster, every backbone, half the jobs
# (each job starts Snakemake twice and Python once more on the node, 10-20 s on a busy machine).
TINY = {**yaml.safe_load((REPO / ".test" / "config.yaml").read_text()), "shots": [1]}
# The profile's GPU rules (tests/test_workflow.py checks them against the rules holding a `gpu` resource).
GPU_RULES = slurm_gpu_rules()
# The transfer protocols and the ablations on the cluster take ~15 min here, more than CI has room
# for: run with PIPELINE_SLURM_LONG=1 (README, "Slurm").
LONG = pytest.mark.skipif(
    not os.environ.get("PIPELINE_SLURM_LONG"), reason="set PIPELINE_SLURM_LONG=1 to run (~15 min)"
)

pytestmark = pytest.mark.workflow


def on_slurm(workdir: Path, *args: str, config: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    """The README's cluster command, `snakemake --workflow-profile workflow/profiles/slurm`, in
    ``workdir`` with ``config`` as its config.yaml."""
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir)]
    cmd += ["--workflow-profile", str(PROFILE), *args]
    # No `python` on PATH, as on a node without an activated environment: the jobs must find the
    # interpreter by themselves.
    path = [d for d in os.environ["PATH"].split(os.pathsep) if d and not shutil.which("python", path=d)]
    env = {**os.environ, "PATH": os.pathsep.join(path)}
    # The timeout stops a run that waits for a status answer that never comes.
    return subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, timeout=timeout, env=env)


def check_placement(jobs: list[dict[str, str]]) -> None:
    """Every job completed; a GPU rule's on `gpu` with one GPU and 4 CPUs, any other on `cpu`."""
    for job in jobs:
        assert job["JobState"] == "COMPLETED", job
        if job["rule"] in GPU_RULES:
            assert (job["Partition"], job.get("TresPerJob")) == ("gpu", "gres:gpu:1"), job
            assert job["NumCPUs"] == "4", job
        else:
            assert (job["Partition"], job.get("TresPerJob")) == ("cpu", None), job


def submitted(cluster, before: set[str]) -> list[dict[str, str]]:
    """The jobs submitted since ``before`` (job ids), each with its rule from the plugin's comment."""
    jobs = [job for job_id, job in cluster.jobs().items() if job_id not in before]
    for job in jobs:
        job["rule"] = job.get("Comment", "").removeprefix("rule_").split("_wildcards_")[0]
    return jobs


def span(job: dict[str, str]) -> tuple[datetime, datetime]:
    return datetime.fromisoformat(job["StartTime"]), datetime.fromisoformat(job["EndTime"])


def overlap(a: dict[str, str], b: dict[str, str]) -> bool:
    (start_a, end_a), (start_b, end_b) = span(a), span(b)
    return start_a < end_b and start_b < end_a


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("slurm")
    result = on_slurm(workdir, config=TINY)
    assert result.returncode == 0, result.stderr[-5000:] + slurm_cluster.log("slurmctld")[-2000:]
    return workdir, submitted(slurm_cluster, set())


def test_jobs_land_on_their_partitions_with_their_gpus(slurm_run) -> None:
    workdir, jobs = slurm_run
    assert (workdir / TINY["results"] / "tables/fewshot.md").is_file()
    rules = Counter(job["rule"] for job in jobs)
    assert set(rules) == {
        "build_demo_dataset", "sample_fewshot", "fit_backbone", "extract_test", "extract_fewshot",
        "extract_run", "train_fma", "train_fma_gpu", "train_probe",
    }, rules  # fmt: skip
    # CoCoOp's FMA job runs the text encoder (train_fma_gpu); make_tables and all run locally
    assert rules["train_fma"] == 5 and rules["train_fma_gpu"] == 1 and rules["fit_backbone"] == 5
    check_placement(jobs)
    # No cap from the local profile: GPU jobs ran side by side on the two GPUs.
    gpu_jobs = [job for job in jobs if job["rule"] in GPU_RULES]
    assert any(overlap(a, b) for i, a in enumerate(gpu_jobs) for b in gpu_jobs[i + 1 :])


def test_rerun_submits_nothing(slurm_run, slurm_cluster) -> None:
    workdir, _ = slurm_run
    before = set(slurm_cluster.jobs())
    result = on_slurm(workdir, config=TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stderr
    assert submitted(slurm_cluster, before) == []


def test_fma_change_submits_only_fma_jobs(slurm_run, slurm_cluster) -> None:
    workdir, _ = slurm_run
    config = copy.deepcopy(TINY)
    config["fma"]["epochs"] = 5
    before = set(slurm_cluster.jobs())
    result = on_slurm(workdir, config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    fma_jobs = Counter(job["rule"] for job in submitted(slurm_cluster, before))
    assert fma_jobs == {"train_fma": 5, "train_fma_gpu": 1}
    assert "localrule make_tables:" in result.stderr  # the tables are rebuilt on the submitting machine


def test_failing_job_fails_the_run_with_its_slurm_state(slurm_run, slurm_cluster) -> None:
    workdir, _ = slurm_run
    cache = workdir / TINY["results"] / "features/zeroshot/demo_digits/1shot_seed1.h5"
    stat = cache.stat()
    cache.write_bytes(b"not an HDF5 file")
    os.utime(cache, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the same mtime: only the forced job runs
    target = f"{TINY['results']}/probe/zeroshot/demo_digits/1shot_seed1.json"
    result = on_slurm(workdir, target, "--forcerun", target, config=TINY)
    assert result.returncode != 0
    assert "SLURM status is: 'FAILED'" in result.stderr, result.stderr[-3000:]
    assert "Error in rule train_probe" in result.stderr and str(cache.name) in result.stderr


@LONG
def test_protocols_and_ablations_run_on_their_partitions(slurm_cluster, tmp_path: Path) -> None:
    """Every transfer and ablation rule through the profile; the protocol tables equal a local run's."""
    targets = ("protocols", "ablations", "backbone_ablations")
    (tmp_path / "slurm").mkdir()
    before = set(slurm_cluster.jobs())
    result = on_slurm(tmp_path / "slurm", *targets, config=TINY, timeout=3000)
    assert result.returncode == 0, result.stderr[-5000:]
    jobs = submitted(slurm_cluster, before)
    rules = Counter(job["rule"] for job in jobs)
    assert {
        "extract_transfer", "transfer_fma", "transfer_fma_gpu", "transfer_probe", "train_fma_variant",
        "train_fma_variant_gpu", "fit_backbone_variant",
    } <= set(rules), rules  # fmt: skip
    check_placement(jobs)
    before = set(slurm_cluster.jobs())
    rerun = on_slurm(tmp_path / "slurm", *targets, config=TINY)
    assert rerun.returncode == 0 and "Nothing to be done" in rerun.stderr, rerun.stderr[-3000:]
    assert submitted(slurm_cluster, before) == []
    # The same config run locally gives the same protocol tables (the ablation tables also hold
    # training times, which differ).
    local = tmp_path / "local"
    local.mkdir()
    result = run_locally(local, *targets, config=TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    for protocol in ("base_to_new", "cross_dataset", "domain_generalization"):
        for ext in ("md", "csv", "tex"):
            name = f"{TINY['results']}/tables/{protocol}.{ext}"
            assert (tmp_path / "slurm" / name).read_bytes() == (local / name).read_bytes(), name
