"""Quality report of the synthetic base model, measured with eval-side instruments only.

    PYTHONPATH=src:synthetic/src python synthetic/scripts/evaluate_base.py \
        [--model synthetic/src/emojidiff_synthetic/assets/base] [--collection data/collection] [--run_dir runs/base] \
        [--num_samples 800]

Measures, on the collection's held-out identities (never seen in training), VAE reconstructions, samples prompted with
held-out captions (style agreement, identity diversity, Frechet distance in eval identity-encoder features) and the
sampling time; see `emojidiff_synthetic.base_model.evaluation`. Writes docs/base_model.json, docs/base_model.md and
docs/base_samples.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
from pathlib import Path

from emojidiff_synthetic.base_model.config import ASSET_DIR
from emojidiff_synthetic.base_model.evaluation import TARGETS, EvaluationConfig, evaluate_base_model

ROOT = Path(__file__).resolve().parents[2]

__all__ = ["TARGETS", "main", "parse_args"]


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ASSET_DIR, help="pipeline folder (the exported base model)")
    p.add_argument("--collection", type=Path, default=ROOT / "data" / "collection")
    p.add_argument("--run_dir", type=Path, default=ROOT / "runs" / "base", help="training run (for wall-clock/logs)")
    p.add_argument("--num_samples", type=int, default=800, help="samples for style/diversity/Frechet metrics")
    p.add_argument("--num_recon", type=int, default=800, help="held-out photos for the VAE metrics")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance_scale", type=float, default=5.0)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_threads", type=int, default=None)
    p.add_argument("--timing_repeats", type=int, default=5, help="batch-1 sampling timings (median reported)")
    p.add_argument(
        "--instrument_dir", type=Path, default=None, help="eval-side instrument weights (default: the shipped ones)"
    )
    p.add_argument("--out_json", type=Path, default=ROOT / "docs" / "base_model.json")
    p.add_argument("--out_md", type=Path, default=ROOT / "docs" / "base_model.md")
    p.add_argument("--grid", type=Path, default=ROOT / "docs" / "base_samples.png")
    args = p.parse_args(input_args)
    for name in ("num_samples", "num_recon", "steps", "batch_size", "timing_repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"`--{name}` must be >= 1, got {getattr(args, name)}.")
    if args.num_samples < 16:
        raise ValueError(f"`--num_samples` must be >= 16 for covariance-based metrics, got {args.num_samples}.")
    if not (args.model / "model_index.json").is_file():
        raise FileNotFoundError(
            f"`--model` {str(args.model)!r} is not a pipeline folder (no model_index.json); train and export it with "
            "`python synthetic/scripts/train_base.py --collection data/collection --out runs/base --stage all`."
        )
    if not (args.collection / "collection.json").is_file():
        raise FileNotFoundError(f"`--collection` {str(args.collection)!r} is not a finished photo collection.")
    return args


def main(args: argparse.Namespace) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    fields = {f.name for f in dataclasses.fields(EvaluationConfig)}
    config = EvaluationConfig(**{k: v for k, v in vars(args).items() if k in fields})
    command = "PYTHONPATH=src:synthetic/src python synthetic/scripts/evaluate_base.py " + shlex.join(sys.argv[1:])
    return evaluate_base_model(config, command)


if __name__ == "__main__":
    try:
        main(parse_args())
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        sys.exit(f"error: {e}")
