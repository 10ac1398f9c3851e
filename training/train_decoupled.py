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

logger = logging.getLogger("train_decoupled")


def parse_args(input_args=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    setup.add_run_args(p)
    setup.add_adapter_args(p)
    setup.add_face_args(p)
    setup.add_stage1_args(p)
    args = p.parse_args(input_args)
    setup.check_run_args(p, args)
    setup.check_stage1_args(p, args)
    return args


def main(args: argparse.Namespace) -> list[float]:
    from emojidiff_pipeline import EmojiDiffPipeline
    from emojidiff_pipeline.train.checkpoints import prepare_run_folder
    from emojidiff_pipeline.train.stage1 import run_stage1

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    accelerator = setup.make_accelerator(args)
    output_dir = Path(args.output_dir)
    if not args.overwrite_output_dir:  # refuse another run's folder before writing anything (else: cleared later)
        prepare_run_folder(output_dir, bool(args.resume_from_checkpoint), overwrite=False)
    triplets = setup.stage1_triplets(args, accelerator, output_dir)
    logger.info("%d triplets", len(triplets))
    pipe = EmojiDiffPipeline.from_pretrained(args.pretrained_model).to(accelerator.device)
    face = setup.build_face_analyzer(args)
    adapter = setup.build_adapter(args, pipe, face=face)  # records (or checks) the recognizer's name and width
    encoder = setup.build_expression_encoder(args) if adapter.uses_code_stream else None
    expression_model, identity_model = setup.build_face_loss_models(args)
    return run_stage1(
        accelerator,
        pipe,
        adapter,
        triplets,
        face,
        args.resolution,
        output_dir,
        setup.stage1_config(args, args.max_steps),
        args.resume_from_checkpoint,
        expression_encoder=encoder,
        expression_loss_model=expression_model,
        identity_loss_model=identity_model,
    )


if __name__ == "__main__":
    main(parse_args())
