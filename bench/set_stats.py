"""What a calibration set looks like to the teacher: per-channel mean and std of the normalized images, the
teacher's confidence on them, and the BN KL of each batch; optionally a copy with its contrast standardized.

The set is made as the pipeline makes it (`gznq.sources.image_set`, the same cache), so a set a benchmark row
used is read back rather than made again:

    python -m bench.set_stats --source generator:runs/generator_r20_v2 --refine-steps 10 --seed 0
    python -m bench.set_stats --source noise --refine-steps 64 --seed 0
    python -m bench.set_stats --source real:../shared/assets/cifar10-jpeg/train --seed 0

`--record FILE` keeps the printed statistics as JSON. `--standardize DIR` writes the set, each channel shifted
and scaled to mean 0 and std 1 after the teacher's normalization (what the normalization says its training data
had), as a pixel set that `bench.dfq_bench --methods pixels --pixels DIR` calibrates and reconstructs on like any
other synthetic set; DIR/standardized.json says which set it came from (its pixels.json records a pixel
optimization that did not run: the format needs one). `--unchanged DIR` writes the set as it is, the control
for a standardized one (the same images through the same path). `--rescale DIR --contrast S` writes it with every
channel's deviations from its own mean scaled by one factor, so that the set's std after normalization is S and its
colours (channel means, the channels' ratios) stay as they were; then the pixel range clamps, so raising the
contrast reaches less than S and moves the colours a little (the record gives the std reached and the share of
pixels clamped). DIR is written whole or not at all
(`gznq.outdir`); one that holds such a set is replaced only with --overwrite, one that holds anything else never. `--compare DIR` reports the largest difference between the set and a pixel set, both normalized.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from dfq.io import write_json_atomic
from dfq.models import create_teacher
from generators.bn_stats import BNStatsRecorder, bn_kl_loss
from generators.network import denormalize, normalize
from generators.pixel_opt import PIXELS_FILE, PIXELS_META, PixelOptConfig, load_pixels, save_pixels
from generators.quality import capture_penultimate, within_class_distance
from generators.refine import RefineConfig
from gznq.outdir import ResultKind, check_output, writing_output
from gznq.sources import image_set, parse_source

MADE_FROM = "standardized.json"
WRITTEN_SET = ResultKind("pixel set written by bench.set_stats", marker=PIXELS_META,
                         entries=(PIXELS_META, PIXELS_FILE, MADE_FROM))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar10_resnet20")
    p.add_argument("--checkpoint", help="the teacher's weights (default: the model's published ones)")
    p.add_argument("--source", required=True, help="real:DIR, generator:DIR or noise (gznq.sources)")
    p.add_argument("--refine-steps", type=int, default=0, help="refinement steps a batch (0: the set as drawn)")
    p.add_argument("--start-logit-scale", type=float, default=1.0,
                   help="refinement's start_logit_scale (generators.refine.RefineConfig)")
    p.add_argument("--spread-weight", type=float, default=0.0,
                   help="refinement's spread_weight (generators.refine.RefineConfig)")
    p.add_argument("--num-images", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-cache", default="runs/cache")
    p.add_argument("--record", help="also write the statistics to this JSON file")
    p.add_argument("--standardize", help="write the set with each channel standardized as a pixel set here")
    p.add_argument("--unchanged", help="write the set as it is, as a pixel set here (the control)")
    p.add_argument("--rescale", help="write the set with its contrast scaled to --contrast as a pixel set here")
    p.add_argument("--contrast", type=float, help="with --rescale: the std after normalization to scale the set to")
    p.add_argument("--overwrite", action="store_true", help="replace what the output directory holds")
    p.add_argument("--compare", help="a pixel set: report the largest difference from this set, both normalized")
    args = p.parse_args(argv)
    writers = [flag for flag in ("standardize", "unchanged", "rescale") if getattr(args, flag)]
    if len(writers) > 1:
        p.error(f"--{' and --'.join(writers)} each write a set: give one")
    if (args.contrast is None) != (args.rescale is None):
        p.error("--rescale and --contrast go together: --rescale DIR --contrast S")
    if not (math.isfinite(args.start_logit_scale) and args.start_logit_scale > 0):
        p.error(f"--start-logit-scale must be a positive number, got {args.start_logit_scale}")
    if args.start_logit_scale != 1.0 and args.refine_steps == 0:
        p.error("--start-logit-scale scales where refinement starts: give --refine-steps > 0 with it")
    if not (math.isfinite(args.spread_weight) and args.spread_weight >= 0):
        p.error(f"--spread-weight must be a number >= 0, got {args.spread_weight}")
    if args.spread_weight and args.refine_steps == 0:
        p.error("--spread-weight weights a refinement term: give --refine-steps > 0 with it")
    if args.contrast is not None and not (math.isfinite(args.contrast) and args.contrast > 0):
        p.error(f"--contrast must be a positive number, got {args.contrast}")
    if writers:
        try:
            check_output(getattr(args, writers[0]), WRITTEN_SET, overwrite=args.overwrite)
        except (FileExistsError, ValueError) as exc:  # gznq.outdir names the directory --out; here it is not
            p.error(str(exc).replace("--out", f"--{writers[0]}"))
    if args.compare:  # before any work: a pixel set, of at least this set's size
        meta = Path(args.compare) / PIXELS_META
        if not meta.is_file():
            p.error(f"--compare {args.compare!r} is not a pixel set ({PIXELS_META} is missing)")
        held = json.loads(meta.read_text()).get("num_images", 0)
        if held < args.num_images:
            p.error(f"--compare {args.compare!r} holds {held} images, fewer than the {args.num_images} of this set: "
                    "compare sets of one size (--num-images)")
    return args


@torch.no_grad()
def set_stats(teacher: torch.nn.Module, batches: list[torch.Tensor]) -> dict:
    """Statistics of normalized image batches: per-channel mean and std over the set, the teacher's mean
    top-class probability and the share of images below 0.9, the spread of the teacher's penultimate features
    within each class it predicts (mean pairwise distance, as `generators.quality` measures diversity, but by
    the teacher's class, as a set made without labels has none that mean anything), the entropy of the
    predicted classes (log of the number of classes when balanced, 0 when one class), and the mean over batches
    of the BN KL."""
    teacher.eval()
    images = torch.cat(batches)
    probs, features, kl = [], [], []
    with capture_penultimate(teacher) as captured:
        for x in batches:
            with BNStatsRecorder(teacher) as rec:
                probs.append(teacher(x).softmax(1))
            features.append(captured[-1])
            kl.append(bn_kl_loss(rec.stats).item())
    probs, features = torch.cat(probs), torch.cat(features)
    confidence, predicted = probs.max(1)
    return {"images": len(images), "std": round(images.std().item(), 3),
            "channel_std": [round(v, 3) for v in images.std((0, 2, 3)).tolist()],
            "channel_mean": [round(v, 3) for v in images.mean((0, 2, 3)).tolist()],
            "confidence": round(confidence.mean().item(), 3),
            "below_0.9": round((confidence < 0.9).float().mean().item(), 3),
            "feature_spread": round(within_class_distance(features, predicted), 3),
            "class_entropy": round(class_entropy(predicted, probs.shape[1]), 3),
            "batch_bn_kl": round(sum(kl) / len(kl), 4)}


def pixel_saturation(pixels: torch.Tensor, margin: float = 0.05) -> dict:
    """How far a set's pixels (in [0, 1]) sit toward black and white: the share within `margin` of 0 or 1, and
    the mean magnitude of their logits (clamped to 1e-4 from the ends; refinement optimizes logits, so this is
    how far it has to move them). Noise sigmoid(N(0, 1)) has 0.80, with 0.003 of its pixels within 0.05."""
    logits = torch.logit(pixels.clamp(1e-4, 1 - 1e-4))
    return {"near_black_or_white": round(((pixels < margin) | (pixels > 1 - margin)).float().mean().item(), 3),
            "mean_abs_logit": round(logits.abs().mean().item(), 2)}


def class_entropy(predicted: torch.Tensor, num_classes: int) -> float:
    """Entropy (nats) of the share of images in each predicted class."""
    share = torch.bincount(predicted, minlength=num_classes).float() / len(predicted)
    share = share[share > 0]
    return -(share * share.log()).sum().item()


def standardized(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalized `images` with each channel shifted and scaled to mean 0 and std 1 over the set, returned as
    pixels in [0, 1] (clamped)."""
    centre = images.mean((0, 2, 3), keepdim=True)
    spread = images.std((0, 2, 3), keepdim=True)
    return denormalize((images - centre) / spread, mean, std)


def rescaled(images: torch.Tensor, mean, std, contrast: float) -> torch.Tensor:
    """Normalized `images` with each channel's deviations from its own mean over the set multiplied by the one
    factor that makes the set's std `contrast`, returned as pixels in [0, 1]: the channel means and the channels'
    relative spreads are kept up to the clamping to [0, 1], which raising the contrast meets first.

    Raises:
        ValueError: the channel means alone spread more than `contrast`.
    """
    centre = images.mean((0, 2, 3), keepdim=True)
    within = (images - centre).square().sum()
    if within == 0:
        raise ValueError("the set has no contrast to scale: every channel is constant")
    between = (centre - images.mean()).square().sum() * (images.numel() // images.shape[1])
    wanted = contrast ** 2 * (images.numel() - 1)  # the std's sum of squares: between + factor^2 * within
    if wanted <= between:
        low = (between / (images.numel() - 1)).sqrt().item()
        raise ValueError(f"the channel means alone give a std of {low:.3f}, above {contrast}: ask for more contrast")
    return denormalize(centre + (images - centre) * ((wanted - between) / within).sqrt(), mean, std)


def main(argv=None) -> None:
    args = parse_args(argv)
    teacher, spec = create_teacher(args.model, checkpoint=args.checkpoint)
    refine = RefineConfig(steps=args.refine_steps, start_logit_scale=args.start_logit_scale,
                          spread_weight=args.spread_weight) \
        if args.refine_steps else None
    batches, seconds, reused = image_set(parse_source(args.source), teacher=teacher, teacher_name=args.model, spec=spec,
                                         num_images=args.num_images, batch_size=args.batch_size, seed=args.seed,
                                         refine=refine, cache_dir=args.image_cache)
    images = torch.cat(batches)
    stats = {"source": args.source, "refine_steps": args.refine_steps, "seed": args.seed,
             **({"start_logit_scale": args.start_logit_scale} if args.start_logit_scale != 1.0 else {}),
             **({"spread_weight": args.spread_weight} if args.spread_weight else {}),
             "made_seconds": round(seconds),
             "from_cache": reused, **set_stats(teacher, batches),
             **pixel_saturation(denormalize(images, spec.mean, spec.std))}
    target = args.standardize or args.unchanged or args.rescale
    if target:
        if args.rescale:
            try:
                pixels = rescaled(images, spec.mean, spec.std, args.contrast)
            except ValueError as exc:  # known only once the set is made
                raise SystemExit(f"set_stats: --contrast {args.contrast}: {exc}") from None
        else:
            pixels = (standardized if args.standardize else denormalize)(images, spec.mean, spec.std)
        labels = torch.arange(len(pixels)) % spec.num_classes  # calibration and reconstruction read no label
        after = normalize(pixels, spec.mean, spec.std)
        clamped = ((pixels == 0) | (pixels == 1)).float().mean().item()
        stats["written"] = {"dir": target, "standardized": bool(args.standardize), "contrast": args.contrast,
                            "std": round(after.std().item(), 3), "clamped_share": round(clamped, 4)}
        with writing_output(target, WRITTEN_SET) as work:
            save_pixels(work, pixels, labels, teacher=args.model, config=PixelOptConfig(), seconds=seconds)
            write_json_atomic(work / MADE_FROM,
                              {"made_from": {"start_logit_scale": args.start_logit_scale,
                                             "spread_weight": args.spread_weight,
                                            **{k: stats[k] for k in ("source", "refine_steps", "seed")}},
                               "num_images": args.num_images, "batch_size": args.batch_size, **stats["written"]})
    if args.compare:
        other = normalize(load_pixels(args.compare, teacher_name=args.model)[0][:args.num_images], spec.mean, spec.std)
        stats["compared"] = {"dir": args.compare, "max_abs_difference": (images - other).abs().max().item()}
    if args.record:
        write_json_atomic(args.record, stats)
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
