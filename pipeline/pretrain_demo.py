"""Stage: pretrain the demo backbone contrastively and write its open_clip checkpoint and a metrics JSON."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import asdict

import torch

from pipeline.core.atomic import write_json
from pipeline.core.cli import guarded, parse_json_arg, setup_logging
from pipeline.core.config import from_dict
from pipeline.core.device import resolve_device, set_threads
from pipeline.demo.pretrain import PretrainConfig, pretrain, save_checkpoint

log = logging.getLogger(__name__)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.pretrain_demo", description=__doc__)
    parser.add_argument("--config", default="{}", help="PretrainConfig slice as JSON")
    parser.add_argument(
        "--out", required=True, help="checkpoint to write (.pt), loadable as encoder.pretrained"
    )
    parser.add_argument("--metrics", required=True, help="metrics JSON to write")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument(
        "--history-every", type=int, default=10, help="keep every N-th step's loss in the JSON"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


@guarded
def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    setup_logging(args.verbose)
    cfg = from_dict(PretrainConfig, parse_json_arg(args.config, "--config"))
    set_threads(args.threads)
    device = resolve_device(args.device)
    log.info("pretraining %s on %s for %d steps (batch %d)", cfg.model, device, cfg.steps, cfg.batch_size)
    model, history = pretrain(cfg, device)
    save_checkpoint(model, args.out, cfg)

    every = max(1, args.history_every)
    losses = history["loss"]
    steps = sorted(set(range(0, len(losses), every)) | {len(losses) - 1})
    head, tail = losses[: min(5, len(losses))], losses[-min(5, len(losses)) :]
    write_json(
        args.metrics,
        {
            "config": asdict(cfg),
            "checkpoint": str(args.out),
            "history": {
                "step": [s + 1 for s in steps],
                "loss": [losses[s] for s in steps],
                "lr": [history["lr"][s] for s in steps],
                "logit_scale": [history["logit_scale"][s] for s in steps],
            },
            "first_loss": sum(head) / len(head),  # mean of the first 5 steps
            "last_loss": sum(tail) / len(tail),  # mean of the last 5 steps
            "seconds": history["seconds"],
            "n_images": history["n_images"],
            "n_fashion": history["n_fashion"],
            "n_digits": history["n_digits"],
            "device": str(device),
            "threads": torch.get_num_threads(),
        },
    )
    log.info(
        "loss %.3f -> %.3f in %.0f s; wrote %s and %s",
        sum(head) / len(head),
        sum(tail) / len(tail),
        history["seconds"],
        args.out,
        args.metrics,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
