"""The workflow end to end on the tiny config (.test/config.yaml): every backbone's jobs, the report
page and its screenshot, no-op rerun, rerun scope, a backbone added with no edit under workflow/, bad
configs, lint."""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
TINY = yaml.safe_load((REPO / ".test" / "config.yaml").read_text())

pytestmark = pytest.mark.workflow


def snakemake(
    workdir: Path,
    *args: str,
    config: dict | None = None,
    snakefile: Path = SNAKEFILE,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    if config is not None:
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--directory", str(workdir)]
    cmd += ["--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, timeout=900, env=env)


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Parse Snakemake's 'Job stats' table of a dry run into {rule: count}."""
    out = result.stdout + result.stderr
    if "Nothing to be done" in out:
        return {}
    assert "Job stats:" in out, out[-3000:]
    jobs = {}
    for line in out.split("Job stats:", 1)[1].splitlines()[3:]:
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
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir


def test_full_run_plans_and_writes_every_backbone(finished_run: Path) -> None:
    results = finished_run / TINY["results"]
    md = (results / "tables" / "fewshot.md").read_text()
    for row in ("| Zero-shot CLIP |", "| CoOp + FMA |", "| CoCoOp |", "| CLIP-Adapter + linear probe |"):
        assert row in md, row
    assert "| CLIP-LoRA + FMA |" in md
    # The probe sees image features only: one per set of them (CoOp and CoCoOp keep CLIP's).
    assert "| CoOp + linear probe |" not in md and "| CoCoOp + linear probe |" not in md
    assert "CoOp and CoCoOp keep Zero-shot CLIP's image features, so their linear probe" in md
    assert sorted(p.name for p in (results / "probe").iterdir()) == [
        "clip_adapter",
        "clip_lora",
        "mps_tuning",
        "zeroshot",
    ]
    assert "| Backbone | D avg | +FMA |" in (results / "tables" / "plugplay.md").read_text()
    assert (results / "tables" / "curves.png").stat().st_size > 1000
    features = results / "features"
    # The registry decides the caches: zero-shot test features once per dataset, shared by CoOp and
    # CoCoOp (frozen image encoder, no re-encoding); per-run test caches for the image-side changers.
    assert sorted(p.name for p in (features / "zeroshot/demo_digits").iterdir()) == [
        "1shot_seed1.h5", "2shot_seed1.h5", "test.h5",
    ]  # fmt: skip
    assert sorted(p.name for p in (features / "coop/demo_digits").iterdir()) == [
        "1shot_seed1.h5",
        "2shot_seed1.h5",
    ]
    assert (features / "clip_adapter/demo_digits/2shot_seed1_test.h5").is_file()
    assert (features / "clip_lora/demo_digits/2shot_seed1_test.h5").is_file()
    assert not (results / "backbones" / "zeroshot").exists()
    fit = json.loads((results / "backbones/coop/demo_digits/2shot_seed1.json").read_text())
    assert fit["forwards"].get("image", 0) == 0 and fit["forwards"]["text"] > 0  # CoOp never encodes images
    assert len(fit["loss_per_epoch"]) == 2


@pytest.mark.parametrize("backbone", TINY["backbones"])
def test_fma_at_m0_is_the_backbones_own_prediction(finished_run: Path, backbone: str) -> None:
    """The cached features give FMA at M = 0 exactly the backbone's prediction, computed here end to
    end from the test images through the (trained) model, not from any cache."""
    import torch

    from pipeline.backbones.encoder import load_encoder
    from pipeline.backbones.loading import build_backbone, load_trained_backbone
    from pipeline.core.config import EncoderConfig
    from pipeline.data.coop import load_dataset
    from pipeline.features.cache import read_attrs

    results, run = finished_run / TINY["results"], "demo_digits/2shot_seed1"
    cpu = torch.device("cpu")
    encoder = load_encoder(EncoderConfig(TINY["encoder"]["model"], None), cpu)  # a fresh copy: LoRA edits it
    splits = load_dataset("demo_digits", finished_run / TINY["data_root"])
    if backbone == "zeroshot":
        templates = read_attrs(results / f"features/zeroshot/{run}.h5")["templates"]
        model = build_backbone("zeroshot", encoder, splits.classnames, templates, {}, encoder.dim)
    else:
        model = load_trained_backbone(results / f"backbones/{backbone}/{run}.pt", cpu, {}, encoder=encoder)
    record = json.loads((results / f"fma/{backbone}/{run}.json").read_text())
    assert_accuracy_end_to_end(model, encoder, splits, record["curves"]["test_acc"][0])


def assert_accuracy_end_to_end(model, encoder, splits, accuracy: float) -> None:
    """``accuracy`` is the model's test accuracy on ``splits``, computed here from the test images
    through the (trained) model, not from any cache."""
    import torch

    from pipeline.data.coop import resolve_image
    from pipeline.data.images import load_image

    images = torch.stack([encoder.preprocess(load_image(resolve_image(splits, it))) for it in splits.test])
    labels = torch.tensor([it.label for it in splits.test])
    with torch.no_grad():
        logits = model.logits(model.encode_images(images))  # (N, C): the backbone end to end
    right = logits.argmax(dim=-1) == labels
    # The untrained encoder of the tiny config makes near-ties; float noise (another batch size) may
    # flip those, and only those, images.
    top2 = logits.topk(2, dim=-1).values
    tied = (top2[:, 0] - top2[:, 1]) < 1e-5 * model.logit_scale  # cosines within 1e-5
    low = 100.0 * (right & ~tied).double().mean().item()
    high = 100.0 * (right | tied).double().mean().item()
    assert low - 1e-6 <= accuracy <= high + 1e-6, (low, high, int(tied.sum()))
    assert int(tied.sum()) <= 0.02 * len(labels)


@pytest.fixture(scope="module")
def protocols_run(finished_run: Path) -> Path:
    jobs = planned_jobs(snakemake(finished_run, "-n", "protocols", config=TINY))
    # 6 backbones x 3 (source, target) pairs; the probe on the DG target only, for the 4 distinct
    # image encoders; new source runs on the base half and on demo_fashion (the DG source), whose
    # 2-shot runs the grid lacks. CoCoOp's FMA jobs run the text encoder: they are the *_gpu rules.
    assert jobs["extract_transfer"] == 18 and jobs["transfer_probe"] == 4, jobs
    assert jobs["transfer_fma"] == 15 and jobs["transfer_fma_gpu"] == 3, jobs
    assert jobs["train_fma"] == 10 and jobs["train_fma_gpu"] == 2 and jobs["make_protocol_table"] == 3, jobs
    result = snakemake(finished_run, "protocols", config=TINY)
    assert result.returncode == 0, result.stderr[-5000:]
    return finished_run


def test_protocols_write_their_tables_and_rerun_nothing(protocols_run: Path) -> None:
    tables = protocols_run / TINY["results"] / "tables"
    b2n = (tables / "base_to_new.md").read_text()
    assert "## demo_digits, 2 shots" in b2n and "| Method | Base | New | H |" in b2n
    probe_row = next(
        line for line in b2n.splitlines() if line.startswith("| Zero-shot CLIP + linear probe |")
    )
    assert probe_row.endswith("| – | – |"), probe_row  # no probe on new classes
    cross = (tables / "cross_dataset.md").read_text()
    assert "| Method | Source: demo_digits | demo_fashion | Average |" in cross
    dg = (tables / "domain_generalization.md").read_text()
    probe_row = next(line for line in dg.splitlines() if line.startswith("| CLIP-LoRA + linear probe |"))
    assert "–" not in probe_row, probe_row  # same classes: the probe applies
    assert planned_jobs(snakemake(protocols_run, "-n", "protocols", config=TINY)) == {}


def test_report_of_the_protocols_lists_each_protocols_table(protocols_run: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    result = snakemake(protocols_run, "--report", str(report), "protocols", config=TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    tables = report_tables(report.read_text())
    where = f"{TINY['results']}/tables"
    assert tables["categories"]["Transfer protocols"] == {
        name: [f"{where}/{name}.html"] for name in ("base_to_new", "cross_dataset", "domain_generalization")
    }
    captions = {Path(path).name: entry["caption"] for path, entry in tables["results"].items()}
    assert "Base-to-new generalization (CoCoOp's protocol) on demo_digits" in captions["base_to_new.html"]
    assert "runs trained on demo_fashion scored on\ndemo_fashion_v2" in captions["domain_generalization.html"]


def test_protocols_on_the_real_datasets_layouts(tmp_path: Path) -> None:
    """ImageNet, DTD, ImageNet-V2 and -A in their exact layouts (tiny fixture images): base-to-new on
    ImageNet, ImageNet -> DTD, ImageNet -> V2 and -A. The probe scores ImageNet-A's classes through
    their parent labels: recomputed here from its saved weights and the zero-shot test file."""
    import numpy as np
    from fixtures_datasets import make_root

    from pipeline.data.coop import load_dataset
    from pipeline.features.cache import load_test
    from pipeline.methods.linear_probe import load_probe

    make_root(tmp_path / "data", ["imagenet", "dtd", "imagenet_v2", "imagenet_a"])
    config = {
        **{k: TINY[k] for k in ("encoder", "extraction", "fma", "probe", "runtime")},
        "preset": None, "results": "results", "data_root": "data", "datasets": ["imagenet"],
        "groups": {"difficult": [], "easy": ["imagenet"]}, "shots": [1], "seeds": [1],
        "backbones": ["zeroshot", "coop", "clip_lora"],
        "backbone_config": {"coop": {"epochs_by_dataset": {}, "epochs_by_shots": {1: 2}, "n_ctx": 4},
                            "clip_lora": {"iterations_per_shot": 2}},
        "protocols": {"base_to_new": {"datasets": ["imagenet"]},
                      "cross_dataset": {"source": "imagenet", "targets": ["dtd"]},
                      "domain_generalization": {"source": "imagenet",
                                                "targets": ["imagenet_v2", "imagenet_a"]}},
    }  # fmt: skip
    result = snakemake(tmp_path, "protocols", config=config)
    assert result.returncode == 0, result.stderr[-5000:]
    results = tmp_path / "results"
    for name in ("base_to_new", "cross_dataset", "domain_generalization"):
        assert (results / "tables" / f"{name}.md").is_file(), name
    imagenet_a = load_dataset("imagenet_a", tmp_path / "data")
    assert imagenet_a.parent_labels is not None and max(imagenet_a.parent_labels) > len(imagenet_a.classnames)
    run = "zeroshot/imagenet/1shot_seed1"
    probe = load_probe(results / f"probe/{run}.npz")
    x, y, _ = load_test(results / "features/zeroshot/imagenet_a/test.h5", {})
    scores = probe.scores(x)[:, list(imagenet_a.parent_labels)]
    want = 100.0 * np.mean(scores.argmax(axis=1) == y)
    record = json.loads((results / f"transfer/probe/{run}/imagenet_a.json").read_text())
    assert record["results"][0]["test_acc"] == pytest.approx(want)
    assert record["info"]["n_classes"] == len(imagenet_a.classnames)


@pytest.mark.parametrize("backbone", TINY["backbones"])
def test_a_transfer_scores_the_runs_backbone_on_the_new_classes(protocols_run: Path, backbone: str) -> None:
    """The transfer record's backbone accuracy on demo_digits@new is the base-trained backbone,
    rebuilt for the new class names, run end to end on the new half's test images; its FMA reads
    the M its run chose on the base half's val split."""
    import torch

    from pipeline.backbones.encoder import load_encoder
    from pipeline.backbones.loading import build_backbone, load_for_classes
    from pipeline.core.config import EncoderConfig
    from pipeline.data.coop import load_dataset

    results, run = protocols_run / TINY["results"], "demo_digits@base/2shot_seed1"
    cpu = torch.device("cpu")
    encoder = load_encoder(EncoderConfig(TINY["encoder"]["model"], None), cpu)
    new = load_dataset("demo_digits@new", protocols_run / TINY["data_root"])
    templates = ["a photo of the digit {}."]
    if backbone == "zeroshot":
        model = build_backbone("zeroshot", encoder, new.classnames, templates, {}, encoder.dim)
    else:
        expect = {"backbone": backbone, "dataset": "demo_digits@base", "shot": 2, "seed": 1}
        path = results / f"backbones/{backbone}/{run}.pt"
        model = load_for_classes(path, cpu, expect, new.classnames, templates, encoder)
    record = json.loads((results / f"transfer/fma/{backbone}/{run}/demo_digits@new.json").read_text())
    by_method = {r["method"]: r for r in record["results"]}
    assert_accuracy_end_to_end(model, encoder, new, by_method["backbone"]["test_acc"])
    source = json.loads((results / f"fma/{backbone}/{run}.json").read_text())
    m = source["info"]["selected_m"]
    assert by_method["fma"]["info"]["m"] == m and record["info"]["source"] == "demo_digits@base"
    assert by_method["fma"]["test_acc"] == record["curves"]["test_acc"][m]


@pytest.fixture(scope="module")
def built_report(finished_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``snakemake --report`` of the finished tiny run, written outside its directory."""
    report = tmp_path_factory.mktemp("report") / "report.html"
    result = snakemake(finished_run, "--report", str(report), config=TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    return report


def report_tables(page: str) -> dict[str, dict]:
    """A report page's ``var results`` (path: name, caption, data URI...) and ``var categories``."""
    tables = {}
    for name in ("results", "categories"):
        found = re.search(rf'<script id="{name}">\s*var {name} = (.*?);\s*</script>', page, re.S)
        assert found, name
        tables[name] = json.loads(found.group(1))
    return tables


def test_report_shows_the_tables_and_the_figure_with_captions(finished_run: Path, built_report: Path) -> None:
    page = built_report.read_text()
    tables = report_tables(page)
    where = f"{TINY['results']}/tables"
    assert tables["categories"] == {  # the ablation tables only with their targets
        "Few-shot results": {"Other": [f"{where}/curves.png", f"{where}/fewshot.html"]},
        "Plug-and-play": {"Other": [f"{where}/plugplay.html"]},
    }
    results = {Path(path).name: entry for path, entry in tables["results"].items()}
    assert "Test accuracy (%) of every backbone alone" in results["fewshot.html"]["caption"]
    assert "Mean ± std over seeds 1." in results["fewshot.html"]["caption"]  # rendered with the config
    assert "The star marks the M chosen on validation." in results["curves.png"]["caption"]
    assert "Plug-and-play: each backbone" in results["plugplay.html"]["caption"]
    assert results["fewshot.html"]["labels"] == {"result": "test accuracy tables"}
    tables_dir = finished_run / TINY["results"] / "tables"
    for name in ("fewshot.html", "plugplay.html", "curves.png"):
        mime = "image/png" if name.endswith(".png") else "text/html"
        uri = results[name]["data_uri"]
        assert uri.startswith(f"data:{mime}") and ";base64," in uri, name
        assert base64.b64decode(uri.split(";base64,", 1)[1]) == (tables_dir / name).read_bytes(), name
    fewshot = (tables_dir / "fewshot.html").read_text()
    assert "<h2>demo_digits (D)</h2>" in fewshot and '<th scope="row">CoOp + FMA</th>' in fewshot
    assert "Few-shot adaptation of CLIP models" in page  # the workflow's description
    assert "This run: datasets demo_digits; 1, 2 shots;" in page


def _screenshot_tool():
    path = REPO / "bench" / "report_screenshot.py"  # a script, not a package module
    spec = importlib.util.spec_from_file_location("report_screenshot", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_screenshot(built_report: Path, tmp_path: Path) -> None:
    """The report in headless Chromium: its start page, then opened on the few-shot table."""
    import numpy as np
    from PIL import Image

    tool = _screenshot_tool()
    if tool.find_browser() is None:
        pytest.skip(f"no headless browser ({', '.join(tool.BROWSERS)}); apt-get install chromium")
    shots = {}
    for name, show in (("start", []), ("fewshot", ["--show", "fewshot.html"])):
        png = tmp_path / f"{name}.png"
        assert tool.main([str(built_report), "--out", str(png), "--size", "1000x700", *show]) == 0
        with Image.open(png) as image:
            assert image.size == (1000, 700), name
            pixels = np.asarray(image.convert("RGB"))
        colours = np.unique(pixels.reshape(-1, 3), axis=0)
        assert len(colours) > 50 and pixels.std() > 20, (name, len(colours), pixels.std())  # not blank
        shots[name] = pixels
    assert np.abs(shots["start"].astype(int) - shots["fewshot"]).mean() > 5  # the table is shown
    assert tool.main([str(built_report), "--out", str(tmp_path / "x.png"), "--show", "nope.html"]) == 2


def test_dry_run_after_full_run_has_nothing_to_do(finished_run: Path) -> None:
    result = snakemake(finished_run, "-n", config=TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    assert planned_jobs(result) == {}


def test_runtime_change_reruns_nothing(finished_run: Path) -> None:
    config = copy.deepcopy(TINY)
    config["runtime"] = {"device": "cpu", "batch_size": 7, "workers": 1}
    assert planned_jobs(snakemake(finished_run, "-n", config=config)) == {}
    snakemake(finished_run, "-n", config=TINY)  # restore config.yaml for the other tests


def test_fma_change_plans_only_fma_and_tables(finished_run: Path) -> None:
    config = copy.deepcopy(TINY)
    config["fma"]["epochs"] = 5
    assert planned_jobs(snakemake(finished_run, "-n", config=config)) == {
        "train_fma": 10,  # 6 backbones x 2 shots, CoCoOp's as train_fma_gpu
        "train_fma_gpu": 2,
        "make_tables": 1,
        "all": 1,
    }


def test_recipe_change_reruns_that_backbone_at_that_shot_only(finished_run: Path) -> None:
    config = copy.deepcopy(TINY)
    config["backbone_config"]["coop"]["epochs_by_shots"] = {1: 2, 2: 3}
    jobs = planned_jobs(snakemake(finished_run, "-n", config=config))
    assert jobs == {
        "fit_backbone": 1,
        "extract_fewshot": 1,
        "train_fma": 1,  # no probe: CoOp's image features are zero-shot CLIP's
        "make_tables": 1,
        "all": 1,
    }


def test_extraction_change_reruns_extraction_but_not_the_test_cache(finished_run: Path) -> None:
    config = copy.deepcopy(TINY)
    config["extraction"]["views"] = 2
    jobs = planned_jobs(snakemake(finished_run, "-n", config=config))
    assert "extract_test" not in jobs
    assert jobs["extract_fewshot"] >= 2 and jobs["train_fma"] + jobs["train_fma_gpu"] == 12
    config = copy.deepcopy(TINY)
    config["encoder"]["model"] = "ViT-S-32"
    jobs = planned_jobs(snakemake(finished_run, "-n", config=config))
    assert jobs.get("extract_test") == 1 and jobs.get("fit_backbone") == 10
    snakemake(finished_run, "-n", config=TINY)


def test_ablations_target_reuses_caches_and_writes_table(finished_run: Path) -> None:
    jobs = planned_jobs(snakemake(finished_run, "-n", "ablations", config=TINY))
    # the online variant encodes images: a GPU job
    assert jobs == {
        "train_fma_variant": 2, "train_fma_variant_gpu": 1, "make_ablation_table": 1, "ablations": 1,
    }  # fmt: skip
    result = snakemake(finished_run, "ablations", config=TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    md = (finished_run / TINY["results"] / "tables/ablations.md").read_text()
    for label in ("| FMA |", "center view only", "online views", "oracle"):
        assert label in md, label


def test_backbone_ablations_fit_each_variant_and_write_their_table(finished_run: Path) -> None:
    jobs = planned_jobs(snakemake(finished_run, "-n", "backbone_ablations", config=TINY))
    want = {"fit_backbone_variant": 2, "make_backbone_ablation_table": 1, "backbone_ablations": 1}
    assert jobs == want, jobs  # the split files and the encoder are the main run's
    result = snakemake(finished_run, "backbone_ablations", config=TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    tables = finished_run / TINY["results"] / "tables"
    md = (tables / "backbone_ablations.md").read_text()
    assert "| CE only |" in md and "| + MAR global only |" in md and " M |" not in md, md
    runs = finished_run / TINY["results"] / "backbone_ablations/mps_tuning/demo_digits/1shot_seed1"
    record = json.loads((runs / "global.record.json").read_text())
    assert record["variant"] == "global" and record["config"]["mar_parts"] == ["global"]
    assert record["config"]["lambda2"] == 0.0 and record["timing"]["train_seconds"] > 0
    assert not (runs / "global.pt").exists()  # temp(): the checkpoint goes once the record is written
    edited = copy.deepcopy(TINY)
    edited["backbone_ablations"]["variants"]["ce"]["config"]["lr"] = 0.01
    assert planned_jobs(snakemake(finished_run, "-n", "backbone_ablations", config=edited)) == {
        "fit_backbone_variant": 1, "make_backbone_ablation_table": 1, "backbone_ablations": 1
    }  # fmt: skip


def test_report_of_the_ablation_targets_lists_their_tables(finished_run: Path, tmp_path: Path) -> None:
    targets = ("all", "ablations", "backbone_ablations")
    result = snakemake(finished_run, *targets, config=TINY)  # nothing to do after the tests above
    assert result.returncode == 0, result.stderr[-3000:]
    report = tmp_path / "report.html"
    result = snakemake(finished_run, "--report", str(report), *targets, config=TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    tables = report_tables(report.read_text())
    where = f"{TINY['results']}/tables"
    assert tables["categories"]["Ablations"] == {
        "FMA": [f"{where}/ablations.html"],
        "Backbone recipe": [f"{where}/backbone_ablations.html"],
    }
    captions = {Path(path).name: entry["caption"] for path, entry in tables["results"].items()}
    assert "trained on the same cached\nfeatures (backbones zeroshot)" in captions["ablations.html"]
    assert "training recipe of mps_tuning" in captions["backbone_ablations.html"]


def test_stale_tables_do_not_survive_a_failed_rerun(finished_run: Path, tmp_path: Path) -> None:
    """A cache changes under the workflow; stage 2 fails on it, naming it, and Snakemake deletes the
    failed jobs' records. Deleting the cache as the error advises, the next run remakes the cache,
    both records and the tables. (Snakemake ignores a missing intermediate file while its consumers
    look up to date: before `all` asked for the records this printed "Nothing to be done".)"""
    import h5py

    work = tmp_path / "w"
    shutil.copytree(finished_run, work, symlinks=True)  # mtimes and .snakemake metadata kept
    results = work / TINY["results"]
    run, cache = "demo_digits/1shot_seed1", results / "features/clip_lora/demo_digits/1shot_seed1.h5"
    with h5py.File(cache, "r+") as f:
        x = f["train/features"][()]
        x[0, 0, 0] += 0.01  # finite and plausible: only the checksum can tell
        f["train/features"][...] = x
    failed = snakemake(work, config=TINY)
    assert failed.returncode != 0
    log = (results / f"logs/train_fma/clip_lora/{run}.log").read_text()
    damaged = f"{cache.relative_to(work)}: 'train/features' fails its checksum"
    assert _one_error_line(log) == f"error: {damaged}: the file is damaged; delete it and rerun"
    assert not (results / f"fma/clip_lora/{run}.json").exists()
    cache.unlink()
    assert planned_jobs(snakemake(work, "-n", config=TINY)) == {
        "extract_run": 1, "train_fma": 1, "train_probe": 1, "make_tables": 1, "all": 1,
    }  # fmt: skip
    tables = results / "tables/fewshot.md"
    before = tables.stat().st_mtime
    rerun = snakemake(work, config=TINY)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert tables.stat().st_mtime > before and (results / f"fma/clip_lora/{run}.json").is_file()
    assert planned_jobs(snakemake(work, "-n", config=TINY)) == {}


def _one_error_line(log: str) -> str:
    assert "Traceback" not in log, log
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, log
    return errors[0]


def test_a_new_backbone_is_one_module_and_one_registry_line(tmp_path: Path) -> None:
    """Copy the checkout, add a toy backbone (a module and a registry line, nothing under workflow/),
    and the unchanged workflow plans its fit, extraction and stage-2 jobs."""
    for part in ("pipeline", "workflow"):
        shutil.copytree(REPO / part, tmp_path / "pkg" / part, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "pkg/pipeline/backbones/toy.py").write_text(
        '"""A toy prompt learner that reuses zero-shot CLIP\'s image features."""\n'
        "from pipeline.backbones.coop import CoOp\n\n\n"
        "class Toy(CoOp):\n"
        '    name = "toy"\n\n\n'
        "BACKBONE = Toy\n"
    )
    registry = tmp_path / "pkg/pipeline/backbones/registry.py"
    text = registry.read_text()
    spec = '"toy", "Toy", "pipeline.backbones.toy", "text", True, "zeroshot", config=recipes.CoOp'
    line = f"    BackboneSpec({spec}),\n"
    registry.write_text(text.replace("_SPECS = (\n", "_SPECS = (\n" + line, 1))
    config = {**copy.deepcopy(TINY), "backbones": ["toy"], "ablations": {}, "backbone_ablations": {}}
    result = snakemake(tmp_path, "-n", config=config, snakefile=tmp_path / "pkg/workflow/Snakefile")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = planned_jobs(result)
    assert jobs["fit_backbone"] == 2 and jobs["extract_fewshot"] == 4  # toy + the zero-shot caches it reuses
    assert jobs["extract_test"] == 1 and jobs["train_fma"] == 2 and jobs["train_probe"] == 2
    assert "Toy" not in (REPO / "pipeline/backbones/registry.py").read_text()


def test_jobs_run_the_checkouts_own_package(tmp_path: Path) -> None:
    """Another `pipeline` package ahead on PYTHONPATH (a second clone, an older install) is used
    neither by the workflow nor by its jobs: the Snakefile runs the package beside it."""
    decoy = tmp_path / "decoy" / "pipeline"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text('raise ImportError("the decoy package was imported")\n')
    env = {**os.environ, "PYTHONPATH": str(decoy.parent)}
    split = f"{TINY['results']}/splits/demo_digits/1shot_seed1.json"
    result = snakemake(tmp_path, split, config=TINY, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert json.loads((tmp_path / split).read_text())["train"]
    logs = "".join(p.read_text() for p in (tmp_path / TINY["results"] / "logs").rglob("*.log"))
    assert "decoy" not in logs


def job_runtimes(result: subprocess.CompletedProcess) -> dict[str, set[int]]:
    """{rule: the `runtime` resources (minutes) of its jobs} from a dry run's job listing."""
    runtimes: dict[str, set[int]] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", result.stdout + result.stderr):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        if rule and rule.group(1) not in ("all", "ablations"):  # targets: no command to run
            found = re.search(r"resources: .*\bruntime=(\d+)", block)
            runtimes.setdefault(rule.group(1), set()).add(int(found.group(1)) if found else -1)
    return runtimes


SLURM_PROFILE = REPO / "workflow/profiles/slurm/config.yaml"


def slurm_gpu_rules() -> set[str]:
    """The rules the Slurm profile sends to the GPU partition."""
    resources = yaml.safe_load(SLURM_PROFILE.read_text())["set-resources"]
    return {rule for rule, res in resources.items() if res.get("slurm_partition") == "gpu"}


def test_the_slurm_profile_puts_every_encoder_job_on_a_gpu(tmp_path: Path) -> None:
    """The rules that claim the `gpu` resource (every job that runs an encoder) are exactly the rules
    the Slurm profile sends to the GPU partition with a GPU, and the profile names no other rule."""
    result = snakemake(tmp_path, "-n", "all", "ablations", "protocols", "backbone_ablations", config=TINY)
    listed: dict[str, bool] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", result.stdout + result.stderr):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        if rule:
            found = re.search(r"resources: (.*)", block)
            listed[rule.group(1)] = bool(found and re.search(r"\bgpu=", found.group(1)))
    profile = yaml.safe_load(SLURM_PROFILE.read_text())
    on_gpu = slurm_gpu_rules()
    assert all(profile["set-resources"][rule].get("gpu") == 1 for rule in on_gpu)
    claims = {rule for rule, gpu in listed.items() if gpu} | {"pretrain_demo_backbone"}  # no weights here
    assert claims == on_gpu, claims ^ on_gpu
    assert {"extract_transfer", "train_fma_gpu", "transfer_fma_gpu", "train_fma_variant_gpu"} <= claims
    assert set(profile["set-threads"]) == on_gpu
    assert set(profile["set-resources"]) <= set(listed) | {"pretrain_demo_backbone"}, set(listed)


def test_every_job_has_a_time_limit_by_dataset(tmp_path: Path) -> None:
    """Minutes on the demo datasets, hours on a real one (its folder is faked: a dry run reads nothing)."""
    result = snakemake(tmp_path, "-n", "all", "ablations", config=TINY)
    demo = job_runtimes(result)
    assert len(demo) == 13, demo  # every rule but pretrain_demo_backbone (no pretrained weights here)
    assert all(-1 not in v and max(v) <= 60 for v in demo.values()), demo
    (tmp_path / "data/dtd").mkdir(parents=True)
    items = [[f"{c}/{i}.jpg", y, c] for y, c in enumerate(("banded", "woven")) for i in range(2)]
    split = {"train": items, "val": items, "test": items}  # enough for the config's shots check
    (tmp_path / "data/dtd/split_zhou_DescribableTextures.json").write_text(json.dumps(split))
    config = {
        **copy.deepcopy(TINY),
        "datasets": ["dtd"],
        "groups": {},
        "data_root": "data",
        "ablations": {},
        "backbone_ablations": {},
    }
    real = job_runtimes(snakemake(tmp_path, "-n", config=config))
    assert real["fit_backbone"] == {24 * 60} and real["extract_test"] == {8 * 60}, real


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda c: c["fma"].update(lr="fast"), "fma.lr"),
        (
            lambda c: c.update(backbones=["zeroshot", "coopp"]),
            "unknown backbone 'coopp' (choose from zeroshot",
        ),
        (lambda c: c["backbone_config"]["coop"].update(n_ctx="many"), "backbone_config.coop.n_ctx"),
        (
            lambda c: c.update(
                datasets=["dtd"], data_root="/no/such/root", ablations={}, backbone_ablations={}
            ),
            "/no/such/root",
        ),
        (
            lambda c: c["backbone_ablations"].update(backbone="coop"),
            "key 'backbone_ablations.backbone': 'coop' is not a backbone that fits on images (choose from",
        ),
        (
            lambda c: c["backbone_ablations"]["variants"]["ce"]["config"].update(mar_parts=["both"]),
            "key 'backbone_ablations.variants.ce.config.mar_parts': expected distinct entries",
        ),
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
