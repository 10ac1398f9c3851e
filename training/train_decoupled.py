"""Stage 1 of EmojiDiff: decoupled training of the E-Adapter on (template, reference(s), target, prompt) triplets.

    accelerate launch [--multi_gpu --num_processes N] training/train_decoupled.py \
        --pretrained_model <pipeline folder or Hub id> --triplets triplets.jsonl --recognizer arcface.onnx \
        --output_dir runs/stage1 --max_steps 20000

Only the adapter trains. Frozen encoders run once (cached under <output_dir>/cache). Every checkpoint-<step>/adapter is
a loadable `EmojiDiffAdapter` folder; `--resume_from_checkpoint latest` continues exactly as an uninterrupted run.
Round-0 data: `--same_identity_from <collection manifest.jsonl>` builds same-identity triplets from any collection
(records with path, identity, caption[, kps]) instead of `--triplets`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from emojidiff_pipeline.train import setup
from emojidiff_pipeline.train.triplets import (
    read_collection,
    read_triplets,
    same_identity_triplets,
    strip_prompt_phrases,
    write_triplets,
)

logger = logging.getLogger("train_decoupled")


def parse_args(input_args=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pretrained_model", required=True, help="SDXL-style pipeline folder / Hub id with image_encoder")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--triplets", help="triplet manifest (JSONL, see emojidiff_pipeline.train.triplets)")
    data.add_argument("--same_identity_from", help="collection manifest to build same-identity triplets from")
    p.add_argument("--num_references", type=int, default=2)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--max_steps", type=int, required=True)
    p.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder")
    setup.add_adapter_args(p)
    setup.add_face_args(p)
    setup.add_stage1_args(p)
    args = p.parse_args(input_args)
    setup.check_stage1_args(p, args)
    for name in ("max_steps", "num_references"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


def main(args: argparse.Namespace) -> list[float]:
    from emojidiff_pipeline import EmojiDiffPipeline
    from emojidiff_pipeline.train.stage1 import prepare_run_folder, run_stage1

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    accelerator = setup.make_accelerator(args)
    output_dir = Path(args.output_dir)
    if not args.overwrite_output_dir:  # refuse another run's folder before writing anything (else: cleared later)
        prepare_run_folder(output_dir, bool(args.resume_from_checkpoint), overwrite=False)
    if args.same_identity_from:  # read and check the inputs before anything is written
        records = read_collection(args.same_identity_from, "`--same_identity_from` collection")
        triplets = same_identity_triplets(records, Path(args.same_identity_from).parent, args.num_references, args.seed)
        if not triplets:
            raise ValueError(f"`--same_identity_from` collection {args.same_identity_from!r} gives no same-identity "
                             "triplet: no identity has two or more distinct photos.")  # fmt: skip
        output_dir.mkdir(parents=True, exist_ok=True)
        if accelerator.is_main_process:
            write_triplets(triplets, output_dir / "triplets.jsonl")
        accelerator.wait_for_everyone()
        triplets = read_triplets(output_dir / "triplets.jsonl")
    else:
        triplets = read_triplets(args.triplets)
        output_dir.mkdir(parents=True, exist_ok=True)
    if args.strip_prompt_words:
        triplets = strip_prompt_phrases(triplets, args.strip_prompt_words.split(","))
    logger.info("%d triplets", len(triplets))
    pipe = EmojiDiffPipeline.from_pretrained(args.pretrained_model).to(accelerator.device)
    adapter = setup.build_adapter(args, pipe)
    encoder = setup.build_expression_encoder(args) if adapter.uses_code_stream else None
    expression_model, identity_model = setup.build_face_loss_models(args)
    return run_stage1(
        accelerator, pipe, adapter, triplets, setup.build_face_analyzer(args), args.resolution, output_dir,
        setup.stage1_config(args, args.max_steps), args.resume_from_checkpoint, expression_encoder=encoder,
        expression_loss_model=expression_model, identity_loss_model=identity_model,
    )  # fmt: skip


if __name__ == "__main__":
    main(parse_args())
