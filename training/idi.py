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
import json
import logging
from pathlib import Path

from emojidiff_pipeline.train import setup

logger = logging.getLogger("idi")


def parse_args(input_args=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pretrained_model", required=True)
    p.add_argument("--collection", required=True, help="collection manifest (JSONL: path, identity, caption[, kps])")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--pairs_per_round", type=int, default=1000)
    p.add_argument("--shard_size", type=int, default=64)
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
    setup.add_adapter_args(p)
    setup.add_face_args(p)
    setup.add_stage1_args(p)
    args = p.parse_args(input_args)
    setup.check_stage1_args(p, args)
    if args.swapper == "inswapper" and not args.swapper_model:
        p.error("--swapper inswapper needs --swapper_model (the inswapper_128.onnx file you provide)")
    for name in ("rounds", "pairs_per_round", "shard_size", "num_references", "num_inference_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.steps_per_round < 0:
        p.error(f"--steps_per_round must be >= 0, got {args.steps_per_round}")
    return args


def main(args: argparse.Namespace) -> list[dict]:
    from emojidiff_pipeline import EmojiDiffPipeline
    from emojidiff_pipeline.train.idi import (
        DiffusionReIDBackend,
        FilterConfig,
        IDIRound,
        INSwapperBackend,
        RoundConfig,
        assemble_round,
        load_callable,
    )
    from emojidiff_pipeline.train.stage1 import run_stage1
    from emojidiff_pipeline.train.triplets import read_collection, read_triplets, strip_prompt_phrases

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    accelerator = setup.make_accelerator(args)
    out = Path(args.output_dir)
    records = read_collection(args.collection, "`--collection` manifest")
    face = setup.build_face_analyzer(args, need_detector=True)
    scorer = load_callable(args.expression_estimator, "expression_estimator")
    filters = FilterConfig(args.max_expression_error, args.min_identity_similarity, args.max_template_similarity)
    summaries = []
    for r in range(args.rounds):
        round_dir = out / f"round-{r}"
        generation_adapter = args.adapter if r == 0 else str(out / f"round-{r - 1}" / "stage1" / "adapter")
        pipe = EmojiDiffPipeline.from_pretrained(args.pretrained_model).to(accelerator.device)
        pipe.set_emoji_adapter(setup.build_adapter(args, pipe, generation_adapter, face=face))
        encoder = setup.build_expression_encoder(args) if pipe.emoji_adapter.uses_code_stream else None
        pipe.set_expression_encoder(encoder)
        swapper = (
            INSwapperBackend(args.swapper_model)
            if args.swapper == "inswapper"
            else DiffusionReIDBackend(pipe, args.reid_strength, args.num_inference_steps, args.guidance_scale)
        )
        config = RoundConfig(
            num_pairs=args.pairs_per_round,
            shard_size=args.shard_size,
            num_references=args.num_references,
            seed=args.seed * 1000 + r,
            num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale,
            resolution=args.resolution,
        )
        idi_round = IDIRound(pipe, face, scorer, swapper, filters, config, Path(args.collection).parent)
        if not (round_dir / "data" / "round_stats.json").exists():
            idi_round.run(records, round_dir / "data", accelerator.process_index, accelerator.num_processes)
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                assemble_round(round_dir / "data", idi_round.num_shards())
            accelerator.wait_for_everyone()
        summary = json.loads((round_dir / "data" / "round_stats.json").read_text())
        summaries.append(summary)
        logger.info("IDI round %d: %s", r, summary)
        if args.steps_per_round == 0 or (round_dir / "stage1" / "adapter" / "config.json").exists():
            continue
        triplets = [
            t
            for k in range(r + 1)
            if (out / f"round-{k}" / "data" / "triplets.jsonl").stat().st_size
            for t in read_triplets(out / f"round-{k}" / "data" / "triplets.jsonl")
        ]
        if not triplets:
            raise RuntimeError(f"IDI accepted no pair up to round {r}; loosen the filters ({filters}).")
        if args.strip_prompt_words:
            triplets = strip_prompt_phrases(triplets, args.strip_prompt_words.split(","))
        stage1_dir = round_dir / "stage1"
        resume = "latest" if any(stage1_dir.glob("checkpoint-*[0-9]")) else None
        adapter = setup.build_adapter(args, pipe, generation_adapter, face=face)
        stage1_config = setup.stage1_config(args, args.steps_per_round)
        stage1_config.overwrite_output_dir = resume is None  # the round's own folder: a run cut before its first
        # checkpoint restarts from scratch
        run_stage1(
            accelerator,
            pipe,
            adapter,
            triplets,
            face,
            args.resolution,
            stage1_dir,
            stage1_config,
            resume,
            expression_encoder=encoder,
        )
    return summaries


if __name__ == "__main__":
    main(parse_args())
