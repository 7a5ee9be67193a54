"""Text-tower cost with and without the cut after the end-of-text token (prompts.pooled_length).

CLIP's text transformer is causal and pools the end-of-text token, so the positions after the
longest prompt's end are never read; `encode_token_embeddings` stops there. This script encodes the
same prompts both ways (the full context as `CLIP.encode_text` does, and the cut) and prints prompts
per second, the speed-up and the largest difference between the two feature sets. The prompts are
those the backbones build: zero-shot CLIP's "a photo of a {}." and CoCoOp's 4 and CoOp's 16
context slots before the class name. Weights are random (timing does not depend on them).

    python bench/text_tower.py [--models demo-vit-t-28 ViT-B-16] [--classes 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.machine import best_of, cpu_model  # noqa: E402
from pipeline.backbones.encoder import load_encoder  # noqa: E402
from pipeline.backbones.prompts import encode_text_tokens, pooled_length  # noqa: E402
from pipeline.core.config import EncoderConfig  # noqa: E402

# Class names of the lengths real datasets have (Food-101, Stanford Cars, FGVC Aircraft, Caltech).
NAMES = [
    "apple pie", "2012 Aston Martin V8 Vantage Convertible", "Boeing 737-800", "chicken quesadilla",
    "garden spider", "Rolls-Royce Phantom Drophead Coupe Convertible 2012", "ibis", "hot and sour soup",
]  # fmt: skip
PROMPTS = {  # what precedes the class name
    "zero-shot template": "a photo of a",
    "CoCoOp, 4 context slots": " ".join(["X"] * 4),
    "CoOp, 16 context slots": " ".join(["X"] * 16),
}


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    return best_of(repeats, fn)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["demo-vit-t-28", "ViT-B-16"])
    p.add_argument("--classes", type=int, default=100, help="prompts per pass")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"cpu: {cpu_model()} ({os.cpu_count()} cores, {args.threads} thread), torch {torch.__version__}")
    names = [NAMES[i % len(NAMES)] for i in range(args.classes)]
    for arch in args.models:
        encoder = load_encoder(EncoderConfig(model=arch, pretrained=""), torch.device("cpu"))
        model = encoder.model.eval()
        context = int(model.positional_embedding.shape[0])
        print(f"\n{arch} (context {context}), {args.classes} prompts per pass, best of {args.repeats}:")
        for label, prefix in PROMPTS.items():
            tokens = encoder.tokenizer([f"{prefix} {name}." for name in names])
            with torch.no_grad():  # the full context (open_clip's CLIP.encode_text) against the cut
                full = model.encode_text(tokens)
                cut = encode_text_tokens(model, tokens)
                t_full = best_seconds(lambda: model.encode_text(tokens), args.repeats)  # noqa: B023
                t_cut = best_seconds(lambda: encode_text_tokens(model, tokens), args.repeats)  # noqa: B023
            diff = (full - cut).abs().max().item()
            print(
                f"  {label:26s} {pooled_length(model, tokens):3d} of {context} positions: "
                f"full {args.classes / t_full:8.0f} prompts/s, cut {args.classes / t_cut:8.0f} prompts/s, "
                f"x{t_full / t_cut:.1f}; largest feature difference {diff:.1e}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
