"""How long Snakemake takes to plan the paper preset's whole grid (a dry run, nothing executed).

The paper preset (`--config preset=paper`) is ViT-B/16 on the 11 datasets, shots 1/2/4/8/16,
seeds 1-3, six backbones and the three transfer protocols. This script lays the 11 datasets and
ImageNet's four test-only variants out in their exact folder layouts with tiny images
(tests/fixtures_datasets.py), runs `snakemake -n` on them from a scratch directory and prints the
number of planned jobs per rule and the wall time of the dry run, best of --repeats, three ways:
with `--quiet rules` (the summary only), as a plain `snakemake -n` (every job listed, read from a
pipe), and with `--quiet` (no listing and no summary: the DAG is built and nothing is printed).
Snakemake formats every job for the listing in the first two, so they take about the same time; the
third is the planning alone. Target: under 5 s on a 2-core machine.

Then Snakemake's own floor: a null workflow (two rules with one wildcard, one input and one output,
no params, resources, functions or logs) planned by the same Snakemake at the preset's job count and
at a quarter and half of it, with the job count that would plan in 5 s on the line through them;
and the null workflow at the preset's job count with `--quiet`.

    python bench/plan_paper.py [--repeats 3] [--keep DIR] [--no-floor]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from fixtures_datasets import make_root  # noqa: E402

from bench.machine import cpu_model  # noqa: E402

PAPER_DATASETS = (
    "imagenet", "caltech101", "oxford_pets", "stanford_cars", "flowers102", "food101",
    "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101",
    # the domain-generalization protocol's targets (test only)
    "imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r",
)  # fmt: skip


def job_stats(output: str) -> dict[str, int]:
    """Snakemake's 'Job stats' table of a dry run as {rule: count} (with 'total')."""
    assert "Job stats:" in output, output[-3000:]
    jobs = {}
    for line in output.split("Job stats:", 1)[1].splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        jobs[match.group(1)] = int(match.group(2))
    return jobs


def snakemake_version() -> str:
    from importlib.metadata import version

    return version("snakemake")


QUIET = {"rules": ["--quiet", "rules"], "plain": [], "all": ["--quiet"]}


def dry_run(workdir: Path, quiet: str = "rules") -> tuple[float, dict[str, int]]:
    """Wall time of the paper preset's dry run and its job counts (none with ``quiet="all"``)."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile")]
    cmd += ["--directory", str(workdir), "--cores", "2", "-n", *QUIET[quiet]]
    cmd += ["--config", "preset=paper", f"data_root={workdir / 'data'}", f"results={workdir / 'results'}"]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"dry run failed:\n{result.stderr[-3000:]}")
    return seconds, ({} if quiet == "all" else job_stats(result.stdout + result.stderr))


NULL_SNAKEFILE = """\
rule all:
    input: expand("b/{{i}}.txt", i=range({pairs}))
rule a:
    output: "a/{{i}}.txt"
    shell: "echo {{wildcards.i}} > {{output}}"
rule b:
    input: "a/{{i}}.txt"
    output: "b/{{i}}.txt"
    shell: "cp {{input}} {{output}}"
"""


def null_dry_run(workdir: Path, n_jobs: int, quiet: str = "rules") -> tuple[float, int]:
    """Wall time of `snakemake -n --quiet rules` (or `--quiet`: ``quiet="all"``, then no job count)
    on a null workflow of about ``n_jobs`` jobs."""
    workdir.mkdir(parents=True, exist_ok=True)
    pairs = max(1, (n_jobs - 1) // 2)
    (workdir / "Snakefile").write_text(NULL_SNAKEFILE.format(pairs=pairs))
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "-n", *QUIET[quiet]]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"null dry run failed:\n{result.stderr[-3000:]}")
    return seconds, (2 * pairs + 1 if quiet == "all" else job_stats(result.stdout + result.stderr)["total"])


def floor(workdir: Path, n_jobs: int, repeats: int) -> None:
    """Print Snakemake's planning time for null workflows of n/4, n/2 and n jobs (best of repeats)
    and the job count that would plan in 5 s on the least-squares line through them."""
    sizes, seconds = [], []
    for fraction in (4, 2, 1):
        best, jobs = min(
            null_dry_run(workdir / f"null{fraction}", n_jobs // fraction) for _ in range(repeats)
        )
        sizes.append(jobs)
        seconds.append(best)
        print(f"  {jobs:6d} jobs: {best:.2f} s")
    x, y = np.array(sizes, float), np.array(seconds)
    slope, intercept = np.polyfit(x, y, 1)
    most = (5 - intercept) / slope
    print(f"  fit: {intercept:.2f} s + {1000 * slope:.2f} ms per job; 5 s at most ~{most:,.0f} jobs")
    runs = [null_dry_run(workdir / "null1", n_jobs, quiet="all") for _ in range(repeats)]
    print(f"  {runs[0][1]:6d} jobs, --quiet (planning only): best {min(t for t, _ in runs):.2f} s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--keep", type=Path, help="build the scratch directory here and keep it")
    p.add_argument("--no-floor", action="store_true", help="skip the null-workflow floor")
    args = p.parse_args()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="plan_paper_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copy(REPO / "config.yaml", workdir / "config.yaml")
        make_root(workdir / "data", PAPER_DATASETS)
        print(f"cpu: {cpu_model()} ({os.cpu_count()} cores), load average {os.getloadavg()[0]:.2f} at start")
        print(f"snakemake {snakemake_version()}, python {sys.version.split()[0]}")
        times, plain, planning = [], [], []
        for _ in range(args.repeats):  # alternated, so that all three see the same machine load
            seconds, jobs = dry_run(workdir)
            times.append(seconds)
            seconds, plain_jobs = dry_run(workdir, quiet="plain")
            plain.append(seconds)
            assert plain_jobs == jobs, (plain_jobs, jobs)
            planning.append(dry_run(workdir, quiet="all")[0])
        where = "fixture data root with the 11 datasets and the 4 ImageNet variants"
        print(f"\npaper preset, {where}: {jobs.get('total', 0)} jobs planned")
        for rule, count in sorted(jobs.items(), key=lambda kv: -kv[1]):
            if rule != "total":
                print(f"  {rule:28s} {count:6d}")
        labels = ("snakemake -n --quiet rules", "snakemake -n (plain)", "snakemake -n --quiet (no listing)")
        for label, runs in zip(labels, (times, plain, planning), strict=True):
            print(f"dry run ({label}, whole process): best {min(runs):.2f} s of {args.repeats}: "
                  + ", ".join(f"{t:.2f}" for t in runs))  # fmt: skip
        if not args.no_floor:
            print("\nSnakemake's floor: a null workflow (snakemake -n --quiet rules, whole process, best of "
                  f"{args.repeats}):")  # fmt: skip
            floor(workdir / "null", jobs["total"], args.repeats)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
