"""ID-irrelevant Data Iteration: rounds of generate -> swap identity -> filter -> retrain (stage 1).

    accelerate launch [--multi_gpu --num_processes N] training/idi.py --pretrained_model <pipeline> \
        --adapter runs/stage1_same_identity/adapter --collection data/collection/train.jsonl \
        --recognizer arcface.onnx --detector my.module:load_detector --expression_estimator my.module:load_scorer \
        --swapper diffusion --rounds 2 --pairs_per_round 2000 --steps_per_round 3000 --output_dir runs/idi

Round r writes <output_dir>/round-r/data (sharded triplets, round_stats.json: yield and rejection reasons) and
<output_dir>/round-r/stage1 (the adapter retrained on all accepted triplets so far, started from the round's
generation adapter). Everything resumes: finished shards and finished rounds are skipped, training continues
from its latest checkpoint. `--expression_estimator` and `--detector` take 'module:factory' (train-side instruments;
for the synthetic world see emojidiff_synthetic).
"""

from __future__ import annotations

import argparse
import logging

import stage_flags as flags

logger = logging.getLogger("idi")


def parse_args(input_args=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pretrained_model", required=True)
    p.add_argument("--collection", required=True, help="collection manifest (JSONL: path, identity, caption[, kps])")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--pairs_per_round", type=int, default=1000)
    p.add_argument("--shard_size", type=int, default=64)
    p.add_argument("--generation_batch_size", type=int, default=8, help="pairs per pipeline and swapper call")
    p.add_argument("--num_references", type=int, default=2)
    p.add_argument("--steps_per_round", type=int, default=2000, help="stage-1 steps after each round (0: data only)")
    p.add_argument("--num_inference_steps", type=int, default=25)
    p.add_argument("--guidance_scale", type=float, default=5.0)
    p.add_argument("--expression_estimator", required=True, help="'module:factory' -> scorer(images, kps) -> (N, K)")
    p.add_argument("--swapper", choices=["inswapper", "diffusion"], default="diffusion")
    p.add_argument("--swapper_model", default=None, help="inswapper_128.onnx for --swapper inswapper")
    p.add_argument("--reid_strength", type=float, default=0.5, help="img2img strength for --swapper diffusion")
    p.add_argument("--max_expression_error", type=float, default=0.08)
    p.add_argument("--min_identity_similarity", type=float, default=0.5)
    p.add_argument("--max_template_similarity", type=float, default=0.3)
    flags.add_adapter_args(p)
    flags.add_face_args(p)
    flags.add_stage1_args(p)
    args = p.parse_args(input_args)
    flags.check_stage1_args(p, args)
    if args.swapper == "inswapper" and not args.swapper_model:
        p.error("--swapper inswapper needs --swapper_model (the inswapper_128.onnx file you provide)")
    for name in (
        "rounds",
        "pairs_per_round",
        "shard_size",
        "generation_batch_size",
        "num_references",
        "num_inference_steps",
    ):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.steps_per_round < 0:
        p.error(f"--steps_per_round must be >= 0, got {args.steps_per_round}")
    return args


def idi_run(args: argparse.Namespace):
    """(the TrainingRun, the IDISettings) the flags describe."""
    from emojidiff_pipeline.train.run import FilterConfig, IDISettings, TrainingRun, TripletSource

    data = TripletSource(
        same_identity_from=args.collection,
        num_references=args.num_references,
        seed=args.seed,
        strip_prompt_words=flags.prompt_words(args),
    )
    run = TrainingRun(
        pretrained_model=args.pretrained_model,
        output_dir=args.output_dir,
        data=data,
        face=flags.face_front_end(args),
        config=flags.stage1_config(args, args.steps_per_round),
        adapter=flags.adapter_spec(args),
        resolution=args.resolution,
        mixed_precision=args.mixed_precision,
    )
    idi = IDISettings(
        expression_estimator=args.expression_estimator,
        rounds=args.rounds,
        pairs_per_round=args.pairs_per_round,
        shard_size=args.shard_size,
        generation_batch_size=args.generation_batch_size,
        steps_per_round=args.steps_per_round,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        filters=FilterConfig(args.max_expression_error, args.min_identity_similarity, args.max_template_similarity),
        swapper=args.swapper,
        swapper_model=args.swapper_model,
        reid_strength=args.reid_strength,
    )
    return run, idi


def main(args: argparse.Namespace) -> list[dict]:
    from emojidiff_pipeline.train.run import run_idi

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return run_idi(*idi_run(args))


if __name__ == "__main__":
    main(parse_args())
