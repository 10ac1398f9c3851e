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

import stage_flags as flags

logger = logging.getLogger("train_decoupled")


def parse_args(input_args=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    flags.add_run_args(p)
    flags.add_adapter_args(p)
    flags.add_face_args(p)
    flags.add_stage1_args(p)
    args = p.parse_args(input_args)
    flags.check_run_args(p, args)
    flags.check_stage1_args(p, args)
    return args


def main(args: argparse.Namespace) -> list[float]:
    from emojidiff_pipeline.train.run import train_stage1_run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return train_stage1_run(flags.training_run(args))


if __name__ == "__main__":
    main(parse_args())
