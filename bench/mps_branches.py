"""MPS-Tuning's two branches, scored apart: what the fine-tuned branch learns on its own.

MPS-Tuning predicts with fused logits, alpha cos(f_ft, z) + (1 - alpha) cos(f_zs, z) (alpha 0.3), and
its cross-entropy only ever sees that sum. This script fits one run the way ``fit_backbone`` does
(same recipe, two-view loader, seed) and prints the test accuracy of the zero-shot branch alone
(alpha 0), the fine-tuned branch alone (alpha 1) and the fused prediction, before and after
fitting, plus how the fine-tuned branch spreads its predictions over the classes. It is a
diagnostic, not a speed figure; bench/README.md has what it showed on the demo.

    python bench/mps_branches.py --data-root results/demo_data \\
        --pretrained results/demo_backbone/demo-vit-t-28.pt --dataset demo_digits --shot 16 --seed 1 \\
        --recipe '{"epochs_by_shots": {"1": 50, "4": 20, "16": 10}}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.backbones.encoder import build_train_transform, load_encoder  # noqa: E402
from pipeline.backbones.loading import build_backbone  # noqa: E402
from pipeline.backbones.mps_tuning import MPSTuning, fused_logits  # noqa: E402
from pipeline.backbones.recipes import schedule_length  # noqa: E402
from pipeline.backbones.registry import build_config, resolved_recipe  # noqa: E402
from pipeline.backbones.training import ImageBatches, fit  # noqa: E402
from pipeline.core.config import EncoderConfig  # noqa: E402
from pipeline.data.catalog import get_dataset_info  # noqa: E402
from pipeline.data.coop import load_dataset, resolve_image  # noqa: E402
from pipeline.data.fewshot import SAMPLERS, sample_fewshot  # noqa: E402
from pipeline.features.views import EpochImages, ViewDataset  # noqa: E402


def branch_scores(backbone: MPSTuning, images: torch.Tensor, labels: torch.Tensor) -> dict[str, object]:
    """Test accuracy (%) of each branch and of the fused prediction; the fine-tuned branch's
    predicted-class counts."""
    backbone.eval()
    with torch.no_grad():
        out = backbone.towers(images)
        texts = backbone.class_texts()

        def predict(alpha: float) -> torch.Tensor:
            return fused_logits(out.f_ft, out.f_zs, texts, alpha, 1.0).argmax(dim=1)

        def accuracy(alpha: float) -> float:
            return round((predict(alpha) == labels).sum().item() * 100.0 / len(labels), 1)

        return {
            "zero-shot branch": accuracy(0.0),
            "fine-tuned branch": accuracy(1.0),
            "fused": accuracy(backbone.cfg.alpha),
            "fine-tuned predictions per class": torch.bincount(predict(1.0), minlength=len(texts)).tolist(),
        }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--model", default="demo-vit-t-28")
    p.add_argument("--pretrained", required=True, help="open_clip tag or checkpoint path")
    p.add_argument("--dataset", default="demo_digits")
    p.add_argument("--shot", type=int, default=16)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sampler", default="dassl", choices=SAMPLERS)
    p.add_argument("--recipe", default="{}", help="JSON overrides of the mps_tuning recipe")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    encoder = load_encoder(EncoderConfig(model=args.model, pretrained=args.pretrained), torch.device("cpu"))
    splits = load_dataset(args.dataset, args.data_root)
    fewshot = sample_fewshot(splits, args.shot, args.seed, args.sampler)
    info = get_dataset_info(args.dataset)
    section = json.loads(args.recipe)
    recipe = build_config("mps_tuning", section)
    transform = build_train_transform(encoder, recipe.train_crop_scale(info.crop_scale), info.hflip)
    paths = [resolve_image(splits, it) for it in fewshot.train]
    train = EpochImages(paths, [it.label for it in fewshot.train], transform, args.seed, views=recipe.views)
    resolved = resolved_recipe("mps_tuning", section, args.dataset, args.shot)
    backbone = build_backbone(
        "mps_tuning", encoder, splits.classnames, list(info.templates), resolved, encoder.dim, seed=args.seed
    )
    assert isinstance(backbone, MPSTuning)
    test = ViewDataset([resolve_image(splits, it) for it in splits.test], encoder.preprocess)
    images = torch.stack([test[i][0] for i in range(len(test))])  # (N, 3, H, W) center views
    labels = torch.tensor([it.label for it in splits.test])

    print(f"{args.dataset} {args.shot}-shot seed {args.seed} ({args.sampler} draw), overrides {section}")
    print("before fitting:", branch_scores(backbone, images, labels))
    start = time.perf_counter()
    length = schedule_length(recipe, args.dataset, args.shot)
    result = fit(backbone, ImageBatches(train, recipe.batch_size), recipe, length, args.seed, "mps")
    print(
        f"fitted {result.steps} steps in {time.perf_counter() - start:.1f} s, "
        f"loss {result.loss_per_epoch[0]:.3f} -> {result.loss_per_epoch[-1]:.3f}"
    )
    print("after fitting: ", branch_scores(backbone, images, labels))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
