"""Benchmark: encoder forward passes of a config's grid, ours beside the official FMA approach's.

Ours: every stage-1 job of the grid (extraction caches, the per-dataset test caches and CoCoOp's
on-the-fly texts in stage 2), computed from the registry and the recipes
(``pipeline.backbones.forwards``); the backbones' own training is shown apart, since the official
approach needs the same trained backbones. Official: the FMA code encodes a fresh augmented view of
every training image in every epoch of every FMA run, and the test split once per run.

    python bench/forward_counts.py                     # the demo grid of config.yaml
    python bench/forward_counts.py --grid paper        # 11 datasets, 1-16 shots, 3 seeds, 5 backbones
    python bench/forward_counts.py --results results   # also sum what a finished run recorded

Prints figures; it is not a test.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import yaml
from tabulate import tabulate

from pipeline.backbones import forwards
from pipeline.backbones.registry import build_config, get_spec, list_backbones
from pipeline.core.errors import InputError
from pipeline.core.workflow_config import load_workflow_config, needed_backbones, templates_for
from pipeline.data.sizes import PAPER_DATASETS, run_sizes

REPO = Path(__file__).resolve().parents[1]
FMA_EPOCHS = 200  # the official README's setting (its config file says 600: more work still)


def paper_config(base: dict) -> dict:
    """The paper grid: 11 datasets, 1/2/4/8/16 shots, seeds 1-3, every backbone, published recipes."""
    return {
        **base,
        "datasets": list(PAPER_DATASETS),
        "shots": [1, 2, 4, 8, 16],
        "seeds": [1, 2, 3],
        "backbones": list_backbones(),
        "preset": None,
        "backbone_config": {},
        "encoder": {"model": "ViT-B-16", "pretrained": "openai"},
        "data_root": "/data",
        "groups": {},
        "templates": {},
    }


def n_templates(config: dict, backbone: str, dataset: str) -> int:
    """Prompts per class of a backbone's class texts (one template for datasets not in the catalog)."""
    try:
        return len(templates_for(config, backbone, dataset))
    except InputError:
        return 1


def count(config: dict) -> tuple[list[tuple], Counter, Counter]:
    """Rows per backbone and the totals of ours (FMA-side, training) and of the official approach."""
    views = int(config["extraction"]["views"])
    fma_epochs = int(config["fma"].get("epochs", FMA_EPOCHS))
    rows, ours, official = [], Counter(), Counter()
    for name in needed_backbones(config):
        spec = get_spec(name)
        recipe = build_config(name, config["backbone_config"].get(name))
        per = Counter()
        for dataset in config["datasets"]:
            for shot in config["shots"]:
                classes, n_train, n_val, n_test = run_sizes(dataset, shot)
                prompts = 1 if spec.changes == "text" else n_templates(config, name, dataset)
                size = forwards.RunSize(classes, n_train, n_val, n_test, views, prompts)
                seeds = len(config["seeds"])
                for kind, fn in (
                    ("extract", forwards.extract_forwards),
                    ("stage2", forwards.stage2_forwards),
                ):
                    for enc, n in fn(spec, size).items():
                        per[f"{kind}_{enc}"] += n * seeds
                if spec.trains:
                    for enc, n in forwards.fit_forwards(spec, recipe, dataset, shot, size).items():
                        per[f"fit_{enc}"] += n * seeds
                if shot == config["shots"][0]:  # once per dataset
                    per["test_image"] += forwards.test_forwards(spec, size)["image"]
                if name in config["backbones"]:
                    per["official_image"] += forwards.official_fma_forwards(size, fma_epochs)["image"] * seeds
        image = per["extract_image"] + per["test_image"]
        text = per["extract_text"] + per["stage2_text"]
        rows.append((name, image, text, per["fit_image"], per["fit_text"], per["official_image"]))
        ours.update(
            {"image": image, "text": text, "fit_image": per["fit_image"], "fit_text": per["fit_text"]}
        )
        official["image"] += per["official_image"]
    return rows, ours, official


def recorded(results: Path) -> Counter:
    """What a finished run's jobs recorded: fit metrics JSONs and the caches' ``forwards`` attribute."""
    import h5py

    total = Counter()
    for path in (results / "backbones").rglob("*.json"):
        for enc, n in json.loads(path.read_text()).get("forwards", {}).items():
            total[f"fit_{enc}"] += n
    for path in (results / "features").rglob("*.h5"):
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("forwards")
        if raw is not None and not str(path).endswith("_test.h5"):
            for enc, n in json.loads(raw).items():
                total[f"extract_{enc}"] += n
    return total


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=REPO / "config.yaml")
    p.add_argument("--grid", choices=("config", "paper"), default="config")
    p.add_argument("--results", type=Path, help="a finished run's results folder: sum its records too")
    args = p.parse_args(argv)
    raw = yaml.safe_load(args.config.read_text())
    schema, presets = REPO / "workflow/schemas/config.schema.yaml", REPO / "workflow/presets"
    config = load_workflow_config(raw, schema, presets)
    if args.grid == "paper":
        # Counted from sizes alone: ImageNet and FGVCAircraft need no reader (or data) for this.
        config = paper_config(config)
    rows, ours, official = count(config)
    n_runs = len(config["datasets"]) * len(config["shots"]) * len(config["seeds"])
    print(
        f"grid: {len(config['datasets'])} datasets x shots {config['shots']} x {len(config['seeds'])} seeds "
        f"= {n_runs} runs per backbone; K = {config['extraction']['views']} cached views; "
        f"official FMA epochs {config['fma'].get('epochs', FMA_EPOCHS)}\n"
    )
    headers = (
        "backbone",
        "ours: images",
        "ours: prompts",
        "training: images",
        "training: prompts",
        "official: images",
    )
    print(tabulate(rows, headers=headers, intfmt=",", tablefmt="github"))
    ratio = ours["image"] / max(official["image"], 1)
    with_fit = (ours["image"] + ours["fit_image"]) / max(official["image"] + ours["fit_image"], 1)
    print(
        f"\nimage-encoder forwards for FMA's features: ours {ours['image']:,} vs official "
        f"{official['image']:,} = 1/{1 / ratio:.0f} ({ratio:.4f})"
    )
    print(
        f"with the backbones' own training added to both sides ({ours['fit_image']:,} images): "
        f"1/{1 / with_fit:.1f} ({with_fit:.4f})"
    )
    if args.results is not None:
        rec = recorded(args.results)
        print(
            f"\nrecorded by the jobs in {args.results}: "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(rec.items()))
        )
        print(
            f"computed for this grid:          extract_image {ours['image']:,} (incl. test caches), "
            f"fit_image {ours['fit_image']:,}, fit_text {ours['fit_text']:,}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
