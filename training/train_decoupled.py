"""Stage 1 of EmojiDiff: decoupled training of the E-Adapter on (template, reference(s), target, prompt) triplets.

    accelerate launch [--num_processes N] training/train_decoupled.py --pretrained_model <pipeline folder or Hub id> \
        --triplets triplets.jsonl --recognizer arcface.onnx --output_dir runs/stage1 --max_steps 20000

Only the adapter trains. Frozen encoders run once (cached under <output_dir>/cache). Every checkpoint-<step>/adapter is
a loadable `EmojiDiffAdapter` folder; `--resume_from_checkpoint latest` continues exactly as an uninterrupted run.
Round-0 data: `--same_identity_from <collection manifest.jsonl>` builds same-identity triplets from any collection
(records with path, identity, caption[, kps]) instead of `--triplets`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from emojidiff_pipeline.train.triplets import read_triplets, same_identity_triplets, write_triplets

logger = logging.getLogger("train_decoupled")


def parse_args(input_args=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pretrained_model", required=True, help="SDXL-style pipeline folder / Hub id with image_encoder")
    p.add_argument("--adapter", default=None, help="start from this adapter folder (default: new from the UNet)")
    p.add_argument("--identity_layers", default="all", help="layer spec for a new adapter (preset, name or re:)")
    p.add_argument("--expression_layers", default="expression_sensitive", help="layer spec for a new adapter")
    p.add_argument("--num_identity_tokens", type=int, default=4)
    p.add_argument("--num_expression_tokens", type=int, default=16)
    p.add_argument("--resampler_dim", type=int, default=None, help="default: the image encoder's width")
    p.add_argument("--resampler_depth", type=int, default=4)
    p.add_argument("--resampler_heads", type=int, default=None, help="default: resampler_dim // 64 (at least 1)")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--triplets", help="triplet manifest (JSONL, see emojidiff_pipeline.train.triplets)")
    data.add_argument("--same_identity_from", help="collection manifest to build same-identity triplets from")
    p.add_argument("--num_references", type=int, default=2)
    p.add_argument("--recognizer", default=None, help="ArcFace-style ONNX for identity embeddings")
    p.add_argument("--face_pack", default=None, help="insightface model pack name (detection when no kps given)")
    p.add_argument("--face_root", default="~/.insightface")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--max_steps", type=int, required=True)
    p.add_argument("--batch_size", type=int, default=4, help="per process")
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--lr_warmup_steps", type=int, default=0)
    p.add_argument("--identity_drop", type=float, default=0.05)
    p.add_argument("--expression_drop", type=float, default=0.05)
    p.add_argument("--text_drop", type=float, default=0.05)
    p.add_argument("--checkpointing_steps", type=int, default=500)
    p.add_argument("--checkpoints_total_limit", type=int, default=3)
    p.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder")
    p.add_argument("--mixed_precision", default="no", choices=["no", "fp16", "bf16"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(input_args)
    for name in ("identity_drop", "expression_drop", "text_drop"):
        if not 0.0 <= getattr(args, name) < 1.0:
            p.error(f"--{name} must be in [0, 1), got {getattr(args, name)}")
    for name in ("max_steps", "batch_size", "checkpointing_steps", "resolution", "num_references"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.recognizer is None and args.face_pack is None:
        p.error("identity embeddings need --recognizer (ONNX) or --face_pack (an insightface model pack)")
    return args


def build_face_analyzer(args):
    from emojidiff_pipeline.face import FaceAnalyzer

    if args.face_pack:
        analyzer = FaceAnalyzer(args.face_pack, root=args.face_root)
        if args.recognizer:
            analyzer.recognizer = FaceAnalyzer.from_models(lambda image: [], args.recognizer).recognizer
        return analyzer
    return FaceAnalyzer.from_models(lambda image: [], recognizer=args.recognizer)  # keypoints come from the manifest


def main(args: argparse.Namespace) -> list[float]:
    import torch
    from accelerate import Accelerator

    from emojidiff_pipeline import EmojiDiffAdapter, EmojiDiffPipeline
    from emojidiff_pipeline.train.stage1 import Stage1Config, load_or_prepare_cache, train_stage1

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # on a machine without CUDA, processes started by `accelerate launch --multi_gpu` / torchrun use gloo on CPU
    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=not torch.cuda.is_available())
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    if args.same_identity_from:
        records = [json.loads(line) for line in Path(args.same_identity_from).read_text().splitlines() if line.strip()]
        triplets = same_identity_triplets(records, Path(args.same_identity_from).parent, args.num_references, args.seed)
        if accelerator.is_main_process:
            write_triplets(triplets, output_dir / "triplets.jsonl")
        accelerator.wait_for_everyone()
        triplets = read_triplets(output_dir / "triplets.jsonl")
    else:
        triplets = read_triplets(args.triplets)
    logger.info("%d triplets", len(triplets))

    pipe = EmojiDiffPipeline.from_pretrained(args.pretrained_model).to(accelerator.device)
    torch.manual_seed(args.seed)  # a new adapter's initial weights
    if args.adapter:
        adapter = EmojiDiffAdapter.from_pretrained(args.adapter)
    else:
        width = pipe.image_encoder.config.hidden_size
        dim = args.resampler_dim or width
        adapter = EmojiDiffAdapter.from_unet(
            pipe.unet,
            identity_layers=args.identity_layers,
            expression_layers=args.expression_layers,
            num_identity_tokens=args.num_identity_tokens,
            num_expression_tokens=args.num_expression_tokens,
            image_embed_dim=width,
            resampler_dim=dim,
            resampler_depth=args.resampler_depth,
            resampler_heads=args.resampler_heads or max(1, dim // 64),
        )
    cache = load_or_prepare_cache(
        accelerator, pipe, build_face_analyzer(args), triplets, args.resolution, output_dir / "cache"
    )
    config = Stage1Config(
        max_steps=args.max_steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
        lr_warmup_steps=args.lr_warmup_steps, identity_drop=args.identity_drop, expression_drop=args.expression_drop,
        text_drop=args.text_drop, seed=args.seed, checkpointing_steps=args.checkpointing_steps,
        checkpoints_total_limit=args.checkpoints_total_limit,
    )  # fmt: skip
    return train_stage1(accelerator, pipe, adapter, cache, config, output_dir, args.resume_from_checkpoint)


if __name__ == "__main__":
    main(parse_args())
