"""Stage 2, FMA: train a velocity net on one few-shot cache, pick M on val, report test accuracy per step."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time

import torch

from pipeline.atomic import write_json
from pipeline.cli import guarded, parse_json_arg, setup_logging
from pipeline.config import FMAConfig, from_dict
from pipeline.device import resolve_device, set_threads
from pipeline.errors import InputError
from pipeline.feature_cache import load_features
from pipeline.fma.solver import evaluate_steps, select_m
from pipeline.fma.trainer import train_velocity
from pipeline.fma.velocity import save_velocity

log = logging.getLogger("pipeline.train_fma")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.train_fma", description=__doc__)
    parser.add_argument("--fewshot", required=True, help="few-shot HDF5 cache (train/val/text)")
    parser.add_argument("--test", required=True, help="test HDF5 cache of the same backbone and dataset")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--shot", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--backbone", required=True, help="stage-1 backbone registry name")
    parser.add_argument(
        "--expect", default="{}", help="JSON dict of further cache attributes to check (model, ...)"
    )
    parser.add_argument("--config", default="{}", help="JSON of the fma config slice (FMAConfig)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--metrics", required=True, help="output metrics JSON")
    parser.add_argument("--checkpoint", required=True, help="output velocity-net checkpoint (.pt)")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def _json_dict(text: str, name: str) -> dict:
    value = parse_json_arg(text, name)
    if not isinstance(value, dict):
        raise InputError(f"argument {name}: expected a JSON object, got {type(value).__name__}")
    return value


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    set_threads(args.threads)
    cfg = from_dict(FMAConfig, _json_dict(args.config, "--config"), prefix="fma.")
    expect = _json_dict(args.expect, "--expect")
    try:
        device = resolve_device(args.device)
    except (RuntimeError, ValueError) as err:
        raise InputError(f"argument --device: {err}") from None

    features = load_features(
        args.fewshot,
        args.test,
        expect={
            "dataset": args.dataset,
            "shot": args.shot,
            "seed": args.seed,
            "backbone": args.backbone,
            **expect,
        },
    )
    for name, y in (("train", features.train_y), ("val", features.val_y), ("test", features.test_y)):
        if len(y) == 0:
            path = args.test if name == "test" else args.fewshot
            raise InputError(f"{path}: the '{name}' split is empty")

    start = time.perf_counter()
    net, history = train_velocity(features, cfg, seed=args.seed, device=device)
    train_seconds = time.perf_counter() - start

    text = torch.as_tensor(features.text).to(device)
    curves = {}
    for split in ("val", "test"):
        x0 = torch.as_tensor(getattr(features, f"{split}_x")).to(device)
        y = torch.as_tensor(getattr(features, f"{split}_y")).to(device)
        curves[split] = evaluate_steps(net, x0, y, text, cfg.step_size, cfg.max_steps)
    val_acc, val_dist = curves["val"]
    test_acc, test_dist = curves["test"]
    m = select_m(val_acc)
    oracle_m = select_m(test_acc)  # diagnostic only: chosen on test (what the official code did)
    log.info(
        "selected M=%d on val (val %.2f%%, test %.2f%%); zero-shot test %.2f%%; oracle M=%d (test %.2f%%)",
        m, val_acc[m], test_acc[m], test_acc[0], oracle_m, test_acc[oracle_m],
    )  # fmt: skip

    metrics = {
        "method": "fma",
        "backbone": args.backbone,
        "dataset": args.dataset,
        "shot": args.shot,
        "seed": args.seed,
        "steps": list(range(cfg.max_steps + 1)),
        "val_acc": val_acc,
        "test_acc": test_acc,
        "val_dist": val_dist,
        "test_dist": test_dist,
        "selected_m": m,
        "val_acc_at_m": val_acc[m],
        "test_acc_at_m": test_acc[m],
        "zero_shot_test_acc": test_acc[0],
        "oracle_m": oracle_m,
        "oracle_test_acc": test_acc[oracle_m],
        "train_seconds": train_seconds,
        "final_loss": history[-1] if history else None,
        "loss_history": history,
        "n_train": len(features.train_y),
        "n_val": len(features.val_y),
        "n_test": len(features.test_y),
        "n_views": int(features.attrs.get("n_views", features.train_x.shape[1] - 1)),
        "config": dataclasses.asdict(cfg),
        "device": str(device),
    }
    # Checkpoint first: the metrics file is the rule's completion marker.
    save_velocity(args.checkpoint, net, cfg, m)
    write_json(args.metrics, metrics)
    log.info("wrote %s and %s", args.metrics, args.checkpoint)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
